"""The queue manager: claim due recipients, deliver them per destination, record.

Postfix's qmgr in miniature. Each pass claims what is due from the spool (claiming
marks it ``delivering`` in the same transaction, so a crash leaves it to be retried on
the next start), groups recipients by destination domain and transport facts (the
``TlsLevel`` and why from the spool record, the message's REQUIRETLS and ``TLS-Required:
No`` flags: ``transport_facts``), so one transport decision covers each group, and by
message, and runs one task per connection's worth of messages, bounded by a global
connection limit and a per-destination one. Outcomes go back to the spool in groups,
each with the decision's label in front of its detail, which is what ``queue show``
prints per recipient.

What a result means (delivered, bounced, deferred until when, delay notice or not) is
decided by the pure ``schedule.next_step``; this module only acts on it: records the
outcome, sends the DSN or the notice, logs.

It also writes the log line for each operator decision (``securemail queue hold``,
``release``, ``delete``, ``cat --reveal``), which the ``queue`` command records only in
the spool's history: this loop already wakes at least every second, so a decision made
while the gateway runs is logged within a second or two, and one made while it was down
is logged on its first pass after the start. The spool marks an entry logged as it hands
it over, so each appears once, however many gateways share the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Sequence

from securemail.core.policy import headline
from securemail.core.transport import TransportFacts
from securemail.gateway.events import (
    Bounced,
    Deferred,
    EventSink,
    Lifecycle,
    LogSink,
    OperatorDecision,
    TlsAlert,
)
from securemail.gateway.outbound.deliver import Deliverer, Item, Result
from securemail.gateway.queue.schedule import Schedule, age_text, next_step
from securemail.gateway.spool import Delivery, Outcome, RcptStatus, Spool

log = logging.getLogger("securemail.queue")

Bounce = Callable[[Sequence[tuple[Delivery, str]], bytes], Awaitable[None]]
Notice = Callable[[Delivery, str, bytes], Awaitable[None]]

BOUNCED_MEMORY = 100_000  # message ids remembered as bounced (one DSN per message)
SPOOL_RETRY_BASE = 0.5  # seconds; doubling to SPOOL_RETRY_MAX while the spool fails
SPOOL_RETRY_MAX = 30.0
DECISIONS_EVERY = 1.0  # seconds between looks for operator decisions to log
DECISIONS_BATCH = 500  # decisions logged per look (more are fetched at once if waiting)


class QueueManager:
    def __init__(
        self,
        spool: Spool,
        deliverer: Deliverer,
        *,
        bounce: Bounce,
        delay_notice: Notice | None = None,
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
        self._unrecorded: list[Outcome] = []
        self._bounced: OrderedDict[str, None] = OrderedDict()  # messages already bounced
        self._decisions_due = 0.0  # time.monotonic() of the next look for decisions

    def wake(self) -> None:
        """New mail or a state change: look at the spool now."""
        self._wake.set()

    async def run(self) -> None:
        """Until ``stop``: claim, dispatch, sleep until something is due or we are woken.

        Nothing stops this loop but ``stop``: a spool that cannot be read or written (a
        full disk, a locked file) or a bug raises here, is reported as an ``ALERT`` and
        retried with backoff, so mail accepted once the cause is gone is delivered.
        Outcomes that could not be written are kept (``_unrecorded``) and written first
        on the next pass: a claimed recipient is never left ``delivering``.
        """
        self._runner = asyncio.current_task()
        failures = 0
        while not self._stopping:
            try:
                await self._pass()
                failures = 0
            except Exception as exc:
                failures += 1
                delay = min(SPOOL_RETRY_BASE * 2 ** (failures - 1), SPOOL_RETRY_MAX)
                self.events.emit(
                    Lifecycle(
                        f"ALERT queue manager: {type(exc).__name__}: {exc}; "
                        f"retrying in {delay:.1f}s",
                        warning=True,
                    )
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    async def _pass(self) -> None:
        self._wake.clear()
        if self._unrecorded:
            pending, self._unrecorded = self._unrecorded, []
            try:
                await self.spool.record(pending)
            except Exception:
                self._unrecorded = pending + self._unrecorded
                raise
        claimed: list[Delivery] = []
        if self._in_flight < self.batch_size * 2:
            claimed = await self.spool.claim_due(self.clock(), self.batch_size)
        if claimed:
            self._dispatch(claimed)
            await self._log_decisions()  # after the claim: an audit line never delays mail
            return
        await self._log_decisions()
        due = await self.spool.next_due()
        timeout = 1.0 if due is None else min(max(due - self.clock(), 0.01), 1.0)
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            await self.deliverer.expire_idle()

    async def _log_decisions(self) -> None:
        """One log line per operator decision not logged yet, at most once a second.

        A failure here is reported and left for the next look: the audit line waits (the
        history in the spool keeps the decision), mail delivery does not.
        """
        now = time.monotonic()  # a rate, not a schedule: not the injected wall clock
        if now < self._decisions_due:
            return
        self._decisions_due = now + DECISIONS_EVERY
        try:
            entries = await self.spool.claim_unlogged(DECISIONS_BATCH)
        except Exception as exc:
            self.events.emit(
                Lifecycle(
                    f"ALERT could not read operator decisions ({type(exc).__name__}: {exc}); "
                    "retrying",
                    warning=True,
                )
            )
            return
        for e in entries:
            self.events.emit(
                OperatorDecision(e.queue_id, e.rcpt, e.action.value, e.operator, e.reason, e.at)
            )
        if len(entries) == DECISIONS_BATCH:
            self._decisions_due = now  # more are waiting: the next pass takes them

    async def _write(self, outcomes: list[Outcome]) -> None:
        """Record outcomes; if the spool refuses, keep them for the next pass."""
        try:
            await self.spool.record(outcomes)
        except Exception as exc:
            self._unrecorded.extend(outcomes)
            self.events.emit(
                Lifecycle(
                    f"ALERT could not record {len(outcomes)} delivery outcomes "
                    f"({type(exc).__name__}: {exc}); kept to retry",
                    warning=True,
                )
            )
            self.wake()

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
        groups: dict[tuple[str, TransportFacts], dict[str, list[Delivery]]] = defaultdict(dict)
        for d in claimed:
            groups[(d.domain, transport_facts(d))].setdefault(d.queue_id, []).append(d)
        for (domain, facts), by_message in groups.items():
            messages = list(by_message.values())
            lanes = min(self.per_destination, max(1, len(messages) // 4 + 1))
            for lane in range(lanes):
                share = messages[lane::lanes]
                if share:
                    self._spawn(self._deliver(domain, facts, share))
        self._in_flight += len(claimed)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, domain: str, facts: TransportFacts, messages: list[list[Delivery]]
    ) -> None:
        count = sum(len(m) for m in messages)
        reported: set[tuple[str, str]] = set()  # recipients whose outcome is in hand
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
                            first.requiretls,
                        )
                    )
                    by_key.update({(d.queue_id, d.rcpt): (d, data) for d in rcpts})
                recording: list[asyncio.Future[None]] = []

                def report(results: list[Result]) -> None:
                    # Record each message as soon as its fate is known (group commit
                    # makes this cheap): a crash can only repeat what was in flight.
                    reported.update((r.queue_id, r.rcpt) for r in results)
                    recording.append(asyncio.ensure_future(self._record(results, by_key)))

                results = await self.deliverer.deliver(domain, facts, items, report=report)
            await asyncio.gather(*recording)
            rest = [r for r in results if (r.queue_id, r.rcpt) not in reported]
            if rest:
                await self._record(rest, by_key)
        except Exception:  # a bug must not kill the queue manager; retry later
            log.exception("delivery task for %s failed; recipients will be retried", domain)
            now = self.clock()
            done = {(o.queue_id, o.rcpt) for o in self._unrecorded} | reported
            await self._write(
                [
                    Outcome(d.queue_id, d.rcpt, RcptStatus.DEFERRED, "internal error",
                            now + self.schedule.retry_base)
                    for rcpts in messages
                    for d in rcpts
                    if (d.queue_id, d.rcpt) not in done
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
                self.events.emit(Bounced(r.queue_id, r.rcpt, step.detail, r.transport))
            notify = step.notice_due and self.delay_notice is not None
            if notify:
                waited = age_text(now - delivery.received)
                self.events.emit(
                    TlsAlert(r.queue_id, r.rcpt, r.tls_failure, waited, delivery.sender, r.detail)
                )
                assert self.delay_notice is not None
                await self.delay_notice(delivery, r.detail, data)
            error = f"{r.transport}; {step.detail}" if r.transport else step.detail
            outcomes.append(
                Outcome(r.queue_id, r.rcpt, step.status, error, step.next_attempt, notified=notify)
            )
            if step.status is RcptStatus.DEFERRED:
                retry_in = step.next_attempt - now
                self.events.emit(
                    Deferred(r.queue_id, r.rcpt, r.tls_failure, retry_in, r.detail, r.transport)
                )
        await self._write(outcomes)
        by_message: dict[str, list[tuple[Delivery, str]]] = {}
        originals: dict[str, bytes] = {}
        for delivery, detail, data in bounces:
            if delivery.sender and delivery.queue_id not in self._bounced:
                by_message.setdefault(delivery.queue_id, []).append((delivery, detail))
                originals[delivery.queue_id] = data
        for queue_id, failures in by_message.items():  # one DSN per message, ever
            self._bounced[queue_id] = None
            if len(self._bounced) > BOUNCED_MEMORY:
                self._bounced.popitem(last=False)
            await self.bounce(failures, originals[queue_id])


def transport_facts(delivery: Delivery) -> TransportFacts:
    """What the transport decision reads about one claimed recipient and its message.

    ``why`` (from the stored reason) only for a level the recipient's decision forced:
    it is that level's reason in the label, and leaving it out for opportunistic mail
    keeps one destination's mail in one group. REQUIRETLS binds only a message with a
    return path (RFC 8689 §4.2.1: a bounce is not bounced for it); the flag still goes
    on to a next hop that offers it (``Item.requiretls``).
    """
    return TransportFacts(
        recipient=delivery.tls,
        why=headline(delivery.reason) if delivery.tls.forced else "",
        requiretls=delivery.requiretls and bool(delivery.sender),
        tls_required_no=delivery.tls_required_no,
    )
