"""Client-side cost of a DNS query: dnspython's asyncresolver, aiodns (c-ares), and ours.

    .venv/bin/python bench/dns_bench.py [--queries 20000] [--concurrency 100] [--loop uvloop]

Issue 14 asked which query path the resolver should use. Each client asks the same
server for the same distinct names (A, TXT and MX in turn; nothing cached, nothing
coalesced), ``--concurrency`` lookups in flight at a time, and we print its wall rate and
the CPU time *this process* spent per query (``time.process_time``, every thread, so
c-ares' own thread is counted). The server is a canned-answer UDP responder in a process
of its own (replies built once with dnspython, the id and question patched in), so it
costs a few microseconds a query and the wall rate says something too; the Python test
harness server would be the bottleneck.

* ``dnspython``: ``dns.asyncresolver.Resolver`` set up as ``securemail.dns`` used to
  be (EDNS0 with DO and payload 1232, no cache);
* ``aiodns``: ``aiodns.DNSResolver.query_dns`` (pycares). Optional (``pip install
  aiodns``): c-ares exposes no AD flag, so it could never be the only path;
* ``securemail``: ``securemail.dns.Resolver(cache=False).query`` (the lean path over
  dnspython's wire format, ``securemail/dns/wire.py``), the whole public call, error
  mapping included.

Measured on the 2-core machine while others worked on it (20,000 queries, 100 in flight;
CPU µs per query, ranges over runs):

    loop     dnspython   aiodns   securemail
    uvloop   420-690     62-140   89-110
    asyncio  510-590     88-98    121-132

aiodns is cheaper per raw query, but it hands back c-ares' own records (no dnspython
rdata for ``Resolver.query``'s callers; making them costs ~25 µs of ours), has no AD
flag (MX ``dnssec``, DANE's TLSA) and checks replies its own way, so ``securemail``
keeps its own path: 4-6x cheaper than dnspython's resolver, with every reply check ours
and counted. ``bench/check_bench.py --modes dns --slow 0 --dead 0 --domains 500``
went from 148 to 213 domains/s with it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.asyncresolver
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rrset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from securemail.dns import Resolver  # noqa: E402

TYPES = ("A", "TXT", "MX")
RECORDS = {
    "A": "192.0.2.{i}",
    "TXT": '"v=spf1 ip4:192.0.2.0/24 include:_spf.provider.example -all"',
    "MX": "10 mx{i}.bench.example.",
}


def _name(i: int) -> str:
    return f"h{i:06d}.bench.example"


# --- the canned-answer server (a process of its own) ---------------------------------------


def _canned(n: int) -> dict[bytes, bytes]:
    """Reply wire by lower-case question wire (name, type, class)."""
    replies: dict[bytes, bytes] = {}
    for i in range(n):
        for rdtype in TYPES:
            query = dns.message.make_query(
                _name(i), rdtype, use_edns=0, want_dnssec=True, payload=1232
            )
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            text = RECORDS[rdtype].format(i=i % 250 + 1)
            response.answer.append(dns.rrset.from_text(_name(i) + ".", 300, "IN", rdtype, text))
            wire = response.to_wire()
            end = _question_end(wire)
            replies[wire[12:end].lower()] = wire
    return replies


def _question_end(wire: bytes) -> int:
    at = 12
    while wire[at]:
        at += wire[at] + 1
    return at + 5


def _serve(n: int) -> None:
    replies = _canned(n)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def loop() -> None:
        while True:
            data, addr = sock.recvfrom(4096)
            try:
                end = _question_end(data)
            except IndexError:
                continue
            canned = replies.get(data[12:end].lower())
            if canned is not None:
                sock.sendto(data[:2] + canned[2:12] + data[12:end] + canned[end:], addr)

    threading.Thread(target=loop, daemon=True).start()
    print(sock.getsockname()[1], flush=True)
    sys.stdin.read()


class _ServerProcess:
    def __init__(self, n: int) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line:
            sys.exit("DNS server process did not start")
        self.port = int(line)

    def stop(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        self._proc.wait(10)


# --- the clients -------------------------------------------------------------------------------

Ask = Callable[[str, str], Awaitable[list[str]]]


def _dnspython(port: int) -> Ask:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", port)]
    resolver.use_edns(0, dns.flags.DO, 1232)
    resolver.lifetime = 5.0
    resolver.timeout = 2.0
    resolver.cache = None

    async def ask(name: str, rdtype: str) -> list[str]:
        answer = await resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        return [rdata.to_text() for rdata in answer.rrset or ()]

    return ask


def _aiodns(port: int) -> Ask | None:
    try:
        import aiodns
    except ImportError:
        return None
    resolver = aiodns.DNSResolver(
        nameservers=["127.0.0.1"], udp_port=port, tcp_port=port, timeout=2.0, tries=2
    )

    async def ask(name: str, rdtype: str) -> list[str]:
        result = await resolver.query_dns(name, rdtype)
        return [str(record.data) for record in result.answer]

    return ask


def _securemail(port: int) -> Ask:
    resolver = Resolver([f"127.0.0.1:{port}"], timeout=5.0, cache=False)

    async def ask(name: str, rdtype: str) -> list[str]:
        rrset = await resolver.query(name, rdtype)
        return [rdata.to_text() for rdata in rrset or ()]

    return ask


async def _run(ask: Ask, first: int, count: int, n: int, concurrency: int) -> None:
    limit = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(k: int) -> None:
        nonlocal failures
        async with limit:
            try:
                records = await ask(_name(k % n), TYPES[k % len(TYPES)])
            except Exception:
                failures += 1
                return
            if len(records) != 1:
                failures += 1

    await asyncio.gather(*(one(k) for k in range(first, first + count)))
    if failures:
        print(f"  ({failures} of {count} lookups failed)")


async def _measure(name: str, ask: Ask, args: argparse.Namespace) -> None:
    n = args.names
    await _run(ask, 0, min(1000, args.queries), n, args.concurrency)  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    await _run(ask, 1000, args.queries, n, args.concurrency)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"{name:>11}: {args.queries / wall:8.0f} queries/s  "
        f"{cpu / args.queries * 1e6:6.1f} µs CPU/query"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--names", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--only", choices=("dnspython", "aiodns", "securemail"), default=None)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        _serve(args.serve)
        return
    server = _ServerProcess(args.names)
    print(
        f"{args.queries} queries, {args.concurrency} in flight, {args.loop} loop, "
        f"canned server on 127.0.0.1:{server.port}"
    )
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    try:
        for name, make in (
            ("dnspython", _dnspython),
            ("aiodns", _aiodns),
            ("securemail", _securemail),
        ):
            if args.only not in (None, name):
                continue
            with asyncio.Runner(loop_factory=factory) as runner:
                ask = runner.run(_async_make(make, server.port))
                if ask is None:
                    print(f"{name:>11}: not installed")
                    continue
                runner.run(_measure(name, ask, args))
    finally:
        server.stop()


async def _async_make(make: Callable[[int], Ask | None], port: int) -> Ask | None:
    return make(port)  # inside the loop: aiodns binds to the running one


if __name__ == "__main__":
    main()
