"""The resolver against a real DNS server on loopback, and that server's own semantics."""

import asyncio
import socket
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from harness.dnsserver import DnsServer

from securemail.config import DnsConfig
from securemail.dns import (
    MAX_ADDRESSES,
    MAX_MX_HOSTS,
    DnsError,
    DnsNotFound,
    DnsTemporaryError,
    MxHost,
    MxResult,
    Resolver,
)


@pytest.fixture
def resolver(dns_server):
    return Resolver([dns_server.nameserver], timeout=2.0)


def ask(server, name, rdtype, *, tcp=False):
    query = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, server.host, port=server.port, timeout=2)


# --- MX ---------------------------------------------------------------------------------


async def test_mx_hosts_sorted_by_preference_then_name(dns_server, resolver):
    dns_server.add("nhs.net", "MX", "20 b.mx.nhs.net.", "10 Z.MX.nhs.net.", "20 a.mx.nhs.net.")
    result = await resolver.mx("NHS.net.")
    assert result == MxResult(
        "nhs.net",
        (MxHost(10, "z.mx.nhs.net"), MxHost(20, "a.mx.nhs.net"), MxHost(20, "b.mx.nhs.net")),
    )


async def test_mx_duplicate_targets_keep_the_best_preference(dns_server, resolver):
    dns_server.add("dup.test", "MX", "30 mx.dup.test.", "5 mx.dup.test.", "10 other.dup.test.")
    result = await resolver.mx("dup.test")
    assert result.hosts == (MxHost(5, "mx.dup.test"), MxHost(10, "other.dup.test"))


@pytest.mark.parametrize(("rdtype", "address"), [("A", "127.0.0.5"), ("AAAA", "::1")])
async def test_no_mx_but_an_address_is_implicit_mx(dns_server, resolver, rdtype, address):
    dns_server.add("implicit.test", rdtype, address)
    result = await resolver.mx("implicit.test")
    assert result.implicit
    assert not result.null
    assert result.hosts == (MxHost(0, "implicit.test"),)


async def test_null_mx_means_no_mail(dns_server, resolver):
    dns_server.add("nomail.test", "MX", "0 .")
    dns_server.add("nomail.test", "A", "127.0.0.1")
    result = await resolver.mx("nomail.test")
    assert result.null
    assert result.hosts == ()
    assert not result.implicit


async def test_null_mx_among_real_hosts_is_ignored(dns_server, resolver):
    dns_server.add("mixed.test", "MX", "0 .", "10 mx.mixed.test.")
    result = await resolver.mx("mixed.test")
    assert not result.null
    assert result.hosts == (MxHost(10, "mx.mixed.test"),)


async def test_nxdomain_is_not_found(dns_server, resolver):
    dns_server.add("exists.test", "A", "127.0.0.1")
    with pytest.raises(DnsNotFound, match=r"^MX missing\.test: no such domain \(NXDOMAIN\)$"):
        await resolver.mx("missing.test")


async def test_no_mx_and_no_address_is_not_found(dns_server, resolver):
    dns_server.add("textonly.test", "TXT", "v=spf1 -all")
    with pytest.raises(DnsNotFound, match="no MX record and no A/AAAA address"):
        await resolver.mx("textonly.test")


@pytest.mark.parametrize("mode", ["servfail", "refused"])
async def test_server_failure_is_temporary(dns_server, resolver, mode):
    dns_server.add("broken.test", "MX", "10 mx.broken.test.")
    dns_server.behave("broken.test", mode)
    with pytest.raises(DnsTemporaryError) as info:
        await resolver.mx("broken.test")
    message = str(info.value)
    assert message.startswith("MX broken.test: no nameserver answered")
    assert f"{dns_server.nameserver}: {mode.upper()}" in message
    assert "\n" not in message


async def test_failure_finding_implicit_mx_address_is_temporary_not_absent(dns_server, resolver):
    """NODATA for MX, then SERVFAIL for A/AAAA must defer, never bounce."""
    dns_server.add("flaky.test", "TXT", "hello")
    dns_server.behave("flaky.test", "servfail")
    with pytest.raises(DnsTemporaryError):
        await resolver.mx("flaky.test")


