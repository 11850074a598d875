"""An online, consistent copy of a live spool (``securemail spool backup``).

A file copy of a live SQLite database in WAL mode can catch the database and its
``-wal`` file at different moments and restore as a corrupt spool; this uses SQLite's
online backup API instead.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from securemail.gateway.spool import store as s
from securemail.gateway.spool.sqlite import BUSY_TIMEOUT


def backup(source: Path, target: Path) -> int:
    """Copy the spool at ``source`` to a new file ``target`` while a gateway may be
    writing to it; return the number of messages copied.

    SQLite's online backup API through a separate connection: in WAL mode a reader
    sees one committed snapshot and never blocks the writer, and copying every page in
    one step keeps that snapshot for the whole copy, so the result is consistent (a
    message is in it whole or not at all). ``target`` must not exist: a backup never
    overwrites anything, least of all an earlier backup.
    """
    if not source.is_file():
        raise s.SpoolError(f"spool {source} does not exist")
    try:
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # mail: owner only
    except FileExistsError:
        raise s.SpoolError(f"{target} already exists; not overwriting it") from None
    os.close(fd)
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
        try:
            src.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)  # pages=-1: all of it in one step, one snapshot
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                return int(dst.execute("SELECT count(*) FROM messages").fetchone()[0])
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        target.unlink(missing_ok=True)
        raise s.SpoolError(f"backup of {source} failed: {exc}") from exc
