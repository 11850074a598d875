"""The DNS-only checks (MX, SPF, DMARC, DKIM, TLS-RPT) against a real loopback DNS server.

Each case is a zone (name → type → records), optional per-name faults, and the findings it
must produce as (code, status) pairs, plus codes that must not appear. Every case also
checks the invariants every finding obeys: a warn/fail always says how to fix it, and a
``*.dns_error`` is only ever ``error`` (could not check), never a grade.
"""

import base64
from functools import cache

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securemail.check.model import Finding, Status
from securemail.check.rules.dkim import COMMON_SELECTORS, KeyInfo, check_dkim_keys, key_info
from securemail.check.rules.dmarc import check_dmarc_record, report_domain
from securemail.check.rules.mx import check_mx
from securemail.check.rules.spf import check_spf_record
from securemail.check.rules.tlsrpt import check_tlsrpt
from securemail.dns import Resolver
from securemail.mech.dkim import KeyProblem, generate_key

PASS, WARN, ERROR, FAIL = Status.PASS, Status.WARN, Status.ERROR, Status.FAIL
D = "example.org"


def resolver_for(dns_server):
    return Resolver([dns_server.nameserver], timeout=1)


def load(dns_server, zone, faults=()):
    for name, records in zone.items():
        for rdtype, rdatas in records.items():
            dns_server.add(name, rdtype, *rdatas)
    for name in faults:
        dns_server.behave(name, "servfail")


def check_invariants(findings: list[Finding]) -> None:
    assert findings, "every check reports something"
    for finding in findings:
        if finding.status is not PASS:
            assert finding.fix.strip(), f"{finding.check} has no fix: {finding}"
        if finding.check.endswith(".dns_error"):
            assert finding.status is ERROR
            assert "result unknown" in finding.message


def assert_expected(findings, expected, absent):
    got = {(f.check, f.status) for f in findings}
    for code, status in expected:
        assert (code, status) in got, f"want {code}={status.label}; got {findings}"
    codes = {f.check for f in findings}
    for code in absent:
        assert code not in codes, f"{code} should not be reported: {findings}"


def case(name, zone, expected, absent=(), faults=(), **kw):
    return pytest.param(zone, expected, absent, faults, kw, id=name)


# --- MX ---------------------------------------------------------------------------------

MX1 = {f"mx1.{D}": {"A": ["127.0.0.10"]}, "10.0.0.127.in-addr.arpa": {"PTR": [f"mx1.{D}."]}}

MX_CASES = [
    case(
        "one host with forward-confirmed reverse DNS",
        {D: {"MX": [f"10 mx1.{D}."]}, **MX1},
        [("mx.records", PASS), ("mx.addresses", PASS), ("mx.ptr", PASS)],
        absent=["mx.null", "mx.dns_error"],
    ),
    case(
        "implicit MX (A only)",
        {D: {"A": ["127.0.0.11"]}, "11.0.0.127.in-addr.arpa": {"PTR": [f"{D}."]}},
        [("mx.records", WARN), ("mx.addresses", PASS), ("mx.ptr", PASS)],
    ),
    case(
        "no MX and no address",
        {D: {"TXT": ["hello"]}},
        [("mx.records", FAIL)],
        absent=["domain.exists"],
    ),
    case(
        "domain does not exist",
        {},
        [("domain.exists", FAIL)],
        absent=["mx.records", "mx.dns_error"],
    ),
    case("null MX", {D: {"MX": ["0 ."]}}, [("mx.null", FAIL)], absent=["mx.records"]),
    case(
        "MX host without an address",
        {D: {"MX": [f"10 mx1.{D}.", f"20 mx2.{D}."]}, **MX1},
        [("mx.records", PASS), ("mx.addresses", PASS), ("mx.addresses", FAIL)],
    ),
    case(
        "no PTR",
        {D: {"MX": [f"10 mx1.{D}."]}, f"mx1.{D}": {"A": ["127.0.0.12"]}},
        [("mx.addresses", PASS), ("mx.ptr", WARN)],
    ),
    case(
        "PTR that does not resolve back",
        {
            D: {"MX": [f"10 mx1.{D}."]},
            f"mx1.{D}": {"A": ["127.0.0.13"]},
            "13.0.0.127.in-addr.arpa": {"PTR": ["other.example.net."]},
            "other.example.net": {"A": ["127.0.0.99"]},
        },
        [("mx.ptr", WARN)],
    ),
    case(
        "SERVFAIL for the MX",
        {D: {"MX": [f"10 mx1.{D}."]}, **MX1},
        [("mx.dns_error", ERROR)],
        absent=["mx.records", "mx.addresses"],
        faults=[D],
    ),
    case(
        "SERVFAIL for a host's addresses",
        {D: {"MX": [f"10 mx1.{D}."]}, **MX1},
        [("mx.records", PASS), ("mx.dns_error", ERROR)],
        absent=["mx.addresses", "mx.ptr"],
        faults=[f"mx1.{D}"],
    ),
    case(
        "SERVFAIL for the PTR",
        {D: {"MX": [f"10 mx1.{D}."]}, **MX1},
        [("mx.addresses", PASS), ("mx.dns_error", ERROR)],
        absent=["mx.ptr"],
        faults=["10.0.0.127.in-addr.arpa"],
    ),
]


