"""How many password guesses the submission listener allows, and how an operator lifts a
lockout.

**Counting.** A try takes a slot *before* its password is verified (``reserve``), and a
correct password gives it back (``succeeded``). Checking the count only after an argon2
verification let 40 parallel AUTHs from one address all be verified while the first was
still running. Slots are counted per (client, login), ``per_login`` failures per
``window`` (default 5 in 5 minutes), and per client, a looser ``per_client`` (default
30), so one user mistyping behind a NAT locks out that user only, while one address
cannot try more than ``per_client`` passwords across all names. A refused try costs
nothing and counts nothing. A correct password clears that login's failures from that
client (a person who knows it gains nothing by guessing), never the client's.

An IPv6 client is counted by its /64, which one subscriber usually holds whole.

**Memory** is bounded: at most ``max_keys`` keys per table, the least recently used
evicted first, each holding at most its limit of timestamps. Evicting a locked key
takes ``max_keys`` fresh keys, each a verified try, so at most ``per_client`` per
address per window: hundreds of addresses.

**The operator** (``securemail user unlock NAME`` / ``--client IP``) cannot reach into a
running process, so two small JSON files live next to the users file (``LockoutFiles``):
the CLI appends to ``<users>.unlocks.json``, which the limiter re-reads when it changes
(as ``UserStore`` re-reads the users file), clearing the failures recorded before each
unlock; the gateway writes its current lockouts to ``<users>.lockouts.json``, which
``securemail user list`` shows and a restarted gateway restores. Each file has one
writer, so neither can lose the other's update.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from securemail.errors import InputError
from securemail.files import PRIVATE, write_atomic
from securemail.gateway.events import EventSink, Lifecycle

K = TypeVar("K", bound=Hashable)

MAX_KEYS = 10_000
MAX_UNLOCKS = 100  # kept in the unlocks file; older ones no longer matter anyway
MAX_LOCKOUTS_SHOWN = 1000  # written to the lockouts file, most recent first


@dataclass(frozen=True, slots=True)
class AuthLimits:
    per_login: int = 5  # failures per (client, login) per window
    per_client: int = 30  # failures per client address per window
    window: float = 300.0  # seconds
    max_keys: int = MAX_KEYS


@dataclass(frozen=True, slots=True)
class Ticket:
    """A reserved try: give it back with ``succeeded`` or keep it with ``failed``."""

    client: str
    login: str


@dataclass(frozen=True, slots=True)
class Lockout:
    client: str
    login: str | None  # None: the client address as a whole (every login)
    failures: int
    until: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class Unlock:
    """Forget the failures recorded up to ``at`` for ``login`` and/or ``client``
    (None: any). A login alone leaves the client's own count alone."""

    login: str | None
    client: str | None
    at: float

    def matches(self, client: str, login: str | None) -> bool:
        if login is None:  # the client's own count
            return self.client == client
        return self.login in (None, login) and self.client in (None, client)


