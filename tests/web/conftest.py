"""The portal web app served over HTTPS (test CA) on the test's loop, over the REAL
portal core (SQLite and a master key in the test's directory, the test's clock, the
portal's emails caught by a mailbox), and a real Chromium to drive it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from harness.browser import DESKTOP, chromium
from harness.portal_pages import PORTAL, Clock, Mailbox, Web, portal_config
from playwright.async_api import Browser, BrowserContext

from securemail.portal import Portal
from securemail.web.app import create_app
from securemail.web.guard import WebLimits
from securemail.web.serve import bind_portal, portal_listen, start_portal_web


@pytest.fixture
def limits() -> WebLimits:
    return WebLimits()


@pytest.fixture
def portal_options() -> dict[str, object]:
    """``PortalConfig`` values a test wants other than the defaults (parametrize it)."""
    return {}


@pytest.fixture
async def web(tmp_path, pki, limits, portal_options) -> AsyncIterator[Web]:
    """The socket is bound first so the portal's ``base_url`` (the links in its emails)
    names the port the pages are really served on."""
    clock, mailbox = Clock(), Mailbox()
    replies: list[tuple[str, bytes]] = []

    async def submit_reply(rcpt: str, raw: bytes) -> None:
        replies.append((rcpt, raw))

    listen = portal_listen("127.0.0.1:0", "https://localhost")
    sock = bind_portal(listen)
    url = f"https://localhost:{sock.getsockname()[1]}"
    config = dataclasses.replace(portal_config(tmp_path, url), **portal_options)
    portal = Portal.open(config, clock=clock, address=PORTAL, send=mailbox)
    await portal.start()
    try:
        app = create_app(
            portal, base_url=url, submit_reply=submit_reply, clock=clock, limits=limits
        )
        tls = pki.server_context("localhost", "127.0.0.1")
        server = await start_portal_web(app, listen, tls, sock=sock)
        try:
            yield Web(url, portal, clock, mailbox, replies)
        finally:
            await server.stop(grace=2)
    finally:
        await portal.close()


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
