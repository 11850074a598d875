"""``securemail serve``'s log, from outside: syslog records, JSON lines, a dead syslog.

Real ``serve`` processes, and a Unix datagram socket bound by the test as the syslog
daemon: what arrives is what rsyslog or journald would get.
"""

from __future__ import annotations

import json
import re
import smtplib
import time

import pytest
from harness.documents import pdf, with_attachment
from harness.gatewaykit import ORG_DOMAIN, write_config
from harness.serve import GatewayProcess, free_port
from harness.syslogd import Daemon

from securemail.gateway.inbound.offload import INLINE_MAX_BYTES

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]  # serve processes: CI lane


def start(tmp_path, pki, dns_server, internal, log: str) -> GatewayProcess:
    inbound, submission = free_port(), free_port()
    config = write_config(
        tmp_path, pki=pki, dns_server=dns_server, delivery_port=25,
        internal_port=internal.port, inbound=f"127.0.0.1:{inbound}",
        submission=f"127.0.0.1:{submission}", extra=f"[log]\n{log}\n",
    )  # fmt: skip
    gateway = GatewayProcess(config, inbound, submission)
    gateway.start()
    return gateway


def send(gateway: GatewayProcess, data: bytes | None = None) -> None:
    """One message in from a partner for one of our users; accepted (250)."""
    data = (
        data
        or (
            f"From: pat@partner.test\r\nTo: jo@{ORG_DOMAIN}\r\nSubject: hi\r\n"
            f"Message-ID: <{time.time_ns()}@partner.test>\r\n\r\nhello\r\n"
        ).encode()
    )
    with smtplib.SMTP("127.0.0.1", gateway.ports[0], timeout=30) as smtp:
        smtp.ehlo("mx.partner.test")
        assert smtp.sendmail("pat@partner.test", [f"jo@{ORG_DOMAIN}"], data) == {}


def wait_for(what: str, found, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := found():
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_syslog_gets_each_line_tagged_and_a_dead_syslog_stops_no_mail(
    tmp_path, pki, dns_server, internal
):
    daemon = Daemon(tmp_path / "log.sock")
    gateway = start(tmp_path, pki, dns_server, internal, f'syslog = "{daemon.path}"')
    try:
        assert gateway.proc is not None
        tag = f"securemail[{gateway.proc.pid}]: ".encode()
        # Mail is accepted by an accept worker ([listen] workers): its own pid, as
        # Postfix's smtpd[PID] lines carry each smtpd's.
        workers = "|".join(map(str, gateway.accept_workers(2)))
        accepted = re.compile(
            rb"<22>securemail\[(?:" + workers.encode() + rb")\]: INFO securemail\.gateway: "
            rb"accepted id="
        )
        send(gateway)
        wait_for("accepted, in syslog", lambda: any(accepted.match(d) for d in daemon.got))
        # run as root with no [service] user: said, as a warning (mail.warning: 20)
        warned = b"<20>" + tag + b"WARNING securemail.gateway: running as root; set [service] user"
        assert any(d.startswith(warned) for d in daemon.got)
        daemon.close()  # syslog goes away: closed and unlinked
        send(gateway)
        send(gateway)
        assert gateway.running
        wait_for("the gateway's note", lambda: "records are not sent there" in log_of(gateway))
        daemon = Daemon(daemon.path)  # and comes back
        time.sleep(1.1)  # reopened at most once a second
        send(gateway)
        wait_for("accepted, in the new syslog", lambda: any(accepted.match(d) for d in daemon.got))
        assert "is reachable again" in log_of(gateway)
    finally:
        gateway.stop()
        daemon.close()
    assert len(internal.wait(4)) == 4  # every message delivered, syslog or not


def log_of(gateway: GatewayProcess) -> str:
    return gateway.log.read_text(errors="replace")


def test_json_lines_everywhere_the_cpu_workers_records_too(tmp_path, pki, dns_server, internal):
    """A PDF whose xref pointer is wrong makes pypdf warn; in a message over the inline
    limit the scan (and so the warning) happens in a CPU worker process."""
    daemon = Daemon(tmp_path / "log.sock")
    gateway = start(
        tmp_path, pki, dns_server, internal, f'format = "json"\nsyslog = "{daemon.path}"'
    )
    broken = re.sub(rb"startxref\s+\d+", b"startxref\n9", pdf("Discharge summary"))
    message = with_attachment(
        broken + b"\n%" + b"x" * INLINE_MAX_BYTES,  # padding after %%EOF: still a PDF
        "letter.pdf", "application/pdf", sender="pat@partner.test", to=f"jo@{ORG_DOMAIN}",
    )  # fmt: skip
    try:
        send(gateway, message)
        internal.wait(1)
    finally:
        gateway.stop()
    lines = [line for line in log_of(gateway).splitlines() if not line.startswith("--- start")]
    entries = [json.loads(line) for line in lines]  # every line: one JSON object
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(e["logger"].startswith("pypdf") for e in entries), lines
    assert any(
        e["message"].startswith("securemail ") and " ready:" in e["message"] for e in entries
    )
    daemon.close()
    prefix = re.compile(rb"<\d+>securemail\[\d+\]: ")
    records = [json.loads(prefix.sub(b"", d, count=1)) for d in daemon.got]
    assert [r["message"] for r in records] == [e["message"] for e in entries]
