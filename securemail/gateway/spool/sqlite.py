"""The spool in one SQLite file, with group commit on a single writer thread.

One fsync costs the same for one message as for five hundred. So, like PostgreSQL's group
commit, all requests go to one thread that owns the connection: it takes the first, then
everything else already waiting, runs them in one ``BEGIN IMMEDIATE … COMMIT`` and only
then answers their callers, one ``call_soon_threadsafe`` per batch. Batches grow by
themselves under load (requests pile up during the previous fsync); a lone message
commits at once, with no timer adding latency; the event loop never waits on SQLite.

Each request runs in its own SAVEPOINT, so one that fails is rolled back alone while the
rest of its batch commits. If the transaction itself is lost (disk full, I/O error), the
batch is re-run one request per transaction, so every caller gets its own true answer.

``open()`` creates the schema or upgrades an older one in place (``schema.py``) and
forgets operator decisions older than ``audit_days``; what those decisions do to the
queue, with their history, is ``history.py``; the MTA-STS policy cache, ``sts_cache.py``.

WAL with ``synchronous=FULL`` makes COMMIT durable before it returns, and lets the
``queue`` commands use the file while the gateway runs. Which DELIVERING recipients may be
put back after a crash is settled by the kernel, not guessed: each open spool holds an
``flock`` on ``<db>-owner-<token>`` and marks its claims with the token; ``open()`` puts
back only claims whose owner's lock is free, so ``securemail queue list`` never steals a
live gateway's deliveries (a second copy in an NHS mailbox is not a harmless retry).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from securemail.core.levels import TlsLevel
from securemail.gateway.spool import history, sts_cache
from securemail.gateway.spool import store as s
from securemail.gateway.spool.schema import prepare, remove_if_final

try:
    import fcntl
except ImportError:  # pragma: no cover - no flock (Windows): every other claim looks dead
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")
_Request = tuple[Any, ...]  # (operation, args, future, the future's loop)
_Result = tuple[_Request, BaseException | None, Any]

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
BUSY_TIMEOUT = 5.0
LOCK_NAP_MIN = 0.0001  # seconds between tries for the write lock (``_begin``), doubling
LOCK_NAP_MAX = 0.001
CLOSE_TIMEOUT = 30.0
_DUE = (s.RcptStatus.QUEUED.value, s.RcptStatus.DEFERRED.value)
_STOP = None


@dataclass(slots=True)
class SpoolStats:
    """What group commit achieved: ``ops_committed / commits`` is the mean batch size.

    For benchmarks and tests only, so it is kept beside this backend rather than in the
    ``Spool`` protocol, which a backend without group commit would have to fake.
    """

    commits: int = 0  # transactions committed
    ops_committed: int = 0  # requests that succeeded inside them


class SqliteSpool:
    """``Spool`` in a SQLite file. ``synchronous="NORMAL"`` is for tests only: commits
    stay atomic, but the last ones may be lost if the power fails. ``audit_days`` None
    keeps operator decisions for ever (the configuration always sets it)."""

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "FULL",
        max_batch: int = 512,
        audit_days: float | None = None,
        linger: float = 0.0,
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
        if audit_days is not None and audit_days <= 0:
            raise ValueError("audit_days must be more than 0")
        self.path = Path(path)
        self.audit_days = audit_days
        self.synchronous = synchronous.upper()
        self.recovered = 0
        self.stats = SpoolStats()
        self._max_batch = max_batch
        self._linger = linger  # seconds a batch waits for company (``_take``)
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # so that no request can slip in behind _STOP
        self._state = "new"  # new → opening → open → closing → closed
        self._thread: threading.Thread | None = None
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._conn: sqlite3.Connection | None = None
        self._token = s.new_queue_id()  # marks this instance's claims
        self._owner_fd: int | None = None

    async def open(self) -> None:
        with self._lock:
            if self._state != "new":
                raise s.SpoolClosedError(f"spool {self.path} was already opened")
            self._state = "opening"
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="securemail-spool-writer", daemon=True
        )
        self._thread.start()
        try:
            self.recovered = await asyncio.wrap_future(ready)
        except BaseException:
            await self.close()
            raise
        with self._lock:
            if self._state == "opening":
                self._state = "open"

    async def close(self) -> None:
        """Commit whatever is already queued, then stop the thread. Safe to call twice."""
        with self._lock:
            if self._state in ("new", "closed"):
                self._state = "closed"
                return
            if self._state != "closing":
                self._state = "closing"
                self._requests.put(_STOP)
        try:
            stopped = asyncio.shield(asyncio.wrap_future(self._stopped))
            await asyncio.wait_for(stopped, CLOSE_TIMEOUT)
        except TimeoutError:
            raise s.SpoolError(f"spool {self.path}: writer busy after {CLOSE_TIMEOUT:g}s") from None
        with self._lock:
            self._state = "closed"
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    async def store(self, message: s.NewMessage) -> str:
        """Return the new queue id once the message is durable.

        Cancelling the caller does not withdraw the request: the message may still be
        committed, and the client, never having seen 250, sends it again. A duplicate is
        the price; a message acknowledged but not stored would be a loss.
        """
        message.check()
        return await self._call(_store, message.queue_id or s.new_queue_id(), message)

    async def claim_due(self, now: float, limit: int) -> list[s.Delivery]:
        return await self._call(_claim, now, limit, self._token) if limit > 0 else []

    async def message_data(self, queue_id: str) -> bytes | None:
        return await self._call(_data, queue_id)

    async def record(self, outcomes: Sequence[s.Outcome]) -> None:
        """Apply results; a message whose recipients are all final is removed.

        Only recipients still DELIVERING change, so an operator's ``delete`` during an
        attempt wins over the attempt's late result.
        """
        for outcome in outcomes:
            outcome.check()
        if outcomes and await self._call(_record, tuple(outcomes)):
            await self._call(_CHECKPOINT)

    async def list_messages(
        self,
        *,
        status: s.RcptStatus | None = None,
        domain: str | None = None,
        received_before: float | None = None,
        after: str = "",
        limit: int = 1000,
    ) -> list[s.MessageInfo]:
        where = _Where(
            None if status is None else s.RcptStatus(status).value,
            domain,
            received_before,
            after or None,
        )
        return await self._call(_list, where, limit)

    async def get(self, queue_id: str) -> s.MessageInfo | None:
        found = await self._call(_list, _Where(queue_id=queue_id), 1)
        return found[0] if found else None

    async def history(self, queue_id: str) -> list[s.HistoryEntry]:
        found = await self._call(history.entries, (queue_id,))
        return found.get(queue_id, [])

    async def hold(
        self, queue_id: str, rcpts: Sequence[str] | None, decision: s.Decision
    ) -> s.Change:
        return await self._decide(s.Action.HOLD, queue_id, rcpts, decision)

    async def release(
        self, queue_id: str, rcpts: Sequence[str] | None, decision: s.Decision
    ) -> s.Change:
        return await self._decide(s.Action.RELEASE, queue_id, rcpts, decision)

    async def delete(
        self, queue_id: str, rcpts: Sequence[str] | None, decision: s.Decision
    ) -> s.Change:
        return await self._decide(s.Action.DELETE, queue_id, rcpts, decision)

    async def reveal(self, queue_id: str, decision: s.Decision) -> bytes | None:
        return await self._call(history.reveal, queue_id, decision)

    async def claim_unlogged(self, limit: int) -> list[s.HistoryEntry]:
        return await self._call(history.claim_unlogged, limit) if limit > 0 else []

    async def _decide(
        self, action: s.Action, queue_id: str, rcpts: Sequence[str] | None, decision: s.Decision
    ) -> s.Change:
        names = None if rcpts is None else tuple(rcpts)
        return await self._call(history.change, action, queue_id, names, decision, time.time())

    async def hand_off(self, queue_id: str, rcpts: Sequence[str], stage: str, reason: str) -> int:
        if not stage.strip() or not reason.strip():
            raise ValueError("a hand-off names the stage that takes over and why")
        if not rcpts:
            return 0
        detail = f"handed off to {stage}: {reason}"
        return await self._call(_hand_off, queue_id, tuple(rcpts), detail, time.time())

    async def sts_get(self, domain: str) -> s.StsPolicyRecord | None:
        return await self._call(sts_cache.get, domain)

    async def sts_put(self, record: s.StsPolicyRecord) -> None:
        await self._call(sts_cache.put, record)

    async def flush(self) -> int:
        """Make every waiting recipient due now; returns how many were waiting."""
        return await self._call(_flush, time.time())

    async def next_due(self) -> float | None:
        return await self._call(_next_due)

    async def counts(self) -> dict[str, int]:
        return await self._call(_counts)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._state != "open":
                state = "not open yet" if self._state in ("new", "opening") else "closed"
                raise s.SpoolClosedError(f"spool {self.path} is {state}")
            self._requests.put((fn, args, future, loop))
        return await future

    def _run(self, ready: concurrent.futures.Future[int]) -> None:
        try:
            self._conn = self._connect()
            if self.audit_days is not None:
                history.prune(self._conn, time.time() - self.audit_days * 86400)
            ready.set_result(self._recover(self._conn))
        except BaseException as exc:
            ready.set_exception(_wrap("open", exc))
        else:
            self._serve()
        finally:
            with self._lock:
                self._state = "closing"
            leftovers = []
            with contextlib.suppress(queue.Empty):
                while True:
                    if (req := self._requests.get_nowait()) is not _STOP:
                        leftovers.append((req, s.SpoolClosedError("spool stopped"), None))
            self._settle(leftovers)
            if self._conn is not None:
                self._conn.close()
            if self._owner_fd is not None:
                self._owner_file(self._token).unlink(missing_ok=True)
                os.close(self._owner_fd)
            self._stopped.set_result(None)

    def _serve(self) -> None:
        stop = False
        while not stop:
            batch = self._take()
            if _STOP in batch:
                stop = True
                batch = batch[: batch.index(_STOP)]  # nothing follows: see close()
            checkpoints = [req for req in batch if req[0] is _CHECKPOINT]
            batch = [req for req in batch if req[0] is not _CHECKPOINT]
            if batch:
                self._settle(self._execute(batch))
            if checkpoints:
                self._settle(self._outside_transaction(checkpoints))

    def _take(self) -> list[_Request]:
        """The next batch: the first request, whatever else is waiting and, with
        ``linger``, what arrives within that many seconds of the first.

        Lingering is PostgreSQL's ``commit_delay``, for a spool whose write lock other
        processes share (the gateway's, beside its accept workers): its own writes are
        delivery bookkeeping, one claim or outcome at a time, and each transaction held
        the lock the workers' commits wait for (2,351 of them in a 4.6 s relay run
        against the two workers' 2,021). Fewer, larger ones leave it free more often.
        """
        batch = [self._requests.get()]
        deadline = time.monotonic() + self._linger
        with contextlib.suppress(queue.Empty):
            while len(batch) < self._max_batch and batch[-1] is not _STOP:
                left = deadline - time.monotonic()
                if left > 0:
                    batch.append(self._requests.get(timeout=left))
                else:
                    batch.append(self._requests.get_nowait())
        return batch

    def _execute(self, batch: list[_Request]) -> list[_Result]:
        conn = self._conn
        assert conn is not None
        results: list[_Result] = []
        try:
            _begin(conn)
        except sqlite3.Error as exc:  # locked past BUSY_TIMEOUT: nothing ran, all fail
            return [(req, exc, None) for req in batch]
        try:
            for req in batch:
                conn.execute("SAVEPOINT op")
                try:
                    results.append((req, None, req[0](conn, *req[1])))
                except Exception as exc:
                    if not conn.in_transaction:
                        raise  # SQLite rolled the whole transaction back
                    conn.execute("ROLLBACK TO op")
                    results.append((req, exc, None))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if len(batch) == 1:
                return [(batch[0], exc, None)]
            return [result for req in batch for result in self._execute([req])]
        self.stats.commits += 1
        self.stats.ops_committed += sum(1 for _, exc, _ in results if exc is None)
        return results

    def _outside_transaction(self, batch: list[_Request]) -> list[_Result]:
        """Run ``batch`` (checkpoints) once for all, after the batch it came with."""
        conn = self._conn
        assert conn is not None
        try:
            batch[0][0](conn)
        except sqlite3.Error as exc:
            return [(req, exc, None) for req in batch]
        return [(req, None, None) for req in batch]

    def _settle(self, results: list[_Result]) -> None:
        """Answer every caller: one thread hop per event loop for the whole batch."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, ...]]] = {}
        for (operation, _, future, loop), exc, value in results:
            error = None if exc is None else _wrap(operation.__name__.strip("_"), exc)
            by_loop.setdefault(loop, []).append((future, error, value))
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                loop.call_soon_threadsafe(_answer, answers)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Mail is confidential; SQLite gives the -wal and -shm files the database's mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        if fcntl is not None:
            # Lock, then make visible: a recovering instance must never see it unlocked.
            pending = self.path.with_name(f"{self.path.name}-new-{self._token}")
            self._owner_fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            fcntl.flock(self._owner_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            pending.replace(self._owner_file(self._token))
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise s.SpoolError(f"spool {self.path}: cannot use WAL (journal_mode={mode})")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")  # a no-op inside a transaction
            conn.execute("PRAGMA journal_size_limit = 67108864")
            prepare(conn, self.path)
        except BaseException:
            conn.close()
            raise
        return conn

    def _owner_file(self, token: str) -> Path:
        return self.path.with_name(f"{self.path.name}-owner-{token}")

    def _recover(self, conn: sqlite3.Connection) -> int:
        """Put back DELIVERING recipients whose owner is gone; returns how many.

        Owners are examined while we hold the write lock, so an instance that has claimed
        anything already has a lock file we can see.
        """
        live, dead = [self._token], []
        conn.execute("BEGIN IMMEDIATE")
        try:
            prefix = f"{self.path.name}-owner-"
            for lock in self.path.parent.glob(glob.escape(prefix) + "*"):
                token = lock.name.removeprefix(prefix)
                if token == self._token or fcntl is None:
                    continue
                try:
                    fd = os.open(lock, os.O_RDWR)
                except FileNotFoundError:  # its owner closed meanwhile
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # held: its owner is alive
                    live.append(token)
                    os.close(fd)
                else:
                    dead.append((lock, fd))
            recovered = conn.execute(
                "UPDATE recipients SET status = 'queued', claimed_by = NULL, updated = ?"
                " WHERE status = 'delivering' AND (claimed_by IS NULL"
                " OR claimed_by NOT IN (SELECT value FROM json_each(?)))",
                (time.time(), json.dumps(live)),
            ).rowcount
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for lock, fd in dead:  # their owners are gone, whether or not we committed
                lock.unlink(missing_ok=True)
                os.close(fd)
        return recovered


def _answer(answers: list[tuple[Any, ...]]) -> None:
    for future, error, value in answers:
        if future.done():  # the caller was cancelled
            pass
        elif error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


def _wrap(operation: str, exc: BaseException) -> BaseException:
    if not isinstance(exc, sqlite3.Error):
        return exc
    error = s.SpoolError(f"spool {operation}: {exc}")
    error.__cause__ = exc
    return error


# -- operations: each runs on the writer thread, inside its batch's transaction --------


def _store(conn: sqlite3.Connection, queue_id: str, message: s.NewMessage) -> str:
    now, data = time.time(), bytes(message.data)
    conn.execute(
        "INSERT INTO messages (id, sender, received, size, client, auth_user, sensitivity,"
        " data, requiretls, tls_required_no) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (queue_id, message.sender, message.received or now, len(data), message.client,
         message.auth_user, message.sensitivity, data, message.requiretls,
         message.tls_required_no),
    )  # fmt: skip
    conn.executemany(
        "INSERT INTO recipients (queue_id, rcpt, domain, status, tls, reason, next_attempt,"
        " updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(queue_id, r.address, r.domain, r.status, r.tls.label, r.reason, now, now)
         for r in message.recipients],
    )  # fmt: skip
    return queue_id


