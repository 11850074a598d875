"""The IP addresses and domain names of an SPF check (pure): normalised and validated once.

The evaluator and the macro expander both handle them, and RFC 7208's rules for them
(an IPv4-mapped IPv6 address is checked as IPv4, §5; what a valid domain is, §4.3) must
be decided in one place, or a name one of them accepts could be refused by the other.
"""

from __future__ import annotations

import ipaddress

import idna

MAX_DOMAIN_CHARS = 253

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def normalise_ip(ip: str | IPAddress) -> IPAddress:
    """``ip`` as an address object, IPv4-mapped IPv6 as plain IPv4 (§5); ValueError if bad."""
    address = ipaddress.ip_address(ip.strip().strip("[]") if isinstance(ip, str) else ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def ip_in_network(ip: IPAddress, network: str, prefix: int | None) -> bool:
    """Whether ``ip`` is in ``network``/``prefix`` (whole address when no prefix)."""
    try:
        length = ip.max_prefixlen if prefix is None else prefix
        net = ipaddress.ip_network((network, length), strict=False)
    except ValueError:
        return False  # not an address, or a prefix too long for its family
    return ip.version == net.version and ip in net


def valid_domain(name: str, *, expanded: bool = False) -> bool:
    """§4.3: a multi-label name, labels of 1-63 chars, at most 253 chars, not an IP.

    With ``expanded`` the name is a target built by macro expansion (§4.8, §7): ``%_``
    and ``%-`` put spaces and ``%20`` into it on purpose, and a DNS label may hold any
    octet, so spaces are asked for (the suite's ``macro-mania-in-domain``); a sender or
    HELO domain with a space is still no domain at all.
    """
    labels = name.split(".")
    refused = "\\[]" if expanded else " \\[]"
    return (
        0 < len(name) <= MAX_DOMAIN_CHARS
        and len(labels) >= 2
        and all(0 < len(label) <= 63 for label in labels)
        and name.isascii()
        and name.isprintable()
        and not any(char in name for char in refused)
        and not labels[-1].isdigit()
    )


def _ascii_domain(domain: str) -> str:
    domain = domain.strip().lower()
    domain = domain[:-1] if domain.endswith(".") else domain
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except UnicodeError:  # idna.IDNAError is one
        return domain  # and valid_domain() turns it away


def _within(name: str, domain: str) -> bool:
    return name == domain or name.endswith("." + domain)
