"""Which master key opens the database, and rotating it without losing a message.

The database records the id (``crypto.MasterKey.key_id``) of the key its data keys are
wrapped under, in ``meta.master_key_id``. Rotation is:

1. write the new key to ``key_file.new`` and a copy of the current one to
   ``key_file.old`` (both 0600, atomic);
2. in ONE transaction, re-wrap every data key under the new key and set
   ``master_key_id`` to the new id (ciphertexts are not touched: only 60-byte wrapped
   keys change);
3. replace ``key_file`` with the new key (``files.write_atomic``);
4. remove ``.new`` and ``.old``.

A crash anywhere leaves a key that matches the database: before step 2 commits it is
``key_file`` (== ``.old``); after, it is ``.new``. ``settle`` (run at every start, and
whenever another process may have rotated) picks the key whose id the database names,
puts it in ``key_file`` if it is not there yet, and removes the leftovers.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from securemail.portal import audit
from securemail.portal.crypto import (
    KeyFileError,
    MasterKey,
    keygen,
    read_key,
    sidecar,
    write_key,
)
from securemail.portal.records import Event
from securemail.portal.store import get_meta, set_meta

META_KEY_ID = "master_key_id"


def settle(conn: sqlite3.Connection, path: Path) -> MasterKey:
    """The master key for this database, finishing an interrupted rotation (see above).
    A new database adopts ``key_file``. Raises ``KeyFileError`` when no key matches."""
    wanted = get_meta(conn, META_KEY_ID)
    current = read_key(path)
    if wanted is None:
        set_meta(conn, META_KEY_ID, current.key_id)
        return current
    found = current if current.key_id == wanted else None
    if found is None:
        for suffix in ("new", "old"):
            candidate = sidecar(path, suffix)
            if candidate.exists() and (key := read_key(candidate)).key_id == wanted:
                found = key
                write_key(path, key)  # finish the rotation a crash interrupted
                break
    if found is None:
        raise KeyFileError(
            f"{path}: key {current.key_id} is not the key of the portal database"
            f" ({wanted}); restore the right key file"
        )
    for suffix in ("new", "old"):
        sidecar(path, suffix).unlink(missing_ok=True)
    return found


def prepare_rotation(path: Path, old: MasterKey) -> MasterKey:
    """Step 1: the new key and a copy of the old one on disk before the database moves."""
    new = MasterKey.generate()
    write_key(sidecar(path, "new"), new)
    write_key(sidecar(path, "old"), old)
    return new


def rewrap(conn: sqlite3.Connection, old: MasterKey, new: MasterKey, now: float) -> int:
    """Step 2, inside the caller's transaction: every data key re-wrapped; how many."""
    if get_meta(conn, META_KEY_ID) != old.key_id:
        raise KeyFileError("the portal database is not under the key being rotated")
    rows = conn.execute(
        "SELECT id, wrapped_key FROM messages WHERE wrapped_key IS NOT NULL"
    ).fetchall()
    conn.executemany(
        "UPDATE messages SET wrapped_key = ? WHERE id = ?",
        [(new.wrap(old.unwrap(wrapped, message_id), message_id), message_id)
         for message_id, wrapped in rows],
    )  # fmt: skip
    set_meta(conn, META_KEY_ID, new.key_id)
    audit.append(conn, now, "", "", Event.KEY_ROTATED, f"{old.key_id} -> {new.key_id}")
    return len(rows)


def finish_rotation(path: Path, new: MasterKey) -> None:
    """Steps 3 and 4, once the transaction has committed."""
    write_key(path, new)
    for suffix in ("new", "old"):
        sidecar(path, suffix).unlink(missing_ok=True)


def ensure_key(path: Path) -> bool:
    """Create ``path`` with a new key unless it exists (``config init``, ``make run``);
    True when created."""
    try:
        keygen(path)
    except FileExistsError:
        return False
    return True
