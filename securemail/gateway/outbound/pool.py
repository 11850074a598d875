"""Idle SMTP connections kept per destination for reuse (Postfix's connection cache).

A connection parked here has already passed the delivery policy for its key's domain,
level and REQUIRETLS demand, so reusing it for the same (domain, host, address, port,
level, requiretls) spares a TCP and TLS handshake per message without a second policy
check. It is never reused for another level or demand, nor for another domain behind the
same MX: a policy can pin names per domain, and a connection to a spoofed MX accepted
for one domain must not carry another's mail.
Idle ones are closed after a few seconds, so a server never sees us sit on its slots.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable

from securemail.core.levels import TlsLevel
from securemail.gateway.outbound.client import SmtpConnection

IDLE_SECONDS = 5.0
MAX_IDLE_PER_DESTINATION = 32

# (recipient domain, MX host, address, port, level, REQUIRETLS): what the policy checked
PoolKey = tuple[str, str, str, int, TlsLevel, bool]


class ConnectionPool:
    def __init__(
        self,
        *,
        idle_seconds: float = IDLE_SECONDS,
        max_idle: int = MAX_IDLE_PER_DESTINATION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_seconds = idle_seconds
        self.max_idle = max_idle
        self.clock = clock
        self._idle: dict[PoolKey, list[tuple[float, SmtpConnection]]] = defaultdict(list)
        self._closing: set[asyncio.Future[None]] = set()
        self._closed = False

    def take(self, key: PoolKey) -> SmtpConnection | None:
        """The most recently parked live connection for ``key``; stale ones are closed."""
        now = self.clock()
        idle = self._idle.get(key)
        while idle:
            parked, conn = idle.pop()
            if now - parked < self.idle_seconds and conn.is_open:
                return conn
            self._close_later(conn)
        return None

    def park(self, key: PoolKey, conn: SmtpConnection) -> None:
        if self._closed:
            self._close_later(conn)
            return
        idle = self._idle[key]
        if len(idle) >= self.max_idle:
            self._close_later(conn)
            return
        idle.append((self.clock(), conn))

    async def expire(self) -> None:
        """Close connections idle too long (called by the queue manager's loop)."""
        now = self.clock()
        for key, idle in list(self._idle.items()):
            keep = [(t, c) for t, c in idle if now - t < self.idle_seconds and c.is_open]
            for t, c in idle:
                if (t, c) not in keep:
                    await c.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    async def close(self) -> None:
        """Close the idle connections; one parked afterwards is closed at once (a
        delivery still running on a deliverer a reload has replaced)."""
        self._closed = True
        conns = [c for idle in self._idle.values() for _, c in idle]
        self._idle.clear()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)

    def _close_later(self, conn: SmtpConnection) -> None:
        task = asyncio.ensure_future(conn.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
