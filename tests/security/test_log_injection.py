"""Issue 10, item 13: nothing a peer sends can forge a line in the gateway's log.

A real ``securemail serve`` process; its stderr is the log an operator reads.
"""

import base64
import smtplib

import pytest
from harness.gatewaykit import PASSWORD, client_context, write_config
from harness.serve import GatewayProcess, free_port

from securemail.gateway.inbound.users import add_user

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]  # processes: CI lane

FAKE = "2026-11-30 10:00:00,000 INFO securemail.gateway: accepted id=FORGED"


def test_crlf_in_auth_name_and_ehlo_stays_on_one_line(tmp_path, pki, dns_server, internal):
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
        with smtplib.SMTP("127.0.0.1", submission, timeout=30) as smtp:
            smtp.ehlo("client.test")
            smtp.starttls(context=client_context(pki))
            smtp.ehlo("client.test")
            token = base64.b64encode(f"\0evil\r\n{FAKE}\r\n\0wrong".encode()).decode()
            code, _ = smtp.docmd("AUTH", f"PLAIN {token}")
            assert code == 535
        with smtplib.SMTP("127.0.0.1", inbound, timeout=30) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("a@sender.test")
            # a recipient a relay check refuses and logs, with an escape sequence in it
            code, _ = smtp.rcpt('"x\x1b[2Jy"@gmail.test')
            assert code >= 500
    finally:
        gateway.stop()
    log = gateway.log.read_text(errors="replace")
    assert "auth failed user=evil" in log
    assert not any(line.startswith(FAKE) for line in log.splitlines()), log
    assert "\x1b" not in log
    assert "\\x0d\\x0a" in log  # the CR/LF is there, visibly escaped
