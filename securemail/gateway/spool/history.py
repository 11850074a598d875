"""Operator decisions in the SQLite spool: the state change and its history row, together.

Each function runs on the spool's writer thread inside one transaction (``sqlite.py``),
so a hold, release, delete or reveal and the ``history`` row that answers for it are
committed together or not at all: there is no window in which the queue changed and
nobody is recorded as having changed it.

The history table is bounded by age (``prune``, when the spool opens) rather than by the
messages it describes: the point of it is to outlive them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from securemail.gateway.spool import store as s
from securemail.gateway.spool.schema import remove_if_final

_COLUMNS = "queue_id, rcpt, at, action, operator, reason"


def _from(action: s.Action) -> str:
    return ", ".join(f"'{status.value}'" for status in sorted(s.MOVES_FROM[action]))


_SET_STATUS = {
    # A release makes the recipient due at once; a hold leaves its retry time alone
    # (a held recipient is never claimed, and a release resets it).
    s.Action.HOLD: "UPDATE recipients SET status = 'held', updated = ?1"  # noqa: S608
    f" WHERE queue_id = ?2 AND rcpt = ?3 AND status IN ({_from(s.Action.HOLD)})",
    s.Action.RELEASE: "UPDATE recipients SET status = 'queued', next_attempt = ?1,"  # noqa: S608
    f" updated = ?1 WHERE queue_id = ?2 AND rcpt = ?3 AND status IN ({_from(s.Action.RELEASE)})",
}


def change(
    conn: sqlite3.Connection,
    action: s.Action,
    queue_id: str,
    rcpts: Sequence[str] | None,
    decision: s.Decision,
    now: float,
) -> s.Change:
    """Apply ``action`` to ``rcpts`` of ``queue_id`` (None: all of them) and record it.

    The recipients' own times (``updated``, and ``next_attempt`` on release) are the
    spool's ``now``, as for every other change of state; the history keeps the decision's.

    Which states an action moves is ``store.MOVES_FROM``, which the SQL above is built
    from. With ``rcpts`` None the history gets one row for the whole message (``rcpt``
    ""), else one per recipient changed; a decision that changed nothing is not a row.
    """
    states = {
        rcpt: s.RcptStatus(status)
        for rcpt, status in conn.execute(
            "SELECT rcpt, status FROM recipients WHERE queue_id = ? ORDER BY rowid", (queue_id,)
        )
    }
    found = bool(states) or _exists(conn, queue_id)
    if not found:
        return s.Change(queue_id, action, found=False)
    aimed = list(states) if rcpts is None else list(dict.fromkeys(rcpts))
    unknown = tuple(rcpt for rcpt in aimed if rcpt not in states)
    if unknown:
        return s.Change(queue_id, action, found=True, unknown=unknown)
    moves = s.MOVES_FROM[action]
    changed = tuple(rcpt for rcpt in aimed if states[rcpt] in moves)
    unmoved = tuple((rcpt, states[rcpt]) for rcpt in aimed if states[rcpt] not in moves)
    removed = False
    if action is s.Action.DELETE:
        if rcpts is None or len(changed) == len(states):
            removed = conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,)).rowcount > 0
        elif changed:
            conn.executemany(
                "DELETE FROM recipients WHERE queue_id = ? AND rcpt = ?",
                [(queue_id, rcpt) for rcpt in changed],
            )
            removed = remove_if_final(conn, {queue_id})[0] > 0  # only final ones are left
    elif changed:
        conn.executemany(_SET_STATUS[action], [(now, queue_id, rcpt) for rcpt in changed])
    if changed or removed:
        add(conn, queue_id, [""] if rcpts is None else changed, action, decision)
    return s.Change(queue_id, action, True, changed, unmoved, removed=removed)


def reveal(conn: sqlite3.Connection, queue_id: str, decision: s.Decision) -> bytes | None:
    """The message's data, with a ``reveal`` row: the data is read only if the row is
    written (same transaction), so nobody sees an unmasked message unrecorded."""
    row = conn.execute("SELECT data FROM messages WHERE id = ?", (queue_id,)).fetchone()
    if row is None:
        return None
    add(conn, queue_id, [""], s.Action.REVEAL, decision)
    return bytes(row[0])


def add(
    conn: sqlite3.Connection,
    queue_id: str,
    rcpts: Iterable[str],
    action: s.Action,
    decision: s.Decision,
) -> None:
    conn.executemany(
        f"INSERT INTO history ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
        [
            (queue_id, rcpt, decision.at, action.value, decision.operator, decision.reason)
            for rcpt in rcpts
        ],
    )


def entries(conn: sqlite3.Connection, queue_ids: Iterable[str]) -> dict[str, list[s.HistoryEntry]]:
    """queue id → its history, oldest first (ids without history are absent)."""
    found: dict[str, list[s.HistoryEntry]] = {}
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM history WHERE queue_id IN"  # noqa: S608
        " (SELECT value FROM json_each(?)) ORDER BY id",
        (json.dumps(list(queue_ids)),),
    )
    for row in rows:
        found.setdefault(row[0], []).append(_entry(row))
    return found


def claim_unlogged(conn: sqlite3.Connection, limit: int) -> list[s.HistoryEntry]:
    rows = conn.execute(
        f"SELECT id, {_COLUMNS} FROM history WHERE logged = 0 ORDER BY id LIMIT ?",  # noqa: S608
        (limit,),
    ).fetchall()
    conn.executemany("UPDATE history SET logged = 1 WHERE id = ?", [(row[0],) for row in rows])
    return [_entry(row[1:]) for row in rows]


def prune(conn: sqlite3.Connection, before: float) -> int:
    """Forget decisions made before ``before`` (epoch seconds); returns how many."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        pruned = conn.execute("DELETE FROM history WHERE at < ?", (before,)).rowcount
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    return pruned


def _exists(conn: sqlite3.Connection, queue_id: str) -> bool:
    return conn.execute("SELECT 1 FROM messages WHERE id = ?", (queue_id,)).fetchone() is not None


def _entry(row: Sequence[Any]) -> s.HistoryEntry:
    queue_id, rcpt, at, action, operator, reason = row
    return s.HistoryEntry(queue_id, rcpt, at, s.Action(action), operator, reason)
