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

from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class RunCpu(Protocol):
    """Run ``fn()`` somewhere and return its result; ``what`` names the step for errors."""

    async def __call__(self, what: str, fn: Callable[[], T], /) -> T: ...


async def run_inline(what: str, fn: Callable[[], T], /) -> T:
    """Call ``fn`` right here: for callers with no event loop to protect, and small input."""
    return fn()
