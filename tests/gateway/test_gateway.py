"""The gateway end to end on loopback: real SMTP clients, real DNS, real TLS, real sinks."""

import asyncio
import datetime as dt
import smtplib
import socket

import pytest
from harness.gatewaykit import (
    ORG_DOMAIN,
    PASSWORD,
    add_mx,
    client_context,
    eventually,
    message,
    rcpt_states,
    send_inbound,
    submit,
)
from harness.smtpsink import SinkServer
from harness.strip_proxy import StripTLSProxy

from securemail.gateway.spool import Decision

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def mx(pki):
    """A recipient MX with a certificate for every test MX name, from the test CA."""
    ctx = pki.server_context("mx.nhs.net", "mx.gmail.test", "mx.dwp.gov.uk")
    with SinkServer(hostname="mx.nhs.net", tls_context=ctx) as sink:
        yield sink


@pytest.fixture
async def gateway(gateway_factory, mx, dns_server):
    for domain in ("nhs.net", "gmail.test", "dwp.gov.uk"):
        add_mx(dns_server, domain)
    return await gateway_factory(mx.port)


async def test_secure_recipient_gets_verified_tls(gateway, mx, pki):
    refused = await asyncio.to_thread(
        submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["bob@nhs.net"], message(to="bob@nhs.net")
    )
    assert refused == {}
    received = await asyncio.to_thread(mx.wait, 1)
    assert received[0].rcpt_tos == ["bob@nhs.net"]
    assert received[0].tls_version in ("TLSv1.2", "TLSv1.3")
    assert b"Just a note." in received[0].data
    assert b"by mail.example.nhs.uk (securemail) with ESMTPSA" in received[0].data
    await eventually(lambda: gateway.spool.counts())
    assert bytes(mx.plaintext).find(b"Just a note.") == -1


async def test_auth_refused_without_tls(gateway):
    host, port = gateway.addresses["submission"]

    def attempt():
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            smtp.ehlo("client.test")
            code, text = smtp.docmd("AUTH", "PLAIN AGFsaWNlAGNvcnJlY3Q=")
            mail = smtp.docmd("MAIL", "FROM:<alice@example.nhs.uk>")
            return code, text, mail

    code, text, mail = await asyncio.to_thread(attempt)
    assert code == 530 and b"STARTTLS" in text
    assert mail[0] == 530


async def test_submission_requires_auth(gateway, pki):
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        await asyncio.to_thread(
            submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["bob@nhs.net"], message(), user=None
        )
    assert info.value.smtp_code == 530


async def test_wrong_password_then_rate_limited(gateway, pki):
    import base64

    wrong = base64.b64encode(b"\0alice\0wrong password").decode()
    right = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()

    def attempt():
        host, port = gateway.addresses["submission"]
        with smtplib.SMTP(host, port, timeout=30) as smtp:
            smtp.ehlo("client.test")
            smtp.starttls(context=client_context(pki))
            smtp.ehlo("client.test")
            codes = [smtp.docmd("AUTH", f"PLAIN {wrong}")[0] for _ in range(6)]
            codes.append(smtp.docmd("AUTH", f"PLAIN {right}")[0])  # right, but still blocked
            return codes

    codes = await asyncio.to_thread(attempt)
    assert codes == [535] * 5 + [454, 454]


async def test_right_password_authenticates(gateway, pki):
    refused = await asyncio.to_thread(
        submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["bob@nhs.net"], message()
    )
    assert refused == {}


async def test_inbound_refuses_relay(gateway):
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        await asyncio.to_thread(
            send_inbound, gateway, "someone@sender.test", ["victim@gmail.test"], message()
        )
    code, text = info.value.recipients["victim@gmail.test"]
    assert code == 554 and b"5.7.1" in text


async def test_inbound_for_our_domain_goes_to_internal_server(gateway, internal):
    refused = await asyncio.to_thread(
        send_inbound, gateway, "someone@sender.test", [f"jo@{ORG_DOMAIN}"], message()
    )
    assert refused == {}
    received = await asyncio.to_thread(internal.wait, 1)
    assert received[0].rcpt_tos == [f"jo@{ORG_DOMAIN}"]
    assert received[0].mail_from == "someone@sender.test"


