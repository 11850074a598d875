"""The ``securemail`` command as a user runs it: a real process, output captured."""

from __future__ import annotations

import os
import subprocess
import sys

SECUREMAIL = [sys.executable, "-m", "securemail.cli"]
# Variables that make rich colour a pipe: with them our own styling would emit ESC too.
FORCING = {"FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE"}


def run_cli(*args, stdin=None, cwd=None, columns=80) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in FORCING}
    return subprocess.run(
        [*SECUREMAIL, *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        cwd=cwd,
        check=False,
        env={**env, "COLUMNS": str(columns)},
    )
