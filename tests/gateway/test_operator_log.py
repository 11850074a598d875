"""An operator's decision, made with ``securemail queue`` beside a running gateway, is
one line in the gateway's log: within seconds while it runs, at the next start when it
was down, and never twice (not on later passes, not after a restart).

A real ``securemail serve`` process and real ``securemail queue`` processes on one spool,
with the held mail put there by the gateway's own pipeline (a sensitive message for a
recipient not known to be secure, submitted over SMTP).
"""

import json
import re
import smtplib
import time

import pytest
from harness.cli import run_cli
from harness.gatewaykit import ORG_DOMAIN, PASSWORD, client_context, write_config
from harness.serve import GatewayProcess, free_port

from securemail.gateway.inbound.users import add_user

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]  # processes: CI lane

UNKNOWN = "manager@carehome.test"


def _submit_sensitive(port, pki, token):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.starttls(context=client_context(pki))
        smtp.ehlo("client.test")
        smtp.login("alice", PASSWORD)
        smtp.sendmail(f"alice@{ORG_DOMAIN}", [UNKNOWN], (
            f"From: alice@{ORG_DOMAIN}\r\nTo: {UNKNOWN}\r\nSubject: OFFICIAL-SENSITIVE {token}\r\n"
            f"Message-ID: <{time.time_ns()}@x>\r\n\r\nreferral\r\n").encode())  # fmt: skip


def _queue(config, *args):
    proc = run_cli("queue", *args, "-c", str(config), cwd=config.parent, columns=200)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def _held(config):
    """Queue ids of alice's held messages, oldest first (not the notice sent to her)."""
    rows = [json.loads(line) for line in _queue(config, "list", "--status", "held", "--json")
            .splitlines()]  # fmt: skip
    return [m["queue_id"] for m in rows if m["sender"] == f"alice@{ORG_DOMAIN}"]


def _lines(gateway, queue_id):
    pattern = re.compile(rf"INFO securemail\.queue: operator decision queue_id={queue_id} ")
    return [line for line in gateway.log.read_text().splitlines() if pattern.search(line)]


def _wait_lines(gateway, queue_id, timeout):
    deadline = time.monotonic() + timeout
    while not _lines(gateway, queue_id):
        assert time.monotonic() < deadline, f"no decision logged in {timeout}s:\n{gateway.tail()}"
        time.sleep(0.05)
    return time.monotonic()


def test_each_decision_is_logged_once_by_the_gateway(tmp_path, pki, dns_server, internal):
    inbound, submission = free_port(), free_port()
    config = write_config(
        tmp_path, pki=pki, dns_server=dns_server, delivery_port=25,
        internal_port=internal.port, inbound=f"127.0.0.1:{inbound}",
        submission=f"127.0.0.1:{submission}",
    )  # fmt: skip
    add_user(tmp_path / "users.toml", "alice", PASSWORD)
    gateway = GatewayProcess(config, inbound, submission)
    gateway.start()
    try:
        _submit_sensitive(submission, pki, "first")
        _submit_sensitive(submission, pki, "second")
        first, second = _held(config)

        # While it runs: logged within seconds, once.
        asked = time.monotonic()
        _queue(config, "release", first, "--reason", "checked with the IG lead", "--by", "alice")
        assert _wait_lines(gateway, first, timeout=10) - asked < 5
        time.sleep(3)  # several more passes of the queue manager
        [line] = _lines(gateway, first)
        assert re.search(
            rf"operator decision queue_id={first} rcpt=\* action=release by='alice' "
            r"reason='checked with the IG lead' at=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$",
            line,
        ), line

        # While it is down: logged at the next start, once; the first is not repeated.
        gateway.stop()
        _queue(config, "delete", second, "--reason", "withdrawn by the sender", "--by", "bob")
        assert _lines(gateway, second) == []
        gateway.start()
        _wait_lines(gateway, second, timeout=10)
        time.sleep(3)
        [line] = _lines(gateway, second)
        assert "action=delete by='bob' reason='withdrawn by the sender'" in line
        assert len(_lines(gateway, first)) == 1
    finally:
        gateway.stop()
    assert gateway.proc.returncode == 0
