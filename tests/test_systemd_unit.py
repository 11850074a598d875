"""``contrib/systemd/securemail.service``: valid for systemd, and sandboxed as documented."""

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "contrib" / "systemd" / "securemail.service"
PROGRAM = "/opt/securemail/bin/securemail"


def settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_unit_is_sandboxed_with_one_capability():
    unit = settings()
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["ReadWritePaths"] == ["/var/lib/securemail"]
    assert unit["WorkingDirectory"] == ["/var/lib/securemail"]
    # waits for the gateway's answer, so a refused configuration fails `systemctl reload`
    assert unit["ExecReload"] == [f"{PROGRAM} reload --config /etc/securemail/securemail.toml"]
    assert unit["ExecStart"][0].startswith(f"{PROGRAM} serve ")


def test_systemd_analyze_verify_finds_nothing(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: make system-deps installs systemd"
    # verify insists ExecStart exists; stand in an executable for the venv's script.
    program = tmp_path / "securemail"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    unit = tmp_path / "securemail.service"
    unit.write_text(UNIT.read_text().replace(PROGRAM, str(program)))
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    # A misspelt or ill-valued setting is only a warning on stderr, with status 0.
    assert (proc.returncode, proc.stderr) == (0, "")
