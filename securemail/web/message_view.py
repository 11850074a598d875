"""A stored message as the read page shows it: four headers, one body, its parts.

The decrypted message is RFC 5322 bytes from someone we only partly trust (our own
staff wrote it, but it may quote anything). Its header section is read by
``core.message`` (the one header reader) and handed to the stdlib's MIME parser
through ``reparse_input``, so the fields shown are the fields the gateway judged (and the
headers shown are read by ``core.message`` itself).
Walking the MIME tree is bounded in depth and in leaf parts: a message built to be
deep or wide is shown up to the bound, with a note, never walked without end.

Leaves are numbered in walk order; that number is the part's address in
``/read/part/{n}`` and ``/read/attachment/{n}``, and only the session's own message is
ever walked, so a number can never reach another message.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field
from email.message import Message

from securemail.core.message import (
    HeaderLimitError,
    decode_words,
    read_headers,
    reparse_input,
)
from securemail.web.sanitise import clean_html, safe_filename

MAX_DEPTH = 8
MAX_PARTS = 100
SHOWN_HEADERS = ("From", "To", "Cc", "Date", "Subject")
# Inline images a browser may render from the message: raster types only (an SVG is
# a document that can carry script, so it is offered as an attachment instead).
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


@dataclass(frozen=True, slots=True)
class Part:
    """One leaf of the MIME tree the reader may fetch: an attachment or inline image."""

    number: int
    filename: str
    """Safe to use as a file name (``safe_filename``)."""
    content_type: str
    data: bytes
    content_id: str = ""


@dataclass(slots=True)
class MessageView:
    headers: list[tuple[str, str]] = field(default_factory=list)
    html: str | None = None
    """The HTML body, already sanitised: the one value templates mark safe."""
    text: str | None = None
    attachments: list[Part] = field(default_factory=list)
    inline: dict[int, Part] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def subject(self) -> str:
        return next((value for name, value in self.headers if name == "Subject"), "")

    def attachment(self, number: int) -> Part | None:
        return next((p for p in self.attachments if p.number == number), None)


def view_message(raw: bytes) -> MessageView:
    """The page's view of ``raw``: headers decoded, the body chosen and made safe, the
    attachments and inline images listed."""
    view = MessageView()
    try:
        block = read_headers(raw)
    except HeaderLimitError as exc:
        view.notes.append(f"This message's header is too large to show ({exc}).")
        return view
    message = email.message_from_bytes(reparse_input(raw, block), policy=email.policy.default)
    for name in SHOWN_HEADERS:
        found = block.first(name)
        value = " ".join(decode_words(found.value).split()) if found else ""
        if value:
            view.headers.append((name, value))
    leaves: list[Message] = []
    _walk(message, 0, leaves, view.notes)
    html = text = None
    by_cid: dict[str, int] = {}
    for number, part in enumerate(leaves):
        kind = part.get_content_type()
        attached = part.get_content_disposition() == "attachment" or bool(part.get_filename())
        if not attached and kind == "text/html" and html is None:
            html = _text(part)
        elif not attached and kind == "text/plain" and text is None:
            text = _text(part)
        elif not attached and kind in INLINE_IMAGE_TYPES and part.get("Content-ID"):
            cid = str(part["Content-ID"]).strip().strip("<>")
            view.inline[number] = Part(number, _name(part, number), kind, _bytes(part), cid)
            by_cid[cid] = number
        else:
            view.attachments.append(Part(number, _name(part, number), kind, _bytes(part)))
    if html is not None:
        view.html = clean_html(
            html, lambda cid: f"/read/part/{by_cid[cid]}" if cid in by_cid else None
        )
    else:
        view.text = text or ""
    return view


def _walk(part: Message, depth: int, leaves: list[Message], notes: list[str]) -> None:
    if len(leaves) >= MAX_PARTS:
        return
    if not part.is_multipart():
        leaves.append(part)
        if len(leaves) == MAX_PARTS:
            notes.append(f"Only the first {MAX_PARTS} parts of this message are shown.")
        return
    if depth >= MAX_DEPTH:
        notes.append("Parts nested deeper than we show were left out.")
        return
    for child in part.get_payload():
        if isinstance(child, Message):
            _walk(child, depth + 1, leaves, notes)


def _text(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
    except (LookupError, ValueError, AttributeError):
        content = None
    if isinstance(content, str):
        return content
    return _bytes(part).decode("utf-8", "replace")


def _bytes(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _name(part: Message, number: int) -> str:
    try:
        given = part.get_filename()
    except Exception:  # a malformed parameter
        given = None
    return safe_filename(given) if given else f"part-{number}"
