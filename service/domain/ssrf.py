"""Which network addresses webhooks may be sent to: global ones, plus allow-listed networks."""

import ipaddress
from collections.abc import Sequence

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_allowed(address: IpAddress, allow: Sequence[IpNetwork]) -> bool:
    """Loopback, private, link-local, reserved and other non-global addresses are refused
    unless an allow-listed network holds them. IPv4-mapped and 6to4/NAT64-style IPv6
    forms are judged by the IPv4 address they carry."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            address = embedded
    if any(address in network for network in allow):
        return True
    return address.is_global and not address.is_multicast
