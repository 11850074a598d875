"""Attacks on the portal's pages, each from outside, against the real portal core:
script in every field a sender or a recipient controls, hostile attachment names, forged
forms, someone else's message, revoked and expired links, passcode floods, guesses and
replays."""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

import httpx
import pytest
from harness.portal_pages import RCPT, SENDER, message, open_message

from securemail.portal.service import RESEND_AFTER
from securemail.web.guard import CSP, WebLimits

pytestmark = pytest.mark.slow  # Chromium: several seconds

XSS_HTML = """
<p>Hello</p>
<script>window.pwned = 'script'; alert('script')</script>
<img src="x" onerror="window.pwned = 'onerror'; alert('onerror')">
<a id="js" href="javascript:window.pwned='href';alert('href')">click me</a>
<svg onload="window.pwned='svg'; alert('svg')"><circle r="5"></circle></svg>
<p style="background:url(https://evil.example/x)" onclick="alert(1)">styled</p>
<iframe src="https://evil.example/"></iframe>
<img src="https://evil.example/track.png">
"""
XSS = '<img src=x onerror="window.pwned=1;alert(1)"><script>window.pwned=2;alert(2)</script>'


def client(web, pki) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=web.url, verify=pki.client_context(), follow_redirects=False)


async def test_script_in_subject_body_display_name_and_file_name_never_runs(web, context):
    stored = await web.add(
        message(
            subject=f"Results {XSS}",
            html=XSS_HTML,
            attachments=[(f"report{XSS}.pdf", "application/pdf", b"%PDF-1.4")],
            from_=f'"Jo {XSS}" <jo.bloggs@trust.example.nhs.uk>',
        ),
        sender_name=f"Jo {XSS}",
    )
    requests = []
    landing = await context.new_page()
    landing.on("request", lambda r: requests.append(r.url))
    response = await landing.goto(stored.url)
    assert response.headers["content-security-policy"] == CSP
    assert "<img src=x" in await landing.inner_text("h1")  # shown as text
    page = await open_message(context, web, stored)
    page.on("request", lambda r: requests.append(r.url))
    await page.reload()
    await page.get_by_text("click me").click()  # a javascript: link, had it survived
    assert await page.evaluate("() => window.pwned") is None
    assert context.dialogs == []
    body = await page.inner_html(".message-body")
    for banned in ("<script", "onerror", "onload", "javascript:", "style=", "<iframe", "<svg"):
        assert banned not in body.lower()
    assert "<img src=x" in await page.inner_text("h1")
    assert "<img src=x" in await page.inner_text(".headers")
    assert all(url.startswith(web.url) for url in requests), requests  # nothing external


@pytest.mark.parametrize(
    ("given", "saved"),
    [
        ("../../../home/user/.bashrc", "bashrc"),
        ("..\\..\\windows\\system32\\evil.dll", "evil.dll"),
        ("report\x00\t\x1b[31m.pdf", "report [31m.pdf"),
        ("\u202egpj.exe", "gpj.exe"),
        ("..", "attachment"),
        ("a" * 300 + ".pdf", "a" * 116 + ".pdf"),
    ],
)
async def test_hostile_attachment_names_download_under_a_safe_name(web, pki, given, saved):
    stored = await web.add(
        message(attachments=[(given, "text/html", b"<script>alert(1)</script>")])
    )
    async with client(web, pki) as http:
        cookie = await http_session(http, web, stored)
        page = await http.get("/read", cookies=cookie)
        number = page.text.split('href="/read/attachment/')[1].split('"')[0]
        response = await http.get(f"/read/attachment/{number}", cookies=cookie)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["x-content-type-options"] == "nosniff"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment; ")
    name = unquote(disposition.split("filename*=UTF-8''")[1])
    assert name == saved
    assert not any(c in name for c in "/\\") and ".." not in name
    assert all(c.isprintable() for c in name)


def csrf_of(page: httpx.Response) -> str:
    return page.text.split('name="csrf" value="')[1].split('"')[0]


async def ask_passcode(http, stored) -> tuple[httpx.Response, dict[str, str]]:
    """Landing → "Send me a passcode"; (the answer, the cookies to send on)."""
    landing = await http.get(f"/m/{stored.token}")
    browser = landing.cookies.get("__Host-sm_pre") or http.cookies["__Host-sm_pre"]
    cookies = {"__Host-sm_pre": browser}
    sent = await http.post(
        f"/m/{stored.token}/passcode", data={"csrf": csrf_of(landing)}, cookies=cookies
    )
    return sent, cookies


async def try_code(http, stored, cookies, form, code) -> httpx.Response:
    return await http.post(
        f"/m/{stored.token}/verify", data={"csrf": csrf_of(form), "code": code}, cookies=cookies
    )


