"""The guidance tables, as data.

Source: *Sharing Sensitive Information by Email with Health and Social Care
Organisations – A guide for Government Organisations* (NHS Digital, February 2019,
version 1), "Summary Guidance", which has one table for government senders and one for
health and social care senders. Each row below is one row of those tables, with a
stable ``id`` that appears in every classification and log line.

How the table's patterns are read, and why:

* ``*.X`` means X itself or any subdomain of X, compared on whole DNS labels, so
  ``evilnhs.net`` and ``nhs.net.evil.com`` are not ``nhs.net``.
* ``*secure.nhs.uk`` is read as ``secure.nhs.uk`` and its subdomains, also on whole
  labels. Read as a string suffix it would make ``insecure.nhs.uk`` (a name anyone
  running an ``*.nhs.uk`` service could be given) secure; the guidance itself calls
  every other ``*.nhs.uk`` address unknown.
* ``*.scot.nhs.uk`` and ``*.wales.nhs.uk`` are ``*.nhs.uk`` addresses, so unknown; the
  guidance notes they run their own assurance programme, and the classification says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Audience(StrEnum):
    """Who is sending: the two tables differ."""

    GOVERNMENT = "government"
    HEALTH_AND_CARE = "health-and-care"


class Status(StrEnum):
    SECURE = "secure"
    UNKNOWN = "unknown"
    INVALID = "invalid"


GUIDE = "NHS Digital, Feb 2019"
TABLE_TITLE = {
    Audience.GOVERNMENT: "Guidance issued to government organisations",
    Audience.HEALTH_AND_CARE: "Guidance issued to health and social care organisations",
}


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of a guidance table: recipient domains under ``suffix`` get ``status``."""

    id: str
    suffix: str
    pattern: str  # as written in the guidance
    status: Status
    service: str  # what the guidance says this row is
    note: str = ""


_NHS_NET = Rule("nhs-net", "nhs.net", "*.nhs.net", Status.SECURE, "NHSmail")
_SECURE_NHS_UK = Rule(
    "secure-nhs-uk",
    "secure.nhs.uk",
    "*secure.nhs.uk",
    Status.SECURE,
    "a locally procured email service accredited to the secure email standard",
)
_NHS_UK = Rule(
    "nhs-uk",
    "nhs.uk",
    "*.nhs.uk (does not end secure.nhs.uk)",
    Status.UNKNOWN,
    "an NHS service that has not met the secure email standard",
)
_ASSURANCE = (
    "runs its own email assurance programme, which this guidance does not cover; "
    "add the domain to [policy] secure_domains or the accredited list if it is assured"
)
_SCOT = Rule(
    "scot-nhs-uk",
    "scot.nhs.uk",
    "*.nhs.uk (does not end secure.nhs.uk)",
    Status.UNKNOWN,
    "an NHS Scotland service",
    note=f"NHS Scotland (*.scot.nhs.uk) {_ASSURANCE}",
)
_WALES = Rule(
    "wales-nhs-uk",
    "wales.nhs.uk",
    "*.nhs.uk (does not end secure.nhs.uk)",
    Status.UNKNOWN,
    "an NHS Wales service",
    note=f"NHS Wales (*.wales.nhs.uk) {_ASSURANCE}",
)
_HSC_ONLY = (
    Rule("gov-uk", "gov.uk", "*.gov.uk", Status.SECURE, "a government email service"),
    Rule("cjsm-net", "cjsm.net", "*.cjsm.net", Status.SECURE, "the Criminal Justice Secure eMail"),
    Rule("pnn-police-uk", "pnn.police.uk", "*.pnn.police.uk", Status.SECURE,
         "the Police National Network"),
    Rule("mod-uk", "mod.uk", "*.mod.uk", Status.SECURE, "the Ministry of Defence"),
    Rule("parliament-uk", "parliament.uk", "*.parliament.uk", Status.SECURE, "Parliament"),
)  # fmt: skip

OTHER = Rule("other", "", "Any other email address", Status.UNKNOWN, "not listed")

TABLES: dict[Audience, tuple[Rule, ...]] = {
    Audience.GOVERNMENT: (_NHS_NET, _SECURE_NHS_UK, _NHS_UK, _SCOT, _WALES),
    Audience.HEALTH_AND_CARE: (_NHS_NET, _SECURE_NHS_UK, _NHS_UK, _SCOT, _WALES, *_HSC_ONLY),
}

SECURE_SUFFIXES = frozenset(
    rule.suffix for table in TABLES.values() for rule in table if rule.status is Status.SECURE
)
"""Every suffix either table calls secure: used to spot lookalikes of them."""

HSC_ONLY_SUFFIXES = frozenset(rule.suffix for rule in _HSC_ONLY)


def rule_reason(rule: Rule, audience: Audience) -> str:
    """The sentence that cites the guidance row behind a decision."""
    verdict = "Secure" if rule.status is Status.SECURE else "Unknown"
    cite = f"'{TABLE_TITLE[audience]}', {GUIDE}"
    if rule is OTHER and audience is Audience.GOVERNMENT:
        return f"not listed → {verdict} ({cite})"
    if rule is OTHER:
        return f"'{rule.pattern}' → {verdict} ({cite})"
    return f"{rule.service}: '{rule.pattern}' → {verdict} ({cite})"
