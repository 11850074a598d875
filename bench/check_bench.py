"""The checker at scale: ``securemail check`` vs checkdmarc, same zones, same run (issue 14).

    .venv/bin/python bench/check_bench.py [--domains 1000] [--workloads shared,full,dead,rss,
        mechanisms] [--rss-sizes 1000,10000] [--workers N] [--timeout 2] [--seed 1]

The world, each part in a process of its own so that neither tool shares a GIL or a CPU
account with it:

* DNS (``check_zones.py serve``, ``dns_fast``): realistic zones for every domain the
  workloads use (shared and own MX providers, nested SPF includes, DKIM through CNAME,
  DMARC, MTA-STS, TLS-RPT; one domain in twenty dead), every answer pre-rendered, so a
  query costs the server a few µs of CPU (measured and printed): never the limit.
* peers (``check_peers.py``): SMTP with STARTTLS and HTTPS serving MTA-STS policies,
  certificates from a test CA for whatever name the client sends in SNI.
* each measured run: ``securemail check - --json`` as a user runs it, or checkdmarc
  (``checkdmarc_run.py``), reading the domains on stdin. Per run: wall time, CPU of the
  process tree (``wait4``: the process and the workers it waited for), peak RSS of the
  largest process (``wait4``) and the sum of every process's peak (read from /proc while
  it runs), and what each domain was graded. Reports are counted and tallied, never kept.

Workloads (``--workloads``):

* ``shared``: the mechanisms both tools check (securemail ``--only mx,spf,dmarc,tls``),
  against checkdmarc's default check and its per-mechanism functions for the same set;
* ``full``: securemail's default check against checkdmarc's default check;
* ``dead``: the shared set over the first domains in order, one in twenty dead (DNS
  never answers), against checkdmarc on fewer domains (``--checkdmarc-dead-domains``:
  every dead domain costs it a chain of timeouts);
* ``rss``: securemail ``--no-tls`` over ``--rss-sizes`` healthy domains: peak RSS each
  and how far it grows (the issue asks for flat within 1.5×);
* ``mechanisms``: securemail ``--only mx,M`` for each mechanism M, and ``--only mx``
  alone: CPU per domain, less the MX-only baseline.

checkdmarc resolves MX and MTA-STS host names for its STARTTLS probes and its policy
fetch through the system resolver, which knows nothing of the benchmark's zones: it
never reaches the peers, so those parts fail fast for it and its figures include no TLS
handshakes. Healthy domains should all pass (or warn) with securemail: every ``fail`` on
them is printed loudly (the issue's "no domain graded fail because of our own load").
Nothing asserts on speed; exit status 1 means a run did not work (a helper did not start,
a run returned fewer reports than domains, a process failed).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from check_runs import ROOT, Run, Workbench, cpu_ms, rate, ratio  # the measuring side
from check_zones import OWN_SELECTOR, healthy_domains, mixed_domains, zone_size

SHARED = "mx,spf,dmarc,tls"
MECHANISMS = ("tls", "spf", "dkim", "dmarc", "mta_sts", "tlsrpt", "dane")
WORKLOADS = ("shared", "full", "dead", "rss", "mechanisms")


def main() -> None:
    args = _arguments()
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := set(workloads) - set(WORKLOADS):
        sys.exit(f"--workloads: unknown {', '.join(sorted(unknown))} (use {', '.join(WORKLOADS)})")
    rss_sizes = [int(s) for s in args.rss_sizes.split(",")] if "rss" in workloads else []
    healthy = max([args.domains, *rss_sizes])
    tls_workloads = {"shared", "full", "dead", "mechanisms"} & set(workloads)
    with tempfile.TemporaryDirectory(prefix="check-bench-") as tmp:
        try:
            bench = Workbench(
                Path(tmp), zones=zone_size(healthy, args.domains, args.seed), seed=args.seed,
                prewarm=args.domains if tls_workloads else 0,
            )  # fmt: skip
        except RuntimeError as exc:
            sys.exit(f"check_bench: {exc}")
        try:
            bench.write_config(
                dns_timeout=args.timeout, check_timeout=args.check_timeout,
                concurrency=args.concurrency, selectors=[OWN_SELECTOR],
            )  # fmt: skip
            _header(bench, args)
            names = healthy_domains(healthy, args.seed)
            for workload in workloads:
                print(f"\n== {workload} ==", flush=True)
                if workload == "rss":
                    _rss(bench, names, rss_sizes)
                elif workload == "mechanisms":
                    _mechanisms(bench, names[: args.domains])
                elif workload == "dead":
                    _dead(bench, mixed_domains(args.domains), args.checkdmarc_dead_domains)
                else:
                    _versus(bench, workload, names[: args.domains])
            _summary(bench)
        finally:
            bench.close()
    if bench.problems:
        print("\nDID NOT WORK:\n  " + "\n  ".join(bench.problems), file=sys.stderr)
        sys.exit(1)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--domains", type=int, default=1000, help="per workload run")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--rss-sizes", default="1000,10000", help="healthy domains per rss run")
    parser.add_argument(
        "--workers", type=int, default=None,
        help="securemail check --workers (default: securemail's own default)",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=50, help="[check] concurrency")
    parser.add_argument(
        "--timeout", type=float, default=2.0,
        help="DNS timeout, both tools ([dns] timeout; checkdmarc timeout=, its default)",
    )  # fmt: skip
    parser.add_argument(
        "--check-timeout", type=float, default=10.0,
        help="securemail [check] timeout (SMTP and HTTPS operations; its default)",
    )  # fmt: skip
    parser.add_argument(
        "--checkdmarc-dead-domains", type=int, default=100,
        help="checkdmarc's share of the dead workload (each dead domain costs it ~20 s)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args()


def _header(bench: Workbench, args: argparse.Namespace) -> None:
    import checkdmarc
    import dns.version

    dns_info, peers = bench.dns.info, bench.peers.info
    print("check_bench: securemail check vs checkdmarc, same zones, same run (issue 14)")
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
        f"{platform.release()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
        "(shared with others: figures are noisy)"
    )
    print(
        f"versions: Python {platform.python_version()}, securemail "
        f"{bench.securemail_version()} ({_git_revision()}), checkdmarc "
        f"{checkdmarc.__version__}, dnspython {dns.version.version}"
    )
    print(
        f"DNS server: {dns_info['domains']:,} domains, {dns_info['rrsets']:,} RRsets, "
        f"{dns_info['answers']:,} answers pre-rendered in {dns_info['build_s']:.1f} s, "
        f"peak RSS {dns_info['rss_mb']:.0f} MB; {bench.dns_probe()}"
    )
    print(
        f"peers: SMTP+STARTTLS :{peers['smtp_port']}, HTTPS (MTA-STS) :{peers['https_port']} "
        f"on {peers['loop']}; {peers['prewarmed']:,} certificates issued ahead in "
        f"{peers['prewarm_s']:.1f} s, others on first SNI"
    )
    workers = bench.workers_flag(args.workers)
    print(
        f"securemail: {workers}; concurrency {args.concurrency}, DNS timeout {args.timeout:g} s, "
        f"[check] timeout {args.check_timeout:g} s, selectors +{OWN_SELECTOR}; startup "
        f"{bench.startup('securemail')}, included in every securemail run"
    )
    print(
        f"checkdmarc: timeout {args.timeout:g} s, retries 0, check_mx_tls on; startup "
        f"{bench.startup('checkdmarc')}, included. It resolves MX and MTA-STS hosts "
        "through the system resolver, which cannot see these zones: its STARTTLS probes and "
        "policy fetches fail at once, so its figures contain no TLS work at all."
    )
    print(Run.HEADER, flush=True)


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "git revision unknown"
    return f"git {out.stdout.strip()}"


def _versus(bench: Workbench, workload: str, domains: list[str]) -> None:
    """``shared`` or ``full`` on healthy domains: securemail, then checkdmarc."""
    only = ["--only", SHARED] if workload == "shared" else []
    label = f"securemail --only {SHARED}" if only else "securemail (default check)"
    ours = bench.securemail(workload, label, domains, only, healthy=True)
    theirs = bench.checkdmarc(workload, "default", domains)
    if workload == "shared":
        narrow = bench.checkdmarc(workload, "shared", domains)
        bench.verdict(
            "shared", f"{ratio(ours, theirs)} checkdmarc's default check, "
            f"{ratio(ours, narrow)} its MX+SPF+DMARC functions", "≥ 10× checkdmarc",
        )  # fmt: skip
    else:
        bench.verdict(
            "full", f"{rate(ours):.1f} domains/s, {ratio(ours, theirs)} checkdmarc's default",
            "≥ 100 domains/s, ≥ 5× checkdmarc",
        )  # fmt: skip


def _dead(bench: Workbench, domains: list[str], checkdmarc_domains: int) -> None:
    ours = bench.securemail(
        "dead", f"securemail --only {SHARED}", domains, ["--only", SHARED], healthy=False
    )
    theirs = bench.checkdmarc("dead", "default", domains[:checkdmarc_domains])
    bench.verdict(
        "dead", f"{ratio(ours, theirs)} checkdmarc ({ours.domains:,} vs {theirs.domains:,} "
        "domains, one in twenty dead: rates compared)", "≥ 100× checkdmarc",
    )  # fmt: skip


def _rss(bench: Workbench, names: list[str], sizes: list[int]) -> None:
    runs = [
        bench.securemail("rss", "securemail --no-tls", names[:size], ["--no-tls"], healthy=True)
        for size in sizes
    ]
    if len(runs) < 2:
        return
    largest = [r.rss_mb for r in runs]
    summed = [r.rss_sum_mb for r in runs]
    growth = max(largest) / max(min(largest), 1)
    print(
        f"  peak RSS over {', '.join(f'{s:,}' for s in sizes)} domains: largest process "
        f"{' → '.join(f'{x:.0f}' for x in largest)} MB ({growth:.2f}×), all processes "
        f"{' → '.join(f'{x:.0f}' for x in summed)} MB "
        f"({max(summed) / max(min(summed), 1):.2f}×)",
        flush=True,
    )
    fails = sum(r.verdicts["fail"] for r in runs)
    bench.verdict(
        "rss", f"peak RSS ×{growth:.2f} from {sizes[0]:,} to {sizes[-1]:,} domains, {fails} "
        "graded fail", "flat within 1.5×, 0 fail",
    )  # fmt: skip


def _mechanisms(bench: Workbench, domains: list[str]) -> None:
    """CPU per domain of each mechanism: ``--only mx,M`` less ``--only mx``. The baseline
    is measured before and after the others and averaged, so that the load of whoever
    else shares the machine drifts into both sides alike."""

    def only(mechanisms: str) -> Run:
        label = f"securemail --only {mechanisms}"
        return bench.securemail("mechanisms", label, domains, ["--only", mechanisms])

    first = only("mx")
    runs = {m: only(f"mx,{m}") for m in MECHANISMS}
    last = only("mx")
    base = (cpu_ms(first) + cpu_ms(last)) / 2
    print(f"\n  {'mechanism':<10} {'CPU ms/domain':>14} {'less mx':>9} {'domains/s':>10}")
    print(f"  {'mx':<10} {base:>14.2f} {'':>9} {(rate(first) + rate(last)) / 2:>10.1f}")
    for name, run in runs.items():
        print(f"  {name:<10} {cpu_ms(run):>14.2f} {cpu_ms(run) - base:>+9.2f} {rate(run):>10.1f}")
    total = base + sum(cpu_ms(r) - base for r in runs.values())
    print(
        f"  {'all':<10} {total:>14.2f}   (mx + each one's share, startup included; issue 14: "
        f"≤ 2 ms a domain; the baseline moved {abs(cpu_ms(first) - cpu_ms(last)):.2f} ms "
        "between its two runs: smaller differences are noise)",
        flush=True,
    )


def _summary(bench: Workbench) -> None:
    if not bench.verdicts:
        return
    print("\n== against the issue's targets ==")
    for workload, figure, target in bench.verdicts:
        print(f"  {workload:<8} {figure}  [target: {target}]")
    healthy = [run for run in bench.runs if run.healthy]
    for grade in ("fail", "error"):
        codes: Counter[str] = Counter()
        for run in healthy:
            codes.update(c for c in run.failing.elements() if c.endswith(f"({grade})"))
        count = sum(run.verdicts[grade] for run in healthy)
        shout = "!!! " if grade == "fail" and count else ""
        print(f"  {shout}healthy domains graded {grade} in this run: {count}", end="")
        print(f" ({_top(codes)})" if codes else "", flush=True)


def _top(counter: Counter[str]) -> str:
    return ", ".join(f"{code} ×{n}" for code, n in counter.most_common(5))


if __name__ == "__main__":
    main()