@pytest.mark.timeout(10)
async def test_timeout_is_temporary_and_bounded_by_the_configured_timeout(dns_server):
    resolver = Resolver([dns_server.nameserver], timeout=0.5)
    dns_server.add("silent.test", "MX", "10 mx.silent.test.")
    dns_server.behave("silent.test", "timeout")
    started = time.monotonic()
    with pytest.raises(DnsTemporaryError) as info:
        await resolver.mx("silent.test")
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 2.0
    assert str(info.value) == (
        f"MX silent.test: DNS timeout after 0.5s (nameservers {dns_server.nameserver})"
    )
    assert ("silent.test", "MX") in dns_server.queries


@pytest.mark.timeout(10)
async def test_no_server_listening_is_temporary():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    resolver = Resolver([f"127.0.0.1:{port}"], timeout=0.5)
    with pytest.raises(DnsTemporaryError, match=r"^MX nhs\.net: "):
        await resolver.mx("nhs.net")


async def test_hostile_mx_targets_are_ignored(dns_server, resolver):
    dns_server.add(
        "hostile.test",
        "MX",
        "10 192.0.2.1.",
        "10 203.0.113.7",
        "20 bad\\032host.hostile.test.",
        "30 under_score.hostile.test.",
        "40 -leading.hostile.test.",
        "50 good.hostile.test.",
    )
    result = await resolver.mx("hostile.test")
    assert result.hosts == (MxHost(50, "good.hostile.test"),)


async def test_only_invalid_mx_targets_is_not_found(dns_server, resolver):
    dns_server.add("allbad.test", "MX", "10 192.0.2.1.", "20 bad\\032host.test.")
    dns_server.add("allbad.test", "A", "127.0.0.1")
    with pytest.raises(DnsNotFound, match="no MX target is a valid host name"):
        await resolver.mx("allbad.test")


async def test_mx_hosts_are_capped(dns_server, resolver):
    dns_server.add("many.test", "MX", *(f"{n} mx{n:02d}.many.test." for n in range(30, 0, -1)))
    result = await resolver.mx("many.test")
    assert len(result.hosts) == MAX_MX_HOSTS == 20
    assert result.hosts[0] == MxHost(1, "mx01.many.test")
    assert result.hosts[-1] == MxHost(20, "mx20.many.test")


async def test_mx_reports_the_ad_flag(dns_server, resolver):
    dns_server.add("signed.test", "MX", "10 mx.signed.test.")
    dns_server.add("unsigned.test", "MX", "10 mx.unsigned.test.")
    assert not (await resolver.mx("unsigned.test")).dnssec
    dns_server.set_ad(True)
    assert (await resolver.mx("signed.test")).dnssec


async def test_invalid_name_is_not_found_without_asking(dns_server, resolver):
    with pytest.raises(DnsNotFound, match="not a valid DNS name"):
        await resolver.mx("a..b.test")
    with pytest.raises(DnsNotFound, match="empty name"):
        await resolver.mx("")
    assert dns_server.queries == []


def test_errors_share_a_base_class():
    assert issubclass(DnsNotFound, DnsError)
    assert issubclass(DnsTemporaryError, DnsError)
    assert not issubclass(DnsTemporaryError, DnsNotFound)


# --- addresses, TXT, PTR, TLSA, generic ----------------------------------------------------


async def test_addresses_ipv4_first_deduplicated(dns_server, resolver):
    dns_server.add("dual.test", "AAAA", "::1", "::2")
    dns_server.add("dual.test", "A", "127.0.0.2", "127.0.0.1")
    found = await resolver.addresses("dual.test")
    assert set(found) == {"127.0.0.1", "127.0.0.2", "::1", "::2"}
    assert [":" in address for address in found] == [False, False, True, True]


