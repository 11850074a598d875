"""A sender's portal messages within the wait share one sender notice (``digest``); the
recipients' notices are never gathered or delayed. A real portal on a real database."""

from __future__ import annotations

import asyncio
import re
from email import message_from_bytes
from email.policy import default

from harness.portal_pages import Clock, Mailbox

from securemail.config import PortalConfig
from securemail.portal import Portal

BODY = b"From: Dr A <a@example.nhs.uk>\r\nSubject: NHS 943 476 5919\r\n\r\nsecret-body-4711\r\n"


async def _send(portal: Portal, sender: str, rcpt: str) -> str:
    deposit = await portal.deposit(
        BODY, sender=sender, sender_name="Dr A", recipients=[rcpt], queue_id="Q"
    )
    await portal.notify(deposit, sender, "Dr A")
    return deposit.message_id


def _ids(notice: bytes) -> list[str]:
    text = message_from_bytes(notice, policy=default).get_body().get_content()  # type: ignore[union-attr]
    return re.findall(r"securemail portal revoke (\w+)", text)


async def test_a_senders_messages_share_one_notice_and_recipients_wait_for_nothing(
    portal_config: PortalConfig, clock: Clock, mailbox: Mailbox
) -> None:
    portal = Portal.open(portal_config, clock=clock, send=mailbox, sender_notice_wait=0.5)
    await portal.start()
    try:
        alice = [await _send(portal, "alice@example.nhs.uk", f"c{i}@gmail.test") for i in range(3)]
        bob = await _send(portal, "bob@example.nhs.uk", "c9@gmail.test")
        for i in range(3):  # every recipient has their link already
            assert len(mailbox.to(f"c{i}@gmail.test")) == 1
        assert mailbox.to("alice@example.nhs.uk") == []  # gathering
        for _ in range(100):
            if mailbox.to("alice@example.nhs.uk") and mailbox.to("bob@example.nhs.uk"):
                break
            await asyncio.sleep(0.05)
        [notice] = mailbox.to("alice@example.nhs.uk")
        assert _ids(notice) == alice
        parsed = message_from_bytes(notice, policy=default)
        assert parsed["Subject"] == "Your 3 messages were sent by the secure portal"
        for secret in (b"secret-body", b"943 476 5919", b"9434765919", b"/m/"):
            assert secret not in notice
        [single] = mailbox.to("bob@example.nhs.uk")
        assert _ids(single) == [bob]
        assert message_from_bytes(single, policy=default)["Subject"] == (
            "Your message was sent by the secure portal"
        )
    finally:
        await portal.close()


async def test_a_full_notice_goes_at_once_and_close_sends_what_is_pending(
    portal_config: PortalConfig, clock: Clock, mailbox: Mailbox
) -> None:
    portal = Portal.open(portal_config, clock=clock, send=mailbox, sender_notice_wait=3600)
    await portal.start()
    sent = [await _send(portal, "alice@example.nhs.uk", "carer@gmail.test") for _ in range(52)]
    await asyncio.sleep(0)  # the full notice's task runs
    await asyncio.sleep(0)
    [full] = mailbox.to("alice@example.nhs.uk")
    assert _ids(full) == sent[:50]
    await portal.close()  # an hour early: the last two are not lost
    assert [_ids(n) for n in mailbox.to("alice@example.nhs.uk")] == [sent[:50], sent[50:]]


async def test_a_failed_sender_notice_is_logged_not_raised(
    portal_config: PortalConfig, clock: Clock, caplog
) -> None:
    async def refuse(rcpt: str, message: bytes) -> None:
        if rcpt.startswith("alice"):
            raise RuntimeError("queue full")

    portal = Portal.open(portal_config, clock=clock, send=refuse, sender_notice_wait=3600)
    await portal.start()
    message_id = await _send(portal, "alice@example.nhs.uk", "carer@gmail.test")
    await portal.close()
    assert f"sender notice to <alice@example.nhs.uk> not sent ({message_id})" in caplog.text
    [info] = await _reopened(portal_config, clock)
    assert info.message_id == message_id  # the message and its link are untouched


async def _reopened(config: PortalConfig, clock: Clock):
    portal = Portal.open(config, clock=clock)
    await portal.start()
    try:
        return await portal.list_messages()
    finally:
        await portal.close()
