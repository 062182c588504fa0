"""Which network addresses webhooks may be sent to: global ones, plus allow-listed networks."""

import ipaddress
from collections.abc import Sequence

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# IPv6 forms that carry an IPv4 address in their last 32 bits: NAT64's well-known prefix
# (RFC 6052), SIIT's IPv4-translated addresses (RFC 2765) and the deprecated
# IPv4-compatible ones (::a.b.c.d).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# NAT64 for local use (RFC 8215): translates to whatever the operator chose, so never public.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def carried_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, if it is one of the translating forms."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    compatible = address in _IPV4_COMPATIBLE and int(address) > 1  # not :: or ::1
    if compatible or address in _NAT64 or address in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_allowed(address: IpAddress, allow: Sequence[IpNetwork]) -> bool:
    """Loopback, private, link-local, reserved and other non-global addresses are refused
    unless an allow-listed network holds them. IPv4-mapped, -translated and -compatible,
    6to4 and NAT64 IPv6 forms are judged by the IPv4 address they carry."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _LOCAL_NAT64 and not any(address in network for network in allow):
            return False
        embedded = carried_ipv4(address)
        if embedded is not None:
            address = embedded
    if any(address in network for network in allow):
        return True
    return address.is_global and not address.is_multicast
