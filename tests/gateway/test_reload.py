"""SIGHUP reloads the accredited list without dropping the gateway; a bad config is refused.

Issue 11 item 2 (first part): an accredited list imported while the gateway runs is used
at once after ``kill -HUP`` (the systemd unit's ExecReload); an invalid new configuration
is logged and the running one kept. A real ``securemail serve`` process.
"""

import signal
import smtplib
import time

import pytest
from harness.gatewaykit import ORG_DOMAIN, PASSWORD, client_context, write_config
from harness.serve import GatewayProcess, free_port

from securemail.gateway.inbound.users import add_user

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]  # processes: CI lane


def _wait_log(gateway, text, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in gateway.log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged:\n{gateway.tail()}")


def _send_sensitive(port, pki, rcpt):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.starttls(context=client_context(pki))
        smtp.ehlo("client.test")
        smtp.login("alice", PASSWORD)
        smtp.sendmail(f"alice@{ORG_DOMAIN}", [rcpt], (
            f"From: alice@{ORG_DOMAIN}\r\nTo: {rcpt}\r\nSubject: OFFICIAL-SENSITIVE\r\n"
            f"Message-ID: <{time.time_ns()}@x>\r\n\r\nreferral\r\n").encode())  # fmt: skip


def test_hup_applies_a_new_accredited_list_and_refuses_a_bad_config(
    tmp_path, pki, dns_server, internal
):
    inbound, submission = free_port(), free_port()
    config = write_config(
        tmp_path, pki=pki, dns_server=dns_server, delivery_port=25,
        internal_port=internal.port, inbound=f"127.0.0.1:{inbound}",
        submission=f"127.0.0.1:{submission}",
        extra='[policy]\naccredited_list = "accredited.csv"\n',
    )  # fmt: skip
    add_user(tmp_path / "users.toml", "alice", PASSWORD)
    gateway = GatewayProcess(config, inbound, submission)
    gateway.start()
    try:
        _send_sensitive(submission, pki, "manager@carehome.test")
        _wait_log(gateway, "('manager@carehome.test', 'hold'")
        (tmp_path / "accredited.csv").write_text(
            "domain,organisation,expiry date\ncarehome.test,Care Home Ltd,2099-01-01\n"
        )
        gateway.proc.send_signal(signal.SIGHUP)
        _wait_log(gateway, "accredited list (1 entries)")
        _send_sensitive(submission, pki, "manager@carehome.test")
        _wait_log(gateway, "('manager@carehome.test', 'deliver', 'verified')")
        good = config.read_text()
        config.write_text(good + "\n[nope]\n")
        gateway.proc.send_signal(signal.SIGHUP)
        _wait_log(gateway, "reload refused")
        assert gateway.running  # the old configuration keeps serving
        _send_sensitive(submission, pki, "manager@carehome.test")
    finally:
        gateway.stop()
    assert gateway.proc.returncode == 0
