"""One DNS resolver for the whole gateway, and the only module that imports dnspython.

Delivery (MX) and every later check (SPF, DKIM, DMARC, MTA-STS, DANE) ask DNS through
``Resolver``, so nameservers, timeouts and caching are set in one place from ``[dns]``
and tests can point all of it at a loopback server with ``127.0.0.1:PORT``.

The distinction that matters most for mail is between *does not exist* and *could not
find out*: ``DnsNotFound`` (NXDOMAIN, or no usable records) may bounce a message, but a
SERVFAIL, REFUSED or timeout is ``DnsTemporaryError`` and must only ever defer it. An
error we cannot classify is treated as temporary, because deferring is recoverable and
bouncing is not.

Answers come from servers we do not control, so MX targets are checked the way
RFC 5321 §5.1 and RFC 7505 read them: a target must be a host name (not an IP address or
arbitrary bytes), ``0 .`` alone is a null MX, and long answers are capped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.TLSA import TLSA
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

from securemail.config import DnsConfig
from securemail.config_values import parse_nameserver

MAX_MX_HOSTS = 20
MAX_ADDRESSES = 16
EDNS_PAYLOAD = 1232
PER_TRY_TIMEOUT = 2.0

_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class DnsError(Exception):
    """A DNS lookup failed; ``str(err)`` is one line naming the query and the reason."""


class DnsTemporaryError(DnsError):
    """SERVFAIL, REFUSED, timeout or no nameserver answered: try again later."""


class DnsNotFound(DnsError):
    """The name does not exist (NXDOMAIN), or has no record that could be used."""


@dataclass(frozen=True, slots=True)
class MxHost:
    preference: int
    host: str


@dataclass(frozen=True, slots=True)
class MxResult:
    """Where mail for ``domain`` goes. ``hosts`` is sorted by preference, then name."""

    domain: str
    hosts: tuple[MxHost, ...]
    implicit: bool = False
    """No MX record: the domain's own A/AAAA receive mail (RFC 5321 §5.1)."""
    null: bool = False
    """Null MX ``0 .`` (RFC 7505): the domain accepts no mail; ``hosts`` is empty."""
    dnssec: bool = False
    """The answer carried the AD flag (validated by the resolver)."""


