"""``--workers N``: one bulk run shared among N worker processes, to use N cores.

The checker's CPU is Python's (parsing DNS answers, TLS handshakes, the rules), so one
process keeps one core busy at most. The parent reads the input, makes it unique
(``runner.unique_domains``, so a domain is checked once across all workers) and deals
each domain to the live worker with the fewest in flight; each worker runs
``Checker.check_tagged`` over its share and streams the reports back; the parent passes
them on as they arrive, tagged with their input position, so a slow or dead domain in
one worker never holds back anything else.

Workers are subprocesses running the same command line (``securemail check --worker``,
built by the CLI from the options it was given, so a worker derives the same options
from the same flags and config), not ``multiprocessing``. Lines on pipes bound memory
both ways: the parent deals at most ``window`` domains to a worker before their reports
come back, and a full pipe makes its writer wait. A crash is an end of file and an exit
status: the domains that worker had and did not report come back as ``error`` reports
naming the crash, never lost, and a replacement starts (at most ``MAX_RESTARTS`` in a
run: a cause that kills every worker must not be retried forever). Workers run in a
session of their own, so Ctrl-C at a terminal reaches only the parent, which stops them
and waits for each (no zombies); if the parent dies, a worker reads the end of its
input, finishes what it has, and exits.

The lines, UTF-8 (undecodable input survives as lone surrogates, escaped by JSON):

* parent to worker: ``[INDEX, "DOMAIN"]`` (JSON, so any text survives the trip);
* worker to parent: ``INDEX TAB VERDICT TAB LINE``, where LINE is the report as the
  parent will use it, rendered by the worker (``render``): no control characters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from securemail.check.model import DomainReport, Status
from securemail.check.runner import Checker, domain_key

MAX_RESTARTS = 8
LINE_LIMIT = 16 * 1024 * 1024  # one report line from a worker; reports are bounded far below
STOP_GRACE = 5.0  # seconds a worker has to exit after SIGTERM before SIGKILL

Render = Callable[[int, DomainReport], str]


@dataclass(frozen=True, slots=True)
class Sharded:
    """One domain's outcome as the parent sees it."""

    index: int  # input position
    text: str  # the entry as given
    verdict: Status
    line: str  # the report rendered by ``render``


@dataclass(eq=False)
class _Worker:
    proc: asyncio.subprocess.Process
    dealt: dict[int, str] = field(default_factory=dict)  # sent, not yet reported
    broken: bool = False  # its stdin is gone: deal it nothing more

    def deal(self, index: int, text: str) -> None:
        self.dealt[index] = text
        stdin = self.proc.stdin
        if stdin is None or self.broken:
            return  # reported lost when its output ends
        try:
            stdin.write(json.dumps([index, text]).encode("ascii") + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            self.broken = True

    async def flush(self) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not self.broken:
            try:
                await stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                self.broken = True

    def finish(self) -> None:
        """No more input: the worker finishes what it has and exits."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()


async def check_sharded(
    items: AsyncIterable[tuple[int, str]],
    *,
    command: Sequence[str],
    workers: int,
    window: int,
    render: Render,
) -> AsyncIterator[Sharded]:
    """``Sharded`` outcomes of ``items`` (unique ``(index, text)``), as they arrive from
    ``workers`` processes started with ``command``, each dealt at most ``window`` domains
    at a time. ``render`` writes the report of a domain whose worker died."""
    live: list[_Worker] = []
    readers: set[asyncio.Task[None]] = set()
    # Bounded by the protocol: a worker answers only domains it was dealt, at most
    # ``window`` at a time, and the feeder queues at most ``window`` reports of its own.
    events: asyncio.Queue[tuple[_Worker, bytes | None] | Sharded | None] = asyncio.Queue()
    own_reports = asyncio.Semaphore(window)
    room = asyncio.Event()  # set when a worker may have room for more
    restarts = 0
    died: list[str] = []

    async def start() -> None:
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT, start_new_session=True,
        )  # fmt: skip
        worker = _Worker(proc)
        live.append(worker)
        reader = asyncio.ensure_future(read(worker))
        readers.add(reader)
        reader.add_done_callback(readers.discard)
        room.set()

    async def read(worker: _Worker) -> None:
        stdout = worker.proc.stdout
        assert stdout is not None
        while line := await stdout.readline():
            events.put_nowait((worker, line))
        events.put_nowait((worker, None))

    def lost(index: int, text: str, why: str) -> Sharded:
        report = DomainReport(domain_key(text), (), error=why)
        return Sharded(index, text, report.verdict, render(index, report))

    async def pick() -> _Worker | None:
        """The live worker with the fewest domains, once one has room (None: none left)."""
        while True:
            ready = [w for w in live if len(w.dealt) < window and not w.broken]
            if ready:
                return min(ready, key=lambda w: len(w.dealt))
            if not live:
                return None
            room.clear()
            await room.wait()

    async def feed() -> None:
        try:
            async for index, text in items:
                worker = await pick()
                if worker is None:  # every worker died and none may start
                    await own_reports.acquire()
                    events.put_nowait(lost(index, text, f"not checked: {'; '.join(died)}"))
                    continue
                worker.deal(index, text)
                await worker.flush()
        finally:
            for worker in live:
                worker.finish()

    for _ in range(workers):
        await start()
    feeder = asyncio.ensure_future(feed())
    feeder.add_done_callback(lambda _: events.put_nowait(None))  # the input has ended
    feeding = True
    try:
        while feeding or live:
            event = await events.get()
            if event is None:
                feeding = False
                continue
            if isinstance(event, Sharded):
                own_reports.release()
                yield event
                continue
            worker, line = event
            if line is not None:
                if not line.endswith(b"\n"):
                    continue  # cut short by the worker's death: that domain is still dealt
                index_text, verdict, rest = line.decode("utf-8", "surrogateescape").split("\t", 2)
                text = worker.dealt.pop(int(index_text))
                room.set()
                yield Sharded(int(index_text), text, Status[verdict.upper()], rest.rstrip("\r\n"))
                continue
            status = await worker.proc.wait()
            live.remove(worker)
            if worker.dealt or status != 0:
                why = f"worker process {worker.proc.pid} exited with status {status}"
                died.append(why)
                for index, text in worker.dealt.items():
                    yield lost(index, text, f"{why} while checking it")
                if not feeder.done() and restarts < MAX_RESTARTS:  # else none would end
                    restarts += 1
                    await start()
            room.set()
        feeder.result()  # what reading the input raised, if anything
    finally:
        for task in (feeder, *readers):
            task.cancel()
        await asyncio.gather(feeder, *readers, return_exceptions=True)
        await asyncio.gather(*(_stop(worker) for worker in live))


async def _stop(worker: _Worker) -> None:
    """End a worker still running (the run was interrupted): SIGTERM, then SIGKILL, and
    reap it either way."""
    worker.finish()
    proc = worker.proc
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def serve_worker(
    checker: Checker,
    lines: AsyncIterable[str],
    out: TextIO,
    *,
    concurrency: int,
    render: Render,
) -> None:
    """The worker's side: ``[INDEX, "DOMAIN"]`` lines in, ``INDEX TAB VERDICT TAB LINE``
    lines out (flushed one by one: the parent is waiting for them), until input ends."""

    async def items() -> AsyncIterator[tuple[int, str]]:
        async for line in lines:
            index, text = json.loads(line)
            yield int(index), str(text)

    async for index, report in checker.check_tagged(items(), concurrency=concurrency):
        out.write(f"{index}\t{report.verdict.label}\t{render(index, report)}\n")
        out.flush()
