"""A message's CPU-heavy steps, off the event loop and within a time budget (issue item 6).

One event loop serves every SMTP session, the queue manager and the log, so a pure
function that runs for a minute on it stops the whole gateway for a minute. Messages the
gateway accepts can still cost that much (measured at sec-base, one core): dkimpy hashes
the whole body once per ARC set (330 sets over a 10 MB body: five minutes), a
DKIM-Signature whose ``h=`` names 100,000 absent fields is looked up field by field
(15 s), and the stdlib's MIME parser spends ~150 µs per part (a million tiny parts:
three minutes of sensitivity scanning).

**Where it runs.** In worker processes. Threads would keep the loop answering (the GIL
is handed over every ``sys.getswitchinterval()``), but a thread cannot be stopped: work
over budget would run on to the end, minutes of a core per message, and a few such
messages would fill any bounded pool. A process is killed when its step runs over
budget and a fresh one takes its place. Workers are started when first needed, at
most ``WORKERS`` at a time, each ``python -P -c ...`` importing this module; a task goes
over its stdin and its outcome comes back over its stdout (length-prefixed pickles, our
own two ends: nothing from the network is unpickled). Workers run at a lower priority,
so the event loop wins the CPU when both want it. A worker's log records (a library's
complaint about a signature or a PDF) come back over the same stream and are logged by
the gateway, through its handlers and formatter (JSON, syslog), at most
``LOG_RECORDS_PER_STEP`` per step: a crafted message must not turn one step into a
flood of lines for the event loop to write.

**Which messages.** Small, simple ones stay inline: a round trip to a worker is cheap
(~0.2 ms) but not free, and the relay benchmark's 10 KB messages must not pay it.
``inline_ok`` decides from bytes, header fields and MIME delimiter lines, the three
things the measured costs grow with. A message crafted to sit just under all three
limits costs the loop about 0.1 s in all, a third of it the ARC seal's pure-Python RSA
that every inbound message pays anyway.

**The budget** (``[listen] cpu_budget`` seconds) is per message: the time during which
at least one of its steps is waiting for or running in a worker, DNS waits between
steps not counted. A step that would go past it raises ``BudgetExceeded`` (and its
worker is killed); a worker that dies raises ``OffloadError``. Callers turn both into a
``451`` (``core.replies.CPU_BUDGET``): the message stays with its sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar, cast

from securemail.core.message import HeaderBlock
from securemail.cpu import RunCpu, run_inline
from securemail.errors import SecuremailError

T = TypeVar("T")

INLINE_MAX_BYTES = 32 * 1024
INLINE_MAX_FIELDS = 50
INLINE_MAX_DELIMITERS = 16
"""Lines starting ``--`` (MIME boundaries, and a few others): the stdlib's cost per part."""
WORKERS = max(1, min(4, os.cpu_count() or 1))
WORKER_NICENESS = 5
LOG_RECORDS_PER_STEP = 50
_MAX_FRAME = 1 << 30  # a task carries one message (≤ 1 GiB by config); a result is small
_FRAME = struct.Struct(">Q")
_WORKER_COMMAND = (
    sys.executable,
    "-P",  # no current directory on sys.path: only installed code is imported
    "-c",
    "from securemail.gateway.inbound.offload import worker_main; worker_main()",
)

log = logging.getLogger("securemail.gateway")


class OffloadError(SecuremailError):
    """A CPU step of a message could not be finished; ``str(err)`` says which and why."""


class BudgetExceeded(OffloadError):
    """The message's steps used up its CPU budget."""


def inline_ok(data: bytes, block: HeaderBlock) -> bool:
    """Is ``data`` (whose header fields are ``block``) cheap enough for the event loop?"""
    return (
        len(data) <= INLINE_MAX_BYTES
        and len(block.fields) <= INLINE_MAX_FIELDS
        and data.count(b"\n--") <= INLINE_MAX_DELIMITERS
    )


