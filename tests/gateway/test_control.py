"""The pid and state files, and the signal-and-wait that ``securemail reload`` and
``accredited import`` share: stale files, live gateways, answers, silence."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from securemail.config import ServiceConfig, service_config
from securemail.errors import InputError
from securemail.gateway.control import (
    OK,
    REFUSED,
    CertFacts,
    GatewayState,
    InForce,
    ListFacts,
    NoGateway,
    ReloadTimeout,
    ServiceFiles,
    is_securemail,
    read_pid,
    read_state,
    reload_running,
    running_pid,
)

# A live process whose command line names securemail, as a gateway's does; it answers
# SIGHUP by writing the state file the way a gateway would (or not at all: "silent").
FAKE_GATEWAY = """
import json, signal, sys, time
state, mode = sys.argv[1], sys.argv[2]
def answer(*_):
    if mode == "silent":
        return
    json.dump({"pid": __import__("os").getpid(), "started": "s", "generation": 1,
               "at": "t", "result": mode, "message": "reload " + mode,
               "accredited": None, "certificate": None, "dkim": [],
               "restart_needed": []}, open(state, "w"))
signal.signal(signal.SIGHUP, answer)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def fake_gateway(tmp_path):
    """Start a stand-in gateway for ``mode`` ("ok", "refused", "silent"), pid file written."""
    started = []

    def start(mode: str) -> ServiceConfig:
        service = ServiceConfig(pid_file=tmp_path / "securemail.pid")
        proc = subprocess.Popen(
            [sys.executable, "-c", FAKE_GATEWAY, str(service.state_file), mode, "securemail"],
            stdout=subprocess.PIPE,
        )
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        service.pid_file.write_text(f"{proc.pid}\n")
        return service

    yield start
    for proc in started:
        proc.kill()
        proc.wait(10)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    return proc.pid


def _state(**changes) -> GatewayState:
    fields = {
        "pid": 4242,
        "started": "2026-11-01T09:00:00+00:00",
        "generation": 3,
        "at": "2026-11-01T10:00:00+00:00",
        "result": OK,
        "message": "reloaded",
        "in_force": InForce(
            ListFacts("/var/lib/securemail/accredited.csv", 1234, "2026-11-01", "ab" * 32),
            CertFacts("/tls/cert.pem", "CN=mail.example.nhs.uk", "1F", "2027-01-01T00:00:00"),
            ("example.nhs.uk selector s1",),
        ),
        "restart_needed": ("listen.inbound",),
    }
    return GatewayState(**(fields | changes))


def test_state_round_trips_through_its_json(tmp_path):
    state = _state()
    data = state.to_json()
    assert data["accredited"] == {
        "path": "/var/lib/securemail/accredited.csv",
        "entries": 1234,
        "date": "2026-11-01",
        "sha256": "ab" * 32,
    }
    assert data["restart_needed"] == ["listen.inbound"]
    files = ServiceFiles(ServiceConfig(pid_file=tmp_path / "gw.pid"), pid=4242)
    files.record(state)
    assert (tmp_path / "gw.state.json").is_file()
    assert read_state(files.state_file) == state
    assert state.in_force.summary() == (
        "accredited list 1234 entries (2026-11-01), certificate CN=mail.example.nhs.uk "
        "serial 1F expires 2027-01-01T00:00:00, DKIM keys: example.nhs.uk selector s1"
    )


@pytest.mark.parametrize(
    "text", ["", "{", '{"pid": 1}', json.dumps(_state(result="maybe").to_json()), "[]"]
)
def test_a_state_file_that_is_not_one_reads_as_none(tmp_path, text):
    path = tmp_path / "state.json"
    path.write_text(text)
    assert read_state(path) is None
    assert read_state(tmp_path / "missing.json") is None


def test_pid_file_contents(tmp_path):
    path = tmp_path / "gw.pid"
    assert read_pid(path) is None
    for text, pid in (("123\n", 123), ("  77 ", 77), ("abc", None), ("-5", None), ("", None)):
        path.write_text(text)
        assert read_pid(path) == pid


def test_oversized_pid_and_state_files_read_as_nothing(tmp_path):
    """A pid of 5,000 digits (int() refuses it) or a state file that never ends must
    not crash or hang ``securemail reload``: they read as no pid, no state."""
    pid = tmp_path / "gw.pid"
    pid.write_text("9" * 5000)
    assert read_pid(pid) is None
    assert read_pid(Path("/dev/zero")) is None
    assert read_state(Path("/dev/zero")) is None
    state = tmp_path / "state.json"
    state.write_text('{"pid": 1, "pad": "' + "x" * 100_000 + '"}')
    assert read_state(state) is None


