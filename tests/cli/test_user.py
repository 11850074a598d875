"""``securemail user add|list|show|passwd|remove|unlock``, as an operator meets them: real
processes (a real terminal where a password is prompted for), exit codes, one-line
errors, JSON lines."""

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest
from argon2 import PasswordHasher

from securemail.gateway.inbound.limits import Lockout, LockoutFiles
from securemail.gateway.inbound.users import load_users

pytestmark = pytest.mark.slow  # many CLI processes: the CI lane, not the fast one

SECUREMAIL = [sys.executable, "-m", "securemail.cli"]
PASSWORD = "correct horse battery staple"


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "securemail.toml"
    path.write_text(
        '[organisation]\ndomains = ["example.nhs.uk", "trust.nhs.uk"]\n'
        '[relay]\nusers_file = "users.toml"\n'
    )
    return path


def user(config, *args, stdin=""):
    return subprocess.run(
        [*SECUREMAIL, "user", *args, "--config", str(config)],
        input=stdin, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def rows(proc):
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def one_line_error(proc, *words):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("securemail: error: "), proc.stderr
    for word in words:
        assert word in lines[0]


def prompted(config, *args, answers):
    """Run in a real terminal, typing each answer after each prompt; (status, screen)."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child becomes the command
        os.execv(sys.executable, [*SECUREMAIL, "user", *args, "--config", str(config)])
    screen = b""
    pending = list(answers)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
            if pending and screen.endswith(b": "):  # a prompt, waiting for its answer
                os.write(fd, pending.pop(0).encode() + b"\n")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), screen.decode(errors="replace")


def test_add_defaults_to_the_login_at_each_of_our_domains(config, tmp_path):
    added = user(config, "add", "alice", "--password-stdin", "--json", stdin=PASSWORD + "\n")
    (row,) = rows(added)
    assert row["action"] == "added"
    assert row["addresses"] == ["alice@example.nhs.uk", "alice@trust.nhs.uk"]
    (shown,) = rows(user(config, "show", "alice", "--json"))
    assert shown == {
        "user": "alice",
        "addresses": ["alice@example.nhs.uk", "alice@trust.nhs.uk"],
        "default_addresses": False,  # stored: what the file says is what is enforced
        "locked": [],
    }
    assert (tmp_path / "users.toml").stat().st_mode & 0o777 == 0o600


def test_add_with_addresses_warns_outside_our_domains(config):
    added = user(config, "add", "carol", "--address", "Team@Example.NHS.uk", "--address",
                 "carol@partner.test", "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "carol@partner.test is not in [organisation] domains" in added.stderr
    assert "may send as Team@example.nhs.uk, carol@partner.test" in added.stdout
    (row,) = rows(user(config, "list", "--json"))
    assert row["addresses"] == ["Team@example.nhs.uk", "carol@partner.test"]


def test_add_prompts_twice_in_a_terminal(config, tmp_path):
    status, screen = prompted(config, "add", "dave", answers=[PASSWORD, PASSWORD])
    assert status == 0, screen
    assert "password for dave:" in screen and PASSWORD not in screen  # not echoed
    assert "dave" in load_users(tmp_path / "users.toml")
    status, screen = prompted(config, "add", "erin", answers=[PASSWORD, "something else!"])
    assert status == 2 and "securemail: error: the passwords differ" in screen
    assert "erin" not in load_users(tmp_path / "users.toml")


def test_passwd_prompts_and_keeps_the_addresses(config, tmp_path):
    user(config, "add", "alice", "--address", "a.smith@example.nhs.uk", "--password-stdin",
         stdin=PASSWORD + "\n")  # fmt: skip
    before = load_users(tmp_path / "users.toml")["alice"]
    status, screen = prompted(config, "passwd", "alice",
                              answers=["a new long password", "a new long password"])  # fmt: skip
    assert status == 0, screen
    after = load_users(tmp_path / "users.toml")["alice"]
    assert after.password_hash != before.password_hash
    assert PasswordHasher().verify(after.password_hash, "a new long password")
    assert after.addresses == ("a.smith@example.nhs.uk",)
    (row,) = rows(user(config, "passwd", "alice", "--password-stdin", "--json",
                       stdin="yet another password\n"))  # fmt: skip
    assert row == {"user": "alice", "action": "password changed"}


def test_remove(config, tmp_path):
    user(config, "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    user(config, "add", "bob", "--password-stdin", stdin=PASSWORD + "\n")
    (row,) = rows(user(config, "remove", "alice", "--json"))
    assert row["action"] == "removed"
    assert list(load_users(tmp_path / "users.toml")) == ["bob"]
    one_line_error(user(config, "remove", "alice"), "no user 'alice'")


@pytest.mark.parametrize(
    ("args", "stdin", "words"),
    [
        (["add", "bad name", "--password-stdin"], PASSWORD, ["user name 'bad name'"]),
        (["add", "x", "--address", "a@b@c", "--password-stdin"], PASSWORD, ["address 'a@b@c'"]),
        (["add", "x", "--address", "jo@[192.0.2.1]", "--password-stdin"], PASSWORD, ["IP"]),
        (["add", "x", "--password-stdin"], "short", ["password too short"]),
        (["add", "x", "--bogus"], "", ["No such option"]),
        (["passwd", "nobody", "--password-stdin"], PASSWORD, ["no user 'nobody'"]),
        (["show", "nobody"], "", ["no user 'nobody'"]),
        (["unlock"], "", ["NAME, --client IP, or both"]),
        (["unlock", "nobody"], "", ["no user 'nobody'"]),
        (["unlock", "--client", "300.1.1.1"], "", ["not an IP address"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(config, args, stdin, words):
    one_line_error(user(config, *args, stdin=stdin + "\n"), *words)


def test_a_users_file_from_before_addresses_lists_the_defaults(config, tmp_path):
    hashed = PasswordHasher().hash(PASSWORD)
    (tmp_path / "users.toml").write_text(f'[users]\n"alice" = "{hashed}"\n')
    (row,) = rows(user(config, "list", "--json"))
    assert row["addresses"] == ["alice@example.nhs.uk", "alice@trust.nhs.uk"]
    assert row["default_addresses"] is True
    shown = user(config, "show", "alice")
    assert "alice@trust.nhs.uk (default)" in shown.stdout


def test_list_shows_lockouts_and_unlock_records_the_request(config, tmp_path):
    user(config, "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    files = LockoutFiles(tmp_path / "users.toml")
    until = time.time() + 200
    files.write_lockouts([  # as the running gateway writes them
        Lockout("192.0.2.7", "alice", 5, until),
        Lockout("192.0.2.9", None, 30, until),
        Lockout("192.0.2.8", "alice", 5, time.time() - 1),  # over: not shown
    ])  # fmt: skip
    listed = rows(user(config, "list", "--json"))
    assert listed[0]["locked"] == [
        {"client": "192.0.2.7", "login": "alice", "failures": 5, "until": until}
    ]
    assert listed[1] == {"client": "192.0.2.9", "failures": 30, "until": until}
    people = user(config, "list")
    assert "192.0.2.7" in people.stdout and "unlock --client 192.0.2.9" in people.stdout
    (row,) = rows(user(config, "unlock", "alice", "--json"))
    assert row["user"] == "alice" and row["client"] is None
    assert [lock["client"] for lock in row["cleared"]] == ["192.0.2.7"]
    (unlock,) = files.read_unlocks()
    assert (unlock.login, unlock.client) == ("alice", None)
    (row,) = rows(user(config, "unlock", "--client", "2001:db8::5", "--json"))
    assert row["client"] == "2001:db8::/64"  # counted by its /64, unlocked by it too
