"""Attacks on the portal's pages, each from outside: script in every field a sender or a
recipient controls, hostile attachment names, forged forms, someone else's message,
revoked and expired links, passcode floods."""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

import httpx
import pytest
from harness.portal_pages import RCPT, message, open_message

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
    stored = web.add(
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
    response = await landing.goto(f"{web.url}/m/{stored.token}")
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
    stored = web.add(message(attachments=[(given, "text/html", b"<script>alert(1)</script>")]))
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


async def http_session(http, web, stored) -> dict[str, str]:
    """Landing → passcode → verify with a plain HTTP client; the cookies to send."""
    landing = await http.get(f"/m/{stored.token}")
    browser = landing.cookies.get("__Host-sm_pre") or http.cookies["__Host-sm_pre"]
    token = landing.text.split('name="csrf" value="')[1].split('"')[0]
    cookies = {"__Host-sm_pre": browser}
    sent = await http.post(f"/m/{stored.token}/passcode", data={"csrf": token}, cookies=cookies)
    verify_token = sent.text.split('name="csrf" value="')[1].split('"')[0]
    code = web.portal.last_passcode(stored.rcpt)
    done = await http.post(
        f"/m/{stored.token}/verify", data={"csrf": verify_token, "code": code}, cookies=cookies
    )
    assert done.status_code == 303 and done.headers["location"] == "/read"
    return {**cookies, "__Host-sm_session": done.cookies["__Host-sm_session"]}


async def test_reply_without_or_with_a_wrong_csrf_token_is_refused(web, pki):
    stored = web.add(message())
    other = web.add(message())
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
    mine = web.add(message(subject="Mine", attachments=[("a.pdf", "application/pdf", b"A")]))
    theirs = web.add(
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
        await http.post(f"/m/{mine.token}/passcode", data={"csrf": token}, cookies=cookie)
        refused = await http.post(
            f"/m/{theirs.token}/verify",
            data={"csrf": token, "code": web.portal.last_passcode(RCPT)},
            cookies=cookie,
        )
        assert refused.status_code in (400, 403) and "__Host-sm_session" not in refused.cookies
        still = await http.get("/read", cookies=cookie)
        assert "Mine" in still.text and "Theirs" not in still.text
        forged = await http.get("/read", cookies={"__Host-sm_session": "forged"})
        assert forged.status_code == 403


async def test_revoked_and_expired_links_answer_410_even_with_a_session(web, pki):
    revoked, expired = web.add(message()), web.add(message(), days=1)
    async with client(web, pki) as http:
        cookie = await http_session(http, web, revoked)
        revoked.revoked = True
        assert (await http.get(f"/m/{revoked.token}")).status_code == 410
        assert (await http.get("/read", cookies=cookie)).status_code == 403
        web.clock.now += 2 * 86400
        gone = await http.get(f"/m/{expired.token}")
        assert gone.status_code == 410 and "no longer available" in gone.text
        missing = await http.get("/m/no-such-token")
        assert missing.status_code == 404
        for response in (gone, missing):
            assert response.headers["content-security-policy"] == CSP
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["strict-transport-security"].startswith("max-age=")


@pytest.fixture
def limits() -> WebLimits:
    return WebLimits(passcodes_per_client=3, passcodes_per_link=10, max_body=64 * 1024)


async def test_passcodes_are_rate_limited_per_client_address(web, pki):
    links = [web.add(message()) for _ in range(4)]
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
        assert len(web.portal.outbox) == 3
        web.clock.now += 901  # the window has passed
        sent = await http.post(
            f"/m/{links[3].token}/passcode", data={"csrf": token}, cookies=cookies
        )
        assert sent.status_code == 200


async def test_a_reply_larger_than_the_bound_is_refused_before_it_is_read(web, pki):
    stored = web.add(message())
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