@pytest.mark.parametrize(("zone", "expected", "absent", "faults", "kw"), MX_CASES)
async def test_mx(dns_server, zone, expected, absent, faults, kw):
    load(dns_server, zone, faults)
    findings, facts = await check_mx(D, resolver_for(dns_server))
    check_invariants(findings)
    assert_expected(findings, expected, absent)
    assert isinstance(facts["mx_hosts"], list)


async def test_mx_facts(dns_server):
    load(dns_server, {D: {"MX": [f"10 mx1.{D}.", f"20 mx2.{D}."]}, **MX1})
    _findings, facts = await check_mx(D.upper() + ".", resolver_for(dns_server))
    assert facts["mx_hosts"] == [f"mx1.{D}", f"mx2.{D}"]
    assert facts["implicit"] is False
    assert facts["mx"][0] == {
        "host": f"mx1.{D}",
        "preference": 10,
        "addresses": ["127.0.0.10"],
        "ptr": {"127.0.0.10": f"mx1.{D}"},
    }
    assert facts["mx"][1]["addresses"] == []


# --- SPF --------------------------------------------------------------------------------


def spf_chain(extra_a_terms: int) -> dict:
    """2 lookups at the top + 1 in _spf + ``extra_a_terms`` in _spf2, all found by recursion."""
    return {
        D: {"TXT": [f"v=spf1 mx include:_spf.{D} -all"], "MX": [f"10 mx1.{D}."]},
        f"mx1.{D}": {"A": ["127.0.0.10"]},
        f"host.{D}": {"A": ["127.0.0.20"]},
        f"_spf.{D}": {"TXT": [f"v=spf1 include:_spf2.{D} ip4:192.0.2.0/24 -all"]},
        f"_spf2.{D}": {"TXT": ["v=spf1 " + f"a:host.{D} " * extra_a_terms + "-all"]},
    }


def spf(record, **more):
    return {D: {"TXT": [record]}, **more}


