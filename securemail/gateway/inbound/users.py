"""Submission users: names, argon2id password hashes and the addresses each may send as,
in a small TOML file.

Hashing is deliberately slow, so verification runs in a worker thread, never on the
event loop. The file is written atomically with mode 0600: it holds hashes, not
passwords, but nobody else needs to read them. One table per user::

    [users."alice"]
    hash = "$argon2id$v=19$..."
    addresses = ["alice@example.nhs.uk"]

Files written before users owned addresses (``"alice" = "$argon2id$..."``) still load:
such a user owns the defaults (``core.senders.default_addresses``: ``NAME@`` each of
our domains), as does a table without ``addresses``.
"""

from __future__ import annotations

import asyncio
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from securemail.core.addresses import AddressError, parse_address
from securemail.core.senders import OwnedAddresses, default_addresses
from securemail.errors import InputError
from securemail.files import PRIVATE, write_atomic

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_HASHER = PasswordHasher()
MIN_PASSWORD = 12


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_hash: str
    addresses: tuple[str, ...] = ()  # empty: not stored, so the defaults apply

    def owned(self, domains: Sequence[str]) -> tuple[str, ...]:
        """The addresses this user may send as: the stored ones, else the defaults."""
        return self.addresses or default_addresses(self.name, domains)


def load_users(path: Path) -> dict[str, User]:
    """name → ``User``; a missing file means no users."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read users file: {exc}") from None
    table = data.get("users", {})
    if not isinstance(table, dict):
        raise InputError(f"{path}: expected a [users] table")
    return {name: _user(path, name, entry) for name, entry in table.items()}


def _user(path: Path, name: str, entry: object) -> User:
    if isinstance(entry, str):  # the format before addresses
        return User(name, entry)
    if isinstance(entry, dict):
        hashed, addresses = entry.get("hash"), entry.get("addresses", [])
        if (
            isinstance(hashed, str)
            and isinstance(addresses, list)
            and all(isinstance(a, str) for a in addresses)
        ):
            return User(name, hashed, tuple(addresses))
    raise InputError(
        f'{path}: user {name!r}: expected hash = "argon2 hash" and addresses = ["..."]'
    )


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InputError(f"user name {name!r}: use letters, digits and . _ @ + - (max 64)")
    return name


def check_address(text: str) -> str:
    """An address a user may own, as stored: one valid mailbox, ``local@domain``."""
    try:
        return parse_address(text).addr_spec
    except AddressError as exc:
        raise InputError(f"address {text!r}: {exc}") from None


def _hash(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InputError(f"password too short: use at least {MIN_PASSWORD} characters")
    return _HASHER.hash(password)


def add_user(path: Path, name: str, password: str, addresses: Sequence[str] = ()) -> bool:
    """Add or replace a user; returns True if the user already existed.

    ``addresses`` are stored as given (normalised); none stored means the defaults.
    """
    check_name(name)
    owned = tuple(dict.fromkeys(check_address(a) for a in addresses))
    hashed = _hash(password)
    users = load_users(path)
    existed = name in users
    users[name] = User(name, hashed, owned)
    _save(path, users)
    return existed


def set_password(path: Path, name: str, password: str) -> None:
    """A new password for an existing user; the addresses stay."""
    hashed = _hash(password)
    users = load_users(path)
    users[name] = replace(_existing(path, users, name), password_hash=hashed)
    _save(path, users)


def remove_user(path: Path, name: str) -> User:
    """Remove an existing user; returns what was removed."""
    users = load_users(path)
    removed = _existing(path, users, name)
    del users[name]
    _save(path, users)
    return removed


def find_user(path: Path, name: str) -> User:
    return _existing(path, load_users(path), name)


def _existing(path: Path, users: dict[str, User], name: str) -> User:
    try:
        return users[name]
    except KeyError:
        raise InputError(f"no user {name!r} in {path}") from None


def _save(path: Path, users: dict[str, User]) -> None:
    # json.dumps(..., ensure_ascii=False) is a valid TOML basic string: the same escapes
    # for quote, backslash and controls, non-ASCII kept as UTF-8.
    def q(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    body = "# securemail submission users: argon2id hashes, addresses each may send as\n"
    for name, user in sorted(users.items()):
        body += f"\n[users.{q(name)}]\nhash = {q(user.password_hash)}\n"
        if user.addresses:
            body += f"addresses = [{', '.join(q(a) for a in user.addresses)}]\n"
    try:
        write_atomic(path, body.encode(), mode=PRIVATE)
    except OSError as exc:
        raise InputError(f"{path}: cannot write: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class UsersFile:
    """The users file as read at one moment (``mtime`` -1: no file), adopted whole."""

    users: Mapping[str, User]
    mtime: float


def read_users_file(path: Path) -> UsersFile:
    """Read now, whatever the mtime says. Raises ``InputError`` for a broken file."""
    try:
        mtime = path.stat().st_mtime  # before reading: a later write is seen next time
    except FileNotFoundError:
        return UsersFile({}, -1.0)
    return UsersFile(load_users(path), mtime)


class UserStore:
    """Verifies credentials and says what each user owns, for the submission listener
    (re-reads the file on change, so ``securemail user ...`` needs no restart; a reload
    re-reads it in any case, ``adopt``).

    ``verifications`` counts the argon2 checks run: the work an attacker can make us do,
    which the AUTH limiter exists to bound.
    """

    def __init__(self, path: Path, domains: Sequence[str] = ()) -> None:
        self.path = path
        self.domains = tuple(domains)
        self.verifications = 0
        self._mtime = -1.0
        self._users: dict[str, User] = {}
        # An unknown name is checked against this, so it costs the same time as a real
        # check and names cannot be probed. Made here, not at import: every CLI command
        # would pay for one argon2 hash.
        self._dummy_hash = _HASHER.hash("securemail-dummy-password")

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = -1.0
        if mtime != self._mtime:
            self.adopt(read_users_file(self.path))

    def adopt(self, snapshot: UsersFile) -> None:
        """Use ``snapshot`` from now on. A reload reads the file and adopts it whatever
        its mtime (an edit within the file system's mtime granularity, or a file put
        back with its old mtime, is otherwise missed until the next change)."""
        self._users, self._mtime = dict(snapshot.users), snapshot.mtime

    async def verify(self, name: str, password: str) -> bool:
        self._refresh()
        user = self._users.get(name)
        stored = user.password_hash if user is not None else self._dummy_hash
        self.verifications += 1
        try:
            ok = await asyncio.to_thread(_HASHER.verify, stored, password)
        except (VerificationError, InvalidHashError):
            return False
        return bool(ok) and user is not None

    def owned(self, name: str) -> OwnedAddresses:
        """What ``name`` may send as now (nothing, for a user no longer in the file)."""
        self._refresh()
        user = self._users.get(name)
        return OwnedAddresses.of(name, user.owned(self.domains) if user is not None else ())
