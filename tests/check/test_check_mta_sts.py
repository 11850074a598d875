"""MTA-STS (RFC 8461): record and policy parsing, MX matching, the HTTPS fetch, the check."""

import time

import pytest
from harness.httpsserver import HttpsServer, Route

from securemail.check.model import Status, verdict
from securemail.check.rules.mta_sts import (
    MAX_POLICY_BYTES,
    WELL_KNOWN,
    MtaStsError,
    MtaStsPolicy,
    check_mta_sts,
    fetch_policy,
    mx_matches,
    parse_policy,
    parse_txt_record,
)
from securemail.dns import Resolver

DOMAIN = "example.nhs.uk"
HOST = f"mta-sts.{DOMAIN}"
POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.nhs.uk\r\nmx: *.mail.example.nhs.uk\r\nmax_age: 604800\r\n"


# --- the _mta-sts TXT record ------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        (["v=STSv1;id=abc"], "abc"),
        (["v=STSv1 ; id=abc ; "], "abc"),
        (["v=STSv1; id=abc; ext.v-2=value"], "abc"),
        (["v=spf1 -all", "v=STSv1; id=x1"], "x1"),  # other TXT records are ignored
        (["v=STSv1; id=" + "a" * 32], "a" * 32),
    ],
)
def test_txt_record_valid(records, expected):
    assert parse_txt_record(records) == (expected, "")


@pytest.mark.parametrize("records", [[], ["v=spf1 -all"], ["v=STSv10; id=1"], ["v=stsv1; id=1"]])
def test_txt_record_absent(records):
    assert parse_txt_record(records) == (None, "")


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        (["v=STSv1; id=a", "v=STSv1; id=b"], "2 v=STSv1 records (there must be exactly one)"),
        (["v=STSv1"], "no id= field"),
        (["v=STSv1;"], "no id= field"),
        (["v=STSv1; id="], "malformed field 'id='"),
        (["v=STSv1; id=abc;;"], "malformed field ''"),
        (["v=STSv1; id abc"], "malformed field 'id abc'"),
        (["v=STSv1; id=abc-def"], "id 'abc-def' must be 1 to 32 letters and digits"),
        (["v=STSv1; id=" + "a" * 33], "must be 1 to 32 letters and digits"),
        (["v=STSv1; id=a; id=b"], "duplicate field 'id'"),
    ],
)
def test_txt_record_problems(records, problem):
    record_id, found = parse_txt_record(records)
    assert record_id is None
    assert problem in found


# --- the policy file --------------------------------------------------------------------


def test_policy_crlf():
    assert parse_policy(POLICY) == MtaStsPolicy(
        "STSv1", "enforce", ("mx1.example.nhs.uk", "*.mail.example.nhs.uk"), 604800, ()
    )


@pytest.mark.parametrize(
    ("text", "mode", "mx", "max_age"),
    [
        (
            "version: STSv1\nmode: testing\nmx: a.example\nmax_age: 86400\n",
            "testing",
            ("a.example",),
            86400,
        ),
        (
            "version: STSv1\nmode: testing\nmx: a.example\nmax_age: 86400",
            "testing",
            ("a.example",),
            86400,
        ),
        (
            "version: STSv1\nmode:enforce\nmx:\ta.example \nmax_age: 0\n\n",
            "enforce",
            ("a.example",),
            0,
        ),
        ("version: STSv1\nmode: none\nmax_age: 31557600\n", "none", (), 31557600),
        (
            "version: STSv1\r\nmax_age: 5\r\nmx: b.example\r\nmode: enforce\r\nmx: *.c.example\r\n",
            "enforce",
            ("b.example", "*.c.example"),
            5,
        ),
    ],
)
def test_policy_valid(text, mode, mx, max_age):
    policy = parse_policy(text)
    assert (policy.version, policy.mode, policy.mx, policy.max_age) == ("STSv1", mode, mx, max_age)
    assert policy.warnings == ()


