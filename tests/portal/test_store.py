"""The portal database's writer: calls waiting together commit together (one fsync),
each in its own savepoint, so one failing call rolls back only itself."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from securemail.portal.store import Store, StoreError


def _put(conn: sqlite3.Connection, key: str, value: str) -> int:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
    return int(conn.execute("SELECT count(*) FROM meta").fetchone()[0])


def _fail_after_writing(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES ('half', 'done')")
    raise ValueError("refused half way")


def _get(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


async def test_waiting_calls_share_one_commit_and_a_failure_is_its_own(tmp_path):
    store = Store(tmp_path / "portal.db")
    await store.open()
    try:
        calls = [store.call(_put, f"k{i}", str(i)) for i in range(50)]
        calls.insert(25, store.call(_fail_after_writing))
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 1 and "refused half way" in str(failed[0])
        assert await store.read(_get, "half") is None  # its write rolled back, only it
        assert [await store.read(_get, f"k{i}") for i in (0, 24, 49)] == ["0", "24", "49"]
        # Calls see each other's writes in order: the last saw all 50 rows before it.
        counts = [r for r in results if isinstance(r, int)]
        assert counts == sorted(counts) and len(set(counts)) == 50
    finally:
        await store.close()
    # Committed for good: another connection reads them after the writer closed.
    with sqlite3.connect(tmp_path / "portal.db") as db:
        assert db.execute("SELECT count(*) FROM meta WHERE key LIKE 'k%'").fetchone()[0] == 50


async def test_a_closed_store_refuses_calls(tmp_path):
    store = Store(tmp_path / "portal.db")
    with pytest.raises(StoreError, match="not open"):
        await store.call(_get, "x")
    await store.open()
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.read(_get, "x")
