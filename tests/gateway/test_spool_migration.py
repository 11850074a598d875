"""Upgrading older spools in place: version 1 (``tls`` as nullable text) and version 2
(no ``history`` of operator decisions).

Each fixture is that version's own CREATE statements, copied verbatim, filled with raw
SQL the way that code wrote rows: for version 1, "required", "opportunistic" and NULL
(held sensitive mail).
"""

import asyncio
import sqlite3
import time

import pytest

from securemail.core.levels import TlsLevel
from securemail.gateway.spool import (
    Action,
    Decision,
    NewMessage,
    NewRecipient,
    Outcome,
    RcptStatus,
    SpoolError,
    SqliteSpool,
)
from securemail.gateway.spool.schema import _MIGRATIONS, SCHEMA_VERSION

# securemail/gateway/spool/sqlite.py at schema version 1, verbatim.
V1_SCHEMA = """
PRAGMA foreign_keys = ON;
PRAGMA journal_size_limit = 67108864;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- data last: listing the queue reads the small columns, not the body's pages.
CREATE TABLE IF NOT EXISTS messages (id TEXT PRIMARY KEY, sender TEXT NOT NULL,
    received REAL NOT NULL, size INTEGER NOT NULL, client TEXT NOT NULL,
    auth_user TEXT NOT NULL, sensitivity TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS recipients (
    queue_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    rcpt TEXT NOT NULL, domain TEXT NOT NULL, status TEXT NOT NULL, tls TEXT,
    reason TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL, last_error TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL, claimed_by TEXT, notified INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue_id, rcpt));
CREATE INDEX IF NOT EXISTS recipients_due ON recipients (status, next_attempt);
"""
MESSAGE = "0000000000AAAAAA"
DATA = b"Subject: v1\r\n\r\nwritten by version 1\r\n"
# (rcpt, status, tls as version 1 stored it, attempts, last_error, notified)
V1_ROWS = [
    ("gp@nhs.net", "queued", "required", 0, "", 0),
    ("pal@gmail.test", "deferred", "opportunistic", 2, "451 4.3.0 busy", 0),
    ("held@gmail.test", "held", None, 0, "", 0),  # sensitive, held: no level in v1
    ("odd@nhs.net", "deferred", "bogus", 1, "421 later", 1),  # unknown text: fail safe
]
EXPECTED = {
    "gp@nhs.net": TlsLevel.VERIFIED,
    "pal@gmail.test": TlsLevel.OPPORTUNISTIC,
    "held@gmail.test": TlsLevel.VERIFIED,
    "odd@nhs.net": TlsLevel.VERIFIED,
}


def write_v1_spool(path, rows=V1_ROWS):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V1_SCHEMA)
    db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', '1'), ('done', '7')")
    db.execute(
        "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (MESSAGE, "jo@example.nhs.uk", 1_700_000_000.0, len(DATA), "127.0.0.1:5000 helo=pc1",
         "jo", "OFFICIAL-SENSITIVE in subject", DATA),
    )  # fmt: skip
    db.executemany(
        "INSERT INTO recipients (queue_id, rcpt, domain, status, tls, reason, attempts,"
        " next_attempt, last_error, updated, notified) VALUES (?, ?, ?, ?, ?, 'v1', ?, 1.0,"
        " ?, 1.0, ?)",
        [(MESSAGE, rcpt, rcpt.rpartition("@")[2], status, tls, attempts, error, notified)
         for rcpt, status, tls, attempts, error, notified in rows],
    )  # fmt: skip
    db.close()


def columns(path):
    with sqlite3.connect(path) as db:
        info = db.execute("PRAGMA table_info(recipients)").fetchall()
        version = db.execute("PRAGMA user_version").fetchone()[0]
        meta = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    return {row[1]: (row[2], bool(row[3])) for row in info}, version, meta