SPF_CASES = [
    case(
        "good record",
        spf("v=spf1 ip4:192.0.2.0/24 -all"),
        [("spf.present", PASS), ("spf.single", PASS), ("spf.syntax", PASS),
         ("spf.lookups", PASS), ("spf.all", PASS)],
        absent=["spf.void_lookups", "spf.include", "spf.dns_error"],
    ),
    case("no record", {D: {"TXT": ["google-site-verification=x"]}}, [("spf.present", FAIL)],
         absent=["spf.single"]),
    case(
        "two records",
        {D: {"TXT": ["v=spf1 -all", "v=spf1 mx -all"]}},
        [("spf.present", PASS), ("spf.single", FAIL)],
        absent=["spf.syntax", "spf.all"],
    ),
    case("bad syntax", spf("v=spf1 ip4:300.1.1.1 -all"), [("spf.syntax", FAIL)],
         absent=["spf.all"]),
    case("~all", spf("v=spf1 ip4:192.0.2.1 ~all"), [("spf.all", PASS)]),
    case("?all", spf("v=spf1 ip4:192.0.2.1 ?all"), [("spf.all", WARN)]),
    case("+all", spf("v=spf1 +all"), [("spf.all", FAIL)]),
    case("no all and no redirect", spf("v=spf1 ip4:192.0.2.1"), [("spf.all", WARN)]),
    case(
        "redirect to a record ending -all",
        spf(f"v=spf1 redirect=_spf.{D}", **{f"_spf.{D}": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]}}),
        [("spf.all", PASS), ("spf.lookups", PASS)],
    ),
    case("3 lookups through includes", spf_chain(0), [("spf.lookups", PASS)]),
    case("8 lookups through includes", spf_chain(5), [("spf.lookups", WARN)]),
    case("11 lookups through includes", spf_chain(8), [("spf.lookups", FAIL)]),
    case(
        "include loop",
        spf(f"v=spf1 include:_a.{D} -all", **{
            f"_a.{D}": {"TXT": [f"v=spf1 include:_b.{D} -all"]},
            f"_b.{D}": {"TXT": [f"v=spf1 include:_a.{D} -all"]},
        }),
        [("spf.lookups", FAIL)],
    ),
    case(
        "three void lookups",
        spf(f"v=spf1 a:v1.{D} mx:v2.{D} include:v3.{D} -all"),
        [("spf.void_lookups", WARN), ("spf.include", FAIL)],
    ),
    case(
        "include of a name without SPF",
        spf(f"v=spf1 include:_x.{D} -all", **{f"_x.{D}": {"TXT": ["not spf"]}}),
        [("spf.include", FAIL)],
        absent=["spf.void_lookups"],
    ),
    case(
        "include of a broken record",
        spf(f"v=spf1 include:_x.{D} -all", **{f"_x.{D}": {"TXT": ["v=spf1 bogus -all"]}}),
        [("spf.include", FAIL), ("spf.syntax", PASS)],
    ),
    case("SERVFAIL at the domain", spf("v=spf1 -all"), [("spf.dns_error", ERROR)],
         absent=["spf.present", "spf.lookups", "spf.all"], faults=[D]),
    case(
        "SERVFAIL in an include",
        spf_chain(0),
        [("spf.dns_error", ERROR), ("spf.present", PASS)],
        absent=["spf.lookups"],
        faults=[f"_spf2.{D}"],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("zone", "expected", "absent", "faults", "kw"), SPF_CASES)
async def test_spf(dns_server, zone, expected, absent, faults, kw):
    load(dns_server, zone, faults)
    findings, _facts = await check_spf_record(D, resolver_for(dns_server))
    check_invariants(findings)
    assert_expected(findings, expected, absent)


@pytest.mark.parametrize(("extra", "total"), [(0, 3), (5, 8), (8, 11)])
async def test_spf_lookup_count_is_recursive(dns_server, extra, total):
    load(dns_server, spf_chain(extra))
    findings, facts = await check_spf_record(D, resolver_for(dns_server))
    assert facts["lookups"] == total
    assert facts["spf_void_lookups"] == 0
    assert set(facts["spf_includes"]) == {f"_spf.{D}", f"_spf2.{D}"}
    lookups = next(f for f in findings if f.check == "spf.lookups")
    assert str(total) in lookups.message


async def test_spf_softfail_message_and_redirect_source(dns_server):
    load(dns_server, spf("v=spf1 ~all"))
    findings, facts = await check_spf_record(D, resolver_for(dns_server))
    assert "softfail" in next(f for f in findings if f.check == "spf.all").message
    assert facts["spf"] == "v=spf1 ~all"


# --- DMARC ------------------------------------------------------------------------------

SUB = f"mail.{D}"
AUTH = f"{D}._report._dmarc.reports.example.net"


def dmarc(record, **more):
    return {f"_dmarc.{D}": {"TXT": [record]}, **more}


