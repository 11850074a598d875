"""Forced TLS inbound and REQUIRETLS on the live listeners (issue 12, SCCI1596 §2.2).

A real gateway on loopback with real SMTP clients: a secure domain's mail over plain
text is refused at MAIL (envelope sender) or at end of DATA (header From) with ``530``
and a log line naming the rule, nothing stored; the same mail over STARTTLS is
delivered; everyone else stays opportunistic. REQUIRETLS is offered and taken inside
TLS only, and the RFC 8689 facts reach the spool.
"""

import asyncio
import logging
import smtplib
import ssl
import time
import warnings

import pytest
from harness.gatewaykit import (
    ORG_DOMAIN,
    client_context,
    start_gateway,
    write_config,
)

pytestmark = pytest.mark.timeout(90)

JO = f"jo@{ORG_DOMAIN}"


def mail(from_header: str, extra_headers: str = "", subject: str = "referral") -> bytes:
    return (
        f"From: {from_header}\r\nTo: {JO}\r\nSubject: {subject}\r\n"
        f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@test>\r\n"
        f"{extra_headers}\r\nClinical letter.\r\n"
    ).encode()


def spf_pass(dns_server, domain: str) -> None:
    """DMARC passes for ``domain`` from loopback (SPF aligned), as a real secure
    sender's would: forced TLS, not authentication, is what these tests are about."""
    dns_server.add(domain, "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    dns_server.add(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=reject")


def session(gateway, pki=None, *, role: str = "inbound") -> smtplib.SMTP:
    """An EHLO'd session; with ``pki``, after STARTTLS (and EHLO again)."""
    smtp = smtplib.SMTP(*gateway.addresses[role], timeout=30)
    smtp.ehlo("mx.sender.test")
    if pki is not None:
        smtp.starttls(context=client_context(pki))
        smtp.ehlo("mx.sender.test")
    return smtp


def transaction(gateway, sender, data, pki=None, options=()) -> list[tuple[int, str]]:
    """MAIL, RCPT, DATA as far as they go: each reply as (code, text)."""
    with session(gateway, pki) as smtp:
        replies = [smtp.mail(sender, list(options))]
        if replies[-1][0] == 250:
            replies.append(smtp.rcpt(JO))
        if replies[-1][0] == 250:
            replies.append(smtp.data(data))
    return [(code, text.decode()) for code, text in replies]


async def send(gateway, sender, data, pki=None, options=()) -> list[tuple[int, str]]:
    return await asyncio.to_thread(transaction, gateway, sender, data, pki, options)


async def test_secure_sender_in_plain_text_is_refused_at_mail_and_accepted_over_tls(
    gateway_factory, dns_server, internal, pki, caplog
):
    caplog.set_level(logging.WARNING, logger="securemail.smtp")
    spf_pass(dns_server, "nhs.net")
    gateway = await gateway_factory()
    replies = await send(gateway, "gp@nhs.net", mail("gp@nhs.net"))
    assert len(replies) == 1 and replies[0][0] == 530
    assert replies[0][1] == (
        "5.7.0 Must issue a STARTTLS command first "
        "(mail from nhs.net must arrive over TLS: SCCI1596 forced TLS)"
    )
    (line,) = [m for m in caplog.messages if m.startswith("forced TLS inbound")]
    assert "refused MAIL FROM domain=nhs.net rule=guidance:nhs.net client=127.0.0.1" in line
    assert await gateway.spool.list_messages() == []

    replies = await send(gateway, "gp@nhs.net", mail("gp@nhs.net"), pki)
    assert [code for code, _ in replies] == [250, 250, 250]
    (got,) = await asyncio.to_thread(internal.wait, 1)
    assert got.mail_from == "gp@nhs.net"
    # Our Received header says which TLS the hop into us used, as Postfix writes it.
    received = got.data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ")
    assert b"with ESMTPS (using TLSv1.3 with cipher TLS_" in received


async def test_other_senders_stay_opportunistic(gateway_factory, internal):
    gateway = await gateway_factory()
    replies = await send(gateway, "someone@partner.test", mail("someone@partner.test"))
    assert [code for code, _ in replies] == [250, 250, 250]
    (got,) = await asyncio.to_thread(internal.wait, 1)
    received = got.data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ")
    assert b"(securemail) with ESMTP id" in received and b"using TLS" not in received


async def test_require_tls_from_none_turns_it_off(gateway_factory, dns_server, internal):
    spf_pass(dns_server, "nhs.net")
    gateway = await gateway_factory(inbound_extra='require_tls_from = "none"')
    replies = await send(gateway, "gp@nhs.net", mail("gp@nhs.net"))
    assert [code for code, _ in replies] == [250, 250, 250]
    assert len(await asyncio.to_thread(internal.wait, 1)) == 1


