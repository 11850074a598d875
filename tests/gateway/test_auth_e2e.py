"""Inbound authentication and outbound signing through the running gateway.

Real SMTP clients, the loopback DNS server serving SPF/DKIM/DMARC records, and the
gateway's real verification: spoofed mail is refused at SMTP time, legitimate mail is
delivered with the right Authentication-Results, and our own mail leaves signed.
"""

import asyncio
import smtplib
import time

import pytest
from harness.gatewaykit import (
    ORG_DOMAIN,
    add_mx,
    client_context,
    submit,
)
from harness.smtpsink import SinkServer

from securemail.dns import Resolver
from securemail.mech.dkim import DkimSigner, SigningKey, generate_key, verify_dkim, write_key
from securemail.mech.results import Result

pytestmark = pytest.mark.timeout(90)


def publish_key(dns_server, domain, selector="s1"):
    pem, record = generate_key("rsa", 2048)
    dns_server.add(f"{selector}._domainkey.{domain}", "TXT", record)
    return SigningKey(domain, selector, "rsa-sha256", pem)


def mail(from_addr, subject="hello", extra_headers=""):
    return (
        f"From: {from_addr}\r\nTo: jo@{ORG_DOMAIN}\r\nSubject: {subject}\r\n"
        f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@test>\r\n"
        f"{extra_headers}\r\nClinical letter.\r\n"
    ).encode()


def send(gateway, sender, data, *, tls=False, pki=None):
    host, port = gateway.addresses["inbound"]
    with smtplib.SMTP(host, port, timeout=30) as smtp:
        smtp.ehlo("mx.sender.test")
        if tls:
            smtp.starttls(context=client_context(pki))
            smtp.ehlo("mx.sender.test")
        return smtp.sendmail(sender, [f"jo@{ORG_DOMAIN}"], data)


