"""SPF: is there exactly one valid record, does it stay within the lookup limits, how does it end.

``lookup_spf`` asks for the domain's TXT records; ``walk_spf`` then follows every
``include`` and ``redirect`` (fetching and parsing each target's record) to count the
DNS-causing terms of a whole evaluation, the way a receiver would count them against the
limit of 10 (RFC 7208 §4.6.4), and the void lookups of the targets it can see. The rules
(``evaluate_*``) are pure. Targets written with macros depend on the message, so they are
counted once and not followed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from securemail.check.model import Finding, dns_error, failed, passed, warned
from securemail.dns import DnsNotFound, DnsTemporaryError, Resolver
from securemail.mech.spf import (
    DNS_MECHANISMS,
    LOOKUP_LIMIT,
    VOID_LIMIT,
    SpfRecord,
    SpfSyntaxError,
    parse_spf,
    select_spf_record,
    spf_records,
)

LOOKUP_WARN = 8
WALK_CAP = 30  # stop following includes after this many lookups (an include loop ends here)

Facts = dict[str, object]


@dataclass(slots=True)
class SpfWalk:
    lookups: int = 0
    voids: int = 0
    problems: list[str] = field(default_factory=list)  # unusable include/redirect targets
    errors: list[str] = field(default_factory=list)  # DNS failures: the count is a minimum
    unfollowed: list[str] = field(default_factory=list)  # terms with macros
    records: dict[str, str] = field(default_factory=dict)  # target domain -> its record
    truncated: bool = False
    all_qualifier: str | None = None  # of the record or, through redirect, its target
    all_where: str = ""


# --- lookup (I/O) ----------------------------------------------------------------------


async def lookup_spf(domain: str, resolver: Resolver) -> tuple[list[str], str]:
    """(the v=spf1 TXT records, DNS error text); NXDOMAIN is simply no records."""
    try:
        texts = await resolver.txt(domain)
    except DnsNotFound:
        return [], ""
    except DnsTemporaryError as exc:
        return [], str(exc)
    return spf_records(texts), ""


async def walk_spf(record: SpfRecord, domain: str, resolver: Resolver) -> SpfWalk:
    walk = SpfWalk()
    walk.all_qualifier, walk.all_where = await _walk(walk, record, domain, resolver)
    return walk


async def _walk(
    walk: SpfWalk, record: SpfRecord, domain: str, resolver: Resolver
) -> tuple[str | None, str]:
    """Count ``record``'s lookups into ``walk``; return the qualifier of its ``all``."""
    for term in record.terms:
        if term.kind == "mechanism" and term.name == "all":
            return term.qualifier, domain
        if term.kind != "mechanism" or term.name not in DNS_MECHANISMS:
            continue
        walk.lookups += 1
        if walk.lookups > WALK_CAP:
            walk.truncated = True
            return None, ""
        target = term.value.lower().rstrip(".") or domain
        if "%" in target:
            walk.unfollowed.append(term.text)
        elif term.name == "include":
            await _follow(walk, f"include:{target}", target, resolver)
        elif term.name in ("a", "mx", "exists"):
            await _count_void(walk, term.name, target, resolver)
    if record.redirect is None:
        return None, ""
    walk.lookups += 1
    target = record.redirect.lower().rstrip(".")
    if "%" in target:
        walk.unfollowed.append(f"redirect={target}")
        return None, ""
    return await _follow(walk, f"redirect={target}", target, resolver)


async def _follow(
    walk: SpfWalk, label: str, target: str, resolver: Resolver
) -> tuple[str | None, str]:
    if walk.lookups > WALK_CAP:
        walk.truncated = True
        return None, ""
    try:
        texts = await resolver.txt(target)
    except DnsNotFound:
        texts = []
    except DnsTemporaryError as exc:
        walk.errors.append(str(exc))
        return None, ""
    walk.voids += not texts
    try:
        text = select_spf_record(texts)
        if text is None:
            walk.problems.append(f"{label}: {target} has no SPF record")
            return None, ""
        record = parse_spf(text)
    except SpfSyntaxError as exc:
        walk.problems.append(f"{label}: {exc}")
        return None, ""
    walk.records.setdefault(target, text)
    return await _walk(walk, record, target, resolver)


async def _count_void(walk: SpfWalk, name: str, target: str, resolver: Resolver) -> None:
    """A target of ``a``/``mx``/``exists`` with no records at all is a void lookup."""
    try:
        if name == "a":
            await resolver.addresses(target)
            return
        answer = await resolver.query(target, "MX" if name == "mx" else "A")
    except DnsNotFound:
        answer = None
    except DnsTemporaryError as exc:
        walk.errors.append(str(exc))
        return
    walk.voids += answer is None


# --- rules (pure) ----------------------------------------------------------------------


