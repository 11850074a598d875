"""STARTTLS probe of one MX address, and the ``tls.*`` rules (NCSC TLS guidance).

``probe_tls`` (I/O) sends EHLO and STARTTLS, never MAIL: it observes, it does not
deliver. A main connection uses a permissive, non-verifying client that still prefers
the NCSC suites, so it completes with almost any server and records what a modern sender
gets and the leaf certificate (parsed with ``cryptography``). Then, concurrently: one
connection with a verifying client (system store plus ``ca_file``) says whether the
chain is trusted, and one per protocol version, pinned to it with ``ALL:@SECLEVEL=0`` (or
OpenSSL 3 will not offer TLS 1.0/1.1), says whether the server accepts that version.
Each connection is bounded by ``timeout``: an address costs at most two timeouts.

The chain is verified without the clock (expiry is its own finding, from the leaf's
notAfter) and without the name, which is matched against the subjectAltNames as RFC 6125
reads them (``securemail.tls.name_matches``, shared with delivery's pinned policies; no
common-name fallback): each finding is about one thing.

SSLv2/SSLv3 are not probed: OpenSSL 3 no longer contains them, so Python's ``ssl`` cannot
offer them (that needs a tool with its own handshake code, such as testssl.sh). If the
local library lacks TLS 1.0 or 1.1 too, they are left out of ``versions``, not reported
as refused. ``evaluate_tls`` (pure) grades a probe; the clock is passed in.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import ssl
import warnings
from collections.abc import Awaitable
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from securemail.check.model import Finding, failed, passed, unknown, warned
from securemail.errors import ConfigError
from securemail.mech.mta_sts.lookup import trust_version
from securemail.tls import NCSC_TLS12_CIPHERS, name_matches

_ALL_VERSIONS = (
    ("TLSv1", ssl.TLSVersion.TLSv1, ssl.HAS_TLSv1),
    ("TLSv1.1", ssl.TLSVersion.TLSv1_1, ssl.HAS_TLSv1_1),
    ("TLSv1.2", ssl.TLSVersion.TLSv1_2, ssl.HAS_TLSv1_2),
    ("TLSv1.3", ssl.TLSVersion.TLSv1_3, ssl.HAS_TLSv1_3),
)
PROBED_VERSIONS = tuple(name for name, _, available in _ALL_VERSIONS if available)
LEGACY_VERSIONS = ("TLSv1", "TLSv1.1")
_LEGACY_NAMES = {"TLSv1": "TLS 1.0", "TLSv1.1": "TLS 1.1"}
WEAK_PROTOCOLS = frozenset({"SSLv2", "SSLv3", "TLSv1", "TLSv1.1"})
WEAK_CIPHER_MARKS = ("RC4", "DES", "NULL", "EXP", "MD5", "ADH", "AECDH", "ANON")
EXPIRY_WARN_DAYS = 14
MIN_RSA_BITS = 2048
MIN_EC_BITS = 256
_ANY_CIPHER = "ALL:!aNULL:@SECLEVEL=0"  # aNULL: no certificate to report
_NO_CHECK_TIME = 0x200000  # X509_V_FLAG_NO_CHECK_TIME: expiry is reported on its own
_MAX_LINE = 2048
_MAX_REPLY_LINES = 100
_CLOSE_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class TlsProbe:
    """Raw facts about one MX address (for JSON/HTML); ``evaluate_tls`` grades them."""

    host: str
    ip: str
    port: int
    connected: bool  # TCP connection and a 220 greeting
    banner: str
    starttls: bool
    versions: dict[str, bool]  # version → accepted; empty when STARTTLS was not offered
    negotiated: str | None  # with our default (best) client
    cipher: str | None
    cipher_bits: int | None
    cert_subject: str | None
    cert_issuer: str | None
    cert_sans: tuple[str, ...]
    cert_not_after: str | None  # ISO 8601, UTC
    cert_days_left: int | None  # at probe time
    cert_key_type: str | None  # RSA, EC, Ed25519, Ed448, DSA
    cert_key_bits: int | None
    chain_valid: bool | None  # None: could not be verified (no handshake)
    chain_error: str
    name_matches: bool | None
    error: str  # connection/protocol problem, "" if none
    cert_der: bytes = b""  # the leaf certificate (for DANE matching); not in JSON
    timed_out: bool = False  # the main session got no answer in time (could not check)

    @property
    def subject(self) -> str:
        return f"{self.host}[{self.ip}]"

    def to_json(self) -> dict[str, object]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "cert_der"}
        return out | {"cert_sans": list(self.cert_sans), "versions": dict(self.versions)}


# --- probing (I/O) ---------------------------------------------------------------------


@dataclass(slots=True)
class _Session:
    """What one connection saw; mutable while it runs, so a timeout keeps the stage."""

    stage: str = "connecting"
    banner: str = ""
    connected: bool = False
    starttls: bool = False
    version: str | None = None
    cipher: str | None = None
    bits: int | None = None
    der: bytes = b""
    error: str = ""  # before TLS
    tls_error: str = ""  # STARTTLS refused or the handshake failed
    untrusted: bool = False  # the handshake failed certificate verification
    timed_out: bool = False  # no answer within the timeout: nothing was learnt


async def probe_tls(
    host: str, ip: str, port: int, *, ca_file: Path | None = None, timeout: float = 10.0,
    helo: str = "securemail-check.invalid",
) -> TlsProbe:  # fmt: skip
    """Probe ``ip`` (an address of MX ``host``); see the module docstring.

    Never raises for network trouble (it is recorded in ``error``); raises
    ``ConfigError`` if ``ca_file`` cannot be loaded.
    """
    verifying = _verifying_context(ca_file)

    def session(context: ssl.SSLContext) -> Awaitable[_Session]:
        return _session(host, ip, port, context, helo=helo, timeout=timeout)

    main = await session(_client_context(None))
    versions: dict[str, bool] = {}
    chain_valid: bool | None = None
    chain_error = ""
    if main.starttls:
        verify, *pinned = await asyncio.gather(
            session(verifying), *(session(_client_context(v)) for v in PROBED_VERSIONS)
        )
        versions = {v: s.version is not None for v, s in zip(PROBED_VERSIONS, pinned, strict=True)}
        if verify.version is not None:
            chain_valid = True
        elif verify.untrusted:
            chain_valid, chain_error = False, verify.tls_error
        else:
            chain_error = f"not verified: {verify.tls_error or verify.error}"
    probe = TlsProbe(
        host=host, ip=ip, port=port, connected=main.connected, banner=main.banner,
        starttls=main.starttls, versions=versions, negotiated=main.version, cipher=main.cipher,
        cipher_bits=main.bits, cert_subject=None, cert_issuer=None, cert_sans=(),
        cert_not_after=None, cert_days_left=None, cert_key_type=None, cert_key_bits=None,
        chain_valid=chain_valid, chain_error=chain_error, name_matches=None,
        error=main.error or main.tls_error, cert_der=main.der, timed_out=main.timed_out,
    )  # fmt: skip
    try:
        return _with_certificate(probe) if main.der else probe
    except ValueError as exc:
        return replace(probe, error=probe.error or f"cannot parse the certificate: {exc}")


async def _session(
    host: str, ip: str, port: int, context: ssl.SSLContext, *, helo: str, timeout: float
) -> _Session:
    """Connect, greeting, EHLO, STARTTLS, handshake, QUIT; each step recorded."""
    s = _Session()
    peer = f"{host}[{ip}]:{port}"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(ip, port, limit=_MAX_LINE * 4)
            s.stage = "waiting for the greeting"
            code, lines = await _reply(reader)
            s.banner = f"{code} {lines[0]}".strip()
            if code != 220:
                s.error = f"{peer} greeted with {s.banner!r}, not 220"
                return s
            s.connected = True
            s.stage = "sending EHLO"
            writer.write(f"EHLO {helo}\r\n".encode())
            code, lines = await _reply(reader)
            if code != 250:
                s.error = f"{peer} answered EHLO with {code} {lines[-1]}"
                return s
            s.starttls = any(line.split(" ")[0].upper() == "STARTTLS" for line in lines[1:])
            if not s.starttls:
                return s
            s.stage = "sending STARTTLS"
            writer.write(b"STARTTLS\r\n")
            code, lines = await _reply(reader)
            if code != 220:
                s.tls_error = f"{peer} answered STARTTLS with {code} {lines[-1]}"
                return s
            s.stage = "in the TLS handshake"
            await writer.start_tls(context, server_hostname=_sni(host))
            ssl_object = writer.get_extra_info("ssl_object")
            s.version = ssl_object.version()
            cipher = ssl_object.cipher()
            s.cipher, s.bits = (cipher[0], cipher[2]) if cipher else (None, None)
            s.der = ssl_object.getpeercert(binary_form=True) or b""
    except TimeoutError:
        s.timed_out = True
        _failed(s, f"timeout after {timeout:g}s while {s.stage} ({peer})")
    except ssl.SSLCertVerificationError as exc:
        s.untrusted, s.tls_error = True, str(exc.verify_message or exc.reason or exc)
    except ssl.SSLError as exc:
        _failed(s, f"TLS handshake failed: {exc.reason or exc}")
    except (OSError, EOFError, ValueError) as exc:
        errno = getattr(exc, "errno", None)
        reason = os.strerror(errno) if errno else str(exc) or type(exc).__name__
        if s.stage == "connecting":
            _failed(s, f"cannot connect to {peer}: {reason}")
        else:
            _failed(s, f"lost {peer} while {s.stage}: {reason}")
    finally:
        if writer is not None:
            await _close(writer, polite=s.connected and not (s.error or s.tls_error))
    return s


def _failed(s: _Session, message: str) -> None:
    setattr(s, "tls_error" if s.stage == "in the TLS handshake" else "error", message)


async def _reply(reader: asyncio.StreamReader) -> tuple[int, list[str]]:
    """One (possibly multi-line) SMTP reply: its code and the text of each line."""
    lines: list[str] = []
    while len(lines) < _MAX_REPLY_LINES:
        raw = await reader.readline()
        if not raw.endswith(b"\n"):
            raise ConnectionError("connection closed")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if len(line) < 3 or not line[:3].isdigit():
            raise ValueError(f"malformed reply {line[:80]!r}")
        lines.append(line[4:])
        if len(line) == 3 or line[3] != "-":
            return int(line[:3]), lines
    raise ValueError(f"reply longer than {_MAX_REPLY_LINES} lines")


async def _close(writer: asyncio.StreamWriter, *, polite: bool) -> None:
    try:
        if polite and not writer.is_closing():
            writer.write(b"QUIT\r\n")
            writer.close()
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await writer.wait_closed()
        else:
            writer.transport.abort()
    except (OSError, TimeoutError, ssl.SSLError):
        writer.transport.abort()


def _sni(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None  # no SNI for an address literal


# Contexts are built once and shared by every probe (an SSLContext may be shared): the
# verifying one reads the system trust store, tens of milliseconds of CPU, so it is
# built once per ``ca_file`` version (``trust_version``, as MTA-STS policy fetches: a
# replaced CA file is read again), and the non-verifying ones once per pinned version.


@functools.cache
def _client_context(version: str | None) -> ssl.SSLContext:
    """Non-verifying; ``version`` pins one protocol, None allows every one we have."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _permit_legacy(ctx, version)
    return ctx


