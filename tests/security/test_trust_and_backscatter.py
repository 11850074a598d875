"""Issue 10, items 2, 3 and 8, and the RFC 5322 comment case, through the live listeners.

2. A forged Authentication-Results naming our authserv-id *with a version* is removed and
   never sealed into our ARC set; 3. a signed-in user cannot plant the trust mark or our
   Authentication-Results; 8. no backscatter: unknown local users are refused at RCPT, at
   most one DSN per message (headers only, capped), none when SPF or DMARC failed.
"""

import asyncio
import smtplib

import pytest
from harness.gatewaykit import (
    HOSTNAME,
    ORG_DOMAIN,
    add_mx,
    client_context,
    eventually,
    message,
    send_inbound,
    submit,
)
from harness.smtpsink import SinkServer

from securemail.core.message import read_headers
from securemail.gateway.queue.dsn import MAX_RETURNED_HEADERS

pytestmark = pytest.mark.timeout(90)

FORGED_AR = (
    f"Authentication-Results: {HOSTNAME} 1; dkim=pass header.d=nhs.net;\r\n"
    "\tdmarc=pass header.from=nhs.net\r\n"
)


def _fields(data: bytes, name: str) -> list[bytes]:
    return [f.unfolded.strip() for f in read_headers(data).get_all(name)]


def _inbound(sender: str, body_headers: str = "", from_hdr: str | None = None) -> bytes:
    return (
        f"{body_headers}From: {from_hdr or sender}\r\nTo: jo@{ORG_DOMAIN}\r\n"
        "Subject: hello\r\nMessage-ID: <x1@sender.test>\r\n\r\nClinical letter.\r\n"
    ).encode()


