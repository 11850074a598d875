"""``[service] user``: who serve switches to, the decision, the switch, and the checks.

The decision (``plan_switch``) is pure and tested for every case. The switch itself is
one-way, so it runs in a child process; the checks run as the test machine's root
(as CI does), asking the kernel as ``nobody``.
"""

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from securemail.config import load_config
from securemail.config_checks import Finding, Severity, check_files, describe_service
from securemail.errors import ConfigError
from securemail.privileges import (
    ServiceUser,
    Switch,
    acting_as,
    lookup_service_user,
    plan_switch,
)

SERVICE = ServiceUser("svc", uid=998, gid=997, groups=(997,))


@pytest.fixture
def nobody() -> ServiceUser:
    assert os.geteuid() == 0, "these tests ask the kernel as nobody: run them as root"
    user = lookup_service_user("nobody")
    assert user is not None
    return user


@pytest.mark.parametrize(
    ("user", "euid", "egid", "expected"),
    [
        (SERVICE, 0, 0, Switch.DROP),  # root with a user: bind, then switch
        (None, 0, 0, Switch.KEEP_ROOT),  # root without one: runs as root, warned
        (SERVICE, 998, 997, Switch.NONE),  # already the user (systemd's User=)
        (None, 1000, 1000, Switch.NONE),  # an ordinary user, nothing asked
    ],
)
def test_what_serve_does_about_who_it_is(user, euid, egid, expected):
    assert plan_switch(user, euid, egid) is expected


@pytest.mark.parametrize(("euid", "egid"), [(1000, 1000), (998, 1000), (1000, 997)])
def test_not_root_and_not_the_user_cannot_switch(euid, egid):
    with pytest.raises(ConfigError, match=r"cannot switch to user svc \(uid 998\).*not as root"):
        plan_switch(SERVICE, euid, egid)


def test_the_user_and_group_are_looked_up_and_root_is_refused():
    assert lookup_service_user("") is None
    with pytest.raises(ConfigError, match=r"service\.user: no such user 'sm-no-such-user'"):
        lookup_service_user("sm-no-such-user")
    with pytest.raises(ConfigError, match=r"service\.user: 'root' is root"):
        lookup_service_user("root")
    with pytest.raises(ConfigError, match=r"service\.group: no such group 'sm-no-such-group'"):
        lookup_service_user("nobody", "sm-no-such-group")
    entry = pwd.getpwnam("nobody")
    user = lookup_service_user("nobody")
    assert user is not None and (user.uid, user.gid) == (entry.pw_uid, entry.pw_gid)
    assert user.gid in user.groups


def test_acting_as_asks_the_kernel_as_the_user_then_gives_root_back(tmp_path, nobody):
    secret = tmp_path / "key.pem"
    secret.write_text("k")
    secret.chmod(0o600)
    groups = os.getgroups()
    with acting_as(nobody):
        assert (os.geteuid(), os.getegid()) == (nobody.uid, nobody.gid)
        assert not os.access(secret, os.R_OK, effective_ids=True)
        with pytest.raises(PermissionError):
            secret.read_text()
    assert os.getresuid() == (0, 0, 0) and os.getgroups() == groups
    assert secret.read_text() == "k"


