"""Issue 10, item 6: one message must not stall the gateway.

A Subject of 200,000 encoded-words once stopped all logging and delivery for 72 s. The
header limits in ``core.message`` ended that one; what follows are the worst messages the
gateway still accepts (under 10 MB, at most 1,000 header fields and 1 MiB of them), each
a different CPU-heavy step, each measured at sec-base as stalling the event loop:

* ``arc_chain``: 330 complete ARC sets over a 9 MB body. dkimpy hashes the whole body
  once per set: five minutes of one core, the worst found;
* ``dkim_h``: one DKIM-Signature whose ``h=`` names 100,000 absent fields (the body hash
  right, the key published): each name is looked for in every field, ~15 s;
* ``mime_parts``: 100,000 small MIME parts: the sensitivity scan's stdlib parser, ~15 s.

Through a real ``securemail serve`` process (so a stall there cannot stall the test):
while one client sends the message, a second connects and sends EHLO and NOOP over and
over; every reply, the greeting included, must come within a second, and the first
client must get an answer (accepted, or refused with a reason), after which an ordinary
message still goes through. The budget is 5 s here (20 s by default), set through the
environment so that the test runs, and fails, on code without the setting too.
"""

import base64
import hashlib
import re
import smtplib
import threading
import time

import pytest
from dkim.canonicalization import CanonicalizationPolicy
from harness.gatewaykit import ORG_DOMAIN, PASSWORD, write_config
from harness.serve import GatewayProcess, free_port

from securemail.gateway.inbound.users import add_user
from securemail.mech.dkim import generate_key

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]  # serve process, worst-case messages

BUDGET = 5
MAX_SIZE = 10 * 1024 * 1024
REPLY_BOUND = 1.0  # seconds: the demand on reply latency
PARTNER = "partner.test"
SENDER = f"pat@{PARTNER}"
RCPT = f"jo@{ORG_DOMAIN}"
HEAD = (
    f"From: Pat <{SENDER}>\r\nTo: {RCPT}\r\nSubject: results\r\n"
    f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <stall@{PARTNER}>\r\n"
).encode()
LINE = b"Results follow, line after line of them. " * 24 + b"\r\n"  # < 998 bytes
SIG = base64.b64encode(bytes(256))


