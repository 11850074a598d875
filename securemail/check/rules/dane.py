"""DANE rules (RFC 7672): the ``dane.*`` findings for the TLSA records of each MX host.

DANE is optional for NHS secure email: MTA-STS covers the guidance, so a domain without
TLSA records is not penalised. Records that are published are checked for what makes
senders ignore them: an answer that is not DNSSEC-validated (a sender only uses TLSA
records from a validated, signed zone), PKIX usages 0 and 1 (RFC 7672 §3.1.3: SMTP
clients treat them as unusable), and malformed parameters or digest lengths.

The protocol (TLSA names, the lookup, what makes a record unusable, matching a
certificate) lives in ``securemail.mech.dane``, shared with delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from securemail.check.model import Finding, dns_error, passed, warned
from securemail.dns import Resolver
from securemail.mech.dane import TlsaRecord, lookup_tlsa, record_text, tlsa_name, tlsa_problem


async def check_dane(
    mx_hosts: Sequence[str], resolver: Resolver, *, port: int = 25
) -> tuple[list[Finding], dict[str, object]]:
    """``dane.tlsa`` per MX host (or one pass when none publish); ``dane.dns_error`` (could
    not check) where the TLSA lookup failed.

    Facts: ``{"dane": {host: {"name", "records": ["3 1 1 <hex>"], "dnssec", "error"}}}``.
    """
    names = [tlsa_name(host, port) for host in mx_hosts]
    answers = await asyncio.gather(*(lookup_tlsa(name, resolver) for name in names))
    findings: list[Finding] = []
    facts: dict[str, object] = {}
    published = any(answer.records for answer in answers)
    for host, name, (records, dnssec, error) in zip(mx_hosts, names, answers, strict=True):
        facts[host] = {
            "name": name,
            "records": [record_text(r) for r in records],
            "dnssec": dnssec,
            "error": error,
        }
        if error:
            findings.append(dns_error("dane", f"TLSA {name}", error, host))
        elif records:
            findings.append(evaluate_tlsa(host, name, records, dnssec))
        elif published:
            message = f"no TLSA at {name}, though other MX hosts publish TLSA"
            fix = "Publish TLSA for every MX host: mail routed to this one is not DANE-protected."
            findings.append(warned("dane.tlsa", message, fix, host))
    if not published and not all(answer.error for answer in answers):
        findings.insert(
            0, passed("dane.tlsa", "not published (DANE is optional; MTA-STS covers the guidance)")
        )
    return findings, {"dane": facts}


def evaluate_tlsa(host: str, name: str, records: Sequence[TlsaRecord], dnssec: bool) -> Finding:
    """One ``dane.tlsa`` finding for the TLSA RRset of one MX host (pure)."""
    listed = ", ".join(f"{u} {s} {m}" for u, s, m, _ in records)
    problems: list[str] = []
    fixes: list[str] = []
    if not dnssec:
        problems.append("TLSA records without DNSSEC validation are ignored by senders")
        fixes.append("Sign the MX host's zone with DNSSEC.")
    pkix = sorted({u for u, _, _, _ in records if u in (0, 1)})
    if pkix:
        problems.append(
            f"usage {'/'.join(map(str, pkix))} (PKIX) is discouraged for SMTP (RFC 7672 §3.1.3)"
        )
        fixes.append("Use usage 3 (DANE-EE) or 2 (DANE-TA).")
    bad = [f"{record_text(r)[:40]} ({tlsa_problem(r)})" for r in records if tlsa_problem(r)]
    if bad:
        problems.append(f"malformed or unsupported: {', '.join(bad)}")
        fixes.append("Publish records as 'usage selector mtype digest', e.g. '3 1 1 <sha256>'.")
    if problems:
        message = f"{name}: {listed}: {'; '.join(problems)}"
        return warned("dane.tlsa", message, " ".join(fixes), host)
    return passed("dane.tlsa", f"{name}: {listed} (DNSSEC-validated)", host)
