"""The queue manager on a real spool: dispatch by (domain, TlsLevel), acting on the schedule.

The Deliverer is replaced by a scripted one, so these tests are about what the manager
hands over and records, on a clock the test moves.
"""

import asyncio
import logging
import random
import time

import pytest

from securemail.core.levels import TlsFailure, TlsLevel
from securemail.gateway.events import LogSink, MemorySink, OperatorDecision, utc_stamp
from securemail.gateway.outbound.deliver import Result
from securemail.gateway.queue.manager import QueueManager
from securemail.gateway.queue.schedule import Schedule
from securemail.gateway.spool import Decision, NewMessage, NewRecipient, RcptStatus

pytestmark = pytest.mark.timeout(30)
SENDER = "jo@example.nhs.uk"


class ScriptedDeliverer:
    """Records each call (the recipients' level from the transport facts); answers
    every recipient with ``answer(rcpt)``."""

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[tuple[str, TlsLevel, list[str]]] = []
        self.facts: list = []

    async def deliver(self, domain, facts, items, *, report=None):
        self.facts.append(facts)
        self.calls.append((domain, facts.recipient, sorted(r for i in items for r in i.rcpts)))
        return [self.answer(i.queue_id, r) for i in items for r in i.rcpts]

    async def close(self):
        pass

    async def expire_idle(self):
        pass


def delivered(queue_id, rcpt):
    return Result(queue_id, rcpt, True, False, "250 2.0.0 Ok")


def rcpt(address, level, status=RcptStatus.QUEUED):
    return NewRecipient(address, address.rpartition("@")[2], status, level, "test")


async def until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_dispatch_by_level_and_a_release_goes_out_verified(spool):
    recipients = (
        rcpt("held@gmail.test", TlsLevel.VERIFIED, RcptStatus.HELD),  # sensitive, held
        rcpt("pal@gmail.test", TlsLevel.OPPORTUNISTIC),
        rcpt("gp@nhs.net", TlsLevel.VERIFIED),
    )
    qid = await spool.store(NewMessage(SENDER, recipients, b"Subject: x\r\n\r\nbody\r\n"))
    deliverer = ScriptedDeliverer(delivered)
    manager = QueueManager(spool, deliverer, bounce=None)
    runner = asyncio.ensure_future(manager.run())
    try:
        await until(lambda: _settled(spool, qid, 2))
        assert sorted(deliverer.calls) == [
            ("gmail.test", TlsLevel.OPPORTUNISTIC, ["pal@gmail.test"]),
            ("nhs.net", TlsLevel.VERIFIED, ["gp@nhs.net"]),
        ]
        assert all(type(level) is TlsLevel for _, level, _ in deliverer.calls)
        assert (await spool.release(qid, None, Decision("alice", "ok", time.time()))).count == 1
        manager.wake()
        await until(lambda: _gone(spool, qid))
        # The same domain as an opportunistic recipient, but never grouped with it.
        assert deliverer.calls[-1] == ("gmail.test", TlsLevel.VERIFIED, ["held@gmail.test"])
    finally:
        await manager.stop(grace=5)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_forced_tls_failure_notice_once_on_the_managers_clock(spool):
    qid = await spool.store(
        NewMessage(SENDER, (rcpt("gp@nhs.net", TlsLevel.VERIFIED),), b"Subject: x\r\n\r\nb\r\n")
    )
    refused = "TLS is required but mx.nhs.net[192.0.2.7]:25 did not offer STARTTLS"
    deliverer = ScriptedDeliverer(
        lambda q, r: Result(q, r, False, False, refused, TlsFailure.STARTTLS_NOT_SUPPORTED)
    )
    notices = []

    async def notice(delivery, detail, data):
        notices.append((delivery.rcpt, detail))

    clock = [time.time() + 1000]  # past tls_notify_after (900 s) since it was received
    manager = QueueManager(spool, deliverer, bounce=None, delay_notice=notice,
                           schedule=Schedule(jitter=0.0), clock=lambda: clock[0],
                           rng=random.Random(7))  # fmt: skip
    runner = asyncio.ensure_future(manager.run())
    try:
        await until(lambda: _attempts(spool, qid, 1))
        [state] = (await spool.get(qid)).recipients
        assert (state.status, state.last_error) == (RcptStatus.DEFERRED, refused)
        assert state.next_attempt == pytest.approx(clock[0] + 60)  # retry_base, no jitter
        assert notices == [("gp@nhs.net", refused)]
        clock[0] += 10_000  # due again; still failing
        manager.wake()
        await until(lambda: _attempts(spool, qid, 2))
        assert len(deliverer.calls) == 2 and len(notices) == 1  # never a second notice
    finally:
        await manager.stop(grace=5)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def _settled(spool, qid, count):
    info = await spool.get(qid)
    return sum(r.status is RcptStatus.DELIVERED for r in info.recipients) == count


async def _gone(spool, qid):
    return await spool.get(qid) is None


async def _attempts(spool, qid, count):
    [state] = (await spool.get(qid)).recipients
    return state.attempts >= count and state.status is RcptStatus.DEFERRED


async def test_each_operator_decision_is_logged_once(spool, caplog):
    """Decisions made while the manager was down are logged on its first pass; one made
    while it runs within a couple of seconds; none twice."""
    held = (rcpt("held@gmail.test", TlsLevel.VERIFIED, RcptStatus.HELD),)
    first = await spool.store(NewMessage(SENDER, held, b"Subject: x\r\n\r\nbody\r\n"))
    two = (*held, rcpt("other@gmail.test", TlsLevel.VERIFIED, RcptStatus.HELD))
    second = await spool.store(NewMessage(SENDER, two, b"Subject: y\r\n\r\nbody\r\n"))
    await spool.delete(first, None, Decision("alice", "sent in error", 1_800_000_000.0))
    sink = MemorySink()
    manager = QueueManager(spool, ScriptedDeliverer(delivered), bounce=None, events=sink)
    runner = asyncio.ensure_future(manager.run())

    async def logged(count):
        return len(sink.of(OperatorDecision)) >= count

    try:
        await until(lambda: logged(1))
        made = time.monotonic()
        await spool.release(second, ["held@gmail.test"], Decision("bob", "ok", time.time()))
        await spool.delete(second, None, Decision("bob", "withdrawn", time.time()))
        await until(lambda: logged(3), timeout=5)
        assert time.monotonic() - made < 3.0
        await asyncio.sleep(2.5)  # more passes: nothing is logged again
    finally:
        await manager.stop(grace=5)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    decisions = sink.of(OperatorDecision)
    assert decisions[0] == OperatorDecision(
        first, "", "delete", "alice", "sent in error", 1_800_000_000.0
    )
    assert [(d.queue_id, d.rcpt, d.action, d.reason) for d in decisions] == [
        (first, "", "delete", "sent in error"),
        (second, "held@gmail.test", "release", "ok"),
        (second, "", "delete", "withdrawn"),
    ]
    # The line itself, as the log sink writes it.
    with caplog.at_level(logging.INFO, logger="securemail.queue"):
        LogSink().emit(decisions[1])
    assert caplog.messages == [
        f"operator decision queue_id={second} rcpt=<held@gmail.test> action=release by='bob' "
        f"reason='ok' at={utc_stamp(decisions[1].at)}"
    ]
