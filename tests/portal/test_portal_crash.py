"""The portal survives a SIGKILL of ``securemail serve`` in the middle of storing mail.

Sensitive messages for recipients not known to be secure go to the portal: the 250
comes only after the encrypted copy is committed, and the recipient's notice is queued
after the 250. So the gateway is killed while a client sends portal-bound messages
(soon after some got 250: some notices queued, some not), restarted, and:

- every message that got 250 is in the portal (``securemail portal list --json``);
- its recipient gets a notice with a link that opens it. The design is AT LEAST ONCE,
  not exactly once (``Portal.renotify``): a link whose notice was not yet marked queued
  when the process died gets a NEW token and a new notice at start. If the first notice
  had in fact reached the spool just before the kill, it is delivered too, but its token
  was replaced, so its link opens nothing. (The same notice can also arrive twice: the
  spool's own duplicate window when a delivery's 250 beats the kill, tests/gateway/
  test_crash.py.) Checked: at least one notice, exactly one working link among the
  distinct links, and it is in the newest notice;
- no message's text is on disk in the clear, in any encoding (``harness.portal_gateway``).

Each message has its own recipient and its own body string, so each is traced alone.
"""

from __future__ import annotations

import asyncio
import json
import random
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from harness.gatewaykit import ORG_DOMAIN, add_mx, write_config
from harness.portal_gateway import PORTAL_SECTION, link_tokens, plaintext_on_disk
from harness.serve import ENV, SECUREMAIL, GatewayProcess, free_port
from harness.smtpsink import SinkServer

from securemail.config import load_config
from securemail.portal import Access, Portal, ensure_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SENDER = f"alice@{ORG_DOMAIN}"
ROUNDS = 2  # kill, restart, send again, kill again: the second start finds the first's work
PER_ROUND = 12


def rcpt(n: int) -> str:
    return f"carer{n}@gmail.test"


def body_string(n: int) -> str:
    return f"okapi-{n:03d}-mid-store-unique-body"


def message(n: int) -> bytes:
    return (
        f"From: Dr Alice <{SENDER}>\r\nTo: {rcpt(n)}\r\nSubject: Patient discharge {n}\r\n"
        f"Message-ID: <crash-{n}@{ORG_DOMAIN}>\r\n\r\nOFFICIAL-SENSITIVE\r\n{body_string(n)}\r\n"
    ).encode()


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


class Client(threading.Thread):
    """Sends messages ``numbers`` one per connection (a relay client, no TLS) and keeps
    those that got 250; errors once ``killed`` is set are the kill's doing."""

    def __init__(self, port: int, numbers: list[int]) -> None:
        super().__init__(name="portal-crash-client", daemon=True)
        self.port = port
        self.numbers = numbers
        self.accepted: list[int] = []
        self.errors: list[str] = []
        self.killed = threading.Event()

    def run(self) -> None:
        for n in self.numbers:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=15) as smtp:
                    smtp.sendmail(SENDER, [rcpt(n)], message(n))
            except (smtplib.SMTPException, OSError) as exc:
                if self.killed.is_set():
                    return  # the gateway is gone; this message does not count
                self.errors.append(f"{n}: {exc!r}")
                continue
            self.accepted.append(n)


@pytest.fixture
def rig(tmp_path, pki, dns_server) -> Iterator[tuple[GatewayProcess, SinkServer]]:
    for domain in ("nhs.net", "gmail.test"):
        add_mx(dns_server, domain)
    ensure_key(tmp_path / "portal.key")
    mx_ctx = pki.server_context("mx.gmail.test")
    with (
        SinkServer(hostname="internal.example.nhs.uk") as internal,
        SinkServer(hostname="mx.gmail.test", tls_context=mx_ctx) as mx,
    ):
        inbound, submission = free_port(), free_port()
        while submission == inbound:
            submission = free_port()
        config = write_config(
            tmp_path, pki=pki, dns_server=dns_server, delivery_port=mx.port,
            internal_port=internal.port, inbound=f"127.0.0.1:{inbound}",
            submission=f"127.0.0.1:{submission}", extra=PORTAL_SECTION,
        )  # fmt: skip
        # Loopback relays through the inbound listener, as an internal server would.
        text = config.read_text()
        config.write_text(text.replace("[relay]\n", '[relay]\nnetworks = ["127.0.0.1/32"]\n', 1))
        gateway = GatewayProcess(config, inbound, submission)
        try:
            yield gateway, mx
        finally:
            gateway.stop()


