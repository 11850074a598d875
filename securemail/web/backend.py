"""What the web layer needs from the portal core, as a typing Protocol.

The core (``securemail.portal``) stores, decrypts, issues tokens and passcodes, keeps
sessions and the audit chain; the web layer only calls it. The outcomes it answers
with are the core's own records (``securemail.portal.records``), imported, never
copied: one definition of each, so the pages map exactly what the core can return
(``isinstance`` on ``Gone``, ``Limited``, ``Locked``...) and nothing can drift between
two versions of the same answer. The dependency runs one way: web imports portal, the
core never imports web.

Writing the seam down as a Protocol keeps the routes honest about what they use of
``Portal`` (``tests/web/test_units.py`` checks that the real ``Portal`` satisfies it,
signature by signature).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from securemail.portal.records import (
    Access,
    Gone,
    Limited,
    Locked,
    MessageInfo,
    PasscodeSent,
    Refused,
    Session,
)


class PortalBackend(Protocol):
    """The portal core as the web layer calls it (``securemail.portal.Portal``)."""

    async def access(self, token: str) -> Access | Gone | None:
        """The link's message; ``Gone`` when revoked or expired; None when unknown."""
        ...

    async def send_passcode(self, token: str) -> PasscodeSent | Gone | Limited | Locked:
        """Mail a new passcode; ``Limited`` when the link asked too often (the per-link
        count is the core's, durable); ``Gone`` also for an unknown token."""
        ...

    async def check_passcode(
        self, token: str, code: str, client: str
    ) -> Session | Refused | Locked | Gone:
        """One try; the core counts tries and locks (``Gone`` for an unknown token)."""
        ...

    async def session(self, session_id: str) -> Session | None:
        """The live session with this id, or None (unknown, expired, revoked message)."""
        ...

    async def read(self, session: Session) -> bytes:
        """The session's message, decrypted (RFC 5322 bytes); the core audits "opened".
        ``PortalError`` when the message may no longer be read."""
        ...

    async def record(self, session: Session, event: str, detail: str = "") -> None:
        """Append "downloaded" or "replied" to the audit chain."""
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

    async def conversation(self, session: Session) -> list[MessageInfo]:
        """The messages between the session's two people, oldest first: metadata only
        (the core keeps no subject in the clear, and a listing decrypts nothing)."""
        ...


SubmitReply = Callable[[str, bytes], Awaitable[None]]
"""Hands a reply (recipient, message) to the gateway's queue (``AcceptPipeline``)."""