def _claim(conn: sqlite3.Connection, now: float, limit: int, token: str) -> list[s.Delivery]:
    # One indexed, already ordered scan per due status, merged here: cheaper than having
    # SQLite sort every due row of a large backlog to find the oldest few.
    rows: list[Any] = []
    for status in _DUE:
        rows += conn.execute(
            "SELECT r.next_attempt, r.rowid, r.queue_id, m.sender, r.rcpt, r.domain, r.tls,"
            " r.attempts, m.received, m.size, r.notified, m.requiretls, m.tls_required_no,"
            " r.reason"
            " FROM recipients r JOIN messages m"
            " ON m.id = r.queue_id WHERE r.status = ? AND r.next_attempt <= ?"
            " ORDER BY r.next_attempt, r.rowid LIMIT ?",
            (status, now, limit),
        ).fetchall()
    rows = sorted(rows)[:limit]
    conn.executemany(
        "UPDATE recipients SET status = 'delivering', claimed_by = ?, updated = ? WHERE rowid = ?",
        [(token, time.time(), row[1]) for row in rows],
    )
    return [
        s.Delivery(
            *row[2:6],
            TlsLevel.from_label(row[6]),
            *row[7:10],
            notified=bool(row[10]),
            requiretls=bool(row[11]),
            tls_required_no=bool(row[12]),
            reason=row[13],
        )
        for row in rows
    ]


