"""A test double of the portal core (``securemail.portal.Portal``), for the web tests.

Like the SMTP sink is for an MX, it is a harness, not the product: it keeps messages,
tokens, passcodes and sessions in memory, in the clear, so the web layer's behaviour can
be tested in a real browser before (and independently of) the real core. It implements
``securemail.web.backend.PortalBackend`` and nothing more. The passcodes it "sends" go
to ``outbox`` for the test to read; the events the web layer records go to ``events``.
When the core lands, the same browser tests run against the real ``Portal``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid

from securemail.web.backend import (
    Access,
    ConversationEntry,
    Gone,
    Limited,
    Locked,
    PasscodeSent,
    Refused,
    Session,
)

PASSCODE_LIFE = 600.0
MAX_TRIES = 5
SESSION_LIFE = 900.0


@dataclass
class Stored:
    message_id: str
    token: str
    raw: bytes
    rcpt: str
    sender: str
    sender_name: str
    sent: float
    expires: float
    revoked: bool = False
    tries_left: int = MAX_TRIES
    passcode: tuple[str, float] | None = None  # (code, good until)
    replies: list[bytes] = field(default_factory=list)


class MemoryPortal:
    """The double (module docstring). ``clock`` is seconds since the epoch."""

    def __init__(self, clock: Callable[[], float], portal_address: str) -> None:
        self.clock = clock
        self.portal_address = portal_address
        self.messages: dict[str, Stored] = {}  # by token
        self.sessions: dict[str, tuple[str, float]] = {}  # id -> (token, until)
        self.outbox: list[tuple[str, str]] = []  # (rcpt, passcode)
        self.events: list[tuple[str, str, str]] = []  # (message_id, event, detail)

    def add(
        self, raw: bytes, *, rcpt: str, sender: str, sender_name: str, days: float = 30
    ) -> Stored:
        stored = Stored(
            message_id=secrets.token_hex(8),
            token=secrets.token_urlsafe(24),
            raw=raw,
            rcpt=rcpt,
            sender=sender,
            sender_name=sender_name,
            sent=self.clock(),
            expires=self.clock() + days * 86400,
        )
        self.messages[stored.token] = stored
        return stored

    def last_passcode(self, rcpt: str) -> str:
        return next(code for to, code in reversed(self.outbox) if to == rcpt)

    def _live(self, token: str) -> Stored | Gone | None:
        stored = self.messages.get(token)
        if stored is None:
            return None
        if stored.revoked:
            return Gone("revoked")
        if self.clock() >= stored.expires:
            return Gone("expired")
        return stored

    async def access(self, token: str) -> Access | Gone | None:
        stored = self._live(token)
        if not isinstance(stored, Stored):
            return stored
        return Access(
            stored.message_id,
            stored.rcpt,
            stored.sender,
            stored.sender_name,
            _dt(stored.expires),
            locked=stored.tries_left <= 0,
        )

    async def send_passcode(self, token: str) -> PasscodeSent | Gone | Limited:
        stored = self._live(token)
        if not isinstance(stored, Stored):
            return stored or Gone("unknown")
        code = f"{secrets.randbelow(10**6):06d}"
        stored.passcode = (code, self.clock() + PASSCODE_LIFE)
        self.outbox.append((stored.rcpt, code))
        return PasscodeSent(_dt(stored.passcode[1]))

    async def check_passcode(
        self, token: str, code: str, client: str
    ) -> Session | Refused | Locked | Gone:
        stored = self._live(token)
        if not isinstance(stored, Stored):
            return stored or Gone("unknown")
        if stored.tries_left <= 0:
            return Locked()
        good = stored.passcode is not None and self.clock() < stored.passcode[1]
        if not good or not secrets.compare_digest(stored.passcode[0], code):  # type: ignore[index]
            stored.tries_left -= 1
            return Locked() if stored.tries_left <= 0 else Refused(stored.tries_left)
        stored.passcode = None  # one use
        stored.tries_left = MAX_TRIES
        session_id = secrets.token_urlsafe(32)
        until = min(self.clock() + SESSION_LIFE, stored.expires)
        self.sessions[session_id] = (token, until)
        return Session(session_id, stored.message_id, stored.rcpt, _dt(until))

    async def session(self, session_id: str) -> Session | None:
        found = self.sessions.get(session_id)
        if found is None or self.clock() >= found[1]:
            return None
        stored = self._live(found[0])
        if not isinstance(stored, Stored):
            return None
        return Session(session_id, stored.message_id, stored.rcpt, _dt(found[1]))

    def _stored(self, session: Session) -> Stored:
        return next(s for s in self.messages.values() if s.message_id == session.message_id)

    async def read(self, session: Session) -> bytes:
        return self._stored(session).raw

    async def record(self, session: Session, event: str, detail: str = "") -> None:
        self.events.append((session.message_id, event, detail))

    def reply_message(
        self,
        session: Session,
        original: bytes,
        text: str,
        attachments: Sequence[tuple[str, str, bytes]],
    ) -> tuple[str, bytes]:
        stored = self._stored(session)
        source = message_from_bytes(original, policy=policy.default)
        reply = EmailMessage()
        reply["From"] = session.rcpt
        reply["Sender"] = self.portal_address
        reply["To"] = stored.sender
        reply["Subject"] = "Re: " + str(source.get("Subject", ""))
        reply["Message-ID"] = make_msgid()
        if source.get("Message-ID"):
            reply["In-Reply-To"] = str(source["Message-ID"])
        reply["X-Securemail-Trust"] = "external"
        reply.set_content(text)
        for name, kind, data in attachments:
            maintype, _, subtype = kind.partition("/")
            reply.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
        stored.replies.append(bytes(reply))
        return stored.sender, bytes(reply)

    async def conversation(self, session: Session) -> list[ConversationEntry]:
        stored = self._stored(session)
        source = message_from_bytes(stored.raw, policy=policy.default)
        entries = [
            ConversationEntry(
                _dt(stored.expires), stored.sender, str(source.get("Subject", "")), False
            )
        ]
        for raw in stored.replies:
            reply = message_from_bytes(raw, policy=policy.default)
            entries.append(
                ConversationEntry(_dt(self.clock()), session.rcpt, str(reply["Subject"]), True)
            )
        return entries


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