def notices(mx: SinkServer, to: str) -> list[bytes]:
    return [m.data for m in list(mx.messages) if to in m.rcpt_tos]


def portal_list(config: Path) -> list[dict]:
    done = subprocess.run(
        [*SECUREMAIL, "portal", "list", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False, cwd=config.parent, env=ENV,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


async def working_links(config: Path, tokens: list[str]) -> list[str]:
    """The tokens that open their message, asked of the portal database directly."""
    portal = Portal.open(load_config(config, environ={}).portal)
    await portal.start()
    try:
        return [t for t in tokens if isinstance(await portal.access(t), Access)]
    finally:
        await portal.close()


def test_sigkill_mid_store_loses_no_portal_message_and_leaves_no_plaintext(rig, tmp_path):
    gateway, mx = rig
    rng = random.Random()
    accepted: list[int] = []
    for round_ in range(ROUNDS):
        gateway.start()
        numbers = list(range(round_ * PER_ROUND, (round_ + 1) * PER_ROUND))
        client = Client(gateway.ports[0], numbers)
        client.start()
        kill_after = rng.randint(2, 5)  # a few 250s, then a kill mid-dialogue or mid-notice
        wait_for(lambda c=client, k=kill_after: len(c.accepted) >= k or not c.is_alive(), 60,
                 f"{kill_after} messages accepted")  # fmt: skip
        time.sleep(rng.uniform(0, 0.03))
        client.killed.set()
        gateway.kill()
        client.join(30)
        assert not client.is_alive() and client.errors == [], client.errors
        assert len(client.accepted) >= kill_after
        accepted += client.accepted
    gateway.start()  # renotify runs at start: interrupted notices go out now

    wait_for(lambda: all(notices(mx, rcpt(n)) for n in accepted), 60,
             "a notice for every accepted message")  # fmt: skip
    time.sleep(1.0)  # a duplicate from the spool, if any, arrives with the rest
    gateway.stop()

    listed = portal_list(gateway.config)
    in_portal = {r for m in listed for r in m["recipients"] if m["state"] == "active"}
    assert {rcpt(n) for n in accepted} <= in_portal, gateway.tail()
    for n in accepted:
        got = notices(mx, rcpt(n))
        assert got and all(len(link_tokens(notice)) == 1 for notice in got)
        tokens = list(dict.fromkeys(t for notice in got for t in link_tokens(notice)))
        working = asyncio.run(working_links(gateway.config, tokens))
        assert len(working) == 1, f"{rcpt(n)}: {len(tokens)} links, {len(working)} working"
        dates = [parsedate_to_datetime(_header(m, b"Date")) for m in got]
        newest = [t for m, d in zip(got, dates, strict=True) if d == max(dates)
                  for t in link_tokens(m)]  # fmt: skip
        assert working[0] in newest, f"{rcpt(n)}: an older notice's link still works"
    attempted = range(ROUNDS * PER_ROUND)
    assert plaintext_on_disk(tmp_path, [body_string(n) for n in attempted]) == []
    resent = gateway.log.read_text(errors="replace").count("re-sent")
    print(f"accepted {len(accepted)}; notices re-sent at start: {resent} lines")


def _header(data: bytes, name: bytes) -> str:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(name.lower() + b":"):
            return line.split(b":", 1)[1].strip().decode()
    raise AssertionError(f"no {name!r} header")
