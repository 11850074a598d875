"""The spool's SQLite schema, and the upgrade of older spools in place.

The schema version is ``PRAGMA user_version``. ``prepare`` creates a new spool at the
current version, or upgrades an older one in one transaction, so a crash (or a refusal)
mid-upgrade leaves the old spool exactly as it was, to be upgraded on the next open.

Version 1 kept ``tls`` as nullable text: "required", "opportunistic", and NULL for held
sensitive mail. Version 2 keeps a ``TlsLevel`` label, NOT NULL, with a CHECK, and the
upgrade maps NULL and anything unknown to ``verified`` under the release rule (see
``store``): an upgrade can never weaken what a recipient's delivery must achieve.

Version 3 adds ``history``, the operator decisions (hold, release, delete, reveal). It
has no foreign key to ``messages`` on purpose: deleting or delivering a message must not
delete the record of who released or deleted it. ``history.py`` keeps it bounded.

Version 4 adds what transport security needs: per message, the sender's REQUIRETLS flag
(RFC 8689: verified TLS on every hop) and whether it carried ``TLS-Required: No``; and
``mta_sts``, the MTA-STS policy cache (RFC 8461 §5.1), kept here so it survives restarts
and every process using the spool shares one fetch per policy.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from securemail.core.levels import TlsLevel
from securemail.gateway.spool import store as s

SCHEMA_VERSION = 4
_LEVELS = ", ".join(f"'{level.label}'" for level in TlsLevel if level > TlsLevel.NONE)
FINAL_SQL = ", ".join(f"'{status.value}'" for status in sorted(s.FINAL))
_RECIPIENTS = f"""
CREATE TABLE {{name}} (
    queue_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    rcpt TEXT NOT NULL, domain TEXT NOT NULL, status TEXT NOT NULL,
    tls TEXT NOT NULL CHECK (tls IN ({_LEVELS})),
    reason TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL, last_error TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL, claimed_by TEXT, notified INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue_id, rcpt))"""
_DUE_INDEX = "CREATE INDEX recipients_due ON recipients (status, next_attempt)"
# rcpt '' means the whole message. logged: the gateway has written its log line.
_HISTORY = (
    "CREATE TABLE history (id INTEGER PRIMARY KEY, queue_id TEXT NOT NULL,"
    " rcpt TEXT NOT NULL DEFAULT '', at REAL NOT NULL, action TEXT NOT NULL,"
    " operator TEXT NOT NULL, reason TEXT NOT NULL, logged INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX history_queue_id ON history (queue_id)",
    "CREATE INDEX history_unlogged ON history (id) WHERE logged = 0",
)
# domain: the policy domain; policy_id: the TXT record's id the body was fetched for;
# policy: the body as fetched (parsed by mech.mta_sts.parse when read); expires: fetched +
# max_age, after which it is neither used nor refreshed-around (RFC 8461 §5.1).
_MTA_STS = (
    "CREATE TABLE mta_sts (domain TEXT PRIMARY KEY, policy_id TEXT NOT NULL,"
    " policy TEXT NOT NULL, fetched REAL NOT NULL, expires REAL NOT NULL)",
)
_TRANSPORT_FLAGS = (
    "ALTER TABLE messages ADD COLUMN requiretls INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE messages ADD COLUMN tls_required_no INTEGER NOT NULL DEFAULT 0",
)
_CREATE = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # data last: listing the queue reads the small columns, not the body's pages.
    "CREATE TABLE messages (id TEXT PRIMARY KEY, sender TEXT NOT NULL,"
    " received REAL NOT NULL, size INTEGER NOT NULL, client TEXT NOT NULL,"
    " auth_user TEXT NOT NULL, sensitivity TEXT NOT NULL, data BLOB NOT NULL)",
    *_TRANSPORT_FLAGS,  # the same columns, in the same order, as an upgraded spool's
    _RECIPIENTS.format(name="recipients"),
    _DUE_INDEX,
    *_HISTORY,
    *_MTA_STS,
    f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'), ('done', '0')",  # noqa: S608
)
# Version 1 -> 2: SQLite cannot change a column's type or constraints, so the recipients
# table is rebuilt (its "12-step" ALTER); v1_tls is _v1_tls, registered on the connection.
_MIGRATIONS = {
    1: (
        _RECIPIENTS.format(name="recipients_v2"),
        "INSERT INTO recipients_v2 SELECT queue_id, rcpt, domain, status, v1_tls(tls), reason,"
        " attempts, next_attempt, last_error, updated, claimed_by, notified FROM recipients",
        "DROP TABLE recipients",
        "ALTER TABLE recipients_v2 RENAME TO recipients",
        _DUE_INDEX,
    ),
    2: _HISTORY,  # Version 2 -> 3: a new table, nothing rewritten
    3: (*_TRANSPORT_FLAGS, *_MTA_STS),  # Version 3 -> 4: columns with defaults, a table
}


def prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema, or upgrade an older one, in one transaction.

    The version is read under the write lock, so two processes opening one old spool
    at once upgrade it once: the second finds the work done.
    """
    conn.create_function("v1_tls", 1, _v1_tls, deterministic=True)
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _version(conn)
        if version > SCHEMA_VERSION:
            raise s.SpoolError(
                f"spool {path} has schema version {version};"
                f" this securemail reads version {SCHEMA_VERSION}"
            )
        if version == 0:  # a new spool: created at the current version
            statements = _CREATE
        else:
            statements = tuple(
                sql for step in range(version, SCHEMA_VERSION) for sql in _MIGRATIONS[step]
            )
        for statement in statements:
            conn.execute(statement)
        # A securemail that reads version 1 looks only at meta: it must refuse this file.
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
        )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _version(conn: sqlite3.Connection) -> int:
    """The schema version: ``user_version`` since version 2; version 1 wrote it only in
    ``meta`` (0 for an empty file). A disagreement means something else wrote the file:
    the higher number wins, so a newer spool is refused rather than misread."""
    [user] = conn.execute("PRAGMA user_version").fetchone()
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
        return user
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        legacy = int(row[0]) if row else 1  # v1 created meta before it wrote its version
    except ValueError:
        raise s.SpoolError(f"unreadable spool schema version {row[0]!r}") from None
    return max(user, legacy)


