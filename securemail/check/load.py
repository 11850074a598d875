"""Keeping a bulk run's own load from grading the domains it checks.

A check waits on the network against timeouts, and those timeouts run on the event
loop. When the loop itself is late (a burst of handshakes and answers to parse, a long
garbage collection) a reply that came in time is read after its deadline, and a
healthy domain is reported as "could not check", or worse. So a run watches how late
the loop wakes (``LoopLag``: a task sleeping ``period`` and measuring the overshoot)
and, while the lag is over ``limit``, starts no new domain: the domains in flight
finish with the loop to themselves, and intake resumes once the loop is on time.

``cpu.tune_gc`` is the other half (a run creates millions of short-lived objects).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

LAG_LIMIT = 0.1  # seconds late before intake pauses
LAG_PERIOD = 0.05  # how often the loop is sampled


class LoopLag:
    """How late the event loop runs, and the gate intake waits on while it is too late.

    ``watch()`` is the monitor task; ``observe(lag)`` records one sample (the monitor's,
    or a test's); ``ready()`` returns at once while the last sample was within ``limit``
    and otherwise waits for one that is. ``clock`` is injectable for tests."""

    def __init__(
        self,
        limit: float = LAG_LIMIT,
        period: float = LAG_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.period = period
        self._clock = clock
        self._open = asyncio.Event()
        self._open.set()
        self.pauses = 0  # times intake was stopped
        self.worst = 0.0  # the largest lag seen, in seconds

    @property
    def open(self) -> bool:
        return self._open.is_set()

    def observe(self, lag: float) -> None:
        self.worst = max(self.worst, lag)
        if lag <= self.limit:
            self._open.set()
        elif self._open.is_set():
            self._open.clear()
            self.pauses += 1

    async def ready(self) -> None:
        await self._open.wait()

    async def watch(self) -> None:
        """Sample the loop until cancelled."""
        while True:
            started = self._clock()
            await asyncio.sleep(self.period)
            self.observe(max(0.0, self._clock() - started - self.period))
