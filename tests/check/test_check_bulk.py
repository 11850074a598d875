"""Bulk runs in one process: what a run shares (TLS contexts, probes) and what bounds it
(probes kept, reports alive, intake while the loop is late), on the loopback bulk_world."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import time

import pytest

from securemail.check.load import LoopLag
from securemail.check.model import Status
from securemail.check.probes import ProbeCache
from securemail.check.rules.tls import TlsProbe
from securemail.check.runner import Checker, CheckOptions
from securemail.dns import Resolver

pytestmark = pytest.mark.timeout(120)

DNS_ONLY = frozenset({"mx", "spf", "dmarc"})


# --- TLS contexts: built once per trust configuration -----------------------------------


async def test_tls_contexts_are_built_once_per_trust_configuration(
    bulk_world, tmp_path, monkeypatch
):
    """Every STARTTLS probe and MTA-STS fetch reuses its context: a new CA file (a new
    trust configuration) costs a constant few constructions, then 50 more domains none."""
    ca_file = tmp_path / "ca.pem"  # a path no context was built for yet
    shutil.copy(bulk_world.ca_file, ca_file)
    built: list[type] = []
    real_new = ssl.SSLContext.__new__

    def counting_new(cls, *args, **kwargs):
        built.append(cls)
        return real_new(cls, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "__new__", counting_new)
    options = bulk_world.options(ca_file=ca_file)
    first = [
        r async for r in Checker(bulk_world.resolver(), options).check_many(bulk_world.domains[:10])
    ]
    assert {r.verdict for r in first} <= {Status.PASS, Status.WARN, Status.FAIL}
    assert all(any(f.check == "mta_sts.policy_fetch" for f in r.findings) for r in first)
    assert all(any(f.check == "tls.certificate_chain" for f in r.findings) for r in first)
    # policy fetches + verifying probe + the non-verifying probe per pinned version
    assert 2 <= len(built) <= 7, built
    built.clear()
    second = Checker(bulk_world.resolver(), options).check_many(bulk_world.domains[10:])
    assert len([r async for r in second]) == 50
    assert built == []
    ca_file.write_bytes(bulk_world.ca_file.read_bytes() + b"\n")  # replaced: read again
    again = [
        r async for r in Checker(bulk_world.resolver(), options).check_many(bulk_world.domains[:1])
    ]
    assert again[0].verdict is not Status.ERROR
    assert len(built) == 2  # the policy host's and the probe's verifying contexts


# --- TLS probes: shared while in use, bounded after ---------------------------------------


async def test_probe_cache_is_bounded_and_shares_each_host(bulk_world):
    """60 MX hosts, each also the MX of an alias domain checked right after it: each host
    is probed once, and the probes kept never exceed what the run's concurrency needs."""
    for i in range(len(bulk_world.domains)):
        bulk_world.dns.add(f"alias{i}.example", "MX", f"10 mx-c{i}.sweep.test.")
    names = [n for i, d in enumerate(bulk_world.domains) for n in (d, f"alias{i}.example")]
    checker = Checker(bulk_world.resolver(), bulk_world.options(only=frozenset({"mx", "tls"})))
    concurrency, kept = 2, []
    async for report in checker.check_many(names, concurrency=concurrency):
        assert report.verdict is Status.PASS, report.findings
        kept.append(len(checker.probes))
    assert len(kept) == 120
    assert checker.probes.started == 60
    per_run = concurrency * checker.options.max_mx * checker.options.max_addresses
    assert checker.probes.idle_limit == per_run
    assert max(kept) <= 2 * per_run < 60  # held (in flight) plus idle, never all 60
    assert len(checker.probes) == 0  # the run's end forgets them


def _probe(host: str) -> TlsProbe:
    return TlsProbe(
        host=host, ip="192.0.2.1", port=25, connected=False, banner="", starttls=False,
        versions={}, negotiated=None, cipher=None, cipher_bits=None, cert_subject=None,
        cert_issuer=None, cert_sans=(), cert_not_after=None, cert_days_left=None,
        cert_key_type=None, cert_key_bits=None, chain_valid=None, chain_error="",
        name_matches=None, error="refused",
    )  # fmt: skip


async def test_probe_cache_holds_idles_and_evicts():
    cache = ProbeCache(idle_limit=2)
    gate = asyncio.Event()

    async def slow(host: str) -> TlsProbe:
        await gate.wait()
        return _probe(host)

    a1 = cache.hold(("a", "ip"), lambda: slow("a"))
    a2 = cache.hold(("a", "ip"), lambda: slow("a"))
    assert a1 is a2 and cache.started == 1
    # One holder giving up (its budget ran out) must not cancel the probe for the other.
    giving_up = asyncio.ensure_future(asyncio.shield(a1))
    waiting = asyncio.ensure_future(asyncio.shield(a2))
    await asyncio.sleep(0)
    giving_up.cancel()
    gate.set()
    assert (await waiting).host == "a"
    cache.release([("a", "ip"), ("a", "ip")])
    assert len(cache) == 1  # idle, not forgotten
    assert cache.hold(("a", "ip"), lambda: slow("a")) is a1 and cache.started == 1
    cache.release([("a", "ip")])
    for host in ("b", "c"):
        await cache.hold((host, "ip"), lambda host=host: slow(host))
        cache.release([(host, "ip")])
    assert len(cache) == 2  # "a" was the least recently used
    await cache.hold(("a", "ip"), lambda: slow("a"))
    assert cache.started == 4  # so it was probed again


