"""MTA-STS rules: the whole check, with real DNS and HTTPS on loopback."""

import pytest
from harness.httpsserver import HttpsServer, Route

from securemail.check.model import Status, verdict
from securemail.check.rules.mta_sts import check_mta_sts
from securemail.dns import Resolver
from securemail.mech.mta_sts import WELL_KNOWN

DOMAIN = "example.nhs.uk"
HOST = f"mta-sts.{DOMAIN}"
POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.nhs.uk\r\nmx: *.mail.example.nhs.uk\r\nmax_age: 604800\r\n"


def _server(pki, routes, *, trusted=True, names=(HOST,)):
    return HttpsServer(pki.server_context(*names, trusted=trusted), routes)


# --- the whole check, with real DNS and HTTPS on loopback -------------------------------


@pytest.fixture
def resolver(dns_server):
    return Resolver([dns_server.nameserver], timeout=2.0)


def _publish(dns_server, record="v=STSv1; id=20240101"):
    dns_server.add(f"_mta-sts.{DOMAIN}", "TXT", record)
    dns_server.add(HOST, "A", "127.0.0.1")


async def _check(srv, pki, resolver, mx_hosts):
    findings, facts = await check_mta_sts(
        DOMAIN, resolver, mx_hosts, https_port=srv.port, ca_file=pki.ca_file, timeout=5.0
    )
    return {(f.check, f.subject): f for f in findings}, findings, facts


async def test_check_policy_covers_every_mx(pki, dns_server, resolver):
    _publish(dns_server)
    routes = {WELL_KNOWN: Route(200, "text/plain", POLICY)}
    with _server(pki, routes) as srv:
        by, findings, facts = await _check(
            srv, pki, resolver, ["mx1.example.nhs.uk", "in.mail.example.nhs.uk."]
        )
    assert verdict(findings) == Status.PASS
    assert [f.check for f in findings] == [
        "mta_sts.record",
        "mta_sts.policy_fetch",
        "mta_sts.policy_syntax",
        "mta_sts.mode",
        "mta_sts.mx_coverage",
        "mta_sts.max_age",
    ]
    assert "id=20240101" in by["mta_sts.record", ""].message
    assert facts == {
        "mta_sts": {
            "id": "20240101",
            "txt": ["v=STSv1; id=20240101"],
            "policy": POLICY,
            "mode": "enforce",
            "mx": ["mx1.example.nhs.uk", "*.mail.example.nhs.uk"],
            "max_age": 604800,
        }
    }
    assert srv.sni == [HOST]


async def test_check_mx_not_covered_fails(pki, dns_server, resolver):
    _publish(dns_server)
    routes = {WELL_KNOWN: Route(200, "text/plain", POLICY)}
    hosts = ["mx1.example.nhs.uk", "a.b.mail.example.nhs.uk", "mx.backup-provider.net"]
    with _server(pki, routes) as srv:
        by, findings, _facts = await _check(srv, pki, resolver, hosts)
    assert verdict(findings) == Status.FAIL
    failures = [f for f in findings if f.status == Status.FAIL]
    assert {f.subject for f in failures} == {"a.b.mail.example.nhs.uk", "mx.backup-provider.net"}
    finding = by["mta_sts.mx_coverage", "mx.backup-provider.net"]
    assert "MX host mx.backup-provider.net not covered" in finding.message
    assert "will refuse to deliver" in finding.message
    assert "mx: mx.backup-provider.net" in finding.fix
    assert ("mta_sts.mx_coverage", "") not in by  # no "all covered" pass


async def test_check_testing_mode_warns(pki, dns_server, resolver):
    _publish(dns_server)
    policy = "version: STSv1\nmode: testing\nmx: mx1.example.nhs.uk\nmax_age: 3600\n"
    routes = {WELL_KNOWN: Route(200, "text/plain", policy)}
    with _server(pki, routes) as srv:
        by, findings, facts = await _check(
            srv, pki, resolver, ["mx1.example.nhs.uk", "mx2.example.nhs.uk"]
        )
    assert verdict(findings) == Status.WARN
    assert by["mta_sts.mode", ""].status == Status.WARN
    assert "not enforced" in by["mta_sts.mode", ""].message
    assert by["mta_sts.mx_coverage", "mx2.example.nhs.uk"].status == Status.WARN
    assert by["mta_sts.max_age", ""].status == Status.WARN
    assert "too short to protect" in by["mta_sts.max_age", ""].message
    assert facts["mta_sts"]["mode"] == "testing"


