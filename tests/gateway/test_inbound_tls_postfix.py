"""Forced TLS inbound with a real Postfix as the sending MTA of a secure domain.

swaks → Postfix (``mta.nhs.net``, relaying to our inbound listener) → securemail. Mail
for nhs.net itself (its bounces) stays with that Postfix, in a mailbox: so the test
reads the bounce its sender gets, as Postfix wrote it.

* ``smtp_tls_security_level = none``: we refuse ``MAIL FROM:<x@nhs.net>`` with 530;
  Postfix bounces at once (a 5xx) and the sender's bounce names the TLS requirement.
* ``may`` (trusting the test CA): Postfix uses STARTTLS, the mail is delivered, and our
  ``Received`` header shows the TLS version and cipher.
"""

import asyncio
import subprocess

import pytest
from harness.gatewaykit import ORG_DOMAIN, PASSWORD, start_gateway, write_config
from harness.postfix import postfix_receiver, require_tools

from securemail.gateway.inbound.users import add_user

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

SENDER = "x@nhs.net"


def _nhs_postfix(postfix_tmp, pki, gateway, tls_level: str):
    """nhs.net's MTA: everything to our gateway, except nhs.net's own mail (bounces),
    which is stored in its mailbox (``PostfixReceiver.deliveries``)."""
    host, port = gateway.addresses["inbound"]
    return postfix_receiver(
        postfix_tmp,
        pki,
        postfix_tmp / "nhs-mailbox",
        hostname="mta.nhs.net",
        tls=False,
        name="nhs",
        main_cf={
            "relayhost": f"[{host}]:{port}",
            "default_transport": "smtp",
            "relay_transport": "smtp",
            "transport_maps": "inline:{ nhs.net=sink:mailbox }",
            "smtp_tls_security_level": tls_level,
            "smtp_tls_CAfile": str(pki.ca_file),
            "smtp_tls_loglevel": "1",
        },
    )


async def _gateway(tmp_path, pki, dns_server, internal):
    path = write_config(
        tmp_path, pki=pki, dns_server=dns_server, delivery_port=25, internal_port=internal.port
    )
    add_user(tmp_path / "users.toml", "alice", PASSWORD)
    # nhs.net passes DMARC from loopback (SPF): only TLS decides what happens here.
    dns_server.add("nhs.net", "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    dns_server.add("_dmarc.nhs.net", "TXT", "v=DMARC1; p=reject")
    return await start_gateway(path)


async def _swaks(port: int, subject: str) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(
        subprocess.run,
        ["swaks", "--silent", "2", "--server", "127.0.0.1", "--port", str(port),
         "--from", SENDER, "--to", f"jo@{ORG_DOMAIN}", "--header", f"Subject: {subject}",
         "--body", "discharge summary"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip


def _words(data: bytes) -> str:
    """Text with line folding and wrapping undone, for phrases Postfix may wrap."""
    return " ".join(data.decode(errors="replace").split())


async def test_postfix_without_tls_is_refused_and_its_sender_told_at_once(
    tmp_path, postfix_tmp, pki, dns_server, internal
):
    require_tools("postfix", "swaks")
    gateway = await _gateway(tmp_path, pki, dns_server, internal)
    try:
        with _nhs_postfix(postfix_tmp, pki, gateway, "none") as nhs:
            proc = await _swaks(nhs.port, "plain text")
            assert proc.returncode == 0, proc.stderr
            (bounced,) = await asyncio.to_thread(nhs.wait_for_log, r"status=bounced", 1, 60)
            (bounce,) = await asyncio.to_thread(nhs.wait_received, 1, 60)
            sessions = nhs.log()
        assert await gateway.spool.list_messages() == []
    finally:
        await gateway.stop(grace=5)
    assert "530 5.7.0 Must issue a STARTTLS command first" in bounced
    assert "(in reply to MAIL FROM command)" in bounced
    assert "TLS connection established" not in sessions  # it really was plain text
    text = _words(bounce)
    assert "Undelivered Mail Returned to Sender" in text
    assert f"<{SENDER}>" in text
    assert "530 5.7.0 Must issue a STARTTLS command first (mail from nhs.net must arrive " \
        "over TLS: SCCI1596 forced TLS)" in text  # fmt: skip
    assert internal.messages == []


async def test_postfix_with_tls_is_delivered_and_received_shows_the_tls_version(
    tmp_path, postfix_tmp, pki, dns_server, internal
):
    require_tools("postfix", "swaks")
    gateway = await _gateway(tmp_path, pki, dns_server, internal)
    try:
        with _nhs_postfix(postfix_tmp, pki, gateway, "may") as nhs:
            proc = await _swaks(nhs.port, "over tls")
            assert proc.returncode == 0, proc.stderr
            (received,) = await asyncio.to_thread(internal.wait, 1, 60)
            (sent,) = await asyncio.to_thread(nhs.wait_for_log, r"status=sent", 1, 60)
            established = nhs.log()
    finally:
        await gateway.stop(grace=5)
    assert "Trusted TLS connection established to" in established  # the test CA
    assert "queued as" in sent
    assert received.mail_from == SENDER and b"discharge summary" in received.data
    ours = received.data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ")
    first = ours.split(b"\r\nReceived:", 1)[0]  # the topmost Received is ours
    assert b"by mail.example.nhs.uk (securemail) with ESMTPS (using TLSv1." in first
    assert b" with cipher " in first
