"""The recipient's whole journey in a real browser over the real portal core: the link
from the notice email → passcode (from the passcode email) → verify → read → download
→ reply → conversation, each page screenshotted at desktop and phone width, and the
accessibility basics checked on each."""

from __future__ import annotations

import base64
import time
from email import message_from_bytes, policy

import pytest
from harness.browser import ARTIFACTS, DESKTOP, PHONE
from harness.portal_pages import PORTAL, RCPT, SENDER, message, open_message

pytestmark = pytest.mark.slow  # Chromium: several seconds

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


async def check_page(page, name: str) -> None:
    """Screenshots at both widths; every input labelled; no horizontal scroll at 375 px;
    the keyboard focus visibly drawn on the first focusable element."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.set_viewport_size(DESKTOP)
    await page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
    await page.set_viewport_size(PHONE)
    await page.screenshot(path=ARTIFACTS / f"{name}-375.png", full_page=True)
    unlabelled = await page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), textarea, select')]
              .filter(e => !(e.labels && e.labels.length)).map(e => e.outerHTML)"""
    )
    assert unlabelled == [], f"{name}: inputs without a label: {unlabelled}"
    overflow = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{name}: {overflow}px of horizontal scroll at 375px"
    await page.keyboard.press("Tab")  # the skip link: on every page, first
    focus = await page.evaluate(
        """() => { const e = document.activeElement, s = getComputedStyle(e);
                   return {tag: e.tagName, outline: s.outlineStyle + ' ' + s.outlineWidth,
                           shadow: s.boxShadow, bg: s.backgroundColor}; }"""
    )
    assert focus["tag"] != "BODY", f"{name}: nothing takes the keyboard focus"
    drawn = focus["shadow"] != "none" or not focus["outline"].startswith("none")
    assert drawn, f"{name}: the focused {focus['tag']} has no visible focus style: {focus}"
    await page.set_viewport_size(DESKTOP)


async def test_journey_landing_to_reply(web, context):
    html = '<p>Dear carer,</p><p>Her <b>discharge</b> summary.</p><img src="cid:logo@trust" alt="Trust logo">'
    raw = message(
        html=html,
        attachments=[("discharge summary.pdf", "application/pdf", PDF)],
        inline=[("logo@trust", PNG)],
    )
    earlier = await web.add(message("Appointment letter"))
    web.clock.now += 3 * 86400
    stored = await web.add(raw)
    page = await context.new_page()
    inline_loaded = []
    page.on(
        "response",
        lambda r: inline_loaded.append(r.status) if "/read/part/" in r.url else None,
    )

    await page.goto(stored.url)
    await page.get_by_role("heading", name="Secure message from Jo Bloggs").wait_for()
    assert SENDER in await page.inner_text("main")
    await check_page(page, "1-landing")

    await page.get_by_role("button", name="Send me a passcode").click()
    await page.get_by_label("Passcode").wait_for()
    assert "We have sent a passcode" in await page.inner_text("main")
    await check_page(page, "2-passcode")

    await page.get_by_label("Passcode").fill(
        "000000" if web.passcode(RCPT) != "000000" else "111111"
    )
    await page.get_by_role("button", name="Continue").click()
    assert "4 more tries" in await page.inner_text("main")
    await check_page(page, "3-wrong-passcode")

    await page.get_by_label("Passcode").fill(web.passcode(RCPT))
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_url(f"{web.url}/read")
    cookie = next(c for c in await context.cookies() if c["name"] == "__Host-sm_session")
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert (
        cookie["path"] == "/" and 0 < cookie["expires"] - time.time() <= 901
    )  # Max-Age: the session life
    body = await page.inner_text(".message-body")
    assert "discharge summary" in body.lower()
    assert await page.locator(".message-body b").count() == 1  # allowed markup kept
    assert inline_loaded == [200]  # the cid: image, from the message itself
    await check_page(page, "4-read")

    async with page.expect_download() as info:
        await page.get_by_role("link", name="discharge summary.pdf").click()
    download = await info.value
    assert download.suggested_filename == "discharge summary.pdf"
    assert (await download.path()).read_bytes() == PDF

    await page.get_by_role("link", name="Reply").click()
    await page.get_by_label("Your reply").fill("Thank you, received.\nShe is well.")
    await page.get_by_label("Attach files (optional)").set_input_files(
        [{"name": "photo.jpg", "mimeType": "text/html", "buffer": b"\xff\xd8\xff fake jpeg"}]
    )
    await check_page(page, "5-reply")
    await page.get_by_role("button", name="Send reply").click()
    await page.get_by_role("heading", name="Your reply has been sent").wait_for()
    await check_page(page, "6-replied")

    [(rcpt, reply_raw)] = web.replies
    reply = message_from_bytes(reply_raw, policy=policy.default)
    assert rcpt == SENDER
    assert reply["From"] == RCPT
    assert reply["Sender"] == PORTAL
    assert reply["In-Reply-To"] == "<original-1@trust.example.nhs.uk>"
    assert reply["X-Securemail-Trust"] == "external"
    assert "She is well." in reply.get_body(("plain",)).get_content()
    [attached] = list(reply.iter_attachments())
    assert attached.get_filename() == "photo.jpg"
    assert attached.get_content_type() == "application/octet-stream"  # declared type ignored
    assert attached.get_content() == b"\xff\xd8\xff fake jpeg"

    await page.get_by_role("link", name="See the conversation").click()
    items = page.locator(".conversation li")
    assert await items.count() == 2  # both messages Jo sent this recipient, oldest first
    first, current = await items.nth(0).inner_text(), await items.nth(1).inner_text()
    assert "Jo Bloggs" in first and "Available until" in first
    assert "The message you are reading" in current
    assert await items.nth(1).get_attribute("aria-current") == "true"
    listing = await page.inner_text("main")
    assert "Discharge summary" not in listing and "Appointment letter" not in listing
    await check_page(page, "7-conversation")

    events = [e.event for e in await web.portal.events(stored.message_id)]
    runs = [e for i, e in enumerate(events) if i == 0 or events[i - 1] != e]
    assert runs == [
        "deposited",
        "notified",
        "passcode sent",
        "passcode failed",
        "session started",
        "opened",  # the page, its inline image, the download: each a decryption
        "downloaded",
        "opened",  # the reply form and the reply read the original
        "replied",
    ]
    assert [e.event for e in await web.portal.events(earlier.message_id)] == [
        "deposited",
        "notified",
    ]
    assert context.dialogs == []


async def test_plain_text_is_escaped_with_its_line_breaks(web, context):

    stored = await web.add(message(text="Line one\nLine <two> & three\n\nLast"))
    page = await open_message(context, web, stored)
    shown = await page.inner_text(".message-text")
    assert shown.splitlines()[:2] == ["Line one", "Line <two> & three"]
    assert await page.locator(".message-text *").count() == 0  # no element made of it


async def test_gone_and_unknown_pages(web, context):
    revoked = await web.add(message())
    assert await web.portal.revoke(revoked.message_id, "test")
    page = await context.new_page()
    response = await page.goto(revoked.url)
    assert response.status == 410
    assert "no longer available" in await page.inner_text("h1")
    await check_page(page, "8-gone")
    response = await page.goto(f"{web.url}/m/not-a-token")
    assert response.status == 404
    await check_page(page, "9-not-found")
