"""``securemail policy explain`` and the live gateway agree on every row of the table.

The shared table is ``tests/policy_cases.py``. For each ``unknown_sensitive_action`` one
gateway is configured exactly as the CLI is (the same securemail.toml); every row's
message is sent through the submission listener and what the gateway *did* (refused at
RCPT or DATA, stored as queued or held, with which TLS level) is compared with what
``policy explain --json`` says. Remote servers answer 451 so every accepted recipient
stays in the spool to be read.

The same for a message that cannot be fully scanned (``UNSCANNABLE_CASES``: an encrypted
ZIP) under each ``[policy] unscannable``, and the reason stored says why.

Also here: a held sensitive message keeps its TLS level through an operator's release
(never opportunistic), and an accreditation that expires while the gateway runs is
judged against the current date (a controlled clock).
"""

import asyncio
import json
import smtplib
import subprocess
import sys
from datetime import date, timedelta

import pytest
from harness.documents import CSV, encrypted_zip, with_attachment
from harness.gatewaykit import ORG_DOMAIN, add_mx, client_context, eventually, submit
from harness.smtpsink import SinkServer
from policy_cases import CASES, SETTINGS, UNKNOWN, UNSCANNABLE_CASES, UNSCANNABLE_SETTINGS

from securemail.config import load_config
from securemail.core.levels import TlsLevel
from securemail.core.policy import Action
from securemail.gateway.app import Gateway
from securemail.gateway.spool import Decision, RcptStatus
from securemail.portal import ensure_key

pytestmark = pytest.mark.timeout(120)

SENSITIVE_SUBJECT = "OFFICIAL-SENSITIVE referral"


def _message(rcpt: str, sensitive: bool) -> bytes:
    subject = SENSITIVE_SUBJECT if sensitive else "hello"
    return (
        f"From: alice@{ORG_DOMAIN}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{rcpt.replace('@', '.')}.{sensitive}@{ORG_DOMAIN}>\r\n\r\nA note.\r\n"
    ).encode()


def _level(value) -> TlsLevel:
    assert isinstance(value, TlsLevel)
    return value


def _explain(config, rcpt: str, sensitive: bool, tmp_path) -> dict:
    return _explain_data(config, rcpt, _message(rcpt, sensitive), tmp_path)


def _explain_data(config, rcpt: str, data: bytes, tmp_path) -> dict:
    eml = tmp_path / f"m-{abs(hash((rcpt, data)))}.eml"
    eml.write_bytes(data)
    proc = subprocess.run(
        [sys.executable, "-m", "securemail.cli", "policy", "explain", "--json",
         "--config", str(config), str(eml), "--rcpt", rcpt],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (decision,) = json.loads(proc.stdout)["decisions"]
    return decision


async def _gateway_did(gateway, pki, rcpt: str, sensitive: bool) -> tuple[Action, TlsLevel]:
    action, tls, _ = await _gateway_stored(gateway, pki, rcpt, _message(rcpt, sensitive))
    return action, tls


async def _gateway_stored(gateway, pki, rcpt: str, data: bytes) -> tuple[Action, TlsLevel, str]:
    """What the gateway did with ``data`` for ``rcpt``, and the reason it stored."""
    try:
        await asyncio.to_thread(submit, gateway, pki, f"alice@{ORG_DOMAIN}", [rcpt], data)
    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError) as exc:
        code = exc.smtp_code if isinstance(exc, smtplib.SMTPDataError) else 550
        assert 500 <= code < 600, exc
        return Action.REJECT, TlsLevel.NONE, ""

    async def stored():
        for m in await gateway.spool.list_messages():
            for r in m.recipients:
                if r.rcpt == rcpt and r.status is not RcptStatus.DELIVERING:
                    return r
        return None

    if gateway.portal is not None:  # PORTAL: deposited, nothing in the spool for it
        for m in await gateway.portal.list_messages():
            if rcpt in m.recipients and m.state == "active":
                # the spool may hold the portal's notice to rcpt (null sender), never
                # the message itself
                assert not [r for m in await gateway.spool.list_messages() if m.sender
                            for r in m.recipients if r.rcpt == rcpt]  # fmt: skip
                await gateway.portal.revoke(m.message_id, "next row")
                return Action.PORTAL, TlsLevel.NONE, ""
    await eventually(stored)
    r = await stored()
    action = Action.HOLD if r.status is RcptStatus.HELD else Action.DELIVER
    for m in await gateway.spool.list_messages():  # clear it for the next row
        await gateway.spool.delete(m.queue_id, None, Decision("test", "next row", 1.0))
    return action, _level(r.tls), r.reason


@pytest.fixture
def refusing_mx(pki):
    """Every recipient MX answers 451 at end of DATA: accepted mail stays in the spool."""
    ctx = pki.server_context("mx.nhs.net", "mx.gmail.test", "mx.dwp.gov.uk")
    with SinkServer(hostname="mx.nhs.net", tls_context=ctx, reply_code=451) as sink:
        yield sink