async def test_v1_spool_upgraded_in_place(tmp_path):
    path = tmp_path / "spool.db"
    write_v1_spool(path)
    assert columns(path)[0]["tls"] == ("TEXT", False)  # nullable in version 1

    spool = SqliteSpool(path, synchronous="NORMAL")
    await spool.open()
    try:
        [info] = await spool.list_messages()
        assert {r.rcpt: r.tls for r in info.recipients} == EXPECTED
        assert all(type(r.tls) is TlsLevel for r in info.recipients)
        # Everything else about the recipients survived the rebuild of their table.
        kept = {r.rcpt: (r.status, r.attempts, r.last_error, r.reason) for r in info.recipients}
        assert kept["pal@gmail.test"] == (RcptStatus.DEFERRED, 2, "451 4.3.0 busy", "v1")
        assert kept["held@gmail.test"][0] is RcptStatus.HELD
        assert info.sensitivity == "OFFICIAL-SENSITIVE in subject"
        assert await spool.message_data(MESSAGE) == DATA
        assert (await spool.counts())["done"] == 7

        # The queue works on the upgraded file: claim, record, release, notified kept.
        claimed = {d.rcpt: d for d in await spool.claim_due(time.time(), 10)}
        assert {r: d.tls for r, d in claimed.items()} == {
            r: EXPECTED[r] for r in ("gp@nhs.net", "pal@gmail.test", "odd@nhs.net")
        }
        assert claimed["odd@nhs.net"].notified and claimed["pal@gmail.test"].attempts == 2
        await spool.record(
            [Outcome(MESSAGE, r, RcptStatus.DELIVERED, "250 2.0.0 Ok") for r in claimed]
        )
        assert (await spool.release(MESSAGE, None, Decision("alice", "ok", 1.0))).count == 1
        [released] = await spool.claim_due(time.time(), 10)
        # The release rule across the upgrade: held sensitive mail goes out verified.
        assert (released.rcpt, released.tls) == ("held@gmail.test", TlsLevel.VERIFIED)
        await spool.record([Outcome(MESSAGE, released.rcpt, RcptStatus.DELIVERED, "250")])
        assert await spool.get(MESSAGE) is None
        assert (await spool.counts())["done"] == 8
    finally:
        await spool.close()

    cols, version, meta = columns(path)
    assert cols["tls"] == ("TEXT", True)  # NOT NULL now
    # meta too: version 1 code reads only meta, and refuses any version but "1".
    assert (version, meta) == (SCHEMA_VERSION, str(SCHEMA_VERSION))
    assert meta != "1"
    with sqlite3.connect(path) as db:
        index = db.execute("SELECT sql FROM sqlite_master WHERE name = 'recipients_due'")
        assert "(status, next_attempt)" in index.fetchone()[0]
        # The new column refuses what version 1 wrote: a string level cannot come back.
        db.execute(
            "INSERT INTO messages (id, sender, received, size, client, auth_user,"
            " sensitivity, data) VALUES ('X', '', 0, 0, '', '', '', x'')"
        )
        for bad in ("required", None, "none"):
            with pytest.raises(sqlite3.IntegrityError, match=r"NOT NULL|CHECK"):
                db.execute(
                    "INSERT INTO recipients (queue_id, rcpt, domain, status, tls, next_attempt,"
                    " updated) VALUES ('X', 'a@b', 'b', 'queued', ?, 0, 0)",
                    (bad,),
                )


async def test_upgrade_is_one_transaction(tmp_path):
    """A failure mid-upgrade leaves version 1 exactly as it was, to be upgraded later."""
    path = tmp_path / "spool.db"
    write_v1_spool(path)
    with sqlite3.connect(path) as db:  # sabotage: the rebuilt table's name is taken
        db.execute("CREATE TABLE recipients_v2 (x)")
    with pytest.raises(SpoolError, match="recipients_v2 already exists"):
        await SqliteSpool(path).open()
    cols, version, meta = columns(path)
    assert (cols["tls"], version, meta) == (("TEXT", False), 0, "1")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM recipients").fetchone()[0] == len(V1_ROWS)
        db.execute("DROP TABLE recipients_v2")
    spool = SqliteSpool(path, synchronous="NORMAL")
    await spool.open()
    try:
        [info] = await spool.list_messages()
        assert {r.rcpt: r.tls for r in info.recipients} == EXPECTED
    finally:
        await spool.close()


async def test_two_processes_upgrading_at_once_upgrade_once(tmp_path):
    path = tmp_path / "spool.db"
    write_v1_spool(path)
    spools = [SqliteSpool(path, synchronous="NORMAL") for _ in range(2)]
    await asyncio.gather(*(s.open() for s in spools))
    try:
        for spool in spools:
            [info] = await spool.list_messages()
            assert {r.rcpt: r.tls for r in info.recipients} == EXPECTED
    finally:
        await asyncio.gather(*(s.close() for s in spools))


# securemail/gateway/spool/schema.py at schema version 2 (its _CREATE), verbatim.
V2_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE messages (id TEXT PRIMARY KEY, sender TEXT NOT NULL, received REAL NOT NULL,
    size INTEGER NOT NULL, client TEXT NOT NULL, auth_user TEXT NOT NULL,
    sensitivity TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE recipients (
    queue_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    rcpt TEXT NOT NULL, domain TEXT NOT NULL, status TEXT NOT NULL,
    tls TEXT NOT NULL CHECK (tls IN ('opportunistic', 'verified', 'mta-sts', 'dane')),
    reason TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL, last_error TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL, claimed_by TEXT, notified INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue_id, rcpt));
