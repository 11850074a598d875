"""One DNS resolver for the whole gateway; this package is the only dnspython importer.

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

Queries go out through ``wire`` (our own sockets, dnspython's wire format: several
times cheaper per query than ``dns.asyncresolver``, which the bulk checker spent a fifth
of its CPU in), answers are kept in ``cache`` (bounded, TTL-honouring), and identical
lookups in flight share one query. Sockets belong to the event loop that opened them;
``close()`` (or ``async with``) releases them, and so does dropping the resolver.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import TracebackType

import dns.exception
import dns.name
import dns.rcode
import dns.rdata
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
from securemail.dns.cache import Answer, AnswerCache
from securemail.dns.errors import DnsError, DnsNotFound, DnsTemporaryError
from securemail.dns.wire import (
    EDNS_PAYLOAD,
    PER_TRY_TIMEOUT,
    Client,
    DnsStats,
    Nameserver,
    Unanswered,
    one_line,
)

__all__ = [
    "EDNS_PAYLOAD",
    "MAX_ADDRESSES",
    "MAX_MX_HOSTS",
    "PER_TRY_TIMEOUT",
    "DnsError",
    "DnsNotFound",
    "DnsStats",
    "DnsTemporaryError",
    "MxHost",
    "MxResult",
    "Resolver",
]

MAX_MX_HOSTS = 20
MAX_ADDRESSES = 16
CACHE_SIZE = 10_000

_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_PLAIN_NAME = re.compile(r"(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?")
_NXDOMAIN = -1
"""The cache key's type for "this name does not exist": one entry answers every type
(as dnspython caches NXDOMAIN under ANY)."""


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
    """Async lookups with a bounded TTL-honouring cache and the error split above."""

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        *,
        timeout: float = 5.0,
        cache: bool = True,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        if nameservers:
            servers = tuple(_server(*parse_nameserver(item)) for item in nameservers)
        else:
            servers = _system_nameservers()
        self.timeout = float(timeout)
        self.nameservers = tuple(server.label for server in servers)
        self._servers = servers
        self._cache = AnswerCache(cache_size) if cache else None
        self._stats = DnsStats()
        self._clients: dict[asyncio.AbstractEventLoop, Client] = {}
        weakref.finalize(self, _release_all, self._clients)

    @classmethod
    def from_config(cls, config: DnsConfig) -> Resolver:
        return cls(config.nameservers, timeout=config.timeout)

    async def __aenter__(self) -> Resolver:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every UDP socket; lookups waiting on one fail as temporary errors, and a
        later lookup opens fresh sockets. (A TCP exchange under way keeps its own
        connection until it ends, within the timeout.)"""
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            client.release()

    def stats(self) -> DnsStats:
        """A snapshot of the counters (lookups, cache hits, packets, dropped replies…)."""
        return replace(self._stats)

    @property
    def cached(self) -> int:
        """Answers in the cache now (at most ``cache_size``)."""
        return len(self._cache) if self._cache is not None else 0

    @property
    def open_sockets(self) -> int:
        """UDP sockets open now, on every event loop this resolver has served."""
        return sum(client.open_sockets for client in self._clients.values())

    async def query(self, name: str, rdtype: str) -> tuple[dns.rdata.Rdata, ...] | None:
        """The records for ``name``/``rdtype`` (CNAMEs followed), or None when there are
        none. Iterate it for dnspython rdata (``.to_text()``).

        Raises ``DnsNotFound`` for NXDOMAIN and ``DnsTemporaryError`` when no answer came.
        """
        return (await self._lookup(name, rdtype)).records

    async def mx(self, domain: str) -> MxResult:
        domain = domain.rstrip(".").lower()
        answer = await self._lookup(domain, "MX")
        dnssec = answer.ad
        if answer.records is None:
            try:
                await self.addresses(domain)
            except DnsNotFound:
                raise DnsNotFound(f"MX {domain}: no MX record and no A/AAAA address") from None
            return MxResult(domain, (MxHost(0, domain),), implicit=True, dnssec=dnssec)
        records = [rdata for rdata in answer.records if isinstance(rdata, MX)]
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
            if isinstance(result, Answer) and result.records is not None:
                for rdata in result.records:
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
        if answer.records is None:
            return []
        return [
            b"".join(rdata.strings).decode("utf-8", errors="replace")
            for rdata in answer.records
            if isinstance(rdata, TXT)
        ]

    async def ptr(self, ip: str) -> list[str]:
        """Host names for ``ip`` (raises ``ValueError`` if it is not an IP address)."""
        reverse = dns.reversename.from_address(str(ipaddress.ip_address(ip)))
        answer = await self._lookup(reverse.to_text(), "PTR")
        if answer.records is None:
            return []
        return [
            rdata.target.to_text(omit_final_dot=True).lower()
            for rdata in answer.records
            if isinstance(rdata, PTR)
        ]

    async def tlsa(self, name: str) -> tuple[list[tuple[int, int, int, bytes]], bool]:
        """(usage, selector, matching type, data) records, and whether the AD flag was set."""
        answer = await self._lookup(name, "TLSA")
        if answer.records is None:
            return [], answer.ad
        records = [
            (rdata.usage, rdata.selector, rdata.mtype, rdata.cert)
            for rdata in answer.records
            if isinstance(rdata, TLSA)
        ]
        return records, answer.ad

    async def _try(self, name: str, rdtype: str) -> Answer | DnsError:
        try:
            return await self._lookup(name, rdtype)
        except DnsError as exc:
            return exc

    async def _lookup(self, name: str, rdtype: str) -> Answer:
        """The answer (``records`` None for NODATA), or raise one of our errors."""
        kind = _rdtype(rdtype)
        wire = _wire_name(name, rdtype)
        qname = wire.lower()
        self._stats.lookups += 1
        key = (qname, kind)
        if self._cache is not None:
            hit = self._cache.get(key) or self._cache.get((qname, _NXDOMAIN))
            if hit is not None:
                self._stats.cache_hits += 1
                if hit.nxdomain:
                    raise DnsNotFound(f"{_what(name, rdtype)}: no such domain (NXDOMAIN)")
                return hit
        client = self._client()
        while (waiters := client.inflight.get(key)) is not None:
            # The same question is being asked: wait for its answer instead of asking.
            self._stats.coalesced += 1
            waiter: asyncio.Future[Answer] = client.loop.create_future()
            waiters.append(waiter)
            try:
                return await waiter
            except _AskAgain:
                continue  # its asker was cancelled; one of us asks now
        client.inflight[key] = waiters = []
        try:
            answer = await self._fetch(client, wire, kind, _what(name, rdtype))
        except DnsError as exc:
            _settle(waiters, exc)
            raise
        except BaseException:  # cancelled: the others are not, so they ask again
            _settle(waiters, _AskAgain())
            raise
        finally:
            del client.inflight[key]
        _settle(waiters, answer)
        return answer

    async def _fetch(self, client: Client, wire: bytes, kind: int, what: str) -> Answer:
        """Ask the nameservers, cache what they say, and turn failures into our errors."""
        try:
            reply = await client.exchange(wire, kind, self.timeout)
        except Unanswered as exc:
            raise DnsTemporaryError(f"{what}: no nameserver answered ({exc})") from None
        except TimeoutError:
            raise DnsTemporaryError(
                f"{what}: DNS timeout after {self.timeout}s "
                f"(nameservers {', '.join(self.nameservers)})"
            ) from None
        except Exception as exc:  # unknown: deferring is recoverable, bouncing is not
            raise DnsTemporaryError(f"{what}: DNS failure: {one_line(exc)}") from None
        if reply.rcode == dns.rcode.YXDOMAIN:
            raise DnsNotFound(f"{what}: name too long after DNAME substitution")
        answer = reply.answer
        if self._cache is not None:
            key = (wire.lower(), _NXDOMAIN if answer.nxdomain else kind)
            self._cache.put(key, answer, reply.ttl)
        if answer.nxdomain:
            raise DnsNotFound(f"{what}: no such domain (NXDOMAIN)")
        return answer

    def _client(self) -> Client:
        """This event loop's sockets and lookups in flight (made on first use; those of
        loops that have closed since are released then)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            for other in [other for other in self._clients if other.is_closed()]:
                self._clients.pop(other).release()
            client = self._clients[loop] = Client(loop, self._servers, self._stats)
        return client


def _wire_name(name: str, rdtype: str) -> bytes:
    """``name`` (absolute, dots optional at the end) in wire form. Plain host names are
    encoded here (dnspython's ``from_text`` costs more than the rest of a cached lookup);
    anything else (escapes, non-ASCII, odd lengths) goes through dnspython and its
    errors."""
    if len(name) <= 253 and _PLAIN_NAME.fullmatch(name):
        labels = name.rstrip(".").split(".")
        return b"".join(len(label).to_bytes(1, "big") + label.encode() for label in labels) + b"\0"
    try:
        parsed = dns.name.from_text(name)
    except dns.exception.DNSException as exc:
        what = _what(name, rdtype)
        raise DnsNotFound(f"{what}: not a valid DNS name ({one_line(exc)})") from None
    if parsed == dns.name.root:
        raise DnsNotFound(f"{_what(name, rdtype)}: empty name")
    return parsed.to_wire() or b"\0"


@functools.cache
def _rdtype(text: str) -> int:
    return int(dns.rdatatype.RdataType.make(text))


def _server(host: str, port: int) -> Nameserver:
    label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Nameserver(host, port, label)


def _system_nameservers() -> tuple[Nameserver, ...]:
    """The nameservers of /etc/resolv.conf (read through dnspython, as before)."""
    try:
        system = dns.resolver.Resolver(configure=True)
    except dns.resolver.NoResolverConfiguration:
        raise DnsError("no nameservers in /etc/resolv.conf: set [dns] nameservers") from None
    servers = tuple(
        _server(str(ns), system.port) for ns in system.nameservers if isinstance(ns, str)
    )
    if not servers:
        raise DnsError("no nameservers in /etc/resolv.conf: set [dns] nameservers")
    return servers


class _AskAgain(Exception):
    """The lookup a waiter waited on was cancelled with its asker."""


def _settle(waiters: list[asyncio.Future[Answer]], outcome: Answer | BaseException) -> None:
    for waiter in waiters:
        if waiter.done():  # that waiter was cancelled
            continue
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)


def _release_all(clients: dict[asyncio.AbstractEventLoop, Client]) -> None:
    for client in list(clients.values()):
        client.release()
    clients.clear()


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


def _what(name: str, rdtype: str) -> str:
    return f"{rdtype} {_display(name)}"


def _display(name: str) -> str:
    return name.rstrip(".").lower() or "."
