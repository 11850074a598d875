"""The queue manager: claim due recipients, deliver them per destination, record.

Postfix's qmgr in miniature. Each pass claims what is due from the spool (claiming
marks it ``delivering`` in the same transaction, so a crash leaves it to be retried on
the next start), groups recipients by (destination domain, ``TlsLevel`` from the spool
record) and by message, and runs one task per connection's worth of messages, bounded by
a global connection limit and a per-destination one. Outcomes go back to the spool in
groups.

What a result means (delivered, bounced, deferred until when, delay notice or not) is
decided by the pure ``schedule.next_step``; this module only acts on it: records the
outcome, sends the DSN or the notice, logs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from securemail.core.levels import TlsLevel
from securemail.gateway.events import Bounced, Deferred, EventSink, LogSink, TlsAlert
from securemail.gateway.outbound.deliver import Deliverer, Item, Result
from securemail.gateway.queue.schedule import Schedule, age_text, next_step
from securemail.gateway.spool import Delivery, Outcome, RcptStatus, Spool

log = logging.getLogger("securemail.queue")

Bounce = Callable[[Delivery, str, bytes], Awaitable[None]]


class QueueManager:
    def __init__(
        self,
        spool: Spool,
        deliverer: Deliverer,
        *,
        bounce: Bounce,
        delay_notice: Bounce | None = None,
        schedule: Schedule | None = None,
        concurrency: int = 100,
        per_destination: int = 20,
        batch_size: int = 1000,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.spool = spool
        self.deliverer = deliverer
        self.bounce = bounce
        self.delay_notice = delay_notice
        self.schedule = schedule or Schedule()
        self.connections = asyncio.Semaphore(concurrency)
        self.per_destination = per_destination
        self.batch_size = batch_size
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - retry jitter, not secrets
        self.events = events or LogSink()
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._runner: asyncio.Task[object] | None = None

    def wake(self) -> None:
        """New mail or a state change: look at the spool now."""
        self._wake.set()

    async def run(self) -> None:
        """Until ``stop``: claim, dispatch, sleep until something is due or we are woken."""
        self._runner = asyncio.current_task()
        while not self._stopping:
            self._wake.clear()
            claimed: list[Delivery] = []
            if self._in_flight < self.batch_size * 2:
                claimed = await self.spool.claim_due(self.clock(), self.batch_size)
            if claimed:
                self._dispatch(claimed)
                continue
            due = await self.spool.next_due()
            timeout = 1.0 if due is None else min(max(due - self.clock(), 0.01), 1.0)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                await self.deliverer.expire_idle()

    async def stop(self, grace: float = 30.0) -> None:
        """Stop claiming; let in-flight deliveries finish (bounded); close connections.

        Anything still running after ``grace`` is cancelled; its recipients stay
        ``delivering`` in the spool and are retried on the next start.
        """
        self._stopping = True
        self._wake.set()
        deadline = time.monotonic() + grace
        runner = self._runner
        if runner is not None and not runner.done() and runner is not asyncio.current_task():
            # A claim already under way still dispatches what it claimed: let it, so that
            # those deliveries are awaited below like the others instead of being left
            # half done (claimed, perhaps sent, never recorded) when the loop closes.
            await asyncio.wait({runner}, timeout=grace)
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=max(deadline - time.monotonic(), 0.0))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.deliverer.close()

    def _dispatch(self, claimed: list[Delivery]) -> None:
        groups: dict[tuple[str, TlsLevel], dict[str, list[Delivery]]] = defaultdict(dict)
        for d in claimed:
            groups[(d.domain, d.tls)].setdefault(d.queue_id, []).append(d)
        for (domain, tls), by_message in groups.items():
            messages = list(by_message.values())
            lanes = min(self.per_destination, max(1, len(messages) // 4 + 1))
            for lane in range(lanes):
                share = messages[lane::lanes]
                if share:
                    self._spawn(self._deliver(domain, tls, share))
        self._in_flight += len(claimed)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, domain: str, tls: TlsLevel, messages: list[list[Delivery]]) -> None:
        count = sum(len(m) for m in messages)
        try:
            async with self.connections:
                items, by_key = [], {}
                for rcpts in messages:
                    first = rcpts[0]
                    data = await self.spool.message_data(first.queue_id)
                    if data is None:  # deleted by an operator meanwhile
                        continue
                    items.append(
                        Item(
                            first.queue_id,
                            first.sender,
                            tuple(d.rcpt for d in rcpts),
                            data,
                            first.received,
                        )
                    )
                    by_key.update({(d.queue_id, d.rcpt): (d, data) for d in rcpts})
                reported: set[tuple[str, str]] = set()
                recording: list[asyncio.Future[None]] = []

                def report(results: list[Result]) -> None:
                    # Record each message as soon as its fate is known (group commit
                    # makes this cheap): a crash can only repeat what was in flight.
                    reported.update((r.queue_id, r.rcpt) for r in results)
                    recording.append(asyncio.ensure_future(self._record(results, by_key)))

                results = await self.deliverer.deliver(domain, tls, items, report=report)
            await asyncio.gather(*recording)
            rest = [r for r in results if (r.queue_id, r.rcpt) not in reported]
            if rest:
                await self._record(rest, by_key)
        except Exception:  # a bug must not kill the queue manager; retry later
            log.exception("delivery task for %s failed; recipients will be retried", domain)
            now = self.clock()
            await self.spool.record(
                [
                    Outcome(d.queue_id, d.rcpt, RcptStatus.DEFERRED, "internal error",
                            now + self.schedule.retry_base)
                    for rcpts in messages
                    for d in rcpts
                ]
            )  # fmt: skip
        finally:
            self._in_flight -= count
            self.wake()

    async def _record(
        self, results: list[Result], by_key: dict[tuple[str, str], tuple[Delivery, bytes]]
    ) -> None:
        now = self.clock()
        outcomes: list[Outcome] = []
        bounces: list[tuple[Delivery, str, bytes]] = []
        for r in results:
            delivery, data = by_key[(r.queue_id, r.rcpt)]
            step = next_step(r, delivery, now, self.schedule, self.rng)
            if step.status is RcptStatus.BOUNCED:
                bounces.append((delivery, step.detail, data))
                self.events.emit(Bounced(r.queue_id, r.rcpt, step.detail))
            notify = step.notice_due and self.delay_notice is not None
            if notify:
                waited = age_text(now - delivery.received)
                self.events.emit(
                    TlsAlert(r.queue_id, r.rcpt, r.tls_failure, waited, delivery.sender, r.detail)
                )
                assert self.delay_notice is not None
                await self.delay_notice(delivery, r.detail, data)
            outcomes.append(
                Outcome(
                    r.queue_id, r.rcpt, step.status, step.detail, step.next_attempt, notified=notify
                )
            )
            if step.status is RcptStatus.DEFERRED:
                self.events.emit(
                    Deferred(r.queue_id, r.rcpt, r.tls_failure, step.next_attempt - now, r.detail)
                )
        for delivery, detail, data in bounces:
            if delivery.sender:
                await self.bounce(delivery, detail, data)
        await self.spool.record(outcomes)
