"""The portal's typed answers: what ``Portal`` returns to the web layer and the CLI.

Each outcome is its own frozen type, so the web maps types to pages (``Gone`` → 410,
``None`` → 404, ``Limited`` → 429, ``Locked`` → the locked page) and can never take a
refusal for a success.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from securemail.errors import SecuremailError


class Event(StrEnum):
    """What the audit chain records (issue 13, item 5)."""

    DEPOSITED = "deposited"
    NOTIFIED = "notified"
    PASSCODE_SENT = "passcode sent"
    PASSCODE_FAILED = "passcode failed"
    PASSCODE_REPLAYED = "passcode replayed"
    LOCKED = "locked"
    SESSION = "session started"
    OPENED = "opened"
    DOWNLOADED = "downloaded"
    REPLIED = "replied"
    REVOKED = "revoked"
    EXPIRED = "expired"
    KEY_ROTATED = "key rotated"


RECORDABLE = frozenset({Event.DOWNLOADED, Event.REPLIED})
"""What the web may record through ``Portal.record``; the rest the portal writes itself."""


@dataclass(frozen=True, slots=True)
class Deposit:
    message_id: str
    expires: float
    links: Mapping[str, str]  # rcpt -> token: the only time a token exists in the clear


@dataclass(frozen=True, slots=True)
class Access:
    message_id: str
    rcpt: str
    subject_safe: str  # the neutral subject ("Secure message from <organisation>")
    sender: str
    sender_name: str
    organisation: str
    expires: float
    locked: bool


@dataclass(frozen=True, slots=True)
class Gone:
    reason: Literal["revoked", "expired"]


@dataclass(frozen=True, slots=True)
class PasscodeSent:
    rcpt: str
    expires: float


@dataclass(frozen=True, slots=True)
class Limited:
    retry_after: float  # seconds


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str  # "wrong", "expired", "used", "none": for the log; the page says less
    tries_left: int


@dataclass(frozen=True, slots=True)
class Locked:
    message_id: str


@dataclass(frozen=True, slots=True)
class Session:
    id: str  # random; only its SHA-256 is stored
    message_id: str
    rcpt: str
    expires: float


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    at: float
    message_id: str
    rcpt: str
    event: str
    detail: str

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "at": self.at,
            "message_id": self.message_id,
            "rcpt": self.rcpt,
            "event": self.event,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class AuditCheck:
    rows: int
    broken_id: int | None = None  # the first row whose hash does not verify
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_id is None

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "rows": self.rows, "broken_id": self.broken_id, "why": self.why}


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """A message's metadata (never its content), for ``portal list|show`` and
    conversations."""

    message_id: str
    created: float
    expires: float
    sender: str
    sender_name: str
    organisation: str
    recipients: tuple[str, ...]
    state: str  # "active", "revoked", "expired", "locked"

    def to_json(self) -> dict[str, object]:
        return {
            "message_id": self.message_id,
            "created": self.created,
            "expires": self.expires,
            "sender": self.sender,
            "sender_name": self.sender_name,
            "organisation": self.organisation,
            "recipients": list(self.recipients),
            "state": self.state,
        }


class PortalError(SecuremailError):
    """A request the portal cannot serve (a session on a message gone or locked)."""
