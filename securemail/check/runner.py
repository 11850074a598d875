"""Run every check for a domain, or for thousands of domains, concurrently.

MX comes first (the TLS, MTA-STS and DANE checks need the hosts); everything else runs
at once. Each mechanism is bounded by a timeout and isolated: a bug or hang in one
becomes a ``<mech>.error`` (could not check) for that domain, never a crashed run. A
domain that does not exist stops after the MX lookup with its one ``domain.exists``
finding: every other check would only restate it.

A run (``check_many``, ``check_tagged``) owns what its domains share, each with a bound:
the TLS probes of the MX hosts (``probes.ProbeCache``: a provider's servers are probed
once while its customers are checked, not once per customer), one MTA-STS policy client
(``PolicyClient``), and the loop-lag gate (``load.LoopLag``) that holds intake while the
event loop runs late, so our own load never times out a healthy domain. Reports are
yielded as they complete and kept nowhere: at most ``concurrency`` exist at a time (in
flight, or done and not yet taken), so memory does not grow with the input.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from securemail.check.load import LoopLag
from securemail.check.model import DomainReport, Finding, unknown
from securemail.check.probes import Key, ProbeCache
from securemail.check.rules.dane import check_dane
from securemail.check.rules.dkim import check_dkim_keys
from securemail.check.rules.dmarc import check_dmarc_record
from securemail.check.rules.mta_sts import check_mta_sts, policy_client
from securemail.check.rules.mx import check_mx
from securemail.check.rules.spf import check_spf_record
from securemail.check.rules.tls import TlsProbe, evaluate_tls, probe_tls
from securemail.check.rules.tlsrpt import check_tlsrpt
from securemail.core.addresses import AddressError, normalise_domain
from securemail.dns import Resolver
from securemail.mech.mta_sts.lookup import PolicyClient

ORDER = ("mx", "tls", "spf", "dkim", "dmarc", "mta_sts", "tlsrpt", "dane")
Result = tuple[list[Finding], dict[str, object]]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CheckOptions:
    smtp_port: int = 25
    https_port: int = 443
    selectors: tuple[str, ...] = ()
    timeout: float = 10.0  # per network operation
    ca_file: Path | None = None
    tls: bool = True  # probe the MX hosts over SMTP
    max_mx: int = 5  # hosts probed per domain (in preference order)
    max_addresses: int = 2  # addresses probed per host
    only: frozenset[str] = frozenset(ORDER)  # mechanisms to run (MX always runs)


@dataclass
class Checker:
    """Checks domains; one run at a time (a run's shared state lives here while it lasts)."""

    resolver: Resolver
    options: CheckOptions = field(default_factory=CheckOptions)
    probes: ProbeCache = field(default_factory=ProbeCache)
    _policies: PolicyClient | None = None  # the current run's

    async def check(self, domain: str, *, now: dt.datetime | None = None) -> DomainReport:
        now = now or dt.datetime.now(dt.UTC)
        try:
            domain = normalise_domain(domain.strip())  # as in domain_key
        except AddressError as exc:
            return DomainReport(domain.strip(), (), error=f"not a domain name: {exc}")
        held: list[Key] = []
        try:
            return await self._check(domain, now, held)
        finally:
            self.probes.release(held)

    async def _check(self, domain: str, now: dt.datetime, held: list[Key]) -> DomainReport:
        budget = self.options.timeout * 4
        mx_findings, mx_facts = await self._guard("mx", check_mx(domain, self.resolver), budget)
        if not mx_facts.pop("exists", True):
            return DomainReport(domain, tuple(mx_findings))  # no facts: there is no domain
        hosts = [str(h) for h in mx_facts.get("mx_hosts", [])][: self.options.max_mx]
        o = self.options
        jobs: dict[str, Awaitable[Result]] = {
            "tls": self._tls(mx_facts, now, held),
            "spf": check_spf_record(domain, self.resolver),
            "dkim": check_dkim_keys(domain, self.resolver, o.selectors),
            "dmarc": check_dmarc_record(domain, self.resolver),
            "mta_sts": check_mta_sts(
                domain, self.resolver, hosts, https_port=o.https_port, ca_file=o.ca_file,
                timeout=o.timeout, client=self._policies,
            ),
            "tlsrpt": check_tlsrpt(domain, self.resolver),
            "dane": check_dane(hosts, self.resolver, port=o.smtp_port),
        }  # fmt: skip
        for name in [n for n in jobs if n not in o.only]:
            job = jobs.pop(name)
            if asyncio.iscoroutine(job):
                job.close()  # never started: no "coroutine was never awaited" warning
        results = await asyncio.gather(
            *(self._guard(name, job, budget) for name, job in jobs.items())
        )
        by_name = dict(zip(jobs, results, strict=True))
        by_name["mx"] = (mx_findings, mx_facts)
        findings: list[Finding] = []
        facts: dict[str, object] = {}
        for name in (n for n in ORDER if n in by_name):
            found, more = by_name[name]
            findings += found
            facts.update(more)
        facts.pop("mx_hosts", None)
        return DomainReport(domain, tuple(findings), facts)

    async def check_many(
        self,
        domains: Iterable[str] | AsyncIterable[str],
        *,
        concurrency: int = 50,
        lag: LoopLag | None = None,
    ) -> AsyncIterator[DomainReport]:
        """Reports as they complete, at most ``concurrency`` domains in flight, streaming
        the input so a million-line list never sits in memory (only the names seen).

        Each domain is checked once however it is written (``NHS.NET``, ``nhs.net.``, an
        IDNA form): the first spelling in input order is the one checked. Blank lines and
        ``#`` comments are skipped (``unique_domains``)."""
        run = self.check_tagged(unique_domains(domains), concurrency=concurrency, lag=lag)
        async for _index, report in run:
            yield report

    async def check_tagged(
        self,
        items: Iterable[tuple[T, str]] | AsyncIterable[tuple[T, str]],
        *,
        concurrency: int = 50,
        lag: LoopLag | None = None,
    ) -> AsyncIterator[tuple[T, DomainReport]]:
        """``(tag, report)`` for each ``(tag, domain)`` of ``items``, as each completes: a
        run, as ``check_many`` describes, of domains already made unique by the caller.

        A new domain is started only while fewer than ``concurrency`` reports exist (in
        flight, or done and not yet taken) and while ``lag`` (a ``LoopLag`` of the
        defaults unless given) says the loop is on time."""
        o = self.options
        lag = lag or LoopLag()
        self.probes.idle_limit = concurrency * o.max_mx * o.max_addresses
        if "mta_sts" in o.only:
            self._policies = policy_client(
                self.resolver, ca_file=o.ca_file, timeout=o.timeout, max_connections=concurrency
            )
        slots = asyncio.Semaphore(concurrency)
        done: asyncio.Queue[tuple[T, asyncio.Task[DomainReport]] | None] = asyncio.Queue()
        tasks: set[asyncio.Task[DomainReport]] = set()

        def finished(tag: T, task: asyncio.Task[DomainReport]) -> None:
            tasks.discard(task)
            done.put_nowait((tag, task))

        async def feed() -> None:
            async for tag, domain in _each(items):
                await slots.acquire()
                await lag.ready()
                task = asyncio.ensure_future(self.check(domain))
                tasks.add(task)
                task.add_done_callback(functools.partial(finished, tag))
            for _ in range(concurrency):  # every report has been taken
                await slots.acquire()

        watcher = asyncio.ensure_future(lag.watch())
        feeder = asyncio.ensure_future(feed())
        feeder.add_done_callback(lambda _: done.put_nowait(None))
        try:
            while (item := await done.get()) is not None:
                slots.release()
                tag, task = item
                yield tag, task.result()
            feeder.result()  # what reading the input raised, if anything
        finally:
            for pending in (watcher, feeder, *tasks):
                pending.cancel()
            await asyncio.gather(watcher, feeder, *tasks, return_exceptions=True)
            if self._policies is not None:
                await self._policies.aclose()
                self._policies = None
            self.probes.clear()

    async def _tls(self, mx_facts: dict[str, object], now: dt.datetime, held: list[Key]) -> Result:
        if not self.options.tls or "tls" not in self.options.only:
            return [], {}
        o = self.options
        waits: list[asyncio.Future[TlsProbe]] = []
        for entry in mx_facts.get("mx", [])[: o.max_mx]:  # type: ignore[index]
            host = entry["host"]
            for ip in entry.get("addresses", [])[: o.max_addresses]:
                start = functools.partial(
                    probe_tls, host, ip, o.smtp_port, ca_file=o.ca_file, timeout=o.timeout
                )
                probe = self.probes.hold((host, ip), start)
                held.append((host, ip))
                waits.append(asyncio.shield(probe))  # giving up must not cancel it for others
        probes = await asyncio.gather(*waits)
        findings = [f for probe in probes for f in evaluate_tls(probe, now=now)]
        return findings, {"tls": [probe.to_json() for probe in probes]}

    async def _guard(self, name: str, job: Awaitable[Result], budget: float) -> Result:
        try:
            return await asyncio.wait_for(job, budget)
        except TimeoutError:
            message = f"{name} check timed out after {budget:.0f}s"
            fix = "Retry later; if it persists, check the domain's DNS and servers."
            return [unknown(f"{name}.error", message, fix)], {}
        except Exception as exc:  # a bug in one check must not sink the run
            message = f"{name} check failed: {exc!r}"
            return [unknown(f"{name}.error", message, "A securemail bug: please report it.")], {}


async def unique_domains(
    domains: Iterable[str] | AsyncIterable[str],
) -> AsyncIterator[tuple[int, str]]:
    """``(index, text)`` for each entry of ``domains`` to check: blank lines and ``#``
    comments are not entries; an entry whose ``domain_key`` came before is skipped but
    counted, so ``index`` is the entry's position in the input (0 = the first)."""
    seen: set[str] = set()
    index = -1
    async for text in _each(domains):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        index += 1
        key = domain_key(text)
        if key not in seen:
            seen.add(key)
            yield index, text


async def _each(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def domain_key(text: str) -> str:
    """The name ``text`` is checked under (``normalise_domain``), or the trimmed text
    itself when it is not a domain name, so that repeated junk is reported once too."""
    try:
        return normalise_domain(text.strip())
    except AddressError:
        return text.strip()