async def test_probe_cache_does_not_keep_a_failed_probe():
    cache = ProbeCache()

    async def broken() -> TlsProbe:
        raise ValueError("ca_file unreadable")

    future = cache.hold(("a", "ip"), broken)
    with pytest.raises(ValueError, match="unreadable"):
        await future
    cache.release([("a", "ip")])
    assert len(cache) == 0
    assert await cache.hold(("a", "ip"), lambda: asyncio.sleep(0, _probe("a"))) == _probe("a")
    assert cache.started == 2


async def test_a_domain_cancelled_does_not_cancel_a_probe_others_await(dns_server):
    """Two domains share an MX whose server is slow to greet; the first is cancelled
    (a budget ran out, a run was stopped) while the probe runs: the second still gets
    the probe's result, not an error."""

    async def slow_greeting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)
        writer.write(b"554 5.7.1 not today\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow_greeting, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for domain in ("a.example", "b.example"):
        dns_server.add(domain, "MX", "10 slow.example.")
    dns_server.add("slow.example", "A", "127.0.0.1")
    options = CheckOptions(smtp_port=port, timeout=3.0, only=frozenset({"mx", "tls"}))
    checker = Checker(Resolver([dns_server.nameserver], timeout=2.0), options)
    try:
        first = asyncio.ensure_future(checker.check("a.example"))
        second = asyncio.ensure_future(checker.check("b.example"))
        while checker.probes.started == 0 or len(checker.probes) == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # both hold the probe now
        first.cancel()
        report = await second
    finally:
        server.close()
        await server.wait_closed()
    assert first.cancelled()
    codes = {(f.check, f.status) for f in report.findings}
    assert ("tls.connect", Status.FAIL) in codes, report.findings  # "greeted with 554"
    assert checker.probes.started == 1


# --- reports: streamed, at most `concurrency` alive ---------------------------------------


async def test_reports_alive_never_exceed_concurrency(bulk_world):
    """A slow reader (a full pipe) holds up intake: no more than ``concurrency`` domains
    are started and not yet taken, however long the input."""
    started: list[str] = []

    class Counting(Checker):
        async def check(self, domain, **kw):
            started.append(domain)
            return await super().check(domain, **kw)

    checker = Counting(bulk_world.resolver(), bulk_world.options(only=DNS_ONLY))
    taken = 0
    async for _report in checker.check_many(bulk_world.domains, concurrency=4):
        taken += 1
        assert len(started) - taken <= 4 - 1  # the one just taken freed its slot
        await asyncio.sleep(0.02)
    assert taken == len(bulk_world.domains) == len(started)


# --- intake while the event loop is late --------------------------------------------------


async def test_loop_lag_gate_opens_and_closes():
    lag = LoopLag(limit=0.1)
    await asyncio.wait_for(lag.ready(), 0.1)  # open to begin with
    lag.observe(0.25)
    assert not lag.open and lag.pauses == 1 and lag.worst == 0.25
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(lag.ready(), 0.05)
    waiting = asyncio.ensure_future(lag.ready())
    lag.observe(0.3)  # still late: one pause, not two
    lag.observe(0.02)
    await asyncio.wait_for(waiting, 0.1)
    assert lag.open and lag.pauses == 1


async def test_loop_lag_monitor_measures_with_its_clock():
    now = [100.0]
    lag = LoopLag(limit=0.1, period=0.01, clock=lambda: now[0])
    watcher = asyncio.ensure_future(lag.watch())
    await asyncio.sleep(0)  # the monitor reads the clock and sleeps
    now[0] += 0.01 + 0.5  # it wakes half a second late
    await asyncio.sleep(0.05)
    watcher.cancel()
    assert lag.pauses == 1 and lag.worst == pytest.approx(0.5)


async def test_no_domain_starts_while_the_loop_is_late(bulk_world):
    """A coroutine hogging the loop (as a long collection or a burst of parsing does)
    makes intake pause: after each stall, no new domain starts until the monitor has
    seen the loop on time again."""
    observed: list[tuple[float, float]] = []
    starts: list[float] = []
    stalls: list[tuple[float, float]] = []

    class Recording(LoopLag):
        def observe(self, lag: float) -> None:
            super().observe(lag)
            observed.append((time.monotonic(), lag))

    class Counting(Checker):
        async def check(self, domain, **kw):
            starts.append(time.monotonic())
            return await super().check(domain, **kw)

    async def hog() -> None:
        for _ in range(3):
            await asyncio.sleep(0.15)
            began = time.monotonic()
            time.sleep(0.3)  # blocks the loop, as CPU-bound work does
            stalls.append((began, time.monotonic()))

    lag = Recording(limit=0.1, period=0.02)
    checker = Counting(bulk_world.resolver(), bulk_world.options(only=DNS_ONLY))
    hogging = asyncio.ensure_future(hog())
    reports = [r async for r in checker.check_many(bulk_world.domains, concurrency=2, lag=lag)]
    await hogging
    assert len(reports) == len(bulk_world.domains)
    assert lag.pauses >= 1 and lag.worst >= 0.2
    for _began, ended in stalls:
        later = [s for s in starts if s > ended]
        if not later:
            continue  # the run was over
        on_time = [t for t, late in observed if ended < t <= later[0] and late <= lag.limit]
        assert on_time, "a domain started before the loop was seen on time again"
