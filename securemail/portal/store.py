"""The portal's SQLite file: schema, and one writer thread that owns the connection.

Its own database (``[portal] database``), not a table in the spool: the spool holds mail
in plain text for minutes, the portal holds ciphertext for weeks, and the two are backed
up, rotated and erased differently. Settings that matter for "nothing recoverable
remains": WAL (readers and the CLI while the gateway writes), ``synchronous=FULL`` (250
only after a durable commit), ``secure_delete=ON`` (deleted rows' pages are zeroed, so an
expired ciphertext is not left in free pages), and a WAL checkpoint after each expiry,
so the old pages do not linger in the -wal file either.

The event loop never waits on SQLite: every operation is a plain function
``fn(conn, *args)`` run on one thread, each in its own ``BEGIN IMMEDIATE … COMMIT``, the
way the spool's writer does it (``gateway/spool/sqlite.py``). The portal's volume (one
deposit per portal message, a few page views) does not need the spool's group commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from securemail.errors import SecuremailError
from securemail.portal import audit

T = TypeVar("T")
SCHEMA_VERSION = 1
BUSY_TIMEOUT = 5.0

_CREATE = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # content last: listing reads the small columns, not the ciphertext's pages.
    # revoked/locked: when (NULL: not); expired: 1 once the key and ciphertext are gone.
    "CREATE TABLE messages (id TEXT PRIMARY KEY, queue_id TEXT NOT NULL,"
    " created REAL NOT NULL, expires REAL NOT NULL, sender TEXT NOT NULL,"
    " sender_name TEXT NOT NULL, organisation TEXT NOT NULL, revoked REAL, locked REAL,"
    " expired INTEGER NOT NULL DEFAULT 0, wrapped_key BLOB, nonce BLOB, ciphertext BLOB)",
    "CREATE INDEX messages_expires ON messages (expires) WHERE expired = 0",
    # One row per recipient: the link. token_hash = SHA-256(token); passcode_hash = HMAC
    # (crypto.MasterKey.passcode_hash); tries: wrong passcodes on this link, all codes.
    "CREATE TABLE links (message_id TEXT NOT NULL REFERENCES messages(id),"
    " rcpt TEXT NOT NULL, token_hash BLOB NOT NULL UNIQUE, conversation_id TEXT NOT NULL,"
    " notified INTEGER NOT NULL DEFAULT 0, passcode_hash BLOB, passcode_expires REAL,"
    " used INTEGER NOT NULL DEFAULT 0, tries INTEGER NOT NULL DEFAULT 0,"
    " sends_since REAL NOT NULL DEFAULT 0, sends INTEGER NOT NULL DEFAULT 0,"
    " last_send REAL NOT NULL DEFAULT 0, PRIMARY KEY (message_id, rcpt))",
    "CREATE INDEX links_conversation ON links (conversation_id)",
    "CREATE TABLE sessions (id_hash BLOB PRIMARY KEY, message_id TEXT NOT NULL,"
    " rcpt TEXT NOT NULL, expires REAL NOT NULL)",
    *audit.SCHEMA,
)


class StoreError(SecuremailError):
    """The portal database cannot be opened or used."""


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating, mode 0600) and prepare the database; for the writer thread, or
    for a CLI command that reads while the gateway runs."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # -wal/-shm inherit the mode
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"portal database {path}: cannot use WAL (journal_mode={mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA foreign_keys=ON")
        _prepare(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"portal database {path}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        [version] = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"portal database {path} has schema version {version};"
                f" this securemail reads version {SCHEMA_VERSION}"
            )
        if version == 0:
            for statement in _CREATE:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def transaction(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(conn, *args)`` in one write transaction: all of it commits, or none."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
        return result
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the WAL into the database and empty it, so deleted content (already zeroed
    in the database by ``secure_delete``) does not survive in the -wal file."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class Store:
    """The database on one thread; ``await store.call(fn, *args)`` runs ``fn`` there in a
    transaction of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        if self._pool is not None:
            raise StoreError(f"portal database {self.path} is already open")
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "securemail-portal-db")
        try:
            self._conn = await self._run(connect, self.path)
        except BaseException:
            self._pool.shutdown(wait=False)
            self._pool = None
            raise

    async def close(self) -> None:
        if self._pool is None:
            return
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._pool.shutdown(wait=True)
        self._pool = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` in its own write transaction, off the event loop."""
        return await self._run(self._in_transaction, fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` outside any transaction (a checkpoint, a read)."""
        return await self._run(self._direct, fn, *args)

    def _in_transaction(self, fn: Callable[..., T], *args: Any) -> T:
        return transaction(self._connection(), fn, *args)

    def _direct(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(self._connection(), *args)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"portal database {self.path} is not open")
        return self._conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            raise StoreError(f"portal database {self.path} is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"portal database {self.path}: {exc}") from exc
