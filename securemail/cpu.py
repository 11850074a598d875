"""How the CPU-heavy, pure steps of handling one message are run: the ``RunCpu`` seam.

A hostile message can make a pure function (a DKIM hash over ten megabytes, dkimpy
walking hundreds of ARC sets, the stdlib's MIME parser over a million parts) run for
minutes. Called on the gateway's event loop, that stops every other session, the queue
and the log. So the functions that do such work take a ``run`` argument and hand each
heavy step to it, written as a call with no arguments: ``await run("what", fn)``.

``run_inline`` (the default everywhere) just calls it: the checker, the CLI and small
messages need nothing else. The gateway passes a runner from
``gateway.inbound.offload`` that runs the step in a worker process within the message's
time budget. That is why ``fn`` must be picklable: a module-level function, or a
``functools.partial`` of one with picklable arguments, never a lambda or closure.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")

GC_THRESHOLDS = (50_000, 20, 100)


class RunCpu(Protocol):
    """Run ``fn()`` somewhere and return its result; ``what`` names the step for errors."""

    async def __call__(self, what: str, fn: Callable[[], T], /) -> T: ...


async def run_inline(what: str, fn: Callable[[], T], /) -> T:
    """Call ``fn`` right here: for callers with no event loop to protect, and small input."""
    return fn()


def tune_gc() -> None:
    """For a long-running process past its start-up (a bulk check, the gateway and each
    accept worker; call once): collect, freeze the survivors, raise the first
    generation's threshold.

    Such a process creates millions of short-lived objects (DNS messages and findings;
    each message's header fields, addresses, decisions and events), and the default
    thresholds (700 allocations) run the young generation constantly and traverse every
    long-lived object (modules, the PSL, caches) in each full collection: a sixth of a
    millisecond of every relayed message went to the collector. Freezing what start-up
    built moves it out of the collector's sight, and a larger first threshold collects
    less often; cyclic garbage still goes, a little later.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
