"""Sender notices, gathered: a sender's portal messages within a few seconds share one.

The recipient notice is per message (it carries that message's link); the sender's is
only "these went by the portal, here is how to withdraw them". A clinician sending one
letter gets one notice a moment later; a system sending a clinic list of 300 letters
gets a handful, not 300 emails in their inbox (and the gateway signs, queues and
delivers a handful: each notice costs as much as the message it reports on).

Nothing here is durable, as before: the notices are sent after the client's 250, and a
crash in the window loses the sender notice, never the message or its recipients' links
(``Portal.renotify``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from securemail.portal.records import Deposit

log = logging.getLogger("securemail.portal")

WAIT = 2.0  # seconds a sender's first message waits for others to share its notice
MOST = 50  # messages in one notice; the next starts a new one

SendNotice = Callable[[str, list[Deposit]], Awaitable[None]]


class SenderDigest:
    """Collects deposits per sender and calls ``send(sender, deposits)`` once ``wait``
    seconds after the first, or at ``most`` deposits, or at ``close``. ``wait <= 0``
    sends each at once (in the caller's task)."""

    def __init__(self, send: SendNotice, *, wait: float = WAIT, most: int = MOST) -> None:
        self._send = send
        self.wait = wait
        self.most = most
        self._pending: dict[str, list[Deposit]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def add(self, sender: str, deposit: Deposit) -> None:
        if self.wait <= 0:
            await self._send(sender, [deposit])
            return
        batch = self._pending.setdefault(sender, [])
        batch.append(deposit)
        if len(batch) >= self.most:
            self._flush(sender)
        elif sender not in self._timers:
            loop = asyncio.get_running_loop()
            self._timers[sender] = loop.call_later(self.wait, self._flush, sender)

    def _flush(self, sender: str) -> None:
        if (timer := self._timers.pop(sender, None)) is not None:
            timer.cancel()
        batch = self._pending.pop(sender, None)
        if batch:
            task = asyncio.ensure_future(self._send_logged(sender, batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send_logged(self, sender: str, batch: list[Deposit]) -> None:
        try:
            await self._send(sender, batch)
        except Exception as exc:  # the messages and their links are safe; say what was lost
            ids = " ".join(d.message_id for d in batch)
            log.warning("portal: sender notice to <%s> not sent (%s): %s", sender, ids, exc)

    async def close(self) -> None:
        """Send everything pending now and wait for it (the gateway is stopping)."""
        for sender in list(self._pending):
            self._flush(sender)
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
