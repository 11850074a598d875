"""DANE for SMTP (RFC 7672): TLSA records at ``_25._tcp.<mx host>`` and matching them.

A sender that does DANE looks up the TLSA RRset of each MX host and, when the answer is
DNSSEC-validated, insists on TLS with a certificate that one of the records matches.
The checker asks whether a domain's records are usable; delivery will enforce them.
Both read records here, so the two agree on which records count.

Only DANE-TA (2) and DANE-EE (3) are used for SMTP: PKIX-TA (0) and PKIX-EE (1) are
unusable there (RFC 7672 §3.1.3), and a record with an unknown parameter or a digest
of the wrong length can never match. ``lookup_tlsa`` is the only I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securemail.dns import DnsNotFound, DnsTemporaryError, Resolver

TlsaRecord = tuple[int, int, int, bytes]  # usage, selector, matching type, data

USAGES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}
DIGEST_LENGTHS = {1: 32, 2: 64}  # SHA2-256, SHA2-512; matching type 0 is the full data


class TlsaAnswer(NamedTuple):
    """What DNS said about one TLSA name."""

    records: list[TlsaRecord]  # [] when the name has none
    dnssec: bool  # the answer was DNSSEC-validated (AD bit from a validating resolver)
    error: str  # the lookup could not be completed ("" when it was): nothing is known


def tlsa_name(host: str, port: int = 25) -> str:
    """The TLSA owner name for ``host``'s SMTP service: ``_25._tcp.mx.example.org``."""
    return f"_{port}._tcp.{host.rstrip('.').lower()}"


async def lookup_tlsa(name: str, resolver: Resolver) -> TlsaAnswer:
    """The TLSA RRset at ``name``; a DNS failure is an ``error``, never "no records"."""
    try:
        records, dnssec = await resolver.tlsa(name)
    except DnsNotFound:
        return TlsaAnswer([], False, "")
    except DnsTemporaryError as exc:
        return TlsaAnswer([], False, str(exc))
    return TlsaAnswer(records, dnssec, "")


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
    """The record in zone-file form: ``3 1 1 <hex>``."""
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
    """The certificate's association data for ``selector``/``mtype`` (None if unreadable)."""
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