GOOD = ["version: STSv1", "mode: enforce", "mx: mx.example.nhs.uk", "max_age: 604800"]


def _with(line: int, text: str) -> str:
    """GOOD with line ``line`` (1-based) replaced by ``text``."""
    lines = list(GOOD)
    lines[line - 1] = text
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (_with(1, "version: STSv2"), "line 1: version must be 'STSv1', got 'STSv2'"),
        (_with(1, "foo: bar"), "missing required field 'version'"),
        (
            "mode: enforce\nversion: STSv1\nmx: a.example\nmax_age: 1\n",
            "line 2: 'version: STSv1' must be the first line",
        ),
        (_with(2, "mode: strict"), "line 2: mode must be enforce, testing or none, got 'strict'"),
        (_with(2, "mode: Enforce"), "line 2: mode must be enforce, testing or none"),
        (
            _with(2, "Mode: enforce"),
            "line 2: field names are case-sensitive: 'Mode' must be 'mode'",
        ),
        (_with(2, "x: y"), "missing required field 'mode'"),
        (_with(3, "x: y"), "no 'mx' field: mode enforce needs at least one"),
        (_with(4, "max_age: 31557601"), "line 4: max_age must be whole seconds 0 to 31557600"),
        (_with(4, "max_age: -1"), "line 4: max_age must be whole seconds"),
        (_with(4, "max_age: 1e5"), "line 4: max_age must be whole seconds"),
        (_with(4, "max_age: 12345678901"), "line 4: max_age must be whole seconds"),
        (_with(4, "x: y"), "missing required field 'max_age'"),
        (
            _with(3, "mx mx.example.nhs.uk"),
            "line 3: expected 'key: value', got 'mx mx.example.nhs.uk'",
        ),
        (_with(3, " mx: mx.example.nhs.uk"), "line 3: expected 'key: value'"),
        (_with(3, "mx: mx..example.nhs.uk"), "line 3: mx 'mx..example.nhs.uk': not a host name"),
        (_with(3, "mx: a.*.example.nhs.uk"), "line 3: mx 'a.*.example.nhs.uk': not a host name"),
        (_with(3, "mx: *"), "line 3: mx '*': not a host name"),
        (_with(3, "mx: *."), "line 3: mx '*.': a wildcard must be followed by a domain"),
        (_with(3, "mx: *.uk"), "line 3: mx '*.uk': a wildcard must be followed by a domain"),
        (_with(3, "mx: 192.0.2.1"), "line 3: mx '192.0.2.1': an IP address is not allowed"),
        (_with(3, "mx:"), "line 3: mx '': not a host name"),
        ("\n".join([*GOOD, "mode: testing"]), "line 5: duplicate 'mode' (first on line 2)"),
        ("\n".join([*GOOD, "max_age: 1"]), "line 5: duplicate 'max_age' (first on line 4)"),
        ("\n".join([*GOOD, "version: STSv1"]), "line 5: 'version: STSv1' must be the first line"),
        ("", "missing required field 'version'"),
    ],
)
def test_policy_errors(text, error):
    with pytest.raises(MtaStsError) as info:
        parse_policy(text)
    assert error in str(info.value)


def test_policy_reports_every_error_with_its_line():
    text = "version: STSv1\nmode: sometimes\nmx: bad..name\nmax_age: forever\n"
    with pytest.raises(MtaStsError) as info:
        parse_policy(text)
    message = str(info.value)
    assert message.startswith("line 2: mode must be")
    assert "; line 3: mx 'bad..name'" in message
    assert "; line 4: max_age must be" in message


def test_policy_repeated_mx_is_not_a_duplicate():
    policy = parse_policy("\n".join([*GOOD, "mx: mx2.example.nhs.uk", "mx: *.example.net"]))
    assert policy.mx == ("mx.example.nhs.uk", "mx2.example.nhs.uk", "*.example.net")


