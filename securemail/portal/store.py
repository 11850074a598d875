"""The portal's SQLite file: schema, and one writer thread that owns the connection.

Its own database (``[portal] database``), not a table in the spool: the spool holds mail
in plain text for minutes, the portal holds ciphertext for weeks, and the two are backed
up, rotated and erased differently. Settings that matter for "nothing recoverable
remains": WAL (readers and the CLI while the gateway writes), ``synchronous=FULL`` (250
only after a durable commit), ``secure_delete=ON`` (deleted rows' pages are zeroed, so an
expired ciphertext is not left in free pages), and a WAL checkpoint after each expiry,
so the old pages do not linger in the -wal file either.

The event loop never waits on SQLite: every operation is a plain function
``fn(conn, *args)`` run on one writer thread that commits the calls waiting together in
one transaction (``Store``), the way the spool's writer does (``gateway/spool/sqlite.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import sqlite3
import threading
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
    """The database on one thread, with group commit: ``await store.call(fn, *args)``
    runs ``fn(conn, *args)`` there, all or nothing.

    Like the spool's writer: every call waiting when the thread comes round shares ONE
    transaction and one fsync, each call inside its own savepoint, so one call's error
    rolls back that call only and the others still commit. Without it every portal
    message paid for its deposit and its "notified" mark with an fsync each, one after
    the other, and the portal stored mail at 0.45x the plain path (``bench/portal_bench``).
    Calls see each other's writes in order (the audit chain's previous hash included).
    ``read`` calls run outside any transaction, after the batch they came with.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        if self._thread is not None:
            raise StoreError(f"portal database {self.path} is already open")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="securemail-portal-db", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.wrap_future(ready)
        except BaseException:
            self._thread.join()
            self._thread = None
            raise

    async def close(self) -> None:
        if self._thread is None:
            return
        self._requests.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` in a write transaction (shared with the calls waiting
        beside it, in a savepoint of its own), off the event loop."""
        return await self._submit(True, fn, args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` outside any transaction (a checkpoint, a read)."""
        return await self._submit(False, fn, args)

    async def _submit(self, write: bool, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._thread is None:
            raise StoreError(f"portal database {self.path} is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._requests.put((write, fn, args, future))
        return await future

    def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            self._conn = connect(self.path)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        conn, stop = self._conn, False
        try:
            while not stop:
                batch = [self._requests.get()]
                while True:  # everything already waiting joins this batch
                    try:
                        batch.append(self._requests.get_nowait())
                    except queue.Empty:
                        break
                if None in batch:
                    stop = True
                requests = [r for r in batch if r is not None]
                writes = [r for r in requests if r[0]]
                answers = self._write(conn, writes) if writes else []
                answers += [(r, *_attempt(conn, r)) for r in requests if not r[0]]
                for request, exc, result in answers:
                    _answer(request[3], exc, result, self.path)
        finally:
            conn.close()
            self._conn = None

    def _write(self, conn: sqlite3.Connection, writes: list[_Request]) -> list[_Answer]:
        answers: list[_Answer] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for request in writes:
                conn.execute("SAVEPOINT call")
                exc, result = _attempt(conn, request)
                if exc is not None:
                    conn.execute("ROLLBACK TO call")
                conn.execute("RELEASE call")
                answers.append((request, exc, result))
            conn.execute("COMMIT")
        except BaseException as exc:  # the batch did not commit: every call failed
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(request, exc, None) for request in writes]
        return answers


_Request = tuple[bool, Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]
_Answer = tuple[_Request, BaseException | None, Any]


def _attempt(conn: sqlite3.Connection, request: _Request) -> tuple[BaseException | None, Any]:
    _, fn, args, _ = request
    try:
        return None, fn(conn, *args)
    except Exception as exc:  # the caller gets it; the writer goes on
        return exc, None


def _answer(
    future: asyncio.Future[Any], exc: BaseException | None, result: Any, path: Path
) -> None:
    """Settle ``future`` on its own loop (this is the writer thread)."""
    if isinstance(exc, sqlite3.Error):
        wrapped = StoreError(f"portal database {path}: {exc}")
        wrapped.__cause__ = exc
        exc = wrapped

    def settle() -> None:
        if future.done():  # the caller was cancelled
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    future.get_loop().call_soon_threadsafe(settle)
