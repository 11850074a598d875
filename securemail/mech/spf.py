"""SPF (RFC 7208): a pure record parser and an async ``check_host()`` evaluator.

Why our own: pyspf does blocking DNS through its own resolver, but the gateway checks SPF
on every inbound message on the event loop, through the one configured ``Resolver``. The
domain checker needs the parser alone, to report syntax problems and count lookups.

The processing limits (§4.6.4) are what stop a hostile record from making us flood DNS,
so they are exact: 10 DNS-causing terms in the whole evaluation (includes and redirects
share the count), 2 void lookups, 10 MX names per ``mx`` (more is a permerror), 10 PTR
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
  lookup limit, as §4.6.4 says; ``c``, ``r``, ``t`` are refused in domain-specs (§7.1)
  but tolerated in unknown modifiers, which are ignored anyway.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import quote

import idna

from securemail.dns import DnsNotFound, DnsTemporaryError, Resolver
from securemail.mech.results import MethodResult, Result

LOOKUP_LIMIT = 10
VOID_LIMIT = 2
MX_LIMIT = 10
PTR_LIMIT = 10
TIME_LIMIT = 20.0
MAX_DOMAIN_CHARS = 253
MAX_EXPLANATION = 1000  # characters kept of an expanded exp= text

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

QUALIFIER_RESULTS = {"+": Result.PASS, "-": Result.FAIL, "~": Result.SOFTFAIL, "?": Result.NEUTRAL}
DNS_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})
MECHANISMS = DNS_MECHANISMS | {"all", "ip4", "ip6"}

_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)", re.S)
_MECHANISM = re.compile(r"([+\-~?]?)([A-Za-z0-9]+)(.*)", re.S)
_DOMAIN_ARGS = re.compile(r"(?::(.*?))?(?:/([0-9]+))?(?://([0-9]+))?", re.S)
_LDH = re.compile(r"[A-Za-z0-9-]+")
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IP4_NETWORK = re.compile(rf"{_QNUM}(?:\.{_QNUM}){{3}}")
_IP6_NETWORK = re.compile(r"[0-9A-Fa-f:.]+")
_CIDR = re.compile(r"0|[1-9][0-9]{0,2}")
_TOKEN = re.compile(
    r"%\{(?P<letter>[A-Za-z])(?P<digits>[0-9]*)(?P<reverse>[rR]?)(?P<delimiters>[.\-+,/_=]*)\}"
    r"|%(?P<escape>[%_-])|(?P<literal>[^%]+)|%"
)
_NOT_LITERAL = re.compile(r"[^!-~]")  # macro-literal: visible ASCII (and "%" is not literal)
_NOT_EXPLAIN_TEXT = re.compile(r"[^ -~]")  # explain-string: the same, and spaces
_MACRO_LETTERS = "slodiphcrtv"
_ESCAPES = {"%": "%", "_": " ", "-": "%20"}


class SpfSyntaxError(ValueError):
    """The record (or a macro string) breaks RFC 7208's grammar; the message says where."""


@dataclass(frozen=True, slots=True)
class Term:
    """One mechanism or modifier. Modifiers have qualifier ``""``."""

    kind: str  # "mechanism" | "modifier"
    qualifier: str  # "+" | "-" | "~" | "?"
    name: str  # lower-case: all, include, a, mx, ptr, ip4, ip6, exists, redirect, exp, ...
    value: str  # domain-spec or network as written (may hold macros); "" when absent
    cidr4: int | None = None
    cidr6: int | None = None

    @property
    def text(self) -> str:
        """The term written out again (``-all``, ``a:example.org/24//64``)."""
        if self.kind == "modifier":
            return f"{self.name}={self.value}"
        text = ("" if self.qualifier == "+" else self.qualifier) + self.name
        text += f":{self.value}" if self.value else ""
        text += "" if self.cidr4 is None else f"/{self.cidr4}"
        if self.cidr6 is not None:
            text += f"/{self.cidr6}" if self.name == "ip6" else f"//{self.cidr6}"
        return text