class Offload:
    """The gateway's worker processes, shared by every message; one per gateway."""

    def __init__(self, budget: float, *, workers: int = WORKERS) -> None:
        if budget <= 0 or workers < 1:
            raise ValueError("an offload needs a positive budget and at least one worker")
        self.budget = budget
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._ending: set[asyncio.Future[int]] = set()

    def runner(self, data: bytes, block: HeaderBlock) -> RunCpu:
        """How to run the CPU steps of ``data``: inline if ``inline_ok``, else in workers
        within one budget of ``self.budget`` seconds for all of them."""
        return run_inline if inline_ok(data, block) else _Budgeted(self, self.budget)

    async def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a worker; raises what it raised, or ``OffloadError``.

        Cancelling the call (the budget's timeout does) kills the worker running it.
        """
        payload = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._start()
            try:
                ok, value = await worker.call(payload)
            except BaseException:
                self._end(worker, kill=True)
                raise
            self._idle.append(worker)
        if not ok:
            raise cast(BaseException, value)
        return cast(T, value)

    async def close(self) -> None:
        """Stop every worker (busy ones are killed) and wait until they have exited."""
        for worker in list(self._workers):
            self._end(worker, kill=worker not in self._idle)
        self._idle.clear()
        if self._ending:
            await asyncio.wait(self._ending, timeout=5)

    async def _start(self) -> _Worker:
        try:
            worker = await _Worker.start()
        except OffloadError:
            log.exception("could not start a CPU worker process")
            raise
        self._workers.add(worker)
        return worker

    def _end(self, worker: _Worker, *, kill: bool) -> None:
        self._workers.discard(worker)
        ending = asyncio.ensure_future(worker.end(kill=kill))
        self._ending.add(ending)
        ending.add_done_callback(self._ending.discard)


class _Budgeted:
    """The ``RunCpu`` for one message: its steps share ``budget`` seconds of worker time."""

    def __init__(self, offload: Offload, budget: float) -> None:
        self._offload = offload
        self._budget = budget
        self._left = budget
        self._active = 0  # steps waiting for or running in a worker (DKIM and ARC overlap)
        self._since = 0.0  # when _active last went from 0 to 1

    async def __call__(self, what: str, fn: Callable[[], T], /) -> T:
        now = time.monotonic()
        if not self._active:
            self._since = now
        self._active += 1
        try:
            left = self._left - (now - self._since)
            if left <= 0:
                raise BudgetExceeded(f"{what}: the {self._budget:g} s CPU budget is used up")
            timeout = asyncio.timeout(left)
            try:
                async with timeout:
                    return await self._offload.call(fn)
            except TimeoutError:
                if not timeout.expired():
                    raise
                raise BudgetExceeded(
                    f"{what} did not finish within the {self._budget:g} s CPU budget"
                ) from None
            except OffloadError as exc:  # its worker died: say which step it was doing
                raise OffloadError(f"{what}: {exc}") from exc
        finally:
            self._active -= 1
            if not self._active:
                self._left -= time.monotonic() - self._since


class _Worker:
    """One worker process and its two pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> _Worker:
        level = logging.getLogger().getEffectiveLevel()  # the worker logs what we would
        try:
            proc = await asyncio.create_subprocess_exec(
                *_WORKER_COMMAND,
                str(level),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,  # a ^C at the terminal is for the gateway, not us
            )
        except OSError as exc:
            raise OffloadError(f"could not start a CPU worker: {exc}") from exc
        worker = cls(proc)
        try:
            ok, value = await worker._receive()  # "ready", once its imports are done
        except BaseException:
            await worker.end(kill=True)
            raise
        if not ok:
            await worker.end(kill=True)
            raise OffloadError(f"CPU worker failed to start: {value}")
        return worker

    async def call(self, payload: bytes) -> tuple[bool, object]:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(_FRAME.pack(len(payload)))
            stdin.write(payload)
            await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:  # RuntimeError: transport closing
            raise await self._died(exc) from exc
        return await self._receive()

    async def _receive(self) -> tuple[bool, object]:
        """The outcome of the task sent, logging the worker's records on the way."""
        while isinstance(answer := await self._receive_one(), _LogRecord):
            answer.log()
        return answer

    async def _receive_one(self) -> tuple[bool, object] | _LogRecord:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            (size,) = _FRAME.unpack(await stdout.readexactly(_FRAME.size))
            if size > _MAX_FRAME:
                raise OffloadError(f"CPU worker sent a frame of {size} bytes")
            data = await stdout.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise await self._died(exc) from exc
        try:  # our own child's answer to a task we sent: not input from the network
            return cast(tuple[bool, object] | _LogRecord, pickle.loads(data))  # noqa: S301
        except Exception as exc:  # e.g. an exception class that does not rebuild
            raise OffloadError(f"CPU worker's answer could not be read: {exc!r}") from exc

    async def _died(self, exc: BaseException) -> OffloadError:
        """The error for a worker that stopped answering, with its exit status if it has one."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 1)
        code = self.proc.returncode
        status = f"exit status {code}" if code is not None else type(exc).__name__
        return OffloadError(f"CPU worker ended unexpectedly ({status})")

    async def end(self, *, kill: bool) -> int:
        """Stop the worker (at once with ``kill``, else when it reads end-of-file)."""
        if kill and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return await self.proc.wait()


# --- the worker process ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _LogRecord:
    """A worker's log record on its way to the gateway: what the formatters read."""

    name: str
    levelno: int
    levelname: str
    message: str  # already merged with its arguments: those may not pickle
    created: float
    exc_text: str | None

    @classmethod
    def of(cls, record: logging.LogRecord, formatter: logging.Formatter) -> _LogRecord:
        exc_text = record.exc_text
        if record.exc_info and not exc_text:
            exc_text = formatter.formatException(record.exc_info)
        return cls(
            record.name,
            record.levelno,
            record.levelname,
            record.getMessage(),
            record.created,
            exc_text,
        )

    def log(self) -> None:
        """Log it here, as if this process had made it (its time is the worker's)."""
        logger = logging.getLogger(self.name)
        if logger.isEnabledFor(self.levelno):
            record = logging.makeLogRecord({
                "name": self.name,
                "levelno": self.levelno,
                "levelname": self.levelname,
                "msg": self.message,
                "args": None,
                "created": self.created,
                "msecs": (self.created - int(self.created)) * 1000,
                "exc_text": self.exc_text,
            })  # fmt: skip
            logger.handle(record)


class _Answers:
    """The worker's end of the answer stream: frames written whole, one at a time."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()  # a library may log from a thread of its own

    def send(self, item: tuple[bool, object] | _LogRecord) -> None:
        try:
            data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an exception (or result) that does not pickle
            if isinstance(item, _LogRecord):
                return  # plain fields: cannot happen, and is no outcome to stand in for
            error = RuntimeError(f"{type(item[1]).__name__} could not be returned: {exc}")
            data = pickle.dumps((False, error), protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self._stream.write(_FRAME.pack(len(data)))
            self._stream.write(data)
            self._stream.flush()


class _ToGateway(logging.Handler):
    """Each record to the gateway, at most ``LOG_RECORDS_PER_STEP`` per step."""

    def __init__(self, answers: _Answers) -> None:
        super().__init__()
        self._answers = answers
        self._plain = logging.Formatter()  # only for a traceback's text
        self.sent = self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.sent >= LOG_RECORDS_PER_STEP:
            self.dropped += 1
            return
        self.sent += 1
        self._answers.send(_LogRecord.of(record, self._plain))

    def step_done(self) -> None:
        """Say how many records the step's limit held back, then start counting anew."""
        dropped, self.sent, self.dropped = self.dropped, 0, 0
        if dropped:
            log.warning(
                "a CPU step logged %d more records, not shown (at most %d per step)",
                dropped,
                LOG_RECORDS_PER_STEP,
            )


def worker_main() -> None:
    """A worker: run each task read from stdin, write its outcome to stdout, until EOF.

    Only frames go to the real stdout; anything a library prints goes to stderr (the
    gateway's log), so it cannot corrupt the answer stream. Log records (dkimpy's or
    pypdf's complaints, quoting the message) go to the gateway as frames, at the level
    it passed as our one argument, and are written by its handlers, so they are in its
    format (text or JSON) and reach syslog. If the gateway dies (even by SIGKILL) the
    worker exits within a second, busy or not.
    """
    answers = _Answers(os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)
    to_gateway = _ToGateway(answers)
    level = int(sys.argv[1]) if len(sys.argv) > 1 else logging.WARNING
    logging.basicConfig(level=level, handlers=[to_gateway], force=True)
    logging.captureWarnings(True)
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    tasks = sys.stdin.buffer
    answers.send((True, "ready"))
    while (payload := _read_frame(tasks)) is not None:
        try:
            outcome: tuple[bool, object] = (True, pickle.loads(payload)())  # noqa: S301
        except Exception as exc:  # the caller gets it, as if the call were local
            outcome = (False, exc)
        to_gateway.step_done()
        answers.send(outcome)


def _exit_with(parent: int) -> None:
    """Exit as soon as ``parent`` is gone (this process is then re-parented)."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def _read_frame(stream: BinaryIO) -> bytes | None:
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return None  # the gateway closed our stdin (or went away): done
    (size,) = _FRAME.unpack(header)
    if size > _MAX_FRAME:
        raise SystemExit(f"CPU worker: frame of {size} bytes")
    data = stream.read(size)
    return data if len(data) == size else None
