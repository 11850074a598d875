"""Run every check for a domain, or for thousands of domains, concurrently.

MX comes first (the TLS, MTA-STS and DANE checks need the hosts); everything else runs
at once. In bulk, many domains share a provider's MX hosts, so TLS probes are cached per
(host, address) for the run: each provider's servers are probed once, not once per
customer. Each mechanism is bounded by a timeout and isolated: a bug or hang in one
becomes a ``<mech>.error`` (could not check) for that domain, never a crashed run. A
domain that does not exist stops after the MX lookup with its one ``domain.exists``
finding: every other check would only restate it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from securemail.check.model import DomainReport, Finding, unknown
from securemail.check.rules.dane import check_dane
from securemail.check.rules.dkim import check_dkim_keys
from securemail.check.rules.dmarc import check_dmarc_record
from securemail.check.rules.mta_sts import check_mta_sts
from securemail.check.rules.mx import check_mx
from securemail.check.rules.spf import check_spf_record
from securemail.check.rules.tls import TlsProbe, evaluate_tls, probe_tls
from securemail.check.rules.tlsrpt import check_tlsrpt
from securemail.core.addresses import AddressError, normalise_domain
from securemail.dns import Resolver

ORDER = ("mx", "tls", "spf", "dkim", "dmarc", "mta_sts", "tlsrpt", "dane")
Result = tuple[list[Finding], dict[str, object]]


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
    resolver: Resolver
    options: CheckOptions = field(default_factory=CheckOptions)
    _probes: dict[tuple[str, str], asyncio.Future[TlsProbe]] = field(default_factory=dict)

    async def check(self, domain: str, *, now: dt.datetime | None = None) -> DomainReport:
        now = now or dt.datetime.now(dt.UTC)
        try:
            domain = normalise_domain(domain.strip())  # as in domain_key
        except AddressError as exc:
            return DomainReport(domain.strip(), (), error=f"not a domain name: {exc}")
        budget = self.options.timeout * 4
        mx_findings, mx_facts = await self._guard("mx", check_mx(domain, self.resolver), budget)
        if not mx_facts.pop("exists", True):
            return DomainReport(domain, tuple(mx_findings))  # no facts: there is no domain
        hosts = [str(h) for h in mx_facts.get("mx_hosts", [])][: self.options.max_mx]
        o = self.options
        jobs: dict[str, Awaitable[Result]] = {
            "tls": self._tls(mx_facts, now),
            "spf": check_spf_record(domain, self.resolver),
            "dkim": check_dkim_keys(domain, self.resolver, o.selectors),
            "dmarc": check_dmarc_record(domain, self.resolver),
            "mta_sts": check_mta_sts(
                domain, self.resolver, hosts, https_port=o.https_port, ca_file=o.ca_file,
                timeout=o.timeout,
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
        self, domains: Iterable[str], *, concurrency: int = 50
    ) -> AsyncIterator[DomainReport]:
        """Reports as they complete, at most ``concurrency`` domains in flight, streaming
        the input so a million-line list never sits in memory (only the names seen).

        Each domain is checked once however it is written (``NHS.NET``, ``nhs.net.``, an
        IDNA form): the first spelling in input order is the one checked."""
        pending: set[asyncio.Task[DomainReport]] = set()
        seen: set[str] = set()
        for domain in domains:
            if not domain.strip() or domain.lstrip().startswith("#"):
                continue
            key = domain_key(domain)
            if key in seen:
                continue
            seen.add(key)
            if len(pending) >= concurrency:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
            pending.add(asyncio.ensure_future(self.check(domain)))
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                yield task.result()

    async def _tls(self, mx_facts: dict[str, object], now: dt.datetime) -> Result:
        if not self.options.tls or "tls" not in self.options.only:
            return [], {}
        targets: list[tuple[str, str]] = []
        for entry in mx_facts.get("mx", [])[: self.options.max_mx]:  # type: ignore[index]
            host = entry["host"]
            for ip in entry.get("addresses", [])[: self.options.max_addresses]:
                targets.append((host, ip))
        probes = await asyncio.gather(*(self._probe(host, ip) for host, ip in targets))
        findings = [f for probe in probes for f in evaluate_tls(probe, now=now)]
        return findings, {"tls": [probe.to_json() for probe in probes]}

    def _probe(self, host: str, ip: str) -> asyncio.Future[TlsProbe]:
        key = (host, ip)
        if key not in self._probes:
            if len(self._probes) > 20000:
                self._probes.clear()
            self._probes[key] = asyncio.ensure_future(
                probe_tls(
                    host, ip, self.options.smtp_port, ca_file=self.options.ca_file,
                    timeout=self.options.timeout,
                )
            )  # fmt: skip
        return self._probes[key]

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


def domain_key(text: str) -> str:
    """The name ``text`` is checked under (``normalise_domain``), or the trimmed text
    itself when it is not a domain name, so that repeated junk is reported once too."""
    try:
        return normalise_domain(text.strip())
    except AddressError:
        return text.strip()
