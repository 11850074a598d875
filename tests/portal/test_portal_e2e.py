"""Issue 13 end to end, in a real browser: a clinician submits a sensitive message to a
carer at gmail.test; the carer gets a notification with none of it, opens the link in
Chromium, gets a passcode by a second email, reads the message, downloads the attachment
byte for byte, and replies; the reply reaches the clinician's mailbox (the internal
server). Everything real: the gateway (submission, pipeline, queue, DKIM-less loopback
delivery), the portal core and its HTTPS listener, SMTP sinks, loopback DNS, the test CA
trusted by the browser's NSS database. Screenshots of each page: tests/artifacts/portal/.
"""

from __future__ import annotations

import asyncio
import re
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from harness.browser import ARTIFACTS, chromium
from harness.gatewaykit import HOSTNAME, ORG_DOMAIN, add_mx, eventually, submit
from harness.serve import free_port
from harness.smtpsink import SinkServer

from securemail.portal import ensure_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # Chromium and a gateway

CARER = "carer@gmail.test"
ALICE = f"alice@{ORG_DOMAIN}"
UNIQUE = "heron-basalt-5518-unique-portal-body"
NHS_NUMBER = "943 476 5919"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 20 + b"\n%%EOF\n"


def _message() -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Dr Alice <{ALICE}>"
    msg["To"] = CARER
    msg["Subject"] = f"[secure] Discharge for {NHS_NUMBER}"
    msg["Message-ID"] = f"<e2e-1@{ORG_DOMAIN}>"
    msg.set_content(f"Dear carer,\n{UNIQUE}\nNHS number {NHS_NUMBER}.\n")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="discharge.pdf")
    return msg.as_bytes(policy=policy.SMTP)  # CRLF line ends, as SMTP has them


def _text(raw: bytes) -> str:
    msg = message_from_bytes(raw, policy=policy.default)
    body = msg.get_body(("plain", "html"))
    return body.get_content() if body is not None else ""


def _to(sink: SinkServer, rcpt: str) -> list[bytes]:
    return [m.data for s in sink.sessions for m in s.messages if rcpt in m.rcpt_tos]


@pytest.fixture
def mx(pki):
    ctx = pki.server_context("mx.gmail.test")
    with SinkServer(hostname="mx.gmail.test", tls_context=ctx) as sink:
        yield sink


async def test_submit_notify_passcode_read_download_reply(
    gateway_factory, mx, internal, dns_server, pki, tmp_path
):
    add_mx(dns_server, "gmail.test")
    ensure_key(tmp_path / "portal.key")
    port = free_port()
    base = f"https://{HOSTNAME}:{port}"
    gateway = await gateway_factory(
        mx.port,
        extra='[policy]\nunknown_sensitive_action = "portal"\n'
        '[portal]\nenabled = true\nkey_file = "portal.key"\ndatabase = "portal.db"\n'
        f'listen = "127.0.0.1:{port}"\nbase_url = "{base}"\n',
    )
    assert gateway.portal_address == ("127.0.0.1", port)
    refused = await asyncio.to_thread(submit, gateway, pki, ALICE, [CARER], _message())
    assert refused == {}

    # The notification: a link, and nothing of the message.
    await eventually(lambda: _to(mx, CARER))
    [notice] = _to(mx, CARER)
    for secret in (UNIQUE, NHS_NUMBER, "9434765919", "Discharge", "discharge.pdf"):
        assert secret.encode() not in notice, secret
    notice_text = _text(notice)
    [link] = re.findall(re.escape(base) + r"/m/[A-Za-z0-9_-]{22,}", notice_text)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    resolve = f"--host-resolver-rules=MAP {HOSTNAME} 127.0.0.1"
    async with chromium(pki.ca_file, args=(resolve,)) as browser:
        context = await browser.new_context(accept_downloads=True)
        page = await context.new_page()
        await page.goto(link)
        await page.screenshot(path=ARTIFACTS / "e2e-1-landing.png", full_page=True)
        await page.get_by_role("button", name="Send me a passcode").click()
        await page.get_by_label("Passcode").wait_for()

        # The passcode arrives by a second email to the same address.
        await eventually(lambda: len(_to(mx, CARER)) >= 2)
        passcode_mail = _to(mx, CARER)[1]
        assert UNIQUE.encode() not in passcode_mail
        [code] = re.findall(r"\b(\d{6})\b", _text(passcode_mail))
        await page.get_by_label("Passcode").fill(code)
        await page.screenshot(path=ARTIFACTS / "e2e-2-passcode.png", full_page=True)
        await page.get_by_role("button", name="Continue").click()
        await page.wait_for_url(f"{base}/read")
        shown = await page.inner_text("main")
        assert UNIQUE in shown and NHS_NUMBER in shown  # the verified recipient sees it all
        await page.screenshot(path=ARTIFACTS / "e2e-3-read.png", full_page=True)

        async with page.expect_download() as info:
            await page.get_by_role("link", name="discharge.pdf").click()
        download = await info.value
        assert (await download.path()).read_bytes() == PDF

        await page.get_by_role("link", name="Reply").click()
        await page.get_by_label("Your reply").fill(f"Thank you. Reply {UNIQUE}-back.")
        await page.get_by_role("button", name="Send reply").click()
        await page.get_by_role("heading", name="Your reply has been sent").wait_for()
        await page.screenshot(path=ARTIFACTS / "e2e-4-replied.png", full_page=True)
        await context.close()

    # The reply reaches the clinician through our queue, marked as from outside.
    def replies() -> list[bytes]:
        return [m for m in _to(internal, ALICE) if f"{UNIQUE}-back".encode() in m]

    await eventually(replies)
    [reply_raw] = replies()
    reply = message_from_bytes(reply_raw, policy=policy.default)
    assert reply["From"].addresses[0].addr_spec == CARER
    assert reply["X-Securemail-Trust"] == "external"
    assert reply["In-Reply-To"] == f"<e2e-1@{ORG_DOMAIN}>"
    [info_] = await gateway.portal.list_messages()
    events = [e.event for e in await gateway.portal.events(info_.message_id)]
    for event in ("deposited", "notified", "passcode sent", "opened", "downloaded", "replied"):
        assert event in events, (event, events)
