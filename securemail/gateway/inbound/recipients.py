"""Is this one of our users? Refuse unknown local recipients at RCPT, not by bounce.

A gateway that accepts mail for any local part and lets the internal server bounce it
later sends those bounces to whatever the envelope sender claims: a forged
``gp.surgery@nhs.net`` writing to 100 unknown users of ours made 100 bounces to the forged
address (backscatter). Refusing at RCPT makes the *sending* server tell its own user, and
sends nothing anywhere. ``[inbound] recipients`` says how we know our users:

* ``"verify"`` (default): ask the internal server (``[inbound] deliver_to``) with an
  SMTP probe (MAIL FROM:<> + RCPT, then RSET/QUIT; no message is sent), as Postfix's
  ``reject_unverified_recipient`` does; answers are cached (accepted for an hour,
  refused for five minutes) and a lookup that cannot be made is a 4xx, never a 250;
* a path to a list: one address per line, or ``@domain`` for a whole domain (``#``
  comments); re-read when it changes;
* ``"any"``: accept every local part (the internal server decides later).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from securemail.core import replies
from securemail.core.replies import SmtpReply

ACCEPTED_TTL = 3600.0
REFUSED_TTL = 300.0
CACHE_LIMIT = 10_000
PROBE_TIMEOUT = 10.0


class RecipientCheck(Protocol):
    async def check(self, address: str) -> SmtpReply | None:
        """None if ``address`` (an own-domain addr-spec, lower-cased domain) may receive
        mail; else the reply to give (5xx unknown user, 4xx could not check)."""
        ...


class AnyRecipient:
    async def check(self, address: str) -> SmtpReply | None:
        return None


class ListedRecipients:
    """Addresses (and ``@domain`` wildcards) from a file, re-read when its mtime changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self._addresses: frozenset[str] = frozenset()

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            mtime = -2.0
        if mtime == self._mtime:
            return
        entries: set[str] = set()
        if mtime >= 0:
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                entry = line.split("#", 1)[0].strip().lower()
                if entry:
                    entries.add(entry)
        self._addresses, self._mtime = frozenset(entries), mtime

    async def check(self, address: str) -> SmtpReply | None:
        self._refresh()
        if self._mtime < 0:
            return replies.RECIPIENT_CHECK_FAILED.logged(f"recipient list {self.path} unreadable")
        lowered = address.lower()
        domain = lowered.rpartition("@")[2]
        if lowered in self._addresses or f"@{domain}" in self._addresses:
            return None
        return replies.UNKNOWN_RECIPIENT.logged(f"{address} not in {self.path}")


class VerifiedRecipients:
    """Probe the internal server; cache its answers (bounded, per address)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        helo: str,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self.host, self.port, self.helo = host, port, helo
        self.clock = clock
        self.timeout = timeout
        self._cache: OrderedDict[str, tuple[float, SmtpReply | None]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[SmtpReply | None]] = {}

    async def check(self, address: str) -> SmtpReply | None:
        key = address.lower()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self.clock():
            self._cache.move_to_end(key)
            return cached[1]
        pending = self._pending.get(key)
        if pending is not None:  # one probe per address at a time
            return await asyncio.shield(pending)
        future: asyncio.Future[SmtpReply | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            answer, ttl = await self._probe(address)
            if ttl:
                self._cache[key] = (self.clock() + ttl, answer)
                while len(self._cache) > CACHE_LIMIT:
                    self._cache.popitem(last=False)
            future.set_result(answer)
            return answer
        finally:
            del self._pending[key]

    async def _probe(self, address: str) -> tuple[SmtpReply | None, float]:
        try:
            code, text = await asyncio.wait_for(self._ask(address), self.timeout)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            detail = f"probe of {self.host}:{self.port} failed: {type(exc).__name__} {exc}"
            return replies.RECIPIENT_CHECK_FAILED.logged(detail), 0.0
        if code < 300:
            return None, ACCEPTED_TTL
        detail = f"internal server said {code} {text[:200]!r} for {address}"
        if code >= 500:
            return replies.UNKNOWN_RECIPIENT.logged(detail), REFUSED_TTL
        return replies.RECIPIENT_CHECK_FAILED.logged(detail), 0.0

    async def _ask(self, address: str) -> tuple[int, str]:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=65536)
        try:
            await _reply(reader, 220)
            for line, expect in ((f"EHLO {self.helo}", 250), ("MAIL FROM:<>", 250)):
                writer.write(f"{line}\r\n".encode())
                await _reply(reader, expect)
            writer.write(f"RCPT TO:<{address}>\r\n".encode())
            code, text = await _reply(reader, None)
            writer.write(b"RSET\r\nQUIT\r\n")
            await writer.drain()
            return code, text
        finally:
            writer.close()


async def _reply(reader: asyncio.StreamReader, expect: int | None) -> tuple[int, str]:
    """One (multi-line) SMTP reply; ValueError if malformed or not ``expect``."""
    lines: list[str] = []
    while True:
        raw = await reader.readline()
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if len(line) < 3 or not line[:3].isdigit() or len(lines) > 100:
            raise ValueError(f"malformed reply {line[:80]!r}")
        lines.append(line[4:])
        if len(line) == 3 or line[3] != "-":
            break
    code = int(line[:3])
    if expect is not None and code != expect:
        raise ValueError(f"expected {expect}, got {code} {lines[-1][:80]!r}")
    return code, " ".join(lines)


def recipient_check(
    setting: str, *, base: Path | None, deliver_to: tuple[str, int], helo: str
) -> RecipientCheck:
    """The check ``[inbound] recipients`` names (validated by the config loader)."""
    if setting == "any":
        return AnyRecipient()
    if setting == "verify":
        return VerifiedRecipients(deliver_to[0], deliver_to[1], helo=helo)
    path = Path(setting)
    return ListedRecipients(path if path.is_absolute() or base is None else base / path)