def client_key(ip: str) -> str:
    """What a client is counted by: an IPv4 address, or an IPv6 address's /64."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class _Count:
    __slots__ = ("failures", "pending")

    def __init__(self) -> None:
        self.failures: deque[float] = deque()
        self.pending = 0

    def expire(self, before: float) -> None:
        while self.failures and self.failures[0] <= before:
            self.failures.popleft()

    def full(self, limit: int) -> bool:
        return len(self.failures) + self.pending >= limit


class AuthLimiter:
    """Failed-AUTH counting for the submission listener (see the module docstring).

    Synchronous and called from the event loop only, so ``reserve`` is atomic with
    respect to every other AUTH: no try can slip between a count and its slot.
    """

    def __init__(
        self,
        limits: AuthLimits | None = None,
        *,
        clock: Callable[[], float] = time.time,
        files: LockoutFiles | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.limits = limits or AuthLimits()
        self.clock = clock
        self.files = files
        self.events = events
        self._logins: OrderedDict[tuple[str, str], _Count] = OrderedDict()
        self._clients: OrderedDict[str, _Count] = OrderedDict()
        self._dirty = self._publishing = False
        if files is not None:
            self._restore(files)
            self._check_unlocks()

    # --- counting ---------------------------------------------------------------------

    def reserve(self, ip: str, login: str) -> Ticket | None:
        """A slot for one try, or None when (client, login) or the client is locked."""
        self._check_unlocks()
        ticket = Ticket(client_key(ip), login)
        now = self.clock()
        per_login = self._peek(self._logins, (ticket.client, login), now)
        per_client = self._peek(self._clients, ticket.client, now)
        if (per_login and per_login.full(self.limits.per_login)) or (
            per_client and per_client.full(self.limits.per_client)
        ):
            return None
        self._take(self._logins, (ticket.client, login)).pending += 1
        self._take(self._clients, ticket.client).pending += 1
        return ticket

    def release(self, ticket: Ticket) -> None:
        """Give the slot back with no verdict (the check itself failed, or was cancelled)."""
        for count in self._counts(ticket):
            count.pending = max(count.pending - 1, 0)

    def succeeded(self, ticket: Ticket) -> None:
        self.release(ticket)
        self._take(self._logins, (ticket.client, ticket.login)).failures.clear()

    def failed(self, ticket: Ticket) -> None:
        now = self.clock()
        limits = (self.limits.per_login, self.limits.per_client)
        for count, limit in zip(self._counts(ticket), limits, strict=True):
            count.pending = max(count.pending - 1, 0)
            count.failures.append(now)
            if len(count.failures) >= limit:
                self._dirty = True  # a new lockout: tell the operator (``publish``)

    def _counts(self, ticket: Ticket) -> tuple[_Count, _Count]:
        """The ticket's (client, login) and client counts (made again if evicted)."""
        return (
            self._take(self._logins, (ticket.client, ticket.login)),
            self._take(self._clients, ticket.client),
        )

    def _peek(self, table: OrderedDict[K, _Count], key: K, now: float) -> _Count | None:
        count = table.get(key)
        if count is not None:
            count.expire(now - self.limits.window)
        return count

    def _take(self, table: OrderedDict[K, _Count], key: K) -> _Count:
        count = table.get(key)
        if count is None:
            count = table[key] = _Count()
            if len(table) > self.limits.max_keys:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        return count

    # --- lockouts and unlocks ---------------------------------------------------------

    def lockouts(self) -> list[Lockout]:
        """Every (client, login) and client locked now, the latest to end first."""
        now = self.clock()
        found: list[Lockout] = []
        for client, login, count, limit in self._every_count():
            count.expire(now - self.limits.window)
            if len(count.failures) >= limit:
                until = count.failures[-limit] + self.limits.window
                found.append(Lockout(client, login, len(count.failures), until))
        return sorted(found, key=lambda lock: -lock.until)

    def unlock(self, unlocks: Iterable[Unlock]) -> None:
        """Forget the failures each unlock covers (recorded at or before its time)."""
        for unlock in unlocks:
            for client, login, count, _ in self._every_count():
                if count.failures and unlock.matches(client, login):
                    before = len(count.failures)
                    count.expire(unlock.at)
                    self._dirty |= len(count.failures) != before

    def _every_count(self) -> Iterator[tuple[str, str | None, _Count, int]]:
        """(client, login or None for the client's own count, count, its limit)."""
        for (client, login), count in self._logins.items():
            yield client, login, count, self.limits.per_login
        for client, count in self._clients.items():
            yield client, None, count, self.limits.per_client

    def _check_unlocks(self) -> None:
        if self.files is None:
            return
        try:
            unlocks = self.files.changed_unlocks()
        except InputError as exc:
            self._warn(f"{exc}; unlocks not applied")
            return
        if unlocks is not None:
            self.unlock(unlocks)

    def _restore(self, files: LockoutFiles) -> None:
        """Lockouts a previous process recorded stay in force after a restart."""
        try:
            found = files.read_lockouts(self.clock())
        except InputError as exc:
            self._warn(f"{exc}; earlier lockouts not restored")
            return
        window = self.limits.window
        for lock in reversed(found):
            if lock.login is None:
                count, limit = self._take(self._clients, lock.client), self.limits.per_client
            else:
                count = self._take(self._logins, (lock.client, lock.login))
                limit = self.limits.per_login
            count.failures = deque([lock.until - window] * limit)

    async def publish(self) -> None:
        """Write the lockouts file if a lockout began or ended; one write at a time, in a
        thread (it syncs to disk), and the latest state is always the one left."""
        if self.files is None or self._publishing:
            return
        self._publishing = True
        try:
            while self._dirty:
                self._dirty = False
                snapshot = self.lockouts()[:MAX_LOCKOUTS_SHOWN]
                try:
                    await asyncio.to_thread(self.files.write_lockouts, snapshot)
                except OSError as exc:
                    self._warn(f"{self.files.lockouts}: cannot write: {exc.strerror or exc}")
                    return
        finally:
            self._publishing = False

    def _warn(self, message: str) -> None:
        if self.events is not None:
            self.events.emit(Lifecycle(f"auth limiter: {message}", warning=True))


