"""SPF evaluation (RFC 7208 §4): an async ``check_host()`` through the one ``Resolver``.

Why our own: pyspf does blocking DNS through its own resolver, but the gateway checks SPF
on every inbound message on the event loop, through the one configured ``Resolver``.

The processing limits (§4.6.4) are what stop a hostile record from making us flood DNS,
so they are exact: 10 DNS-causing terms in the whole evaluation (includes and redirects
share the count), 2 void lookups, 10 MX records per ``mx`` (more is a permerror, however
few hosts they name: the suite's ``mx-limit`` is 11 records naming one host), 10 PTR
names per ``ptr`` (the rest ignored), and a wall-clock cap (temperror). A temperror or
permerror anywhere, however deep in an include, decides the whole result (§5.2), so they
travel to the top as an exception.

Where the RFC leaves room, we chose:

* A void lookup is counted for the one query a term is about (the TXT of an include or
  redirect target, the A/AAAA of ``a``, the MX of ``mx``, the PTR of ``ptr``, the A of
  ``exists``), not for the address lookups of each MX or PTR name.
* A target that is not a valid domain after macro expansion (say, an empty label from an
  odd local part) makes ``a``/``mx``/``ptr``/``exists`` not match, without asking DNS;
  for ``include`` and ``redirect`` it is a permerror (§6.1).
* ``%{p}`` is a validated PTR name (``unknown`` if none) and counts once towards the
  lookup limit, as §4.6.4 says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import NamedTuple

from securemail.dns import DnsNotFound, DnsTemporaryError, Resolver
from securemail.mech.results import MethodResult, Result
from securemail.mech.spf.macros import MacroContext, expand_domain, expand_macros
from securemail.mech.spf.names import (
    IPAddress,
    _ascii_domain,
    _within,
    ip_in_network,
    normalise_ip,
    valid_domain,
)
from securemail.mech.spf.record import SpfRecord, SpfSyntaxError, Term, parse_spf, select_spf_record

LOOKUP_LIMIT = 10
VOID_LIMIT = 2
MX_LIMIT = 10
PTR_LIMIT = 10
TIME_LIMIT = 20.0
MAX_EXPLANATION = 1000  # characters kept of an expanded exp= text

QUALIFIER_RESULTS = {"+": Result.PASS, "-": Result.FAIL, "~": Result.SOFTFAIL, "?": Result.NEUTRAL}


@dataclass(frozen=True, slots=True)
class SpfResult:
    result: Result
    domain: str  # the domain checked at the top (the MAIL FROM or HELO domain)
    identity: str  # "mailfrom" | "helo"
    sender: str  # the address checked (postmaster@<domain> when there was no local part)
    mechanism: str  # the term that decided ("ip4:192.0.2.0/24"), "default", or ""
    reason: str  # for a person: "192.0.2.7 is not permitted by -all in example.org"
    lookups: int  # terms that caused DNS lookups, counted against the limit of 10
    explanation: str = ""  # the exp= text (macro-expanded) when the result is fail

    def to_method_result(self) -> MethodResult:
        key, value = (
            ("smtp.helo", self.domain)
            if self.identity == "helo"
            else ("smtp.mailfrom", self.sender)
        )
        return MethodResult("spf", self.result, self.reason, ((key, value),))


class _Abort(Exception):
    """A permerror or temperror: it ends the whole evaluation, however deep it is raised."""

    def __init__(self, reason: str, result: Result = Result.PERMERROR) -> None:
        super().__init__(reason, result)


class _Verdict(NamedTuple):
    result: Result
    mechanism: str
    reason: str
    explanation: str = ""


_VERBS = {
    Result.PASS: "is permitted by",
    Result.FAIL: "is not permitted by",
    Result.SOFTFAIL: "is not permitted (softfail) by",
    Result.NEUTRAL: "is neither permitted nor denied by",
}


@dataclass(slots=True)
class _Evaluation:
    ip: IPAddress
    ip_text: str  # as the caller wrote it, for the case of %{i}'s IPv6 nibbles
    sender: str
    helo: str
    receiver: str
    resolver: Resolver
    lookup_limit: int
    void_limit: int
    mx_limit: int
    ptr_limit: int
    lookups: int = 0
    voids: int = 0
    ptr_names: list[str] | None = None  # validated names for %{p}, once asked
    timestamp: int = field(default_factory=lambda: int(time.time()))

    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > self.lookup_limit:
            raise _Abort(f"too many DNS lookups ({self.lookups} > {self.lookup_limit})")

    def count_void(self) -> None:
        self.voids += 1
        if self.voids > self.void_limit:
            raise _Abort(f"too many void DNS lookups ({self.voids} > {self.void_limit})")

    async def check(self, domain: str, *, explain: bool, nested: bool) -> _Verdict:
        """check_host() for ``domain`` (§4), sharing this evaluation's counters."""
        if not valid_domain(domain, expanded=nested):
            return _Verdict(Result.NONE, "", f"{domain!r} is not a valid domain name")
        record = await self.record(domain, nested=nested)
        if isinstance(record, str):
            return _Verdict(Result.NONE, "", record)
        for term in record.terms:
            if term.kind == "mechanism" and await self.matches(term, domain):
                result = QUALIFIER_RESULTS[term.qualifier]
                reason = f"{self.ip} {_VERBS[result]} {term.text} in {domain}"
                explanation = ""
                if result is Result.FAIL and explain and record.exp is not None:
                    explanation = await self.explanation(record.exp, domain)
                return _Verdict(result, term.text, reason, explanation)
        if record.redirect is not None and record.all_qualifier is None:
            self.count_lookup()
            target = await self.target(record.redirect, domain)
            verdict = await self.check(target, explain=explain, nested=True)
            if verdict.result is Result.NONE:
                raise _Abort(f"redirect={target}: {verdict.reason}")
            return verdict
        reason = f"no mechanism matched {self.ip} in {domain}; the default is neutral"
        return _Verdict(Result.NEUTRAL, "default", reason)

    async def record(self, domain: str, *, nested: bool) -> SpfRecord | str:
        """The parsed record, or why there is none (§4.4, §4.5)."""
        try:
            texts = await self.resolver.txt(domain)
        except DnsNotFound:
            texts = None
        except DnsTemporaryError as exc:
            raise _Abort(str(exc), Result.TEMPERROR) from None
        if not texts and nested:
            self.count_void()
        if texts is None:
            return f"{domain} does not exist (NXDOMAIN)"
        try:
            text = select_spf_record(texts)
            return parse_spf(text) if text is not None else f"no SPF record at {domain}"
        except SpfSyntaxError as exc:
            raise _Abort(f"{domain}: {exc}") from None

    async def matches(self, term: Term, domain: str) -> bool:
        if term.name == "all":
            return True
        if term.name in ("ip4", "ip6"):
            prefix = term.cidr4 if term.name == "ip4" else term.cidr6
            return ip_in_network(self.ip, term.value, prefix)
        self.count_lookup()
        target = await self.target(term.value, domain) if term.value else domain
        if term.name == "include":
            verdict = await self.check(target, explain=False, nested=True)
            if verdict.result is Result.NONE:
                raise _Abort(f"include:{target}: {verdict.reason}")
            return verdict.result is Result.PASS
        if not valid_domain(target, expanded=True):
            return False
        if term.name == "ptr":
            return bool(await self.validated_names(target, void=True))
        if term.name == "mx":
            return await self.mx_matches(target, term)
        found = await self.addresses(target, "A" if term.name == "exists" else None)
        if not found:
            self.count_void()
        return bool(found) if term.name == "exists" else self.cidr_match(found, term)

    def cidr_match(self, addresses: list[IPAddress], term: Term) -> bool:
        prefix = term.cidr4 if self.ip.version == 4 else term.cidr6
        return any(ip_in_network(self.ip, str(address), prefix) for address in addresses)

    async def ask(self, name: str, rdtype: str, *, soft: bool = False) -> list[str]:
        """Records as text; none for NXDOMAIN or NODATA; a DNS failure is a temperror."""
        try:
            answer = await self.resolver.query(name, rdtype)
        except DnsNotFound:
            return []
        except DnsTemporaryError as exc:
            if soft:
                return []
            raise _Abort(str(exc), Result.TEMPERROR) from None
        return [] if answer is None else [rdata.to_text() for rdata in answer]

    async def addresses(
        self, name: str, rdtype: str | None = None, *, soft: bool = False
    ) -> list[IPAddress]:
        """A or AAAA (by default the type of the connecting IP) addresses of ``name``."""
        rdtype = rdtype or ("A" if self.ip.version == 4 else "AAAA")
        found: list[IPAddress] = []
        for text in await self.ask(name, rdtype, soft=soft):
            with suppress(ValueError):
                found.append(ipaddress.ip_address(text))
        return found

    async def mx_matches(self, target: str, term: Term) -> bool:
        """§5.4: no implicit MX; more than ``mx_limit`` records is a permerror (§4.6.4)."""
        records: list[tuple[int, str]] = []
        for text in await self.ask(target, "MX"):
            preference, _, host = text.partition(" ")
            with suppress(ValueError):
                records.append((int(preference), host.rstrip(".").lower()))
        if not records:
            self.count_void()
        if len(records) > self.mx_limit:
            raise _Abort(f"mx:{target}: too many MX records ({len(records)} > {self.mx_limit})")
        hosts = list(dict.fromkeys(host for _, host in sorted(records) if host))
        lookups = [self.addresses(host) for host in hosts]
        for found in await asyncio.gather(*lookups, return_exceptions=True):
            if isinstance(found, BaseException):
                raise found  # the first error in MX order, as if asked one by one
            if self.cidr_match(found, term):
                return True
        return False

    async def validated_names(self, within: str | None, *, void: bool = False) -> list[str]:
        """PTR names of the IP (the first ``ptr_limit``) whose addresses include it (§5.5).

        Names outside ``within`` are dropped before their addresses are asked. A DNS error
        means no names (§5.5), never a temperror.
        """
        try:
            names = await self.resolver.ptr(str(self.ip))
        except DnsNotFound:
            names = []
        except DnsTemporaryError:
            return []
        if void and not names:
            self.count_void()
        names = list(dict.fromkeys(names))[: self.ptr_limit]
        names = [n for n in names if valid_domain(n) and (within is None or _within(n, within))]
        lookups = [self.addresses(name, soft=True) for name in names]
        found = await asyncio.gather(*lookups, return_exceptions=True)
        return [
            n for n, a in zip(names, found, strict=True) if isinstance(a, list) and self.ip in a
        ]

    async def context(self, domain: str, text: str, *, counted: bool = True) -> MacroContext:
        """The macro context for ``text``, asking PTR only if it uses ``%{p}``."""
        ptr = "unknown"
        if "%{p" in text.lower():
            if self.ptr_names is None:
                if counted:
                    self.count_lookup()
                self.ptr_names = await self.validated_names(None)
            names = self.ptr_names
            best = [n for n in names if n == domain] or [n for n in names if _within(n, domain)]
            ptr = (best or names or [ptr])[0]
        receiver = self.receiver or "unknown"
        return MacroContext(
            self.sender, domain, self.ip_text, self.helo, receiver, ptr, self.timestamp
        )

    async def target(self, spec: str, domain: str) -> str:
        return expand_domain(spec, await self.context(domain, spec))

    async def explanation(self, spec: str, domain: str) -> str:
        """§6.2: the exp= text; any failure to find or expand it just means no text."""
        try:
            name = expand_domain(spec, await self.context(domain, spec, counted=False))
            texts = await self.resolver.txt(name) if valid_domain(name, expanded=True) else []
            if len(texts) != 1:
                return ""
            context = await self.context(domain, texts[0], counted=False)
            return expand_macros(texts[0], context, explanation=True)[:MAX_EXPLANATION]
        except (DnsNotFound, DnsTemporaryError, SpfSyntaxError):
            return ""


