"""MTA-STS (RFC 8461): record and policy parsing, MX matching, the DNS lookup and HTTPS fetch."""

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator

import pytest
from harness.httpsserver import HttpsServer, Route

from securemail.dns import DnsTemporaryError, Resolver
from securemail.mech.mta_sts import (
    MAX_POLICY_BYTES,
    WELL_KNOWN,
    MtaStsError,
    MtaStsPolicy,
    fetch_policy,
    lookup_record,
    mx_matches,
    parse_policy,
    parse_txt_record,
    policy_covers,
)
from securemail.mech.mta_sts.lookup import PolicyClient, PolicyHostCertificateError, policy_context

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


def test_policy_covers_a_host_when_any_pattern_matches():
    policy = parse_policy(POLICY)
    assert policy_covers(policy, "mx1.example.nhs.uk")
    assert policy_covers(policy, "relay.mail.example.nhs.uk")
    assert not policy_covers(policy, "mx2.example.nhs.uk")
    assert not policy_covers(policy, "a.relay.mail.example.nhs.uk")
    withdrawn = MtaStsPolicy("STSv1", "none", (), 86400, ())
    assert not policy_covers(withdrawn, "mx1.example.nhs.uk")


# --- the _mta-sts TXT lookup ------------------------------------------------------------


async def test_lookup_record_returns_every_txt_string(dns_server):
    dns_server.add(f"_mta-sts.{DOMAIN}", "TXT", "v=STSv1; id=1", "unrelated")
    resolver = Resolver([dns_server.nameserver], timeout=2.0)
    assert sorted(await lookup_record(DOMAIN.upper() + ".", resolver)) == [
        "unrelated",
        "v=STSv1; id=1",
    ]


async def test_lookup_record_absent_is_empty(dns_server):
    resolver = Resolver([dns_server.nameserver], timeout=2.0)
    assert await lookup_record(DOMAIN, resolver) == []


async def test_lookup_record_dns_failure_is_never_absence(dns_server):
    dns_server.add(f"_mta-sts.{DOMAIN}", "TXT", "v=STSv1; id=1")
    dns_server.behave(f"_mta-sts.{DOMAIN}", "servfail")
    resolver = Resolver([dns_server.nameserver], timeout=2.0)
    with pytest.raises(DnsTemporaryError):
        await lookup_record(DOMAIN, resolver)


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


# --- one client for a run of fetches ------------------------------------------------------


@contextlib.asynccontextmanager
async def _keep_alive_server(context: ssl.SSLContext) -> AsyncIterator[tuple[int, list[int]]]:
    """An HTTPS server that keeps every connection open for more requests (as most do,
    whatever the client's ``Connection`` header says); yields its port and the number of
    requests each connection carried."""
    carried: list[int] = []
    body = POLICY.encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        carried.append(0)
        slot = len(carried) - 1
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                carried[slot] += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n")
                writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], carried
    finally:
        server.close()
        await server.wait_closed()


async def test_shared_client_never_reuses_a_connection_across_policy_hosts(pki):
    """Two policy hosts at one address (a hosting provider's), the certificate valid for
    the first only: the second fetch must verify its own certificate on its own
    connection, and fail, not ride the first host's verified connection."""
    context = pki.server_context(HOST)
    async with (
        _keep_alive_server(context) as (port, carried),
        PolicyClient(ca_file=pki.ca_file, timeout=5.0, resolve=_loopback) as client,
    ):
        assert await client.fetch(DOMAIN, https_port=port) == POLICY
        assert await client.fetch(DOMAIN, https_port=port) == POLICY
        with pytest.raises(PolicyHostCertificateError, match="Hostname mismatch"):
            await client.fetch("other.example", https_port=port)
    assert carried == [1, 1]  # one request per connection; the third never got one


async def test_policy_context_is_built_once_per_ca_file_version(pki, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.ca_file.read_bytes())
    first = policy_context(ca_file)
    assert policy_context(ca_file) is first
    ca_file.write_bytes(pki.ca_file.read_bytes() + b"\n")  # replaced: read again
    assert policy_context(ca_file) is not first
    assert policy_context(None) is policy_context(None)