async def test_addresses_are_capped(dns_server, resolver):
    dns_server.add("wide.test", "A", *(f"127.0.1.{n}" for n in range(1, 21)))
    dns_server.add("wide.test", "AAAA", "::1")
    found = await resolver.addresses("wide.test")
    assert len(found) == MAX_ADDRESSES == 16
    assert all(":" not in address for address in found)


async def test_addresses_not_found(dns_server, resolver):
    dns_server.add("mx.test", "MX", "10 mx.test.")
    with pytest.raises(DnsNotFound, match=r"^A/AAAA mx\.test: no address records$"):
        await resolver.addresses("mx.test")
    with pytest.raises(DnsNotFound):
        await resolver.addresses("nowhere.test")


async def test_txt_joins_character_strings_per_record(dns_server, resolver):
    dns_server.add("nhs.net", "TXT", '"v=spf1 include:a.test " "include:b.test -all"')
    dns_server.add("nhs.net", "TXT", "plain text with spaces")
    assert sorted(await resolver.txt("nhs.net")) == [
        "plain text with spaces",
        "v=spf1 include:a.test include:b.test -all",
    ]


async def test_txt_decodes_utf8_and_replaces_bad_bytes(dns_server, resolver):
    dns_server.add("utf8.test", "TXT", '"caf\\195\\169 \\255"')
    assert await resolver.txt("utf8.test") == ["café \ufffd"]


async def test_txt_nodata_is_empty_and_nxdomain_is_not_found(dns_server, resolver):
    dns_server.add("notext.test", "A", "127.0.0.1")
    assert await resolver.txt("notext.test") == []
    with pytest.raises(DnsNotFound):
        await resolver.txt("_dmarc.nowhere.test")


async def test_big_txt_arrives_over_tcp(dns_server, resolver):
    parts = ["a" * 1000, "b" * 1000, "c" * 1000]
    dns_server.add("big.test", "TXT", *parts)
    assert sorted(await resolver.txt("big.test")) == parts
    assert dns_server.queries.count(("big.test", "TXT")) == 2
    assert dns_server.tcp_queries == [("big.test", "TXT")]


async def test_cname_is_followed(dns_server, resolver):
    dns_server.add("alias.test", "CNAME", "real.test.")
    dns_server.add("real.test", "A", "127.0.0.9")
    dns_server.add("real.test", "TXT", "via cname")
    assert await resolver.addresses("alias.test") == ["127.0.0.9"]
    assert await resolver.txt("ALIAS.test") == ["via cname"]


async def test_tlsa_records_and_ad_flag(dns_server, resolver):
    digest = "ab" * 32
    dns_server.add("_25._tcp.mx.test", "TLSA", f"3 1 1 {digest}", "2 0 1 " + "cd" * 32)
    records, authenticated = await resolver.tlsa("_25._tcp.mx.test")
    assert sorted(records) == [
        (2, 0, 1, bytes.fromhex("cd" * 32)),
        (3, 1, 1, bytes.fromhex(digest)),
    ]
    assert authenticated is False
    dns_server.set_ad(True)
    dns_server.add("_25._tcp.mx2.test", "TLSA", f"3 1 1 {digest}")
    assert await resolver.tlsa("_25._tcp.mx2.test") == ([(3, 1, 1, bytes.fromhex(digest))], True)
    dns_server.add("mx3.test", "A", "127.0.0.1")
    assert await resolver.tlsa("mx3.test") == ([], True)


async def test_ptr(dns_server, resolver):
    dns_server.add("7.0.0.127.in-addr.arpa", "PTR", "Mail.Example.test.")
    assert await resolver.ptr("127.0.0.7") == ["mail.example.test"]
    with pytest.raises(DnsNotFound):
        await resolver.ptr("127.0.0.8")
    with pytest.raises(ValueError):
        await resolver.ptr("not-an-ip")


