"""``securemail accredited import`` says whether a running gateway took the list: a real
``securemail serve`` process whose classification changes, ``--no-reload``, ``--json``,
and no gateway at all."""

import json
import smtplib
import time

import pytest
from harness.cli import run_cli
from harness.gatewaykit import HOSTNAME, ORG_DOMAIN, PASSWORD, client_context, write_config
from harness.serve import GatewayProcess, free_port

from securemail.config import load_config
from securemail.gateway.control import read_state
from securemail.gateway.inbound.users import add_user

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]  # a gateway process: CI lane


def _csv(path, *domains):
    rows = "".join(f"{d},Org {d},2099-01-01\n" for d in domains)
    path.write_text("domain,organisation,expiry date\n" + rows)
    return path


def _import(config, csv, *args):
    proc = run_cli("accredited", "import", str(csv), "--config", str(config), *args)
    return proc.returncode, " ".join(proc.stdout.decode().split()), proc


def _send_sensitive(port, pki, rcpt):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.starttls(context=client_context(pki))
        smtp.ehlo("client.test")
        smtp.login("alice", PASSWORD)
        smtp.sendmail(f"alice@{ORG_DOMAIN}", [rcpt], (
            f"From: alice@{ORG_DOMAIN}\r\nTo: {rcpt}\r\nSubject: OFFICIAL-SENSITIVE\r\n"
            f"Message-ID: <{time.time_ns()}@x>\r\n\r\nreferral\r\n").encode())  # fmt: skip


def _wait_log(gateway, text, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in gateway.log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged:\n{gateway.tail()}")


def test_import_reloads_the_running_gateway_and_says_so(tmp_path, pki, dns_server, internal):
    inbound, submission = free_port(), free_port()
    config = write_config(
        tmp_path, pki=pki, dns_server=dns_server, delivery_port=25,
        internal_port=internal.port, inbound=f"127.0.0.1:{inbound}",
        submission=f"127.0.0.1:{submission}",
        extra='[service]\npid_file = "securemail.pid"\n'
        '[policy]\naccredited_list = "accredited.csv"\n',
    )  # fmt: skip
    add_user(tmp_path / "users.toml", "alice", PASSWORD)
    state_file = tmp_path / "securemail.state.json"
    status, out, _ = _import(config, _csv(tmp_path / "first.csv", "carehome.test"))
    assert status == 0
    assert out.endswith("no running gateway: the list is read when it starts")

    gateway = GatewayProcess(config, inbound, submission)
    gateway.start()
    try:
        assert gateway.proc is not None
        pid = gateway.proc.pid
        _send_sensitive(submission, pki, "team@hospice.test")
        _wait_log(gateway, "('team@hospice.test', 'hold'")

        status, out, _ = _import(config, _csv(tmp_path / "second.csv", "hospice.test"))
        assert status == 0
        assert out.endswith(f"running gateway (pid {pid}) now uses it: 1 entries")
        _send_sensitive(submission, pki, "team@hospice.test")
        _wait_log(gateway, "('team@hospice.test', 'deliver', 'verified')")

        before = read_state(state_file)
        third = _csv(tmp_path / "third.csv", "a.test", "b.test")
        status, out, _ = _import(config, third, "--no-reload")
        assert status == 0 and "running gateway" not in out
        assert read_state(state_file) == before  # not signalled

        status, _, proc = _import(config, third, "--json")
        assert status == 0
        answer = json.loads(proc.stdout)["gateway"]
        assert answer == {
            "result": "ok",
            "message": f"running gateway (pid {pid}) now uses it: 2 entries",
            "pid": pid,
            "entries": 2,
        }

        key = load_config(config, environ={}).tls.key
        _, other_key = pki.server_cert(HOSTNAME)  # a key for another certificate
        config.write_text(config.read_text().replace(str(key), str(other_key)))
        status, _, proc = _import(config, _csv(tmp_path / "fourth.csv", "c.test"))
        assert status == 1
        refused = " ".join(proc.stderr.decode().split())
        assert refused.startswith("running gateway refused the reload: tls.key: ")
        assert "does not match the certificate" in refused
        _send_sensitive(submission, pki, "team@c.test")  # the list it refused: not in force
        _wait_log(gateway, "('team@c.test', 'hold'")
        _send_sensitive(submission, pki, "team@a.test")  # the list before it still is
        _wait_log(gateway, "('team@a.test', 'deliver', 'verified')")
    finally:
        gateway.stop()
    assert gateway.proc.returncode == 0
