"""SPF records (RFC 7208 §12): the pure, strict parser, macro-string grammar included.

The domain checker needs the parser alone, to report syntax problems and count lookups,
and the evaluator parses every record it fetches with it, so a record the checker calls
valid is one the gateway evaluates the same way. A macro-string's grammar (§7.1) is
checked here, when the record is parsed, so a bad macro is a syntax error before anything
is expanded; ``%{c}``, ``%{r}`` and ``%{t}`` are refused in domain-specs but tolerated in
unknown modifiers, which are ignored anyway.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

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


# --- macro-strings (§7.1) --------------------------------------------------------------


class _Macro(NamedTuple):
    letter: str  # a macro letter as written, or "%", "_", "-" for %%, %_, %-
    count: int = 0  # keep this many right-hand parts; 0 keeps all
    reverse: bool = False
    delimiters: str = ""


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
