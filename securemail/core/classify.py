"""Recipient → ``Classification``: is mail to this address inside the secure boundary?

Pure and deterministic: the guidance table for the sender's audience, then the imported
accredited list, then local policy, in that order, each able to overrule the one before
(local policy last, as operators expect; a local deny beats everything). The decision
depends only on the domain and the day (accreditations expire), so results are cached per
domain in a bounded map that is emptied when the clock's date changes: bulk runs over
millions of addresses hit a few thousand domains, and a gateway running for months judges
every expiry against the current date, never the date it started.

The clock is passed in (``clock=date.today`` in production, a fixed or stepping date in
tests); nothing here reads the time by itself. Building a classifier from the config (and
reading the accredited list from disk) is ``securemail.loaders.classifier_from_config``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date

from securemail.core.accredited import AccreditedEntry, AccreditedList
from securemail.core.addresses import Address, AddressError, parse_address, skeleton
from securemail.core.rules import (
    HSC_ONLY_SUFFIXES,
    OTHER,
    SECURE_SUFFIXES,
    TABLES,
    Audience,
    Rule,
    Status,
    rule_reason,
)

CACHE_LIMIT = 65536


@dataclass(frozen=True, slots=True)
class Classification:
    address: str  # as given, stripped
    domain: str  # normalised (ASCII, lower case); "" when the address could not be parsed
    status: Status
    rule: str  # stable identifier of what decided: a guidance row id, "accredited-list", ...
    reason: str  # one sentence for a person, citing the source
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "address": self.address,
            "domain": self.domain,
            "status": self.status.value,
            "rule": self.rule,
            "reason": self.reason,
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class _Verdict:
    status: Status
    rule: str
    reason: str
    notes: tuple[str, ...] = ()


class DomainPatterns:
    """Local policy domain lists: ``example.org`` exactly, ``*.example.org`` and below."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.trees: set[str] = set()
        for pattern in patterns:
            if pattern.startswith("*."):
                self.trees.add(pattern[2:])
            else:
                self.exact.add(pattern)

    def match(self, domain: str) -> str | None:
        """The pattern that covers ``domain`` (whole labels), or None."""
        if domain in self.exact:
            return domain
        for suffix in _suffixes(domain):
            if suffix in self.trees:
                return f"*.{suffix}"
        return None

    def __bool__(self) -> bool:
        return bool(self.exact or self.trees)


def _suffixes(domain: str) -> Iterable[str]:
    """``a.b.c`` → ``a.b.c``, ``b.c``, ``c``: longest first."""
    yield domain
    start = domain.find(".")
    while start != -1:
        yield domain[start + 1 :]
        start = domain.find(".", start + 1)


