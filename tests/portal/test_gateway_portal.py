"""The portal inside a live gateway: NO PLAINTEXT ON DISK, notices without content,
mixed secure + portal recipients, and ``securemail audit verify`` on a hand-edited row.

Real gateway (``harness.gatewaykit``), real SQLite files, real SMTP sinks."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from harness.gatewaykit import HOSTNAME, ORG_DOMAIN, add_mx, client_context, eventually, submit
from harness.portal_gateway import PORTAL_SECTION, link_tokens, plaintext_on_disk
from harness.smtpsink import SinkServer

from securemail.dns import Resolver
from securemail.mech.dkim import generate_key, verify_dkim, write_key
from securemail.mech.results import Result
from securemail.portal import PasscodeSent, ensure_key

UNIQUE = "zebra-quartz-7731-unique-body-string"
NHS_NUMBER = "943 476 5919"
SUBJECT = f"Patient {NHS_NUMBER} discharge"


def _message(*rcpts: str) -> bytes:
    return (
        f"From: Dr Alice <alice@{ORG_DOMAIN}>\r\nTo: {', '.join(rcpts)}\r\n"
        f"Subject: {SUBJECT}\r\nMessage-ID: <{time.time_ns()}@{ORG_DOMAIN}>\r\n\r\n"
        f"OFFICIAL-SENSITIVE\r\n{UNIQUE}\r\n"
    ).encode()


def _plaintext_on_disk(root: Path) -> list[str]:
    return plaintext_on_disk(root, [UNIQUE])


@pytest.fixture
def mx(pki):
    ctx = pki.server_context("mx.nhs.net", "mx.gmail.test")
    with SinkServer(hostname="mx.gmail.test", tls_context=ctx) as sink:
        yield sink


@pytest.fixture
async def gateway(gateway_factory, mx, dns_server, tmp_path):
    for domain in ("nhs.net", "gmail.test"):
        add_mx(dns_server, domain)
    ensure_key(tmp_path / "portal.key")
    return await gateway_factory(mx.port, extra=PORTAL_SECTION)


def _received(sink: SinkServer, rcpt: str) -> list[bytes]:
    return [m.data for s in sink.sessions for m in s.messages if rcpt in m.rcpt_tos]


async def test_portal_only_message_never_touches_disk_in_plain(
    gateway, mx, internal, pki, tmp_path
) -> None:
    await asyncio.to_thread(
        submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["carer@gmail.test"],
        _message("carer@gmail.test"),
    )  # fmt: skip
    await eventually(lambda: _received(mx, "carer@gmail.test"))
    await eventually(lambda: _received(internal, f"alice@{ORG_DOMAIN}"))
    [notice] = _received(mx, "carer@gmail.test")
    assert b"Subject: Secure message from Test Trust" in notice
    assert b"https://portal.example.nhs.uk/m/" in notice
    assert notice.startswith(b"Received: from mail.example.nhs.uk")  # through our pipeline
    for secret in (UNIQUE.encode(), b"discharge", NHS_NUMBER.encode(), b"9434765919"):
        assert secret not in notice
    [sender_notice] = _received(internal, f"alice@{ORG_DOMAIN}")
    assert UNIQUE.encode() not in sender_notice and NHS_NUMBER.encode() not in sender_notice
    [info] = await gateway.portal.list_messages()
    assert info.recipients == ("carer@gmail.test",) and info.sender_name == "Dr Alice"
    assert not [m for m in await gateway.spool.list_messages() if m.sender]  # never spooled
    assert _plaintext_on_disk(tmp_path) == []

    gateway.portal.clock = lambda: time.time() + 31 * 86400
    assert await gateway.portal.expire() == 1
    assert _plaintext_on_disk(tmp_path) == []
    events = [e.event for e in await gateway.portal.events(info.message_id)]
    assert events[:2] == ["deposited", "notified"] and events[-1] == "expired"


async def test_mixed_message_plain_copy_erased_after_secure_delivery(
    gateway, mx, pki, tmp_path
) -> None:
    rcpts = ["bob@nhs.net", "carer@gmail.test"]
    await asyncio.to_thread(submit, gateway, pki, f"alice@{ORG_DOMAIN}", rcpts, _message(*rcpts))
    await eventually(lambda: _received(mx, "bob@nhs.net"))
    assert UNIQUE.encode() in _received(mx, "bob@nhs.net")[0]  # forced TLS delivery
    [info] = await gateway.portal.list_messages()
    assert info.recipients == ("carer@gmail.test",)

    async def spool_empty() -> bool:
        return not [m for m in await gateway.spool.list_messages() if m.sender]

    await eventually(spool_empty)
    await eventually(lambda: _received(mx, "carer@gmail.test"))
    await eventually(lambda: not _plaintext_on_disk(tmp_path), timeout=10)


async def test_policy_explain_says_portal(gateway, tmp_path) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(_message("carer@gmail.test"))
    proc = subprocess.run(
        [sys.executable, "-m", "securemail.cli", "policy", "explain", "--config",
         str(tmp_path / "securemail.toml"), str(eml), "--rcpt", "carer@gmail.test"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "portal" in proc.stdout


async def test_audit_verify_names_a_hand_edited_row(gateway, mx, pki, tmp_path) -> None:
    await asyncio.to_thread(
        submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["carer@gmail.test"],
        _message("carer@gmail.test"),
    )  # fmt: skip
    await eventually(lambda: _received(mx, "carer@gmail.test"))
    config = str(tmp_path / "securemail.toml")

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "securemail.cli", "audit", "verify", "--config", config],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    ok = await asyncio.to_thread(verify)
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stderr
    with sqlite3.connect(tmp_path / "portal.db") as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET rcpt = 'someone@else.test' WHERE id = 1")
    broken = await asyncio.to_thread(verify)
    assert broken.returncode == 2
    assert "audit chain broken at row 1" in broken.stderr


async def test_accept_log_line_names_the_portal_recipient(gateway, mx, pki, caplog) -> None:
    """The operator's ``accepted …`` line says where each recipient went: the portal one
    with action ``portal``, the secure one with its forced-TLS delivery."""
    caplog.set_level(logging.INFO, logger="securemail.gateway")
    rcpts = ["bob@nhs.net", "carer@gmail.test"]
    await asyncio.to_thread(submit, gateway, pki, f"alice@{ORG_DOMAIN}", rcpts, _message(*rcpts))
    accepted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("accepted ")]
    # The portal's own notices are accepted too (from=<>, after the 250): not this line.
    [line] = [text for text in accepted if f"from=<alice@{ORG_DOMAIN}>" in text]
    decisions = line.partition(" decisions=")[2]
    assert "('carer@gmail.test', 'portal', '-')" in decisions, line
    assert "('bob@nhs.net', 'portal'" not in decisions and "'bob@nhs.net'" in decisions
    assert "sensitive=yes" in line


async def test_notice_and_passcode_mail_carry_a_valid_dkim_signature(
    gateway_factory, mx, dns_server, pki, tmp_path
) -> None:
    """The portal's own mail leaves signed for our domain, and the signature verifies
    against the key published in DNS: a recipient's provider can tell a real notice from
    a phish that copies it."""
    for domain in ("nhs.net", "gmail.test"):
        add_mx(dns_server, domain)
    ensure_key(tmp_path / "portal.key")
    pem, record = generate_key("rsa", 2048)
    write_key(tmp_path / "dkim", ORG_DOMAIN, "s1", pem)
    dns_server.add(f"s1._domainkey.{ORG_DOMAIN}", "TXT", record)
    gateway = await gateway_factory(
        mx.port, extra=PORTAL_SECTION + f'[dkim]\nkey_dir = "{tmp_path / "dkim"}"\n'
    )
    await asyncio.to_thread(
        submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["carer@gmail.test"],
        _message("carer@gmail.test"),
    )  # fmt: skip
    await eventually(lambda: _received(mx, "carer@gmail.test"))
    [notice] = _received(mx, "carer@gmail.test")
    [token] = link_tokens(notice)
    sent = await gateway.portal.send_passcode(token)
    assert isinstance(sent, PasscodeSent)
    await eventually(lambda: len(_received(mx, "carer@gmail.test")) == 2)
    passcode = _received(mx, "carer@gmail.test")[1]
    assert re.search(rb"\b\d{6}\b", passcode) and b"/m/" not in passcode
    resolver = Resolver([dns_server.nameserver], timeout=2)
    for mail in (notice, passcode):
        assert mail.count(b"DKIM-Signature:") == 1
        verdicts = await verify_dkim(mail, resolver)
        assert [(v.result, v.domain) for v in verdicts] == [(Result.PASS, ORG_DOMAIN)]


async def test_a_sensitive_display_name_is_left_out_of_the_notices(gateway, mx, pki) -> None:
    """The From name goes into the recipient's notice, which travels in the clear: a name
    holding an NHS number or a marking would make the notice itself sensitive (and the
    gateway would refuse to send it, leaving the recipient without a link)."""
    message = _message("carer@gmail.test").replace(
        b"From: Dr Alice <", b"From: Dr Alice OFFICIAL-SENSITIVE 943 476 5919 <"
    )
    await asyncio.to_thread(
        submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["carer@gmail.test"], message
    )
    await eventually(lambda: _received(mx, "carer@gmail.test"))
    [notice] = _received(mx, "carer@gmail.test")
    assert b"https://portal.example.nhs.uk/m/" in notice
    assert b"Someone at Test Trust" in notice
    for secret in (
        NHS_NUMBER.encode(),
        b"9434765919",
        b"OFFICIAL",
        b"Dr Alice",
    ):  # not "943": random ids may hold it
        assert secret not in notice


async def test_a_reload_serves_the_new_certificate_on_the_portal_too(gateway, pki) -> None:
    """One certificate set: after ``reload`` with a new cert and key, a new connection to
    the portal's HTTPS listener gets the new certificate, as the SMTP listeners do."""
    host, port = gateway.portal_address

    def serial() -> int:
        with socket.create_connection((host, port)) as raw:
            context = client_context(pki)
            context.check_hostname = False  # an address: the chain is still verified
            with context.wrap_socket(raw) as tls:
                return int(tls.getpeercert()["serialNumber"], 16)

    before = await asyncio.to_thread(serial)
    source = gateway.config.source
    tls = gateway.config.tls
    new_cert, new_key = pki.server_cert(HOSTNAME)
    text = source.read_text().replace(str(tls.cert), str(new_cert))
    source.write_text(text.replace(str(tls.key), str(new_key)))
    await gateway.reload()
    after = await asyncio.to_thread(serial)
    assert after != before
    assert after == x509.load_pem_x509_certificate(new_cert.read_bytes()).serial_number
