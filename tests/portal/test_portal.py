"""Deposit, links, passcodes, sessions, reading, revocation, expiry and key rotation,
against a real SQLite file and real crypto."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from email import message_from_bytes
from email.policy import default

import pytest
from harness.portal_pages import Clock, Mailbox

from securemail.config import PortalConfig
from securemail.portal import (
    Access,
    Gone,
    Limited,
    Locked,
    Portal,
    PortalError,
    Refused,
    Session,
)
from securemail.portal import keys as portal_keys
from securemail.portal.crypto import DecryptError, read_key, sidecar

BODY = b"From: Dr A <a@example.nhs.uk>\r\nSubject: NHS 943 476 5919\r\n\r\nsecret-body-4711\r\n"


async def _deposit(portal: Portal, *rcpts: str) -> dict[str, str]:
    deposit = await portal.deposit(
        BODY, sender="a@example.nhs.uk", sender_name="Dr A",
        recipients=rcpts or ("carer@gmail.test",), queue_id="Q1",
    )  # fmt: skip
    return dict(deposit.links)


def _code(mailbox: Mailbox, rcpt: str) -> str:
    found = re.search(rb"passcode is (\d{6})", mailbox.to(rcpt)[-1])
    assert found is not None
    return found.group(1).decode()


async def _session(portal: Portal, mailbox: Mailbox, token: str, rcpt: str) -> Session:
    await portal.send_passcode(token)
    session = await portal.check_passcode(token, _code(mailbox, rcpt), "192.0.2.1")
    assert isinstance(session, Session)
    return session


def _db(config: PortalConfig) -> sqlite3.Connection:
    return sqlite3.connect(config.database)


async def test_token_long_and_only_its_hash_stored(
    portal: Portal, portal_config: PortalConfig
) -> None:
    token = (await _deposit(portal))["carer@gmail.test"]
    assert len(token) * 6 >= 128
    with _db(portal_config) as db:
        [stored] = db.execute("SELECT token_hash FROM links").fetchone()
        dump = "\n".join(db.iterdump())
    assert stored == hashlib.sha256(token.encode()).digest()
    assert token not in dump and "secret-body-4711" not in dump
    access = await portal.access(token)
    assert isinstance(access, Access) and access.rcpt == "carer@gmail.test"
    assert access.subject_safe == "Secure message from Example Trust"
    assert await portal.access(token + "x") is None


async def test_passcode_session_read(portal: Portal, mailbox: Mailbox) -> None:
    token = (await _deposit(portal))["carer@gmail.test"]
    session = await _session(portal, mailbox, token, "carer@gmail.test")
    assert await portal.session(session.id) == session
    assert await portal.read(session) == BODY
    events = [e.event for e in await portal.events(session.message_id)]
    assert events == ["deposited", "passcode sent", "session started", "opened"]
    passcode_mail = mailbox.to("carer@gmail.test")[-1]
    assert b"secret-body" not in passcode_mail and b"943 476 5919" not in passcode_mail


async def test_passcode_expires(portal: Portal, mailbox: Mailbox, clock: Clock) -> None:
    token = (await _deposit(portal))["carer@gmail.test"]
    await portal.send_passcode(token)
    clock.now += 10 * 60 + 1
    answer = await portal.check_passcode(token, _code(mailbox, "carer@gmail.test"), "c")
    assert answer == Refused("expired", 4)


async def test_used_passcode_cannot_be_replayed(portal: Portal, mailbox: Mailbox) -> None:
    token = (await _deposit(portal))["carer@gmail.test"]
    await _session(portal, mailbox, token, "carer@gmail.test")
    replay = await portal.check_passcode(token, _code(mailbox, "carer@gmail.test"), "c")
    assert isinstance(replay, Refused) and replay.reason == "used"


async def test_five_wrong_tries_lock_and_tell_sender(portal: Portal, mailbox: Mailbox) -> None:
    token = (await _deposit(portal))["carer@gmail.test"]
    await portal.send_passcode(token)
    right = _code(mailbox, "carer@gmail.test")
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    answers = [await portal.check_passcode(token, wrong, "198.51.100.9") for _ in range(5)]
    assert [a.tries_left for a in answers[:4] if isinstance(a, Refused)] == [4, 3, 2, 1]
    assert isinstance(answers[4], Locked)
    assert isinstance(await portal.check_passcode(token, right, "c"), Locked)  # too late
    assert isinstance(await portal.send_passcode(token), Locked)
    access = await portal.access(token)
    assert isinstance(access, Access) and access.locked
    [notice] = mailbox.to("a@example.nhs.uk")
    assert b"locked" in notice and b"carer@gmail.test" in notice
    events = [e.event for e in await portal.events(access.message_id)]
    assert events.count("passcode failed") == 5 and events[-1] == "locked"


async def test_passcode_rate_limited_per_link(portal: Portal, clock: Clock) -> None:
    token = (await _deposit(portal))["carer@gmail.test"]
    await portal.send_passcode(token)
    assert isinstance(await portal.send_passcode(token), Limited)
    for _ in range(4):
        clock.now += 31
        assert not isinstance(await portal.send_passcode(token), Limited)
    clock.now += 31
    limited = await portal.send_passcode(token)
    assert isinstance(limited, Limited) and limited.retry_after > 3000


async def test_session_of_one_message_cannot_read_another(portal: Portal, mailbox: Mailbox) -> None:
    """IDOR: the session id must belong to the message and recipient asked for."""
    token_a = (await _deposit(portal))["carer@gmail.test"]
    token_b = (await _deposit(portal, "other@gmail.test"))["other@gmail.test"]
    session_a = await _session(portal, mailbox, token_a, "carer@gmail.test")
    access_b = await portal.access(token_b)
    assert isinstance(access_b, Access)
    forged = Session(session_a.id, access_b.message_id, "other@gmail.test", session_a.expires)
    with pytest.raises(PortalError):
        await portal.read(forged)
    with pytest.raises(PortalError):
        await portal.record(forged, "downloaded", "x.pdf")


async def test_session_expires(portal: Portal, mailbox: Mailbox, clock: Clock) -> None:
    token = (await _deposit(portal))["carer@gmail.test"]
    session = await _session(portal, mailbox, token, "carer@gmail.test")
    clock.now += 15 * 60 + 1
    assert await portal.session(session.id) is None
    with pytest.raises(PortalError):
        await portal.read(session)


async def test_revoke_is_gone_and_erases(
    portal: Portal, mailbox: Mailbox, portal_config: PortalConfig
) -> None:
    token = (await _deposit(portal))["carer@gmail.test"]
    session = await _session(portal, mailbox, token, "carer@gmail.test")
    assert await portal.revoke(session.message_id, "ops") is True
    assert await portal.revoke(session.message_id, "ops") is False
    assert await portal.access(token) == Gone("revoked")
    assert await portal.session(session.id) is None
    with _db(portal_config) as db:
        row = db.execute("SELECT wrapped_key, ciphertext FROM messages").fetchone()
    assert row == (None, None)


async def test_expire_is_gone_and_nothing_recoverable(
    portal: Portal, portal_config: PortalConfig, clock: Clock
) -> None:
    token = (await _deposit(portal))["carer@gmail.test"]
    with _db(portal_config) as db:
        ciphertext, wrapped = db.execute("SELECT ciphertext, wrapped_key FROM messages").fetchone()
    clock.now += 30 * 86400
    assert await portal.access(token) == Gone("expired")  # the clock decides, at once
    assert await portal.expire() == 1
    assert await portal.expire() == 0
    files = [portal_config.database, *portal_config.database.parent.glob("portal.db-*")]
    for path in files:
        data = path.read_bytes()
        assert ciphertext[:32] not in data and wrapped not in data, path
    access_events = await portal.list_messages()
    assert [m.state for m in access_events] == ["expired"]
    events = await portal.events(access_events[0].message_id)
    assert events[-1].event == "expired"


async def test_notices_carry_no_content(portal: Portal, mailbox: Mailbox) -> None:
    deposit = await portal.deposit(
        BODY, sender="a@example.nhs.uk", sender_name="Dr A",
        recipients=["carer@gmail.test"], queue_id="Q1",
    )  # fmt: skip
    await portal.notify(deposit, "a@example.nhs.uk", "Dr A")
    [notice] = mailbox.to("carer@gmail.test")
    parsed = message_from_bytes(notice, policy=default)
    assert parsed["Subject"] == "Secure message from Example Trust"
    text = parsed.get_body().get_content()  # type: ignore[union-attr]
    assert f"https://portal.example.nhs.uk/m/{deposit.links['carer@gmail.test']}" in text
    assert "Dr A" in text and "Example Trust" in text
    for secret in (b"secret-body", b"943 476 5919", b"9434765919", b"NHS"):
        assert secret not in notice
    [sender_notice] = mailbox.to("a@example.nhs.uk")
    assert deposit.message_id.encode() in sender_notice and b"carer@gmail.test" in sender_notice


async def test_renotify_after_crash_gives_a_new_working_link(
    portal: Portal, mailbox: Mailbox
) -> None:
    old = (await _deposit(portal))["carer@gmail.test"]  # crashed before notify
    assert await portal.renotify() == 1
    assert await portal.renotify() == 0
    new = re.search(rb"/m/([A-Za-z0-9_-]+)", mailbox.to("carer@gmail.test")[0])
    assert new is not None
    assert await portal.access(old) is None
    assert isinstance(await portal.access(new.group(1).decode()), Access)


async def test_conversation_groups_the_same_two_people(portal: Portal, mailbox: Mailbox) -> None:
    first = (await _deposit(portal))["carer@gmail.test"]
    await _deposit(portal, "someone@gmail.test")
    await _deposit(portal)
    session = await _session(portal, mailbox, first, "carer@gmail.test")
    listed = await portal.conversation(session)
    assert len(listed) == 2 and all(m.recipients == ("carer@gmail.test",) for m in listed)


async def test_reply_message(portal: Portal, mailbox: Mailbox) -> None:
    token = (await _deposit(portal))["carer@gmail.test"]
    session = await _session(portal, mailbox, token, "carer@gmail.test")
    original = b"Message-ID: <m1@example.nhs.uk>\r\n" + BODY
    rcpt, reply = portal.reply_message(
        session, original, "thanks", [("a.txt", "text/plain", b"hello")]
    )
    parsed = message_from_bytes(reply, policy=default)
    assert rcpt == "a@example.nhs.uk" and parsed["To"] == "a@example.nhs.uk"
    assert parsed["From"] == "carer@gmail.test" and parsed["Sender"] == "portal@example.nhs.uk"
    assert parsed["In-Reply-To"] == "<m1@example.nhs.uk>"
    assert parsed["X-Securemail-Trust"] == "external"
    await portal.record(session, "replied")
    assert (await portal.events(session.message_id))[-1].event == "replied"


async def test_rotate_key_keeps_messages_and_retires_old_key(
    portal: Portal, mailbox: Mailbox, portal_config: PortalConfig
) -> None:
    tokens = [(await _deposit(portal, f"r{i}@gmail.test"))[f"r{i}@gmail.test"] for i in range(3)]
    old = read_key(portal_config.key_file)
    assert await portal.rotate_key() == 3
    new = read_key(portal_config.key_file)
    assert new != old and not sidecar(portal_config.key_file, "old").exists()
    for i, token in enumerate(tokens):
        assert await portal.read(await _session(portal, mailbox, token, f"r{i}@gmail.test")) == BODY
    with _db(portal_config) as db:
        message_id, wrapped = db.execute("SELECT id, wrapped_key FROM messages").fetchone()
    with pytest.raises(DecryptError):
        old.unwrap(wrapped, message_id)


@pytest.mark.parametrize("crash_at", ["rewrap", "finish"])
async def test_crash_mid_rotation_recovers(
    portal_config: PortalConfig, clock: Clock, mailbox: Mailbox,
    monkeypatch: pytest.MonkeyPatch, crash_at: str,
) -> None:  # fmt: skip
    """Before the re-wrap commits the old key stays; after it, the new one is finished
    into place from key_file.new. Either way every message opens."""
    portal = Portal.open(portal_config, clock=clock, send=mailbox)
    await portal.start()
    token = (await _deposit(portal))["carer@gmail.test"]

    def crash(*args: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(portal_keys, "rewrap" if crash_at == "rewrap" else "finish_rotation", crash)
    with pytest.raises(Exception, match="power cut"):
        await portal.rotate_key()
    await portal.close()
    monkeypatch.undo()
    assert sidecar(portal_config.key_file, "new").exists()
    again = Portal.open(portal_config, clock=clock, send=mailbox)
    await again.start()
    try:
        assert await again.read(await _session(again, mailbox, token, "carer@gmail.test")) == BODY
    finally:
        await again.close()
    for suffix in ("new", "old"):
        assert not sidecar(portal_config.key_file, suffix).exists()


async def test_audit_chain_verifies_and_names_an_edited_row(
    portal: Portal, mailbox: Mailbox, portal_config: PortalConfig
) -> None:
    token = (await _deposit(portal))["carer@gmail.test"]
    await _session(portal, mailbox, token, "carer@gmail.test")
    check = await portal.verify_audit()
    assert check.ok and check.rows == 3
    with _db(portal_config) as db, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET detail = 'x' WHERE id = 2")
    with _db(portal_config) as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET detail = 'nothing happened' WHERE id = 2")
    check = await portal.verify_audit()
    assert (check.ok, check.broken_id) == (False, 2) and "hash" in check.why