class Classifier:
    """Classify recipients for one audience, accredited list and local policy."""

    def __init__(
        self,
        audience: Audience,
        *,
        clock: Callable[[], date],
        accredited: AccreditedList | None = None,
        secure_domains: Iterable[str] = (),
        deny_domains: Iterable[str] = (),
    ) -> None:
        self.audience = audience
        self.clock = clock
        self.accredited = accredited
        self.local_secure = DomainPatterns(secure_domains)
        self.local_deny = DomainPatterns(deny_domains)
        self._rules: dict[str, Rule] = {rule.suffix: rule for rule in TABLES[audience]}
        # One shared verdict per guidance row: the cache then costs a key per domain.
        self._rule_verdicts = {
            rule.id: _Verdict(
                rule.status,
                rule.id,
                rule_reason(rule, audience),
                (rule.note,) if rule.note else (),
            )
            for rule in (*TABLES[audience], OTHER)
        }
        self._cache: dict[str, _Verdict] = {}
        self._cache_day: date | None = None

    def classify(self, text: str) -> Classification:
        """Classify one address as written (``a@b``, ``Name <a@b>``)."""
        text = text.strip()
        try:
            address = parse_address(text)
        except AddressError as exc:
            return Classification(
                text, "", Status.INVALID, "invalid-address", f"not a valid address: {exc}"
            )
        today = self.clock()
        if today != self._cache_day:  # expiry moves with the date: yesterday's answers go
            self._cache.clear()
            self._cache_day = today
        verdict = self._cache.get(address.domain)
        if verdict is None:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            verdict = self._cache[address.domain] = self._decide(address.domain, today)
        return Classification(
            text, address.domain, verdict.status, verdict.rule, verdict.reason, verdict.notes
        )

    def _decide(self, domain: str, today: date) -> _Verdict:
        verdict = self._guidance(domain)
        if verdict.status is not Status.SECURE and self.accredited is not None:
            entry = self.accredited.lookup(domain)
            if entry is not None:
                verdict = self._accredited(entry, verdict, today)
        if (pattern := self.local_secure.match(domain)) is not None:
            verdict = _Verdict(
                Status.SECURE,
                "local-secure",
                f"local policy lists {pattern} in [policy] secure_domains",
                verdict.notes,
            )
        if (pattern := self.local_deny.match(domain)) is not None:
            verdict = _Verdict(
                Status.UNKNOWN,
                "local-deny",
                f"local policy lists {pattern} in [policy] deny_domains, "
                "which overrides every other rule",
                verdict.notes,
            )
        return verdict

    def _guidance(self, domain: str) -> _Verdict:
        rule = next((self._rules[s] for s in _suffixes(domain) if s in self._rules), OTHER)
        shared = self._rule_verdicts[rule.id]
        warnings = self._warnings(domain, rule)
        if not warnings:
            return shared
        return _Verdict(shared.status, shared.rule, shared.reason, (*shared.notes, *warnings))

    def _accredited(self, entry: AccreditedEntry, before: _Verdict, today: date) -> _Verdict:
        assert self.accredited is not None
        listed = f"the accredited list {self.accredited.source!r}"
        if self.accredited.list_date is not None:
            listed += f" of {self.accredited.list_date.isoformat()}"
        org = entry.organisation or entry.domain
        if entry.expired(today):
            assert entry.expires is not None
            return _Verdict(
                before.status,
                "accredited-expired",
                f"{org}'s DCB1596 accreditation on {listed} expired on "
                f"{entry.expires.isoformat()} (accreditation lasts one year); "
                f"otherwise: {before.reason}",
                before.notes,
            )
        until = f", valid until {entry.expires.isoformat()}" if entry.expires else ""
        return _Verdict(
            Status.SECURE,
            "accredited-list",
            f"{org} is accredited to DCB1596 on {listed}{until}",
            before.notes,
        )

    def _warnings(self, domain: str, rule: Rule) -> list[str]:
        """Notes for a person about domains that imitate or nearly match a listed one."""
        notes: list[str] = []
        if rule.status is Status.SECURE:
            return notes
        if "xn--" in domain:
            folded = skeleton(Address("x", domain).unicode_domain)
            imitated = next((s for s in _suffixes(folded) if s in SECURE_SUFFIXES), None)
            if imitated:
                notes.append(
                    f"lookalike: {domain} uses non-Latin characters that look like "
                    f"{imitated}, but it is a different domain"
                )
        dotted = f".{domain}."
        for suffix in SECURE_SUFFIXES:
            if f".{suffix}." in dotted and not domain.endswith(f".{suffix}"):
                notes.append(f"contains {suffix!r} but is not under it: mail goes to {domain}")
        if rule.id == "nhs-uk" and domain.endswith("secure.nhs.uk"):
            notes.append(
                "ends in the letters 'secure.nhs.uk' but is not secure.nhs.uk or a subdomain "
                "of it; the guidance's '*secure.nhs.uk' is read on whole labels"
            )
        if self.audience is Audience.GOVERNMENT and rule is OTHER:
            under = next((s for s in _suffixes(domain) if s in HSC_ONLY_SUFFIXES), None)
            if under:
                notes.append(
                    f"*.{under} is secure in the table for health and social care senders; "
                    "the government table lists NHS services only"
                )
        return notes