@pytest.mark.parametrize(
    ("text", "warnings"),
    [
        ("\n".join([*GOOD, "foo: bar"]), ("line 5: unknown field 'foo' (ignored)",)),
        ("\n".join([*GOOD[:2], "", *GOOD[2:]]), ("line 3: blank line",)),
        (
            _with(3, "mx: mx.example.nhs.uk."),
            ("line 3: mx 'mx.example.nhs.uk.' has a trailing dot",),
        ),
        (
            "\n".join([GOOD[0], "ext: 1", *GOOD[1:], "other: 2"]),
            ("line 2: unknown field 'ext' (ignored)", "line 6: unknown field 'other' (ignored)"),
        ),
    ],
)
def test_policy_warnings(text, warnings):
    policy = parse_policy(text)
    assert policy.warnings == warnings
    assert policy.mode == "enforce"


# --- MX pattern matching ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host"),
    [
        ("mx.example.com", "mx.example.com"),
        ("MX.Example.COM", "mx.example.com"),
        ("mx.example.com", "MX.EXAMPLE.COM"),
        ("mx.example.com.", "mx.example.com"),
        ("mx.example.com", "mx.example.com."),
        ("*.example.com", "mx.example.com"),
        ("*.example.com", "MX1.Example.Com."),
        ("*.Example.com.", "mx1.example.com"),
        ("*.mail.example.com", "a.mail.example.com"),
    ],
)
def test_mx_matches_permit(pattern, host):
    assert mx_matches(pattern, host)


@pytest.mark.parametrize(
    ("pattern", "host"),
    [
        ("mx.example.com", "mx2.example.com"),
        ("mx.example.com", "example.com"),
        ("mx.example.com", "a.mx.example.com"),
        ("mx.example.com", "mx.example.com.evil.net"),
        ("*.example.com", "a.b.example.com"),  # one label only
        ("*.example.com", "example.com"),
        ("*.example.com", "mx.example.com.evil.net"),  # anchored at the end
        ("*.example.com", "evilexample.com"),
        ("*.example.com", "mx.evilexample.com"),
        ("*.example.com", ".example.com"),
        ("example.com", "evilexample.com"),
        ("*", "mx.example.com"),
        ("*.", "mx."),
        ("*.*.example.com", "a.b.example.com"),
        ("mx.*.com", "mx.example.com"),
        ("", "mx.example.com"),
        ("mx.example.com", ""),
        ("mx.example.com.evil.net", "mx.example.com"),
    ],
)
def test_mx_matches_reject(pattern, host):
    assert not mx_matches(pattern, host)


# --- fetching the policy over HTTPS -----------------------------------------------------


async def _loopback(_host: str) -> str:
    return "127.0.0.1"


def _server(pki, routes, *, trusted=True, names=(HOST,)):
    return HttpsServer(pki.server_context(*names, trusted=trusted), routes)


async def _fetch(srv, pki, **kw):
    kw.setdefault("ca_file", pki.ca_file)
    kw.setdefault("timeout", 5.0)
    return await fetch_policy(DOMAIN, https_port=srv.port, resolve=_loopback, **kw)


async def test_fetch_ok_verifies_the_policy_host_name(pki):
    routes = {WELL_KNOWN: Route(200, "text/plain; charset=utf-8", POLICY)}
    with _server(pki, routes) as srv:
        assert await _fetch(srv, pki) == POLICY
    assert srv.sni == [HOST]  # connected to 127.0.0.1, but TLS asked for the name
    assert srv.requests == [(WELL_KNOWN, f"{HOST}:{srv.port}")]


async def test_fetch_with_base_url(pki):
    routes = {WELL_KNOWN: Route(200, "text/plain", POLICY)}
    with _server(pki, routes, names=(HOST, "127.0.0.1")) as srv:
        text = await fetch_policy(DOMAIN, base_url=srv.url + "/", ca_file=pki.ca_file)
    assert text == POLICY
    assert srv.requests[0][0] == WELL_KNOWN


