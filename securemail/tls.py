"""TLS contexts: one place decides protocol versions, ciphers and verification.

NCSC guidance ("Using TLS to protect data"): TLS 1.2 or 1.3 only, forward-secret key
exchange (ECDHE) and AEAD ciphers (AES-GCM, ChaCha20-Poly1305). TLS 1.3 suites are all
AEAD and forward secret, so only the TLS 1.2 list needs setting.

Four contexts, built once and shared (so sessions and the trust store load once):

* ``server_context``: the listeners' STARTTLS.
* ``verified_client_context``: forced TLS to secure recipients. The certificate must
  chain to the system store (plus ``[tls] ca_file``) and match the MX host name.
* ``pinned_client_context``: forced TLS to a destination whose ``[delivery.tls_policy]``
  pins the certificate names (``match=``). The chain is verified in the handshake; the
  names are not, because the MX host name is exactly what must not be trusted there: the
  delivery policy matches the certificate's names against the pinned patterns itself.
* ``opportunistic_client_context``: encrypt if possible, never verify. Used only where
  plain text would otherwise be sent, so any encryption is better than none.

Certificate name matching (RFC 6125) lives here too, once, for the checker's
``tls.certificate_name`` finding and for delivery's pinned policies alike.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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


class FollowingContext:
    """A server context whose certificate is whichever context ``use`` was last given.

    For a listener that cannot change its context once serving (the portal's: asyncio
    fixes it at ``create_server``): every handshake is handed to the current context in
    the SNI callback, which OpenSSL calls for each ClientHello, with or without a server
    name. A reload's new certificate is then served to the next connection, as the SMTP
    listeners do. What OpenSSL fixes before the callback (the cipher list, the options,
    the lowest version) is the front context's own: hardened as ``server_context``'s,
    with the lowest version of the context it was last given."""

    def __init__(self, current: ssl.SSLContext) -> None:
        self.context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), "1.2")
        self.context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        self.context.sni_callback = self._hand_over
        self.use(current)

    def use(self, current: ssl.SSLContext) -> None:
        self._current = current
        self.context.minimum_version = current.minimum_version

    def _hand_over(self, conn: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        conn.context = self._current


@dataclass(frozen=True, slots=True)
class ServedCertificate:
    """What the listeners present, for the start-up log and the gateway's state file."""

    path: Path
    subject: str  # RFC 4514, "CN=mail.example.nhs.uk"
    serial: int
    expires: dt.datetime  # UTC

    def expired(self, now: float) -> bool:
        return self.expires.timestamp() < now


def served_certificate(path: Path) -> ServedCertificate:
    """The leaf (first in the file) of the chain ``server_context`` loads. Raises
    ``ConfigError`` naming the file; ``config_checks`` has already said why, normally."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"tls.cert: {path}: cannot read the certificate: {exc}") from None
    return ServedCertificate(
        path, cert.subject.rfc4514_string(), cert.serial_number, cert.not_valid_after_utc
    )


def verified_client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Forced TLS: chain to a trusted root and match the host name, or fail."""
    return _verifying_client_context(ca_file, check_hostname=True)


def pinned_client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Forced TLS where the caller matches the names: chain to a trusted root, or fail.

    Never use it without checking ``peer_dns_names`` against something the operator
    pinned: on its own it accepts a valid certificate for any name at all.
    """
    return _verifying_client_context(ca_file, check_hostname=False)


def _verifying_client_context(ca_file: Path | None, *, check_hostname: bool) -> ssl.SSLContext:
    ctx = _harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH), "1.2")
    ctx.check_hostname = check_hostname
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


# --- certificate names (RFC 6125) ---------------------------------------------------------


def peer_dns_names(peercert: Mapping[str, object] | None) -> tuple[str, ...]:
    """The DNS subjectAltNames of ``SSLObject.getpeercert()`` (empty unless verified).

    No common-name fallback: RFC 6125 §6.4.4 allows it only without DNS names, and every
    public CA has put the name in the subjectAltName for years.
    """
    sans = (peercert or {}).get("subjectAltName", ())
    if not isinstance(sans, tuple):
        return ()
    return tuple(value for kind, value in sans if kind == "DNS")


def name_matches(host: str, sans: Iterable[str]) -> bool:
    """RFC 6125: ``host`` equals a subjectAltName, or a ``*.`` one covers its first label.

    A wildcard is a whole left-most label over at least two more labels (``*.nhs.net``
    covers ``mx.nhs.net``, not ``nhs.net``, not ``a.mx.nhs.net``; ``*.net`` and
    ``m*.nhs.net`` cover nothing).
    """
    host = _canonical(host)
    first, _, rest = host.partition(".")
    for name in map(_canonical, sans):
        if name == host:
            return True
        if name.startswith("*.") and "." in name[2:] and first and rest == name[2:]:
            return True
    return False


def subdomain_matches(parent: str, sans: Iterable[str]) -> bool:
    """A subjectAltName names some host strictly below ``parent`` (a ``.parent`` pattern).

    ``mx.nhs.net`` and ``a.b.nhs.net`` are below ``nhs.net``; so is every host a valid
    wildcard ``*.nhs.net`` or ``*.mx.nhs.net`` covers. ``nhs.net`` itself is not, nor is
    ``evilnhs.net``; a wildcard that ``name_matches`` would refuse matches nothing here.
    """
    suffix = "." + _canonical(parent)
    for name in map(_canonical, sans):
        if name.startswith("*."):
            base = name[2:]  # the wildcard covers exactly the hosts one label below base
            if "." in base and "*" not in base and (base == suffix[1:] or base.endswith(suffix)):
                return True
        elif "*" not in name and name.endswith(suffix) and len(name) > len(suffix):
            return True
    return False


def _canonical(name: str) -> str:
    return name.rstrip(".").lower()


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
