"""Encryption at rest and the master key file."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from securemail.portal.crypto import (
    DecryptError,
    KeyFileError,
    MasterKey,
    keygen,
    read_key,
    seal,
    unseal,
)


def test_round_trip_and_fresh_keys_per_message() -> None:
    master = MasterKey.generate()
    a, b = seal(master, "m1", b"body"), seal(master, "m1", b"body")
    assert unseal(master, "m1", a) == b"body"
    assert a.ciphertext != b.ciphertext and a.wrapped_key != b.wrapped_key
    assert b"body" not in a.ciphertext


def test_wrong_key_fails() -> None:
    sealed = seal(MasterKey.generate(), "m1", b"body")
    with pytest.raises(DecryptError):
        unseal(MasterKey.generate(), "m1", sealed)


def test_tampered_ciphertext_fails() -> None:
    master = MasterKey.generate()
    sealed = seal(master, "m1", b"body")
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(DecryptError, match="ciphertext"):
        unseal(master, "m1", replace(sealed, ciphertext=flipped))


def test_other_message_id_fails_aad() -> None:
    """A ciphertext or wrapped key moved to another row does not open there."""
    master = MasterKey.generate()
    sealed = seal(master, "m1", b"body")
    with pytest.raises(DecryptError, match="unwrap"):
        unseal(master, "m2", sealed)
    other = seal(master, "m2", b"other")
    with pytest.raises(DecryptError, match="ciphertext"):
        unseal(master, "m2", replace(sealed, wrapped_key=other.wrapped_key))


def test_key_never_in_repr() -> None:
    key = MasterKey.generate()
    assert key.secret.hex() not in repr(key) and key.key_id in repr(key)


def test_keygen_private_and_never_replaces(tmp_path: Path) -> None:
    path = tmp_path / "k" / "portal.key"
    key = keygen(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_key(path) == key
    with pytest.raises(FileExistsError):
        keygen(path)
    assert read_key(path) == key


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_exposed_key_file_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "portal.key"
    keygen(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_key(path)


def test_missing_or_short_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="keygen"):
        read_key(tmp_path / "none.key")
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 16)
    short.chmod(0o600)
    with pytest.raises(KeyFileError, match="exactly 32"):
        read_key(short)