async def test_a_listed_domain_is_forced_as_well_as_secure_ones(gateway_factory, caplog):
    caplog.set_level(logging.WARNING, logger="securemail.smtp")
    gateway = await gateway_factory(inbound_extra='require_tls_from = ["partner.test"]')
    (refused,) = await send(gateway, "x@partner.test", mail("x@partner.test"))
    assert refused[0] == 530 and "mail from partner.test must arrive over TLS" in refused[1]
    assert any("rule=require_tls_from:partner.test" in m for m in caplog.messages)
    (still,) = await send(gateway, "gp@nhs.net", mail("gp@nhs.net"))
    assert still[0] == 530  # the list adds to "secure", never replaces it
    replies = await send(gateway, "x@other.test", mail("x@other.test"))
    assert [code for code, _ in replies] == [250, 250, 250]


@pytest.mark.parametrize("envelope", ["", "bounces@unrelated.test"])
async def test_header_from_of_a_secure_domain_is_refused_at_end_of_data(
    gateway_factory, internal, caplog, envelope
):
    """A null-sender bounce from a secure domain's MTA, or an unrelated envelope: the
    header From is judged before anything is stored."""
    caplog.set_level(logging.WARNING, logger="securemail.smtp")
    gateway = await gateway_factory()
    replies = await send(gateway, envelope, mail("GP Surgery <gp@nhs.net>"))
    assert [code for code, _ in replies] == [250, 250, 530]
    assert "mail from nhs.net must arrive over TLS" in replies[-1][1]
    (line,) = [m for m in caplog.messages if m.startswith("forced TLS inbound")]
    assert "refused header From domain=nhs.net rule=guidance:nhs.net" in line
    assert f"from=<{envelope}>" in line
    assert await gateway.spool.list_messages() == []
    await asyncio.sleep(0.2)
    assert internal.messages == []


async def test_submission_without_tls_gets_530_before_anything(gateway_factory):
    gateway = await gateway_factory()

    def plain_mail():
        with session(gateway, role="submission") as smtp:
            return smtp.mail("gp@nhs.net")

    code, text = await asyncio.to_thread(plain_mail)
    assert code == 530 and b"STARTTLS" in text


