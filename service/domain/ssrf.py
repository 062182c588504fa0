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
# Every block of IANA's IPv4 and IPv6 special-purpose address registries (as of 2026-12)
# that is not globally reachable, or that no webhook endpoint can be in (anycast relays,
# AS112 DNS sinks, ORCHID): refused whatever `is_global` says, because Python 3.11's
# predates several (CVE-2024-4032: fec0::/10, 192.0.0.0/24, 5f00::/16, 3fff::/20...).
# The IPv4-carrying IPv6 forms are judged by their IPv4 address instead (carried_ipv4).
_REFUSED: tuple[IpNetwork, ...] = tuple(
    ipaddress.ip_network(block)
    for block in (
        "0.0.0.0/8",  # "this network" (RFC 791)
        "10.0.0.0/8",  # private (RFC 1918)
        "100.64.0.0/10",  # shared address space, carrier-grade NAT (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata services
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments, anycast ones included (RFC 6890)
        "192.0.2.0/24",  # documentation (RFC 5737)
        "192.31.196.0/24",  # AS112 (RFC 7535)
        "192.52.193.0/24",  # AMT relays (RFC 7450)
        "192.88.99.0/24",  # deprecated 6to4 relay anycast (RFC 7526)
        "192.168.0.0/16",  # private
        "192.175.48.0/24",  # AS112 direct delegation (RFC 7534)
        "198.18.0.0/15",  # benchmarking (RFC 2544)
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
        "::/128",  # unspecified
        "::1/128",  # loopback
        "100::/64",  # discard-only (RFC 6666)
        "100:0:0:1::/64",  # dummy prefix (RFC 9780)
        "2001::/23",  # IETF protocol assignments: Teredo, ORCHID, AMT, AS112, benchmarking
        "2001:db8::/32",  # documentation (RFC 3849)
        "2620:4f:8000::/48",  # AS112 (RFC 7534)
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # segment routing SIDs (RFC 9602)
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local, deprecated (RFC 3879)
        "ff00::/8",  # multicast
    )
)


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
    """Loopback, private, link-local, reserved and other non-global addresses (_REFUSED,
    then `is_global`) are refused unless an allow-listed network holds them. IPv4-mapped,
    -translated and -compatible, 6to4 and NAT64 IPv6 forms are judged by the IPv4 address
    they carry."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _LOCAL_NAT64 and not any(address in network for network in allow):
            return False
        embedded = carried_ipv4(address)
        if embedded is not None:
            address = embedded
    if any(address in network for network in allow):
        return True
    if any(address in network for network in _REFUSED):
        return False
    return address.is_global and not address.is_multicast
