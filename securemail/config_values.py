"""The value checks ``config.py``'s declarative table (``_CHECKS``) points at.

One function per kind of value (a port, a list of networks, domain patterns, a TLS
policy map, ...), each raising ``ValueError`` with a message that names what was
expected; the loader adds the file, line and key. Kept apart so ``config.py`` reads as
the schema and the loading, and this as the vocabulary of values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping

from securemail.core.addresses import AddressError, normalise_domain, parse_address


class _EntryError(ValueError):
    """A bad entry of a table-valued key: ``entry`` (its key) goes into the location."""

    def __init__(self, entry: str, message: str) -> None:
        super().__init__(message)
        self.entry = entry


def _one_of(*allowed: str) -> Callable[[object], object]:
    def check(value: object) -> object:
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    return check


def _between(low: float, high: float) -> Callable[[object], object]:
    def check(value: object) -> object:
        assert isinstance(value, int | float)
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value

    return check


def _zero_or_between(low: float, high: float) -> Callable[[object], object]:
    """0 (derived from another setting) or a value in range."""
    in_range = _between(low, high)

    def check(value: object) -> object:
        if value == 0:
            return value
        try:
            return in_range(value)
        except ValueError:
            raise ValueError(f"must be 0 or between {low:g} and {high:g}") from None

    return check


def _host_port(value: object, lowest: int = 1) -> object:
    assert isinstance(value, str)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


def _listen_address(value: object) -> object:
    """Like HOST:PORT, but port 0 (the OS picks one; tests use it) is allowed."""
    return _host_port(value, lowest=0)


def _base_url(value: object) -> object:
    """``[portal] base_url``: an https:// URL without query or fragment (links are
    ``<base_url>/m/<token>``; a token must never travel over plain HTTP)."""
    text = str(value).strip().rstrip("/")
    if not re.fullmatch(r"https://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/]*)?", text):
        raise ValueError(f"expected an https:// URL without query or fragment, got {value!r}")
    return text


def parse_nameserver(item: str) -> tuple[str, int]:
    """``192.0.2.1``, ``192.0.2.1:5353``, ``::1`` or ``[::1]:5353`` → (ip, port)."""
    try:
        return str(ipaddress.ip_address(item)), 53
    except ValueError:
        pass
    host, sep, port = item.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        raise ValueError(f"expected IP or IP:PORT, got {item!r}") from None


def _recipients(value: object) -> object:
    if not isinstance(value, str) or not value.strip():
        raise ValueError('expected "verify", "any" or the path of a recipient list')
    return value.strip()


def _host_ports(value: object) -> object:
    assert isinstance(value, tuple)
    for item in value:
        parse_nameserver(item)
    return value


def _networks(value: object) -> object:
    """Networks allowed to relay without AUTH; one covering every address is refused:
    it would make the gateway an open relay for the whole internet."""
    assert isinstance(value, tuple)
    try:
        networks = tuple(ipaddress.ip_network(item, strict=False) for item in value)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    for network in networks:
        if network.prefixlen == 0:
            raise ValueError(f"{network} is every address: an open relay (refused)")
    return tuple(str(network) for network in networks)


def _domain_patterns(value: object) -> object:
    """``example.org`` (exactly) or ``*.example.org`` (it and its subdomains)."""
    assert isinstance(value, tuple)
    out = []
    for item in value:
        wildcard = item.startswith("*.")
        try:
            domain = normalise_domain(item[2:] if wildcard else item)
        except AddressError as exc:
            raise ValueError(f"{item!r}: {exc}") from None
        out.append(f"*.{domain}" if wildcard else domain)
    return tuple(out)


def _require_tls_from(value: object) -> object:
    """``[inbound] require_tls_from``: ``"secure"``, ``"none"``, or domain patterns as
    ``_domain_patterns`` reads them. A public suffix is not refused here, unlike in
    ``[policy] secure_domains``: listing one only asks more senders for TLS, it never
    makes anyone trusted."""
    if isinstance(value, str):
        if value not in ("secure", "none"):
            raise ValueError(
                'expected "secure", "none" or a list of domain patterns '
                '(in the environment, a list has a comma: "partner.org,")'
            )
        return value
    return _domain_patterns(value)


def _domains(value: object) -> object:
    assert isinstance(value, tuple)
    try:
        return tuple(normalise_domain(item) for item in value)
    except AddressError as exc:
        raise ValueError(str(exc)) from None


def _optional_address(value: object) -> object:
    assert isinstance(value, str)
    if value:
        try:
            parse_address(value)
        except AddressError as exc:
            raise ValueError(str(exc)) from None
    return value


_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*")


def _selectors(value: object) -> object:
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if not isinstance(item, str) or not _SELECTOR.fullmatch(item):
            raise ValueError(f"{item!r} is not a valid DKIM selector")
    return value


def _tls_policy(value: object) -> object:
    """Every entry must parse as the delivery policy map will read it, at startup."""
    # Imported here: config stays importable without the delivery stack behind it.
    from securemail.gateway.outbound.tls_policy import PolicyError, TlsPolicyMap

    assert isinstance(value, Mapping)
    try:
        TlsPolicyMap.parse(value)
    except PolicyError as exc:
        raise _EntryError(exc.key, str(exc)) from None
    return value


def _syslog_target(value: object) -> object:
    """``""`` (off), a Unix socket path or ``udp:HOST:PORT``, read as the handler reads it."""
    # Imported here: config stays importable without the gateway behind it.
    from securemail.gateway.logs import parse_syslog_target

    assert isinstance(value, str)
    if value:
        parse_syslog_target(value)
    return value


def _syslog_facility(value: object) -> object:
    """A facility name syslog(3) knows (``mail``, ``daemon``, ``local0``…``local7``, …)."""
    from logging.handlers import SysLogHandler

    names = SysLogHandler.facility_names
    if value not in names:
        raise ValueError(f"expected a syslog facility: {', '.join(sorted(names))}")
    return value


# What useradd(8) accepts, less the trailing "$" of Samba machine accounts.
_ACCOUNT = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")


def _account_name(value: object) -> object:
    """A user or group name (looked up by ``config check`` and ``serve``, not at load:
    the machine running ``classify`` need not have the service user)."""
    assert isinstance(value, str)
    if value and not _ACCOUNT.fullmatch(value):
        raise ValueError(f"{value!r} is not a user or group name")
    return value


# Read by the CLI itself, not settings: never reported as misspelt.
_OTHER_VARIABLES = ("SECUREMAIL_DEBUG", "SECUREMAIL_KEEP_TMP")


def _then(*checks: Callable[[object], object]) -> Callable[[object], object]:
    """Checks in turn, each given the value the one before cleaned."""

    def check(value: object) -> object:
        for one in checks:
            value = one(value)
        return value

    return check