def evaluate_record(domain: str, records: list[str]) -> tuple[list[Finding], SpfRecord | None]:
    """``spf.present``, ``spf.single`` and ``spf.syntax``; the record when all three pass."""
    if not records:
        fix = f'Publish one TXT record at {domain} such as "v=spf1 mx -all".'
        return [failed("spf.present", f"{domain} has no SPF record", fix)], None
    findings = [passed("spf.present", f"SPF record found at {domain}")]
    if len(records) > 1:
        message = f"{domain} has {len(records)} SPF records: receivers return permerror"
        fix = "Merge them into one v=spf1 record and delete the others."
        return [*findings, failed("spf.single", message, fix)], None
    findings.append(passed("spf.single", "exactly one SPF record"))
    try:
        record = parse_spf(records[0])
    except SpfSyntaxError as exc:
        fix = "Correct the record (RFC 7208 §12); receivers treat it as a permerror."
        return [*findings, failed("spf.syntax", f"SPF record is not valid: {exc}", fix)], None
    return [*findings, passed("spf.syntax", "SPF record is valid")], record


def evaluate_walk(walk: SpfWalk) -> list[Finding]:
    findings = [_dns_error(error) for error in dict.fromkeys(walk.errors)]
    fix = (
        "Remove unused includes and replace a/mx/include terms with ip4:/ip6: ranges "
        "(or a flattened include) to stay within 10."
    )
    shown = f"more than {WALK_CAP}" if walk.truncated else str(walk.lookups)
    if walk.unfollowed:
        shown += f" (not following {', '.join(walk.unfollowed)}, which use macros)"
    if walk.lookups > LOOKUP_LIMIT:
        message = f"{shown} DNS lookups (limit {LOOKUP_LIMIT}): SPF fails with permerror"
        findings.append(failed("spf.lookups", message, fix))
    elif walk.errors:
        pass  # the count is only a minimum: never pass it
    elif walk.lookups >= LOOKUP_WARN:
        message = f"{shown} DNS lookups, close to the limit of {LOOKUP_LIMIT}"
        findings.append(warned("spf.lookups", message, fix))
    else:
        message = f"{shown} DNS lookups (limit {LOOKUP_LIMIT})"
        findings.append(passed("spf.lookups", message))
    if walk.voids > VOID_LIMIT:
        message = f"{walk.voids} void lookups (limit {VOID_LIMIT}): receivers may permerror"
        fix = "Remove terms whose domains have no records (typos, retired providers)."
        findings.append(warned("spf.void_lookups", message, fix))
    for problem in walk.problems:
        fix = "Correct or remove that term; receivers treat the whole record as a permerror."
        findings.append(failed("spf.include", problem, fix))
    return findings


def evaluate_all(record: SpfRecord, walk: SpfWalk) -> Finding:
    qualifier, where = walk.all_qualifier, walk.all_where
    via = f" (from {where})" if record.all_qualifier is None and where else ""
    if qualifier == "-":
        return passed("spf.all", f"ends with -all{via}: other senders fail SPF")
    if qualifier == "~":
        return passed("spf.all", f"ends with ~all{via}: other senders softfail (rely on DMARC)")
    if qualifier == "?":
        fix = "End the record with -all (or ~all with an enforcing DMARC policy)."
        return warned("spf.all", f"ends with ?all{via}: other senders are neutral", fix)
    if qualifier == "+":
        fix = "Replace +all with -all: +all lets anyone on the internet send as the domain."
        return failed("spf.all", f"ends with +all{via}: every host is permitted", fix)
    if record.redirect is not None and not where:
        fix = "Make the redirect= target a valid SPF record ending in -all."
        return warned("spf.all", "the redirect= target's ending could not be read", fix)
    fix = "End the record with -all (or ~all with an enforcing DMARC policy)."
    return warned("spf.all", "ends without all: the default is neutral", fix)


def _dns_error(error: str) -> Finding:
    return dns_error("spf", "SPF", error)


# --- entry point -----------------------------------------------------------------------


async def check_spf_record(domain: str, resolver: Resolver) -> tuple[list[Finding], Facts]:
    """Findings ``spf.*``; facts ``spf``, ``lookups``, ``spf_void_lookups``, ``spf_includes``."""
    domain = domain.strip().rstrip(".").lower()
    records, error = await lookup_spf(domain, resolver)
    if error:
        return [_dns_error(error)], {"spf": None, "lookups": None}
    findings, record = evaluate_record(domain, records)
    facts: Facts = {"spf": records[0] if len(records) == 1 else records or None}
    if record is None:
        return findings, {**facts, "lookups": None}
    walk = await walk_spf(record, domain, resolver)
    findings.extend(evaluate_walk(walk))
    findings.append(evaluate_all(record, walk))
    facts |= {
        "lookups": walk.lookups,
        "spf_void_lookups": walk.voids,
        "spf_includes": walk.records,
    }
    return findings, facts
