"""Delivery status notifications (RFC 3464): tell the sender what did not arrive.

Only the original *headers* are returned (``text/rfc822-headers``), never the body, so
a bounce cannot carry sensitive content to wherever the sender address points; the
bounce then goes through the same policy as any other message.
"""

from __future__ import annotations

import secrets
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import SMTP
from email.utils import formatdate, make_msgid

MAX_RETURNED_HEADERS = 64 * 1024


def build_dsn(
    *,
    hostname: str,
    sender: str,
    queue_id: str,
    failures: list[tuple[str, str]],
    original: bytes,
    arrival: float,
    action: str = "failed",
) -> bytes:
    """A multipart/report DSN from ``MAILER-DAEMON@hostname`` to ``sender``.

    ``failures`` is a list of (recipient, diagnostic); ``action`` is ``failed`` or
    ``delayed`` (for the forced-TLS delay notice).
    """
    headers_end = original.find(b"\r\n\r\n")
    head = original[: headers_end + 2 if headers_end >= 0 else MAX_RETURNED_HEADERS]
    head = head[:MAX_RETURNED_HEADERS]
    subject = BytesHeaderParser().parsebytes(head).get("Subject", "")
    failed = action == "failed"

    text = EmailMessage(policy=SMTP)
    lines = [
        f"This is the mail system at {hostname}.",
        "",
        (
            "Your message could not be delivered to the recipients below."
            if failed
            else "Your message has not yet been delivered to the recipients below; "
            "it is still being retried and nothing was sent in the clear."
        ),
        f"Queue ID: {queue_id}. Subject: {_one_line(str(subject))[:200]}",
        "",
    ]
    lines += [f"<{rcpt}>: {diagnostic}" for rcpt, diagnostic in failures]
    text.set_content("\n".join(lines) + "\n")

    status = "5.0.0" if failed else "4.7.5"
    per_rcpt = "".join(
        f"\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {_one_line(diagnostic)}\r\n"
        for rcpt, diagnostic in failures
    )
    report = (
        f"Reporting-MTA: dns; {hostname}\r\nX-Securemail-Queue-ID: {queue_id}\r\n"
        f"Arrival-Date: {formatdate(arrival, localtime=False)}\r\n{per_rcpt}"
    )
    returned = head.decode("ascii", "replace").replace("\ufffd", "?")
    boundary = f"=_securemail_{queue_id}_{secrets.token_hex(8)}"
    subject_line = (
        "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    )
    headers = (
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
        f"To: <{sender}>\r\n"
        f"Subject: {subject_line}\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        f"Message-ID: {make_msgid(domain=hostname)}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        "This is a MIME-encapsulated delivery status notification.\r\n"
    )
    parts = [
        text.as_bytes(),
        f"Content-Type: message/delivery-status\r\n\r\n{report}".encode(),
        f"Content-Type: text/rfc822-headers\r\n\r\n{returned}".encode(),
    ]
    body = b"".join(f"\r\n--{boundary}\r\n".encode() + part for part in parts)
    return headers.encode() + body + f"\r\n--{boundary}--\r\n".encode()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:900]
