"""How the spool's writer shares the write lock with other processes (accept workers).

It waits for another's lock in short naps (``sqlite._begin``), not in SQLite's 1, 2,
5 … 100 ms sleeps, and within a bound: another connection holds the lock, as an accept
worker's commit does, and the naps are observed (``time.sleep`` replaced), so nothing
depends on the machine's speed. And a spool with ``linger`` (the gateway's, beside
accept workers) lets a request wait for company, so it takes the lock less often.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from securemail.core.levels import TlsLevel
from securemail.gateway.spool import NewMessage, NewRecipient, RcptStatus, SqliteSpool
from securemail.gateway.spool import sqlite as spool_sqlite


@pytest.fixture
def two_writers(tmp_path):
    path = tmp_path / "spool.db"
    first = sqlite3.connect(path, isolation_level=None, timeout=spool_sqlite.BUSY_TIMEOUT)
    first.execute("PRAGMA journal_mode=WAL")
    first.execute("CREATE TABLE t (x)")
    second = sqlite3.connect(path, isolation_level=None, timeout=spool_sqlite.BUSY_TIMEOUT)
    yield first, second
    first.close()
    second.close()


def test_the_lock_is_taken_after_short_naps_once_the_other_writer_commits(two_writers, monkeypatch):
    holder, waiter = two_writers
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 6:
            holder.execute("COMMIT")  # the other process's commit ends

    monkeypatch.setattr(spool_sqlite.time, "sleep", nap)
    spool_sqlite._begin(waiter)
    assert waiter.in_transaction
    waiter.execute("INSERT INTO t VALUES (2)")
    waiter.execute("COMMIT")
    assert naps == [0.0001, 0.0002, 0.0004, 0.0008, 0.001, 0.001]
    assert waiter.execute("PRAGMA busy_timeout").fetchone() == (5000,)  # as it was


def test_a_lock_never_released_fails_after_the_bound(two_writers, monkeypatch):
    holder, waiter = two_writers
    holder.execute("BEGIN IMMEDIATE")
    now = [0.0]
    monkeypatch.setattr(spool_sqlite.time, "monotonic", lambda: now[0])

    def nap(seconds: float) -> None:
        now[0] += 1.0  # a second passes each nap

    monkeypatch.setattr(spool_sqlite.time, "sleep", nap)
    with pytest.raises(sqlite3.OperationalError) as caught:
        spool_sqlite._begin(waiter)
    assert caught.value.sqlite_errorcode == sqlite3.SQLITE_BUSY
    assert now[0] == spool_sqlite.BUSY_TIMEOUT + 1  # tried until past the bound, no longer
    assert not waiter.in_transaction
    assert waiter.execute("PRAGMA busy_timeout").fetchone() == (5000,)
    holder.execute("ROLLBACK")


def _message(rcpt: str) -> NewMessage:
    recipient = NewRecipient(rcpt, "example.test", RcptStatus.QUEUED, TlsLevel.VERIFIED, "why")
    return NewMessage("jo@example.nhs.uk", (recipient,), b"Subject: hi\r\n\r\nbody\r\n",
                      client="127.0.0.1 helo=pc")  # fmt: skip


@pytest.mark.parametrize(("linger", "commits"), [(0.0, 2), (30.0, 1)])
async def test_a_lingering_writer_commits_requests_apart_in_one_transaction(
    tmp_path, linger, commits
):
    """Two stores 50 ms apart: without linger each has its own commit (the first is
    answered before the second is asked); with it, both go in the first's transaction.
    The second request ends the wait here, as ``close`` does."""
    spool = SqliteSpool(tmp_path / "spool.db", synchronous="NORMAL", linger=linger)
    await spool.open()
    before = spool.stats.commits
    try:
        first = asyncio.ensure_future(spool.store(_message("a@example.test")))
        if linger == 0.0:
            await first  # answered on its own
        else:
            await asyncio.sleep(0.05)  # taken by the writer, which lingers
        second = asyncio.ensure_future(spool.store(_message("b@example.test")))
        close = asyncio.ensure_future(spool.close())  # _STOP after the second: no 30 s wait
        await asyncio.gather(first, second, close)
    finally:
        await spool.close()
    assert spool.stats.commits - before == commits
    assert spool.stats.ops_committed >= 2