@dataclass(frozen=True, slots=True)
class SpfRecord:
    terms: tuple[Term, ...]

    @property
    def redirect(self) -> str | None:
        return self._modifier("redirect")

    @property
    def exp(self) -> str | None:
        return self._modifier("exp")

    @property
    def all_qualifier(self) -> str | None:
        return next(
            (t.qualifier for t in self.terms if t.kind == "mechanism" and t.name == "all"), None
        )

    def dns_lookup_terms(self) -> int:
        """Terms of this record that would cause DNS lookups (not counting nested records).

        Mechanisms after ``all`` are never reached, and ``redirect`` is ignored when there is
        an ``all`` (§6.1), so neither is counted.
        """
        count = 0
        for term in self.terms:
            if term.kind == "mechanism":
                if term.name == "all":
                    return count
                count += term.name in DNS_MECHANISMS
        return count + (self.redirect is not None)

    def _modifier(self, name: str) -> str | None:
        return next((t.value for t in self.terms if t.kind == "modifier" and t.name == name), None)


# --- parsing (pure) ----------------------------------------------------------------------


def select_spf_record(txt_strings: Sequence[str]) -> str | None:
    """The one ``v=spf1`` record among a name's TXT strings, or None (§4.5)."""
    records = spf_records(txt_strings)
    if len(records) > 1:
        raise SpfSyntaxError("multiple SPF records")
    return records[0] if records else None


def spf_records(txt_strings: Sequence[str]) -> list[str]:
    """Every TXT string that is an SPF record (``v=spf1`` then a space or the end, §4.5).

    For callers that must see several records rather than a permerror (the checker).
    """
    return [text for text in txt_strings if _is_spf1(text)]


def parse_spf(record: str) -> SpfRecord:
    """Parse a whole record strictly by RFC 7208 §12; raises ``SpfSyntaxError``."""
    if not _is_spf1(record):
        raise SpfSyntaxError('not an SPF record: it must start with "v=spf1"')
    terms: list[Term] = []
    seen: set[str] = set()
    for index, text in enumerate((t for t in record[6:].split(" ") if t), start=1):
        try:
            term = _parse_term(text)
            if term.kind == "modifier" and term.name in ("redirect", "exp"):
                if term.name in seen:
                    raise SpfSyntaxError(f"duplicate {term.name} modifier")
                seen.add(term.name)
        except SpfSyntaxError as exc:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise SpfSyntaxError(f'term {index} "{shown}" : {exc}') from None
        terms.append(term)
    return SpfRecord(tuple(terms))


def _is_spf1(text: str) -> bool:
    return text[:6].lower() == "v=spf1" and text[6:7] in ("", " ")


def _parse_term(text: str) -> Term:
    modifier = _MODIFIER.fullmatch(text)
    if modifier is not None:
        name, value = modifier[1].lower(), modifier[2]
        if name in ("redirect", "exp"):
            _check_domain_spec(value)
        else:
            _tokens(value, explanation=True)
        return Term("modifier", "", name, value)
    match = _MECHANISM.fullmatch(text)
    if match is None:
        raise SpfSyntaxError("not a mechanism or modifier")
    qualifier, name, rest = match[1] or "+", match[2].lower(), match[3]
    if name not in MECHANISMS:
        raise SpfSyntaxError(f'unknown mechanism "{match[2]}"')
    if name == "all":
        if rest:
            raise SpfSyntaxError('"all" takes no argument')
        return Term("mechanism", qualifier, name, "")
    if name in ("ip4", "ip6"):
        return _ip_term(qualifier, name, rest)
    args = _DOMAIN_ARGS.fullmatch(rest)
    if args is None:
        raise SpfSyntaxError("invalid domain-spec or CIDR length")
    spec, cidr4, cidr6 = args.groups()
    if (cidr4 or cidr6) and name not in ("a", "mx"):
        raise SpfSyntaxError(f'"{name}" takes no CIDR length')
    if spec is None and name in ("include", "exists"):
        raise SpfSyntaxError(f'"{name}" needs ":domain-spec"')
    if spec is not None:
        _check_domain_spec(spec)
    return Term(
        "mechanism", qualifier, name, spec or "", _cidr(cidr4, 32, "4"), _cidr(cidr6, 128, "6")
    )


