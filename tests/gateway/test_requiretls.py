"""REQUIRETLS on delivery (RFC 8689), against real peers: the flag travels or the mail bounces.

A message whose sender set REQUIRETLS goes only over verified TLS to a next hop that
offers REQUIRETLS after STARTTLS, with the flag passed on; every MX is tried first
(§4.2.1), and when none qualifies the recipient bounces with 5.7.30 and the sender's
notice carries nothing of the message (§5). The Postfix case is a real MTA that does
not offer it, end to end through a gateway.
"""

import asyncio
import email
import time

import pytest
from harness.gatewaykit import ORG_DOMAIN, add_mx, eventually, start_gateway, write_config
from harness.postfix import postfix_receiver, require_tools
from harness.smtpsink import SinkServer

from securemail.core.levels import TlsLevel
from securemail.core.transport import TransportFacts
from securemail.dns import Resolver
from securemail.gateway.outbound.deliver import Deliverer, Item
from securemail.gateway.queue.dsn import build_dsn, status_code
from securemail.gateway.queue.manager import transport_facts
from securemail.gateway.spool import Delivery, NewMessage, NewRecipient, RcptStatus
from securemail.tls import opportunistic_client_context, verified_client_context

pytestmark = pytest.mark.timeout(60)

DOMAIN = "partner.example"
MX = f"mx.{DOMAIN}"
SENDER = f"jo@{ORG_DOMAIN}"
BODY = b"Subject: discharge summary for Mrs Smith\r\n\r\nconfidential clinical letter body\r\n"
FLAGGED = TransportFacts(TlsLevel.OPPORTUNISTIC, requiretls=True)


async def deliver(dns_server, pki, port, *, sender=SENDER, facts=FLAGGED):
    d = Deliverer(
        Resolver([dns_server.nameserver], timeout=5),
        helo="mail.example.nhs.uk",
        port=port,
        verified=verified_client_context(pki.ca_file),
        opportunistic=opportunistic_client_context(),
    )
    item = Item("Q1", sender, (f"gp@{DOMAIN}",), BODY, requiretls=True)
    try:
        return await d.deliver(DOMAIN, facts, [item])
    finally:
        await d.close()


async def test_a_next_hop_offering_requiretls_gets_the_flag_passed_on(dns_server, pki):
    add_mx(dns_server, DOMAIN, MX)
    with SinkServer(hostname=MX, tls_context=pki.server_context(MX), requiretls=True) as sink:
        [result] = await deliver(dns_server, pki, sink.port)
        [received] = sink.wait(1)
    assert result.delivered and result.verified_by == "pkix:mx-hostname"
    assert result.transport == "tls=required (REQUIRETLS)"
    assert "REQUIRETLS" in received.mail_options and received.tls_version is not None


async def test_every_mx_is_tried_before_giving_up(dns_server, pki):
    """RFC 8689 §4.2.1: a host without REQUIRETLS is left for the next MX, not bounced."""
    dns_server.add(DOMAIN, "MX", f"10 {MX}.", f"20 mx2.{DOMAIN}.")
    dns_server.add(MX, "A", "127.0.0.1")
    dns_server.add(f"mx2.{DOMAIN}", "A", "127.0.0.2")
    both = pki.server_context(MX, f"mx2.{DOMAIN}")
    with (
        SinkServer(hostname=MX, tls_context=both) as without,
        SinkServer(hostname=MX, tls_context=both, requiretls=True, host="127.0.0.2",
                   port=without.port) as offering,
    ):  # fmt: skip
        [result] = await deliver(dns_server, pki, without.port)
        [received] = offering.wait(1)
        assert without.messages == [] and without.sessions  # asked, refused, nothing sent
    assert result.delivered and "REQUIRETLS" in received.mail_options


@pytest.mark.parametrize(
    ("offer_tls", "code"),
    [(True, "5.7.30 REQUIRETLS support required"), (False, "5.7.10 Encryption needed")],
)
async def test_no_qualifying_next_hop_bounces_and_sends_nothing(offer_tls, code, dns_server, pki):
    add_mx(dns_server, DOMAIN, MX)
    context = pki.server_context(MX) if offer_tls else None
    with SinkServer(hostname=MX, tls_context=context) as sink:
        [result] = await deliver(dns_server, pki, sink.port)
        assert sink.sessions, "the server was asked"
    assert (result.delivered, result.permanent) == (False, True)  # bounced, not deferred
    assert result.detail.startswith(f"{code}: no mail server for {DOMAIN}")
    assert result.tls_failure is not None
    assert sink.messages == [] and b"MAIL FROM" not in bytes(sink.plaintext)


@pytest.mark.parametrize("offered", [True, False])
async def test_our_internal_server_is_held_to_the_same_rule(offered, dns_server, pki):
    """Own domains go to ``[inbound] deliver_to`` by address, so its certificate must
    name that address, and it too must offer REQUIRETLS."""
    context = pki.server_context("127.0.0.1")
    with SinkServer(hostname="internal", tls_context=context, requiretls=offered) as sink:
        d = Deliverer(
            Resolver([dns_server.nameserver], timeout=5),
            helo="mail.example.nhs.uk",
            port=25,
            verified=verified_client_context(pki.ca_file),
            opportunistic=opportunistic_client_context(),
            internal={ORG_DOMAIN: ("127.0.0.1", sink.port)},
        )
        item = Item("Q1", SENDER, (f"bob@{ORG_DOMAIN}",), BODY, requiretls=True)
        try:
            [result] = await d.deliver(ORG_DOMAIN, FLAGGED, [item])
        finally:
            await d.close()
    assert result.delivered is offered and result.permanent is not offered
    if offered:
        assert "REQUIRETLS" in sink.messages[0].mail_options
    else:
        assert result.detail.startswith("5.7.30 REQUIRETLS support required")
        assert sink.messages == []