async def test_generic_query(dns_server, resolver):
    dns_server.add("caa.test", "CAA", '0 issue "letsencrypt.org"')
    answer = await resolver.query("caa.test", "CAA")
    assert answer is not None
    assert [rdata.to_text() for rdata in answer] == ['0 issue "letsencrypt.org"']
    assert await resolver.query("caa.test", "MX") is None
    with pytest.raises(DnsNotFound):
        await resolver.query("nocaa.test", "CAA")


# --- caching and configuration ------------------------------------------------------------


async def test_answers_are_cached(dns_server, resolver):
    dns_server.add("cached.test", "MX", "10 mx.cached.test.")
    first = await resolver.mx("cached.test")
    second = await resolver.mx("cached.test")
    assert first == second
    assert dns_server.queries == [("cached.test", "MX")]


async def test_negative_answers_are_cached(dns_server, resolver):
    dns_server.add("other.test", "A", "127.0.0.1")
    for _ in range(2):
        with pytest.raises(DnsNotFound):
            await resolver.txt("gone.test")
        assert await resolver.txt("other.test") == []
    assert dns_server.queries == [("gone.test", "TXT"), ("other.test", "TXT")]


async def test_cache_can_be_turned_off(dns_server):
    resolver = Resolver([dns_server.nameserver], timeout=2.0, cache=False)
    dns_server.add("fresh.test", "A", "127.0.0.1")
    assert await resolver.addresses("fresh.test") == ["127.0.0.1"]
    dns_server.remove("fresh.test", "A")
    dns_server.add("fresh.test", "A", "127.0.0.2")
    assert await resolver.addresses("fresh.test") == ["127.0.0.2"]
    assert dns_server.queries.count(("fresh.test", "A")) == 2


async def test_from_config(dns_server):
    resolver = Resolver.from_config(DnsConfig(nameservers=(dns_server.nameserver,), timeout=1.5))
    assert resolver.timeout == 1.5
    assert resolver.nameservers == (dns_server.nameserver,)
    dns_server.add("configured.test", "MX", "10 mx.configured.test.")
    assert (await resolver.mx("configured.test")).hosts == (MxHost(10, "mx.configured.test"),)


def test_nameserver_syntax_including_ipv6():
    resolver = Resolver(["[::1]:5353", "::1", "127.0.0.1", "127.0.0.1:5300"], timeout=1.0)
    assert resolver.nameservers == ("[::1]:5353", "[::1]:53", "127.0.0.1:53", "127.0.0.1:5300")
    with pytest.raises(ValueError, match="expected IP or IP:PORT"):
        Resolver(["localhost:53"])


# --- the test server itself (asked directly with dnspython) -------------------------------


