"""Findings: the checker's one output record, with stable codes.

Like NCSC Mail Check's rules, every finding has a dotted code whose first part names
the mechanism (``mx.``, ``tls.``, ``spf.``, ``dmarc.``, ``dkim.``, ``mta_sts.``,
``tlsrpt.``, ``dane.``), a status, a one-line message saying what was found, and the
fix. Codes are documented in the README and never reused for a different meaning, so
reports can be compared over time and machine-read. Rules never format output; the
renderers (terminal, JSON, HTML) do.

``error`` is not a grade: it means "could not check" (a DNS server or a probe did not
answer, a check timed out). It sorts between warn and fail, so a definite failure still
decides the verdict, but an unknown is never reported as a pass or a warning.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Status(IntEnum):
    """Ordered, so the worst finding decides the verdict. ``ERROR`` (could not check)
    outranks every grade but ``FAIL``: with part of the answer unknown, "pass" or "warn"
    would be a guess, while a failure already found stays a failure whatever the rest."""

    PASS = 0
    WARN = 1
    ERROR = 2
    FAIL = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Finding:
    check: str  # stable dotted code, e.g. "tls.version"
    status: Status
    message: str  # what was found, one line
    fix: str = ""  # what to do about it ("" when nothing to do)
    subject: str = ""  # what it is about when not the domain itself, e.g. an MX host

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "check": self.check,
            "status": self.status.label,
            "message": self.message,
            "fix": self.fix,
        }
        if self.subject:
            out["subject"] = self.subject
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        return cls(
            str(data["check"]), Status[str(data["status"]).upper()], str(data["message"]),
            str(data.get("fix", "")), str(data.get("subject", "")),
        )  # fmt: skip


def passed(check: str, message: str, subject: str = "") -> Finding:
    return Finding(check, Status.PASS, message, "", subject)


def warned(check: str, message: str, fix: str, subject: str = "") -> Finding:
    return Finding(check, Status.WARN, message, fix, subject)


def failed(check: str, message: str, fix: str, subject: str = "") -> Finding:
    return Finding(check, Status.FAIL, message, fix, subject)


def unknown(check: str, message: str, fix: str, subject: str = "") -> Finding:
    """Could not check: the answer is unknown, which is neither good nor bad news."""
    return Finding(check, Status.ERROR, message, fix, subject)


@dataclass(frozen=True, slots=True)
class DomainReport:
    domain: str
    findings: tuple[Finding, ...]
    facts: dict[str, object] = field(default_factory=dict)  # raw observations, for JSON/HTML
    error: str = ""  # the check itself could not run (e.g. not a domain name)

    @property
    def verdict(self) -> Status:
        return verdict(self.findings) if not self.error else Status.ERROR

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "domain": self.domain,
            "verdict": self.verdict.label,
            "findings": [f.to_json() for f in self.findings],
        }
        if self.error:
            out["error"] = self.error
        if self.facts:
            out["facts"] = self.facts
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DomainReport:
        """The report ``to_json`` wrote (a worker process's, read back by ``--workers``)."""
        findings = tuple(Finding.from_json(f) for f in data.get("findings", ()))
        return cls(str(data["domain"]), findings, dict(data.get("facts", {})),
                   str(data.get("error", "")))  # fmt: skip


def verdict(findings: Iterable[Finding]) -> Status:
    return max((f.status for f in findings), default=Status.PASS)


def dns_error(mechanism: str, what: str, error: str, subject: str = "") -> Finding:
    """``<mechanism>.dns_error``: a lookup failed temporarily. Always ``error`` (could not
    check), never a pass, a warning or "absent": the answer is unknown, not negative."""
    return unknown(
        f"{mechanism}.dns_error",
        f"could not look up {what}: {error}; result unknown",
        "Make sure the authoritative nameservers answer these queries, then check again.",
        subject,
    )