def _verifying_context(ca_file: Path | None) -> ssl.SSLContext:
    return _verifying_context_for(ca_file, trust_version(ca_file))


@functools.lru_cache(maxsize=8)
def _verifying_context_for(ca_file: Path | None, _version: tuple[int, int]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # matched separately, see name_matches
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_default_certs()
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"tls.ca_file: cannot load {ca_file}: {exc}") from None
    ctx.verify_flags |= _NO_CHECK_TIME  # type: ignore[assignment]
    _permit_legacy(ctx, None)
    return ctx


def _permit_legacy(ctx: ssl.SSLContext, version: str | None) -> None:
    versions = {name: v for name, v, available in _ALL_VERSIONS if available}
    with warnings.catch_warnings():  # "ssl.TLSVersion.TLSv1 is deprecated": we know
        warnings.simplefilter("ignore", DeprecationWarning)
        if version is None:
            ctx.minimum_version = next(iter(versions.values()))
        else:
            ctx.minimum_version = ctx.maximum_version = versions[version]
    # Prefer what a modern sender offers; fall back to anything with a certificate.
    ctx.set_ciphers(f"{NCSC_TLS12_CIPHERS}:{_ANY_CIPHER}")


def _with_certificate(probe: TlsProbe) -> TlsProbe:
    """``probe`` with the facts of its leaf certificate (``ValueError`` if unparseable)."""
    cert = x509.load_der_x509_certificate(probe.cert_der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = (*san.get_values_for_type(x509.DNSName),
                *(str(ip) for ip in san.get_values_for_type(x509.IPAddress)))  # fmt: skip
    except x509.ExtensionNotFound:
        sans = ()
    not_after = cert.not_valid_after_utc
    key_type, key_bits = _key_kind(cert.public_key())
    return replace(
        probe, cert_subject=cert.subject.rfc4514_string(),
        cert_issuer=cert.issuer.rfc4514_string(), cert_sans=sans,
        cert_not_after=not_after.isoformat(), cert_days_left=(not_after - datetime.now(UTC)).days,
        cert_key_type=key_type, cert_key_bits=key_bits, name_matches=name_matches(probe.host, sans),
    )  # fmt: skip


def _key_kind(key: object) -> tuple[str | None, int | None]:
    if isinstance(key, rsa.RSAPublicKey | dsa.DSAPublicKey):
        return ("RSA" if isinstance(key, rsa.RSAPublicKey) else "DSA"), key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("Ed25519", 256) if isinstance(key, ed25519.Ed25519PublicKey) else ("Ed448", 456)
    return None, None


# --- rules (pure) ------------------------------------------------------------------------


def evaluate_tls(probe: TlsProbe, *, now: datetime) -> list[Finding]:
    """The ``tls.*`` findings for one probed address, with ``probe.subject`` as subject."""
    at = probe.subject
    if not probe.connected and probe.timed_out:
        # Silence is not a finding: the host may be slow, the path lossy, or (in bulk)
        # the checker itself late. Refused, reset or a 554 greeting are answers: fail.
        fix = "Retry later; if it persists, make sure the MX host greets within seconds."
        return [unknown("tls.connect", f"could not check: {probe.error}", fix, at)]
    if not probe.connected:
        fix = "Make sure the MX host accepts SMTP on port 25 and greets with 220."
        return [failed("tls.connect", f"could not connect: {probe.error or 'no greeting'}",
                       fix, at)]  # fmt: skip
    out = [passed("tls.connect", f"connected: {probe.banner}", at)]
    if not probe.starttls:
        fix = "Enable STARTTLS with a certificate for the MX host name."
        message = "STARTTLS not offered: secure email requires TLS"
        message += f" ({probe.error})" if probe.error else ""
        out.append(failed("tls.starttls", message, fix, at))
        return out
    out.append(passed("tls.starttls", "STARTTLS offered", at))
    version_fix = "Enable TLS 1.2 and TLS 1.3 (NCSC: TLS 1.2 or later only)."
    if probe.negotiated is None:
        message = f"TLS handshake failed: {probe.error or 'unknown error'}"
        out.append(failed("tls.version", message, version_fix, at))
    elif probe.negotiated in WEAK_PROTOCOLS:
        message = f"best version negotiated is {probe.negotiated}, below TLS 1.2"
        out.append(failed("tls.version", message, version_fix, at))
    else:
        out.append(passed("tls.version", f"negotiated {probe.negotiated}", at))
    out.append(_legacy(probe))
    if probe.negotiated is None:
        return out
    out.append(_cipher(probe))
    fix = "Install a certificate from a public CA, with its intermediate certificates."
    if probe.chain_valid is True:
        out.append(passed("tls.certificate_chain", f"trusted (issuer {probe.cert_issuer})", at))
    elif probe.chain_valid is False:
        out.append(failed("tls.certificate_chain", f"not trusted: {probe.chain_error}", fix, at))
    else:
        message = f"could not verify: {probe.chain_error}"
        out.append(warned("tls.certificate_chain", message, fix, at))
    if probe.name_matches is True:
        out.append(passed("tls.certificate_name", f"certificate names {probe.host}", at))
    elif probe.name_matches is False:
        names = ", ".join(probe.cert_sans) or f"no subjectAltName; subject {probe.cert_subject}"
        fix = f"Use a certificate whose subjectAltName includes {probe.host}."
        message = f"certificate does not name {probe.host} ({names})"
        out.append(failed("tls.certificate_name", message, fix, at))
    if probe.cert_not_after is not None:
        out.append(_expiry(probe, now))
    if probe.cert_key_type is not None:
        out.append(_key(probe))
    return out


def _legacy(probe: TlsProbe) -> Finding:
    at = probe.subject
    probed = [v for v in LEGACY_VERSIONS if v in probe.versions]
    accepted = [v for v in probed if probe.versions[v]]
    if accepted:
        names = "/".join(_LEGACY_NAMES[v] for v in accepted)
        fix = "Disable TLS 1.0 and 1.1 (NCSC: TLS 1.2 or later only)."
        return warned("tls.legacy_versions", f"accepts {names}; NCSC: disable", fix, at)
    if not probed:
        return passed("tls.legacy_versions", "TLS 1.0/1.1 not probed (not in our TLS library)",
                      at)  # fmt: skip
    return passed("tls.legacy_versions", "refuses TLS 1.0 and 1.1", at)


def _cipher(probe: TlsProbe) -> Finding:
    at = probe.subject
    name = probe.cipher or "unknown"
    bits = probe.cipher_bits
    described = f"{name} ({bits} bits)" if bits is not None else name
    fix = "Offer ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 only (NCSC)."
    upper = name.upper()
    if any(mark in upper for mark in WEAK_CIPHER_MARKS) or (bits is not None and bits < 128):
        return failed("tls.cipher", f"weak cipher {described}", fix, at)
    if upper.startswith("TLS_"):  # TLS 1.3: every suite is AEAD and forward secret
        return passed("tls.cipher", described, at)
    problems = []
    if not upper.startswith(("ECDHE-", "DHE-")):
        problems.append("no forward secrecy")
    if not any(aead in upper for aead in ("GCM", "CHACHA20", "CCM")):
        problems.append("CBC mode, not AEAD")
    if problems:
        return warned("tls.cipher", f"{described}: {', '.join(problems)}", fix, at)
    return passed("tls.cipher", described, at)


def _expiry(probe: TlsProbe, now: datetime) -> Finding:
    at = probe.subject
    not_after = datetime.fromisoformat(probe.cert_not_after or "")
    not_after = not_after if not_after.tzinfo else not_after.replace(tzinfo=UTC)
    day = not_after.date().isoformat()
    fix = "Renew the certificate, and automate renewal."
    if not_after <= now:
        return failed("tls.certificate_expiry", f"certificate expired on {day}", fix, at)
    days = (not_after - now).days
    if days < EXPIRY_WARN_DAYS:
        message = f"certificate expires on {day} ({days} days left)"
        return warned("tls.certificate_expiry", message, fix, at)
    return passed("tls.certificate_expiry", f"certificate valid until {day} ({days} days)", at)


def _key(probe: TlsProbe) -> Finding:
    at = probe.subject
    kind, bits = probe.cert_key_type, probe.cert_key_bits or 0
    described = f"{kind} {bits} bits"
    fix = f"Use an RSA key of at least {MIN_RSA_BITS} bits or an ECDSA P-256 (or larger) key."
    minimum = {"RSA": MIN_RSA_BITS, "DSA": MIN_RSA_BITS, "EC": MIN_EC_BITS}.get(kind or "", 0)
    if bits < minimum:
        return failed("tls.certificate_key", f"certificate key too small: {described}", fix, at)
    return passed("tls.certificate_key", f"certificate key {described}", at)
