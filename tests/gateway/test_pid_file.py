"""``[service] pid_file`` with real ``securemail serve`` processes: written once listening,
removed at a clean stop, a stale one taken over, a second gateway on it refused; and
``securemail reload`` with no gateway to reload."""

import json
import subprocess
import sys

import pytest
from harness.cli import run_cli
from harness.gatewaykit import write_config
from harness.serve import GatewayProcess, free_port

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]  # processes: CI lane


def _config(directory, pki, dns_server, internal, pid_file):
    directory.mkdir(exist_ok=True)
    inbound, submission = free_port(), free_port()
    config = write_config(
        directory, pki=pki, dns_server=dns_server, delivery_port=25,
        internal_port=internal.port, inbound=f"127.0.0.1:{inbound}",
        submission=f"127.0.0.1:{submission}", extra=f'[service]\npid_file = "{pid_file}"\n',
    )  # fmt: skip
    return GatewayProcess(config, inbound, submission)


def test_reload_without_a_running_gateway_exits_2(tmp_path):
    config = tmp_path / "securemail.toml"
    config.write_text('[service]\npid_file = "gw.pid"\n')
    proc = run_cli("reload", "--config", str(config))
    assert proc.returncode == 2
    assert " ".join(proc.stderr.decode().split()) == (
        f"securemail: error: no running gateway (pid file {tmp_path / 'gw.pid'})"
    )
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, check=True)  # fmt: skip
    (tmp_path / "gw.pid").write_text(dead.stdout.decode())  # stale: that process is gone
    assert run_cli("reload", "--config", str(config)).returncode == 2


def test_a_stale_pid_file_is_taken_over_and_a_second_gateway_refused(
    tmp_path, pki, dns_server, internal
):
    pid_file = tmp_path / "run" / "securemail.pid"
    pid_file.parent.mkdir()
    pid_file.write_text("999999\n")  # a gateway that crashed; nothing runs as that pid
    first = _config(tmp_path / "one", pki, dns_server, internal, pid_file)
    first.start()
    try:
        assert first.proc is not None
        pid = first.proc.pid
        assert pid_file.read_text() == f"{pid}\n"
        assert f"pid file {pid_file} named pid 999999, no longer running: taking it over" in (
            first.log.read_text()
        )
        state = json.loads((pid_file.parent / "securemail.state.json").read_text())
        assert (state["pid"], state["generation"], state["result"]) == (pid, 0, "ok")
        assert state["message"] == "started"

        second = _config(tmp_path / "two", pki, dns_server, internal, pid_file)
        second.start(ready=False)
        assert second.wait(30) == 2
        refused = " ".join(second.log.read_text().split())
        assert f"a gateway is already running: pid {pid} (pid file {pid_file})" in refused
        assert pid_file.read_text() == f"{pid}\n"  # the refused one left it alone
        assert first.running
    finally:
        first.stop()
    assert first.proc.returncode == 0
    assert not pid_file.exists()  # removed at a clean stop