class LockoutFiles:
    """The limiter's two state files beside the users file (one writer each)."""

    def __init__(self, users_file: Path) -> None:
        self.lockouts = users_file.with_name(f"{users_file.stem}.lockouts.json")
        self.unlocks = users_file.with_name(f"{users_file.stem}.unlocks.json")
        self._seen: tuple[int, int] | None = None

    # --- unlocks: written by the CLI, read by the gateway -----------------------------

    def changed_unlocks(self) -> list[Unlock] | None:
        """The unlocks, if the file changed since the last call (else None)."""
        try:
            info = self.unlocks.stat()
        except FileNotFoundError:
            self._seen = None
            return None
        except OSError as exc:
            raise InputError(f"{self.unlocks}: {exc.strerror or exc}") from None
        seen = (info.st_ino, info.st_mtime_ns)  # a rename gives a new inode
        if seen == self._seen:
            return None
        self._seen = seen
        return self.read_unlocks()

    def read_unlocks(self) -> list[Unlock]:
        rows = _read_rows(self.unlocks, "unlocks")
        try:
            return [Unlock(_text(r, "login"), _text(r, "client"), _number(r, "at")) for r in rows]
        except ValueError:
            raise InputError(f"{self.unlocks}: not an unlocks file") from None

    def add_unlock(self, unlock: Unlock, window: float) -> None:
        """Append ``unlock``, dropping those too old to matter (and beyond ``MAX_UNLOCKS``)."""
        try:
            kept = [u for u in self.read_unlocks() if u.at > unlock.at - window]
        except InputError:
            kept = []  # a damaged file is replaced: it only ever holds unlocks
        kept = [*kept, unlock][-MAX_UNLOCKS:]
        _write_rows(self.unlocks, "unlocks", [asdict(u) for u in kept])

    # --- lockouts: written by the gateway, read by the CLI and the next start ---------

    def read_lockouts(self, now: float) -> list[Lockout]:
        """The lockouts recorded that are still in force at ``now``."""
        rows = _read_rows(self.lockouts, "lockouts")
        try:
            found = [
                Lockout(
                    _text(r, "client") or "",
                    _text(r, "login"),
                    int(_number(r, "failures")),
                    _number(r, "until"),
                )
                for r in rows
            ]
        except ValueError:
            raise InputError(f"{self.lockouts}: not a lockouts file") from None
        return [lock for lock in found if lock.until > now]

    def write_lockouts(self, lockouts: list[Lockout]) -> None:
        _write_rows(self.lockouts, "lockouts", [asdict(lock) for lock in lockouts])


def _read_rows(path: Path, key: str) -> list[dict[str, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    rows = data.get(key) if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError(f"{path}: expected {{{key!r}: [...]}}")
    return rows


def _text(row: dict[str, object], key: str) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key}: expected a string")
    return value


def _number(row: dict[str, object], key: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number")
    return float(value)


def _write_rows(path: Path, key: str, rows: list[dict[str, object]]) -> None:
    body = json.dumps({key: rows}, indent=1, ensure_ascii=False) + "\n"
    write_atomic(path, body.encode(), mode=PRIVATE)
