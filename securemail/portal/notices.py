"""The portal's emails, built as RFC 5322 bytes for the gateway's own pipeline.

Like the DSNs (``gateway/queue/notify.py``), each is submitted through the accept
pipeline, so it is decided, DKIM-signed for our domain and queued like any other mail.

What each carries is the point: the recipient notice has NO content of the message (the
subject may hold an NHS number, so it is always "Secure message from <organisation>"):
only who sent it, the expiry and the link; the passcode email only the code and its
expiry; the sender notices only where their message went and how to revoke it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, getaddresses, make_msgid
from quopri import encodestring

from securemail.core.message import read_headers
from securemail.portal.records import Deposit

CRLF = "\r\n"


def neutral_subject(organisation: str) -> str:
    return f"Secure message from {organisation}"


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%d %B %Y, %H:%M UTC")


def _header(name: str, value: str) -> str:
    """One header field, RFC 2047-encoded and folded when it is not short ASCII; a CR or
    LF in ``value`` is refused (it would start a field of the caller's choosing)."""
    _one_line(name, value)
    if value.isascii() and len(name) + len(value) < 76:
        return f"{name}: {value}\r\n"
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode(linesep=CRLF)}\r\n"


def _one_line(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"a line break in the {name} field")


def _mailbox(name: str, address: str) -> str:
    """``From: Name <address>``: quoted when ASCII, one RFC 2047 word when not (split
    words are decoded with a stray space by common parsers, Python's among them); folded
    words only when one would pass the 998-octet line limit."""
    _one_line("From", name + address)
    field = f"From: {formataddr((name, address))}" if name else f"From: {address}"
    if len(field) > 900:
        words = Header(name, "utf-8", header_name="From").encode(linesep=CRLF)
        field = f"From: {words} <{address}>"
    return field + CRLF


def _message(
    *, sender: str, to: str, subject: str, body: str, now: float, sender_name: str = ""
) -> bytes:
    """A short text/plain message, quoted-printable, as CRLF bytes.

    Written out directly rather than through ``EmailMessage``: building each notice with
    the email package's header registry cost more CPU than encrypting and storing the
    message it announces (a fifth of the gateway's time under the portal bench)."""
    head = "".join((
        _mailbox(sender_name, sender),
        _header("To", to),
        _header("Subject", subject),
        _header("Date", format_datetime(datetime.fromtimestamp(now, UTC))),
        _header("Message-ID", make_msgid(domain=sender.rpartition("@")[2] or "localhost")),
        "Auto-Submitted: auto-generated\r\n",  # RFC 3834: no auto-replies to these
        "MIME-Version: 1.0\r\n",
        'Content-Type: text/plain; charset="utf-8"\r\n',
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n",
    ))  # fmt: skip
    text = encodestring(body.encode(), quotetabs=False).replace(b"\n", b"\r\n")
    return head.encode("ascii") + text


def recipient_notice(
    *, portal: str, to: str, sender_name: str, organisation: str, expires: float,
    link: str, now: float,
) -> bytes:  # fmt: skip
    body = (
        f"{sender_name or 'Someone'} at {organisation} has sent you a secure message.\n\n"
        f"Open it here:\n{link}\n\n"
        "You will be asked for a one-time passcode, which we send to this address in a\n"
        "separate email.\n\n"
        f"The message can be read until {_when(expires)}.\n\n"
        f"If you were not expecting this, you can ignore it.\n"
    )
    return _message(
        sender=portal, to=to, subject=neutral_subject(organisation), body=body, now=now,
        sender_name=f"{organisation} secure messages",
    )  # fmt: skip


def passcode_notice(
    *, portal: str, to: str, organisation: str, code: str, expires: float, now: float
) -> bytes:
    body = f"Your passcode is {code}\n\nIt can be used once, until {_when(expires)}.\n"
    return _message(
        sender=portal, to=to, subject=f"Your passcode: {code}", body=body, now=now,
        sender_name=f"{organisation} secure messages",
    )  # fmt: skip


def sender_notice(
    *, portal: str, to: str, organisation: str, deposits: Sequence[Deposit], now: float
) -> bytes:
    """Where the sender's messages went (one or several: ``digest``) and how to withdraw
    each; recipients' addresses and the portal ids only, never a link or a token."""
    many = len(deposits) > 1
    parts = []
    for deposit in deposits:
        who = "\n".join(f"    {rcpt}" for rcpt in deposit.links)
        parts.append(
            f"  Portal message {deposit.message_id}, readable until {_when(deposit.expires)}:\n"
            f"{who}\n"
            f"    To withdraw it: securemail portal revoke {deposit.message_id}\n"
        )
    body = (
        f"Your {'messages were' if many else 'message was'} sensitive and these recipients"
        " are not known to be secure,\n"
        f"so {'they were' if many else 'it was'} sent to them through the secure portal,"
        " encrypted:\n\n"
        + "\n".join(parts)
        + "\nEach recipient gets a link and a one-time passcode by email; after the date"
        " above\nthe message is deleted. To withdraw one, ask your mail administrator to"
        " run the\ncommand shown.\n"
    )
    subject = (
        f"Your {len(deposits)} messages were sent by the secure portal" if many
        else "Your message was sent by the secure portal"
    )  # fmt: skip
    return _message(
        sender=portal, to=to, subject=subject, body=body, now=now,
        sender_name=f"{organisation} secure messages",
    )  # fmt: skip


def locked_notice(
    *, portal: str, to: str, organisation: str, message_id: str, rcpt: str, now: float
) -> bytes:
    body = (
        f"The secure message {message_id} you sent to {rcpt} has been locked after too\n"
        "many wrong passcodes. Nobody can open it now.\n\n"
        "If the recipient still needs it, send it again.\n"
    )
    return _message(
        sender=portal, to=to, subject="Secure message locked", body=body, now=now,
        sender_name=f"{organisation} secure messages",
    )  # fmt: skip


def reply_message(
    *, portal: str, rcpt: str, original: bytes, text: str,
    attachments: Sequence[tuple[str, str, bytes]], now: float,
) -> tuple[str, bytes]:  # fmt: skip
    """The recipient's reply: (the original sender, the message). ``From`` is the address
    the passcode was verified for, ``Sender`` our portal address (we vouch for the
    mailbox, not the person), and ``X-Securemail-Trust: external``: it is mail from
    outside, however it arrives."""
    block = read_headers(original)
    author = block.first("from")
    to = _address(author.text if author else "")
    if not to:
        raise ValueError("the original message has no From address to reply to")
    subject_field = block.first("subject")
    subject = " ".join((subject_field.decoded if subject_field else "").split())
    msg = EmailMessage(policy=SMTP)
    msg["From"] = rcpt
    msg["Sender"] = portal
    msg["To"] = to
    msg["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}"
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    msg["Message-ID"] = make_msgid(domain=portal.rpartition("@")[2] or None)
    original_id = block.first("message-id")
    if original_id is not None and original_id.text.strip():
        msg["In-Reply-To"] = original_id.text.strip()
        references = block.first("references")
        chain = f"{references.text.strip()} " if references is not None else ""
        msg["References"] = chain + original_id.text.strip()
    msg["X-Securemail-Trust"] = "external"
    msg.set_content(text)
    for name, content_type, data in attachments:
        maintype, _, subtype = content_type.partition("/")
        if not subtype:
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return to, msg.as_bytes()


def _address(text: str) -> str:
    found = [addr for _, addr in getaddresses([text]) if "@" in addr]
    return found[0] if found else ""
