"""Authentication verdicts and the ``Authentication-Results`` header (RFC 8601).

One vocabulary for every method, so the gateway's enforcement, the header it writes
and the logs all speak of the same things.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum


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


_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@]+")


def _value(value: str) -> str:
    return value if _TOKEN.fullmatch(value) else _quote(value)


def _quote(text: str) -> str:
    cleaned = re.sub(r"[\x00-\x1f\x7f]", " ", text)[:200]
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'
