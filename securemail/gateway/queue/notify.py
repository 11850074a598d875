"""Tell senders what became of their mail: bounces and forced-TLS delay notices.

The queue manager decides *when* a sender must hear (``schedule``); this builds the DSN
(``dsn.py``) and submits it through the accept pipeline as role ``dsn``, so a notice is
spooled, decided and delivered like any other message (and never to an invalid address).

Bounces are where a gateway becomes a weapon (backscatter): a forged sender gets every
failure. So: one failure DSN per message, listing all its failed recipients (never one
per recipient); the original's headers only, capped (``dsn.MAX_RETURNED_HEADERS``); and
none at all when our own Authentication-Results on the message says SPF or DMARC failed,
because then the sender address is most likely not the sender's. A notice about a
REQUIRETLS message returns nothing of it, not even its headers (RFC 8689 §5; ``dsn.py``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence

from securemail.core.classify import Classification
from securemail.core.levels import TlsLevel
from securemail.core.message import HeaderLimitError, read_headers
from securemail.core.replies import SmtpReply
from securemail.core.rules import Status
from securemail.gateway.events import EventSink, NoticeQueued, NoticeSkipped
from securemail.gateway.inbound.server import Transaction
from securemail.gateway.queue.dsn import build_dsn
from securemail.gateway.spool import Delivery
from securemail.mech.results import is_own_auth_results


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

    async def bounce(self, failures: Sequence[tuple[Delivery, str]], original: bytes) -> None:
        """Recipients of one message failed for good: one DSN to the sender for all."""
        if failures:
            await self._notify(failures, original, "failed")

    async def delay_notice(self, delivery: Delivery, detail: str, original: bytes) -> None:
        """Forced TLS keeps failing: tell the sender the message has NOT arrived yet."""
        await self._notify([(delivery, detail)], original, "delayed")

    async def held_notice(
        self, queue_id: str, sender: str, held: Sequence[tuple[str, str]], original: bytes,
        received: float, requiretls: bool = False,
    ) -> None:  # fmt: skip
        """Recipients held by policy at acceptance: tell the sender at once, and why.
        A REQUIRETLS message's notice carries none of it (RFC 8689 §5), like its DSNs."""
        size = len(original)
        failures = [
            (Delivery(queue_id, sender, rcpt, _domain(rcpt), TlsLevel.VERIFIED, 0, received, size,
                      requiretls=requiretls),
             why)
            for rcpt, why in held
        ]  # fmt: skip
        if failures and sender:
            await self._notify(failures, original, "held")

    async def _notify(
        self, failures: Sequence[tuple[Delivery, str]], original: bytes, kind: str
    ) -> None:
        delivery = failures[0][0]
        c = self.classify(delivery.sender)
        if c.status is Status.INVALID:
            self.events.emit(
                NoticeSkipped(delivery.queue_id, delivery.sender, f"sender invalid: {c.reason}")
            )
            return
        if kind == "failed" and (why := self._unauthenticated(original)):
            self.events.emit(
                NoticeSkipped(delivery.queue_id, delivery.sender, f"no bounce (backscatter): {why}")
            )
            return
        dsn = build_dsn(
            hostname=self.hostname,
            sender=delivery.sender,
            queue_id=delivery.queue_id,
            failures=[(d.rcpt, detail) for d, detail in failures],
            original=original,
            arrival=delivery.received,
            action=kind,
            redacted=any(d.requiretls for d, _ in failures),
        )
        t = Transaction("dsn", "127.0.0.1", self.hostname, "", "", "",
                        [(delivery.sender, c)], dsn)  # fmt: skip
        reply = await self.submit(t)
        self.events.emit(NoticeQueued(kind, delivery.queue_id, delivery.sender, str(reply)))

    def _unauthenticated(self, original: bytes) -> str:
        """Why the sender address is not to be believed, from our own verdict; or ""."""
        try:
            block = read_headers(original)
        except HeaderLimitError:
            return "header section not read"
        for field in block.get_all("authentication-results"):
            if is_own_auth_results(field, self.hostname):
                failed = _FAILED.findall(field.unfolded.decode("ascii", "replace").lower())
                if failed:
                    return "the sender failed " + " and ".join(sorted(set(failed)))
        return ""


def _domain(address: str) -> str:
    return address.rpartition("@")[2]


_FAILED = re.compile(r"\b(spf|dmarc)=(?:fail|softfail)\b")