def _ip_term(qualifier: str, name: str, rest: str) -> Term:
    family = name[-1]
    if not rest.startswith(":"):
        raise SpfSyntaxError(f'"{name}" needs ":network"')
    network, slash, length = rest[1:].partition("/")
    cidr = _cidr(length if slash else None, 32 if family == "4" else 128, family)
    if family == "4":
        if _IP4_NETWORK.fullmatch(network) is None:
            raise SpfSyntaxError("invalid IPv4 network")
        return Term("mechanism", qualifier, name, network, cidr4=cidr)
    try:
        if _IP6_NETWORK.fullmatch(network) is None:
            raise ValueError(network)
        ipaddress.IPv6Address(network)
    except ValueError:
        raise SpfSyntaxError("invalid IPv6 network") from None
    return Term("mechanism", qualifier, name, network, cidr6=cidr)


def _cidr(text: str | None, limit: int, family: str) -> int | None:
    if text is None:
        return None
    if _CIDR.fullmatch(text) is None or int(text) > limit:
        raise SpfSyntaxError(f"invalid IPv{family} CIDR length /{text} (0-{limit})")
    return int(text)


def _check_domain_spec(spec: str) -> None:
    if not spec:
        raise SpfSyntaxError("empty domain-spec")
    last = _tokens(spec, explanation=False)[-1]
    if isinstance(last, str) and not _ends_in_toplabel(last):
        raise SpfSyntaxError("domain-spec must end in a top-level label or a macro")


def _ends_in_toplabel(literal: str) -> bool:
    """``"." toplabel ["."]`` at the end; in code, as a regex would be quadratic here."""
    _, dot, label = literal.removesuffix(".").rpartition(".")
    if not dot or _LDH.fullmatch(label) is None:
        return False
    return label[0] != "-" and label[-1] != "-" if "-" in label else not label.isdigit()


# --- macros (pure) -----------------------------------------------------------------------


class _Macro(NamedTuple):
    letter: str  # a macro letter as written, or "%", "_", "-" for %%, %_, %-
    count: int = 0  # keep this many right-hand parts; 0 keeps all
    reverse: bool = False
    delimiters: str = ""


@dataclass(frozen=True, slots=True)
class MacroContext:
    """What macros expand to (§7.3); ``ip`` must be an IP address (IPv4-mapped as IPv4)."""

    sender: str
    domain: str
    ip: str
    helo: str = ""
    receiver: str = "unknown"
    ptr: str = "unknown"
    timestamp: int = 0


def _tokens(text: str, *, explanation: bool) -> list[str | _Macro]:
    tokens: list[str | _Macro] = []
    for match in _TOKEN.finditer(text):
        literal, letter, digits = match["literal"], match["letter"], match["digits"]
        if literal is not None:
            bad = (_NOT_EXPLAIN_TEXT if explanation else _NOT_LITERAL).search(literal)
            if bad is not None:
                raise SpfSyntaxError(f"character {bad[0]!r} is not allowed")
            tokens.append(literal)
        elif match["escape"] is not None:
            tokens.append(_Macro(match["escape"]))
        elif letter is None:
            raise SpfSyntaxError(f"invalid macro {text[match.start() : match.start() + 12]!r}")
        elif letter.lower() not in _MACRO_LETTERS:
            raise SpfSyntaxError(f"unknown macro letter {letter!r}")
        elif letter.lower() in "crt" and not explanation:
            raise SpfSyntaxError(f'macro "%{{{letter}}}" is allowed only in explanations')
        elif digits and not digits.strip("0"):
            raise SpfSyntaxError("a macro's digit transformer must not be zero")
        else:
            digits = digits.lstrip("0")
            count = int(digits or 0) if len(digits) <= 4 else 9999  # more than any name has
            tokens.append(_Macro(letter, count, bool(match["reverse"]), match["delimiters"]))
    return tokens