def body(size: int) -> bytes:
    return LINE * (size // len(LINE))


def arc_chain() -> bytes:
    sets = []
    for i in range(330, 0, -1):
        cv = b"none" if i == 1 else b"pass"
        sets += [
            b"ARC-Seal: i=%d; a=rsa-sha256; cv=%s; d=%s; s=s1; t=1; b=%s\r\n"
            % (i, cv, PARTNER.encode(), SIG),
            b"ARC-Message-Signature: i=%d; a=rsa-sha256; c=relaxed/relaxed; d=%s; s=s1;"
            b" t=1; h=from:to:subject; bh=%s; b=%s\r\n"
            % (i, PARTNER.encode(), base64.b64encode(bytes(32)), SIG),
            b"ARC-Authentication-Results: i=%d; mx.%s; spf=pass smtp.mailfrom=%s\r\n"
            % (i, PARTNER.encode(), SENDER.encode()),
        ]
    head = b"".join(sets) + HEAD
    return head + b"\r\n" + body(MAX_SIZE - len(head) - 4096)


def dkim_h() -> bytes:
    text = body(10_000)
    canonical = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed").canonicalize_body(text)
    names = b"from:" + b":".join(b"x%x" % i for i in range(100_000))
    folded = b"\r\n\t".join(names[i : i + 900] for i in range(0, len(names), 900))
    signature = (
        b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=%s; s=s1; t=1;\r\n\th=%s;\r\n"
        b"\tbh=%s; b=%s\r\n"
        % (PARTNER.encode(), folded, base64.b64encode(hashlib.sha256(canonical).digest()), SIG)
    )
    return signature + HEAD + b"\r\n" + text


def mime_parts() -> bytes:
    head = HEAD + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n"
    part = b"--b\r\n\r\n" + b"Part of the results. " * 4 + b"\r\n"  # text/plain by default
    return head + b"\r\n" + part * 100_000 + b"--b--\r\n"


WORST = {"arc_chain": (arc_chain, {451}), "dkim_h": (dkim_h, {250, 451}),
         "mime_parts": (mime_parts, {250, 451})}  # fmt: skip


@pytest.fixture
def serve(tmp_path, pki, dns_server, internal):
    _, record = generate_key("rsa", 2048)
    dns_server.add(f"s1._domainkey.{PARTNER}", "TXT", record)
    dns_server.add(PARTNER, "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add(f"_dmarc.{PARTNER}", "TXT", "v=DMARC1; p=none")
    inbound, submission = free_port(), free_port()
    path = write_config(tmp_path, pki=pki, dns_server=dns_server, delivery_port=free_port(),
                        internal_port=internal.port, inbound=f"127.0.0.1:{inbound}",
                        submission=f"127.0.0.1:{submission}")  # fmt: skip
    path.write_text(
        path.read_text().replace("max_message_size = 200000", f"max_message_size = {MAX_SIZE}")
    )
    add_user(tmp_path / "users.toml", "alice", PASSWORD)
    gateway = GatewayProcess(
        path, inbound, submission, {"SECUREMAIL_LISTEN_CPU_BUDGET": f"{BUDGET}"}
    )
    gateway.start()
    yield gateway
    gateway.stop()


def send(port: int, data: bytes, started: threading.Event | None = None) -> tuple[int, bytes]:
    """The first client: one message; its final reply (code, text)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=BUDGET + 60) as smtp:
        smtp.ehlo("mx.partner.test")
        if started is not None:
            started.set()
        try:
            smtp.sendmail(SENDER, [RCPT], data)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error
        return 250, b""


def watch(port: int, done: threading.Event) -> list[tuple[str, float]]:
    """The second client: connect, then EHLO and NOOP until ``done``; each reply's wait."""
    waits: list[tuple[str, float]] = []
    start = time.monotonic()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            waits.append(("greeting", time.monotonic() - start))
            while not done.is_set():
                for verb, command in (("EHLO", lambda: smtp.ehlo("watcher.test")),
                                      ("NOOP", smtp.noop)):  # fmt: skip
                    start = time.monotonic()
                    code, _ = command()
                    waits.append((f"{verb} {code}", time.monotonic() - start))
                time.sleep(0.05)
    except (OSError, smtplib.SMTPException) as exc:  # no reply within 10 s
        waits.append((f"no reply: {exc!r}", time.monotonic() - start))
    return waits


@pytest.mark.parametrize("name", WORST)
def test_worst_accepted_message_does_not_stall_other_clients(name, serve, internal):
    build, expected = WORST[name]
    data = build()
    assert len(data) < MAX_SIZE and data.count(b"\r\n\r\n") >= 1
    port = serve.ports[0]
    started, done = threading.Event(), threading.Event()
    outcome: list[tuple[int, bytes]] = []
    sender = threading.Thread(target=lambda: outcome.append(send(port, data, started)))
    sender.start()
    assert started.wait(30)
    waits: list[tuple[str, float]] = []
    watcher = threading.Thread(target=lambda: waits.extend(watch(port, done)))
    watcher.start()
    sender.join(BUDGET + 90)
    done.set()
    watcher.join(30)

    slow = [(what, round(wait, 2)) for what, wait in waits if wait >= REPLY_BOUND]
    assert slow == [], f"replies slower than {REPLY_BOUND} s while {name} was handled"
    assert len(waits) >= 10  # the watcher was answered all along, not just once
    assert all(what in ("greeting", "EHLO 250", "NOOP 250") for what, _ in waits)
    assert outcome, f"no reply to the {name} message"
    code, text = outcome[0]
    assert code in expected, (code, text)
    if code != 250:
        assert re.fullmatch(rb"4\.3\.0 Message could not be checked in time; try again later",
                            text)  # fmt: skip
        assert "check=cpu-budget" in serve.log.read_text()

    # The gateway is still itself: an ordinary message goes through at once.
    assert send(port, HEAD + b"\r\nThe usual.\r\n") == (250, b"")
    internal.wait_until(lambda sink: any(b"The usual." in m.data for m in sink.messages))
