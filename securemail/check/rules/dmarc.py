"""DMARC: is a policy published, is it enforced, and will the reports actually arrive.

The records are found as the gateway finds them (``mech.dmarc.lookup_dmarc_records``,
RFC 7489 §6.6.3: ``_dmarc.<domain>``, then ``_dmarc.<organisational domain>``), but
what the gateway folds into one status (several records, a broken record) is kept apart
here, because each is a different fix. For report addresses in another organisation,
``lookup_authorisations`` asks for the §7.1 record ``<policy domain>._report._dmarc.<report
domain>``: without it receivers send nothing. The rules (``evaluate_*``) are pure.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from urllib.parse import unquote

from securemail.check.model import Finding, dns_error, failed, passed, warned
from securemail.dns import DnsNotFound, DnsTemporaryError, Resolver
from securemail.mech.dmarc import (
    POLICIES,
    DmarcLookup,
    DmarcRecord,
    DmarcSyntaxError,
    applicable_policy,
    dmarc_records,
    lookup_dmarc_records,
    parse_dmarc,
)
from securemail.mech.psl import organizational_domain

_SIZE = re.compile(r"![0-9]+[kmgtKMGT]?$")

Facts = dict[str, object]


@dataclass(frozen=True, slots=True)
class Authorisation:
    report_domain: str
    uris: tuple[str, ...]
    authorised: bool
    error: str = ""


# --- lookup (I/O) ----------------------------------------------------------------------


async def lookup_authorisations(
    policy_domain: str, record: DmarcRecord, resolver: Resolver
) -> list[Authorisation]:
    """The §7.1 check for every mailto: report domain outside the policy's organisation."""
    external: dict[str, list[str]] = {}
    for uri in (*record.rua, *record.ruf):
        host = report_domain(uri)
        if host and organizational_domain(host) != organizational_domain(policy_domain):
            external.setdefault(host, []).append(uri)
    checks = [_authorised(policy_domain, host, resolver) for host in external]
    results = await asyncio.gather(*checks)
    return [
        Authorisation(host, tuple(external[host]), ok, error)
        for host, (ok, error) in zip(external, results, strict=True)
    ]


async def _authorised(policy_domain: str, host: str, resolver: Resolver) -> tuple[bool, str]:
    try:
        texts = await resolver.txt(f"{policy_domain}._report._dmarc.{host}")
    except DnsNotFound:
        return False, ""
    except DnsTemporaryError as exc:
        return False, str(exc)
    return bool(dmarc_records(texts)), ""


def report_domain(uri: str) -> str:
    """The domain of a ``mailto:`` report URI ("" for other schemes or no domain)."""
    if uri[:7].lower() != "mailto:":
        return ""
    address = unquote(_SIZE.sub("", uri[7:])).split("?", 1)[0]
    _, at, host = address.rpartition("@")
    return host.strip().rstrip(".").lower() if at else ""


# --- rules (pure) ----------------------------------------------------------------------


def evaluate_records(lookup: DmarcLookup) -> tuple[list[Finding], DmarcRecord | None]:
    """``dmarc.present``, ``dmarc.single``, ``dmarc.syntax``; the record when usable."""
    name = f"_dmarc.{lookup.policy_domain}"
    if not lookup.records:
        message = f"no DMARC record at _dmarc.{lookup.domain}"
        org = organizational_domain(lookup.domain)
        message += f" or _dmarc.{org}" if org != lookup.domain else ""
        fix = f'Publish TXT "v=DMARC1; p=reject; rua=mailto:..." at _dmarc.{lookup.domain}.'
        return [failed("dmarc.present", message, fix)], None
    where = name if lookup.policy_domain == lookup.domain else f"{name} (organisational domain)"
    findings = [passed("dmarc.present", f"DMARC record found at {where}")]
    if len(lookup.records) > 1:
        message = f"{name} has {len(lookup.records)} DMARC records: receivers apply none"
        fix = "Keep one v=DMARC1 record and delete the others."
        return [*findings, failed("dmarc.single", message, fix)], None
    findings.append(passed("dmarc.single", "exactly one DMARC record"))
    try:
        record = parse_dmarc(lookup.records[0])
    except DmarcSyntaxError as exc:
        fix = "Correct the record (RFC 7489 §6.4); receivers ignore it as it is."
        return [*findings, failed("dmarc.syntax", f"DMARC record is not usable: {exc}", fix)], None
    fix = "Correct or remove the tag so receivers read the record as intended."
    warnings = [warned("dmarc.syntax", warning, fix) for warning in record.warnings]
    return [*findings, *(warnings or [passed("dmarc.syntax", "DMARC record is valid")])], record