DMARC_CASES = [
    case(
        "reject with reports",
        dmarc(f"v=DMARC1; p=reject; rua=mailto:dmarc@{D}"),
        [("dmarc.present", PASS), ("dmarc.single", PASS), ("dmarc.syntax", PASS),
         ("dmarc.policy", PASS), ("dmarc.subdomain_policy", PASS), ("dmarc.pct", PASS),
         ("dmarc.rua", PASS)],
        absent=["dmarc.rua_authorised", "dmarc.dns_error"],
    ),
    case("no record", {f"_dmarc.{D}": {"TXT": ["unrelated"]}}, [("dmarc.present", FAIL)]),
    case(
        "record at the organisational domain only",
        dmarc("v=DMARC1; p=reject; rua=mailto:d@example.org"),
        [("dmarc.present", PASS), ("dmarc.policy", PASS)],
        domain=SUB,
    ),
    case(
        "organisational sp=none applies to a subdomain",
        dmarc("v=DMARC1; p=reject; sp=none; rua=mailto:d@example.org"),
        [("dmarc.policy", WARN), ("dmarc.subdomain_policy", WARN)],
        domain=SUB,
    ),
    case("no record at the subdomain or organisation", {}, [("dmarc.present", FAIL)],
         domain=SUB),
    case(
        "two records",
        {f"_dmarc.{D}": {"TXT": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]}},
        [("dmarc.present", PASS), ("dmarc.single", FAIL)],
        absent=["dmarc.policy"],
    ),
    case("unusable policy", dmarc("v=DMARC1; p=bogus"), [("dmarc.syntax", FAIL)],
         absent=["dmarc.policy"]),
    case(
        "tolerated oddity",
        dmarc("v=DMARC1; p=reject; rua=mailto:d@example.org; foo=bar"),
        [("dmarc.syntax", WARN), ("dmarc.policy", PASS)],
    ),
    case("p=quarantine", dmarc("v=DMARC1; p=quarantine; rua=mailto:d@example.org"),
         [("dmarc.policy", PASS)]),
    case("p=none", dmarc("v=DMARC1; p=none; rua=mailto:d@example.org"),
         [("dmarc.policy", WARN)]),
    case("pct=50", dmarc("v=DMARC1; p=reject; pct=50"), [("dmarc.pct", WARN)]),
    case("sp=none with p=reject", dmarc("v=DMARC1; p=reject; sp=none"),
         [("dmarc.subdomain_policy", WARN), ("dmarc.policy", PASS)]),
    case("no rua", dmarc("v=DMARC1; p=reject"), [("dmarc.rua", WARN)]),
    case(
        "reports to another organisation, not authorised",
        dmarc("v=DMARC1; p=reject; rua=mailto:d@reports.example.net"),
        [("dmarc.rua", PASS), ("dmarc.rua_authorised", FAIL)],
    ),
    case(
        "reports to another organisation, authorised",
        dmarc("v=DMARC1; p=reject; rua=mailto:d@reports.example.net!10m",
              **{AUTH: {"TXT": ["v=DMARC1"]}}),
        [("dmarc.rua_authorised", PASS)],
    ),
    case(
        "ruf to another organisation is checked too",
        dmarc(f"v=DMARC1; p=reject; rua=mailto:d@{D}; ruf=mailto:f@reports.example.net"),
        [("dmarc.rua_authorised", FAIL)],
    ),
    case("SERVFAIL for the record", dmarc("v=DMARC1; p=reject"), [("dmarc.dns_error", ERROR)],
         absent=["dmarc.present", "dmarc.policy"], faults=[f"_dmarc.{D}"]),
    case(
        "SERVFAIL for the authorisation record",
        dmarc("v=DMARC1; p=reject; rua=mailto:d@reports.example.net",
              **{AUTH: {"TXT": ["v=DMARC1"]}}),
        [("dmarc.dns_error", ERROR), ("dmarc.policy", PASS)],
        absent=["dmarc.rua_authorised"],
        faults=[AUTH],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("zone", "expected", "absent", "faults", "kw"), DMARC_CASES)
async def test_dmarc(dns_server, zone, expected, absent, faults, kw):
    load(dns_server, zone, faults)
    findings, _facts = await check_dmarc_record(kw.get("domain", D), resolver_for(dns_server))
    check_invariants(findings)
    assert_expected(findings, expected, absent)


async def test_dmarc_found_at_organisational_domain_facts(dns_server):
    load(dns_server, dmarc("v=DMARC1; p=quarantine; sp=reject"))
    findings, facts = await check_dmarc_record(SUB, resolver_for(dns_server))
    assert facts["policy_domain"] == D
    assert facts["dmarc_policy"] == "reject"
    assert facts["dmarc"] == "v=DMARC1; p=quarantine; sp=reject"
    present = next(f for f in findings if f.check == "dmarc.present")
    assert "organisational" in present.message
    asked = [name for name, rdtype in dns_server.queries if rdtype == "TXT"]
    assert asked[:2] == [f"_dmarc.{SUB}", f"_dmarc.{D}"]