def _child(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (the switch cannot be undone in this one)."""
    return subprocess.run(
        [sys.executable, "-c", f"from securemail.privileges import *\n{code}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_switch_is_for_good(nobody):
    proc = _child(
        "import os\n"
        "drop_privileges(lookup_service_user('nobody'))\n"
        "print(os.getresuid(), os.getresgid(), os.getgroups())\n"
        "try:\n    os.setuid(0)\nexcept PermissionError:\n    print('root is gone')\n"
    )
    assert proc.returncode == 0, proc.stderr
    ids = f"{(nobody.uid,) * 3} {(nobody.gid,) * 3} {list(nobody.groups)}"
    assert proc.stdout.splitlines() == [ids, "root is gone"]


def test_a_switch_that_keeps_root_is_refused(nobody):
    """Verified, not assumed: a setuid that changed only the effective uid (as seteuid
    does) leaves root in the saved uid, and the gateway must not run on."""
    proc = _child(
        "import os\nos.setuid = os.seteuid\n"
        "try:\n    drop_privileges(lookup_service_user('nobody'))\n"
        "except PrivilegeError as exc:\n    print(exc)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"switched to user nobody (uid {nobody.uid}), but the real, effective and saved "
        f"uids are (0, {nobody.uid}, 0); refusing to run"
    )


# --- the config: [service] and what config check finds ---------------------------------


def _config(tmp_path: Path, text: str):
    path = tmp_path / "securemail.toml"
    path.write_text(text)
    return load_config(path, environ={})


def test_service_section(tmp_path):
    assert _config(tmp_path, "").service.user == ""
    cfg = _config(tmp_path, '[service]\nuser = "securemail"\ngroup = "mail"\n')
    assert (cfg.service.user, cfg.service.group) == ("securemail", "mail")
    with pytest.raises(ConfigError, match=r"securemail.toml:2: service.user: 'a b' is not"):
        _config(tmp_path, '[service]\nuser = "a b"\n')
    with pytest.raises(ConfigError, match=r"securemail.toml:2: service.group: 'mail' without"):
        _config(tmp_path, '[service]\ngroup = "mail"\n')


def _access_config(base: Path, service: str) -> Path:
    """Every file the gateway opens, present and readable by root only: under ``base``."""
    from securemail.tls import write_self_signed

    write_self_signed(base / "cert.pem", base / "key.pem", "mail.example.nhs.uk")
    (base / "spool").mkdir()
    path = base / "securemail.toml"
    path.write_text(
        '[tls]\ncert = "cert.pem"\nkey = "key.pem"\n[spool]\nurl = "sqlite:///spool/s.db"\n'
        f'[dkim]\nsign = false\n[service]\nuser = "{service}"\npid_file = "spool/sm.pid"\n'
    )
    return path


def test_an_unknown_service_user_is_an_error_naming_it(tmp_path):
    cfg = load_config(_access_config(tmp_path, "sm-no-such-user"), environ={})
    (finding,) = [f for f in check_files(cfg) if f.severity is Severity.ERROR]
    assert str(finding) == "service.user: no such user 'sm-no-such-user' on this system"


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A 0700 root directory outside pytest's own (which the test must not open up)."""
    path = Path(tempfile.mkdtemp(prefix="sm-svc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_files_the_service_user_cannot_open_are_errors_naming_file_and_user(private_dir, nobody):
    base = private_dir / "gateway"
    base.mkdir()
    cfg = load_config(_access_config(base, "nobody"), environ={})
    errors = " ".join(str(f) for f in check_files(cfg) if f.severity is Severity.ERROR)
    who = f"by user nobody (uid {nobody.uid}): it cannot enter {private_dir}"
    assert f"tls.key: {base / 'key.pem'}: not readable {who} (owned by root:root" in errors
    assert f"spool.url: {base / 'spool'}: not writable {who}" in errors
    # Opened up (the directory traversable, the files the user's), nothing is left.
    private_dir.chmod(0o755)
    for path in (base / "spool", base / "cert.pem", base / "key.pem"):
        os.chown(path, nobody.uid, nobody.gid)
    assert errors_but_code(cfg) == []
    (base / "spool" / "s.db").write_bytes(b"")  # a spool root created, e.g. a run as root
    (base / "spool" / "s.db").chmod(0o644)
    (error,) = errors_but_code(cfg)
    assert str(error) == (
        f"spool.url: {base / 'spool' / 's.db'}: not writable by user nobody "
        f"(uid {nobody.uid}) (owned by root:root, mode 0644)"
    )


def errors_but_code(cfg) -> list[Finding]:
    """The errors about the config's files (whether this machine's Python is within a
    service user's reach is the next test's business)."""
    return [f for f in check_files(cfg) if f.severity is Severity.ERROR and f.key != "service.user"]


def test_an_interpreter_out_of_the_users_reach_is_an_error(private_dir, nobody, monkeypatch):
    """The CPU workers start ``sys.executable`` after the switch; under a directory the
    user cannot enter (Python built under /root), every large message would get 451."""
    base = private_dir / "gateway"
    base.mkdir()
    cfg = load_config(_access_config(base, "nobody"), environ={})
    python = private_dir / "python3"
    python.write_text("")
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    code = [str(f) for f in check_files(cfg) if f.key == "service.user"]
    assert (
        f"service.user: {python}: not executable by user nobody (uid {nobody.uid}): it "
        f"cannot enter {private_dir} (owned by root:root, mode 0700); the CPU workers run it"
    ) in code


def test_config_check_says_who_serve_runs_as_and_why_root_is_needed(tmp_path, nobody):
    cfg = _config(tmp_path, '[listen]\ninbound = "0.0.0.0:25"\n[service]\nuser = "nobody"\n')
    report = describe_service(cfg)
    assert str(report) == (
        f"user nobody (uid {nobody.uid}, gid {nobody.gid}) exists; root needed: to bind "
        "listen.inbound port 25 (below 1024; or CAP_NET_BIND_SERVICE); to switch to nobody "
        "(none if started as nobody)"
    )
    assert str(describe_service(_config(tmp_path, ""))) == (
        "no [service] user: serve runs as whoever starts it (root stays root); root needed: no"
    )
    ghost = describe_service(_config(tmp_path, '[service]\nuser = "sm-no-such-user"\n'))
    assert ghost.user is None
    assert str(ghost).startswith("user sm-no-such-user: no such user 'sm-no-such-user'")