def test_server_answers_authoritatively_and_case_insensitively(dns_server):
    dns_server.add("mx.nhs.net", "A", "127.0.0.1")
    response = ask(dns_server, "MX.NHS.NET", "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert not response.flags & dns.flags.AD
    assert [rdata.to_text() for rdata in response.answer[0]] == ["127.0.0.1"]
    assert dns_server.queries == [("mx.nhs.net", "A")]


def test_server_empty_non_terminal_is_nodata_not_nxdomain(dns_server):
    dns_server.add("mx.nhs.net", "A", "127.0.0.1")
    parent = ask(dns_server, "nhs.net", "A")
    assert parent.rcode() == dns.rcode.NOERROR
    assert parent.answer == []
    assert parent.authority[0].rdtype == dns.rdatatype.SOA
    other_type = ask(dns_server, "mx.nhs.net", "MX")
    assert other_type.rcode() == dns.rcode.NOERROR
    assert other_type.answer == []
    missing = ask(dns_server, "nope.nhs.net", "A")
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert ask(dns_server, "x.mx.nhs.net", "A").rcode() == dns.rcode.NXDOMAIN


def test_server_cname_includes_target_records(dns_server):
    dns_server.add("www.test", "CNAME", "web.test.")
    dns_server.add("web.test", "A", "127.0.0.3")
    dns_server.add("out.test", "CNAME", "elsewhere.invalid.")
    response = ask(dns_server, "www.test", "A")
    assert [rrset.rdtype for rrset in response.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert [rrset.rdtype for rrset in ask(dns_server, "www.test", "CNAME").answer] == [
        dns.rdatatype.CNAME
    ]
    dangling = ask(dns_server, "out.test", "A")
    assert dangling.rcode() == dns.rcode.NOERROR
    assert [rrset.rdtype for rrset in dangling.answer] == [dns.rdatatype.CNAME]


def test_server_cname_loop_is_bounded(dns_server):
    dns_server.add("loop1.test", "CNAME", "loop2.test.")
    dns_server.add("loop2.test", "CNAME", "loop1.test.")
    response = ask(dns_server, "loop1.test", "A")
    assert len(response.answer) == 2


def test_server_truncates_big_udp_answers(dns_server):
    dns_server.add("big.test", "TXT", "x" * 2000)
    udp = ask(dns_server, "big.test", "TXT")
    assert udp.flags & dns.flags.TC
    tcp = ask(dns_server, "big.test", "TXT", tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert b"".join(tcp.answer[0][0].strings) == b"x" * 2000
    assert dns_server.tcp_queries == [("big.test", "TXT")]


def test_server_ignores_malformed_queries(dns_server):
    dns_server.add("ok.test", "A", "127.0.0.1")
    response_not_query = dns.message.make_response(dns.message.make_query("ok.test", "A"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        for junk in (b"", b"\x00", b"\xff" * 40, response_not_query.to_wire()):
            sock.sendto(junk, (dns_server.host, dns_server.port))
        with pytest.raises(TimeoutError):
            sock.recvfrom(4096)
    with socket.create_connection((dns_server.host, dns_server.port), timeout=2) as sock:
        sock.sendall(b"\x00\x03abc")
    assert ask(dns_server, "ok.test", "A").rcode() == dns.rcode.NOERROR
    assert dns_server.queries == [("ok.test", "A")]


def test_server_zones_from_constructor_and_remove():
    zones = {
        "nhs.net": {"MX": ["10 mx.nhs.net"], "TXT": ["v=spf1 -all"]},
        "mx.nhs.net.": {"A": ["127.0.0.1"]},
    }
    with DnsServer(zones) as server:
        assert ask(server, "nhs.net", "MX").answer[0][0].to_text() == "10 mx.nhs.net."
        assert ask(server, "nhs.net", "TXT").answer[0][0].strings == (b"v=spf1 -all",)
        server.remove("nhs.net", "TXT")
        assert ask(server, "nhs.net", "TXT").answer == []
        server.remove("mx.nhs.net")
        assert ask(server, "mx.nhs.net", "A").rcode() == dns.rcode.NXDOMAIN


def test_server_rejects_unknown_behaviour(dns_server):
    with pytest.raises(ValueError, match="mode must be one of"):
        dns_server.behave("x.test", "explode")


async def test_slow_name_does_not_block_others(dns_server, resolver):
    dns_server.add("slow.test", "A", "127.0.0.1")
    dns_server.add("fast.test", "A", "127.0.0.2")
    dns_server.behave("slow.test", "slow", delay=1.0)
    started = time.monotonic()
    slow = asyncio.create_task(resolver.addresses("slow.test"))
    await asyncio.sleep(0.05)
    assert await resolver.addresses("fast.test") == ["127.0.0.2"]
    assert time.monotonic() - started < 0.8
    assert await slow == ["127.0.0.1"]
    assert time.monotonic() - started >= 1.0
    dns_server.behave("slow.test", "normal")
    assert ask(dns_server, "slow.test", "A").rcode() == dns.rcode.NOERROR


def test_server_stops_cleanly():
    server = DnsServer({"a.test": {"A": ["127.0.0.1"]}}).start()
    thread = server._thread
    assert ask(server, "a.test", "A").rcode() == dns.rcode.NOERROR
    server.stop()
    assert thread is not None
    assert not thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        ask(server, "a.test", "A", tcp=True)
    server.stop()
