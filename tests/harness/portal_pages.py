"""Helpers for the portal tests: the shared clock, the mailbox the portal's ``send`` hook
fills, a real ``Portal`` on a temporary directory, test messages, and the walk from a
link to the read page.

The web tests run against the real core: real SQLite, a real master key, messages put
in through ``Portal.deposit`` and announced through ``Portal.notify``. What a person
would read in their inbox (the link, the passcode) is read here from the emails the
portal handed to ``send``: the mailbox is a peer, like the SMTP sink, not a double.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from playwright.async_api import BrowserContext, Page

from securemail.config import PortalConfig
from securemail.portal import Portal, ensure_key

SENDER = "jo.bloggs@trust.example.nhs.uk"
RCPT = "carer@gmail.example"
PORTAL = "portal@trust.example.nhs.uk"


@dataclass
class Clock:
    """A settable clock the app and the portal share (seconds since the epoch)."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Mailbox:
    """The portal's ``send`` hook: every (recipient, RFC 5322 bytes) it mails."""

    sent: list[tuple[str, bytes]] = field(default_factory=list)

    async def __call__(self, rcpt: str, message: bytes) -> None:
        self.sent.append((rcpt, message))

    def to(self, rcpt: str) -> list[bytes]:
        return [m for r, m in self.sent if r == rcpt]

    def texts(self, rcpt: str) -> list[str]:
        """The decoded text bodies of what ``rcpt`` was sent, oldest first."""
        return [_text(raw) for raw in self.to(rcpt)]

    def passcodes(self, rcpt: str) -> list[str]:
        """Every passcode mailed to ``rcpt``, oldest first."""
        return [m.group(1) for t in self.texts(rcpt) if (m := re.search(r"passcode is (\d{6})", t))]

    def passcode(self, rcpt: str) -> str:
        """The passcode in the latest passcode email to ``rcpt``."""
        return self.passcodes(rcpt)[-1]


def _text(raw: bytes) -> str:
    body = message_from_bytes(raw, policy=policy.default).get_body(("plain",))
    assert body is not None
    return body.get_content()  # type: ignore[attr-defined]


def portal_config(directory: Path, base_url: str) -> PortalConfig:
    """A portal under ``directory`` (database, 0600 master key made now)."""
    config = PortalConfig(
        enabled=True,
        key_file=directory / "portal.key",
        database=directory / "portal.db",
        base_url=base_url,
    )
    ensure_key(config.key_file)
    return config


@dataclass(frozen=True)
class Link:
    """One recipient's way to one deposited message, as their notice email gave it."""

    message_id: str
    rcpt: str
    url: str

    @property
    def token(self) -> str:
        return self.url.rsplit("/m/", 1)[1]


@dataclass
class Web:
    """The served app (``url``) over the real ``portal``; replies the app submitted."""

    url: str
    portal: Portal
    clock: Clock
    mailbox: Mailbox
    replies: list[tuple[str, bytes]] = field(default_factory=list)

    async def add(
        self, raw: bytes, *, rcpt: str = RCPT, sender: str = SENDER, sender_name: str = "Jo Bloggs"
    ) -> Link:
        """Deposit ``raw`` for ``rcpt`` and send the notices, as the gateway does; the
        link is the one in the recipient's notice email."""
        deposit = await self.portal.deposit(
            raw, sender=sender, sender_name=sender_name, recipients=[rcpt], queue_id="T1"
        )
        await self.portal.notify(deposit, sender, sender_name)
        notice = self.mailbox.texts(rcpt)[-1]
        found = re.search(r"(https://[^\s/]+/m/[A-Za-z0-9_-]+)", notice)
        assert found is not None, notice
        link = Link(deposit.message_id, rcpt, found.group(1))
        assert link.url.startswith(self.url) and link.token == deposit.links[rcpt]
        return link

    def passcode(self, rcpt: str) -> str:
        return self.mailbox.passcode(rcpt)


def message(
    subject: str = "Discharge summary",
    *,
    text: str | None = "Dear carer,\nplease find the summary attached.\n",
    html: str | None = None,
    attachments: list[tuple[str, str, bytes]] = (),  # type: ignore[assignment]
    inline: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
    from_: str = f"Jo Bloggs <{SENDER}>",
) -> bytes:
    """An RFC 5322 message; ``inline`` images are (content-id, png bytes)."""
    msg = EmailMessage()
    msg["From"] = from_
    msg["To"] = RCPT
    msg["Subject"] = subject
    msg["Date"] = "Tue, 03 Mar 2026 14:05:00 +0000"
    msg["Message-ID"] = "<original-1@trust.example.nhs.uk>"
    if text is not None:
        msg.set_content(text)
    if html is not None:
        if text is None:
            msg.set_content(html, subtype="html")
        else:
            msg.add_alternative(html, subtype="html")
    if inline:
        body = msg.get_body(("html",))
        for cid, data in inline:
            body.add_related(data, maintype="image", subtype="png", cid=f"<{cid}>")
    for name, kind, data in attachments:
        maintype, _, subtype = kind.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return bytes(msg)


async def open_message(context: BrowserContext, web: Web, link: Link) -> Page:
    """Landing → passcode → verify → the read page; returns the page."""
    page = await context.new_page()
    await page.goto(link.url)
    await page.get_by_role("button", name="Send me a passcode").click()
    await page.get_by_label("Passcode").fill(web.passcode(link.rcpt))
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_url(f"{web.url}/read")
    return page