async def test_an_unreachable_mx_defers_rather_than_bounces(dns_server, pki):
    """Only when every MX host was asked and said no is it a bounce: an MX that could not
    be reached may well offer REQUIRETLS when it is back."""
    dns_server.add(DOMAIN, "MX", f"10 {MX}.", f"20 mx2.{DOMAIN}.")
    dns_server.add(MX, "A", "127.0.0.1")
    dns_server.add(f"mx2.{DOMAIN}", "A", "127.0.0.3")  # nothing listens there
    with SinkServer(hostname=MX, tls_context=pki.server_context(MX)) as sink:
        [result] = await deliver(dns_server, pki, sink.port)
    assert (result.delivered, result.permanent) == (False, False)


def test_a_bounce_is_not_bounced_for_requiretls():
    """RFC 8689 §4.2.1 binds messages with a return path; a null-sender message keeps its
    flag for the next hop (``Item.requiretls``) but is decided on its recipient's level."""
    flagged = Delivery("Q1", "", f"gp@{DOMAIN}", DOMAIN, TlsLevel.OPPORTUNISTIC, 0, 0.0, 10,
                       requiretls=True)  # fmt: skip
    assert transport_facts(flagged) == TransportFacts(TlsLevel.OPPORTUNISTIC)
    secure = Delivery("Q2", SENDER, "gp@nhs.net", "nhs.net", TlsLevel.VERIFIED, 0, 0.0, 10,
                      requiretls=True, reason="secure recipient: deliver only over verified TLS")  # fmt: skip
    assert transport_facts(secure) == TransportFacts(
        TlsLevel.VERIFIED, why="secure recipient", requiretls=True
    )


# --- the sender's notice: nothing of the message --------------------------------------


def test_a_notice_about_a_requiretls_message_is_redacted():
    failures = [(f"gp@{DOMAIN}", "5.7.30 REQUIRETLS support required: no mail server")]
    dsn = build_dsn(hostname="mail.example.nhs.uk", sender=SENDER, queue_id="Q1",
                    failures=failures, original=BODY, arrival=0.0, redacted=True)  # fmt: skip
    assert b"Mrs Smith" not in dsn and b"confidential" not in dsn
    assert b"text/rfc822-headers" not in dsn
    assert b"Status: 5.7.30" in dsn and b"REQUIRETLS" in dsn
    plain = build_dsn(hostname="mail.example.nhs.uk", sender=SENDER, queue_id="Q1",
                      failures=failures, original=BODY, arrival=0.0)  # fmt: skip
    assert b"text/rfc822-headers" in plain and b"confidential" not in plain


@pytest.mark.parametrize(
    ("diagnostic", "default", "status"),
    [
        ("5.7.30 REQUIRETLS support required: x", "5.0.0", "5.7.30"),
        ("mx[192.0.2.7]:25 said 550 5.1.1 <gp@x>: user unknown", "5.0.0", "5.1.1"),
        ("mx[10.5.2.7]:25 said 550 no enhanced code", "5.0.0", "5.0.0"),  # not the address
        ("gave up after 5.0 days: mx said 451 4.3.0 try later", "5.0.0", "5.0.0"),
        ("TLS is required but mx did not offer STARTTLS", "4.7.5", "4.7.5"),
    ],
)
def test_each_recipients_status_is_its_own_enhanced_code(diagnostic, default, status):
    assert status_code(diagnostic, default) == status


# --- end to end: a real Postfix that does not offer REQUIRETLS ---------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_postfix_without_requiretls_gets_nothing_and_the_sender_a_5_7_30_notice(
    tmp_path, postfix_tmp, pki, dns_server, internal
):
    require_tools("postfix")
    add_mx(dns_server, DOMAIN, MX)
    with postfix_receiver(postfix_tmp, pki, postfix_tmp / "mailbox", hostname=MX) as mx:
        path = write_config(tmp_path, pki=pki, dns_server=dns_server, delivery_port=mx.port,
                            internal_port=internal.port)  # fmt: skip
        gateway = await start_gateway(path)
        try:
            rcpt = NewRecipient(f"gp@{DOMAIN}", DOMAIN, RcptStatus.QUEUED, TlsLevel.OPPORTUNISTIC,
                                "recipient not known to be secure, message not sensitive")  # fmt: skip
            await gateway.spool.store(
                NewMessage(SENDER, (rcpt,), BODY, received=time.time(), requiretls=True)
            )
            gateway.queue.wake()
            [notice] = await asyncio.to_thread(internal.wait, 1, 60)  # the DSN, to our sender
            await eventually(lambda: _empty(gateway), 30)  # bounced, so no longer queued
            log = await asyncio.to_thread(mx.log)
        finally:
            await gateway.stop(grace=5)
        assert mx.received() == []
        assert "TLS connection established from" in log  # asked over verified TLS, then QUIT
    assert notice.rcpt_tos == [SENDER]
    report = email.message_from_bytes(notice.data)
    assert "Undelivered Mail" in report["Subject"]
    assert b"Status: 5.7.30" in notice.data
    assert b"5.7.30 REQUIRETLS support required" in notice.data
    assert b"Mrs Smith" not in notice.data and b"confidential" not in notice.data


async def _empty(gateway):
    return not await gateway.spool.list_messages()