def _dialogue(gateway, role, lines):
    """Raw SMTP: send each line, return the final reply line to each."""
    host, port = gateway.addresses[role]
    with socket.create_connection((host, port), timeout=10) as s:
        f = s.makefile("rwb")
        f.readline()
        replies = []
        for line in [b"EHLO x.test", *lines]:
            f.write(line + b"\r\n")
            f.flush()
            reply = f.readline()
            while reply[3:4] == b"-":
                reply = f.readline()
            replies.append(reply)
        return replies[1:]


@pytest.mark.parametrize(
    ("rcpt", "code"),
    [
        (b"<a@nhs.net@evil.com>", b"553"),  # several mailboxes
        (b"<a@[127.0.0.1]>", b"550"),  # IP literal
        (b"<x@localhost>", b"550"),  # not a routable domain
        (b'<"unterminated@example.nhs.uk>', b"550"),
        (b'<"x@example.nhs.uk"@evil.com>', b"554"),  # really evil.com: relay denied
        (b"<jo@example.nhs.uk> FOO=BAR", b"555"),
        (b"<jo@example.nhs.uk>\x00", b"5"),
    ],
)
async def test_hostile_recipients_refused(gateway, rcpt, code):
    replies = await asyncio.to_thread(
        _dialogue, gateway, "inbound", [b"MAIL FROM:<a@sender.test>", b"RCPT TO:" + rcpt]
    )
    assert replies[0].startswith(b"250")
    assert replies[1].startswith(code), replies


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        (b"Subject: no from\r\n", b"no From header"),
        (b"From: a@x.test\r\nFrom: b@y.test\r\n", b"more than one From header"),
        (b"From: a@x.test, b@y.test\r\n", b"several addresses"),
    ],
)
async def test_unusable_from_header_refused(gateway, internal, headers, why):
    replies = await asyncio.to_thread(
        _dialogue,
        gateway,
        "inbound",
        [b"MAIL FROM:<a@x.test>", b"RCPT TO:<jo@example.nhs.uk>", b"DATA", headers + b"\r\nx\r\n."],
    )
    assert replies[3].startswith(b"550 5.7.1") and why in replies[3], replies[3]
    assert internal.messages == []


async def test_null_sender_accepted_inbound(gateway, internal):
    replies = await asyncio.to_thread(
        _dialogue,
        gateway,
        "inbound",
        [
            b"MAIL FROM:<>",
            b"RCPT TO:<jo@example.nhs.uk>",
            b"DATA",
            b"From: MAILER-DAEMON@sender.test\r\nSubject: bounce\r\n\r\nx\r\n.",
        ],
    )
    assert [r[:3] for r in replies] == [b"250", b"250", b"354", b"250"]
    received = await asyncio.to_thread(internal.wait, 1)
    assert received[0].mail_from in ("", "<>")


async def test_sensitive_to_unknown_is_held_then_released(gateway, mx, pki):
    body = "Patient NHS number 943 476 5919"
    refused = await asyncio.to_thread(
        submit,
        gateway,
        pki,
        f"alice@{ORG_DOMAIN}",
        ["carer@gmail.test", "gp@nhs.net"],
        message(subject="OFFICIAL-SENSITIVE referral", body=body),
    )
    assert refused == {}
    received = await asyncio.to_thread(mx.wait, 1)
    assert [m.rcpt_tos for m in received] == [["gp@nhs.net"]]
    states = await rcpt_states(gateway)
    assert states["carer@gmail.test"][0] == "held"
    await asyncio.sleep(0.5)
    assert len(mx.messages) == 1  # still held, never sent
    (held,) = await gateway.spool.list_messages()
    released = await gateway.spool.release(held.queue_id, None, Decision("alice", "ok", 1.0))
    assert released.count == 1
    gateway.queue.wake()
    received = await asyncio.to_thread(mx.wait, 2)
    assert received[1].rcpt_tos == ["carer@gmail.test"]


async def test_only_a_message_with_a_finding_is_stored_as_sensitive(gateway, internal):
    """The spool erases a message stored with a sensitivity summary (secure_delete and a
    WAL checkpoint when it is done); mail in which the scanner found nothing is stored
    without one, and deleted as ordinary mail."""
    internal.reply_code = 450  # our own server is down: both messages wait in the spool
    for subject in ("hello", "OFFICIAL-SENSITIVE referral"):
        refused = await asyncio.to_thread(
            send_inbound, gateway, "someone@sender.test", [f"jo@{ORG_DOMAIN}"],
            message(subject=subject),
        )  # fmt: skip
        assert refused == {}
    stored = sorted(m.sensitivity for m in await gateway.spool.list_messages())
    assert stored == ["", "OFFICIAL-SENSITIVE marking in subject"]


