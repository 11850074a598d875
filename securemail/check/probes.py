"""The TLS probes of a run, shared between the domains that need them, with a bound.

In bulk, many domains share a provider's MX hosts, so each (host, address) is probed
once while it is in use, not once per customer: a probe is started by the first domain
that asks and awaited by every domain that asks while it runs or is kept. What is kept
is bounded two ways. A probe is *held* by each domain in flight that asked for it, and
held probes stay (at most domains in flight × MX hosts × addresses); when the last
domain holding one finishes, it becomes *idle*, and idle probes are kept in a
least-recently-used list of ``idle_limit`` (sized per run to the same product), so a
provider's hosts asked for again a moment later are not probed again, yet a million
domains' worth of one-off hosts never accumulates.

A domain that gives up (its time budget ran out) must not cancel a probe other domains
are awaiting: each waits through ``asyncio.shield``. A probe that failed to run at all
(cancelled, or raised) is not kept idle, so the next domain to ask probes again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from securemail.check.rules.tls import TlsProbe

Key = tuple[str, str]  # (MX host, IP address)


class ProbeCache:
    def __init__(self, idle_limit: int = 500) -> None:
        self.idle_limit = idle_limit
        self.started = 0  # probes begun (for tests and measurements)
        self._held: dict[Key, tuple[asyncio.Future[TlsProbe], int]] = {}
        self._idle: OrderedDict[Key, asyncio.Future[TlsProbe]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held) + len(self._idle)

    def hold(
        self, key: Key, start: Callable[[], Coroutine[Any, Any, TlsProbe]]
    ) -> asyncio.Future[TlsProbe]:
        """The probe of ``key`` (started with ``start()`` unless one is held or idle),
        held until ``release(key)``. Await it through ``asyncio.shield``."""
        future, holders = self._held.get(key, (None, 0))
        if future is None:
            future = self._idle.pop(key, None)
            if future is None or _failed(future):
                future = asyncio.ensure_future(start())
                self.started += 1
        self._held[key] = (future, holders + 1)
        return future

    def release(self, keys: Iterable[Key]) -> None:
        """One holder of each of ``keys`` is done with it."""
        for key in keys:
            future, holders = self._held[key]
            if holders > 1:
                self._held[key] = (future, holders - 1)
                continue
            del self._held[key]
            if _failed(future):
                continue  # nothing worth keeping: whoever asks next probes again
            self._idle[key] = future
            while len(self._idle) > self.idle_limit:
                _, oldest = self._idle.popitem(last=False)
                oldest.cancel()  # no-op when done; else nobody awaits it any more

    def clear(self) -> None:
        """Forget every idle probe (a run's end); held ones stay with their holders."""
        for future in self._idle.values():
            future.cancel()
        self._idle.clear()


def _failed(future: asyncio.Future[TlsProbe]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)