CREATE INDEX recipients_due ON recipients (status, next_attempt);
INSERT INTO meta VALUES ('schema_version', '2'), ('done', '3');
PRAGMA user_version = 2;
"""
# (rcpt, status, tls) as version 2 stored them
V2_ROWS = [
    ("gp@nhs.net", "deferred", "verified"),
    ("held@gmail.test", "held", "verified"),
    ("pal@gmail.test", "queued", "opportunistic"),
]


def write_v2_spool(path):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V2_SCHEMA)
    db.execute(
        "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (MESSAGE, "jo@example.nhs.uk", 1_700_000_000.0, len(DATA), "127.0.0.1:5000 helo=pc1",
         "jo", "OFFICIAL-SENSITIVE in subject", DATA),
    )  # fmt: skip
    db.executemany(
        "INSERT INTO recipients (queue_id, rcpt, domain, status, tls, reason, attempts,"
        " next_attempt, last_error, updated) VALUES (?, ?, ?, ?, ?, 'v2', 1, 1.0, '451', 1.0)",
        [(MESSAGE, rcpt, rcpt.rpartition("@")[2], status, tls) for rcpt, status, tls in V2_ROWS],
    )  # fmt: skip
    db.close()


def tables(path):
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master")}


async def test_v2_spool_gains_a_history_in_place(tmp_path):
    path = tmp_path / "spool.db"
    write_v2_spool(path)
    assert "history" not in tables(path)
    spool = SqliteSpool(path, synchronous="NORMAL", audit_days=400)  # prunes an empty table
    await spool.open()
    try:
        [info] = await spool.list_messages()
        assert [(r.rcpt, r.status.value, r.tls.label) for r in info.recipients] == V2_ROWS
        assert info.history == () and await spool.message_data(MESSAGE) == DATA
        assert (await spool.counts())["done"] == 3
        # Decisions work on the upgraded file, and their history outlives the message.
        released = await spool.release(MESSAGE, None, Decision("alice", "checked", time.time()))
        assert released.changed == ("held@gmail.test",)
        assert (await spool.delete(MESSAGE, None, Decision("bob", "gone", time.time()))).removed
        assert [h.action for h in await spool.history(MESSAGE)] == [Action.RELEASE, Action.DELETE]
    finally:
        await spool.close()
    assert {"history", "history_queue_id", "history_unlogged"} <= tables(path)
    cols, version, meta = columns(path)
    assert (version, meta) == (SCHEMA_VERSION, str(SCHEMA_VERSION)) == (4, "4")
    assert cols["tls"] == ("TEXT", True)  # recipients untouched by this step


async def test_v2_upgrade_is_one_transaction(tmp_path):
    """A failure mid-upgrade leaves version 2 exactly as it was, to be upgraded later."""
    path = tmp_path / "spool.db"
    write_v2_spool(path)
    with sqlite3.connect(path) as db:  # sabotage: the new index's name is taken
        db.execute("CREATE TABLE history_unlogged (x)")
    with pytest.raises(SpoolError, match="already a table named history_unlogged"):
        await SqliteSpool(path).open()
    assert "history" not in tables(path)  # created before the failure, rolled back
    assert columns(path)[1:] == (2, "2")
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE history_unlogged")
    spool = SqliteSpool(path, synchronous="NORMAL")
    await spool.open()
    try:
        [info] = await spool.list_messages()
        assert len(info.recipients) == len(V2_ROWS)
    finally:
        await spool.close()
    assert columns(path)[1:] == (4, "4")


async def test_v1_spool_goes_straight_to_the_current_version(tmp_path):
    path = tmp_path / "spool.db"
    write_v1_spool(path)
    spool = SqliteSpool(path, synchronous="NORMAL")
    await spool.open()
    try:
        change = await spool.hold(MESSAGE, ["gp@nhs.net"], Decision("alice", "why", time.time()))
        assert change.changed == ("gp@nhs.net",)
        assert [h.rcpt for h in await spool.history(MESSAGE)] == ["gp@nhs.net"]
    finally:
        await spool.close()
    assert "history" in tables(path) and columns(path)[1:] == (4, "4")


def write_v3_spool(path):
    """Version 3 is version 2 plus the history table: built by its own upgrade step."""
    write_v2_spool(path)
    with sqlite3.connect(path) as db:
        for statement in _MIGRATIONS[2]:
            db.execute(statement)
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        db.execute("PRAGMA user_version = 3")


async def test_v3_spool_gains_transport_flags_and_the_mta_sts_cache(tmp_path):
    path = tmp_path / "spool.db"
    write_v3_spool(path)
    assert columns(path)[1:] == (3, "3") and "mta_sts" not in tables(path)
    spool = SqliteSpool(path, synchronous="NORMAL")
    await spool.open()
    try:
        [old] = await spool.list_messages()
        assert (old.requiretls, old.tls_required_no) == (False, False)  # the default
        new = NewMessage(
            sender="jo@example.nhs.uk",
            recipients=(
                NewRecipient("gp@nhs.net", "nhs.net", RcptStatus.QUEUED, TlsLevel.VERIFIED, "x"),
            ),
            data=DATA,
            requiretls=True,
            tls_required_no=True,
        )
        queue_id = await spool.store(new)
        info = await spool.get(queue_id)
        assert info is not None and (info.requiretls, info.tls_required_no) == (True, True)
        claimed = {d.queue_id: d for d in await spool.claim_due(time.time() + 1, 10)}
        assert claimed[queue_id].requiretls and claimed[queue_id].tls_required_no
        assert not claimed[MESSAGE].requiretls
    finally:
        await spool.close()
    assert "mta_sts" in tables(path) and columns(path)[1:] == (4, "4")
