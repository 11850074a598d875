"""DKIM keys: our private signing keys on disk, and the public key records in DNS.

Both ends of a key live here. Our side: generating a key pair with the TXT record that
publishes it, writing the private key safely (``KEY_DIR/DOMAIN/SELECTOR.pem``, 0600,
atomic) and loading it for the signer, refusing anything the signer could not use. The
other side: ``parse_key_record``, the one reader of ``<selector>._domainkey`` records,
shared by the verifier and the checker's ``dkim.key`` rule, so a key the checker calls
usable is one the gateway would use.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import idna
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.util import InvalidTagValueList, parse_tag_value

from securemail.errors import SecuremailError
from securemail.files import PRIVATE, write_atomic
from securemail.mech.dkim.common import _WSP, _clean, _one_line

RSA_MIN_BITS = 1024  # RFC 8301 §3.2: smaller keys must not be used or accepted

_SELECTOR = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class DkimError(SecuremailError):
    """A DKIM key cannot be used (unreadable, invalid, too weak); one line naming it."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One of our domains' private keys, published at ``SELECTOR._domainkey.DOMAIN``."""

    domain: str
    selector: str
    algorithm: str  # "rsa-sha256" | "ed25519-sha256"
    private_pem: bytes = field(repr=False)


# --- our private keys ------------------------------------------------------------------


def generate_key(algorithm: str = "rsa", bits: int = 2048) -> tuple[bytes, str]:
    """A new private key (PKCS#8 PEM) and the TXT record value that publishes it.

    ``algorithm`` is ``rsa`` (``bits`` from 1024 to 4096; 2048 is the norm) or ``ed25519``.
    """
    kind = algorithm.lower().removesuffix("-sha256")
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if kind == "rsa":
        if not RSA_MIN_BITS <= bits <= 4096:
            raise DkimError(f"dkim: RSA keys must have {RSA_MIN_BITS} to 4096 bits, not {bits}")
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise DkimError(f"dkim: unknown key algorithm {algorithm!r} (use rsa or ed25519)")
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, _record(private)


def dns_record_for(private_pem: bytes) -> str:
    """The TXT record value (``v=DKIM1; k=...; p=...``) for a private key."""
    _algorithm, private, _bits = _load_private(private_pem, "private key")
    return _record(private)


def write_key(
    key_dir: Path, domain: str, selector: str, private_pem: bytes, *, overwrite: bool = False
) -> Path:
    """Store ``key_dir/DOMAIN/SELECTOR.pem`` (mode 0600, directories 0700), atomically.

    The key is written to a temporary file, fsynced and then renamed into place, so a
    crash leaves the old key or the new one, never half of one. An existing key is kept
    unless ``overwrite`` is true.
    """
    name = _domain(domain)
    if name is None:
        raise DkimError(f"dkim: {domain!r} is not a domain name")
    if not _SELECTOR.fullmatch(selector):
        raise DkimError(f"dkim: {selector!r} is not a valid selector")
    _load_private(private_pem, "key to write")
    directory = key_dir / name
    target = directory / f"{selector}.pem"
    try:
        for path in (key_dir, directory):
            if not path.is_dir():
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                path.chmod(0o700)
        if target.exists() and not overwrite:
            raise DkimError(f"dkim: {target} already exists (not overwritten)")
        write_atomic(target, private_pem, mode=PRIVATE, replace=overwrite, dir_mode=0o700)
    except FileExistsError:
        raise DkimError(f"dkim: {target} already exists (not overwritten)") from None
    except OSError as exc:
        raise DkimError(f"dkim: cannot write {target}: {exc.strerror or exc}") from None
    return target


def load_keys(key_dir: Path, selector: str, domains: Sequence[str]) -> dict[str, SigningKey]:
    """Our domains' keys: ``key_dir/DOMAIN/SELECTOR.pem`` for each one that has a file.

    A domain without a key file is left out (its mail goes unsigned); a file that cannot
    be read or is not a usable key raises ``DkimError`` naming it.
    """
    if not _SELECTOR.fullmatch(selector):
        raise DkimError(f"dkim: {selector!r} is not a valid selector")
    keys: dict[str, SigningKey] = {}
    for domain in domains:
        name = _domain(domain)
        if name is None:
            raise DkimError(f"dkim: {domain!r} is not a domain name")
        path = key_dir / name / f"{selector}.pem"
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise DkimError(f"dkim: cannot read {path}: {exc.strerror or exc}") from None
        algorithm, _private, _bits = _load_private(pem, str(path))
        keys[name] = SigningKey(name, selector, algorithm, pem)
    return keys


_PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _load_private(pem: bytes, where: str) -> tuple[str, _PrivateKey, int]:
    """(algorithm, key, bits), or ``DkimError`` in one line naming ``where``."""
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        detail = _one_line(exc).split(". ")[0][:120]
        raise DkimError(f"dkim: {where}: not a usable PEM private key ({detail})") from None
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < RSA_MIN_BITS:
            raise DkimError(
                f"dkim: {where}: RSA key has {private.key_size} bits; "
                f"DKIM needs at least {RSA_MIN_BITS} (RFC 8301)"
            )
        return "rsa-sha256", private, private.key_size
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return "ed25519-sha256", private, 256
    raise DkimError(
        f"dkim: {where}: {type(private).__name__} cannot sign DKIM (use RSA or Ed25519)"
    )


def _record(private: _PrivateKey) -> str:
    if isinstance(private, rsa.RSAPrivateKey):
        der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


# --- public key records ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A usable public key from a ``<selector>._domainkey`` record."""

    kind: bytes  # b"rsa" | b"ed25519"
    key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    bits: int
    testing: bool  # t=y
    strict: bool  # t=s


class KeyProblem(Exception):
    """Why a key record cannot be used (``reason``: one line, for a verdict or a finding)."""

    def __init__(self, reason: str, bits: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.bits = bits


class KeyRevoked(KeyProblem):
    """The record's ``p=`` is empty: the key was withdrawn (RFC 6376 §3.6.1).

    Kept apart because the checker reports a revoked key (what rotation leaves behind)
    differently from a broken one, and still shows its ``k=`` and ``t=y``.
    """

    def __init__(self, kind: bytes, testing: bool) -> None:
        super().__init__("key revoked (empty p=)")
        self.kind = kind
        self.testing = testing


def parse_key_record(record: str) -> DkimKey:
    """A key record (RFC 6376 §3.6.1) as a usable public key, or ``KeyProblem``.

    The one reader of key records: the verifier and the checker's ``dkim.key`` rule both
    use it, so a key the checker calls usable is one the gateway would use.
    """
    try:
        tags = parse_tag_value(record.encode("utf-8", errors="replace"))
    except InvalidTagValueList as exc:
        raise KeyProblem(f"key record is malformed: {_clean(exc)}") from None
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        raise KeyProblem("key record is not v=DKIM1")
    kind = tags.get(b"k", b"rsa").lower()
    if b"h" in tags and b"sha256" not in _list(tags[b"h"]):
        raise KeyProblem("key record's h= does not allow sha256")
    if not {b"*", b"email"} & set(_list(tags.get(b"s", b"*"))):
        raise KeyProblem("key record's s= excludes email")
    flags = set(_list(tags.get(b"t", b"")))
    if b"p" not in tags:
        raise KeyProblem("key record has no p=")
    data = _WSP.sub(b"", tags[b"p"])
    if not data:
        raise KeyRevoked(kind, testing=b"y" in flags)
    try:
        der = base64.b64decode(data, validate=True)
    except binascii.Error:
        raise KeyProblem("key record's p= is not base64") from None
    public: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    if kind == b"rsa":
        try:
            loaded = serialization.load_der_public_key(der)
        except (ValueError, UnsupportedAlgorithm):
            raise KeyProblem("key record's p= is not an RSA public key") from None
        if not isinstance(loaded, rsa.RSAPublicKey):
            raise KeyProblem("key record's p= is not an RSA public key")
        public, bits = loaded, loaded.key_size
    elif kind == b"ed25519":
        try:
            public = ed25519.Ed25519PublicKey.from_public_bytes(der)
        except ValueError:
            raise KeyProblem("key record's p= is not an Ed25519 public key") from None
        bits = 256
    else:
        raise KeyProblem(f"key record has unknown k={kind.decode(errors='replace')}")
    return DkimKey(kind, public, bits, testing=b"y" in flags, strict=b"s" in flags)


# --- small helpers ---------------------------------------------------------------------


def _domain(domain: str) -> str | None:
    """``domain`` as a lower-case A-label name without the final dot, or None if invalid."""
    name = domain.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError:
            return None
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(x) for x in labels):
        return None
    return name


def _list(value: bytes) -> list[bytes]:
    return [item.strip().lower() for item in value.split(b":")]
