"""The retry/bounce/notice decision, pure: a table of cases on a controlled clock."""

import random

import pytest

from securemail.core.levels import TlsFailure, TlsLevel
from securemail.gateway.outbound.deliver import Result
from securemail.gateway.queue.schedule import Schedule, Step, age_text, next_step
from securemail.gateway.spool import Delivery, RcptStatus

NOW = 1_800_000_000.0
DAY = 86400.0
SCHEDULE = Schedule(retry_base=60, retry_max=3600, max_lifetime=5 * DAY, jitter=0.0,
                    tls_notify_after=900)  # fmt: skip
NO_TLS = TlsFailure.STARTTLS_NOT_SUPPORTED
DELIVERED, BOUNCED, DEFERRED = RcptStatus.DELIVERED, RcptStatus.BOUNCED, RcptStatus.DEFERRED


def record(*, age=0.0, attempts=0, sender="jo@example.nhs.uk", notified=False):
    return Delivery("Q1", sender, "gp@nhs.net", "nhs.net", TlsLevel.VERIFIED, attempts,
                    NOW - age, 100, notified)  # fmt: skip


def result(*, delivered=False, permanent=False, failure=None, detail="mx said 451 busy"):
    return Result("Q1", "gp@nhs.net", delivered, permanent, detail, failure)


CASES = [
    # (name, result, record, expected step)
    ("delivered", result(delivered=True, detail="mx said 250 ok"), record(),
     Step(DELIVERED, "mx said 250 ok")),
    ("delivered even when old", result(delivered=True, detail="250"), record(age=9 * DAY),
     Step(DELIVERED, "250")),
    ("permanent failure bounces", result(permanent=True, detail="mx said 550 no such user"),
     record(), Step(BOUNCED, "mx said 550 no such user")),
    ("permanent TLS refusal bounces without a notice",
     result(permanent=True, failure=NO_TLS, detail="no"), record(age=1000),
     Step(BOUNCED, "no")),
    ("first deferral: base delay", result(), record(),
     Step(DEFERRED, "mx said 451 busy", NOW + 60)),
    ("backoff doubles per attempt", result(), record(attempts=3),
     Step(DEFERRED, "mx said 451 busy", NOW + 480)),
    ("backoff is capped", result(), record(attempts=30),
     Step(DEFERRED, "mx said 451 busy", NOW + 3600)),
    ("at max_lifetime still deferred", result(), record(age=5 * DAY),
     Step(DEFERRED, "mx said 451 busy", NOW + 60)),
    ("past max_lifetime bounces with its age", result(), record(age=5 * DAY + 1),
     Step(BOUNCED, "gave up after 5.0 days: mx said 451 busy")),
    ("past max_lifetime, TLS failing: bounces", result(failure=NO_TLS), record(age=6 * DAY),
     Step(BOUNCED, "gave up after 6.0 days: mx said 451 busy")),
    ("TLS failing, early: no notice yet", result(failure=NO_TLS), record(age=10),
     Step(DEFERRED, "mx said 451 busy", NOW + 60)),
    ("TLS failing, next retry after the deadline: notice now", result(failure=NO_TLS),
     record(age=850), Step(DEFERRED, "mx said 451 busy", NOW + 60, notice_due=True)),
    ("TLS failing, deadline passed: notice", result(failure=NO_TLS), record(age=900),
     Step(DEFERRED, "mx said 451 busy", NOW + 60, notice_due=True)),
    ("TLS failing, already notified: never twice", result(failure=NO_TLS),
     record(age=5000, notified=True), Step(DEFERRED, "mx said 451 busy", NOW + 60)),
    ("TLS failing, null sender: nobody to tell", result(failure=NO_TLS),
     record(age=5000, sender=""), Step(DEFERRED, "mx said 451 busy", NOW + 60)),
    ("other failure past the deadline: no notice", result(), record(age=5000),
     Step(DEFERRED, "mx said 451 busy", NOW + 60)),
    ("any TLS failure type counts",
     result(failure=TlsFailure.CERTIFICATE_EXPIRED), record(age=1000),
     Step(DEFERRED, "mx said 451 busy", NOW + 60, notice_due=True)),
]  # fmt: skip


@pytest.mark.parametrize(("result", "record", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_next_step(result, record, expected):
    assert next_step(result, record, NOW, SCHEDULE, random.Random(0)) == expected


def test_jitter_comes_from_the_injected_rng():
    schedule = Schedule(retry_base=100, jitter=0.2)
    rec, res = record(attempts=1), result()
    steps = [next_step(res, rec, NOW, schedule, random.Random(seed)) for seed in range(200)]
    delays = [s.next_attempt - NOW for s in steps]
    assert all(200 * 0.8 <= d <= 200 * 1.2 for d in delays)
    assert len(set(delays)) > 100  # spread out, so a recovering server is not stampeded
    again = [next_step(res, rec, NOW, schedule, random.Random(seed)) for seed in range(200)]
    assert again == steps  # the same dice, the same schedule: nothing else is consulted


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(59, "59 seconds"), (3600, "1.0 hours"), (5400, "1.5 hours"), (2.5 * DAY, "2.5 days")],
)
def test_age_text(seconds, text):
    assert age_text(seconds) == text
