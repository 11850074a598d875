"""What happens to a recipient after an attempt: pure, with the clock and the dice passed in.

One attempt's ``Result`` plus the recipient's spool record and ``now`` decide it:

* delivered: done;
* bounced: the server said no for good (5xx), or temporary failures went on longer than
  ``max_lifetime`` (then the detail says for how long), and the sender gets a DSN;
* deferred: retried after exponential backoff with jitter, so a recovering server is not
  hit by every deferred message at once; and when the failure is a TLS requirement not
  met, the sender is told the message has not arrived (a delay notice, once, no later
  than ``tls_notify_after``).

No I/O and no hidden ``time.time()``: the queue manager does the sending and recording,
and the table of cases in ``tests/gateway/test_schedule.py`` runs without a socket.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from securemail.gateway.outbound.deliver import Result
from securemail.gateway.spool import Delivery, RcptStatus


@dataclass(frozen=True, slots=True)
class Schedule:
    retry_base: float = 60.0
    retry_max: float = 3600.0
    max_lifetime: float = 5 * 86400.0
    jitter: float = 0.2
    tls_notify_after: float = 900.0  # forced TLS still failing by then: tell the sender

    def next_attempt(self, now: float, attempts: int, rng: random.Random) -> float:
        """Exponential backoff: base·2^(n-1), capped, ±jitter."""
        delay = min(self.retry_base * 2 ** max(attempts - 1, 0), self.retry_max)
        return now + delay * (1 + rng.uniform(-self.jitter, self.jitter))


@dataclass(frozen=True, slots=True)
class Step:
    """The decision for one recipient after one attempt."""

    status: RcptStatus  # DELIVERED, BOUNCED or DEFERRED
    detail: str  # for the spool's last error, the log and the DSN
    next_attempt: float = 0.0  # DEFERRED: when to try again
    notice_due: bool = False  # DEFERRED: send the sender a delay notice now


def next_step(
    result: Result, record: Delivery, now: float, schedule: Schedule, rng: random.Random
) -> Step:
    """Decide what ``result`` means for the recipient ``record`` describes, at ``now``."""
    if result.delivered:
        return Step(RcptStatus.DELIVERED, result.detail)
    age = now - record.received
    if result.permanent:
        return Step(RcptStatus.BOUNCED, result.detail)
    if age > schedule.max_lifetime:
        return Step(RcptStatus.BOUNCED, f"gave up after {age_text(age)}: {result.detail}")
    when = schedule.next_attempt(now, record.attempts + 1, rng)
    return Step(
        RcptStatus.DEFERRED,
        result.detail,
        when,
        _tls_notice_due(result, record, now, when, schedule),
    )


def _tls_notice_due(
    result: Result, record: Delivery, now: float, retry: float, schedule: Schedule
) -> bool:
    """Notify once, no later than ``tls_notify_after``: at the last deferral before it.

    Clinical safety (DESIGN.md): forced TLS is never relaxed, so a sender must not be
    left believing a time-critical message arrived while it waits for a TLS fix. A null
    sender (a bounce) gets no notice: there is nobody to tell.
    """
    if result.tls_failure is None or record.notified or not record.sender:
        return False
    deadline = record.received + schedule.tls_notify_after
    return now >= deadline or retry > deadline


def age_text(seconds: float) -> str:
    """A duration as a person reads it in a DSN or a log line."""
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds:.0f} seconds"