def nhs_zone(dns_server, dmarc="v=DMARC1; p=reject"):
    dns_server.add("nhs.net", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    dns_server.add("_dmarc.nhs.net", "TXT", dmarc)


async def test_spoofed_nhs_net_refused_at_smtp(gateway_factory, dns_server, internal, pki):
    nhs_zone(dns_server)
    gateway = await gateway_factory()
    spoof = mail("Chief Exec <ceo@nhs.net>")  # over TLS: plain text gets 530 at MAIL first
    with pytest.raises(smtplib.SMTPDataError) as info:
        await asyncio.to_thread(send, gateway, "ceo@nhs.net", spoof, tls=True, pki=pki)
    assert info.value.smtp_code == 550
    assert b"5.7.1" in info.value.smtp_error and b"DMARC policy of nhs.net" in info.value.smtp_error
    assert internal.messages == []


async def test_helo_identity_checked_too(gateway_factory, dns_server, internal):
    """RFC 7208 §2.3: the HELO name's SPF is reported beside MAIL FROM's."""
    dns_server.add("mx.sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    gateway = await gateway_factory()
    await asyncio.to_thread(send, gateway, "x@partner.test", mail("x@partner.test"))
    received = await asyncio.to_thread(internal.wait, 1)
    unfolded = received[0].data.replace(b"\r\n\t", b" ")
    assert b"spf=pass" in unfolded and b"smtp.helo=mx.sender.test" in unfolded
    assert b"smtp.mailfrom=x@partner.test" in unfolded


async def test_signed_nhs_net_accepted_with_authentication_results(
    gateway_factory, dns_server, internal, pki
):
    nhs_zone(dns_server)
    key = publish_key(dns_server, "nhs.net")
    data = mail("Dr Jones <jones@nhs.net>", "referral")
    signed = DkimSigner({"nhs.net": key}).sign(data, "nhs.net") + data
    gateway = await gateway_factory()
    await asyncio.to_thread(send, gateway, "jones@nhs.net", signed, tls=True, pki=pki)
    received = await asyncio.to_thread(internal.wait, 1)
    headers = received[0].data.split(b"\r\n\r\n", 1)[0].decode()
    unfolded = headers.replace("\r\n\t", " ")
    ar = next(line for line in unfolded.split("\r\n") if line.startswith("Authentication-Results:"))
    assert ar.startswith("Authentication-Results: mail.example.nhs.uk;")
    assert "spf=fail" in ar  # 127.0.0.1 is not in nhs.net's SPF ...
    assert "dkim=pass" in ar and "header.d=nhs.net" in ar  # ... but DKIM aligns,
    assert "dmarc=pass" in ar and "header.from=nhs.net" in ar  # so DMARC passes
    assert "X-Securemail-Trust: secure" in headers  # secure sender, DMARC pass, over TLS


async def test_unencrypted_or_unauthenticated_mail_is_marked_external(
    gateway_factory, dns_server, internal
):
    nhs_zone(dns_server, "v=DMARC1; p=none")
    # Forced TLS inbound off: what the trust mark says of a plain-text secure sender.
    gateway = await gateway_factory(
        extra="[auth]\nsecure_senders_must_pass = false\n",
        inbound_extra='require_tls_from = "none"',
    )
    data = mail("someone@nhs.net") + b""
    await asyncio.to_thread(send, gateway, "someone@nhs.net", data)
    received = await asyncio.to_thread(internal.wait, 1)
    assert b"X-Securemail-Trust: external" in received[0].data
    assert b"dmarc=fail" in received[0].data


async def test_secure_sender_failing_dmarc_refused_even_with_p_none(
    gateway_factory, dns_server, pki
):
    nhs_zone(dns_server, "v=DMARC1; p=none")
    gateway = await gateway_factory()
    data = mail("someone@nhs.net")
    with pytest.raises(smtplib.SMTPDataError) as info:
        await asyncio.to_thread(send, gateway, "someone@nhs.net", data, tls=True, pki=pki)
    assert info.value.smtp_code == 550 and b"must pass DMARC" in info.value.smtp_error


async def test_quarantine_marked_or_diverted(gateway_factory, dns_server, internal):
    dns_server.add("partner.test", "TXT", "v=spf1 -all")
    dns_server.add("_dmarc.partner.test", "TXT", "v=DMARC1; p=quarantine")
    gateway = await gateway_factory(extra=f'[auth]\nquarantine_to = "quarantine@{ORG_DOMAIN}"\n')
    await asyncio.to_thread(send, gateway, "x@partner.test", mail("x@partner.test"))
    received = await asyncio.to_thread(internal.wait, 1)
    assert received[0].rcpt_tos == [f"quarantine@{ORG_DOMAIN}"]
    assert b"X-Securemail-Quarantine: yes" in received[0].data


async def test_dns_failure_is_a_temporary_error_never_a_pass(gateway_factory, dns_server, internal):
    dns_server.behave("_dmarc.partner.test", "servfail")
    gateway = await gateway_factory()
    with pytest.raises(smtplib.SMTPDataError) as info:
        await asyncio.to_thread(send, gateway, "x@partner.test", mail("x@partner.test"))
    assert info.value.smtp_code == 451
    assert internal.messages == []


async def test_forged_trust_and_results_headers_are_removed(gateway_factory, dns_server, internal):
    gateway = await gateway_factory()
    forged = (
        "X-Securemail-Trust: secure\r\n"
        "Authentication-Results: mail.example.nhs.uk; dkim=pass header.d=nhs.net\r\n"
        "Authentication-Results: other.example; spf=pass\r\n"
    )
    await asyncio.to_thread(send, gateway, "x@partner.test", mail("x@partner.test", "hi", forged))
    received = await asyncio.to_thread(internal.wait, 1)
    data = received[0].data
    assert data.count(b"X-Securemail-Trust:") == 1 and b"X-Securemail-Trust: external" in data
    assert b"dkim=pass header.d=nhs.net" not in data
    assert b"Authentication-Results: other.example; spf=pass" in data  # others' kept


async def test_outbound_mail_from_our_domain_is_dkim_signed(
    gateway_factory, dns_server, pki, tmp_path
):
    """Signed by the gateway, verified independently from DNS (opendkim: test_dkim.py)."""
    add_mx(dns_server, "nhs.net")
    pem, record = generate_key("rsa", 2048)
    write_key(tmp_path / "var" / "dkim", ORG_DOMAIN, "s1", pem)
    dns_server.add(f"s1._domainkey.{ORG_DOMAIN}", "TXT", record)
    ctx = pki.server_context("mx.nhs.net")
    with SinkServer(hostname="mx.nhs.net", tls_context=ctx) as mx:
        gateway = await gateway_factory(
            delivery_port=mx.port, extra=f'[dkim]\nkey_dir = "{tmp_path / "var" / "dkim"}"\n'
        )
        await asyncio.to_thread(
            submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["gp@nhs.net"],
            mail(f"Alice <alice@{ORG_DOMAIN}>", "signed"),
        )  # fmt: skip
        received = await asyncio.to_thread(mx.wait, 1)
    data = received[0].data
    assert b"DKIM-Signature:" in data and f"d={ORG_DOMAIN}".encode() in data
    verdicts = await verify_dkim(data, Resolver([dns_server.nameserver], timeout=2))
    assert [(v.result, v.domain) for v in verdicts] == [(Result.PASS, ORG_DOMAIN)]