def _old_tls_client(maximum: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
    ctx.set_ciphers("ALL:@SECLEVEL=0")  # let OpenSSL build a TLS 1.1 client at all
    return ctx


def _handshake(gateway, ctx: ssl.SSLContext) -> str:
    """The TLS version STARTTLS negotiated, or "failed: why"."""
    smtp = smtplib.SMTP(*gateway.addresses["inbound"], timeout=30)
    try:
        smtp.ehlo("old.sender.test")
        smtp.starttls(context=ctx)
        return smtp.sock.version()  # type: ignore[union-attr]
    except (ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError) as exc:
        return f"failed: {exc}"
    finally:
        smtp.close()


async def test_tls_below_min_version_is_never_negotiated(tmp_path, pki, dns_server, internal):
    gateway = await _gateway_with(tmp_path, pki, dns_server, internal)
    try:
        assert gateway.live.tls.minimum_version is ssl.TLSVersion.TLSv1_2
        old = await asyncio.to_thread(_handshake, gateway, _old_tls_client(ssl.TLSVersion.TLSv1_1))
        assert old.startswith("failed"), old
        ok = await asyncio.to_thread(_handshake, gateway, _old_tls_client(ssl.TLSVersion.TLSv1_2))
        assert ok == "TLSv1.2"
    finally:
        await gateway.stop(grace=1)
    gateway = await _gateway_with(tmp_path, pki, dns_server, internal, tls='min_version = "1.3"')
    try:
        assert gateway.live.tls.minimum_version is ssl.TLSVersion.TLSv1_3
        tls12 = await asyncio.to_thread(
            _handshake, gateway, _old_tls_client(ssl.TLSVersion.TLSv1_2)
        )
        assert tls12.startswith("failed"), tls12
    finally:
        await gateway.stop(grace=1)


async def _gateway_with(tmp_path, pki, dns_server, internal, *, tls="", relay=""):
    """A gateway whose [tls] or [relay] section has extra lines (the kit writes both)."""
    path = write_config(
        tmp_path, pki=pki, dns_server=dns_server, delivery_port=25, internal_port=internal.port
    )
    text = path.read_text().replace("[tls]\n", f"[tls]\n{tls}\n")
    path.write_text(text.replace("[relay]\n", f"[relay]\n{relay}\n"))
    return await start_gateway(path)


def _ehlo_keywords(gateway, pki=None) -> list[str]:
    with session(gateway, pki) as smtp:
        return sorted(smtp.esmtp_features)


async def test_requiretls_is_offered_and_taken_inside_tls_only(gateway_factory, pki, internal):
    gateway = await gateway_factory()
    assert "requiretls" not in await asyncio.to_thread(_ehlo_keywords, gateway)
    assert "requiretls" in await asyncio.to_thread(_ehlo_keywords, gateway, pki)
    (plain,) = await send(gateway, "x@partner.test", mail("x@partner.test"), None, ["REQUIRETLS"])
    assert plain[0] == 530 and "REQUIRETLS is only accepted over TLS" in plain[1]
    assert "5.7.0" in plain[1]

    internal.reply_code = 451  # keep the messages in the spool to read their flags
    flags = {}
    for name, options, extra in [
        ("requiretls", ["REQUIRETLS"], ""),
        ("header", [], "TLS-Required: No\r\n"),
        ("both", ["REQUIRETLS"], "tls-required: NO\r\n"),  # both facts, as they are
        ("neither", [], ""),
    ]:
        replies = await send(gateway, "x@partner.test", mail("x@partner.test", extra), pki,
                             options)  # fmt: skip
        assert [code for code, _ in replies] == [250, 250, 250], (name, replies)
        queue_id = replies[-1][1].rsplit(" ", 1)[-1]
        info = await gateway.spool.get(queue_id)
        assert info is not None
        flags[name] = (info.requiretls, info.tls_required_no)
    assert flags == {
        "requiretls": (True, False),
        "header": (False, True),
        "both": (True, True),
        "neither": (False, False),
    }


async def test_requiretls_on_submission_after_auth(gateway_factory, pki):
    """The second listener: offered after STARTTLS, taken from a signed-in user."""
    from harness.gatewaykit import PASSWORD

    gateway = await gateway_factory()

    def submit_requiretls():
        with session(gateway, pki, role="submission") as smtp:
            offered = smtp.has_extn("requiretls")
            smtp.login("alice", PASSWORD)
            sender = f"alice@{ORG_DOMAIN}"
            smtp.mail(sender, ["REQUIRETLS"])
            smtp.rcpt("someone@gmail.test")
            held = mail(sender, subject="OFFICIAL-SENSITIVE")  # held: stays to be read
            code, text = smtp.data(held.replace(JO.encode(), b"someone@gmail.test"))
            return offered, code, text.decode()

    offered, code, text = await asyncio.to_thread(submit_requiretls)
    assert offered and code == 250
    info = await gateway.spool.get(text.rsplit(" ", 1)[-1])
    assert info is not None and info.requiretls


async def test_a_reload_changes_require_tls_from_at_once(gateway_factory, dns_server, internal):
    spf_pass(dns_server, "nhs.net")
    gateway = await gateway_factory()
    (refused,) = await send(gateway, "gp@nhs.net", mail("gp@nhs.net"))
    assert refused[0] == 530
    source = gateway.config.source
    text = source.read_text()
    source.write_text(text.replace("[inbound]\n", '[inbound]\nrequire_tls_from = "none"\n'))
    await gateway.reload()
    replies = await send(gateway, "gp@nhs.net", mail("gp@nhs.net"))
    assert [code for code, _ in replies] == [250, 250, 250]
    source.write_text(text.replace("[inbound]\n", '[inbound]\nrequire_tls_from = ["x.test"]\n'))
    await gateway.reload()
    (listed,) = await send(gateway, "a@x.test", mail("a@x.test"))
    assert listed[0] == 530 and "mail from x.test" in listed[1]


async def test_the_internal_server_may_send_our_own_mail_in_plain_text_but_not_others(
    tmp_path, pki, dns_server, internal, caplog
):
    """[relay] networks: our own domains' mail from the internal server is not a secure
    domain's MTA talking (here our domain is secure through [policy] secure_domains);
    a secure external From relayed by it still is."""
    caplog.set_level(logging.WARNING, logger="securemail.smtp")
    own = f"alice@{ORG_DOMAIN}"
    for relay in ('networks = ["127.0.0.0/8"]', ""):
        path = write_config(
            tmp_path, pki=pki, dns_server=dns_server, delivery_port=25,
            internal_port=internal.port, extra=f'[policy]\nsecure_domains = ["{ORG_DOMAIN}"]\n',
        )  # fmt: skip
        path.write_text(path.read_text().replace("[relay]\n", f"[relay]\n{relay}\n"))
        gateway = await start_gateway(path)
        try:
            ours = await send(gateway, own, mail(own))
            theirs = await send(gateway, "gp@nhs.net", mail("gp@nhs.net"))
            forwarded = await send(gateway, own, mail("GP <gp@nhs.net>"))
        finally:
            await gateway.stop(grace=1)
        assert theirs[0][0] == 530 and forwarded[-1][0] == 530
        if relay:
            assert [code for code, _ in ours] == [250, 250, 250]
        else:  # a stranger claiming our (secure) domain is judged like anyone
            assert ours[0][0] == 530 and "mail from example.nhs.uk" in ours[0][1]
            assert any("rule=local secure_domains" in m for m in caplog.messages)
