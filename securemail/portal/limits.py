"""Passcode requests and tries per client address: a bound for the web layer to apply.

The portal limits each link itself (``service.RESEND_AFTER``, ``SENDS_PER_HOUR``,
``max_tries``); one client trying many links is only visible where the client address is
known, the web layer, which asks ``ClientLimiter.allow`` before each request. In memory:
a restart forgets, which costs an attacker nothing they could not get by waiting.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class ClientLimiter:
    """At most ``limit`` events per ``window`` seconds per client (a sliding window),
    remembering at most ``max_clients`` clients (the oldest are forgotten first)."""

    def __init__(
        self, limit: int = 20, window: float = 600.0, *, clock: Callable[[], float] = time.time,
        max_clients: int = 100_000,
    ) -> None:  # fmt: skip
        if limit < 1 or window <= 0:
            raise ValueError("limit must be at least 1 and window more than 0")
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_clients = max_clients
        self._seen: dict[str, deque[float]] = {}

    def allow(self, client: str) -> float:
        """0.0 and the event counted, or the seconds to wait (nothing counted)."""
        now = self.clock()
        times = self._seen.pop(client, None) or deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            self._seen[client] = times
            return times[0] + self.window - now
        times.append(now)
        self._seen[client] = times  # re-inserted: most recent last
        while len(self._seen) > self.max_clients:
            del self._seen[next(iter(self._seen))]
        return 0.0