async def test_dmarc_unauthorised_report_names_the_destination(dns_server):
    load(dns_server, dmarc("v=DMARC1; p=reject; rua=mailto:d@reports.example.net"))
    findings, _ = await check_dmarc_record(D, resolver_for(dns_server))
    finding = next(f for f in findings if f.check == "dmarc.rua_authorised")
    assert finding.subject == "reports.example.net"
    assert "not authorised" in finding.message
    assert AUTH in finding.fix
    assert (AUTH, "TXT") in dns_server.queries


def test_report_domain():
    assert report_domain("mailto:d@Reports.Example.NET!10m") == "reports.example.net"
    assert report_domain("mailto:d%40x@example.net?subject=x") == "example.net"
    assert report_domain("https://example.net/dmarc") == ""


# --- DKIM -------------------------------------------------------------------------------


@cache
def key_record(kind: str, bits: int = 0) -> str:
    if kind == "rsa" and bits < 1024:  # cryptography will not generate one: build the key
        modulus = (1 << (bits - 1)) | 0x1F3A5 | 1
        public = rsa.RSAPublicNumbers(65537, modulus).public_key()
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    return generate_key(kind, bits or 2048)[1]


def dkim(selector, record, **more):
    return {f"{selector}._domainkey.{D}": {"TXT": [record]}, **more}


