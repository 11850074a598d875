"""The audit table: append-only, each row's hash covering the one before it.

``hash = SHA-256(prev_hash || canonical row)``, where the canonical row is the JSON array
``[id, at, message_id, rcpt, event, detail]`` (compact, ASCII): a row edited, deleted or
inserted by hand breaks its own hash or the next row's ``prev_hash``, and ``verify``
names the first row that does not check. Triggers refuse UPDATE and DELETE, so only
someone who drops them (with the file in hand) can change history, and then ``verify``
says where. The chain proves tampering after the fact; it does not stop it (nothing in
the same file could).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3

from securemail.portal.records import AuditCheck, AuditEvent

GENESIS = "0" * 64

SCHEMA = (
    "CREATE TABLE audit (id INTEGER PRIMARY KEY, at REAL NOT NULL, message_id TEXT NOT NULL,"
    " rcpt TEXT NOT NULL, event TEXT NOT NULL, detail TEXT NOT NULL,"
    " prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
    "CREATE INDEX audit_message ON audit (message_id)",
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit"
    " BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END",
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit"
    " BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END",
)


def row_hash(prev_hash: str, row: tuple[int, float, str, str, str, str]) -> str:
    canonical = json.dumps(list(row), separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(prev_hash.encode("ascii") + canonical.encode("ascii")).hexdigest()


def append(
    conn: sqlite3.Connection, at: float, message_id: str, rcpt: str, event: str, detail: str = ""
) -> int:
    """Append one row (inside the caller's transaction, so the event and the change it
    records commit together); returns its id."""
    last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    row_id, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    row = (row_id, float(at), message_id, rcpt, str(event), detail)
    conn.execute(
        "INSERT INTO audit (id, at, message_id, rcpt, event, detail, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (*row, prev, row_hash(prev, row)),
    )
    return row_id


def events(conn: sqlite3.Connection, message_id: str) -> list[AuditEvent]:
    rows = conn.execute(
        "SELECT id, at, message_id, rcpt, event, detail FROM audit WHERE message_id = ?"
        " ORDER BY id",
        (message_id,),
    ).fetchall()
    return [AuditEvent(*row) for row in rows]


def verify(conn: sqlite3.Connection) -> AuditCheck:
    """Recompute the chain from the first row; the first row that fails, and why."""
    prev, expected_id, count = GENESIS, 1, 0
    cursor = conn.execute(
        "SELECT id, at, message_id, rcpt, event, detail, prev_hash, hash FROM audit ORDER BY id"
    )
    for row_id, at, message_id, rcpt, event, detail, prev_hash, stored in cursor:
        count += 1
        if row_id != expected_id:
            return AuditCheck(count, row_id, f"row {expected_id} is missing before row {row_id}")
        if prev_hash != prev:
            return AuditCheck(count, row_id, "prev_hash does not match the previous row's hash")
        row = (row_id, float(at), str(message_id), str(rcpt), str(event), str(detail))
        if row_hash(prev, row) != stored:
            return AuditCheck(count, row_id, "hash does not match the row's content")
        prev, expected_id = stored, row_id + 1
    return AuditCheck(count)
