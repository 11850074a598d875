"""Started as root, ``securemail serve`` binds its ports, then runs as ``[service] user``.

Real ``serve`` processes, started as root (as the test machine runs), with a system user
made for the module: its ids are read from ``/proc`` (every thread of the gateway, and
its CPU workers), the spool it creates is its own, and mail still goes through. A user
that does not exist, a spool it cannot write, or a start as someone else each end with
one line naming the problem and exit status 2, before anything is bound.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.gatewaykit import ORG_DOMAIN, write_config
from harness.serve import SECUREMAIL, GatewayProcess, free_low_port, free_port

from securemail.config import load_config
from securemail.gateway.inbound.offload import INLINE_MAX_BYTES
from securemail.privileges import ServiceUser, lookup_service_user

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]  # serve processes: CI lane


@pytest.fixture(scope="module")
def service_user() -> Iterator[ServiceUser]:
    """A system user (and its group) of its own, removed afterwards."""
    assert os.geteuid() == 0, "serve must be started as root to switch users"
    name = f"sm-test-{secrets.token_hex(4)}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell",
         "/usr/sbin/nologin", name],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    try:
        user = lookup_service_user(name)
        assert user is not None
        yield user
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True, timeout=30)


@pytest.fixture(scope="module", autouse=True)
def reachable_code() -> Iterator[None]:
    """The interpreter and the code within the service user's reach, as an install under
    /usr or /opt is. On the test machine Python lives under /root (0700), which serve
    refuses (a check of its own); the directories in the way may be traversed (o+x,
    not listed) for this module, then get their mode back."""
    code = {Path(os.path.realpath(sys.executable)), *map(Path, filter(os.path.isabs, sys.path))}
    closed = {d: d.stat().st_mode for p in code for d in p.parents if not d.stat().st_mode & 0o1}
    for directory, mode in closed.items():
        directory.chmod(mode | 0o1)
    try:
        yield
    finally:
        for directory, mode in closed.items():
            directory.chmod(mode)


@pytest.fixture
def base() -> Iterator[Path]:
    """World-traversable (pytest's tmp_path is under a 0700 directory of root's)."""
    path = Path(tempfile.mkdtemp(prefix="sm-drop-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def configure(base: Path, pki, dns_server, internal, user: str) -> GatewayProcess:
    """A gateway set up as an operator would: inbound on a port below 1024, the
    certificate and key copied for the service user (the test CA's key is root's), a
    spool directory the user owns."""
    inbound, submission = free_low_port(), free_port()
    config = write_config(
        base, pki=pki, dns_server=dns_server, delivery_port=25, internal_port=internal.port,
        inbound=f"127.0.0.1:{inbound}", submission=f"127.0.0.1:{submission}",
        extra=f'[service]\nuser = "{user}"\npid_file = "spool/securemail.pid"\n',
    )  # fmt: skip
    tls = load_config(config, environ={}).tls
    text = config.read_text().replace('"sqlite:///spool.db"', '"sqlite:///spool/spool.db"')
    for source, name in ((tls.cert, "cert.pem"), (tls.key, "key.pem")):
        shutil.copy(source, base / name)
        shutil.chown(base / name, user, user)
        text = text.replace(str(source), name)
    config.write_text(text)
    (base / "spool").mkdir()
    shutil.chown(base / "spool", user, user)
    return GatewayProcess(config, inbound, submission)


def ids(process: Path) -> dict[str, str]:
    """The Uid, Gid, Groups and capability lines of a ``/proc`` process (or thread)."""
    lines = (process / "status").read_text().splitlines()
    keys = ("Uid", "Gid", "Groups", "CapPrm", "CapEff")
    return {
        k: " ".join(line.split()[1:]) for line in lines for k in keys if line.startswith(k + ":")
    }


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (the gateway's CPU workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"\nPPid:\t{pid}\n" in (entry / "status").read_text():
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return found


def large_message() -> bytes:
    """Over ``INLINE_MAX_BYTES``: checked in the CPU workers."""
    line = b"Clinical letter, page after page of it. " * 20 + b"\r\n"
    return (
        f"From: Pat <pat@partner.test>\r\nTo: jo@{ORG_DOMAIN}\r\nSubject: referral\r\n"
        f"Message-ID: <{time.time_ns()}@partner.test>\r\n\r\n".encode()
        + line * (2 * INLINE_MAX_BYTES // len(line))
    )


def test_started_as_root_it_binds_then_runs_as_the_service_user(
    base, pki, dns_server, internal, service_user
):
    user = service_user
    gateway = configure(base, pki, dns_server, internal, user.name)
    gateway.start()
    try:
        inbound = gateway.ports[0]
        with smtplib.SMTP("127.0.0.1", inbound, timeout=30) as smtp:
            smtp.ehlo("mx.partner.test")
            assert smtp.sendmail("pat@partner.test", [f"jo@{ORG_DOMAIN}"], large_message()) == {}
        (received,) = internal.wait(1)
        assert b"Clinical letter" in received.data
        assert gateway.proc is not None
        pid = gateway.proc.pid
        mine = {
            "Uid": f"{user.uid} {user.uid} {user.uid} {user.uid}",  # real, effective, saved, fs
            "Gid": f"{user.gid} {user.gid} {user.gid} {user.gid}",
            "Groups": " ".join(map(str, user.groups)),
            "CapPrm": "0000000000000000",
            "CapEff": "0000000000000000",
        }
        tasks = list(Path(f"/proc/{pid}/task").iterdir())  # every thread, the loop's too
        assert tasks and all(ids(task) == mine for task in tasks)
        accept = gateway.accept_workers(2)  # [listen] workers, started after the drop
        cpu = [pid for worker in accept for pid in children(worker)]
        assert cpu, "the large message was checked in a CPU worker (an accept worker's)"
        for worker in [*accept, *cpu, *children(pid)]:  # every thread of every one
            threads = list(Path(f"/proc/{worker}/task").iterdir())
            assert threads and all(ids(task) == mine for task in threads), worker
        spool = base / "spool"
        assert {(p.stat().st_uid, p.stat().st_gid) for p in spool.iterdir()} == {
            (user.uid, user.gid)
        }
        log = gateway.log.read_text()
        assert (
            f"listening on inbound 127.0.0.1:{inbound}, submission 127.0.0.1:"
            f"{gateway.ports[1]}; running as user {user.name} (uid {user.uid})"
        ) in log
        assert "running as root" not in log
        gateway.proc.send_signal(signal.SIGHUP)  # a reload reads the config as the user
        deadline = time.monotonic() + 20
        while "reloaded" not in gateway.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "reloaded" in gateway.log.read_text(), gateway.tail()
    finally:
        gateway.stop()
    assert gateway.proc.returncode == 0, gateway.tail()


def serve(gateway: GatewayProcess, **kw: object) -> tuple[int, str]:
    """``serve`` expected to stop at once: (status, stderr)."""
    proc = subprocess.run(
        [*SECUREMAIL, "serve", "--config", str(gateway.config)], capture_output=True,
        text=True, timeout=60, check=False, cwd=gateway.config.parent, env=gateway.env, **kw,
    )  # fmt: skip
    return proc.returncode, proc.stderr


def test_an_unknown_user_stops_serve_before_it_binds(base, pki, dns_server, internal, service_user):
    gateway = configure(base, pki, dns_server, internal, service_user.name)
    text = gateway.config.read_text().replace(service_user.name, "sm-no-such-user")
    gateway.config.write_text(text)
    status, err = serve(gateway)
    assert (status, err) == (
        2,
        "securemail: error: service.user: no such user 'sm-no-such-user' on this system\n",
    )
    assert list((base / "spool").iterdir()) == []


def test_a_spool_the_user_cannot_write_stops_serve_naming_both(
    base, pki, dns_server, internal, service_user
):
    user = service_user
    gateway = configure(base, pki, dns_server, internal, user.name)
    shutil.chown(base / "spool", "root", "root")
    (base / "spool").chmod(0o755)
    status, err = serve(gateway)
    assert status == 2
    assert err.startswith(
        f"securemail: error: spool.url: {base / 'spool'}: not writable by user {user.name} "
        f"(uid {user.uid}) (owned by root:root, mode 0755)"
    ), err
    assert list((base / "spool").iterdir()) == []


def test_started_as_another_user_it_cannot_switch(base, pki, dns_server, internal, service_user):
    user = service_user
    gateway = configure(base, pki, dns_server, internal, user.name)
    status, err = serve(gateway, user="nobody", group="nogroup", extra_groups=[])
    assert status == 2
    assert f"service.user: cannot switch to user {user.name} (uid {user.uid})" in err
    assert "not as root; start it as root or as" in " ".join(err.split())
