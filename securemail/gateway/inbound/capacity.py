"""Capacity shared by every connection of both listeners: connections open, DATA in flight.

One client must not be able to take what all clients share. ~1,020 idle connections
from one address used to exhaust the process's file descriptors and shut everyone out,
and each DATA could grow without regard to the others. So the listeners count open
connections in total and per client address (``[listen] max_connections`` and
``max_connections_per_ip``; over either, ``421 4.7.0`` and close, as Postfix's
``smtpd_client_connection_count_limit`` does), and the DATA reader counts the bytes it
holds against one budget (``[listen] max_data_in_flight``).
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

from securemail.gateway.inbound.networks import Networks


class Admission(Protocol):
    """What a session asks when it opens and tells when it closes."""

    def admit(self, ip: str) -> str | None: ...

    def leave(self, ip: str) -> None: ...


class ConnectionLimits:
    """Open connections, in total and per client address.

    Addresses in ``exempt`` (``[relay] networks``: our own servers, which may well open
    many connections at once) have no per-address limit, as Postfix exempts
    ``$mynetworks`` (``smtpd_client_event_limit_exceptions``); the total still counts them.
    """

    def __init__(self, total: int, per_ip: int, exempt: Sequence[str] = ()) -> None:
        self.total = total
        self.per_ip = per_ip
        self.exempt = Networks(exempt)
        self.open: Counter[str] = Counter()
        self.count = 0

    def admit(self, ip: str) -> str | None:
        """Count the connection and return None, or return why it is refused (uncounted)."""
        if self.count >= self.total:
            return f"{self.count} connections open (max_connections {self.total})"
        if self.open[ip] >= self.per_ip and ip not in self.exempt:
            return f"{self.open[ip]} connections open from {ip} (max_connections_per_ip)"
        self.open[ip] += 1
        self.count += 1
        return None

    def leave(self, ip: str) -> None:
        self.count -= 1
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]  # bounded: only addresses with a connection open stay


class Admitted:
    """``Admission`` for a connection the gateway process already counted and handed to
    this accept worker (``inbound/pool.py``): it is in; closing it is reported back."""

    def __init__(self, on_leave: Callable[[], None]) -> None:
        self.on_leave = on_leave

    def admit(self, ip: str) -> str | None:
        return None

    def leave(self, ip: str) -> None:
        self.on_leave()


class BudgetSlots:
    """What each process holds of the DATA budget, on one page they all map.

    With accept workers (``inbound/pool.py``) the sessions of one gateway are spread
    over several processes, and ``[listen] max_data_in_flight`` must still bound them
    all. The gateway creates a ``memfd`` with one 8-byte slot per process (its own is 0)
    and hands it to each worker with its slot number. A process writes only its own
    slot and reads all of them to decide, so none ever waits for another (no lock on
    the DATA path); two deciding at the same instant may each take one chunk
    (``server.DATA_CHUNK``) past the limit: a bounded excess. A worker's slot is zeroed
    before its replacement starts, so the bytes a killed worker held are free again.
    """

    SLOT = struct.Struct("=q")

    def __init__(self, fd: int, slot: int, count: int) -> None:
        if not 0 <= slot < count:
            raise ValueError(f"slot {slot} of {count}")
        self.fd, self.slot, self.count = fd, slot, count
        self._map = mmap.mmap(fd, self.SLOT.size * count)
        self._all = struct.Struct(f"={count}q")

    @classmethod
    def create(cls, count: int) -> BudgetSlots:
        """A new page of ``count`` zeroed slots; this process has slot 0."""
        fd = os.memfd_create("securemail-data-in-flight", os.MFD_CLOEXEC)
        os.ftruncate(fd, cls.SLOT.size * count)
        return cls(fd, 0, count)

    def total(self) -> int:
        return sum(self._all.unpack_from(self._map))

    def set(self, held: int, slot: int | None = None) -> None:
        self.SLOT.pack_into(self._map, self.SLOT.size * (self.slot if slot is None else slot), held)


class DataBudget:
    """DATA bytes held across all connections, against ``limit``; those of the accept
    workers too, once shared with them (``share``, ``BudgetSlots``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.mine = 0  # held by this process's connections
        self.slots: BudgetSlots | None = None

    @property
    def held(self) -> int:
        return self.mine if self.slots is None else self.slots.total()

    def share(self, slots: BudgetSlots) -> None:
        self.slots = slots
        slots.set(self.mine)

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.mine += size
        if self.slots is not None:
            self.slots.set(self.mine)
        return True

    def give(self, size: int) -> None:
        self.mine -= size
        if self.slots is not None:
            self.slots.set(self.mine)


class Pregreet:
    """Postscreen's pregreet test, paid once per client: who has already waited politely.

    The greeting waits ``pause`` seconds for a client it does not know; a client that
    talked first is refused, one that waited is remembered for ``ttl`` (Postfix's
    ``postscreen_greet_ttl``, a day) and greeted at once from then on, as are our own
    ``[relay] networks``. Without this, every connection of a busy peer (each message
    of a relaying server) would pay the pause. Bounded: the oldest entries go first.
    """

    def __init__(
        self,
        pause: float,
        exempt: Sequence[str] = (),
        *,
        ttl: float = 86400.0,
        limit: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pause = pause
        self.exempt = Networks(exempt)
        self.ttl = ttl
        self.limit = limit
        self.clock = clock
        self._passed: OrderedDict[str, float] = OrderedDict()

    def pause_for(self, ip: str) -> float:
        """How long to wait before greeting ``ip`` (0: greet at once)."""
        if self.pause <= 0:
            return 0.0
        until = self._passed.get(ip)
        if until is not None and until > self.clock():
            return 0.0
        return 0.0 if ip in self.exempt else self.pause

    def passed(self, ip: str) -> None:
        self._passed[ip] = self.clock() + self.ttl
        self._passed.move_to_end(ip)
        while len(self._passed) > self.limit:
            self._passed.popitem(last=False)