def _v1_tls(text: str | None) -> str:
    """A version-1 ``tls`` value as a level label, under the release rule: "required" is
    VERIFIED, "opportunistic" stays; NULL (held sensitive mail) and anything unknown
    become VERIFIED, so the upgrade can never weaken what a recipient gets."""
    try:
        level = TlsLevel.from_label(text) if text else TlsLevel.VERIFIED
    except KeyError:
        level = TlsLevel.VERIFIED
    return (level if level > TlsLevel.NONE else TlsLevel.VERIFIED).label


def remove_if_final(conn: sqlite3.Connection, queue_ids: set[str]) -> tuple[int, int]:
    """Delete each message whose recipients are all final, and count it as done; returns
    (how many went, how many of them were erased). Here, beside ``FINAL_SQL``, because
    delivery results (``sqlite``) and operator decisions (``history``) both end messages
    this way.

    A sensitive message (the scanner found something: it may be the plain copy of a
    message the portal holds encrypted) is deleted with ``secure_delete`` on, so its
    pages are zeroed rather than left in free space; the caller checkpoints the WAL
    after such a batch. Other mail is deleted without: zeroing every relayed message's
    pages, and truncating the WAL after every delivery, cost the relay a fifth of its
    throughput for no one's benefit.
    """
    done = erased = 0
    for queue_id in sorted(queue_ids):
        row = conn.execute(
            "SELECT sensitivity != '' FROM messages WHERE id = ? AND NOT EXISTS (SELECT 1"  # noqa: S608
            f" FROM recipients WHERE queue_id = ? AND status NOT IN ({FINAL_SQL}))",
            (queue_id, queue_id),
        ).fetchone()
        if row is None:
            continue
        sensitive = bool(row[0])
        if sensitive:
            conn.execute("PRAGMA secure_delete = ON")
        try:
            conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,))
        finally:
            if sensitive:
                conn.execute("PRAGMA secure_delete = OFF")
        done += 1
        erased += sensitive
    if done:
        conn.execute("UPDATE meta SET value = CAST(value AS INT) + ? WHERE key='done'", (done,))
    return done, erased