async def test_check_mode_none_warns_and_skips_coverage(pki, dns_server, resolver):
    _publish(dns_server)
    routes = {WELL_KNOWN: Route(200, "text/plain", "version: STSv1\nmode: none\nmax_age: 86400\n")}
    with _server(pki, routes) as srv:
        by, findings, _facts = await _check(srv, pki, resolver, ["mx1.example.nhs.uk"])
    assert by["mta_sts.mode", ""].status == Status.WARN
    assert not any(f.check == "mta_sts.mx_coverage" for f in findings)
    assert by["mta_sts.max_age", ""].status == Status.PASS


async def test_check_no_record_warns(dns_server, resolver):
    dns_server.add(DOMAIN, "MX", "10 mx1.example.nhs.uk.")
    findings, facts = await check_mta_sts(DOMAIN, resolver, ["mx1.example.nhs.uk"])
    assert [(f.check, f.status) for f in findings] == [("mta_sts.record", Status.WARN)]
    assert "government guidance recommends MTA-STS" in findings[0].fix
    assert facts["mta_sts"]["id"] is None


async def test_check_two_records_fail(dns_server, resolver):
    dns_server.add(f"_mta-sts.{DOMAIN}", "TXT", "v=STSv1; id=1", "v=STSv1; id=2")
    findings, _facts = await check_mta_sts(DOMAIN, resolver, [])
    assert [(f.check, f.status) for f in findings] == [("mta_sts.record", Status.FAIL)]
    assert "2 v=STSv1 records" in findings[0].message


async def test_check_policy_not_served(pki, dns_server, resolver):
    _publish(dns_server)
    with _server(pki, {}) as srv:
        by, _findings, facts = await _check(srv, pki, resolver, ["mx1.example.nhs.uk"])
    assert by["mta_sts.record", ""].status == Status.PASS
    assert by["mta_sts.policy_fetch", ""].status == Status.FAIL
    assert "HTTP 404" in by["mta_sts.policy_fetch", ""].message
    assert "text/plain" in by["mta_sts.policy_fetch", ""].fix
    assert "policy" not in facts["mta_sts"]


async def test_check_policy_host_without_address(pki, dns_server, resolver):
    dns_server.add(f"_mta-sts.{DOMAIN}", "TXT", "v=STSv1; id=1")
    findings, _facts = await check_mta_sts(DOMAIN, resolver, [], ca_file=pki.ca_file)
    assert findings[-1].check == "mta_sts.policy_fetch"
    assert findings[-1].status == Status.FAIL
    assert HOST in findings[-1].message


async def test_check_policy_syntax_error(pki, dns_server, resolver):
    _publish(dns_server)
    routes = {WELL_KNOWN: Route(200, "text/plain", "version: STSv1\nmode: strict\nmax_age: 1\n")}
    with _server(pki, routes) as srv:
        by, findings, _facts = await _check(srv, pki, resolver, ["mx1.example.nhs.uk"])
    finding = by["mta_sts.policy_syntax", ""]
    assert finding.status == Status.FAIL
    assert finding.message.startswith("line 2: mode must be enforce, testing or none")
    assert findings[-1] is finding


async def test_check_policy_warnings(pki, dns_server, resolver):
    _publish(dns_server)
    routes = {WELL_KNOWN: Route(200, "text/plain", POLICY + "extra: 1\r\n")}
    with _server(pki, routes) as srv:
        by, _findings, _facts = await _check(srv, pki, resolver, ["mx1.example.nhs.uk"])
    assert by["mta_sts.policy_syntax", ""].status == Status.WARN
    assert "line 6: unknown field 'extra'" in by["mta_sts.policy_syntax", ""].message
    assert by["mta_sts.mode", ""].status == Status.PASS


async def test_check_dns_failure_warns(dns_server, resolver):
    dns_server.add(f"_mta-sts.{DOMAIN}", "TXT", "v=STSv1; id=1")
    dns_server.behave(f"_mta-sts.{DOMAIN}", "servfail")
    findings, _facts = await check_mta_sts(DOMAIN, resolver, [])
    assert [(f.check, f.status) for f in findings] == [("mta_sts.dns_error", Status.ERROR)]
    assert f"_mta-sts.{DOMAIN}" in findings[0].message


async def test_check_policy_host_silent_is_could_not_check(pki, dns_server, resolver):
    """No answer is no finding: the policy host may be slow or the checker late, so a
    fetch that times out is ``error`` (could not check), never ``fail``."""
    _publish(dns_server)
    routes = {WELL_KNOWN: Route(200, "text/plain", POLICY, delay=10.0)}
    with _server(pki, routes) as srv:
        findings, _facts = await check_mta_sts(
            DOMAIN, resolver, [], https_port=srv.port, ca_file=pki.ca_file, timeout=0.5
        )
    assert (findings[-1].check, findings[-1].status) == ("mta_sts.policy_fetch", Status.ERROR)
    assert "no answer within 0.5 s" in findings[-1].message
