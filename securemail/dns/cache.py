"""The resolver's answer cache: bounded in entries, least recently used first out.

Bulk checking asks for tens of thousands of names once each, so a cache that only
honours TTLs grows with the run (dnspython's default holds 100,000 answers; at that
size the garbage collector's pauses turned healthy domains into timeouts). Entries are
capped by count, not bytes: one answer is small and the count is what the collector
walks. TTLs are honoured and capped, so a hostile zone cannot pin an answer for years.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import dns.rdata

MAX_TTL = 86_400
"""A day: no answer is kept longer, whatever its TTL says."""
MAX_NEGATIVE_TTL = 3_600
"""An hour for NXDOMAIN and NODATA (unbound's ``cache-max-negative-ttl``): a record
published after a miss is seen within the hour even if the zone's SOA says a day."""

Key = tuple[bytes, int]
"""The name in lower-case wire form, and the type."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One resolved question: the records after following CNAMEs (None: NODATA), whether
    the name does not exist at all, and whether the AD flag was set."""

    records: tuple[dns.rdata.Rdata, ...] | None
    ad: bool = False
    nxdomain: bool = False


class AnswerCache:
    """``get``/``put`` by (name, type); expired entries read as absent and are dropped."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1:
            raise ValueError("cache_size must be at least 1")
        self.size = size
        self._clock = clock
        self._entries: OrderedDict[Key, tuple[float, Answer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> Answer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: Key, answer: Answer, ttl: int) -> None:
        """Keep ``answer`` for ``ttl`` seconds (capped); a TTL of 0 is not cached."""
        cap = MAX_TTL if answer.records is not None else MAX_NEGATIVE_TTL
        ttl = min(ttl, cap)
        if ttl <= 0:
            return
        self._entries[key] = (self._clock() + ttl, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
