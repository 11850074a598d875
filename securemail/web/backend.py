"""What the web layer needs from the portal core, as a typing Protocol and its outcomes.

The core (``securemail.portal``) stores, decrypts, issues tokens and passcodes, keeps
sessions and the audit chain; the web layer only calls it. Writing the seam down here
lets the pages be built and tested in a real browser against a test double
(``tests/harness/portal_backend.py``) and then against the real ``Portal`` unchanged.

The outcome classes are plain frozen dataclasses with no dependencies, so the core can
return these very classes (import them from here) and the web layer tells them apart
with ``isinstance``: one definition of each outcome, no adapter that could drift.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Access:
    """A live link: who sent it, to whom, until when, and whether too many wrong
    passcodes have locked it."""

    message_id: str
    rcpt: str
    sender: str
    sender_name: str
    expires: datetime
    locked: bool = False


@dataclass(frozen=True, slots=True)
class Gone:
    """Revoked or expired: the page says so with ``410`` (``reason`` is for the log)."""

    reason: str


@dataclass(frozen=True, slots=True)
class PasscodeSent:
    """A passcode went to the recipient's address; it is good until ``expires``."""

    expires: datetime


@dataclass(frozen=True, slots=True)
class Limited:
    """Too many passcodes asked for this link; try again after ``retry_after`` seconds."""

    retry_after: float


@dataclass(frozen=True, slots=True)
class Session:
    """A verified reader of one message (``message_id``) until ``expires``."""

    id: str
    message_id: str
    rcpt: str
    expires: datetime


@dataclass(frozen=True, slots=True)
class Refused:
    """A wrong or stale passcode; ``tries_left`` before the message locks."""

    tries_left: int


@dataclass(frozen=True, slots=True)
class Locked:
    """Too many wrong passcodes: the message is locked and its sender told."""


@dataclass(frozen=True, slots=True)
class ConversationEntry:
    """One message between the sender and the recipient, oldest first in a list."""

    at: datetime
    sender: str
    subject: str
    outgoing: bool
    """True for the recipient's own replies, False for messages sent to them."""


class PortalBackend(Protocol):
    """The portal core as the web layer calls it (the core's ``Portal`` satisfies it)."""

    async def access(self, token: str) -> Access | Gone | None:
        """The link's message; ``Gone`` when revoked or expired; None when unknown."""
        ...

    async def send_passcode(self, token: str) -> PasscodeSent | Gone | Limited: ...

    async def check_passcode(
        self, token: str, code: str, client: str
    ) -> Session | Refused | Locked | Gone: ...

    async def session(self, session_id: str) -> Session | None:
        """The live session with this id, or None (unknown, expired, revoked message)."""
        ...

    async def read(self, session: Session) -> bytes:
        """The session's message, decrypted: RFC 5322 bytes."""
        ...

    async def record(self, session: Session, event: str, detail: str = "") -> None:
        """Append ``event`` (opened, downloaded, replied) to the audit chain."""
        ...

    def reply_message(
        self,
        session: Session,
        original: bytes,
        text: str,
        attachments: Sequence[tuple[str, str, bytes]],
    ) -> tuple[str, bytes]:
        """The reply as (recipient: the internal sender, RFC 5322 message) from
        (file name, content type, bytes) attachments."""
        ...

    async def conversation(self, session: Session) -> list[ConversationEntry]: ...


SubmitReply = Callable[[str, bytes], Awaitable[None]]
"""Hands a reply (recipient, message) to the gateway's queue (``AcceptPipeline``)."""
