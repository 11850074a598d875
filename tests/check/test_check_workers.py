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

from securemail.check.report import to_json_line
from securemail.check.shard import MAX_RESTARTS, check_sharded

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]  # processes: CI lane

EXPECTED = {"": "pass", "dmarc p=none": "warn", "spf +all": "fail", "no dmarc": "fail"}


def command(bulk_world, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "securemail.cli",
        "check",
        "--config",
        str(bulk_world.config),
        *args,
    ]


def run(bulk_world, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(bulk_world, *args), input=stdin, capture_output=True, text=True, timeout=170,
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


def test_two_workers_agree_with_one_process(bulk_world):
    """The same verdicts either way; with workers, every line carries its input index,
    and a domain written several ways is checked once across both workers."""
    entries = [
        *bulk_world.domains, "# a comment", bulk_world.domains[0].upper(), f"{bulk_world.domains[1]}.",
        "not a domain!", bulk_world.domains[2],
    ]  # fmt: skip
    stdin = "\n".join([*entries[:10], "", *entries[10:]]) + "\n"
    one = run(bulk_world, "--json", "--workers", "1", "-", stdin=stdin)
    two = run(bulk_world, "--json", "--workers", "2", "-", stdin=stdin)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    single = [json.loads(line) for line in one.stdout.splitlines()]
    shared = [json.loads(line) for line in two.stdout.splitlines()]
    assert {(r["domain"], r["verdict"]) for r in single} == {
        (r["domain"], r["verdict"]) for r in shared
    }
    assert len(shared) == len(bulk_world.domains) + 1  # each once, and the junk line
    assert all("index" not in r for r in single)
    counted = [e for e in entries if not e.startswith("#")]  # blank lines are not entries
    for report in shared:
        given = counted[report["index"]]
        assert report["domain"] == given.rstrip(".").lower() or report["domain"] == given
    by_domain = {r["domain"]: r for r in shared}
    for i, domain in enumerate(bulk_world.domains):
        assert by_domain[domain]["verdict"] == EXPECTED[bulk_world.flawed(i)], by_domain[domain]
    assert by_domain["not a domain!"]["verdict"] == "error"
    assert "61 domains: " in two.stderr  # the totals, as with one process


def test_terminal_and_html_with_workers(bulk_world, tmp_path):
    html = tmp_path / "report.html"
    stdin = "\n".join(bulk_world.domains[:8]) + "\n"
    proc = run(bulk_world, "--no-tls", "--workers", "2", "--html", str(html), "-", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert all(domain in proc.stdout for domain in bulk_world.domains[:8])
    assert proc.stdout.strip().splitlines()[-1].startswith("8 domains: ")
    page = html.read_text()
    assert all(domain in page for domain in bulk_world.domains[:8])


def _slow(bulk_world) -> None:
    """Every domain's DMARC answer takes a second: domains stay in flight a while."""
    for domain in bulk_world.domains:
        bulk_world.dns.behave(f"_dmarc.{domain}", "slow", 1.0)


def _start(bulk_world, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        command(bulk_world, "--json", "--only", "spf,dmarc", "--concurrency", "8", *args, "-"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n".join(bulk_world.domains) + "\n")
    proc.stdin.close()
    proc.stdin = None  # all written: communicate() has nothing to send
    return proc


def test_a_killed_workers_domains_are_reported_as_errors(bulk_world):
    _slow(bulk_world)
    proc = _start(bulk_world, "--workers", "2")
    first = proc.stdout.readline()  # type: ignore[union-attr]
    assert first, proc.stderr.read()  # type: ignore[union-attr]
    victim = children(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    assert gone(victim), "the dead worker was not reaped (a zombie)"
    assert proc.poll() is None  # the run goes on
    rest = proc.stdout.read()  # type: ignore[union-attr]  # through the buffer readline filled
    errors = proc.stderr.read()  # type: ignore[union-attr]
    assert proc.wait(timeout=120) == 0, errors
    reports = [json.loads(line) for line in [first, *rest.splitlines()]]
    got = sorted(r["domain"] for r in reports)
    assert got == sorted(bulk_world.domains), (  # none lost, none twice
        set(bulk_world.domains) - set(got),
        [d for d in got if got.count(d) > 1],
        errors,
    )
    lost = [r for r in reports if r.get("error")]
    assert lost, "the killed worker had domains in flight"
    for report in lost:
        assert report["verdict"] == "error"
        assert report["error"] == f"worker process {victim} exited with status -9 while checking it"
    assert all(r["verdict"] in ("pass", "warn", "fail") for r in reports if not r.get("error"))


def test_interrupt_stops_every_worker(bulk_world):
    _slow(bulk_world)
    proc = _start(bulk_world, "--workers", "2")
    assert proc.stdout.readline()  # type: ignore[union-attr]
    workers = children(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGINT)
    _out, errors = proc.communicate(timeout=30)
    assert proc.returncode == 130, errors  # as any command interrupted
    assert all(gone(pid) for pid in workers), "a worker outlived the interrupted run"


# --- the parent's side against workers that misbehave (small real processes) -------------

ANSWER = (
    "import json, sys\n"
    "def answer(index, domain, end=chr(10)):\n"
    "    line = json.dumps({'domain': domain, 'verdict': 'pass', 'findings': []})\n"
    "    sys.stdout.write(f'{index}\\tpass\\t{line}{end}')\n"
    "    sys.stdout.flush()\n"
)


async def _shard(script: str, domains: list[str], workers: int = 1) -> list[dict]:
    async def items():
        for index, domain in enumerate(domains):
            yield index, domain

    run = check_sharded(
        items(), command=[sys.executable, "-c", ANSWER + script], workers=workers, window=2,
        render=lambda index, report: to_json_line(report, index),
    )  # fmt: skip
    return [json.loads(done.line) async for done in run]


async def test_a_line_cut_short_by_a_death_is_not_a_report():
    script = (
        "for n, line in enumerate(sys.stdin):\n"
        "    index, domain = json.loads(line)\n"
        "    if n == 3:\n"
        "        sys.stdout.write(f'{index}\\tpass\\t{{\"dom'); sys.stdout.flush(); sys.exit(1)\n"
        "    answer(index, domain)\n"
    )
    domains = [f"d{i}.example" for i in range(8)]
    reports = await _shard(script, domains)
    assert sorted(r["domain"] for r in reports) == domains  # each once
    lost = [r for r in reports if r.get("error")]
    assert lost and all("exited with status 1 while checking it" in r["error"] for r in lost)
    assert "d3.example" in {r["domain"] for r in lost}


async def test_workers_that_always_die_are_restarted_a_bounded_number_of_times():
    domains = [f"d{i}.example" for i in range(40)]
    started = time.monotonic()
    reports = await _shard("sys.exit(3)\n", domains, workers=2)
    assert time.monotonic() - started < 60
    assert sorted(r["domain"] for r in reports) == sorted(domains)
    assert all(r["verdict"] == "error" for r in reports)
    not_checked = [r for r in reports if r["error"].startswith("not checked: ")]
    assert not_checked  # once no worker may start, the rest are reported, not waited for
    assert len({r["error"] for r in reports} - {not_checked[0]["error"]}) <= 2 + MAX_RESTARTS


async def test_a_death_after_the_input_ended_starts_no_worker_and_ends_the_run():
    script = (
        "pending = [json.loads(line) for line in sys.stdin]\n"  # until the input ends
        "for index, domain in pending[:-1]:\n"
        "    answer(index, domain)\n"
        "sys.exit(1)\n"
    )
    domains = ["a.example", "b.example"]
    reports = {r["domain"]: r for r in await _shard(script, domains)}
    assert reports["a.example"]["verdict"] == "pass"
    assert reports["b.example"]["error"].endswith("exited with status 1 while checking it")
