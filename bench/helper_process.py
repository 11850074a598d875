"""Benchmark helpers (the DNS server, the SMTP/HTTPS peers) each in a process of their own.

A helper sharing the benchmark's process would share its GIL and its CPU accounting; in
its own process it competes only for cores, and what it costs is measured apart. The
protocol is one JSON object per line: the helper prints what it is (address, ports, how
long it took to build) once it serves, answers every ``stats`` line on its stdin with its
counters, and exits when its stdin closes, so it never outlives the benchmark.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def serve_control(ready: Mapping[str, object], stats: Callable[[], Mapping[str, object]]) -> None:
    """The helper's side: announce ``ready``, answer ``stats``, return when stdin closes."""
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            print(json.dumps(stats()), flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class HelperProcess:
    """The benchmark's side: start the helper and wait until it serves (``info``)."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        self._proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(env)
        )
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line:
            self._proc.wait(10)
            raise RuntimeError(f"{name} did not start (exit status {self._proc.returncode})")
        self.info: dict[str, Any] = json.loads(line)

    def stats(self) -> dict[str, Any]:
        if self._proc.stdin is None or self._proc.stdout is None:
            raise RuntimeError(f"{self.name}: no control pipe")
        self._proc.stdin.write("stats\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited (status {self._proc.poll()})")
        return json.loads(line)

    def stop(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
