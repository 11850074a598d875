"""Issue 15: sensitive data must not get past the scanner by where it is put.

Reported: a CSV attachment with ``Jane,9434765919`` went to gmail in the clear, and so
did a text part nested 1,000 multiparts deep. Each attack is sent through the live
submission listener to a recipient not known to be secure, whose MX would accept it
over TLS: it must be HELD (``[policy] unknown_sensitive_action = hold``, the default),
never delivered. A plain message to the same recipient right after it is delivered, so
"held" is the policy's doing and not a broken route. What cannot be read at all (an
encrypted ZIP) is held too (``[policy] unscannable = sensitive``, the default), and the
reason stored with the recipient says it was unscannable.
"""

import asyncio
import base64

import pytest
from harness.documents import CSV, docx, encrypted_zip, pdf, with_attachment, zip_of
from harness.gatewaykit import ORG_DOMAIN, add_mx, message, submit
from harness.smtpsink import SinkServer

from securemail.gateway.spool import RcptStatus

pytestmark = pytest.mark.timeout(90)

SENDER = f"alice@{ORG_DOMAIN}"
UNKNOWN = "carer@gmail.test"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def deep_multipart(depth: int) -> bytes:
    """A base64 text part under ``depth`` multiparts (so no raw-text fallback sees it)."""
    head = "".join(
        f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n" for i in range(depth)
    )
    leaf = base64.b64encode(CSV).decode()
    return (
        f"From: {SENDER}\r\nTo: {UNKNOWN}\r\nSubject: notes\r\nMessage-ID: <deep@x>\r\n"
        f"MIME-Version: 1.0\r\n{head}Content-Type: text/plain\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{leaf}\r\n"
    ).encode()


NHS = "1 NHS number in"
# name → (message, what the stored reason must say)
ATTACKS = {
    "csv": (with_attachment(CSV, "patients.csv", "text/csv"), NHS),
    "docx": (with_attachment(docx("Jane ", "943", "4765919"), "letter.docx", DOCX), NHS),
    "pdf": (with_attachment(pdf("Jane 9434765919"), "letter.pdf", "application/pdf"), NHS),
    "zip-with-csv": (
        with_attachment(zip_of({"patients.csv": CSV}), "p.zip", "application/zip"),
        NHS,
    ),
    # Over the nesting bound: unscannable, so held by [policy] unscannable = sensitive.
    "1000-deep-multipart": (deep_multipart(1000), "unscannable (nested deeper than 100 levels)"),
}


@pytest.fixture
def mx(pki):
    """gmail.test's MX: a sink with a certificate from the test CA (it would accept)."""
    with SinkServer(
        hostname="mx.gmail.test", tls_context=pki.server_context("mx.gmail.test")
    ) as sink:
        yield sink


@pytest.fixture
async def gateway(gateway_factory, mx, dns_server):
    add_mx(dns_server, "gmail.test")
    return await gateway_factory(mx.port)


async def _send_then_control(gateway, pki, mx, attack: bytes):
    """Submit ``attack``, then a plain message; wait for the plain one to be delivered.
    Returns the attack's spool record (the one message left in the spool)."""
    assert await asyncio.to_thread(submit, gateway, pki, SENDER, [UNKNOWN], attack) == {}
    control = message(to=UNKNOWN)
    assert await asyncio.to_thread(submit, gateway, pki, SENDER, [UNKNOWN], control) == {}
    (received,) = await asyncio.to_thread(mx.wait, 1)
    assert received.data.endswith(b"Just a note.\r\n")  # the control, not the attack
    records = await gateway.spool.list_messages()
    # The control's data may already be gone (delivered); the attack's must still be there.
    data = [await gateway.spool.message_data(m.queue_id) for m in records]
    attacks = [m for m, d in zip(records, data, strict=True) if d and b"Just a note." not in d]
    assert len(records) <= 2 and len(attacks) == 1
    assert [r.rcpt for r in attacks[0].recipients] == [UNKNOWN]
    return attacks[0]


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
async def test_sensitive_content_anywhere_is_held(attack, gateway, mx, pki):
    data, why = ATTACKS[attack]
    held = await _send_then_control(gateway, pki, mx, data)
    assert held.recipients[0].status is RcptStatus.HELD
    assert why in held.recipients[0].reason
    assert len(mx.messages) == 1  # only the control was ever delivered


async def test_encrypted_zip_is_held_as_unscannable(gateway, mx, pki):
    attack = with_attachment(encrypted_zip("patients.csv", CSV, b"pw"), "p.zip", "application/zip")
    held = await _send_then_control(gateway, pki, mx, attack)
    recipient = held.recipients[0]
    assert recipient.status is RcptStatus.HELD
    assert "unscannable" in recipient.reason and "encrypted ZIP member" in recipient.reason
    assert "[policy] unscannable = sensitive" in recipient.reason
    assert len(mx.messages) == 1
