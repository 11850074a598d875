"""What an operator installs: ``--version``, shell completion, the licence."""

import os
import subprocess
import tomllib
from pathlib import Path

import pytest
from harness.cli import SECUREMAIL, run_cli

from securemail import __version__

pytestmark = pytest.mark.slow  # many CLI processes: the CI lane, not the fast one

ROOT = Path(__file__).resolve().parents[2]


def test_version_option_and_command_agree():
    option, command = run_cli("--version"), run_cli("version")
    assert option.returncode == command.returncode == 0
    assert option.stdout == command.stdout == f"securemail {__version__}\n".encode()


def test_show_completion_prints_a_script_for_the_shell():
    proc = run_cli("--show-completion", "bash")
    assert proc.returncode == 0, proc.stderr
    assert b"complete -o default -F _securemail_completion" in proc.stdout


def test_completion_completes_commands():
    env = {
        "_SECUREMAIL_COMPLETE": "complete_bash",
        "COMP_WORDS": "securemail sp",
        "COMP_CWORD": "1",
    }
    proc = subprocess.run(
        [*SECUREMAIL], capture_output=True, timeout=60, check=False, env={**os.environ, **env}
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [b"spool"]


def test_license_is_the_mit_licence_pyproject_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "MIT" in str(project.get("license"))
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
