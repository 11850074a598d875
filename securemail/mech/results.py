"""Authentication verdicts and the ``Authentication-Results`` header (RFC 8601).

One vocabulary for every method, so the gateway's enforcement, the header it writes
and the logs all speak of the same things.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from securemail.core.message import HeaderField


class Result(StrEnum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"
    POLICY = "policy"


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One ``method=result`` clause: ``spf=pass smtp.mailfrom=a@b.org``."""

    method: str  # "spf" | "dkim" | "dmarc" | "arc" | "iprev"
    result: Result
    reason: str = ""
    props: tuple[tuple[str, str], ...] = field(default=())  # ("smtp.mailfrom", "a@b.org")

    def clause(self) -> str:
        text = f"{self.method}={self.result.value}"
        if self.reason:
            text += f" reason={_quote(self.reason)}"
        for key, value in self.props:
            text += f" {key}={_value(value)}"
        return text


def authentication_results(authserv_id: str, results: Sequence[MethodResult]) -> str:
    """The header line (with CRLF), folded one clause per line."""
    if not results:
        return f"Authentication-Results: {authserv_id}; none\r\n"
    clauses = ";\r\n\t".join(r.clause() for r in results)
    return f"Authentication-Results: {authserv_id};\r\n\t{clauses}\r\n"


def is_own_auth_results(field: HeaderField, authserv_id: str) -> bool:
    """True for an Authentication-Results field that claims to be from ``authserv_id``.

    Only we may write those (RFC 8601 §5), so the gateway strips any that arrive and ARC
    must not seal them. The authserv-id is read from the unfolded value, after any
    comments and before a version number, and compared without regard to case: folding,
    ``(comments)``, ``MX.EXAMPLE`` or ``mx.example 1`` must not get a forgery through.
    """
    if field.lname != b"authentication-results":
        return False
    value = field.unfolded
    depth, pos = 0, 0
    while pos < len(value):  # skip CFWS: blanks and (possibly nested) comments
        char = value[pos]
        if char == 0x5C and depth:  # a quoted-pair inside a comment
            pos += 2
            continue
        if char == 0x28:
            depth += 1
        elif char == 0x29 and depth:
            depth -= 1
        elif not depth and char not in b" \t":
            break
        pos += 1
    match = _AUTHSERV_ID.match(value, pos)
    return match is not None and match[1].lower() == authserv_id.lower().encode()


# authserv-id = value (RFC 8601 §2.2): a token or a quoted string, up to CFWS or ";".
_AUTHSERV_ID = re.compile(rb'"?([^\s;()"]*)')
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@]+")


def _value(value: str) -> str:
    return value if _TOKEN.fullmatch(value) else _quote(value)


def _quote(text: str) -> str:
    cleaned = re.sub(r"[\x00-\x1f\x7f]", " ", text)[:200]
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'