async def test_sensitive_to_unknown_rejected_when_configured(gateway_factory, mx, dns_server, pki):
    add_mx(dns_server, "gmail.test")
    gateway = await gateway_factory(
        mx.port, extra='[policy]\nunknown_sensitive_action = "reject"\n'
    )
    with pytest.raises(smtplib.SMTPDataError) as info:
        await asyncio.to_thread(
            submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["carer@gmail.test"],
            message(subject="[secure] test"),
        )  # fmt: skip
    assert info.value.smtp_code == 550
    assert b"5.7.1" in info.value.smtp_error and b"carer@gmail.test" in info.value.smtp_error
    assert await gateway.spool.list_messages() == []


async def test_oversize_refused(gateway, pki):
    big = message(body="x" * 250_000)
    with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPDataError)) as info:
        await asyncio.to_thread(submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["b@nhs.net"], big)
    assert info.value.smtp_code == 552
    assert await gateway.spool.list_messages() == []


async def test_smuggling_bare_lf_dot_does_not_end_the_message(gateway, internal):
    """CVE-2023-51766 style: \\n.\\n must not end DATA; the smuggled MAIL is body text."""
    host, port = gateway.addresses["inbound"]
    smuggled = (
        b"From: a@sender.test\r\nSubject: first\r\n\r\nhello\n.\nMAIL FROM:<evil@sender.test>\r\n"
        b"RCPT TO:<jo@example.nhs.uk>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
    )

    def talk():
        with socket.create_connection((host, port), timeout=10) as s:
            f = s.makefile("rwb")
            replies = [f.readline()]
            for line in (
                b"EHLO x.test",
                b"MAIL FROM:<a@sender.test>",
                b"RCPT TO:<jo@example.nhs.uk>",
                b"DATA",
            ):
                f.write(line + b"\r\n")
                f.flush()
                replies.append(f.readline())
                while replies[-1][3:4] == b"-":
                    replies.append(f.readline())
            f.write(smuggled + b"QUIT\r\n")
            f.flush()
            replies += f.readlines()
            return replies

    replies = await asyncio.to_thread(talk)
    assert sum(r.startswith(b"250 2.0.0 Ok: queued") for r in replies) == 1
    received = await asyncio.to_thread(internal.wait, 1)
    await asyncio.sleep(0.5)
    assert len(internal.messages) == 1
    data = received[0].data
    assert b"Subject: first" in data and b"Subject: smuggled" in data
    assert b"hello\r\n.\r\nMAIL FROM" in data  # bare LFs normalised, the dot kept as text


@pytest.mark.parametrize(
    "line", [b"HELO", b"MAIL FROM:<a@b.test> FOO=BAR", b"\xff\xfe\r", b"RCPT TO:"]
)
async def test_malformed_commands_get_errors(gateway, line):
    host, port = gateway.addresses["inbound"]

    def talk():
        with socket.create_connection((host, port), timeout=10) as s:
            f = s.makefile("rwb")
            f.readline()
            f.write(b"EHLO x.test\r\n")
            f.flush()
            while f.readline()[3:4] == b"-":
                pass
            f.write(line + b"\r\n")
            f.flush()
            return f.readline()

    reply = await asyncio.to_thread(talk)
    assert reply[:1] in (b"5", b"4"), reply


# --- forced TLS: never downgrade --------------------------------------------------------


async def _secure_delivery_is_deferred(gateway_factory, dns_server, pki, sink_port, sinks):
    add_mx(dns_server, "nhs.net")
    gateway = await gateway_factory(sink_port)
    body = "confidential clinical letter body"
    await asyncio.to_thread(
        submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["gp@nhs.net"], message(body=body)
    )

    async def deferred():
        states = await rcpt_states(gateway)
        return states.get("gp@nhs.net", ("", ""))[0] == "deferred" and states["gp@nhs.net"]

    await eventually(deferred)
    await asyncio.sleep(0.6)  # at least one retry too
    for sink in sinks:
        assert sink.messages == []
        assert body.encode() not in bytes(sink.plaintext)
        assert b"MAIL FROM" not in bytes(sink.plaintext)
    return (await rcpt_states(gateway))["gp@nhs.net"][1]