DKIM_CASES = [
    case(
        "RSA 2048 at a common selector",
        dkim("selector1", key_record("rsa", 2048)),
        [("dkim.key", PASS), ("dkim.selectors", PASS)],
        absent=["dkim.testing", "dkim.dns_error"],
    ),
    case("RSA 1024", dkim("s1", key_record("rsa", 1024)), [("dkim.key", WARN)]),
    case("RSA 512", dkim("s1", key_record("rsa", 512)), [("dkim.key", FAIL)]),
    case("Ed25519", dkim("default", key_record("ed25519")),
         [("dkim.key", PASS), ("dkim.selectors", PASS)]),
    case("revoked", dkim("s1", "v=DKIM1; k=rsa; p="), [("dkim.key", WARN)]),
    case("unparseable", dkim("s1", "v=DKIM1; k=rsa; p=bm90IGEga2V5"), [("dkim.key", FAIL)]),
    case("testing mode", dkim("s1", key_record("ed25519") + "; t=y"),
         [("dkim.key", PASS), ("dkim.testing", WARN)]),
    case(
        "custom selector given",
        dkim("2026q4", key_record("rsa", 2048)),
        [("dkim.key", PASS), ("dkim.selectors", PASS)],
        selectors=["2026q4"],
    ),
    case(
        "CNAME to a provider",
        {f"s1._domainkey.{D}": {"CNAME": ["s1.dkim.provider.example.net."]},
         "s1.dkim.provider.example.net": {"TXT": [key_record("rsa", 2048)]}},
        [("dkim.key", PASS)],
    ),
    case("none found", {D: {"TXT": ["v=spf1 -all"]}}, [("dkim.selectors", WARN)],
         absent=["dkim.key"], selectors=["custom1"]),
    case(
        "SERVFAIL at one selector, key at another",
        dkim("s2", key_record("ed25519")),
        [("dkim.dns_error", ERROR), ("dkim.key", PASS), ("dkim.selectors", PASS)],
        faults=[f"selector1._domainkey.{D}"],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("zone", "expected", "absent", "faults", "kw"), DKIM_CASES)
async def test_dkim(dns_server, zone, expected, absent, faults, kw):
    load(dns_server, zone, faults)
    findings, _ = await check_dkim_keys(D, resolver_for(dns_server), kw.get("selectors", ()))
    check_invariants(findings)
    assert_expected(findings, expected, absent)


async def test_dkim_none_found_names_the_selectors_tried(dns_server):
    findings, facts = await check_dkim_keys(D, resolver_for(dns_server), ["custom1"])
    (finding,) = findings
    assert finding.check == "dkim.selectors"
    assert "custom1" in finding.message
    assert "selector1" in finding.message
    assert "--selector" in finding.fix
    assert facts["dkim"] == {}
    assert facts["dkim_selectors_tried"][0] == "custom1"
    asked = {name for name, rdtype in dns_server.queries if rdtype == "TXT"}
    assert {f"{s}._domainkey.{D}" for s in ("custom1", *COMMON_SELECTORS)} <= asked


async def test_dkim_all_selectors_failing_is_never_absence(dns_server):
    for selector in ("custom1", *COMMON_SELECTORS):
        dns_server.behave(f"{selector}._domainkey.{D}", "servfail")
    findings, _ = await check_dkim_keys(D, resolver_for(dns_server), ["custom1"])
    assert [(f.check, f.status) for f in findings] == [("dkim.dns_error", ERROR)]


async def test_dkim_facts(dns_server):
    load(dns_server, dkim("s1", key_record("rsa", 1024) + "; t=y"))
    _, facts = await check_dkim_keys(D, resolver_for(dns_server))
    assert facts["dkim"] == {
        "s1": {"algorithm": "rsa", "bits": 1024, "testing": True, "revoked": False}
    }


def test_key_info():
    assert key_info(key_record("ed25519")) == KeyInfo("ed25519", 256, False, revoked=False)
    assert key_info(key_record("rsa", 512) + "; t=y") == KeyInfo("rsa", 512, True, revoked=False)
    assert key_info("v=DKIM1; k=ed25519; t=y; p=") == KeyInfo("ed25519", 0, True, revoked=True)
    with pytest.raises(KeyProblem, match="unknown k="):
        key_info("v=DKIM1; k=dsa; p=AAAA")


# --- TLS-RPT ----------------------------------------------------------------------------

TLSRPT = f"_smtp._tls.{D}"


def tlsrpt(*records):
    return {TLSRPT: {"TXT": list(records)}}


TLSRPT_CASES = [
    case(
        "mailto report address",
        tlsrpt(f"v=TLSRPTv1; rua=mailto:tls-reports@{D}"),
        [("tlsrpt.present", PASS), ("tlsrpt.single", PASS), ("tlsrpt.syntax", PASS)],
        absent=["tlsrpt.dns_error"],
    ),
    case("https and mailto", tlsrpt("v=TLSRPTv1;rua=https://r.example.net/v1, mailto:t@example.org;"),
         [("tlsrpt.syntax", PASS)]),
    case("missing", {D: {"TXT": ["v=spf1 -all"]}}, [("tlsrpt.present", WARN)],
         absent=["tlsrpt.syntax"]),
    case("no rua", tlsrpt("v=TLSRPTv1;"), [("tlsrpt.syntax", FAIL)]),
    case("unsupported URI scheme", tlsrpt("v=TLSRPTv1; rua=ftp://example.org/x"),
         [("tlsrpt.syntax", FAIL)]),
    case("wrong version", tlsrpt(f"v=TLSRPTv2; rua=mailto:t@{D}"), [("tlsrpt.syntax", FAIL)]),
    case(
        "two records",
        tlsrpt(f"v=TLSRPTv1; rua=mailto:a@{D}", f"v=TLSRPTv1; rua=mailto:b@{D}"),
        [("tlsrpt.present", PASS), ("tlsrpt.single", FAIL)],
        absent=["tlsrpt.syntax"],
    ),
    case("SERVFAIL", tlsrpt(f"v=TLSRPTv1; rua=mailto:t@{D}"), [("tlsrpt.dns_error", ERROR)],
         absent=["tlsrpt.present", "tlsrpt.syntax"], faults=[TLSRPT]),
]  # fmt: skip


@pytest.mark.parametrize(("zone", "expected", "absent", "faults", "kw"), TLSRPT_CASES)
async def test_tlsrpt(dns_server, zone, expected, absent, faults, kw):
    load(dns_server, zone, faults)
    findings, _facts = await check_tlsrpt(D, resolver_for(dns_server))
    check_invariants(findings)
    assert_expected(findings, expected, absent)


async def test_tlsrpt_and_null_mx_facts(dns_server):
    record = f"v=TLSRPTv1; rua=mailto:t@{D}"
    load(dns_server, {**tlsrpt(record), D: {"MX": ["0 ."]}})
    resolver = resolver_for(dns_server)
    _, facts = await check_tlsrpt(D, resolver)
    assert facts == {"tlsrpt": record}
    _, facts = await check_mx(D, resolver)
    assert facts["mx_null"] is True
    assert facts["mx_hosts"] == []
