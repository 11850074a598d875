"""SPF macro expansion (RFC 7208 §7): what ``%{s}``, ``%{ir}``, ``%{d}`` ... become.

Apart from the grammar (``record`` decides what a macro-string may hold) because
expansion needs the facts of one SMTP transaction, a ``MacroContext``, which parsing
does not. Still pure: ``%{p}`` arrives already looked up, by the evaluator, which alone
decides when PTR is asked and how it counts towards the lookup limit.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote

from securemail.mech.spf.names import MAX_DOMAIN_CHARS
from securemail.mech.spf.record import _tokens

_ESCAPES = {"%": "%", "_": " ", "-": "%20"}


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


def _nibbles(address: ipaddress.IPv6Address, spelled: str) -> str:
    """The 32 hex digits of ``%{i}`` (§7.3), in the case the address was written in.

    DNS does not care, but the text of an explanation shows them: the suite's
    ``v-macro-ip6`` checks ``CAFE:BABE::1`` as ``...E.B.A.B.E.F.A.C``, while RFC 7208's own
    examples write lower case and get lower case.
    """
    digits = address.exploded.replace(":", "")
    return digits.upper() if spelled.isupper() else digits


def _macro_values(context: MacroContext) -> dict[str, str]:
    local, _, domain = context.sender.rpartition("@")
    address = ipaddress.ip_address(context.ip)
    ipv4 = address.version == 4
    return {
        "s": context.sender,
        "l": local or "postmaster",
        "o": domain,
        "d": context.domain,
        "i": str(address) if ipv4 else ".".join(_nibbles(address, context.ip)),
        "p": context.ptr,
        "v": "in-addr" if ipv4 else "ip6",
        "h": context.helo,
        "c": str(address),
        "r": context.receiver or "unknown",
        "t": str(context.timestamp),
    }
