"""Accept workers: the inbound listener's sessions served on every core.

One Python process runs on one core; Postfix runs a ``smtpd`` process per session. So,
with ``[listen] workers = N`` above 1, ``securemail serve`` starts N accept workers
(``python -m securemail.cli serve --accept-worker FD``, as the service user, after the
privilege drop): each runs SMTP sessions, the accept pipeline (scan, policy, DKIM) and
its own spool writer, whose group commits meet in SQLite's WAL. The gateway process
keeps what must be done in one place: delivery (so connection reuse per destination
keeps working), the queue, the portal's web pages, reloads and the pid and state files,
and the submission listener, whose password-guessing limits and lockout file must count
every try of a client in one process.

**Who accepts.** The gateway process, not the workers: it counts connections in total
and per client address (``ConnectionLimits``, exactly as with one process: Postfix's
``anvil`` does this for its ``smtpd`` processes), refuses those over the limits itself,
and hands each admitted connection to the worker with the fewest open, over a Unix
socket (``handoff``). The worker says when the connection has closed, and the count
goes down. A worker that dies (killed, out of memory) takes only its own sessions with
it, none of which had a ``250`` for anything not yet committed; its counts are released,
and another is started in its place (at once, then backing off while it keeps dying).
The workers die with the gateway (``PR_SET_PDEATHSIG``: SIGTERM, so they finish what
they are receiving): no orphan is left serving a spool no gateway delivers.

What a worker receives is the ``Config`` the gateway runs, never the file re-read: a
worker started hours later (after another died) runs what the gateway runs, not an edit
nobody reloaded yet. A reload is the gateway's; it sends the result to every worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from securemail.config import Config
from securemail.core import replies
from securemail.errors import SecuremailError
from securemail.gateway.events import ConnectionRefused, EventSink, Lifecycle
from securemail.gateway.inbound import handoff
from securemail.gateway.inbound.capacity import BudgetSlots, ConnectionLimits, DataBudget

READY_TIMEOUT = 60.0  # seconds for a worker to open its spool and say so
ACCEPT_BATCH = 64  # connections taken per wake-up of the listening socket
ACCEPT_PAUSE = 1.0  # seconds without accepting after EMFILE/ENFILE (as asyncio does)
RESTART_BASE = 1.0  # seconds before a dead worker's replacement; doubling while it dies
RESTART_MAX = 60.0
STABLE_AFTER = 30.0  # a worker that lived this long died of something else: no backoff
HANDOFF_RETRY = 0.002  # seconds between tries while every worker's channel is full


def worker_command(log_level: str = "info") -> list[str]:
    """How a worker is started: this interpreter, installed code only (``-P``)."""
    return [sys.executable, "-P", "-m", "securemail.cli", "serve", "--log-level", log_level]


class WorkerStartError(SecuremailError):
    """A worker did not get ready; ``str(err)`` says which and why."""


@dataclass(frozen=True, slots=True)
class _Handed:
    """An accepted, counted connection on its way to a worker."""

    conn: socket.socket
    ip: str
    conn_id: int


@dataclass(eq=False)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    channel: handoff.Channel
    born: float
    open: dict[int, str] = field(default_factory=dict)  # connection id → client address
    ready: asyncio.Future[None] = field(default_factory=asyncio.Future)

    @property
    def serving(self) -> bool:
        return self.ready.done() and not self.ready.cancelled() and not self.channel.closed


class AcceptPool:
    """N accept workers, the listening sockets they are fed from, and their upkeep."""

    def __init__(
        self,
        count: int,
        *,
        command: Sequence[str],
        limits: ConnectionLimits,
        budget: DataBudget,
        events: EventSink,
        stored: Callable[[], None],
    ) -> None:
        self.count = count
        self.command = list(command)
        self.limits = limits
        self.slots = BudgetSlots.create(count + 1)  # 0: this process's; i + 1: worker i's
        budget.share(self.slots)
        self.events = events
        self.stored = stored  # new mail in the spool: wake the queue manager
        self.workers: list[_Worker | None] = [None] * count
        self.config: Config | None = None
        self._sockets: list[socket.socket] = []
        self._ids = itertools.count(1)
        self._pending: collections.deque[_Handed] = collections.deque()
        self._turn = itertools.count()
        self._stopping = False
        self._paused = False
        self._waiting = False
        self._watching = False  # readers on the listening sockets
        self._backoff = [RESTART_BASE] * count
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w is not None]

    async def start(self, config: Config) -> None:
        """Start every worker and wait until each is ready; ``WorkerStartError`` (with
        every worker stopped) if one is not."""
        self.config = config
        for index in range(self.count):
            self.workers[index] = self._spawn(index)
        try:
            for worker in self.workers:
                assert worker is not None
                await self._until_ready(worker)
        except BaseException:
            await self.stop(0)
            raise

    def serve(self, sockets: Sequence[socket.socket]) -> None:
        """Accept on ``sockets`` (bound, listening) from now on; they are ours to close."""
        for sock in sockets:
            sock.setblocking(False)
            self._sockets.append(sock)
        self._update_reading()

    def reload(self, config: Config) -> None:
        """Every worker runs ``config`` from now on (new connections; sessions keep theirs)."""
        self.config = config
        for worker in self.workers:
            if worker is not None and not worker.channel.closed:
                for message in handoff.config_messages(config):
                    worker.channel.send(message)

    async def stop(self, grace: float) -> None:
        """Stop accepting; each worker finishes its sessions within ``grace`` seconds."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_accepting()
        while self._pending:  # never greeted: they may try again, elsewhere or later
            handed = self._pending.popleft()
            self.limits.leave(handed.ip)
            self._refuse(handed.conn, handed.ip, replies.SHUTTING_DOWN, "stopping")
            handed.conn.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        live = [w for w in self.workers if w is not None]
        for worker in live:
            worker.channel.send(handoff.stop(grace))
        await asyncio.gather(*(self._reap(w, grace + 5.0) for w in live))
        os.close(self.slots.fd)  # the page stays mapped for this process's own sessions

    # --- accepting ----------------------------------------------------------------------

    def _stop_accepting(self) -> None:
        self._update_reading()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    def _update_reading(self) -> None:
        """Watch the listening sockets exactly while a connection could be handed over:
        not stopping, not paused, some worker serving, none waiting here for a worker.
        Otherwise connections wait in the kernel's backlog, and the loop does not spin."""
        on = not (self._stopping or self._paused or self._waiting or self._pending)
        if on == self._watching:
            return
        self._watching = on
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            if on:
                loop.add_reader(sock.fileno(), self._accept, sock)
            else:
                loop.remove_reader(sock.fileno())

    def _accept(self, sock: socket.socket) -> None:
        if not any(w is not None and w.serving for w in self.workers):
            self._wait_for_worker()
            return
        for _ in range(ACCEPT_BATCH):
            if self._pending:  # the workers are behind: the rest waits in the backlog
                self._update_reading()
                return
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the client gave up in the backlog
                self._pause(f"accept failed: {exc.strerror or exc}")
                return
            self._hand(conn, str(address[0]))

    def _hand(self, conn: socket.socket, ip: str) -> None:
        why = self.limits.admit(ip)
        if why is not None:
            self._refuse(conn, ip, replies.TOO_MANY_CONNECTIONS, why)
            conn.close()
            return
        handed = _Handed(conn, ip, next(self._ids))
        if not self._offer(handed):
            self._pending.append(handed)
            self._update_reading()
            asyncio.get_running_loop().call_later(HANDOFF_RETRY, self._drain)

    def _offer(self, handed: _Handed) -> bool:
        """Hand ``handed`` to the least loaded worker that can take it now. A worker's
        channel holds only a few messages (``net.unix.max_dgram_qlen``, 10 by default):
        when every one is full, the connection waits here, not refused."""
        message = handoff.connection(handed.conn_id)
        for worker in self._by_load():
            if worker.channel.offer(message, handed.conn.fileno()):
                worker.open[handed.conn_id] = handed.ip
                handed.conn.close()  # the worker has its own descriptor now
                return True
        return False

    def _drain(self) -> None:
        while self._pending and self._offer(self._pending[0]):
            self._pending.popleft()
        if self._pending:
            asyncio.get_running_loop().call_later(HANDOFF_RETRY, self._drain)
        else:
            self._update_reading()

    def _by_load(self) -> list[_Worker]:
        """Serving workers, fewest open connections first; ties taken in turn."""
        serving = [w for w in self.workers if w is not None and w.serving]
        if len(serving) > 1:
            turn = next(self._turn) % len(serving)
            serving = serving[turn:] + serving[:turn]
            serving.sort(key=lambda w: len(w.open))
        return serving

    def _refuse(self, conn: socket.socket, ip: str, reply: replies.SmtpReply, why: str) -> None:
        self.events.emit(ConnectionRefused(ip, str(reply), why))
        with contextlib.suppress(OSError):
            conn.send(f"{reply}\r\n".encode(), socket.MSG_DONTWAIT)

    def _pause(self, why: str) -> None:
        """Leave connections in the backlog for ``ACCEPT_PAUSE`` seconds."""
        if self._paused or self._stopping:
            return
        self._paused = True
        self.events.emit(Lifecycle(f"{why}; not accepting for {ACCEPT_PAUSE:g}s", warning=True))
        self._update_reading()
        asyncio.get_running_loop().call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        self._paused = False
        self._update_reading()

    def _wait_for_worker(self) -> None:
        """No worker is serving (all died at once, or are starting): connections wait in
        the backlog, as they do for Postfix's master when every smtpd is busy, and are
        taken once a worker is ready (``_message``) instead of refused."""
        if not self._waiting:
            self._waiting = True
            self.events.emit(
                Lifecycle("no accept worker is running; connections wait", warning=True)
            )
            self._update_reading()

    # --- workers ------------------------------------------------------------------------

    def _spawn(self, index: int) -> _Worker:
        assert self.config is not None
        self.slots.set(0, index + 1)  # what a killed predecessor held is free again
        ours, theirs = handoff.pair()
        try:
            proc = subprocess.Popen(
                [*self.command, "--accept-worker", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        worker = _Worker(index, proc, handoff.Channel(ours), time.monotonic())
        worker.channel.listen(
            lambda kind, body, fds: self._message(worker, kind, body, fds),
            lambda: self._gone(worker),
        )
        if not worker.channel.offer(handoff.budget(index + 1, self.count + 1), self.slots.fd):
            raise WorkerStartError(f"accept worker {index}: its channel refused the first message")
        for message in handoff.config_messages(self.config):
            worker.channel.send(message)
        return worker

    async def _until_ready(self, worker: _Worker) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), READY_TIMEOUT)
        except TimeoutError:
            raise WorkerStartError(
                f"accept worker {worker.index} (pid {worker.proc.pid}) not ready after "
                f"{READY_TIMEOUT:g}s"
            ) from None

    def _message(self, worker: _Worker, kind: bytes, body: bytes, fds: list[int]) -> None:
        for fd in fds:  # a worker never sends one
            os.close(fd)
        try:
            if kind == handoff.STORED:
                self.stored()
            elif kind == handoff.CLOSED:
                ip = worker.open.pop(handoff.read_id(body), None)
                if ip is not None:
                    self.limits.leave(ip)
            elif kind == handoff.READY:
                if not worker.ready.done():
                    worker.ready.set_result(None)
                if self._waiting:
                    self._waiting = False
                    self._update_reading()
            elif kind == handoff.RELOADED:
                text = body.decode("utf-8", "replace")
                if not text.startswith("reloaded"):
                    self.events.emit(
                        Lifecycle(f"accept worker {worker.index}: {text}", warning=True)
                    )
            else:
                raise handoff.ChannelError(f"a message of kind {kind!r}")
        except handoff.ChannelError as exc:
            self.events.emit(
                Lifecycle(f"accept worker {worker.index}: {exc}; stopping it", warning=True)
            )
            worker.proc.kill()

    def _gone(self, worker: _Worker) -> None:
        """The worker's end closed: it exited or was killed. Release what it held."""
        for ip in worker.open.values():
            self.limits.leave(ip)
        worker.open.clear()
        if not worker.ready.done():
            worker.ready.set_exception(
                WorkerStartError(
                    f"accept worker {worker.index} (pid {worker.proc.pid}) exited while "
                    "starting; its log lines above say why"
                )
            )
        if self._stopping:
            return
        task = asyncio.ensure_future(self._replace(worker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, worker: _Worker) -> None:
        status = await self._reap(worker, 10.0)
        lived = time.monotonic() - worker.born
        index = worker.index
        delay = RESTART_BASE if lived >= STABLE_AFTER else self._backoff[index]
        self._backoff[index] = min(delay * 2, RESTART_MAX)
        self.events.emit(
            Lifecycle(
                f"accept worker {index} (pid {worker.proc.pid}) {_status(status)} after "
                f"{lived:.1f}s; starting another in {delay:g}s",
                warning=True,
            )
        )
        await asyncio.sleep(delay)
        while not self._stopping:
            try:
                fresh = self.workers[index] = self._spawn(index)
                await self._until_ready(fresh)
            except (OSError, WorkerStartError) as exc:
                self.events.emit(Lifecycle(f"accept worker {index}: {exc}", warning=True))
                await asyncio.sleep(self._backoff[index])
                self._backoff[index] = min(self._backoff[index] * 2, RESTART_MAX)
                continue
            self.events.emit(Lifecycle(f"accept worker {index} started (pid {fresh.proc.pid})"))
            return

    async def _reap(self, worker: _Worker, timeout: float) -> int:
        """Wait (bounded) for the worker to exit, killing it at the end; its status."""
        deadline = time.monotonic() + timeout
        while (status := worker.proc.poll()) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if status is None:
            worker.proc.kill()
            status = await asyncio.to_thread(worker.proc.wait)
        worker.channel.close()
        return status


def _status(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"
