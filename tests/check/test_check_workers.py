"""``securemail check --workers N`` as a user runs it: the same verdicts as one process,
each domain once across workers, every report tagged with its input position, a killed
worker's domains reported as errors, and Ctrl-C leaving no worker behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]  # processes: CI lane

EXPECTED = {"": "pass", "dmarc p=none": "warn", "spf +all": "fail", "no dmarc": "fail"}


def command(world, *args: str) -> list[str]:
    return [sys.executable, "-m", "securemail.cli", "check", "--config", str(world.config), *args]


def run(world, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(world, *args), input=stdin, capture_output=True, text=True, timeout=170,
        check=False,
    )  # fmt: skip


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                found.append(int(entry.name))
    return found


def gone(pid: int, within: float = 5.0) -> bool:
    """Whether ``pid`` is gone (reaped: not even a zombie) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


def test_two_workers_agree_with_one_process(world):
    """The same verdicts either way; with workers, every line carries its input index,
    and a domain written several ways is checked once across both workers."""
    entries = [
        *world.domains, "# a comment", world.domains[0].upper(), f"{world.domains[1]}.",
        "not a domain!", world.domains[2],
    ]  # fmt: skip
    stdin = "\n".join([*entries[:10], "", *entries[10:]]) + "\n"
    one = run(world, "--json", "--workers", "1", "-", stdin=stdin)
    two = run(world, "--json", "--workers", "2", "-", stdin=stdin)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    single = [json.loads(line) for line in one.stdout.splitlines()]
    shared = [json.loads(line) for line in two.stdout.splitlines()]
    assert {(r["domain"], r["verdict"]) for r in single} == {
        (r["domain"], r["verdict"]) for r in shared
    }
    assert len(shared) == len(world.domains) + 1  # each once, and the junk line
    assert all("index" not in r for r in single)
    counted = [e for e in entries if not e.startswith("#")]  # blank lines are not entries
    for report in shared:
        given = counted[report["index"]]
        assert report["domain"] == given.rstrip(".").lower() or report["domain"] == given
    by_domain = {r["domain"]: r for r in shared}
    for i, domain in enumerate(world.domains):
        assert by_domain[domain]["verdict"] == EXPECTED[world.flawed(i)], by_domain[domain]
    assert by_domain["not a domain!"]["verdict"] == "error"
    assert "61 domains: " in two.stderr  # the totals, as with one process


def test_terminal_and_html_with_workers(world, tmp_path):
    html = tmp_path / "report.html"
    stdin = "\n".join(world.domains[:8]) + "\n"
    proc = run(world, "--no-tls", "--workers", "2", "--html", str(html), "-", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert all(domain in proc.stdout for domain in world.domains[:8])
    assert proc.stdout.strip().splitlines()[-1].startswith("8 domains: ")
    page = html.read_text()
    assert all(domain in page for domain in world.domains[:8])


def _slow(world) -> None:
    """Every domain's DMARC answer takes a second: domains stay in flight a while."""
    for domain in world.domains:
        world.dns.behave(f"_dmarc.{domain}", "slow", 1.0)


def _start(world, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        command(world, "--json", "--only", "spf,dmarc", "--concurrency", "8", *args, "-"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n".join(world.domains) + "\n")
    proc.stdin.close()
    proc.stdin = None  # all written: communicate() has nothing to send
    return proc


def test_a_killed_workers_domains_are_reported_as_errors(world):
    _slow(world)
    proc = _start(world, "--workers", "2")
    first = proc.stdout.readline()  # type: ignore[union-attr]
    assert first, proc.stderr.read()  # type: ignore[union-attr]
    victim = children(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    assert gone(victim), "the dead worker was not reaped (a zombie)"
    assert proc.poll() is None  # the run goes on
    rest, errors = proc.communicate(timeout=120)
    assert proc.returncode == 0, errors
    reports = [json.loads(line) for line in [first, *rest.splitlines()]]
    assert sorted(r["domain"] for r in reports) == sorted(world.domains)  # none lost, none twice
    lost = [r for r in reports if r.get("error")]
    assert lost, "the killed worker had domains in flight"
    for report in lost:
        assert report["verdict"] == "error"
        assert report["error"] == f"worker process {victim} exited with status -9 while checking it"
    assert all(r["verdict"] in ("pass", "warn", "fail") for r in reports if not r.get("error"))


def test_interrupt_stops_every_worker(world):
    _slow(world)
    proc = _start(world, "--workers", "2")
    assert proc.stdout.readline()  # type: ignore[union-attr]
    workers = children(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGINT)
    _out, errors = proc.communicate(timeout=30)
    assert proc.returncode == 130, errors  # as any command interrupted
    assert all(gone(pid) for pid in workers), "a worker outlived the interrupted run"