async def test_no_starttls_defers_secure_recipient(gateway_factory, dns_server, pki):
    with SinkServer(hostname="mx.nhs.net") as plain:
        error = await _secure_delivery_is_deferred(
            gateway_factory, dns_server, pki, plain.port, [plain]
        )
    assert "did not offer STARTTLS" in error


async def test_self_signed_certificate_defers(gateway_factory, dns_server, pki):
    ctx = pki.server_context("mx.nhs.net", trusted=False)
    with SinkServer(hostname="mx.nhs.net", tls_context=ctx) as sink:
        error = await _secure_delivery_is_deferred(
            gateway_factory, dns_server, pki, sink.port, [sink]
        )
    assert "certificate verify failed" in error or "unable to get local issuer" in error


async def test_wrong_name_certificate_defers(gateway_factory, dns_server, pki):
    ctx = pki.server_context("mx.other.test")
    with SinkServer(hostname="mx.nhs.net", tls_context=ctx) as sink:
        error = await _secure_delivery_is_deferred(
            gateway_factory, dns_server, pki, sink.port, [sink]
        )
    assert "Hostname mismatch" in error or "doesn't match" in error


async def test_expired_certificate_defers(gateway_factory, dns_server, pki):
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    ctx = pki.server_context("mx.nhs.net", not_before=past - dt.timedelta(days=30), not_after=past)
    with SinkServer(hostname="mx.nhs.net", tls_context=ctx) as sink:
        error = await _secure_delivery_is_deferred(
            gateway_factory, dns_server, pki, sink.port, [sink]
        )
    assert "expired" in error


async def test_starttls_stripping_proxy_defers(gateway_factory, dns_server, pki):
    ctx = pki.server_context("mx.nhs.net")
    with (
        SinkServer(hostname="mx.nhs.net", tls_context=ctx) as sink,
        StripTLSProxy("127.0.0.1", sink.port) as proxy,
    ):
        error = await _secure_delivery_is_deferred(
            gateway_factory, dns_server, pki, proxy.port, [sink]
        )
        assert b"confidential clinical letter body" not in bytes(proxy.from_client)
        assert proxy.stripped >= 1
    assert "did not offer STARTTLS" in error


async def test_opportunistic_recipient_still_delivered_without_tls(
    gateway_factory, dns_server, pki
):
    add_mx(dns_server, "gmail.test")
    with SinkServer(hostname="mx.gmail.test") as plain:
        gateway = await gateway_factory(plain.port)
        await asyncio.to_thread(
            submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["pal@gmail.test"], message()
        )
        received = await asyncio.to_thread(plain.wait, 1)
    assert received[0].tls_version is None


async def test_permanent_failure_bounces_to_sender(gateway_factory, dns_server, pki, internal):
    add_mx(dns_server, "nhs.net")
    ctx = pki.server_context("mx.nhs.net")
    with SinkServer(hostname="mx.nhs.net", tls_context=ctx, reply_code=550) as sink:
        gateway = await gateway_factory(sink.port)
        await asyncio.to_thread(
            submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["gone@nhs.net"], message(subject="lost")
        )
        dsn = await asyncio.to_thread(internal.wait, 1)
    assert dsn[0].rcpt_tos == [f"alice@{ORG_DOMAIN}"]
    assert dsn[0].mail_from in ("", "<>")  # the null sender
    assert (
        b"multipart/report" in dsn[0].data
        and b"Final-Recipient: rfc822; gone@nhs.net" in dsn[0].data
    )
    assert b"Subject: lost" in dsn[0].data  # the original headers, not the body
    assert b"Just a note." not in dsn[0].data


async def test_null_mx_bounces(gateway_factory, dns_server, pki, internal, mx):
    dns_server.add("nomail.gov.uk", "MX", "0 .")
    gateway = await gateway_factory(mx.port)
    await asyncio.to_thread(
        submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["x@nomail.gov.uk"], message()
    )
    dsn = await asyncio.to_thread(internal.wait, 1)
    assert b"null MX" in dsn[0].data


async def test_temporary_failure_retried_then_delivered(gateway_factory, dns_server, pki):
    add_mx(dns_server, "nhs.net")
    ctx = pki.server_context("mx.nhs.net")
    with SinkServer(hostname="mx.nhs.net", tls_context=ctx, reply_code=450) as sink:
        gateway = await gateway_factory(sink.port)
        await asyncio.to_thread(
            submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["gp@nhs.net"], message()
        )
        await eventually(lambda: len(sink.rejected) >= 2)
        sink.reply_code = None
        received = await asyncio.to_thread(sink.wait, 1)
    assert received[0].rcpt_tos == ["gp@nhs.net"]
    await eventually(lambda: _empty(gateway))


