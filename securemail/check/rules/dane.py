"""DANE for SMTP (RFC 7672): TLSA records at ``_25._tcp.<mx host>``, and the ``dane.*`` rules.

DANE is optional for NHS secure email: MTA-STS covers the guidance, so a domain without
TLSA records is not penalised. Records that are published are checked for what makes
senders ignore them: an answer that is not DNSSEC-validated (a sender only uses TLSA
records from a validated, signed zone), PKIX usages 0 and 1 (RFC 7672 §3.1.3: SMTP
clients treat them as unusable), and malformed parameters or digest lengths.

``match_tlsa`` (pure) checks a server's certificate against the records, for a runner
that has probed it (``TlsProbe.cert_der``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securemail.check.model import Finding, passed, warned
from securemail.dns import DnsNotFound, DnsTemporaryError, Resolver

TlsaRecord = tuple[int, int, int, bytes]  # usage, selector, matching type, data

USAGES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}
DIGEST_LENGTHS = {1: 32, 2: 64}  # SHA2-256, SHA2-512; matching type 0 is the full data


def tlsa_name(host: str, port: int = 25) -> str:
    return f"_{port}._tcp.{host.rstrip('.').lower()}"


async def check_dane(
    mx_hosts: Sequence[str], resolver: Resolver, *, port: int = 25
) -> tuple[list[Finding], dict[str, object]]:
    """``dane.tlsa`` per MX host (or one pass when none publish), ``dane.dns_error`` warnings.

    Facts: ``{"dane": {host: {"name", "records": ["3 1 1 <hex>"], "dnssec", "error"}}}``.
    """
    names = [tlsa_name(host, port) for host in mx_hosts]
    answers = await asyncio.gather(*(_lookup(resolver, name) for name in names))
    findings: list[Finding] = []
    facts: dict[str, object] = {}
    published = any(records for records, _, _ in answers)
    for host, name, (records, dnssec, error) in zip(mx_hosts, names, answers, strict=True):
        facts[host] = {
            "name": name,
            "records": [record_text(r) for r in records],
            "dnssec": dnssec,
            "error": error,
        }
        if error:
            fix = "Check the DNS servers for the MX host's zone answer TLSA queries."
            findings.append(warned("dane.dns_error", f"{name}: {error}", fix, host))
        elif records:
            findings.append(evaluate_tlsa(host, name, records, dnssec))
        elif published:
            message = f"no TLSA at {name}, though other MX hosts publish TLSA"
            fix = "Publish TLSA for every MX host: mail routed to this one is not DANE-protected."
            findings.append(warned("dane.tlsa", message, fix, host))
    if not published and not all(error for _, _, error in answers):
        findings.insert(
            0, passed("dane.tlsa", "not published (DANE is optional; MTA-STS covers the guidance)")
        )
    return findings, {"dane": facts}


async def _lookup(resolver: Resolver, name: str) -> tuple[list[TlsaRecord], bool, str]:
    try:
        records, dnssec = await resolver.tlsa(name)
    except DnsNotFound:
        return [], False, ""
    except DnsTemporaryError as exc:
        return [], False, str(exc)
    return records, dnssec, ""


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


def tlsa_problem(record: TlsaRecord) -> str:
    """Why ``record`` is unusable ("" when it is fine)."""
    usage, selector, mtype, data = record
    if usage not in USAGES:
        return f"usage {usage} unknown"
    if selector not in (0, 1):
        return f"selector {selector} unknown"
    if mtype not in (0, 1, 2):
        return f"matching type {mtype} unknown"
    want = DIGEST_LENGTHS.get(mtype)
    if want is not None and len(data) != want:
        return f"matching type {mtype} needs {want} bytes, not {len(data)}"
    if not data:
        return "empty association data"
    return ""


def record_text(record: TlsaRecord) -> str:
    usage, selector, mtype, data = record
    return f"{usage} {selector} {mtype} {data.hex()}"


def match_tlsa(records: Sequence[TlsaRecord], der_chain: Sequence[bytes]) -> list[TlsaRecord]:
    """The records that ``der_chain`` (leaf first, DER) satisfies.

    Usage 3 (DANE-EE) is matched against the leaf, usage 2 (DANE-TA) against the other
    certificates presented (the chain is not validated up to it here). PKIX usages 0/1 are
    never matched: SMTP clients do not use them (RFC 7672 §3.1.3).
    """
    if not der_chain:
        return []
    matched: list[TlsaRecord] = []
    for record in records:
        usage, selector, mtype, data = record
        if tlsa_problem(record) or usage not in (2, 3):
            continue
        candidates = der_chain[:1] if usage == 3 else der_chain[1:]
        if any(_association(der, selector, mtype) == data for der in candidates):
            matched.append(record)
    return matched


def _association(der: bytes, selector: int, mtype: int) -> bytes | None:
    if selector == 1:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return None
        der = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if mtype == 1:
        return hashlib.sha256(der).digest()
    if mtype == 2:
        return hashlib.sha512(der).digest()
    return der