async def http_session(http, web, stored) -> dict[str, str]:
    """Landing → passcode → verify with a plain HTTP client; the cookies to send."""
    sent, cookies = await ask_passcode(http, stored)
    done = await try_code(http, stored, cookies, sent, web.passcode(stored.rcpt))
    assert done.status_code == 303 and done.headers["location"] == "/read"
    return {**cookies, "__Host-sm_session": done.cookies["__Host-sm_session"]}


async def test_reply_without_or_with_a_wrong_csrf_token_is_refused(web, pki):
    stored = await web.add(message())
    other = await web.add(message())
    async with client(web, pki) as http:
        cookie = await http_session(http, web, stored)
        other_cookie = await http_session(http, web, other)
        form = (await http.get("/read/reply", cookies=other_cookie)).text
        others_token = form.split('name="csrf" value="')[1].split('"')[0]
        for data in (
            {"text": "hi"},
            {"text": "hi", "csrf": "0" * 64},
            {"text": "hi", "csrf": others_token},
        ):
            response = await http.post("/read/reply", data=data, cookies=cookie)
            assert response.status_code == 403, data
            assert response.headers["content-security-policy"] == CSP
        no_browser = await http.post(f"/m/{stored.token}/passcode", data={"csrf": "x"})
        assert no_browser.status_code == 403
    assert web.replies == []


async def test_a_session_reaches_only_its_own_message(web, pki):
    mine = await web.add(message(subject="Mine", attachments=[("a.pdf", "application/pdf", b"A")]))
    theirs = await web.add(
        message(
            subject="Theirs",
            text="x",
            attachments=[("1.pdf", "application/pdf", b"1"), ("2.pdf", "application/pdf", b"B")],
        ),
        rcpt="someone.else@example.org",
    )
    async with client(web, pki) as http:
        cookie = await http_session(http, web, mine)
        read = await http.get("/read", cookies=cookie)
        assert "Mine" in read.text and "Theirs" not in read.text
        # Part numbers that exist only in the other message: not found in this one.
        assert (await http.get("/read/attachment/2", cookies=cookie)).status_code == 404
        assert (await http.get("/read/part/2", cookies=cookie)).status_code == 404
        assert (await http.get("/read/attachment/99", cookies=cookie)).status_code == 404
        # A's cookie on B's link: B still asks for B's passcode; A's code does not open it.
        landing = await http.get(f"/m/{theirs.token}", cookies=cookie)
        assert "Send me a passcode" in landing.text and "Theirs" not in landing.text
        form = (await http.get(f"/m/{theirs.token}/verify", cookies=cookie)).text
        token = form.split('name="csrf" value="')[1].split('"')[0]
        web.clock.now += RESEND_AFTER  # the core's per-link wait between two passcodes
        again = csrf_of(await http.get(f"/m/{mine.token}", cookies=cookie))
        resent = await http.post(f"/m/{mine.token}/passcode", data={"csrf": again}, cookies=cookie)
        assert resent.status_code == 200
        refused = await http.post(
            f"/m/{theirs.token}/verify",
            data={"csrf": token, "code": web.passcode(RCPT)},
            cookies=cookie,
        )
        assert refused.status_code == 400 and "__Host-sm_session" not in refused.cookies
        events = [e.event for e in await web.portal.events(theirs.message_id)]
        assert events[-1] == "passcode failed" and "session started" not in events
        still = await http.get("/read", cookies=cookie)
        assert "Mine" in still.text and "Theirs" not in still.text
        forged = await http.get("/read", cookies={"__Host-sm_session": "forged"})
        assert forged.status_code == 403


# A session that outlives its message: expiry meets a session still live.
@pytest.mark.parametrize("portal_options", [{"retention_days": 1, "session_minutes": 3000}])
async def test_revoked_and_expired_links_answer_410_even_with_a_session(web, pki):
    revoked, expired = await web.add(message()), await web.add(message())
    async with client(web, pki) as http:
        cookie = await http_session(http, web, revoked)
        assert await web.portal.revoke(revoked.message_id, "test")
        assert (await http.get(f"/m/{revoked.token}")).status_code == 410
        assert (await http.get("/read", cookies=cookie)).status_code == 403
        cookie = await http_session(http, web, expired)
        landing = await http.get(f"/m/{expired.token}", cookies=cookie)
        web.clock.now += web.portal.config.retention_days * 86400
        gone = await http.get(f"/m/{expired.token}")  # the clock decides, before expire()
        assert gone.status_code == 410 and "no longer available" in gone.text
        ended = await http.get("/read", cookies=cookie)  # live session, message gone
        assert ended.status_code == 403 and "open your link again" in ended.text
        assert await web.portal.expire() == 2  # the revoked message's metadata too
        assert (await http.get("/read", cookies=cookie)).status_code == 403
        assert (await http.get(f"/m/{expired.token}")).status_code == 410
        sent = await http.post(
            f"/m/{expired.token}/passcode", data={"csrf": csrf_of(landing)}, cookies=cookie
        )
        assert sent.status_code == 410
        missing = await http.get("/m/no-such-token")
        assert missing.status_code == 404
        for response in (gone, missing):
            assert response.headers["content-security-policy"] == CSP
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["strict-transport-security"].startswith("max-age=")