async def test_forged_auth_results_with_version_is_stripped_and_not_sealed(
    gateway_factory, dns_server, internal
):
    dns_server.add("sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    gateway = await gateway_factory()
    data = _inbound("a@sender.test", FORGED_AR + "X-Securemail-Trust: secure\r\n")
    assert await asyncio.to_thread(send_inbound, gateway, "a@sender.test", [f"jo@{ORG_DOMAIN}"],
                                   data) == {}  # fmt: skip
    (got,) = await asyncio.to_thread(internal.wait, 1)
    results = _fields(got.data, "authentication-results")
    assert len(results) == 1, results  # ours only
    assert b"header.d=nhs.net" not in results[0] and b"dmarc=pass" not in results[0]
    for arc in _fields(got.data, "arc-authentication-results"):
        assert b"header.d=nhs.net" not in arc and b"header.from=nhs.net" not in arc
    assert _fields(got.data, "x-securemail-trust") == [b"external"]


async def test_signed_in_user_cannot_plant_trust(gateway_factory, internal, pki):
    gateway = await gateway_factory()
    planted = (
        f"X-Securemail-Trust: secure\r\n{FORGED_AR}From: alice@{ORG_DOMAIN}\r\n"
        f"To: jo@{ORG_DOMAIN}\r\nSubject: hi\r\nMessage-ID: <p1@x>\r\n\r\nhello\r\n"
    ).encode()
    refused = await asyncio.to_thread(
        submit, gateway, pki, f"alice@{ORG_DOMAIN}", [f"jo@{ORG_DOMAIN}"],
        planted,
    )  # fmt: skip
    assert refused == {}
    (got,) = await asyncio.to_thread(internal.wait, 1)
    assert _fields(got.data, "authentication-results") == []
    # exactly one trust mark, ours: a signed-in user over TLS
    assert _fields(got.data, "x-securemail-trust") == [b"secure"]


async def test_unknown_local_users_are_refused_at_rcpt(gateway_factory, dns_server, internal, pki):
    """The forged-sender, 100-unknown-users attack: refused at RCPT, nothing bounced."""
    internal.known = {f"jo@{ORG_DOMAIN}"}
    gateway = await gateway_factory()  # [inbound] recipients defaults to "verify"
    victims = [f"user{i}@{ORG_DOMAIN}" for i in range(100)]

    def attack():
        with smtplib.SMTP(*gateway.addresses["inbound"], timeout=30) as smtp:
            smtp.ehlo("mx.sender.test")
            smtp.starttls(context=client_context(pki))  # nhs.net: forced TLS inbound
            smtp.ehlo("mx.sender.test")
            smtp.mail("gp.surgery@nhs.net")
            codes = [smtp.rcpt(v)[0] for v in victims]
            codes.append(smtp.rcpt(victims[0])[0])  # cached: no second probe
            codes.append(smtp.rcpt(f"jo@{ORG_DOMAIN}")[0])
            return codes

    probes_before = len(internal.sessions)
    codes = await asyncio.to_thread(attack)
    assert codes[:101] == [550] * 101 and codes[101] == 250
    assert len(internal.sessions) - probes_before == 101  # 100 unknown + jo; cache hit once
    assert await gateway.spool.list_messages() == []


async def test_recipient_check_failure_is_temporary(gateway_factory, internal):
    internal.stop()  # the internal server is down: we cannot know, so 4xx, never 250
    gateway = await gateway_factory()

    def attempt():
        with smtplib.SMTP(*gateway.addresses["inbound"], timeout=30) as smtp:
            smtp.ehlo("mx.sender.test")
            smtp.mail("a@sender.test")
            return smtp.rcpt(f"jo@{ORG_DOMAIN}")[0]

    assert await asyncio.to_thread(attempt) == 450


async def test_one_dsn_per_message_headers_only_capped(gateway_factory, dns_server, internal, pki):
    ctx = pki.server_context("mx.gmail.test")
    with SinkServer(hostname="mx.gmail.test", tls_context=ctx, reply_code=550) as mx:
        add_mx(dns_server, "gmail.test")
        gateway = await gateway_factory(mx.port)
        big = "X-Padding: " + "p" * 900 + "\r\n"
        data = (
            f"From: alice@{ORG_DOMAIN}\r\nTo: a@gmail.test, b@gmail.test\r\nSubject: hi\r\n"
            f"Message-ID: <b1@x>\r\n{big * 40}\r\n" + "body line\r\n" * 5000
        ).encode()
        rcpts = ["a@gmail.test", "b@gmail.test", "c@gmail.test"]
        assert await asyncio.to_thread(submit, gateway, pki, f"alice@{ORG_DOMAIN}", rcpts,
                                       data) == {}  # fmt: skip
        dsns = await asyncio.to_thread(internal.wait, 1)
        await asyncio.sleep(1.0)  # would a second DSN follow? (it must not)
        assert len(internal.messages) == 1
        dsn = dsns[0].data
        for rcpt in rcpts:
            assert f"<{rcpt}>".encode() in dsn
        assert b"body line" not in dsn
        assert len(dsn) < MAX_RETURNED_HEADERS + 8 * 1024


async def test_no_bounce_to_a_sender_that_failed_spf(gateway_factory, dns_server, internal):
    """Accepted (SPF fail, no DMARC record), then refused by the internal server: the
    forged sender must not get the bounce."""
    dns_server.add("forged.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    add_mx(dns_server, "forged.test")
    gateway = await gateway_factory()
    internal.reply_code = 550
    data = _inbound("victim@forged.test")
    assert await asyncio.to_thread(send_inbound, gateway, "victim@forged.test",
                                   [f"jo@{ORG_DOMAIN}"], data) == {}  # fmt: skip
    await eventually(lambda: internal.rejected)

    async def settled():
        return await gateway.spool.list_messages() == []

    await eventually(settled)
    await asyncio.sleep(0.5)
    internal.reply_code = None
    assert not [m for m in internal.messages if m.mail_from in ("", "<>")]


async def test_from_with_a_comment_is_accepted(gateway_factory, dns_server, internal):
    """``From: a@b (comment)`` is valid RFC 5322; the first version refused it."""
    dns_server.add("sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    gateway = await gateway_factory()
    data = _inbound("a@sender.test", from_hdr="a@sender.test (Alice Example)")
    assert await asyncio.to_thread(send_inbound, gateway, "a@sender.test", [f"jo@{ORG_DOMAIN}"],
                                   data) == {}  # fmt: skip
    (got,) = await asyncio.to_thread(internal.wait, 1)
    assert b"header.from=sender.test" in b"".join(_fields(got.data, "authentication-results"))


def test_message_helper_is_well_formed():
    assert read_headers(message()).malformed == ""
