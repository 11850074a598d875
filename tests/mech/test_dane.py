"""DANE (RFC 7672): TLSA names, the lookup, unusable records, matching a certificate."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from harness.dnsserver import DnsServer
from harness.pki import TestPKI

from securemail.dns import Resolver
from securemail.mech.dane import (
    TlsaAnswer,
    lookup_tlsa,
    match_tlsa,
    record_text,
    tlsa_name,
    tlsa_problem,
)

HOST = "mx1.example.nhs.uk"
SHA256 = bytes.fromhex("ab" * 32)


@pytest.fixture
def resolver(dns_server: DnsServer) -> Resolver:
    return Resolver([dns_server.nameserver], timeout=2.0, cache=False)


def test_tlsa_name() -> None:
    assert tlsa_name("MX1.Example.NHS.uk.") == "_25._tcp.mx1.example.nhs.uk"
    assert tlsa_name("mx1.test", 2525) == "_2525._tcp.mx1.test"


def test_record_text() -> None:
    assert record_text((3, 1, 1, SHA256)) == f"3 1 1 {'ab' * 32}"


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ((3, 1, 1, b"x" * 32), ""),
        ((3, 0, 2, b"x" * 64), ""),
        ((3, 1, 0, b"spki"), ""),
        ((4, 1, 1, b"x" * 32), "usage 4 unknown"),
        ((3, 2, 1, b"x" * 32), "selector 2 unknown"),
        ((3, 1, 3, b"x" * 32), "matching type 3 unknown"),
        ((3, 1, 2, b"x" * 32), "matching type 2 needs 64 bytes, not 32"),
        ((3, 1, 1, b""), "matching type 1 needs 32 bytes, not 0"),
        ((3, 1, 0, b""), "empty association data"),
    ],
)
def test_tlsa_problem(record: tuple[int, int, int, bytes], problem: str) -> None:
    assert tlsa_problem(record) == problem


# --- lookup -------------------------------------------------------------------------------


async def test_lookup_validated(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.set_ad(True)
    dns_server.add(f"_25._tcp.{HOST}", "TLSA", f"3 1 1 {SHA256.hex()}")
    assert await lookup_tlsa(tlsa_name(HOST), resolver) == TlsaAnswer([(3, 1, 1, SHA256)], True, "")


async def test_lookup_without_dnssec_says_so(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.set_ad(False)
    dns_server.add(f"_25._tcp.{HOST}", "TLSA", f"3 1 1 {SHA256.hex()}")
    answer = await lookup_tlsa(tlsa_name(HOST), resolver)
    assert answer.records == [(3, 1, 1, SHA256)]
    assert answer.dnssec is False


async def test_lookup_absent_is_no_records(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add(HOST, "A", "192.0.2.1")
    assert await lookup_tlsa(tlsa_name(HOST), resolver) == TlsaAnswer([], False, "")


async def test_lookup_failure_is_an_error_not_absence(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.add(f"_25._tcp.{HOST}", "TLSA", f"3 1 1 {SHA256.hex()}")
    dns_server.behave(f"_25._tcp.{HOST}", "servfail")
    answer = await lookup_tlsa(tlsa_name(HOST), resolver)
    assert answer.records == []
    assert f"_25._tcp.{HOST}" in answer.error


# --- matching a certificate ---------------------------------------------------------------


def _der_chain(pki: TestPKI) -> tuple[bytes, bytes]:
    """A real leaf from the test CA, and the CA certificate, both DER."""
    chain, _key = pki.server_cert(HOST)
    leaf = x509.load_pem_x509_certificates(chain.read_bytes())[0]
    ca = x509.load_pem_x509_certificate(pki.ca.cert_pem.bytes())
    return leaf.public_bytes(serialization.Encoding.DER), ca.public_bytes(
        serialization.Encoding.DER
    )


def _spki(der: bytes) -> bytes:
    return (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_match_tlsa_permits_and_rejects(pki: TestPKI) -> None:
    leaf, ca = _der_chain(pki)
    spki = _spki(leaf)
    good = [
        (3, 1, 1, hashlib.sha256(spki).digest()),
        (3, 0, 1, hashlib.sha256(leaf).digest()),
        (3, 1, 2, hashlib.sha512(spki).digest()),
        (3, 0, 0, leaf),
        (3, 1, 0, spki),
    ]
    bad = [
        (3, 1, 1, hashlib.sha256(b"another key").digest()),
        (1, 1, 1, hashlib.sha256(spki).digest()),  # PKIX-EE: not used for SMTP
        (0, 0, 1, hashlib.sha256(ca).digest()),  # PKIX-TA: not used for SMTP
        (3, 1, 1, hashlib.sha256(spki).digest()[:16]),  # malformed
        (2, 0, 1, hashlib.sha256(leaf).digest()),  # DANE-TA is never the leaf
    ]
    assert match_tlsa(good + bad, [leaf]) == good
    assert match_tlsa(good, []) == []
    trust_anchor = (2, 0, 1, hashlib.sha256(ca).digest())
    assert match_tlsa([trust_anchor], [leaf]) == []
    assert match_tlsa([trust_anchor], [leaf, ca]) == [trust_anchor]
    assert match_tlsa([trust_anchor, *good], [leaf, ca]) == [trust_anchor, *good]


def test_match_tlsa_ignores_an_unreadable_certificate() -> None:
    garbage = b"not a certificate"
    assert match_tlsa([(3, 1, 1, hashlib.sha256(garbage).digest())], [garbage]) == []
    assert match_tlsa([(3, 0, 1, hashlib.sha256(garbage).digest())], [garbage]) == [
        (3, 0, 1, hashlib.sha256(garbage).digest())
    ]  # selector 0 hashes the bytes as given: nothing to parse