def evaluate_policy(domain: str, policy_domain: str, record: DmarcRecord) -> list[Finding]:
    return [
        _policy(domain, policy_domain, record),
        _subdomain_policy(record),
        _pct(record),
        _rua(record),
    ]


def _policy(domain: str, policy_domain: str, record: DmarcRecord) -> Finding:
    policy = applicable_policy(domain, policy_domain, record)
    tag = "sp" if policy_domain != domain and record.sp is not None else "p"
    said = f"{tag}={policy}" + (f" (from {policy_domain})" if policy_domain != domain else "")
    if policy == "reject":
        return passed("dmarc.policy", f"{said}: spoofed mail is rejected")
    if policy == "quarantine":
        return passed("dmarc.policy", f"{said}: spoofed mail is quarantined (consider reject)")
    return warned(
        "dmarc.policy",
        f"{said}: monitoring only, spoofed mail is still delivered",
        f"Once the aggregate reports show legitimate mail passing, set {tag}=quarantine "
        "and then reject.",
    )


def _subdomain_policy(record: DmarcRecord) -> Finding:
    if record.sp is None:
        return passed("dmarc.subdomain_policy", f"subdomains inherit p={record.p}")
    if POLICIES.index(record.sp) < POLICIES.index(record.p):
        return warned(
            "dmarc.subdomain_policy",
            f"sp={record.sp} is weaker than p={record.p}: subdomains can be spoofed",
            f"Set sp={record.p}, or remove sp so subdomains inherit p.",
        )
    return passed("dmarc.subdomain_policy", f"subdomains get sp={record.sp}")


def _pct(record: DmarcRecord) -> Finding:
    if record.pct < 100:
        return warned(
            "dmarc.pct",
            f"pct={record.pct}: the policy applies to only {record.pct}% of failing mail",
            "Raise pct to 100 (or remove it).",
        )
    return passed("dmarc.pct", "the policy applies to all failing mail (pct=100)")


def _rua(record: DmarcRecord) -> Finding:
    if not record.rua:
        return warned(
            "dmarc.rua",
            "no aggregate reports (rua): failures and spoofing go unseen",
            "Add rua=mailto:<address> to receive daily aggregate reports.",
        )
    return passed("dmarc.rua", f"aggregate reports go to {', '.join(record.rua)}")


def evaluate_authorisations(policy_domain: str, checks: list[Authorisation]) -> list[Finding]:
    findings: list[Finding] = []
    for check in checks:
        host, name = check.report_domain, f"{policy_domain}._report._dmarc.{check.report_domain}"
        if check.error:
            findings.append(_dns_error(name, check.error, host))
        elif check.authorised:
            message = f"{host} authorises reports for {policy_domain} at {name}"
            findings.append(passed("dmarc.rua_authorised", message, host))
        else:
            findings.append(
                failed(
                    "dmarc.rua_authorised",
                    f"reports to {host} are not authorised, receivers will not send them "
                    f"(no v=DMARC1 record at {name})",
                    f'Ask {host} to publish TXT "v=DMARC1" at {name}, or send reports to an '
                    f"address at {organizational_domain(policy_domain)}.",
                    host,
                )
            )
    return findings


def _dns_error(name: str, error: str, subject: str = "") -> Finding:
    return dns_error("dmarc", name, error, subject)


# --- entry point -----------------------------------------------------------------------


async def check_dmarc_record(domain: str, resolver: Resolver) -> tuple[list[Finding], Facts]:
    """Findings ``dmarc.*``; facts ``dmarc`` (record text), ``policy_domain``, ``dmarc_*``."""
    domain = domain.strip().rstrip(".").lower()
    lookup = await lookup_dmarc_records(domain, resolver)
    facts: Facts = {"dmarc": None, "policy_domain": lookup.policy_domain}
    if lookup.error:
        return [_dns_error(f"_dmarc.{lookup.policy_domain}", lookup.error)], facts
    findings, record = evaluate_records(lookup)
    if lookup.records:
        facts["dmarc"] = lookup.records[0] if len(lookup.records) == 1 else list(lookup.records)
    if record is None:
        return findings, facts
    findings.extend(evaluate_policy(domain, lookup.policy_domain, record))
    checks = await lookup_authorisations(lookup.policy_domain, record, resolver)
    findings.extend(evaluate_authorisations(lookup.policy_domain, checks))
    policy = applicable_policy(domain, lookup.policy_domain, record)
    facts |= {
        "dmarc_policy": policy,
        "dmarc_pct": record.pct,
        "dmarc_rua": list(record.rua),
        "dmarc_ruf": list(record.ruf),
    }
    return findings, facts
