"""``securemail spool backup PATH``: a consistent copy of the spool, taken while it runs.

A file copy (``cp``, a nightly file-system backup) of a live SQLite database in WAL mode
can catch the database and its ``-wal`` file at different moments and restore as a
corrupt spool; this uses SQLite's online backup instead (``spool.backup.backup``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from securemail.cli.common import ConfigOpt, say
from securemail.config import load_config

app = typer.Typer(help="Look after the spool file itself (backups).")


@app.command()
def backup(
    path: Annotated[Path, typer.Argument(help="The new file to write; must not exist.")],
    config: ConfigOpt = None,
) -> None:
    """Copy the spool to PATH, consistently, even while the gateway is running.

    Refuses to overwrite an existing file. Restore by stopping the gateway and putting
    the copy in place of the spool file (removing its -wal and -shm files).
    """
    from securemail.gateway.spool import spool_path
    from securemail.gateway.spool.backup import backup as backup_spool

    cfg = load_config(config)
    source = spool_path(cfg.spool.url, base=cfg.source.resolve().parent if cfg.source else None)
    messages = backup_spool(source, path)
    say("backed up ", str(source), " to ", str(path), f" ({messages} messages)")