def expand_macros(text: str, context: MacroContext, *, explanation: bool = False) -> str:
    """Expand a macro-string (or, with ``explanation``, an explain-string) (§7)."""
    out: list[str] = []
    values: dict[str, str] = {}
    for token in _tokens(text, explanation=explanation):
        if isinstance(token, str):
            out.append(token)
        elif token.letter in _ESCAPES:
            out.append(_ESCAPES[token.letter])
        else:
            values = values or _macro_values(context)
            value = values[token.letter.lower()]
            parts = re.split(f"[{re.escape(token.delimiters or '.')}]", value)
            parts = parts[::-1] if token.reverse else parts
            expanded = ".".join(parts[-token.count :] if token.count else parts)
            out.append(quote(expanded, safe="") if token.letter.isupper() else expanded)
    return "".join(out)


def expand_domain(spec: str, context: MacroContext) -> str:
    """A domain-spec expanded to a lower-case name, cut from the left to 253 chars (§7.3)."""
    name = expand_macros(spec, context).lower()
    name = name[:-1] if name.endswith(".") else name
    while len(name) > MAX_DOMAIN_CHARS and "." in name:
        name = name.split(".", 1)[1]
    return name


def _macro_values(context: MacroContext) -> dict[str, str]:
    local, _, domain = context.sender.rpartition("@")
    address = ipaddress.ip_address(context.ip)
    ipv4 = address.version == 4
    return {
        "s": context.sender,
        "l": local or "postmaster",
        "o": domain,
        "d": context.domain,
        "i": str(address) if ipv4 else ".".join(address.exploded.replace(":", "")),
        "p": context.ptr,
        "v": "in-addr" if ipv4 else "ip6",
        "h": context.helo,
        "c": str(address),
        "r": context.receiver or "unknown",
        "t": str(context.timestamp),
    }


# --- addresses and names (pure) ----------------------------------------------------------


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


def valid_domain(name: str) -> bool:
    """§4.3: a multi-label name, labels of 1-63 chars, at most 253 chars, not an IP."""
    labels = name.split(".")
    return (
        0 < len(name) <= MAX_DOMAIN_CHARS
        and len(labels) >= 2
        and all(0 < len(label) <= 63 for label in labels)
        and name.isascii()
        and name.isprintable()
        and not any(char in name for char in " \\[]")
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


# --- evaluation (async, through the one resolver) ----------------------------------------


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
        if not valid_domain(domain):
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
        if not valid_domain(target):
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
        """§5.4: no implicit MX; more than ``mx_limit`` names is a permerror (§4.6.4)."""
        records: list[tuple[int, str]] = []
        for text in await self.ask(target, "MX"):
            preference, _, host = text.partition(" ")
            with suppress(ValueError):
                records.append((int(preference), host.rstrip(".").lower()))
        if not records:
            self.count_void()
        hosts = list(dict.fromkeys(host for _, host in sorted(records) if host))
        if len(hosts) > self.mx_limit:
            raise _Abort(f"mx:{target}: too many MX names ({len(hosts)} > {self.mx_limit})")
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
            self.sender, domain, str(self.ip), self.helo, receiver, ptr, self.timestamp
        )

    async def target(self, spec: str, domain: str) -> str:
        return expand_domain(spec, await self.context(domain, spec))

    async def explanation(self, spec: str, domain: str) -> str:
        """§6.2: the exp= text; any failure to find or expand it just means no text."""
        try:
            name = expand_domain(spec, await self.context(domain, spec, counted=False))
            texts = await self.resolver.txt(name) if valid_domain(name) else []
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
    run = _Evaluation(address, sender, helo, receiver, resolver, *limits)
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
