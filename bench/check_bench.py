"""Domain assurance throughput: securemail check vs checkdmarc, same domains, same run.

    sudo .venv/bin/python bench/check_bench.py [--domains 1000] [--slow 0.03] [--dead 0.01]

A loopback DNS server serves N generated domains: MX, SPF (some with shared includes,
some missing or broken), DMARC (reject / none / missing), with a fraction of domains
whose DMARC answers are slow (1.5 s) or never come (timeouts). Both tools query that
server (checkdmarc through a dnspython resolver pointed at it, securemail through
``[dns] nameservers``), each in its library form, in the same process, one after the
other:

* ``dns`` mode: the DNS checks (securemail ``--no-tls``; checkdmarc without MX TLS);
* ``starttls`` mode: plus an SMTP STARTTLS probe of the MX. checkdmarc resolves MX
  hosts through the system resolver, so every MX is ``localhost`` and a STARTTLS
  server listens on 127.0.0.1:25 (both tools cache per host, so this measures the DNS
  work plus one probe each, not 1000 probes).

securemail runs the mechanisms checkdmarc has in common with it (MX, SPF, DMARC, and
STARTTLS/TLS in that mode: ``--only``); checkdmarc runs its whole check, which also
looks up NS, SOA, DNSSEC, BIMI, MTA-STS and TLS-RPT (it cannot be narrowed). The DNS
server runs in its own process. Prints domains/s for both and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

import dns.nameserver
import dns.resolver

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.dnsserver import DnsServer  # noqa: E402
from harness.pki import TestPKI  # noqa: E402
from harness.smtpsink import SinkServer  # noqa: E402

from securemail.check.runner import Checker, CheckOptions  # noqa: E402
from securemail.dns import Resolver  # noqa: E402


class _DnsProcess:
    """The loopback DNS server in a process of its own (this script with --serve-dns), so
    neither tool measured here shares a GIL with it. It serves until its stdin closes."""

    def __init__(self, n: int, slow: float, dead: float, seed: int) -> None:
        import subprocess

        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-dns", str(n), str(slow), str(dead), str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line:
            sys.exit("DNS server process did not start")
        self.host, port = line.split()
        self.port = int(port)
        self.nameserver = f"{self.host}:{self.port}"
        self.domains = [_name(i) for i in range(n)]

    def stop(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        self._proc.wait(10)


def _serve_dns(n: int, slow: float, dead: float, seed: int) -> None:
    with DnsServer() as server:
        build_zones(server, n, slow, dead, seed)
        print(server.host, server.port, flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin (or exits)


def _name(i: int) -> str:
    return f"d{i:05d}.example"


def build_zones(server: DnsServer, n: int, slow: float, dead: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    server.add("localhost", "A", "127.0.0.1")
    server.add("_spf.provider.example", "TXT", "v=spf1 ip4:198.51.100.0/24 ~all")
    domains = []
    for i in range(n):
        d = _name(i)
        domains.append(d)
        server.add(d, "MX", "10 localhost.")
        roll = rng.random()
        if roll < 0.6:
            server.add(d, "TXT", "v=spf1 ip4:192.0.2.0/24 include:_spf.provider.example -all")
        elif roll < 0.9:
            server.add(d, "TXT", "v=spf1 mx ~all")
        elif roll < 0.95:
            server.add(d, "TXT", "v=spf1 ip4:192.0.2.1/33 +all")  # broken
        roll = rng.random()
        if roll < 0.5:
            server.add(f"_dmarc.{d}", "TXT", f"v=DMARC1; p=reject; rua=mailto:dmarc@{d}")
        elif roll < 0.8:
            server.add(f"_dmarc.{d}", "TXT", "v=DMARC1; p=none")
        roll = rng.random()
        if roll < slow:
            server.behave(f"_dmarc.{d}", "slow", 1.5)
        elif roll < slow + dead:
            server.behave(f"_dmarc.{d}", "timeout")
    return domains


def run_checkdmarc(domains: list[str], server: _DnsProcess, tls: bool, timeout: float) -> float:
    import checkdmarc

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(server.host, server.port)]
    resolver.timeout = resolver.lifetime = timeout
    start = time.perf_counter()
    results = checkdmarc.check_domains(
        domains, resolver=resolver, timeout=timeout, retries=0, check_mx_tls=tls
    )
    elapsed = time.perf_counter() - start
    got = len(results) if isinstance(results, list) else 1
    if got != len(domains):
        sys.exit(f"checkdmarc returned {got} results for {len(domains)} domains")
    return elapsed


def run_securemail(
    domains: list[str],
    server: _DnsProcess,
    tls: bool,
    timeout: float,
    pki: TestPKI,
    concurrency: int,
) -> float:
    # The checks checkdmarc also makes (it adds NS, SOA, DNSSEC, BIMI, MTA-STS, TLS-RPT).
    only = frozenset({"mx", "spf", "dmarc", "tls"} if tls else {"mx", "spf", "dmarc"})
    options = CheckOptions(
        smtp_port=25, https_port=9, timeout=timeout, ca_file=pki.ca_file, tls=tls, only=only
    )

    async def go() -> int:
        checker = Checker(Resolver([server.nameserver], timeout=timeout), options)
        count = 0
        async for _report in checker.check_many(domains, concurrency=concurrency):
            count += 1
        return count

    start = time.perf_counter()
    got = asyncio.run(go())
    elapsed = time.perf_counter() - start
    if got != len(domains):
        sys.exit(f"securemail returned {got} reports for {len(domains)} domains")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--slow", type=float, default=0.03, help="fraction with slow DMARC")
    parser.add_argument("--dead", type=float, default=0.01, help="fraction with DMARC timeouts")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--modes", default="dns,starttls")
    args = parser.parse_args()
    if "starttls" in args.modes and os.geteuid() != 0:
        sys.exit("starttls mode listens on 127.0.0.1:25: run as root (or --modes dns)")
    pki = TestPKI()
    with (
        DnsServer() as server,
        SinkServer(hostname="localhost", port=25, tls_context=pki.server_context("localhost"))
        if "starttls" in args.modes
        else _Null() as _sink,
    ):
        domains = build_zones(server, args.domains, args.slow, args.dead, seed=1)
        print(
            f"{args.domains} domains ({args.slow:.0%} slow DMARC answers, {args.dead:.0%} "
            f"timing out), DNS timeout {args.timeout}s, securemail concurrency "
            f"{args.concurrency}",
            flush=True,
        )
        for mode in args.modes.split(","):
            tls = mode == "starttls"
            sm = run_securemail(domains, server, tls, args.timeout, pki, args.concurrency)
            cd = run_checkdmarc(domains, server, tls, args.timeout)
            print(
                f"{mode:9} securemail {args.domains / sm:8.1f} domains/s ({sm:6.1f}s)   "
                f"checkdmarc {args.domains / cd:7.1f} domains/s ({cd:6.1f}s)   "
                f"ratio {cd / sm:5.1f}",
                flush=True,
            )
    server.stop()
    pki.close()


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-dns"]:
        _serve_dns(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
