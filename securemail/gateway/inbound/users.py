"""Submission users: names and argon2id password hashes in a small TOML file.

Hashing is deliberately slow, so verification runs in a worker thread, never on the
event loop. The file is written atomically with mode 0600: it holds hashes, not
passwords, but nobody else needs to read them.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from securemail.errors import InputError
from securemail.files import PRIVATE, write_atomic

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_HASHER = PasswordHasher()


def load_users(path: Path) -> dict[str, str]:
    """name → hash; a missing file means no users."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read users file: {exc}") from None
    users = data.get("users", {})
    if not isinstance(users, dict) or not all(isinstance(v, str) for v in users.values()):
        raise InputError(f'{path}: expected a [users] table of name = "argon2 hash"')
    return dict(users)


def add_user(path: Path, name: str, password: str) -> bool:
    """Add or replace a user; returns True if the user already existed."""
    if not _NAME.fullmatch(name):
        raise InputError(f"user name {name!r}: use letters, digits and . _ @ + - (max 64)")
    if len(password) < 12:
        raise InputError("password too short: use at least 12 characters")
    users = load_users(path)
    existed = name in users
    users[name] = _HASHER.hash(password)
    body = "# securemail submission users (argon2id hashes)\n[users]\n" + "".join(
        f'"{n}" = "{h}"\n' for n, h in sorted(users.items())
    )
    try:
        write_atomic(path, body.encode(), mode=PRIVATE)
    except OSError as exc:
        raise InputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return existed


class UserStore:
    """Verifies credentials for the submission listener (re-reads the file on change)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self._users: dict[str, str] = {}

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._users, self._mtime = {}, -1.0
            return
        if mtime != self._mtime:
            self._users, self._mtime = load_users(self.path), mtime

    async def verify(self, name: str, password: str) -> bool:
        self._refresh()
        stored = self._users.get(name)
        if stored is None:
            # Spend the same time as a real check, so user names cannot be probed.
            stored = _DUMMY_HASH
        try:
            ok = await asyncio.to_thread(_HASHER.verify, stored, password)
        except (VerificationError, InvalidHashError):
            return False
        return bool(ok) and name in self._users


_DUMMY_HASH = _HASHER.hash("securemail-dummy-password")