@pytest.fixture
def limits() -> WebLimits:
    return WebLimits(passcodes_per_client=3, max_body=64 * 1024)


async def test_passcodes_are_rate_limited_per_client_address(web, pki):
    links = [await web.add(message()) for _ in range(4)]
    async with client(web, pki) as http:
        statuses = []
        for stored in links:
            landing = await http.get(f"/m/{stored.token}")
            token = landing.text.split('name="csrf" value="')[1].split('"')[0]
            cookies = {
                "__Host-sm_pre": landing.cookies.get("__Host-sm_pre")
                or http.cookies["__Host-sm_pre"]
            }
            sent = await http.post(
                f"/m/{stored.token}/passcode", data={"csrf": token}, cookies=cookies
            )
            statuses.append(sent.status_code)
        assert statuses == [200, 200, 200, 429]
        assert int(sent.headers["retry-after"]) > 0
        assert len(web.mailbox.passcodes(RCPT)) == 3
        web.clock.now += 901  # the window has passed
        sent = await http.post(
            f"/m/{links[3].token}/passcode", data={"csrf": token}, cookies=cookies
        )
        assert sent.status_code == 200


async def test_a_reply_larger_than_the_bound_is_refused_before_it_is_read(web, pki):
    stored = await web.add(message())
    async with client(web, pki) as http:
        cookie = await http_session(http, web, stored)
    port = int(web.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=pki.client_context(), server_hostname="localhost"
    )
    cookies = "; ".join(f"{k}={v}" for k, v in cookie.items())
    writer.write(
        b"POST /read/reply HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\n"
        b"Content-Length: 100000\r\nCookie: " + cookies.encode() + b"\r\n\r\n"
    )
    await writer.drain()  # the headers only: the answer comes before any body is read
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status.startswith(b"HTTP/1.1 413")
    assert web.replies == []


async def test_passcodes_per_link_are_counted_by_the_core(web, pki):
    stored = await web.add(message())
    async with client(web, pki) as http:
        first, _ = await ask_passcode(http, stored)
        again, _ = await ask_passcode(http, stored)
        assert (first.status_code, again.status_code) == (200, 429)
        assert 0 < int(again.headers["retry-after"]) <= RESEND_AFTER
        web.clock.now += RESEND_AFTER
        later, _ = await ask_passcode(http, stored)
        assert later.status_code == 200
    assert len(web.mailbox.passcodes(RCPT)) == 2


async def test_a_passcode_opens_one_session_only(web, pki):
    stored = await web.add(message())
    async with client(web, pki) as http:
        sent, cookies = await ask_passcode(http, stored)
        code = web.passcode(RCPT)
        assert (await try_code(http, stored, cookies, sent, code)).status_code == 303
        replay = await try_code(http, stored, cookies, sent, code)
    assert replay.status_code == 400 and "__Host-sm_session" not in replay.cookies
    assert "4 more tries" in replay.text
    events = [e.event for e in await web.portal.events(stored.message_id)]
    assert events[-2:] == ["session started", "passcode replayed"]


async def test_five_wrong_passcodes_lock_the_message_and_tell_its_sender(web, pki):
    stored = await web.add(message())
    async with client(web, pki) as http:
        landing = await http.get(f"/m/{stored.token}")
        sent, cookies = await ask_passcode(http, stored)
        wrong = "000000" if web.passcode(RCPT) != "000000" else "111111"
        answers = [await try_code(http, stored, cookies, sent, wrong) for _ in range(5)]
        assert [a.status_code for a in answers] == [400, 400, 400, 400, 403]
        assert "1 more try" in answers[3].text and "locked" in answers[4].text
        # Locked for good: the right code, a new passcode, the link itself.
        right = await try_code(http, stored, cookies, sent, web.passcode(RCPT))
        assert right.status_code == 403 and "__Host-sm_session" not in right.cookies
        web.clock.now += RESEND_AFTER
        resent = await http.post(
            f"/m/{stored.token}/passcode", data={"csrf": csrf_of(landing)}, cookies=cookies
        )
        landing = await http.get(f"/m/{stored.token}")
        assert resent.status_code == landing.status_code == 403
        assert "This message is locked" in landing.text
    assert len(web.mailbox.passcodes(RCPT)) == 1
    [told] = [t for t in web.mailbox.texts(SENDER) if "locked" in t]
    assert stored.message_id in told and RCPT in told
    info = await web.portal.show(stored.message_id)
    assert info is not None and info.state == "locked"