def _data(conn: sqlite3.Connection, queue_id: str) -> bytes | None:
    row = conn.execute("SELECT data FROM messages WHERE id = ?", (queue_id,)).fetchone()
    return None if row is None else bytes(row[0])


def _record(conn: sqlite3.Connection, outcomes: tuple[s.Outcome, ...]) -> int:
    """Apply ``outcomes``; returns how many sensitive messages were erased (then the
    WAL is checkpointed, so their frames do not outlive them in the -wal file)."""
    now = time.time()
    conn.executemany(
        "UPDATE recipients SET status = ?, last_error = COALESCE(NULLIF(?, ''), last_error),"
        " attempts = attempts + ?, next_attempt = ?, claimed_by = NULL, updated = ?,"
        " notified = MAX(notified, ?)"
        " WHERE queue_id = ? AND rcpt = ? AND status = 'delivering'",
        [(o.status, o.error, int(o.count_attempt), o.next_attempt or now, now, int(o.notified),
          o.queue_id, o.rcpt) for o in outcomes],
    )  # fmt: skip
    return remove_if_final(conn, {o.queue_id for o in outcomes if o.status in s.FINAL})[1]


def _begin(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``, waiting for another writer in short naps.

    With accept workers several processes write the spool, each committing its own
    batches, and a commit holds the write lock for about one fsync. SQLite's own busy
    handler sleeps 1, 2, 5, 10, 15, 20, 25 ... 100 ms between tries, so a lock held for a
    millisecond or two cost the next writer far more: with two workers, 13 ms a batch on
    average, 4.2 s of a 6 s relay run spent asleep with the lock free. Naps of 0.1 ms,
    doubling to 1 ms, take the lock within about a millisecond of its release; the wait
    is still bounded by ``BUSY_TIMEOUT``.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    nap = LOCK_NAP_MIN
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(nap)
            nap = min(nap * 2, LOCK_NAP_MAX)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Marker: ``_serve`` runs it outside any transaction (a checkpoint cannot run in
    one): the WAL is copied back and truncated, so a removed message's frames (zeroed in
    the database by ``secure_delete``) do not outlive it in the -wal file."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


