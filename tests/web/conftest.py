"""The portal web app served over HTTPS (test CA) on the test's loop, over the harness
double of the portal core, and a real Chromium to drive it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from harness.browser import DESKTOP, chromium
from harness.portal_backend import MemoryPortal
from harness.portal_pages import PORTAL, Clock, Web
from playwright.async_api import Browser, BrowserContext

from securemail.web.app import create_app
from securemail.web.guard import WebLimits
from securemail.web.serve import portal_listen, start_portal_web


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
