"""A world of many domains for the bulk tests: DNS, STARTTLS and MTA-STS on loopback.

Domain ``c<i>.example`` is set up the way a careful organisation sets one up: an MX host
of its own (``mx-c<i>.sweep.test``, STARTTLS with a test-CA certificate for
``*.sweep.test``), forward-confirmed reverse DNS (shared: every host is 127.0.0.1), SPF
through an include, a DKIM key behind a CNAME, DMARC ``p=reject`` reporting to another
organisation that authorises it, MTA-STS in enforce mode and TLS-RPT. ``flawed(i)``
domains break on purpose (``+all``, no DMARC, ``p=none``), so runs have every verdict.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from harness.dnsserver import DnsServer
from harness.httpsserver import HttpsServer, Route
from harness.pki import TestPKI
from harness.smtpsink import SinkServer

from securemail.check.runner import CheckOptions
from securemail.dns import Resolver
from securemail.mech.mta_sts import WELL_KNOWN

POLICY = "version: STSv1\nmode: enforce\nmx: *.sweep.test\nmax_age: 604800\n"
SHARED_NAMES = ("1.0.0.127.in-addr.arpa", "ptr.sweep.test")  # every domain's MX asks these


def name(i: int) -> str:
    return f"c{i}.example"


def flawed(i: int) -> str:
    """What is wrong with domain ``i`` on purpose ("" for nothing)."""
    if i % 5 == 4:
        return "spf +all"
    if i % 7 == 6:
        return "no dmarc"
    return "dmarc p=none" if i % 3 == 2 else ""


@cache
def _dkim_record() -> str:
    from securemail.mech.dkim import generate_key

    return generate_key("rsa", 2048)[1]


def publish(dns: DnsServer, i: int, *, flaws: bool = True) -> None:
    d, host = name(i), f"mx-c{i}.sweep.test"
    flaw = flawed(i) if flaws else ""
    dns.add(d, "MX", f"10 {host}.")
    dns.add(host, "A", "127.0.0.1")
    dns.add(d, "TXT", "v=spf1 +all" if flaw == "spf +all" else f"v=spf1 include:_spf.{d} -all")
    dns.add(f"_spf.{d}", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    dns.add(f"s1._domainkey.{d}", "CNAME", f"key.{d}.")
    dns.add(f"key.{d}", "TXT", _dkim_record())
    if flaw != "no dmarc":
        policy = "none" if flaw == "dmarc p=none" else "reject"
        dns.add(f"_dmarc.{d}", "TXT", f"v=DMARC1; p={policy}; rua=mailto:agg@reports-c{i}.test")
        dns.add(f"{d}._report._dmarc.reports-c{i}.test", "TXT", "v=DMARC1")
    dns.add(f"_mta-sts.{d}", "TXT", "v=STSv1; id=1")
    dns.add(f"mta-sts.{d}", "A", "127.0.0.1")
    dns.add(f"_smtp._tls.{d}", "TXT", f"v=TLSRPTv1; rua=mailto:tlsrpt@{d}")


@dataclass
class World:
    """The running world; tests reach the helpers through it (``bulk_world.name(3)``)."""

    shared_names = SHARED_NAMES
    name = staticmethod(name)
    flawed = staticmethod(flawed)

    dns: DnsServer
    smtp: SinkServer
    https: HttpsServer
    ca_file: Path
    config: Path
    domains: list[str] = field(default_factory=list)

    def resolver(self, timeout: float = 2.0) -> Resolver:
        return Resolver([self.dns.nameserver], timeout=timeout)

    def options(self, **changes: object) -> CheckOptions:
        base: dict[str, object] = {
            "smtp_port": self.smtp.port, "https_port": self.https.port, "timeout": 3.0,
            "ca_file": self.ca_file,
        }  # fmt: skip
        return CheckOptions(**(base | changes))  # type: ignore[arg-type]


WORLD_SIZE = 60


@pytest.fixture
def bulk_world(
    request: pytest.FixtureRequest, pki: TestPKI, dns_server: DnsServer, tmp_path: Path
) -> Iterator[World]:
    """``WORLD_SIZE`` domains (``c0.example``...), published with their flaws unless the
    test asks for a healthy world (``@pytest.mark.parametrize("bulk_world", [False],
    indirect=True)``)."""
    flaws = getattr(request, "param", True)
    smtp_ctx = pki.server_context("*.sweep.test")
    https_ctx = pki.server_context(*(f"mta-sts.{name(i)}" for i in range(WORLD_SIZE)))
    routes = {WELL_KNOWN: Route(200, "text/plain", POLICY)}
    dns_server.add("1.0.0.127.in-addr.arpa", "PTR", "ptr.sweep.test.")
    dns_server.add("ptr.sweep.test", "A", "127.0.0.1")
    for i in range(WORLD_SIZE):
        publish(dns_server, i, flaws=flaws)
    with (
        SinkServer(hostname="mx.sweep.test", tls_context=smtp_ctx) as smtp,
        HttpsServer(https_ctx, routes) as https,
    ):
        config = tmp_path / "securemail.toml"
        # The loopback servers share this process: a modest concurrency and a DNS timeout
        # with room for a retry keep them from being the ones that time out.
        config.write_text(
            f'[dns]\nnameservers = ["{dns_server.nameserver}"]\ntimeout = 5.0\n'
            f'[tls]\nca_file = "{pki.ca_file}"\n'
            f"[check]\nsmtp_port = {smtp.port}\nhttps_port = {https.port}\ntimeout = 3.0\n"
            "concurrency = 10\n"
        )
        yield World(
            dns_server, smtp, https, pki.ca_file, config, [name(i) for i in range(WORLD_SIZE)]
        )