@pytest.mark.parametrize("setting", SETTINGS)
async def test_policy_explain_agrees_with_the_gateway(
    setting, gateway_factory, refusing_mx, internal, dns_server, pki, tmp_path
):
    for domain in ("nhs.net", "gmail.test", "dwp.gov.uk"):
        add_mx(dns_server, domain)
    internal.reply_code = 451
    portal = ""
    if setting == "portal":  # the config refuses "portal" without the portal
        ensure_key(tmp_path / "portal.key")
        portal = '[portal]\nenabled = true\nkey_file = "portal.key"\ndatabase = "portal.db"\nlisten = "127.0.0.1:0"\n'
    gateway = await gateway_factory(
        refusing_mx.port, extra=f'[policy]\nunknown_sensitive_action = "{setting}"\n{portal}'
    )
    config = tmp_path / "securemail.toml"
    rows = [c for c in CASES if c[2] == setting]
    assert rows
    for rcpt, sensitive, _, action, tls in rows:
        explained = _explain(config, rcpt, sensitive, tmp_path)
        did = await _gateway_did(gateway, pki, rcpt, sensitive)
        said = (Action(explained["action"]), TlsLevel.from_label(explained["tls"]))
        assert said == (action, tls), (rcpt, sensitive, explained)
        assert did == said, (rcpt, sensitive, "policy explain", said, "gateway", did)


@pytest.mark.parametrize("setting", UNSCANNABLE_SETTINGS)
async def test_unscannable_attachment_explain_agrees_with_the_gateway(
    setting, gateway_factory, refusing_mx, internal, dns_server, pki, tmp_path
):
    """``[policy] unscannable``: an encrypted ZIP is judged alike by both, for the same reason."""
    for domain in ("nhs.net", "gmail.test", "dwp.gov.uk"):
        add_mx(dns_server, domain)
    internal.reply_code = 451
    gateway = await gateway_factory(
        refusing_mx.port, extra=f'[policy]\nunscannable = "{setting}"\n'
    )
    config = tmp_path / "securemail.toml"
    rows = [c for c in UNSCANNABLE_CASES if c[1] == setting]
    assert rows
    for rcpt, _, action, tls in rows:
        data = with_attachment(encrypted_zip("list.csv", CSV, b"pw"), "list.zip", to=rcpt)
        explained = _explain_data(config, rcpt, data, tmp_path)
        *did, reason = await _gateway_stored(gateway, pki, rcpt, data)
        said = (Action(explained["action"]), TlsLevel.from_label(explained["tls"]))
        assert said == (action, tls), (rcpt, explained)
        assert tuple(did) == said, (rcpt, "policy explain", said, "gateway", did)
        if action is Action.HOLD:
            assert "unscannable" in reason and "encrypted ZIP member" in reason
            assert reason == explained["reason"]


async def test_released_sensitive_mail_keeps_verified_tls(gateway_factory, dns_server, pki):
    """The release rule: a held sensitive message never goes out unverified.

    The unknown recipient's MX offers STARTTLS only with a certificate from an untrusted
    CA: opportunistic TLS would deliver there, verified TLS must defer.
    """
    import trustme

    rogue = trustme.CA().issue_cert("mx.gmail.test")
    ctx = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    rogue.configure_cert(ctx)
    with SinkServer(hostname="mx.gmail.test", tls_context=ctx) as mx:
        add_mx(dns_server, "gmail.test")
        gateway = await gateway_factory(mx.port)
        refused = await asyncio.to_thread(
            submit, gateway, pki, f"alice@{ORG_DOMAIN}", [UNKNOWN], _message(UNKNOWN, True)
        )
        assert refused == {}
        (held,) = [m for m in await gateway.spool.list_messages() if m.sender]  # not the notice
        assert held.recipients[0].status is RcptStatus.HELD
        assert _level(held.recipients[0].tls) is TlsLevel.VERIFIED
        released = await gateway.spool.release(held.queue_id, None, Decision("alice", "ok", 1.0))
        assert released.count == 1
        gateway.queue.wake()

        async def deferred():
            (m,) = [m for m in await gateway.spool.list_messages() if m.sender]
            return m.recipients[0].status is RcptStatus.DEFERRED and m.recipients[0]

        await eventually(deferred)
        state = await deferred()
        assert _level(state.tls) is TlsLevel.VERIFIED
        assert "certificate" in state.last_error.lower() or "verif" in state.last_error.lower()
        assert mx.messages == []  # nothing was sent to the unverified server


async def test_accreditation_expires_while_the_gateway_runs(
    tmp_path, pki, dns_server, internal, refusing_mx
):
    """One gateway, a clock that crosses the expiry date: secure, then unknown (held)."""
    from harness.gatewaykit import PASSWORD, write_config

    from securemail.gateway.inbound.users import add_user

    today = date(2026, 11, 30)
    (tmp_path / "accredited.csv").write_text(
        "domain,organisation,accreditation expires\n"
        f"carehome.test,Care Home Ltd,{today.isoformat()}\n"
    )
    add_mx(dns_server, "carehome.test", "mx.gmail.test")
    path = write_config(
        tmp_path, pki=pki, dns_server=dns_server, delivery_port=refusing_mx.port,
        internal_port=internal.port, extra='[policy]\naccredited_list = "accredited.csv"\n',
    )  # fmt: skip
    add_user(tmp_path / "users.toml", "alice", PASSWORD)
    day = [today]
    gateway = Gateway(load_config(path, environ={}), today=lambda: day[0])
    await gateway.start()
    try:
        rcpt = "manager@carehome.test"
        assert await _gateway_did(gateway, pki, rcpt, True) == (Action.DELIVER, TlsLevel.VERIFIED)
        day[0] = today + timedelta(days=1)
        assert await _gateway_did(gateway, pki, rcpt, True) == (Action.HOLD, TlsLevel.VERIFIED)
    finally:
        await gateway.stop(grace=5)


def test_client_context_is_strict(pki):
    assert client_context(pki).verify_mode.name == "CERT_REQUIRED"