_CHECKPOINT = _checkpoint


def _hand_off(
    conn: sqlite3.Connection, queue_id: str, rcpts: tuple[str, ...], detail: str, now: float
) -> int:
    waiting = ", ".join(f"'{status.value}'" for status in sorted(s.HANDED_OFF_FROM))
    moved = sum(
        conn.execute(
            "UPDATE recipients SET status = ?, last_error = ?, updated = ?, next_attempt = ?"  # noqa: S608
            f" WHERE queue_id = ? AND rcpt = ? AND status IN ({waiting})",
            (s.RcptStatus.HANDED_OFF, detail, now, now, queue_id, rcpt),
        ).rowcount
        for rcpt in dict.fromkeys(rcpts)
    )
    if moved:
        remove_if_final(conn, {queue_id})
    return moved


@dataclass(frozen=True, slots=True)
class _Where:
    """Which messages and recipients ``_list`` returns (named SQL parameters)."""

    status: str | None = None
    domain: str | None = None
    received_before: float | None = None
    after: str | None = None
    queue_id: str | None = None


def _list(conn: sqlite3.Connection, where: _Where, limit: int) -> list[s.MessageInfo]:
    """Messages in id order, each with its recipients that match ``where`` (a message
    with none is left out), and its history."""
    params = {"limit": limit, **asdict(where)}
    rcpt = " AND ".join(
        f"r.{column} = :{column}" for column in ("status", "domain") if params[column] is not None
    ) or "1"  # fmt: skip
    message = " AND ".join(
        condition
        for condition, param in (("id = :queue_id", "queue_id"), ("id > :after", "after"),
                                 ("received < :received_before", "received_before"))
        if params[param] is not None
    ) or "1"  # fmt: skip
    rows = conn.execute(
        "SELECT m.*, r.rcpt, r.domain, r.status, r.tls, r.reason, r.attempts, r.next_attempt,"  # noqa: S608
        " r.last_error, r.updated FROM (SELECT id, sender, received, size, client, auth_user,"
        " sensitivity, requiretls, tls_required_no FROM messages"
        f" WHERE {message} AND EXISTS (SELECT 1 FROM recipients r"
        f" WHERE r.queue_id = id AND {rcpt}) ORDER BY id LIMIT :limit) m"
        f" JOIN recipients r ON r.queue_id = m.id WHERE {rcpt} ORDER BY m.id, r.rowid",
        params,
    ).fetchall()
    found: dict[str, tuple[Any, list[s.RcptState]]] = {}
    for row in rows:
        found.setdefault(row[0], (row[:9], []))[1].append(
            s.RcptState(
                row[9], row[10], s.RcptStatus(row[11]), TlsLevel.from_label(row[12]), *row[13:]
            )
        )
    decided = history.entries(conn, found)
    return [
        s.MessageInfo(
            *head[:7],
            recipients=tuple(rcpts),
            history=tuple(decided.get(head[0], ())),
            requiretls=bool(head[7]),
            tls_required_no=bool(head[8]),
        )
        for head, rcpts in found.values()
    ]


def _flush(conn: sqlite3.Connection, now: float) -> int:
    return conn.execute(
        "UPDATE recipients SET next_attempt = ?1, updated = ?1"
        " WHERE status IN ('queued', 'deferred') AND next_attempt > ?1",
        (now,),
    ).rowcount


def _next_due(conn: sqlite3.Connection) -> float | None:
    query = "SELECT MIN(next_attempt) FROM recipients WHERE status = ?"
    due = [t for st in _DUE if (t := conn.execute(query, (st,)).fetchone()[0]) is not None]
    return min(due, default=None)


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    counts = {status.value: 0 for status in s.RcptStatus}
    counts.update(conn.execute("SELECT status, COUNT(*) FROM recipients GROUP BY status"))
    counts["messages"] = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    done = conn.execute("SELECT value FROM meta WHERE key = 'done'").fetchone()
    counts["done"] = int(done[0]) if done else 0
    return counts