async def _empty(gateway):
    return (await gateway.spool.list_messages()) == []


async def test_connection_reuse_for_many_messages(gateway, mx, pki):
    for n in range(20):
        await asyncio.to_thread(
            submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["gp@nhs.net"], message(subject=f"m{n}")
        )
    await asyncio.to_thread(mx.wait, 20)
    assert len(mx.sessions) < 20


async def test_forced_tls_failure_sends_one_delay_notice(
    gateway_factory, dns_server, pki, internal
):
    """DESIGN.md clinical safety: the sender learns the message has not arrived."""
    add_mx(dns_server, "nhs.net")
    with SinkServer(hostname="mx.nhs.net") as plain:  # no STARTTLS: forced TLS fails
        gateway = await gateway_factory(plain.port, delivery_extra="tls_failure_notify_after = 0")
        await asyncio.to_thread(
            submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["gp@nhs.net"], message(subject="urgent")
        )
        notices = await asyncio.to_thread(internal.wait, 1)
        await asyncio.sleep(1.0)  # several more TLS failures by now: still one notice
        assert len(internal.messages) == 1
        assert plain.messages == []
    data = notices[0].data
    assert notices[0].rcpt_tos == [f"alice@{ORG_DOMAIN}"]
    assert b"Action: delayed" in data and b"did not offer STARTTLS" in data
    assert b"nothing was sent in the clear" in data
    states = await rcpt_states(gateway)
    assert states["gp@nhs.net"][0] == "deferred"


async def test_no_delay_notice_before_the_deadline(gateway_factory, dns_server, pki, internal):
    add_mx(dns_server, "nhs.net")
    with SinkServer(hostname="mx.nhs.net") as plain:
        gateway = await gateway_factory(plain.port)  # default: 15 minutes
        await asyncio.to_thread(
            submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["gp@nhs.net"], message()
        )
        await eventually(lambda: _deferred_twice(gateway))
    assert internal.messages == []


async def _deferred_twice(gateway):
    (m,) = await gateway.spool.list_messages()
    return m.recipients[0].attempts >= 2


async def test_sender_is_told_at_once_what_was_held_and_why(gateway, mx, pki, internal):
    """Issue 11 item 1: a held recipient is not silent. The sender (alice, our domain, so
    the notice reaches the internal server) gets one notice naming the held recipient, the
    reason and what happens next; never the content."""
    body = "Patient NHS number 943 476 5919"
    refused = await asyncio.to_thread(
        submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["carer@gmail.test", "gp@nhs.net"],
        message(subject="OFFICIAL-SENSITIVE referral", body=body),
    )  # fmt: skip
    assert refused == {}
    (notice,) = await asyncio.to_thread(internal.wait, 1)
    assert notice.rcpt_tos == [f"alice@{ORG_DOMAIN}"] and notice.mail_from in ("", "<>")
    text = notice.data.decode("utf-8", "replace")
    assert "carer@gmail.test" in text and "held" in text.lower()
    assert "operator" in text and "gp@nhs.net" not in text.split("Final-Recipient")[0]
    assert "943 476 5919" not in text and "9434765919" not in text
    assert "Subject: OFFICIAL-SENSITIVE referral" in text  # original headers, as a DSN has


async def test_a_held_requiretls_messages_notice_carries_nothing_of_it(gateway, mx, pki, internal):
    """RFC 8689 §5: a notice about a REQUIRETLS message returns none of it, not even its
    headers (its DSNs are redacted the same way: test_requiretls)."""
    refused = await asyncio.to_thread(
        submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["carer@gmail.test"],
        message(subject="OFFICIAL-SENSITIVE referral", body="NHS 943 476 5919"),
        mail_options=("REQUIRETLS",),
    )  # fmt: skip
    assert refused == {}
    (notice,) = await asyncio.to_thread(internal.wait, 1)
    text = notice.data.decode("utf-8", "replace")
    assert "carer@gmail.test" in text and "held" in text.lower()
    assert "Subject:" not in text.split("Content-Type: message/delivery-status")[-1]
    assert "referral" not in text and "943 476 5919" not in text
