"""Envelope attacks through the inbound listener: stuck retries (issue item 16), bare
postmaster (RFC 5321 §4.5.1) and routing in local parts (issue item 1, HIGH).

* The same RCPT twice, or an EHLO name that is not UTF-8, gave ``451`` at the end of
  DATA on every retry, so the message was never accepted. A repeated recipient is now
  one recipient, and an EHLO/HELO name is refused at once (``501``) only when it is not
  printable ASCII: never a 4xx, never because it names the wrong host.
* ``RCPT TO:<postmaster>`` (no domain) must be accepted: it goes to the postmaster of
  our first domain.
* ``victim%gmail.test@us``, ``gmail.test!victim@us`` and ``"victim@gmail.test"@us`` were
  accepted, and a default Postfix behind us routes them to gmail.test: an open relay.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket

import pytest
from harness.gatewaykit import ORG_DOMAIN, message, start_gateway, write_config
from harness.postfix import postfix_receiver, require_tools

pytestmark = pytest.mark.timeout(60)

SENDER = "someone@sender.test"


@pytest.fixture
async def gateway(gateway_factory):
    return await gateway_factory()


def _dialogue(address: tuple[str, int], lines: list[bytes]) -> list[bytes]:
    """Raw SMTP: each line sent, the last line of each reply kept."""
    with socket.create_connection(address, timeout=10) as s:
        f = s.makefile("rwb")
        f.readline()
        replies = []
        for line in lines:
            f.write(line + b"\r\n")
            f.flush()
            reply = f.readline()
            while reply[3:4] == b"-":
                reply = f.readline()
            replies.append(reply)
        return replies


def _send(
    address: tuple[str, int], helo: bytes, rcpts: list[str], *more_helo: bytes
) -> list[bytes]:
    """One message; each EHLO name is tried in turn (the last must be accepted)."""
    body = message(to=rcpts[0]).replace(b"\r\n.", b"\r\n..") + b".\r\n"
    lines = [b"EHLO " + name for name in (helo, *more_helo)]
    lines += [f"MAIL FROM:<{SENDER}>".encode()]
    lines += [f"RCPT TO:<{rcpt}>".encode() for rcpt in rcpts]
    return _dialogue(address, [*lines, b"DATA", body[:-2], b"QUIT"])


async def test_duplicate_rcpt_is_not_a_stuck_retry(gateway, internal):
    jo = f"jo@{ORG_DOMAIN}"
    replies = await asyncio.to_thread(
        _send, gateway.addresses["inbound"], b"mx.sender.test", [jo, jo, f"jo@{ORG_DOMAIN.upper()}"]
    )
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"250", b"250", b"354", b"250",
                                        b"221"], replies  # fmt: skip
    received = await asyncio.to_thread(internal.wait, 1)
    assert received[0].rcpt_tos == [jo]


@pytest.mark.parametrize(
    ("name", "then"),
    [
        (b"\xff\xfe.sender.test", b"[192.0.2.1]"),
        (b"mx.s\xc3\xa9nder.test", b"not_a-hostname..at all"),
        (b"mx\x01.test", b"localhost"),
    ],
)
async def test_non_ascii_ehlo_refused_501_not_stuck(gateway, internal, name, then):
    """Refused at once (5xx, so the client does not retry the same), while any printable
    name is accepted as it is (RFC 5321 §4.1.4: never refused for naming the wrong host)."""
    address = gateway.addresses["inbound"]
    refused = await asyncio.to_thread(
        _dialogue, address, [b"HELO " + name, f"MAIL FROM:<{SENDER}>".encode()]
    )
    assert refused[0] == b"501 5.5.2 Invalid domain name\r\n", refused
    assert refused[1].startswith(b"503"), refused  # no session without a name
    replies = await asyncio.to_thread(_send, address, name, [f"jo@{ORG_DOMAIN}"], then)
    assert replies[0] == b"501 5.5.2 Invalid domain name\r\n", replies
    assert replies[-2].startswith(b"250 2.0.0"), replies
    received = await asyncio.to_thread(internal.wait, 1)
    header = received[0].data.split(b"\r\n\r\n")[0]
    assert b"Received: from " + then.replace(b" ", b"?") in header  # spaces as "?" there


async def test_bare_postmaster_accepted_and_delivered(gateway, internal):
    host, port = gateway.addresses["inbound"]

    def send() -> dict:
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            smtp.ehlo("mx.sender.test")
            return smtp.sendmail(SENDER, ["Postmaster"], message(to="postmaster"))

    assert await asyncio.to_thread(send) == {}
    received = await asyncio.to_thread(internal.wait, 1)
    assert received[0].rcpt_tos == [f"postmaster@{ORG_DOMAIN}"]


ROUTED = [
    f"victim%gmail.test@{ORG_DOMAIN}",
    f"gmail.test!victim@{ORG_DOMAIN}",
    f'"victim@gmail.test"@{ORG_DOMAIN}',
]


@pytest.mark.parametrize("rcpt", ROUTED)
async def test_routing_in_local_part_refused(gateway, internal, rcpt):
    replies = await asyncio.to_thread(
        _dialogue,
        gateway.addresses["inbound"],
        [b"EHLO mx.sender.test", f"MAIL FROM:<{SENDER}>".encode(), f"RCPT TO:<{rcpt}>".encode()],
    )
    assert replies[-1] == b"550 5.7.1 Sender-specified routing is not allowed\r\n", replies
    assert b"victim" not in bytes(internal.plaintext)  # not even asked about


@pytest.mark.slow
async def test_routing_in_local_part_never_reaches_postfix(tmp_path, postfix_tmp, pki, dns_server):
    """The issue's scenario: a Postfix for our domain, with its defaults, as the internal
    server. It would route each form to gmail.test; none gets past RCPT, and a plain
    recipient in the same session still arrives as itself."""
    require_tools("postfix")
    with postfix_receiver(
        postfix_tmp, pki, postfix_tmp / "mailbox", hostname="internal.example.nhs.uk",
        tls=False, main_cf={"mydestination": ORG_DOMAIN},
    ) as postfix:  # fmt: skip
        path = write_config(
            tmp_path, pki=pki, dns_server=dns_server, delivery_port=25,
            internal_port=postfix.port,
        )  # fmt: skip
        gateway = await start_gateway(path)
        try:
            rcpts = [*ROUTED, f"jo@{ORG_DOMAIN}"]
            replies = await asyncio.to_thread(
                _send, gateway.addresses["inbound"], b"mx.sender.test", rcpts
            )
            assert [r[:3] for r in replies[2:5]] == [b"550"] * 3, replies
            assert replies[-2].startswith(b"250 2.0.0"), replies
            await asyncio.to_thread(postfix.wait_received, 1, 60)
        finally:
            await gateway.stop(grace=5)
    assert [d.recipients for d in postfix.deliveries()] == [(f"jo@{ORG_DOMAIN}",)]