async def test_fetch_404(pki):
    with (
        _server(pki, {}) as srv,
        pytest.raises(MtaStsError, match=r"HTTP 404 Not Found \(must be 200\)"),
    ):
        await _fetch(srv, pki)


async def test_fetch_refuses_redirect(pki):
    routes = {
        WELL_KNOWN: Route(301, "text/plain", "", location="/moved.txt"),
        "/moved.txt": Route(200, "text/plain", POLICY),
    }
    with _server(pki, routes) as srv:
        with pytest.raises(MtaStsError) as info:
            await _fetch(srv, pki)
        assert "HTTP 301 redirect to '/moved.txt' (RFC 8461 forbids redirects)" in str(info.value)
    assert [path for path, _host in srv.requests] == [WELL_KNOWN]  # not followed


async def test_fetch_refuses_html(pki):
    routes = {WELL_KNOWN: Route(200, "text/html", POLICY)}
    with (
        _server(pki, routes) as srv,
        pytest.raises(MtaStsError, match="Content-Type is 'text/html' \\(must be text/plain\\)"),
    ):
        await _fetch(srv, pki)


async def test_fetch_refuses_untrusted_certificate(pki):
    routes = {WELL_KNOWN: Route(200, "text/plain", POLICY)}
    with _server(pki, routes, trusted=False) as srv:
        with pytest.raises(MtaStsError) as info:
            await _fetch(srv, pki)
        assert "TLS error" in str(info.value)
        assert "certificate" in str(info.value)
    assert srv.requests == []


async def test_fetch_refuses_certificate_for_another_name(pki):
    routes = {WELL_KNOWN: Route(200, "text/plain", POLICY)}
    with (
        _server(pki, routes, names=("www.example.nhs.uk",)) as srv,
        pytest.raises(MtaStsError, match=r"TLS error: .*Hostname mismatch"),
    ):
        await _fetch(srv, pki)
    assert srv.requests == []


async def test_fetch_without_the_test_ca_is_untrusted(pki):
    routes = {WELL_KNOWN: Route(200, "text/plain", POLICY)}
    with _server(pki, routes) as srv, pytest.raises(MtaStsError, match="TLS error"):
        await _fetch(srv, pki, ca_file=None)


async def test_fetch_slow_server_times_out(pki):
    routes = {WELL_KNOWN: Route(200, "text/plain", POLICY, delay=10.0)}
    with _server(pki, routes) as srv:
        start = time.monotonic()
        with pytest.raises(MtaStsError, match=r"no answer within 0.5 s"):
            await _fetch(srv, pki, timeout=0.5)
        assert time.monotonic() - start < 2.0


@pytest.mark.parametrize(
    ("content_length", "error"),
    [(True, r"policy is 65537 bytes \(limit 65536\)$"), (False, r"policy is over 65536 bytes$")],
)
async def test_fetch_refuses_oversized_body(pki, content_length, error):
    big = "x" * (MAX_POLICY_BYTES + 1)
    routes = {WELL_KNOWN: Route(200, "text/plain", big, content_length=content_length)}
    with _server(pki, routes) as srv, pytest.raises(MtaStsError, match=error):
        await _fetch(srv, pki)


async def test_fetch_accepts_exactly_64_kib(pki):
    body = "x" * MAX_POLICY_BYTES
    routes = {WELL_KNOWN: Route(200, "text/plain", body, content_length=False)}
    with _server(pki, routes) as srv:
        assert await _fetch(srv, pki) == body


async def test_fetch_connection_refused(pki):
    with _server(pki, {}) as srv:
        port = srv.port
    with pytest.raises(MtaStsError, match=f"https://127.0.0.1:{port}{WELL_KNOWN}: "):
        await fetch_policy(DOMAIN, https_port=port, resolve=_loopback, ca_file=pki.ca_file)


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
    assert [(f.check, f.status) for f in findings] == [("mta_sts.dns_error", Status.WARN)]
    assert f"_mta-sts.{DOMAIN}" in findings[0].message
