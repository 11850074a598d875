"""Tell senders what became of their mail: bounces and forced-TLS delay notices.

The queue manager decides *when* a sender must hear (``schedule``); this builds the DSN
(``dsn.py``) and submits it through the accept pipeline as role ``dsn``, so a notice is
spooled, decided and delivered like any other message (and never to an invalid address).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from securemail.core.classify import Classification
from securemail.core.replies import SmtpReply
from securemail.core.rules import Status
from securemail.gateway.events import EventSink, NoticeQueued, NoticeSkipped
from securemail.gateway.inbound.server import Transaction
from securemail.gateway.queue.dsn import build_dsn
from securemail.gateway.spool import Delivery


class Notifier:
    def __init__(
        self,
        *,
        hostname: str,
        classify: Callable[[str], Classification],
        submit: Callable[[Transaction], Awaitable[SmtpReply]],
        events: EventSink,
    ) -> None:
        self.hostname = hostname
        self.classify = classify
        self.submit = submit
        self.events = events

    async def bounce(self, delivery: Delivery, detail: str, original: bytes) -> None:
        """The recipient failed for good: a DSN to the sender."""
        await self._notify(delivery, detail, original, "failed")

    async def delay_notice(self, delivery: Delivery, detail: str, original: bytes) -> None:
        """Forced TLS keeps failing: tell the sender the message has NOT arrived yet."""
        await self._notify(delivery, detail, original, "delayed")

    async def _notify(self, delivery: Delivery, detail: str, original: bytes, kind: str) -> None:
        c = self.classify(delivery.sender)
        if c.status is Status.INVALID:
            self.events.emit(
                NoticeSkipped(delivery.queue_id, delivery.sender, f"sender invalid: {c.reason}")
            )
            return
        dsn = build_dsn(
            hostname=self.hostname,
            sender=delivery.sender,
            queue_id=delivery.queue_id,
            failures=[(delivery.rcpt, detail)],
            original=original,
            arrival=delivery.received,
            action=kind,
        )
        t = Transaction("dsn", "127.0.0.1", self.hostname, "", "", "",
                        [(delivery.sender, c)], dsn)  # fmt: skip
        reply = await self.submit(t)
        self.events.emit(NoticeQueued(kind, delivery.queue_id, delivery.sender, str(reply)))
