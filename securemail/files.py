"""Writing files safely, once: atomic replacement, private modes, no symlink games.

Every file securemail writes for an operator (the accredited list, the users file, DKIM
and TLS keys) goes through ``write_atomic``, so each gets the same guarantees:

* readers see the old content or the new, never half (temporary file in the same
  directory, fsync, rename, fsync of the directory: a crash leaves one or the other);
* the temporary file has a random name and is created with ``O_CREAT | O_EXCL``
  (``mkstemp``), so a symlink planted at a predictable temp name cannot redirect the
  write, and the final ``rename`` replaces a symlink at the destination instead of
  following it;
* the mode is set with ``fchmod`` *before* any byte is written, so a private key is never
  readable by others, not even for a moment, whatever mode an existing file had.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE = 0o600


def write_atomic(
    dest: Path,
    data: bytes,
    *,
    mode: int | None = None,
    replace: bool = True,
    dir_mode: int = 0o755,
) -> None:
    """Write ``data`` to ``dest`` atomically.

    ``mode``: the file's permissions; None keeps an existing file's mode (0644 for a new
    one) — never pass None for secrets. ``replace=False`` refuses to overwrite an existing
    file (``FileExistsError``), atomically (a hard link, which fails rather than replace).
    Raises ``OSError`` for the caller to turn into a one-line error.
    """
    directory = dest.parent
    if not directory.is_dir():
        directory.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    if mode is None:
        try:
            mode = dest.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
    fd, temp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=directory)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            temp.replace(dest)
        else:
            dest.hardlink_to(temp)
    finally:
        temp.unlink(missing_ok=True)
    _sync_dir(directory)


def _sync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