def test_only_a_live_securemail_process_counts(fake_gateway):
    assert not is_securemail(os.getpid())  # ourselves: a restarted container's pid 1 again
    assert not is_securemail(_dead_pid())
    assert not is_securemail(0)
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            assert not is_securemail(other.pid)  # alive, but some other program
        finally:
            other.kill()
    service = fake_gateway("ok")
    assert running_pid(service.pid_file) == read_pid(service.pid_file)
    assert is_securemail(read_pid(service.pid_file) or 0)


def test_claim_refuses_a_live_gateway_and_takes_over_a_stale_file(tmp_path, fake_gateway):
    service = fake_gateway("ok")
    live = read_pid(service.pid_file)
    files = ServiceFiles(service, pid=os.getpid())
    with pytest.raises(InputError, match=f"already running: pid {live} "):
        files.claim()
    dead = _dead_pid()
    service.pid_file.write_text(f"{dead}\n")
    assert f"named pid {dead}, no longer running: taking it over" in (files.claim() or "")
    files.publish()
    assert read_pid(service.pid_file) == os.getpid()
    assert files.claim() is None  # our own pid: nothing to take over
    files.withdraw()
    assert not service.pid_file.exists()


def test_withdraw_leaves_another_gateways_pid_file(tmp_path):
    service = ServiceConfig(pid_file=tmp_path / "gw.pid")
    service.pid_file.write_text("999999\n")
    ServiceFiles(service, pid=os.getpid()).withdraw()
    assert read_pid(service.pid_file) == 999999


def test_publish_names_an_unwritable_pid_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    files = ServiceFiles(ServiceConfig(pid_file=blocker / "gw.pid"))
    with pytest.raises(InputError, match="cannot write the pid file"):
        files.publish()


def test_reload_running_returns_the_gateways_answer(fake_gateway):
    service = fake_gateway("ok")
    state = reload_running(service, timeout=10)
    assert (state.result, state.generation, state.pid) == (OK, 1, read_pid(service.pid_file))


def test_reload_running_reports_a_refusal_as_an_answer(fake_gateway):
    state = reload_running(fake_gateway(REFUSED), timeout=10)
    assert (state.result, state.message) == (REFUSED, "reload refused")


def test_reload_running_ignores_an_old_answer_and_times_out(fake_gateway):
    service = fake_gateway("silent")
    pid = read_pid(service.pid_file)
    # An answer from an earlier process (another pid, a higher generation) is no answer.
    ServiceFiles(service, pid=pid + 1 if pid else 1).record(_state(generation=9))
    started = time.monotonic()
    with pytest.raises(ReloadTimeout, match=f"gateway \\(pid {pid}\\) did not answer within 0.5s"):
        reload_running(service, timeout=0.5)
    assert time.monotonic() - started < 5


def test_reload_running_without_a_gateway(tmp_path):
    service = ServiceConfig(pid_file=tmp_path / "gw.pid")
    with pytest.raises(NoGateway, match=f"no running gateway \\(pid file {service.pid_file}\\)"):
        reload_running(service)
    service.pid_file.write_text(f"{_dead_pid()}\n")
    with pytest.raises(NoGateway):
        reload_running(service)


def test_a_refused_signal_is_explained(tmp_path, monkeypatch):
    service = ServiceConfig(pid_file=tmp_path / "gw.pid")
    service.pid_file.write_text("1\n")
    monkeypatch.setattr("securemail.gateway.control.is_securemail", lambda pid: True)
    monkeypatch.setattr(os, "kill", _refuse_kill)  # as the kernel answers another user
    with pytest.raises(InputError, match="may not signal the gateway \\(pid 1\\)"):
        reload_running(service, timeout=0.1)


def _refuse_kill(pid: int, sig: int) -> None:
    assert sig == signal.SIGHUP
    raise PermissionError(1, "Operation not permitted")


def test_service_config_is_found_even_in_a_file_that_does_not_load(tmp_path):
    config = tmp_path / "securemail.toml"
    config.write_text('[service]\npid_file = "run/gw.pid"  # here\n\n[listen\nbroken')
    assert service_config(config, environ={}).pid_file == tmp_path / "run/gw.pid"
    config.write_text("[nope]\n")  # loads no further than the unknown section
    assert service_config(config, environ={}) == ServiceConfig()
    config.write_text('[service]\npid_file = "gw.pid"\n')
    assert service_config(config, environ={}).pid_file == tmp_path / "gw.pid"
    override = {"SECUREMAIL_SERVICE_PID_FILE": "/run/x.pid"}
    config.write_text("= broken")
    assert service_config(config, environ=override).pid_file.as_posix() == "/run/x.pid"
