"""DKIM signing (RFC 6376 §5): every outbound message for our domains.

The NHS secure email standard requires outgoing mail to be DKIM-signed. dkimpy does the
parts that are easy to get subtly wrong: relaxed canonicalization, choosing header
instances bottom-up, hashing the signature header with ``b=`` emptied, and folding. Its
RSA, though, is pure-Python ``pow()``: about 7 ms per RSA-2048 signature, so two cores
could not sign the 300+ messages a second the gateway needs. The private-key operation is
therefore done with ``cryptography`` (OpenSSL, about 0.25 ms) on exactly the bytes
dkimpy's ``DKIM.sign`` would sign, and the header is built the way it builds it, so the
result is byte for byte what dkimpy produces with the same key and timestamp (PKCS#1 v1.5
is deterministic, and so is Ed25519); the tests prove it against dkimpy, against RFC
8463's published vectors and against OpenDKIM. We always sign relaxed/relaxed, never with
``l=``, with ``t=``, and From is listed once more than it occurs ("oversigned") so that no
From can be added after signing.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy

from securemail.core.message import HeaderLimitError
from securemail.mech.dkim.common import _FROM, _for_dkimpy, _lower
from securemail.mech.dkim.keys import (
    _SELECTOR,
    DkimError,
    SigningKey,
    _domain,
    _load_private,
    _PrivateKey,
)

SIGNED_HEADERS: tuple[str, ...] = (
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Message-ID",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Auto-Submitted",
)
"""What we sign when present (RFC 6376 §5.4.1's list, plus RFC 8058 and RFC 3834 fields).

From is always listed once more than it occurs, so a From added later breaks the
signature; a header that is absent is not listed (only From is oversigned).
"""

_SIGNED = frozenset(name.lower().encode() for name in SIGNED_HEADERS)
_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_SIG_NAME = b"DKIM-Signature"


@dataclass(frozen=True, slots=True)
class _Signing:
    domain: bytes
    selector: bytes
    algorithm: bytes
    private: _PrivateKey

    def sign(self, digest: bytes) -> bytes:
        """RFC 6376 §3.3.1 (PKCS#1 v1.5 over the SHA-256 digest), RFC 8463 (Ed25519 of it)."""
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return self.private.sign(digest)


class DkimSigner:
    """Signs for the domains it has keys for; built once, shared, pure CPU.

    Picklable, so that ``sign`` can run in a worker process (``securemail.cpu``): the
    loaded keys (OpenSSL objects) cannot be pickled, so a copy is rebuilt from the PEMs.
    """

    def __init__(self, keys: Mapping[str, SigningKey]) -> None:
        self._source = dict(keys)
        self._keys: dict[str, _Signing] = {}
        for domain, key in keys.items():
            where = f"key for {key.domain} (selector {key.selector})"
            name = _domain(domain)
            if name is None or name != _domain(key.domain):
                raise DkimError(f"dkim: {where} is filed under {domain!r}")
            if not _SELECTOR.fullmatch(key.selector):
                raise DkimError(f"dkim: {where}: {key.selector!r} is not a valid selector")
            algorithm, private, _bits = _load_private(key.private_pem, where)
            if key.algorithm != algorithm:
                raise DkimError(f"dkim: {where} is an {algorithm} key, not {key.algorithm}")
            self._keys[name] = _Signing(
                name.encode(), key.selector.encode(), algorithm.encode(), private
            )

    def __reduce__(self) -> tuple[type[DkimSigner], tuple[dict[str, SigningKey]]]:
        return DkimSigner, (self._source,)

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(self._keys)

    def sign(self, message: bytes, domain: str, *, now: int | None = None) -> bytes | None:
        """The ``DKIM-Signature`` header (folded, CRLF-terminated) to prepend to ``message``.

        None if we have no key for ``domain``, or if the header section is over the
        reader's limits. ``message`` is the final message (after every header change),
        CRLF or LF line endings. Nothing else in the message makes this raise: a header
        section that ``read_headers`` finds malformed ends where it says, so the mail
        still goes out signed over the fields and body every reader agrees on.
        """
        name = _domain(domain)
        signing = self._keys.get(name) if name is not None else None
        if signing is None:
            return None
        try:
            headers, body = _for_dkimpy(message)
        except HeaderLimitError:
            return None
        include = [_lower(field_name) for field_name, _value in headers]
        include = [field_name for field_name in include if field_name in _SIGNED]
        include.append(_FROM)
        timestamp = int(time.time()) if now is None else int(now)
        return _signature(signing, headers, body, include, timestamp)


def _signature(
    signing: _Signing,
    headers: Sequence[Sequence[bytes]],
    body: bytes,
    include: Sequence[bytes],
    timestamp: int,
) -> bytes:
    """The header dkimpy's ``DKIM.sign`` builds (same tags, order and folding), signed here."""
    bodyhash = base64.b64encode(hashlib.sha256(_RELAXED.canonicalize_body(body)).digest())
    fields = [
        (b"v", b"1"),
        (b"a", signing.algorithm),
        (b"c", b"relaxed/relaxed"),
        (b"d", signing.domain),
        (b"i", b"@" + signing.domain),
        (b"q", b"dns/txt"),
        (b"s", signing.selector),
        (b"t", str(timestamp).encode()),
        (b"h", b" : ".join(include)),
        (b"bh", bodyhash),
        (b"b", b"0" * 60),  # as dkimpy: puts b= on a line of its own before signing
    ]
    value = dkim.fold(b"; ".join(b"=".join(tag) for tag in fields), namelen=len(_SIG_NAME))
    value = dkim.RE_BTAG.sub(b"\\1", value)
    hasher = hashlib.sha256()
    canonical = _RELAXED.canonicalize_headers(headers)
    dkim.hash_headers(hasher, _RELAXED, canonical, list(include), (_SIG_NAME, b" " + value), None)
    fields[-1] = (b"b", base64.b64encode(signing.sign(hasher.digest())))
    value = b"; ".join(b"=".join(tag) for tag in fields) + b"\r\n"
    return _SIG_NAME + b": " + dkim.fold(value, namelen=len(_SIG_NAME), linesep=b"\r\n")
