"""The STARTTLS probe and the tls.* / dane.* rules, against real TLS servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from harness.dnsserver import DnsServer
from harness.pki import TestPKI
from harness.smtpsink import SinkServer

from securemail.check.model import Finding, Status
from securemail.check.rules.dane import check_dane, evaluate_tlsa
from securemail.check.rules.tls import TlsProbe, evaluate_tls, probe_tls
from securemail.dns import Resolver
from securemail.errors import ConfigError
from securemail.mech.dane import match_tlsa
from securemail.tls import name_matches

HOST = "mx.test.nhs.net"
LOOPBACK = "127.0.0.1"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ALL_CODES = {
    "tls.connect",
    "tls.starttls",
    "tls.version",
    "tls.legacy_versions",
    "tls.cipher",
    "tls.certificate_chain",
    "tls.certificate_name",
    "tls.certificate_expiry",
    "tls.certificate_key",
}
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# --- helpers ---------------------------------------------------------------------------


@contextlib.contextmanager
def sink(tls_context: ssl.SSLContext | None) -> Iterator[SinkServer]:
    with SinkServer(hostname=HOST, tls_context=tls_context) as server:
        yield server


async def probe(server: SinkServer | int, pki: TestPKI | None, **kw: object) -> TlsProbe:
    port = server if isinstance(server, int) else server.port
    ca_file = pki.ca_file if pki is not None else None
    return await probe_tls(HOST, LOOPBACK, port, ca_file=ca_file, timeout=5.0, **kw)  # type: ignore[arg-type]


def by_code(findings: list[Finding]) -> dict[str, Finding]:
    codes = [f.check for f in findings]
    assert len(codes) == len(set(codes)), codes
    return {f.check: f for f in findings}


def statuses(findings: list[Finding]) -> dict[str, Status]:
    return {code: f.status for code, f in by_code(findings).items()}


def legacy_context(
    chain: Path,
    key: Path,
    *,
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1,
    maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
    ciphers: str = "ALL",
) -> ssl.SSLContext:
    """A server context that allows what NCSC says to disable."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = minimum
        ctx.maximum_version = maximum
    ctx.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    ctx.load_cert_chain(chain, key)
    return ctx


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def rsa_pki(directory: Path, leaf_bits: int) -> tuple[Path, Path, Path]:
    """An RSA CA and an RSA leaf of ``leaf_bits`` for HOST: (ca, chain, key) PEM paths.

    trustme issues ECDSA only; the key-size rule needs RSA keys of chosen sizes.
    """
    now = datetime.now(UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("securemail test RSA CA"))
        .issuer_name(_name("securemail test RSA CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=leaf_bits)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(HOST))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path = directory / f"rsa{leaf_bits}-ca.pem"
    chain_path = directory / f"rsa{leaf_bits}-chain.pem"
    key_path = directory / f"rsa{leaf_bits}.key"
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    chain_path.write_bytes(leaf.public_bytes(pem) + ca_cert.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, chain_path, key_path


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    """A plain TCP server on loopback (in this test's loop) running ``handler``."""
    writers: list[asyncio.StreamWriter] = []

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await handler(reader, writer)
        writer.close()

    server = await asyncio.start_server(wrapped, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        await server.wait_closed()


def fake_smtp(starttls_reply: bytes) -> Handler:
    """Greets, offers STARTTLS, answers it with ``starttls_reply`` then speaks no TLS."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.test ESMTP\r\n")
        while line := await reader.readline():
            command = line.upper()
            if command.startswith(b"EHLO"):
                writer.write(b"250-fake.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
            elif command.startswith(b"STARTTLS"):
                writer.write(starttls_reply)
                if starttls_reply.startswith(b"220"):
                    writer.write(b"this is not a TLS record\r\n" * 4)
                    await writer.drain()
                    return
            else:
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            await writer.drain()

    return handler


@pytest.fixture(scope="module")
def rsa_files(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, Path, Path]]:
    directory = tmp_path_factory.mktemp("rsa")
    return {bits: rsa_pki(directory, bits) for bits in (1024, 2048)}


# --- probe against real servers ----------------------------------------------------------


async def test_good_server_passes_every_check_and_sends_no_mail(pki: TestPKI) -> None:
    with sink(pki.server_context(HOST)) as server:
        result = await probe(server, pki)
        sessions = await asyncio.to_thread(server.wait_sessions_closed, 1 + 1 + 4, 10)
    assert result.connected and result.starttls and result.error == ""
    assert result.banner.startswith("220 ")
    assert result.versions == {"TLSv1": False, "TLSv1.1": False, "TLSv1.2": True, "TLSv1.3": True}
    assert result.negotiated == "TLSv1.3"
    assert result.cipher is not None and result.cipher.startswith("TLS_")
    assert result.cipher_bits is not None and result.cipher_bits >= 128
    assert result.chain_valid is True and result.chain_error == ""
    assert result.name_matches is True and result.cert_sans == (HOST,)
    assert result.cert_key_type == "EC" and result.cert_key_bits == 256
    assert result.cert_subject is not None and f"CN={HOST}" in result.cert_subject
    assert result.cert_days_left is not None and result.cert_days_left > 14
    findings = evaluate_tls(result, now=NOW)
    assert set(statuses(findings)) == ALL_CODES
    assert all(f.status is Status.PASS for f in findings), findings
    assert {f.subject for f in findings} == {f"{HOST}[{LOOPBACK}]"}
    assert by_code(findings)["tls.version"].message == "negotiated TLSv1.3"
    # It observes only: EHLO and STARTTLS in clear on every connection, never MAIL/RCPT.
    assert server.messages == [] and server.rejected == []
    assert b"MAIL" not in server.plaintext and b"RCPT" not in server.plaintext
    assert all(s.ehlo[:1] == ["securemail-check.invalid"] for s in sessions)
    assert sum(s.tls for s in sessions) == 4  # main, verifying, TLSv1.2, TLSv1.3


async def test_probe_json_is_serialisable_without_the_der(pki: TestPKI) -> None:
    with sink(pki.server_context(HOST)) as server:
        result = await probe(server, pki)
    data = json.loads(json.dumps(result.to_json()))
    assert "cert_der" not in data and result.cert_der[:1] == b"\x30"  # DER SEQUENCE
    assert data["cert_sans"] == [HOST] and data["versions"]["TLSv1.2"] is True
    assert data["host"] == HOST and data["port"] == server.port and data["chain_valid"] is True
    assert datetime.fromisoformat(data["cert_not_after"]) > NOW


async def test_without_ca_file_the_test_ca_is_not_trusted(pki: TestPKI) -> None:
    with sink(pki.server_context(HOST)) as server:
        result = await probe(server, None)
    assert result.chain_valid is False
    assert "unable to get local issuer certificate" in result.chain_error
    chain = by_code(evaluate_tls(result, now=NOW))["tls.certificate_chain"]
    assert chain.status is Status.FAIL and "local issuer" in chain.message and chain.fix


async def test_no_starttls_fails(pki: TestPKI) -> None:
    with sink(None) as server:
        result = await probe(server, pki)
        await asyncio.to_thread(server.wait_sessions_closed, 1, 10)
        assert len(server.sessions) == 1  # no version probes against a plain server
        assert server.plaintext.endswith(b"QUIT\r\n")  # closed politely
    assert result.connected and not result.starttls and result.versions == {}
    assert result.negotiated is None and result.cert_der == b""
    found = statuses(evaluate_tls(result, now=NOW))
    assert found == {"tls.connect": Status.PASS, "tls.starttls": Status.FAIL}
    message = by_code(evaluate_tls(result, now=NOW))["tls.starttls"].message
    assert message == "STARTTLS not offered: secure email requires TLS"


async def test_tls_1_0_and_1_1_accepted_warns(pki: TestPKI) -> None:
    chain, key = pki.server_cert(HOST)
    with sink(legacy_context(chain, key)) as server:
        result = await probe(server, pki)
    # This machine's OpenSSL (3.0) can still negotiate TLS 1.0/1.1 at SECLEVEL=0.
    assert result.versions == {"TLSv1": True, "TLSv1.1": True, "TLSv1.2": True, "TLSv1.3": True}
    findings = by_code(evaluate_tls(result, now=NOW))
    legacy = findings["tls.legacy_versions"]
    assert legacy.status is Status.WARN
    assert legacy.message == "accepts TLS 1.0/TLS 1.1; NCSC: disable"
    assert findings["tls.version"].status is Status.PASS  # a modern client still gets 1.3
    assert findings["tls.certificate_chain"].status is Status.PASS


async def test_only_tls_1_1_fails_version(pki: TestPKI) -> None:
    chain, key = pki.server_cert(HOST)
    ctx = legacy_context(chain, key, maximum=ssl.TLSVersion.TLSv1_1)
    with sink(ctx) as server:
        result = await probe(server, pki)
    assert result.negotiated == "TLSv1.1"
    assert result.versions == {"TLSv1": True, "TLSv1.1": True, "TLSv1.2": False, "TLSv1.3": False}
    findings = by_code(evaluate_tls(result, now=NOW))
    assert findings["tls.version"].status is Status.FAIL
    assert "TLSv1.1, below TLS 1.2" in findings["tls.version"].message
    assert findings["tls.legacy_versions"].status is Status.WARN
    assert findings["tls.cipher"].status is Status.WARN  # TLS 1.1 has only CBC suites
    assert findings["tls.certificate_chain"].status is Status.PASS  # verified over TLS 1.1 too


async def test_cbc_cipher_warns(pki: TestPKI) -> None:
    chain, key = pki.server_cert(HOST)
    ctx = legacy_context(
        chain, key, minimum=ssl.TLSVersion.TLSv1_2, maximum=ssl.TLSVersion.TLSv1_2,
        ciphers="ECDHE-ECDSA-AES128-SHA",
    )  # fmt: skip
    with sink(ctx) as server:
        result = await probe(server, pki)
    assert (result.negotiated, result.cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES128-SHA")
    found = by_code(evaluate_tls(result, now=NOW))
    assert found["tls.cipher"].status is Status.WARN
    assert found["tls.cipher"].message == "ECDHE-ECDSA-AES128-SHA (128 bits): CBC mode, not AEAD"
    assert found["tls.version"].status is Status.PASS
    assert found["tls.legacy_versions"].status is Status.PASS


async def test_rsa_key_exchange_warns_and_rsa_2048_passes(
    pki: TestPKI, rsa_files: dict[int, tuple[Path, Path, Path]]
) -> None:
    ca, chain, key = rsa_files[2048]
    ctx = legacy_context(
        chain, key, minimum=ssl.TLSVersion.TLSv1_2, maximum=ssl.TLSVersion.TLSv1_2,
        ciphers="AES128-GCM-SHA256",
    )  # fmt: skip
    with sink(ctx) as server:
        result = await probe_tls(HOST, LOOPBACK, server.port, ca_file=ca, timeout=5.0)
    assert result.cipher == "AES128-GCM-SHA256"
    found = by_code(evaluate_tls(result, now=NOW))
    assert found["tls.cipher"].status is Status.WARN
    assert "no forward secrecy" in found["tls.cipher"].message
    assert (result.cert_key_type, result.cert_key_bits) == ("RSA", 2048)
    assert found["tls.certificate_key"].status is Status.PASS
    assert found["tls.certificate_key"].message == "certificate key RSA 2048 bits"
    assert found["tls.certificate_chain"].status is Status.PASS  # ca_file from the argument


async def test_rsa_1024_key_fails(rsa_files: dict[int, tuple[Path, Path, Path]]) -> None:
    ca, chain, key = rsa_files[1024]
    ctx = legacy_context(chain, key, minimum=ssl.TLSVersion.TLSv1_2, ciphers="DEFAULT")
    with sink(ctx) as server:
        result = await probe_tls(HOST, LOOPBACK, server.port, ca_file=ca, timeout=5.0)
    assert (result.cert_key_type, result.cert_key_bits) == ("RSA", 1024)
    found = by_code(evaluate_tls(result, now=NOW))
    key_finding = found["tls.certificate_key"]
    assert key_finding.status is Status.FAIL
    assert key_finding.message == "certificate key too small: RSA 1024 bits"
    assert "2048" in key_finding.fix
    # Key size is its own finding: the chain itself is trusted.
    assert found["tls.certificate_chain"].status is Status.PASS


async def test_expired_certificate_fails(pki: TestPKI) -> None:
    now = datetime.now(UTC)
    ctx = pki.server_context(
        HOST, not_before=now - timedelta(days=60), not_after=now - timedelta(days=30)
    )
    with sink(ctx) as server:
        result = await probe(server, pki)
    assert result.cert_days_left is not None and -31 <= result.cert_days_left <= -30
    assert result.chain_valid is True  # the chain is checked without the clock ...
    found = by_code(evaluate_tls(result, now=now))
    expiry = found["tls.certificate_expiry"]  # ... expiry is reported here, once
    assert expiry.status is Status.FAIL
    day = (now - timedelta(days=30)).date().isoformat()
    assert expiry.message == f"certificate expired on {day}"
    assert found["tls.certificate_chain"].status is Status.PASS


async def test_wrong_name_fails(pki: TestPKI) -> None:
    with sink(pki.server_context("other.example.org")) as server:
        result = await probe(server, pki)
    assert result.name_matches is False and result.chain_valid is True
    found = by_code(evaluate_tls(result, now=NOW))
    name = found["tls.certificate_name"]
    assert name.status is Status.FAIL
    assert name.message == f"certificate does not name {HOST} (other.example.org)"
    assert HOST in name.fix
    assert found["tls.certificate_chain"].status is Status.PASS


async def test_self_signed_fails_chain(pki: TestPKI) -> None:
    with sink(pki.server_context(HOST, trusted=False)) as server:
        result = await probe(server, pki)
    assert result.chain_valid is False and result.name_matches is True
    assert "unable to get local issuer certificate" in result.chain_error
    found = by_code(evaluate_tls(result, now=NOW))
    assert found["tls.certificate_chain"].status is Status.FAIL
    assert found["tls.certificate_chain"].message.startswith("not trusted: ")
    assert found["tls.certificate_name"].status is Status.PASS
    assert found["tls.version"].status is Status.PASS  # the handshake itself succeeded


async def test_nothing_listening_fails_connect() -> None:
    async with raw_server(fake_smtp(b"")) as port:
        pass  # bound and closed: nothing listens there now
    started = time.monotonic()
    result = await probe_tls(HOST, LOOPBACK, port, timeout=5.0)
    assert time.monotonic() - started < 2
    assert not result.connected and result.banner == ""
    assert "cannot connect to" in result.error and "refused" in result.error.lower()
    findings = evaluate_tls(result, now=NOW)
    assert [(f.check, f.status) for f in findings] == [("tls.connect", Status.FAIL)]
    assert findings[0].message.startswith("could not connect: cannot connect to")


@pytest.mark.timeout(10)
async def test_silent_server_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    async with raw_server(silent) as port:
        started = time.monotonic()
        result = await probe_tls(HOST, LOOPBACK, port, timeout=0.5)
        elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 2.5  # one bounded wait: no further probes after no greeting
    assert not result.connected
    assert (
        result.error
        == f"timeout after 0.5s while waiting for the greeting ({HOST}[{LOOPBACK}]:{port})"
    )
    assert result.timed_out
    findings = evaluate_tls(result, now=NOW)  # silence is no finding: could not check
    assert [(f.check, f.status) for f in findings] == [("tls.connect", Status.ERROR)]
    assert findings[0].message.startswith("could not check: timeout after 0.5s")


async def test_rejecting_greeting_fails_connect() -> None:
    async def reject(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 5.7.1 no service here\r\n")
        await writer.drain()

    async with raw_server(reject) as port:
        result = await probe_tls(HOST, LOOPBACK, port, timeout=2.0)
    assert not result.connected and result.banner == "554 5.7.1 no service here"
    finding = by_code(evaluate_tls(result, now=NOW))["tls.connect"]
    assert finding.status is Status.FAIL and "not 220" in finding.message


async def test_broken_handshake_fails_version() -> None:
    async with raw_server(fake_smtp(b"220 2.0.0 go ahead\r\n")) as port:
        result = await probe_tls(HOST, LOOPBACK, port, timeout=2.0)
    assert result.connected and result.starttls and result.negotiated is None
    assert result.error.startswith("TLS handshake failed") or "TLS handshake" in result.error
    assert result.versions == {"TLSv1": False, "TLSv1.1": False, "TLSv1.2": False, "TLSv1.3": False}
    assert result.chain_valid is None and result.chain_error.startswith("not verified: ")
    found = statuses(evaluate_tls(result, now=NOW))
    assert found == {
        "tls.connect": Status.PASS,
        "tls.starttls": Status.PASS,
        "tls.version": Status.FAIL,
        "tls.legacy_versions": Status.PASS,
    }


async def test_starttls_refused_fails_version() -> None:
    async with raw_server(fake_smtp(b"454 4.7.0 TLS not available\r\n")) as port:
        result = await probe_tls(HOST, LOOPBACK, port, timeout=2.0)
    assert result.starttls and result.negotiated is None
    version = by_code(evaluate_tls(result, now=NOW))["tls.version"]
    assert version.status is Status.FAIL
    assert "answered STARTTLS with 454 4.7.0 TLS not available" in version.message


async def test_unloadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "missing-ca.pem"
    with pytest.raises(ConfigError, match=r"tls\.ca_file: cannot load .*missing-ca\.pem"):
        await probe_tls(HOST, LOOPBACK, 25, ca_file=bad, timeout=1.0)


# --- rules (pure, fixed clock) -------------------------------------------------------------


def good_probe(**changes: object) -> TlsProbe:
    base = TlsProbe(
        host=HOST, ip="192.0.2.7", port=25, connected=True, banner="220 mx ESMTP",
        starttls=True,
        versions={"TLSv1": False, "TLSv1.1": False, "TLSv1.2": True, "TLSv1.3": True},
        negotiated="TLSv1.2", cipher="ECDHE-RSA-AES256-GCM-SHA384", cipher_bits=256,
        cert_subject=f"CN={HOST}", cert_issuer="CN=Test CA", cert_sans=(HOST,),
        cert_not_after=(NOW + timedelta(days=90)).isoformat(), cert_days_left=90,
        cert_key_type="RSA", cert_key_bits=2048, chain_valid=True, chain_error="",
        name_matches=True, error="",
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def finding(code: str, **changes: object) -> Finding:
    return by_code(evaluate_tls(good_probe(**changes), now=NOW))[code]


def test_rules_all_pass_for_a_good_probe() -> None:
    findings = evaluate_tls(good_probe(), now=NOW)
    assert set(statuses(findings)) == ALL_CODES
    assert all(f.status is Status.PASS and f.fix == "" for f in findings)
    assert {f.subject for f in findings} == {f"{HOST}[192.0.2.7]"}


@pytest.mark.parametrize(
    ("cipher", "bits", "status"),
    [
        ("TLS_AES_128_GCM_SHA256", 128, Status.PASS),
        ("TLS_CHACHA20_POLY1305_SHA256", 256, Status.PASS),
        ("ECDHE-RSA-AES256-GCM-SHA384", 256, Status.PASS),
        ("ECDHE-ECDSA-CHACHA20-POLY1305", 256, Status.PASS),
        ("DHE-RSA-AES128-GCM-SHA256", 128, Status.PASS),
        ("ECDHE-RSA-AES128-SHA256", 128, Status.WARN),  # CBC
        ("AES256-GCM-SHA384", 256, Status.WARN),  # RSA key exchange: no forward secrecy
        ("AES128-SHA", 128, Status.WARN),  # both
        ("RC4-SHA", 128, Status.FAIL),
        ("ECDHE-RSA-DES-CBC3-SHA", 112, Status.FAIL),  # 3DES
        ("ECDHE-RSA-NULL-SHA", 0, Status.FAIL),
        ("EXP-RC4-MD5", 40, Status.FAIL),
        ("ADH-AES128-GCM-SHA256", 128, Status.FAIL),  # anonymous
        ("ECDHE-RSA-AES256-GCM-SHA384", 64, Status.FAIL),  # fewer than 128 bits
    ],
)
def test_cipher_rule(cipher: str, bits: int, status: Status) -> None:
    result = finding("tls.cipher", cipher=cipher, cipher_bits=bits)
    assert result.status is status, result
    assert cipher in result.message
    assert (result.fix == "") is (status is Status.PASS)


@pytest.mark.parametrize(
    ("days", "status", "message"),
    [
        (90, Status.PASS, "certificate valid until 2026-08-30 (90 days)"),
        (14, Status.PASS, "certificate valid until 2026-06-15 (14 days)"),
        (13, Status.WARN, "certificate expires on 2026-06-14 (13 days left)"),
        (1, Status.WARN, "certificate expires on 2026-06-02 (1 days left)"),
        (0, Status.FAIL, "certificate expired on 2026-06-01"),
        (-400, Status.FAIL, "certificate expired on 2025-04-27"),
    ],
)
def test_expiry_rule_with_a_fixed_clock(days: int, status: Status, message: str) -> None:
    not_after = (NOW + timedelta(days=days)).isoformat()
    result = finding("tls.certificate_expiry", cert_not_after=not_after)
    assert (result.status, result.message) == (status, message)


@pytest.mark.parametrize(
    ("kind", "bits", "status"),
    [
        ("RSA", 1024, Status.FAIL),
        ("RSA", 2047, Status.FAIL),
        ("RSA", 2048, Status.PASS),
        ("RSA", 4096, Status.PASS),
        ("EC", 224, Status.FAIL),
        ("EC", 256, Status.PASS),
        ("EC", 384, Status.PASS),
        ("Ed25519", 256, Status.PASS),
        ("DSA", 1024, Status.FAIL),
    ],
)
def test_key_rule(kind: str, bits: int, status: Status) -> None:
    result = finding("tls.certificate_key", cert_key_type=kind, cert_key_bits=bits)
    assert result.status is status and f"{kind} {bits} bits" in result.message


@pytest.mark.parametrize(
    ("negotiated", "status"),
    [("TLSv1.3", Status.PASS), ("TLSv1.2", Status.PASS), ("TLSv1.1", Status.FAIL),
     ("TLSv1", Status.FAIL), ("SSLv3", Status.FAIL)],
)  # fmt: skip
def test_version_rule(negotiated: str, status: Status) -> None:
    assert finding("tls.version", negotiated=negotiated).status is status


def test_failed_handshake_stops_after_the_version_findings() -> None:
    result = good_probe(negotiated=None, error="TLS handshake failed: NO_SHARED_CIPHER")
    findings = evaluate_tls(result, now=NOW)
    assert [f.check for f in findings] == [
        "tls.connect", "tls.starttls", "tls.version", "tls.legacy_versions",
    ]  # fmt: skip
    assert findings[2].status is Status.FAIL and "NO_SHARED_CIPHER" in findings[2].message


def test_legacy_rule() -> None:
    one = finding("tls.legacy_versions", versions={"TLSv1": True, "TLSv1.1": False})
    assert one.status is Status.WARN and one.message == "accepts TLS 1.0; NCSC: disable"
    refused = finding("tls.legacy_versions")
    assert refused.status is Status.PASS and refused.message == "refuses TLS 1.0 and 1.1"
    unprobed = finding("tls.legacy_versions", versions={"TLSv1.2": True, "TLSv1.3": True})
    assert unprobed.status is Status.PASS and "not probed" in unprobed.message


def test_chain_that_could_not_be_checked_warns() -> None:
    result = finding("tls.certificate_chain", chain_valid=None, chain_error="not verified: x")
    assert result.status is Status.WARN and "could not verify" in result.message


def test_not_connected_gives_only_the_connect_failure() -> None:
    findings = evaluate_tls(good_probe(connected=False, error="refused"), now=NOW)
    assert [(f.check, f.status, f.message) for f in findings] == [
        ("tls.connect", Status.FAIL, "could not connect: refused")
    ]


def test_name_without_san_fails() -> None:
    result = finding("tls.certificate_name", name_matches=False, cert_sans=())
    assert result.status is Status.FAIL and f"subject CN={HOST}" in result.message


@pytest.mark.parametrize(
    ("host", "sans", "ok"),
    [
        ("mx.test.nhs.net", ("mx.test.nhs.net",), True),
        ("MX.Test.NHS.net.", ("mx.test.nhs.net",), True),
        ("mx.test.nhs.net", ("*.test.nhs.net",), True),
        ("a.mx.test.nhs.net", ("*.test.nhs.net",), False),  # one label only
        ("test.nhs.net", ("*.test.nhs.net",), False),
        ("mx.nhs.net", ("*.net",), False),  # no wildcard directly under a TLD
        ("mx.test.nhs.net", ("m*.test.nhs.net",), False),  # no partial wildcards
        ("mx.test.nhs.net", ("other.test.nhs.net", "127.0.0.1"), False),
        ("mx.test.nhs.net", (), False),
    ],
)
def test_name_matching(host: str, sans: tuple[str, ...], ok: bool) -> None:
    assert name_matches(host, sans) is ok


# --- DANE ------------------------------------------------------------------------------------


@pytest.fixture
def resolver(dns_server: DnsServer) -> Resolver:
    return Resolver([dns_server.nameserver], timeout=2.0, cache=False)


SHA256_HEX = "ab" * 32


async def test_dane_absent_passes_once(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("mx1.test", "A", "192.0.2.1")  # the zone exists, no TLSA anywhere
    findings, facts = await check_dane(["mx1.test", "mx2.test"], resolver)
    assert [(f.check, f.status, f.subject) for f in findings] == [("dane.tlsa", Status.PASS, "")]
    assert findings[0].message == "not published (DANE is optional; MTA-STS covers the guidance)"
    assert facts == {
        "dane": {
            "mx1.test": {"name": "_25._tcp.mx1.test", "records": [], "dnssec": False, "error": ""},
            "mx2.test": {"name": "_25._tcp.mx2.test", "records": [], "dnssec": False, "error": ""},
        }
    }


async def test_dane_validated_passes_per_host(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.set_ad(True)
    dns_server.add("_25._tcp.mx1.test", "TLSA", f"3 1 1 {SHA256_HEX}")
    dns_server.add("_25._tcp.mx2.test", "TLSA", f"2 0 1 {SHA256_HEX}", f"3 1 1 {'cd' * 32}")
    findings, facts = await check_dane(["mx1.test", "mx2.test"], resolver)
    assert [(f.check, f.status, f.subject) for f in findings] == [
        ("dane.tlsa", Status.PASS, "mx1.test"),
        ("dane.tlsa", Status.PASS, "mx2.test"),
    ]
    assert findings[0].message == "_25._tcp.mx1.test: 3 1 1 (DNSSEC-validated)"
    assert "2 0 1" in findings[1].message and "3 1 1" in findings[1].message
    host_facts = facts["dane"]["mx1.test"]  # type: ignore[index]
    assert host_facts["records"] == [f"3 1 1 {SHA256_HEX}"] and host_facts["dnssec"] is True


async def test_dane_without_dnssec_warns(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.set_ad(False)
    dns_server.add("_25._tcp.mx1.test", "TLSA", f"3 1 1 {SHA256_HEX}")
    findings, _ = await check_dane(["mx1.test"], resolver)
    assert len(findings) == 1 and findings[0].status is Status.WARN
    assert "TLSA records without DNSSEC validation are ignored by senders" in findings[0].message
    assert "DNSSEC" in findings[0].fix


async def test_dane_pkix_usage_and_malformed_warn(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.set_ad(True)
    dns_server.add("_25._tcp.mx1.test", "TLSA", f"1 1 1 {SHA256_HEX}")
    # Matching type 3 is unassigned. (A SHA-256 of the wrong length never gets this far:
    # dnspython rejects the whole answer, which is reported as dane.dns_error.)
    dns_server.add("_25._tcp.mx2.test", "TLSA", "3 1 3 abcdef")
    findings, _ = await check_dane(["mx1.test", "mx2.test"], resolver)
    pkix, malformed = findings
    assert pkix.status is Status.WARN and "RFC 7672 §3.1.3" in pkix.message
    assert "usage 1 (PKIX)" in pkix.message and "DANE-EE" in pkix.fix
    assert malformed.status is Status.WARN and "malformed or unsupported" in malformed.message
    assert "3 1 3 abcdef (matching type 3 unknown)" in malformed.message


async def test_dane_missing_on_one_mx_warns(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.set_ad(True)
    dns_server.add("_25._tcp.mx1.test", "TLSA", f"3 1 1 {SHA256_HEX}")
    dns_server.add("mx2.test", "A", "192.0.2.2")
    findings, _ = await check_dane(["mx1.test", "mx2.test"], resolver)
    assert [(f.status, f.subject) for f in findings] == [
        (Status.PASS, "mx1.test"),
        (Status.WARN, "mx2.test"),
    ]
    assert "other MX hosts publish TLSA" in findings[1].message


async def test_dane_dns_failure_is_could_not_check(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    dns_server.behave("_25._tcp.mx1.test", "servfail")
    findings, facts = await check_dane(["mx1.test", "mx2.test"], resolver)
    found = [(f.check, f.status, f.subject) for f in findings]
    assert found == [("dane.tlsa", Status.PASS, ""), ("dane.dns_error", Status.ERROR, "mx1.test")]
    assert "SERVFAIL" in findings[1].message or "no nameserver answered" in findings[1].message
    assert facts["dane"]["mx1.test"]["error"]  # type: ignore[index]
    # Every lookup failed: no pass on absence we could not see.
    findings, _ = await check_dane(["mx1.test"], resolver)
    assert [(f.check, f.status) for f in findings] == [("dane.dns_error", Status.ERROR)]


async def test_dane_uses_the_port(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.set_ad(True)
    dns_server.add("_2525._tcp.mx1.test", "TLSA", f"3 1 1 {SHA256_HEX}")
    findings, _ = await check_dane(["mx1.test"], resolver, port=2525)
    assert findings[0].status is Status.PASS and "_2525._tcp.mx1.test" in findings[0].message
    findings, _ = await check_dane(["mx1.test"], resolver)
    assert "not published" in findings[0].message


def test_evaluate_tlsa() -> None:
    ok = evaluate_tlsa("mx.test", "_25._tcp.mx.test", [(3, 1, 1, b"x" * 32)], True)
    assert ok.status is Status.PASS
    both = evaluate_tlsa("mx.test", "_25._tcp.mx.test", [(0, 0, 1, b"x" * 32)], False)
    assert both.status is Status.WARN and "DNSSEC" in both.message and "usage 0" in both.message


def _spki(der: bytes) -> bytes:
    return (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


async def test_dane_end_to_end_with_published_digest(
    pki: TestPKI, dns_server: DnsServer, resolver: Resolver
) -> None:
    with sink(pki.server_context(HOST)) as server:
        leaf = (await probe(server, pki)).cert_der
    digest = hashlib.sha256(_spki(leaf)).hexdigest()
    dns_server.set_ad(True)
    dns_server.add(f"_25._tcp.{HOST}", "TLSA", f"3 1 1 {digest}")
    findings, facts = await check_dane([HOST], resolver)
    assert [(f.check, f.status) for f in findings] == [("dane.tlsa", Status.PASS)]
    assert facts["dane"][HOST]["records"] == [f"3 1 1 {digest}"]  # type: ignore[index]
    records, ad = await resolver.tlsa(f"_25._tcp.{HOST}")
    assert ad is True and match_tlsa(records, [leaf]) == records
    other = x509.load_pem_x509_certificate(pki.self_signed(HOST)[0].read_bytes())
    assert match_tlsa(records, [other.public_bytes(serialization.Encoding.DER)]) == []