async def check_host(
    ip: str,
    domain: str,
    sender: str,
    resolver: Resolver,
    *,
    helo: str = "",
    receiver: str = "",
    lookup_limit: int = LOOKUP_LIMIT,
    void_limit: int = VOID_LIMIT,
    mx_limit: int = MX_LIMIT,
    ptr_limit: int = PTR_LIMIT,
    time_limit: float = TIME_LIMIT,
    identity: str = "mailfrom",
) -> SpfResult:
    """RFC 7208 §4 check_host(): may ``ip`` send mail for ``domain``?

    ``sender`` without a local part becomes ``postmaster@<domain>``. Raises ``ValueError``
    only when ``ip`` is not an IP address.
    """
    address, domain = normalise_ip(ip), _ascii_domain(domain)
    local, _, sender_domain = sender.rpartition("@")
    sender = sender if local else f"postmaster@{sender_domain or domain}"
    limits = (lookup_limit, void_limit, mx_limit, ptr_limit)
    spelled = ip.strip().strip("[]") if address.version == 6 else str(address)
    run = _Evaluation(address, spelled, sender, helo, receiver, resolver, *limits)
    try:
        async with asyncio.timeout(time_limit):
            verdict = await run.check(domain, explain=True, nested=False)
    except _Abort as abort:
        verdict = _Verdict(abort.args[1], "", abort.args[0])
    except TimeoutError:
        reason = f"SPF evaluation for {domain} took longer than {time_limit:g}s"
        verdict = _Verdict(Result.TEMPERROR, "", reason)
    result, mechanism, reason, explanation = verdict
    return SpfResult(result, domain, identity, sender, mechanism, reason, run.lookups, explanation)


