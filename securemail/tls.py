"""TLS contexts: one place decides protocol versions, ciphers and verification.

NCSC guidance ("Using TLS to protect data"): TLS 1.2 or 1.3 only, forward-secret key
exchange (ECDHE) and AEAD ciphers (AES-GCM, ChaCha20-Poly1305). TLS 1.3 suites are all
AEAD and forward secret, so only the TLS 1.2 list needs setting.

Three contexts, built once and shared (so sessions and the trust store load once):

* ``server_context``: the listeners' STARTTLS.
* ``verified_client_context``: forced TLS to secure recipients. The certificate must
  chain to the system store (plus ``[tls] ca_file``) and match the MX host name.
* ``opportunistic_client_context``: encrypt if possible, never verify. Used only where
  plain text would otherwise be sent, so any encryption is better than none.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

from securemail.errors import ConfigError
from securemail.files import PRIVATE, write_atomic

NCSC_TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _harden(ctx: ssl.SSLContext, min_version: str) -> ssl.SSLContext:
    ctx.minimum_version = _VERSIONS[min_version]
    ctx.set_ciphers(NCSC_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def server_context(cert: Path, key: Path, min_version: str = "1.2") -> ssl.SSLContext:
    """STARTTLS for the listeners. Raises ``ConfigError`` naming the file at fault."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), min_version)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(f"tls: {exc.filename}: no such file (run 'make run' or "
                          "'securemail tls selfsigned' to create a pair)") from None  # fmt: skip
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls: cannot load {cert} / {key}: {exc}") from None
    return ctx


def verified_client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Forced TLS: chain to a trusted root and match the host name, or fail."""
    ctx = _harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH), "1.2")
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"tls.ca_file: cannot load {ca_file}: {exc}") from None
    return ctx


def opportunistic_client_context() -> ssl.SSLContext:
    """Encrypt without verifying: better than the plain text it replaces."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), "1.2")
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def write_self_signed(cert: Path, key: Path, hostname: str, days: int = 825) -> None:
    """Create a self-signed ECDSA P-256 pair for ``hostname`` (``make run`` on a fresh box)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(key, pem, mode=PRIVATE, dir_mode=0o700)  # 0600 before the first byte
    write_atomic(cert, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
