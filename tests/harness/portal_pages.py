"""Helpers for the portal web tests: the shared clock, the served app's handle, test
messages, and the walk from a link to the read page."""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import EmailMessage

from playwright.async_api import BrowserContext

from harness.portal_backend import MemoryPortal, Stored

SENDER = "jo.bloggs@trust.example.nhs.uk"
RCPT = "carer@gmail.example"
PORTAL = "portal@trust.example.nhs.uk"


class Clock:
    """A settable clock the app and the double share (seconds since the epoch)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Web:
    url: str
    portal: MemoryPortal
    clock: Clock
    replies: list[tuple[str, bytes]] = field(default_factory=list)

    def add(self, raw: bytes, **kw: object) -> Stored:
        values = {"rcpt": RCPT, "sender": SENDER, "sender_name": "Jo Bloggs", **kw}
        return self.portal.add(raw, **values)  # type: ignore[arg-type]


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


async def open_message(context: BrowserContext, web: Web, stored: Stored):
    """Landing → passcode → verify → the read page; returns the page."""
    page = await context.new_page()
    await page.goto(f"{web.url}/m/{stored.token}")
    await page.get_by_role("button", name="Send me a passcode").click()
    await page.get_by_label("Passcode").fill(web.portal.last_passcode(stored.rcpt))
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_url(f"{web.url}/read")
    return page