async def check_spf(
    ip: str, mail_from: str, helo: str, resolver: Resolver, *, receiver: str = ""
) -> SpfResult:
    """The MAIL FROM identity (§2.4); the null sender is checked as postmaster@<helo>."""
    address = mail_from.strip().removeprefix("<").removesuffix(">").strip()
    if address.startswith("@") and ":" in address:
        address = address.split(":", 1)[1]  # an RFC 5321 source route: the mailbox follows
    address = address or f"postmaster@{helo.strip()}"
    domain = address.rpartition("@")[2]
    return await check_host(ip, domain, address, resolver, helo=helo, receiver=receiver)


async def check_helo(ip: str, helo: str, resolver: Resolver, *, receiver: str = "") -> SpfResult:
    """The HELO identity (§2.3); an IP literal or a name that is not a FQDN gives none."""
    name = _ascii_domain(helo)
    sender = f"postmaster@{name}"
    if valid_domain(name):
        return await check_host(
            ip, name, sender, resolver, helo=helo, receiver=receiver, identity="helo"
        )
    normalise_ip(ip)  # the same ValueError as check_host for a bad IP
    reason = f"HELO name {helo.strip()!r} is not a fully qualified domain name"
    return SpfResult(Result.NONE, name, "helo", sender, "", reason, 0)
