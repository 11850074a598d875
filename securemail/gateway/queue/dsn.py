"""Delivery status notifications (RFC 3464): tell the sender what did not arrive.

Only the original *headers* are returned (``text/rfc822-headers``), never the body, so
a bounce cannot carry sensitive content to wherever the sender address points; the
bounce then goes through the same policy as any other message.

A notice about a REQUIRETLS message (RFC 8689) is ``redacted``: not even its headers or
Subject, only the recipients and what happened. §5 lets a notice about such a message
travel without REQUIRETLS only when redacted, and the way back to its sender may not
offer it; what its sender asked to keep off unprotected links stays off them.

Each recipient's ``Status`` is the enhanced code (RFC 3463) its diagnostic starts with
or its server replied with (``5.7.30`` for REQUIRETLS, ``5.1.1`` for an unknown user),
else the kind's default.
"""

from __future__ import annotations

import re
import secrets
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid

from securemail.core.message import HeaderLimitError, read_headers

MAX_RETURNED_HEADERS = 8 * 1024  # headers only, capped: a bounce must not amplify


# kind → (RFC 3464 Action, status, Subject, what the sender is told first)
_KINDS = {
    "failed": ("failed", "5.0.0", "Undelivered Mail Returned to Sender",
               "Your message could not be delivered to the recipients below."),
    "delayed": ("delayed", "4.7.5", "Delayed Mail (still being retried)",
                "Your message has not yet been delivered to the recipients below; "
                "it is still being retried and nothing was sent in the clear."),
    "held": ("delayed", "4.7.1", "Message held: not sent to some recipients",
             "Your message was accepted but has NOT been sent to the recipients below: "
             "our secure email policy holds it. Nothing leaves until an operator "
             "releases it (then only over verified TLS) or deletes it; recipients not "
             "listed here are unaffected."),
}  # fmt: skip


def build_dsn(
    *,
    hostname: str,
    sender: str,
    queue_id: str,
    failures: list[tuple[str, str]],
    original: bytes,
    arrival: float,
    action: str = "failed",
    redacted: bool = False,
) -> bytes:
    """A multipart/report DSN from ``MAILER-DAEMON@hostname`` to ``sender``.

    ``failures`` is a list of (recipient, diagnostic); ``action`` is ``failed`` or
    ``delayed`` (for the forced-TLS delay notice); ``redacted`` leaves out everything
    of the original message (a REQUIRETLS message: see the module docstring).
    """
    head, subject = (b"", "") if redacted else _returned_headers(original)
    dsn_action, status, subject_line, lead = _KINDS[action]

    text = EmailMessage(policy=SMTP)
    about = (
        "Its headers are not returned: its sender asked for TLS on every hop (REQUIRETLS)."
        if redacted
        else f"Subject: {_one_line(subject)[:200]}"
    )
    lines = [f"This is the mail system at {hostname}.", "", lead,
             f"Queue ID: {queue_id}. {about}", ""]  # fmt: skip
    lines += [f"<{rcpt}>: {diagnostic}" for rcpt, diagnostic in failures]
    text.set_content("\n".join(lines) + "\n")

    per_rcpt = "".join(
        f"\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: {dsn_action}\r\n"
        f"Status: {status_code(diagnostic, status)}\r\n"
        f"Diagnostic-Code: smtp; {_one_line(diagnostic)}\r\n"
        for rcpt, diagnostic in failures
    )
    report = (
        f"Reporting-MTA: dns; {hostname}\r\nX-Securemail-Queue-ID: {queue_id}\r\n"
        f"Arrival-Date: {formatdate(arrival, localtime=False)}\r\n{per_rcpt}"
    )
    returned = head.decode("ascii", "replace").replace("\ufffd", "?")
    boundary = f"=_securemail_{queue_id}_{secrets.token_hex(8)}"
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
    ]
    if not redacted:
        parts.append(f"Content-Type: text/rfc822-headers\r\n\r\n{returned}".encode())
    body = b"".join(f"\r\n--{boundary}\r\n".encode() + part for part in parts)
    return headers.encode() + body + f"\r\n--{boundary}--\r\n".encode()


def _returned_headers(original: bytes) -> tuple[bytes, str]:
    """The original's header fields that fit in ``MAX_RETURNED_HEADERS``, and its Subject.

    Read by the one header reader, so the DSN returns the fields every other part of
    the gateway judged, whole, and never a line of the body. Nothing when the header
    section was over the reader's limits (such mail was neither signed nor verified).
    """
    try:
        block = read_headers(original)
    except HeaderLimitError:
        return b"", ""
    kept: list[bytes] = []
    size = 0
    for field in block.fields:
        size += len(field.raw)
        if size > MAX_RETURNED_HEADERS:
            break
        kept.append(field.raw)
    subject = block.first("subject")
    return b"".join(kept), subject.decoded if subject is not None else ""


# An enhanced status code opening the diagnostic ("5.7.30 REQUIRETLS ...") or following
# a server's reply code ("mx[192.0.2.7]:25 said 550 5.1.1 ..."); never inside an address.
_STATUS = re.compile(r"(?:^|\bsaid [245]\d\d )([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")


def status_code(diagnostic: str, default: str) -> str:
    """The RFC 3464 ``Status`` for one recipient: the enhanced code its ``diagnostic``
    gives, if it is of the same class as ``default`` (a failure is 5.x.x, a delay 4.x.x),
    else ``default``."""
    found = _STATUS.search(diagnostic)
    if found is None or found.group(1) != default[0]:
        return default
    return ".".join(found.groups())


def _one_line(text: str) -> str:
    return " ".join(text.split())[:900]
