"""The portal web app served over HTTPS (test CA) on the test's loop, over the harness
double of the portal core, and a real Chromium to drive it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage

import pytest
from harness.browser import DESKTOP, chromium
from harness.portal_backend import MemoryPortal, Stored
from playwright.async_api import Browser, BrowserContext

from securemail.web.app import create_app
from securemail.web.guard import WebLimits
from securemail.web.serve import portal_listen, start_portal_web

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


@pytest.fixture
def limits() -> WebLimits:
    return WebLimits()


@pytest.fixture
async def web(pki, limits) -> AsyncIterator[Web]:
    clock = Clock()
    portal = MemoryPortal(clock, PORTAL)
    replies: list[tuple[str, bytes]] = []

    async def submit_reply(rcpt: str, raw: bytes) -> None:
        replies.append((rcpt, raw))

    listen = portal_listen("127.0.0.1:0", "https://localhost")
    app = create_app(
        portal, base_url=listen.base_url, submit_reply=submit_reply, clock=clock, limits=limits
    )
    server = await start_portal_web(app, listen, pki.server_context("localhost", "127.0.0.1"))
    try:
        yield Web(f"https://localhost:{server.port}", portal, clock, replies)
    finally:
        await server.stop(grace=2)


@pytest.fixture
async def browser(pki) -> AsyncIterator[Browser]:
    async with chromium(pki.ca_file) as b:
        yield b


@pytest.fixture
async def context(browser) -> AsyncIterator[BrowserContext]:
    """A browser context (a fresh cookie jar) at desktop width; ``context.dialogs``
    collects every alert/confirm/prompt any page opened (an executed XSS would)."""
    ctx = await browser.new_context(viewport=DESKTOP, accept_downloads=True)
    ctx.dialogs = []  # type: ignore[attr-defined]

    def on_page(page):
        page.on("dialog", lambda d: (ctx.dialogs.append(d.message), d.dismiss()))  # type: ignore[attr-defined]

    ctx.on("page", on_page)
    yield ctx
    await ctx.close()


async def open_message(context: BrowserContext, web: Web, stored: Stored):
    """Landing → passcode → verify → the read page; returns the page."""
    page = await context.new_page()
    await page.goto(f"{web.url}/m/{stored.token}")
    await page.get_by_role("button", name="Send me a passcode").click()
    await page.get_by_label("Passcode").fill(web.portal.last_passcode(stored.rcpt))
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_url(f"{web.url}/read")
    return page
