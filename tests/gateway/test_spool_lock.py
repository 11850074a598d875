"""The spool's writer waits for another process's write lock in short naps
(``sqlite._begin``), not in SQLite's 1, 2, 5 … 100 ms sleeps, and within a bound.

Another connection holds the lock, as an accept worker's commit does; the naps are
observed (``time.sleep`` replaced), so nothing here depends on the machine's speed.
"""

from __future__ import annotations

import sqlite3

import pytest

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