class Resolver:
    """Async lookups with TTL-honouring caching and the error split described above."""

    def __init__(
        self, nameservers: Sequence[str] = (), *, timeout: float = 5.0, cache: bool = True
    ) -> None:
        try:
            resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        except dns.resolver.NoResolverConfiguration:
            raise DnsError("no nameservers in /etc/resolv.conf: set [dns] nameservers") from None
        if nameservers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver(item)) for item in nameservers
            ]
        else:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ns, resolver.port) if isinstance(ns, str) else ns
                for ns in resolver.nameservers
            ]
        resolver.lifetime = timeout
        resolver.timeout = min(timeout, PER_TRY_TIMEOUT)
        resolver.use_edns(0, dns.flags.DO, EDNS_PAYLOAD)
        resolver.cache = dns.resolver.LRUCache() if cache else None
        self.timeout = float(timeout)
        self._labels = {str(ns): _server_text(ns) for ns in resolver.nameservers}
        self.nameservers = tuple(self._labels.values())
        self._resolver = resolver

    @classmethod
    def from_config(cls, config: DnsConfig) -> Resolver:
        return cls(config.nameservers, timeout=config.timeout)

    async def query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """The answer for ``name``/``rdtype`` (CNAMEs followed), or None when there is none.

        Raises ``DnsNotFound`` for NXDOMAIN and ``DnsTemporaryError`` when no answer came.
        """
        answer = await self._lookup(name, rdtype)
        return answer if answer.rrset is not None else None

    async def mx(self, domain: str) -> MxResult:
        domain = domain.rstrip(".").lower()
        answer = await self._lookup(domain, "MX")
        dnssec = _ad(answer)
        if answer.rrset is None:
            try:
                await self.addresses(domain)
            except DnsNotFound:
                raise DnsNotFound(f"MX {domain}: no MX record and no A/AAAA address") from None
            return MxResult(domain, (MxHost(0, domain),), implicit=True, dnssec=dnssec)
        records = [rdata for rdata in answer.rrset if isinstance(rdata, MX)]
        if records and all(rdata.exchange == dns.name.root for rdata in records):
            return MxResult(domain, (), null=True, dnssec=dnssec)
        best: dict[str, int] = {}
        for rdata in records:
            host = _host_name(rdata.exchange)
            if host is not None and rdata.preference < best.get(host, 65536):
                best[host] = rdata.preference
        if not best:
            example = records[0].exchange.to_text() if records else "(none)"
            raise DnsNotFound(f"MX {domain}: no MX target is a valid host name (e.g. {example!r})")
        hosts = sorted((MxHost(pref, host) for host, pref in best.items()), key=_mx_order)
        return MxResult(domain, tuple(hosts[:MAX_MX_HOSTS]), dnssec=dnssec)

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of ``host`` (A and AAAA asked at the same time)."""
        results = await asyncio.gather(self._try(host, "A"), self._try(host, "AAAA"))
        found: list[str] = []
        for result in results:
            if isinstance(result, dns.resolver.Answer) and result.rrset is not None:
                for rdata in result.rrset:
                    if isinstance(rdata, A | AAAA) and rdata.address not in found:
                        found.append(rdata.address)
        if found:
            return found[:MAX_ADDRESSES]
        for result in results:
            if isinstance(result, DnsTemporaryError):
                raise result
        raise DnsNotFound(f"A/AAAA {_display(host)}: no address records")

    async def txt(self, name: str) -> list[str]:
        """Each TXT record as one string (its character-strings joined, as SPF/DKIM need)."""
        answer = await self._lookup(name, "TXT")
        if answer.rrset is None:
            return []
        return [
            b"".join(rdata.strings).decode("utf-8", errors="replace")
            for rdata in answer.rrset
            if isinstance(rdata, TXT)
        ]

    async def ptr(self, ip: str) -> list[str]:
        """Host names for ``ip`` (raises ``ValueError`` if it is not an IP address)."""
        reverse = dns.reversename.from_address(str(ipaddress.ip_address(ip)))
        answer = await self._lookup(reverse.to_text(), "PTR")
        if answer.rrset is None:
            return []
        return [
            rdata.target.to_text(omit_final_dot=True).lower()
            for rdata in answer.rrset
            if isinstance(rdata, PTR)
        ]

    async def tlsa(self, name: str) -> tuple[list[tuple[int, int, int, bytes]], bool]:
        """(usage, selector, matching type, data) records, and whether the AD flag was set."""
        answer = await self._lookup(name, "TLSA")
        if answer.rrset is None:
            return [], _ad(answer)
        records = [
            (rdata.usage, rdata.selector, rdata.mtype, rdata.cert)
            for rdata in answer.rrset
            if isinstance(rdata, TLSA)
        ]
        return records, _ad(answer)

    async def _try(self, name: str, rdtype: str) -> dns.resolver.Answer | DnsError:
        try:
            return await self._lookup(name, rdtype)
        except DnsError as exc:
            return exc

    async def _lookup(self, name: str, rdtype: str) -> dns.resolver.Answer:
        """The Answer (``rrset`` None for NODATA), or raise one of our errors."""
        what = f"{rdtype} {_display(name)}"
        kind = dns.rdatatype.RdataType.make(rdtype)
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            raise DnsNotFound(f"{what}: not a valid DNS name ({_one_line(exc)})") from None
        if qname == dns.name.root:
            raise DnsNotFound(f"{what}: empty name")
        try:
            return await self._resolver.resolve(qname, kind, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            raise DnsNotFound(f"{what}: no such domain (NXDOMAIN)") from None
        except dns.resolver.YXDOMAIN:
            raise DnsNotFound(f"{what}: name too long after DNAME substitution") from None
        except dns.resolver.NoNameservers as exc:
            raise DnsTemporaryError(
                f"{what}: no nameserver answered ({_server_errors(exc, self._labels)})"
            ) from None
        except dns.exception.Timeout:
            raise DnsTemporaryError(
                f"{what}: DNS timeout after {self.timeout}s "
                f"(nameservers {', '.join(self.nameservers)})"
            ) from None
        except dns.exception.DNSException as exc:
            raise DnsTemporaryError(f"{what}: DNS failure: {_one_line(exc)}") from None


def _host_name(name: dns.name.Name) -> str | None:
    """``name`` as a lower-case host name, or None if it is not one (or is an IP)."""
    text = name.to_text(omit_final_dot=True).lower()
    labels = text.split(".")
    if len(text) > 253 or labels[-1].isdigit():
        return None
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return None
    return text


def _mx_order(mx: MxHost) -> tuple[int, str]:
    return mx.preference, mx.host


def _ad(answer: dns.resolver.Answer) -> bool:
    return bool(answer.response.flags & dns.flags.AD)


def _display(name: str) -> str:
    return name.rstrip(".").lower() or "."


def _server_text(server: object) -> str:
    if isinstance(server, dns.nameserver.Do53Nameserver):
        host = f"[{server.address}]" if ":" in server.address else server.address
        return f"{host}:{server.port}"
    return str(server)


def _server_errors(exc: dns.resolver.NoNameservers, labels: dict[str, str]) -> str:
    texts: list[str] = []
    for server, tcp, _port, error, _response in exc.kwargs.get("errors", []):
        where = labels.get(str(server), str(server)) + (" (TCP)" if tcp else "")
        text = f"{where}: {_one_line(error)}"
        if text not in texts:
            texts.append(text)
    return "; ".join(texts[:3]) or "no nameservers"


def _one_line(error: object) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
