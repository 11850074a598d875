"""``spool.backup.backup`` and ``securemail spool backup``: consistent copies of a live spool."""

import asyncio
import sqlite3
from pathlib import Path

import pytest
from harness.cli import run_cli

from securemail.core.levels import TlsLevel
from securemail.gateway.spool import NewMessage, NewRecipient, RcptStatus, SpoolError, SqliteSpool
from securemail.gateway.spool.backup import backup


def message(n: int) -> NewMessage:
    rcpts = tuple(
        NewRecipient(f"r{i}@nhs.net", "nhs.net", RcptStatus.QUEUED, TlsLevel.VERIFIED, "secure")
        for i in range(3)
    )
    return NewMessage("jo@example.nhs.uk", rcpts, b"Subject: %d\r\n\r\nbody\r\n" % n, client="c")


def shape(path: Path) -> tuple[int, set[int]]:
    """(messages, the distinct recipient counts per message) in a backup file."""
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        per = conn.execute(
            "SELECT count(r.queue_id) FROM messages m"
            " LEFT JOIN recipients r ON r.queue_id = m.id GROUP BY m.id"
        ).fetchall()
    conn.close()
    return messages, {n for (n,) in per}


async def test_backup_while_the_spool_is_being_written(tmp_path):
    spool = SqliteSpool(tmp_path / "spool.db", synchronous="NORMAL")
    await spool.open()
    stored = 0
    stop = asyncio.Event()

    async def writer():
        nonlocal stored
        while not stop.is_set():
            await asyncio.gather(*(spool.store(message(stored + i)) for i in range(20)))
            stored += 20

    task = asyncio.ensure_future(writer())
    try:
        while stored < 100:
            await asyncio.sleep(0.01)
        copies = []
        for i in range(5):
            target = tmp_path / f"copy{i}.db"
            copies.append((target, await asyncio.to_thread(backup, spool.path, target)))
        before = stored
    finally:
        stop.set()
        await task
        await spool.close()
    assert before >= 100
    for target, count in copies:
        messages, per = shape(target)
        assert messages == count >= 100
        assert messages % 20 == 0  # whole batches: one committed snapshot
        assert per == {3}  # no message without its recipients
    assert [c for _, c in copies] == sorted(c for _, c in copies)


async def test_backup_refuses_to_overwrite_and_needs_a_spool(tmp_path):
    spool = SqliteSpool(tmp_path / "spool.db", synchronous="NORMAL")
    await spool.open()
    await spool.store(message(1))
    await spool.close()
    target = tmp_path / "copy.db"
    target.write_bytes(b"an earlier backup")
    with pytest.raises(SpoolError, match="already exists; not overwriting"):
        backup(spool.path, target)
    assert target.read_bytes() == b"an earlier backup"
    with pytest.raises(SpoolError, match="does not exist"):
        backup(tmp_path / "missing.db", tmp_path / "other.db")
    assert not (tmp_path / "missing.db").exists()


async def test_cli_spool_backup(tmp_path):
    config = tmp_path / "securemail.toml"
    config.write_text('[spool]\nurl = "sqlite:///var/spool.db"\n')
    spool = SqliteSpool(tmp_path / "var" / "spool.db", synchronous="NORMAL")
    await spool.open()
    await spool.store(message(1))
    try:  # the gateway's writer holds the spool open meanwhile
        target = tmp_path / "backup.db"
        proc = await asyncio.to_thread(run_cli, "spool", "backup", str(target), "-c", str(config))
        assert proc.returncode == 0, proc.stderr
        assert b"(1 messages)" in b" ".join(proc.stdout.split())  # the terminal may wrap
        assert shape(target) == (1, {3})
        again = await asyncio.to_thread(run_cli, "spool", "backup", str(target), "-c", str(config))
    finally:
        await spool.close()
    assert again.returncode == 2
    assert b"already exists; not overwriting it" in b" ".join(again.stderr.split())
