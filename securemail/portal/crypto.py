"""Encryption at rest: one random AES-256-GCM key per message, wrapped by a master key.

The master key is 32 random bytes in ``[portal] key_file`` (mode 0600, never logged). A
file that group or others can read is refused (``KeyFileError``): a key anyone on the
host can copy protects nothing.

Each message body is sealed with its own data key (AES-256-GCM, a random 96-bit nonce,
the message id as associated data, so a ciphertext moved to another row does not open).
The data key is wrapped with the master key by AES-256-GCM too, not AES-KW (RFC 3394):
GCM takes associated data, so the wrapped key is bound to its message id as well (a
wrapped key swapped between rows fails to unwrap), and one primitive means one code path
to review. The wrapped form is ``nonce (12) || ciphertext+tag (48)``.

Passcodes are hashed with HMAC-SHA-256 under a key derived from the master key, not
argon2: a 6-digit code has only 10^6 values, so any unkeyed hash of it, however slow,
falls to an offline search of a stolen database; keyed by the master key (kept outside
the database) it does not. The cost: rotating the master key voids passcodes in flight
(10 minutes' worth); the recipient asks for a new one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securemail.errors import SecuremailError
from securemail.files import PRIVATE, write_atomic

KEY_BYTES = 32
NONCE_BYTES = 12


class KeyFileError(SecuremailError):
    """The master key file is missing, malformed or readable by others."""


class DecryptError(SecuremailError):
    """A ciphertext or wrapped key did not authenticate: wrong key, or tampered."""


@dataclass(frozen=True, slots=True)
class MasterKey:
    """The master key; ``repr`` never shows it (so a log line cannot leak it)."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise KeyFileError(f"a master key is {KEY_BYTES} bytes, not {len(self.secret)}")

    def __repr__(self) -> str:
        return f"MasterKey(id={self.key_id})"

    @property
    def key_id(self) -> str:
        """A fingerprint naming this key (stored in the database, so the right key file
        can be recognised after a crash mid-rotation); not usable to recover the key."""
        return hashlib.sha256(b"securemail portal key id\0" + self.secret).hexdigest()[:16]

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    def wrap(self, data_key: bytes, message_id: str) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + AESGCM(self.secret).encrypt(nonce, data_key, _aad(message_id))

    def unwrap(self, wrapped: bytes, message_id: str) -> bytes:
        try:
            return AESGCM(self.secret).decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _aad(message_id)
            )
        except (InvalidTag, ValueError):
            raise DecryptError(f"message {message_id}: data key did not unwrap") from None

    def passcode_hash(self, token_hash: bytes, code: str) -> bytes:
        """HMAC of a passcode, bound to its link (the same code on two links differs)."""
        mac_key = hmac.digest(self.secret, b"securemail portal passcode v1", "sha256")
        return hmac.digest(mac_key, token_hash + b"\0" + code.encode(), "sha256")


@dataclass(frozen=True, slots=True)
class Sealed:
    """One message as stored: its wrapped data key, nonce and ciphertext (tag appended)."""

    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes


def seal(master: MasterKey, message_id: str, plaintext: bytes) -> Sealed:
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _aad(message_id))
    return Sealed(master.wrap(data_key, message_id), nonce, ciphertext)


def unseal(master: MasterKey, message_id: str, sealed: Sealed) -> bytes:
    data_key = master.unwrap(sealed.wrapped_key, message_id)
    try:
        return AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, _aad(message_id))
    except (InvalidTag, ValueError):
        raise DecryptError(f"message {message_id}: ciphertext did not authenticate") from None


def _aad(message_id: str) -> bytes:
    return b"securemail portal v1\0" + message_id.encode()


# --- the key file ----------------------------------------------------------------------


def read_key(path: Path) -> MasterKey:
    """The master key in ``path``; refuses a file group or others may read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no portal key file (securemail portal keygen)") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open the portal key file: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{path}: the portal key file is mode {stat.S_IMODE(mode):04o}; "
                "it must be readable by its owner only (chmod 600)"
            )
        data = handle.read(KEY_BYTES + 1)
    if len(data) != KEY_BYTES:
        raise KeyFileError(f"{path}: a portal key file holds exactly {KEY_BYTES} bytes")
    return MasterKey(data)


def write_key(path: Path, key: MasterKey, *, replace: bool = True) -> None:
    """Write ``key`` atomically, mode 0600 from its first byte (``files.write_atomic``)."""
    write_atomic(path, key.secret, mode=PRIVATE, replace=replace, dir_mode=0o700)


def keygen(path: Path) -> MasterKey:
    """A new master key in ``path``; refuses to replace one (``FileExistsError``): the
    messages under an old key would be lost for good (``rotate-key`` replaces a key)."""
    key = MasterKey.generate()
    write_key(path, key, replace=False)
    return key


def sidecar(path: Path, suffix: str) -> Path:
    """``key_file.new`` / ``key_file.old``: the key files of a rotation in progress."""
    return path.with_name(f"{path.name}.{suffix}")
