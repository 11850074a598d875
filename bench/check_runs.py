"""The measuring side of the checker benchmark: the helpers it starts and each timed run.

``Workbench`` owns the world (the DNS server and the peers, each a ``HelperProcess``, and
securemail's config file) and runs one tool at a time as a child process, reading its
output as it streams. A run's CPU and largest peak RSS come from ``os.wait4`` on that one
child, so they include the workers it waited for and nothing from earlier runs (the
``RUSAGE_CHILDREN`` maximum only ever grows). The sum of every process's peak is sampled
from ``/proc`` while the run lasts, since ``wait4`` reports the largest, not the total.
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from helper_process import HelperProcess

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SECUREMAIL = [sys.executable, "-m", "securemail.cli", "check"]
# Variables that would make rich colour a pipe (as in tests/harness/cli.py).
FORCING = {"FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE"}
_VERDICT = re.compile(rb'"verdict":\s*"(\w+)"')
PROBE_QUERIES = 20000
SAMPLE_EVERY = 0.1


@dataclass
class Run:
    """One measured child process."""

    workload: str
    label: str
    domains: int
    healthy: bool
    wall: float = 0.0
    cpu: float = 0.0  # user + system seconds, the process and the children it waited for
    rss_mb: float = 0.0  # the largest peak of any one process
    rss_sum_mb: float = 0.0  # every process's peak, added up
    processes: int = 0
    reports: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    failing: Counter[str] = field(default_factory=Counter)  # codes of fail/error findings
    result: str = ""  # checkdmarc: what it found valid

    HEADER = (
        f"\n{'workload':<10} {'tool':<36} {'domains':>7} {'wall s':>7} {'dom/s':>7} "
        f"{'CPU ms/dom':>10} {'RSS MB max/sum':>15}  result"
    )

    def row(self, workload: str = "", label: str = "") -> str:
        """The table row; ``workload``/``label`` when shown again under another workload."""
        rss = f"{self.rss_mb:.0f}/{self.rss_sum_mb:.0f}"
        if self.processes > 1:
            rss += f" ({self.processes}p)"
        result = self.result or " ".join(f"{k} {v}" for k, v in self.verdicts.items())
        return (
            f"{workload or self.workload:<10} {label or self.label:<36} {self.domains:>7,} "
            f"{self.wall:>7.1f} {rate(self):>7.1f} {cpu_ms(self):>10.1f} {rss:>15}  {result}"
        )


def rate(run: Run) -> float:
    return run.domains / run.wall if run.wall else 0.0


def cpu_ms(run: Run) -> float:
    return run.cpu * 1000 / run.domains if run.domains else 0.0


def ratio(ours: Run, theirs: Run) -> str:
    return f"{rate(ours) / rate(theirs):.1f}×" if rate(theirs) else "n/a"


def child_env() -> dict[str, str]:
    """This tree's securemail first on the path, and no forced colour."""
    env = {k: v for k, v in os.environ.items() if k not in FORCING}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Workbench:
    """The helpers, the config that points securemail at them, and every run so far."""

    def __init__(self, tmp: Path, *, zones: int, seed: int, prewarm: int) -> None:
        self.tmp = tmp
        self.env = child_env()
        self.runs: list[Run] = []
        self.verdicts: list[tuple[str, str, str]] = []
        self.problems: list[str] = []
        self.config = tmp / "securemail.toml"
        self._workers: list[str] = []
        self._checkdmarc_runs: dict[tuple[str, tuple[str, ...]], Run] = {}
        self._dns_timeout = 2.0
        self.dns = HelperProcess(
            "the DNS server", [sys.executable, str(BENCH / "check_zones.py"), "serve",
                               str(zones), str(seed)], self.env,
        )  # fmt: skip
        try:
            self.peers = HelperProcess(
                "the SMTP/HTTPS peers",
                [sys.executable, str(BENCH / "check_peers.py"), str(seed), str(prewarm)],
                self.env,
            )
        except BaseException:
            self.dns.stop()
            raise
        self.nameserver = f"{self.dns.info['host']}:{self.dns.info['port']}"

    def close(self) -> None:
        self.peers.stop()
        self.dns.stop()

    def write_config(
        self, *, dns_timeout: float, check_timeout: float, concurrency: int, selectors: list[str]
    ) -> None:
        self._dns_timeout = dns_timeout
        self.config.write_text(
            f'[dns]\nnameservers = ["{self.nameserver}"]\ntimeout = {dns_timeout}\n\n'
            f'[tls]\nca_file = "{self.peers.info["ca_file"]}"\n\n'
            f"[check]\nsmtp_port = {self.peers.info['smtp_port']}\n"
            f"https_port = {self.peers.info['https_port']}\ntimeout = {check_timeout}\n"
            f"concurrency = {concurrency}\nselectors = {json.dumps(selectors)}\n"
        )

    def workers_flag(self, requested: int | None) -> str:
        """Whether this securemail has ``check --workers``; what the runs will use."""
        help_text = subprocess.run(
            [*SECUREMAIL, "--help"], capture_output=True, text=True, timeout=60,
            env={**self.env, "COLUMNS": "200", "NO_COLOR": "1"}, check=False,
        ).stdout  # fmt: skip
        if "--workers" not in help_text:
            ignored = f" (--workers {requested} ignored)" if requested is not None else ""
            return f"no `check --workers` in this securemail: one process (workers=1){ignored}"
        if requested is None:
            return "--workers not given: securemail's default"
        self._workers = ["--workers", str(requested)]
        return f"--workers {requested}"

    def startup(self, tool: str) -> str:
        """Wall and CPU seconds to start and finish with no domains (imports, config)."""
        argv = self._securemail_argv(["--only", "mx", "--no-tls"])
        if tool == "checkdmarc":
            argv = self._checkdmarc_argv("default")
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=self.env)  # fmt: skip
        usage = _reap(proc)
        wall = time.perf_counter() - start
        return f"{wall:.2f} s ({usage.ru_utime + usage.ru_stime:.2f} s CPU)"

    def securemail_version(self) -> str:
        """The securemail the runs use (this tree's, first on their path)."""
        code = "import securemail; print(securemail.__version__, securemail.__file__)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=self.env, timeout=60, check=False).stdout.split()  # fmt: skip
        return f"{out[0]} from {Path(out[1]).parent.parent}" if len(out) == 2 else "unknown"

    def dns_probe(self) -> str:
        """The DNS server's CPU per query, from a burst of queries sent one at a time."""
        import dns.message

        names = [("d000000.example", "MX"), ("_dmarc.d000000.example", "TXT"),
                 ("s1._domainkey.d000000.example", "TXT"), ("k1._domainkey.d000000.example",
                 "TXT"), ("mx1.provider0.example", "AAAA")]  # fmt: skip
        queries = [
            dns.message.make_query(n, t, use_edns=0, want_dnssec=True).to_wire() for n, t in names
        ]
        before = self.dns.stats()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.connect((self.dns.info["host"], self.dns.info["port"]))
            start = time.perf_counter()
            for i in range(PROBE_QUERIES):
                sock.send(queries[i % len(queries)])
                sock.recv(4096)
            elapsed = time.perf_counter() - start
        after = self.dns.stats()
        served = after["queries"] - before["queries"]
        cpu = (after["udp_cpu"] - before["udp_cpu"]) / max(served, 1) * 1e6
        return (
            f"{cpu:.1f} µs CPU a query in the server ({served:,} queries: hits, a CNAME chain, "
            f"NXDOMAIN, NODATA), {elapsed / PROBE_QUERIES * 1e6:.0f} µs a round trip from Python"
        )

    def verdict(self, workload: str, figure: str, target: str) -> None:
        self.verdicts.append((workload, figure, target))

    # --- runs --------------------------------------------------------------------------

    def securemail(
        self, workload: str, label: str, domains: Sequence[str], extra: Sequence[str],
        *, healthy: bool = True,
    ) -> Run:  # fmt: skip
        run = Run(workload, label, len(domains), healthy)
        run.verdicts.update(dict.fromkeys(("pass", "warn", "error", "fail"), 0))

        def line(raw: bytes) -> None:
            run.reports += 1
            found = _VERDICT.search(raw)
            verdict = found.group(1).decode() if found else "unreadable"
            run.verdicts[verdict] += 1
            if verdict in ("fail", "error"):
                try:
                    report = json.loads(raw)
                except ValueError:
                    return
                run.failing.update(
                    f"{f['check']} ({f['status']})"
                    for f in report.get("findings", [])
                    if f.get("status") in ("fail", "error")
                )

        self._measure(run, self._securemail_argv(["--json", *extra]), domains, line)
        if healthy and run.verdicts["fail"]:
            print(
                f"  !!! {run.verdicts['fail']} HEALTHY DOMAINS GRADED FAIL: "
                + ", ".join(f"{c} ×{n}" for c, n in run.failing.most_common(6)),
                flush=True,
            )
        return run

    def checkdmarc(self, workload: str, mode: str, domains: Sequence[str]) -> Run:
        """checkdmarc's run for ``mode`` over ``domains``; measured once per run of the
        benchmark (``full`` reuses ``shared``'s: the same check of the same domains)."""
        label = "checkdmarc default" if mode == "default" else "checkdmarc mx+spf+dmarc"
        key = (mode, tuple(domains))
        if key in self._checkdmarc_runs:
            run = self._checkdmarc_runs[key]
            print(run.row(workload, f"{label} (as above)"), flush=True)
            return run
        run = Run(workload, label, len(domains), healthy=False)
        self._checkdmarc_runs[key] = run

        keys = {"mx_hosts": "mx", "spf_valid": "spf", "dmarc_valid": "dmarc", "starttls": "tls"}
        if mode == "default":
            keys["mta_sts_valid"] = "mta-sts"

        def line(raw: bytes) -> None:
            tally = json.loads(raw)
            run.reports = tally.get("results", 0)
            run.result = "found: " + ", ".join(f"{v} {tally.get(k, 0)}" for k, v in keys.items())

        self._measure(run, self._checkdmarc_argv(mode), domains, line)
        return run

    def _securemail_argv(self, extra: Sequence[str]) -> list[str]:
        return [*SECUREMAIL, "-", "--config", str(self.config), *self._workers, *extra]

    def _checkdmarc_argv(self, mode: str) -> list[str]:
        return [sys.executable, str(BENCH / "checkdmarc_run.py"), mode, self.nameserver,
                str(self._dns_timeout)]  # fmt: skip

    def _measure(
        self, run: Run, argv: list[str], domains: Sequence[str], line: Callable[[bytes], None]
    ) -> None:
        source = self.tmp / f"domains-{len(self.runs)}.txt"
        source.write_text("".join(f"{d}\n" for d in domains))
        errors = self.tmp / "stderr.txt"
        dns0, peers0 = self.dns.stats(), self.peers.stats()
        with source.open("rb") as stdin, errors.open("wb") as stderr:
            start = time.perf_counter()
            proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr,
                                    env=self.env)  # fmt: skip
            peaks = TreePeaks(proc.pid)
            peaks.start()
            assert proc.stdout is not None
            for raw in proc.stdout:
                line(raw)
            usage = _reap(proc)
            run.wall = time.perf_counter() - start
            peaks.stop()
        run.cpu = usage.ru_utime + usage.ru_stime
        run.rss_mb = usage.ru_maxrss / 1024
        run.rss_sum_mb = max(sum(peaks.peaks.values()) / 1024, run.rss_mb)
        run.processes = len(peaks.peaks)
        self.runs.append(run)
        print(run.row(), flush=True)
        self._helpers(run, dns0, peers0)
        if proc.returncode != 0:
            tail = errors.read_text(errors="replace").strip().splitlines()[-3:]
            self.problems.append(f"{run.label} ({run.workload}): exit {proc.returncode}: {tail}")
        if run.reports < run.domains:
            self.problems.append(
                f"{run.label} ({run.workload}): {run.reports} reports for {run.domains} domains"
            )

    def _helpers(self, run: Run, dns0: dict, peers0: dict) -> None:
        """What the run cost the helpers: evidence that they were not the limit."""
        dns1, peers1 = self.dns.stats(), self.peers.stats()
        queries = dns1["queries"] - dns0["queries"]
        each = (dns1["udp_cpu"] - dns0["udp_cpu"]) / max(queries, 1) * 1e6
        tls = peers1["tls_ok"] - peers0["tls_ok"]
        text = (
            f"{'':<10} dns {queries:,} queries ({queries / max(run.domains, 1):.0f}/domain, "
            f"{each:.1f} µs each), {dns1['dropped'] - dns0['dropped']:,} unanswered (dead); "
            f"peers {peers1['cpu'] - peers0['cpu']:.1f} s CPU, {tls:,} STARTTLS, "
            f"{peers1['policies'] - peers0['policies']:,} MTA-STS policies"
        )
        lost = dns1["kernel_drops"] - dns0["kernel_drops"]
        if lost:
            text += f"; !!! {lost} queries lost in the DNS server's full buffer (figures suspect)"
        print(text, flush=True)


def _reap(proc: subprocess.Popen[bytes]) -> resource.struct_rusage:
    """Wait for ``proc``; its resource use, with that of the children it waited for."""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage


class TreePeaks(threading.Thread):
    """Every process under ``pid`` (and ``pid``), its peak RSS (VmHWM, KB) while it lives."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peaks: dict[int, int] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            for pid in [self.pid, *_descendants(self.pid)]:
                peak = _vm_hwm(pid)
                if peak:
                    self.peaks[pid] = max(peak, self.peaks.get(pid, 0))
            if self._stop_event.wait(SAMPLE_EVERY):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def _vm_hwm(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) if found else 0
