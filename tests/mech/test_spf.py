"""SPF (RFC 7208): the pure parser and macros, and check_host() against real loopback DNS."""

import ipaddress
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.dns import Resolver
from securemail.mech.results import MethodResult, Result
from securemail.mech.spf import (
    MacroContext,
    SpfRecord,
    SpfResult,
    SpfSyntaxError,
    Term,
    check_helo,
    check_host,
    check_spf,
    expand_domain,
    expand_macros,
    ip_in_network,
    normalise_ip,
    parse_spf,
    select_spf_record,
    spf_records,
    valid_domain,
)

M, MOD = "mechanism", "modifier"

# --- parser ------------------------------------------------------------------------------

VALID = [
    ("version only", "v=spf1", ()),
    ("version is case-insensitive", "V=SPF1 -ALL", (Term(M, "-", "all", ""),)),
    ("qualifiers", "v=spf1 +a -mx ~ptr ?all", (
        Term(M, "+", "a", ""), Term(M, "-", "mx", ""), Term(M, "~", "ptr", ""),
        Term(M, "?", "all", ""),
    )),
    ("a with domain and dual cidr", "v=spf1 a:mail.example.org/24//64", (
        Term(M, "+", "a", "mail.example.org", 24, 64),
    )),
    ("cidr forms on a and mx", "v=spf1 a/32 mx//128 mx:example.org/0//0", (
        Term(M, "+", "a", "", 32), Term(M, "+", "mx", "", None, 128),
        Term(M, "+", "mx", "example.org", 0, 0),
    )),
    ("ip4 and ip6", "v=spf1 ip4:192.0.2.0/24 ip4:192.0.2.1 ip6:2001:DB8::/32 ip6:::ffff:192.0.2.1", (
        Term(M, "+", "ip4", "192.0.2.0", 24), Term(M, "+", "ip4", "192.0.2.1"),
        Term(M, "+", "ip6", "2001:DB8::", None, 32), Term(M, "+", "ip6", "::ffff:192.0.2.1"),
    )),
    ("whole-internet networks", "v=spf1 ip4:0.0.0.0/0 ip6:::/0", (
        Term(M, "+", "ip4", "0.0.0.0", 0), Term(M, "+", "ip6", "::", None, 0),
    )),
    ("include, exists with macros", "v=spf1 include:_spf.example.org exists:%{ir}.%{v}._spf.%{d2} -all", (
        Term(M, "+", "include", "_spf.example.org"),
        Term(M, "+", "exists", "%{ir}.%{v}._spf.%{d2}"), Term(M, "-", "all", ""),
    )),
    ("domain-spec ending in a macro", "v=spf1 a:%{d} ptr:%{d}.example.org", (
        Term(M, "+", "a", "%{d}"), Term(M, "+", "ptr", "%{d}.example.org"),
    )),
    ("transformers and delimiters", "v=spf1 exists:%{l1r+-}.%{D23R}.x.example", (
        Term(M, "+", "exists", "%{l1r+-}.%{D23R}.x.example"),
    )),
    ("escapes", "v=spf1 exists:a%%b%_c%-d.example", (Term(M, "+", "exists", "a%%b%_c%-d.example"),)),
    ("trailing dot, toplabel with digits", "v=spf1 a:mail.example.org. a:host.x1-2", (
        Term(M, "+", "a", "mail.example.org."), Term(M, "+", "a", "host.x1-2"),
    )),
    ("names are case-insensitive, values kept", "v=spf1 IP4:192.0.2.1 Include:Example.ORG", (
        Term(M, "+", "ip4", "192.0.2.1"), Term(M, "+", "include", "Example.ORG"),
    )),
    ("redirect", "v=spf1 redirect=_spf.example.org", (Term(MOD, "", "redirect", "_spf.example.org"),)),
    ("exp", "v=spf1 -all exp=explain._spf.%{d}", (
        Term(M, "-", "all", ""), Term(MOD, "", "exp", "explain._spf.%{d}"),
    )),
    ("unknown modifiers", "v=spf1 foo=bar x-opt.v_2=%{l}%{t} empty= -all", (
        Term(MOD, "", "foo", "bar"), Term(MOD, "", "x-opt.v_2", "%{l}%{t}"),
        Term(MOD, "", "empty", ""), Term(M, "-", "all", ""),
    )),
    ("extra spaces", "v=spf1   a    -all   ", (Term(M, "+", "a", ""), Term(M, "-", "all", ""))),
    ("mechanisms after all", "v=spf1 -all a mx", (
        Term(M, "-", "all", ""), Term(M, "+", "a", ""), Term(M, "+", "mx", ""),
    )),
]  # fmt: skip


@pytest.mark.parametrize(("record", "terms"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_parse_valid(record, terms):
    assert parse_spf(record) == SpfRecord(terms)


INVALID = [
    ("v=spf1 a mx ip4:1.2.3", 'term 3 "ip4:1.2.3" : invalid IPv4 network'),
    ("v=spf1 ip4:192.0.2.01", "invalid IPv4 network"),
    ("v=spf1 ip4:256.0.0.1", "invalid IPv4 network"),
    ("v=spf1 ip4:example.org", "invalid IPv4 network"),
    ("v=spf1 ip4", 'term 1 "ip4" : "ip4" needs ":network"'),
    ("v=spf1 ip4:192.0.2.0/33", 'term 1 "ip4:192.0.2.0/33" : invalid IPv4 CIDR length /33 (0-32)'),
    ("v=spf1 ip4:192.0.2.0/024", "invalid IPv4 CIDR length /024"),
    ("v=spf1 ip4:192.0.2.0/", "invalid IPv4 CIDR length"),
    ("v=spf1 ip6:2001:db8::/129", "invalid IPv6 CIDR length /129 (0-128)"),
    ("v=spf1 ip6:2001:db8::g", "invalid IPv6 network"),
    ("v=spf1 ip6:fe80::1%eth0", "invalid IPv6 network"),
    ("v=spf1 ip6:192.0.2.1", "invalid IPv6 network"),
    ("v=spf1 a/33", "invalid IPv4 CIDR length /33"),
    ("v=spf1 mx//129", "invalid IPv6 CIDR length /129"),
    ("v=spf1 a/", "invalid domain-spec or CIDR length"),
    ("v=spf1 redirect=a.example.org redirect=b.example.org",
     'term 2 "redirect=b.example.org" : duplicate redirect modifier'),
    ("v=spf1 exp=a.example.org -all EXP=b.example.org", "duplicate exp modifier"),
    ("v=spf1 a foo -all", 'term 2 "foo" : unknown mechanism "foo"'),
    ("v=spf1 -all:example.org", '"all" takes no argument'),
    ("v=spf1 include", '"include" needs ":domain-spec"'),
    ("v=spf1 exists", '"exists" needs ":domain-spec"'),
    ("v=spf1 include:example.org/24", '"include" takes no CIDR length'),
    ("v=spf1 ptr:example.org/24", '"ptr" takes no CIDR length'),
    ("v=spf1 a:", "empty domain-spec"),
    ("v=spf1 redirect=", "empty domain-spec"),
    ("v=spf1 a:localhost", "domain-spec must end in a top-level label or a macro"),
    ("v=spf1 a:192.0.2.1", "domain-spec must end in a top-level label or a macro"),
    ("v=spf1 include:example.org/", "must end in a top-level label"),
    ("v=spf1 exists:%{x}.example.org", "unknown macro letter 'x'"),
    ("v=spf1 exists:%{d0}.example.org", "digit transformer must not be zero"),
    ("v=spf1 exists:%{c}.example.org", 'macro "%{c}" is allowed only in explanations'),
    ("v=spf1 exp=%{t}.example.org", "allowed only in explanations"),
    ("v=spf1 a:%example.org", "invalid macro"),
    ("v=spf1 a:x%{d.example.org", "invalid macro"),
    ("v=spf1 foo=%", "invalid macro"),
    ("v=spf1 a:exämple.org", "character 'ä' is not allowed"),
    ("v=spf1 =foo", "not a mechanism or modifier"),
    ("v=spf1 ~redirect=example.org", 'unknown mechanism "redirect"'),
    ("v=spf1 a\t-all", 'term 1 "a\t-all"'),
    ("v=spf10 -all", 'not an SPF record: it must start with "v=spf1"'),
    ("v=spf1-all", "not an SPF record"),
    (" v=spf1 -all", "not an SPF record"),
    ("spf1 -all", "not an SPF record"),
    ("", "not an SPF record"),
]  # fmt: skip


@pytest.mark.parametrize(("record", "message"), INVALID)
def test_parse_invalid(record, message):
    with pytest.raises(SpfSyntaxError) as info:
        parse_spf(record)
    assert message in str(info.value)


def test_long_terms_are_shortened_in_messages():
    with pytest.raises(SpfSyntaxError) as info:
        parse_spf("v=spf1 a:" + "x" * 200)
    assert len(str(info.value)) < 160
    assert '..." : domain-spec must end' in str(info.value)


@pytest.mark.timeout(10)
def test_hostile_records_parse_in_linear_time():
    records = [
        "v=spf1 a:." + "a" * 60000 + "-",
        "v=spf1 a:/" + "1" * 60000 + "x",
        "v=spf1 a:" + "/1" * 30000 + "x",
        "v=spf1 exists:" + "%{d" * 15000,
        "v=spf1 ip6:" + "1:" * 30000,
    ]
    started = time.monotonic()
    for record in records:
        with pytest.raises(SpfSyntaxError):
            parse_spf(record)
    assert time.monotonic() - started < 1.0


SELECT = [
    ([], None),
    (["hello", "google-site-verification=abc"], None),
    (["v=spf1 -all"], "v=spf1 -all"),
    (["other", "V=SPF1 a -all"], "V=SPF1 a -all"),
    (["v=spf1"], "v=spf1"),
    (["v=spf10 -all", "v=spf1 mx"], "v=spf1 mx"),
    (["v=spf1-all"], None),
    ([" v=spf1 -all"], None),
]


@pytest.mark.parametrize(("texts", "chosen"), SELECT)
def test_select_spf_record(texts, chosen):
    assert select_spf_record(texts) == chosen


@pytest.mark.parametrize("texts", [["v=spf1 a", "v=spf1 -all"], ["v=spf1", "V=SPF1 ~all", "x"]])
def test_select_refuses_multiple_records(texts):
    with pytest.raises(SpfSyntaxError, match=r"^multiple SPF records$"):
        select_spf_record(texts)


def test_spf_records_keeps_several_for_the_checker():
    texts = ["v=spf1 a", "other", "V=SPF1 ~all", "v=spf10 -all", " v=spf1 -all"]
    assert spf_records(texts) == ["v=spf1 a", "V=SPF1 ~all"]
    assert spf_records(["other"]) == []


LOOKUP_TERMS = [
    ("v=spf1 -all", 0),
    ("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all exp=x.example", 0),
    ("v=spf1 a mx ptr exists:%{i}.x.example include:x.example ip4:192.0.2.1 -all", 5),
    ("v=spf1 a redirect=x.example", 2),
    ("v=spf1 a -all redirect=x.example", 1),  # redirect is ignored when there is an all
    ("v=spf1 mx ?all a mx include:x.example", 1),  # nothing after all is reached
    ("v=spf1 foo=bar exp=x.example", 0),
    ("v=spf1 " + " ".join(["include:x.example"] * 12), 12),
]


@pytest.mark.parametrize(("record", "count"), LOOKUP_TERMS)
def test_dns_lookup_terms(record, count):
    assert parse_spf(record).dns_lookup_terms() == count


def test_record_properties_and_term_text():
    record = parse_spf(
        "v=spf1 +a:Mail.example.org/24//64 ip6:2001:db8::/32 ~mx//48 ?all "
        "redirect=r.example exp=e.%{d}"
    )
    assert record.redirect == "r.example"
    assert record.exp == "e.%{d}"
    assert record.all_qualifier == "?"
    assert [t.text for t in record.terms] == [
        "a:Mail.example.org/24//64",
        "ip6:2001:db8::/32",
        "~mx//48",
        "?all",
        "redirect=r.example",
        "exp=e.%{d}",
    ]
    bare = parse_spf("v=spf1 a")
    assert (bare.redirect, bare.exp, bare.all_qualifier) == (None, None, None)


@given(st.text(max_size=300))
def test_parse_never_raises_anything_but_syntax_error(text):
    for record in (text, "v=spf1 " + text):
        try:
            parsed = parse_spf(record)
        except SpfSyntaxError as exc:
            assert str(exc)
        else:
            assert all(term.kind in (M, MOD) for term in parsed.terms)
            assert parsed.dns_lookup_terms() <= len(parsed.terms)


SPF_ALPHABET = st.sampled_from(
    [*"adilmoprstvx0123456789.:/-+~?%{}=_ ", "ip4", "ip6", "all", "include", "exists", "%{"]
)


@given(st.lists(SPF_ALPHABET, max_size=60).map("".join))
def test_parse_spf_like_text_is_refused_by_term_or_written_back_the_same(text):
    try:
        record = parse_spf("v=spf1 " + text)
    except SpfSyntaxError as exc:
        assert str(exc).startswith("term ")
    else:
        assert len(record.terms) == len(text.split())
        assert parse_spf("v=spf1 " + " ".join(t.text for t in record.terms)) == record


# --- macros (RFC 7208 §7.4 examples, and the rest of §7.3) -------------------------------

SENDER = "strong-bad@email.example.com"
V4 = MacroContext(SENDER, "email.example.com", "192.0.2.3", helo="mx.example.org")
V6 = MacroContext(SENDER, "email.example.com", "2001:db8::cb01")
IP6_REVERSED = "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"

MACROS = [
    (V4, "%{s}", "strong-bad@email.example.com"),
    (V4, "%{o}", "email.example.com"),
    (V4, "%{d}", "email.example.com"),
    (V4, "%{d4}", "email.example.com"),
    (V4, "%{d3}", "email.example.com"),
    (V4, "%{d2}", "example.com"),
    (V4, "%{d1}", "com"),
    (V4, "%{dr}", "com.example.email"),
    (V4, "%{d2r}", "example.email"),
    (V4, "%{l}", "strong-bad"),
    (V4, "%{l-}", "strong.bad"),
    (V4, "%{lr}", "strong-bad"),
    (V4, "%{lr-}", "bad.strong"),
    (V4, "%{l1r-}", "strong"),
    (V4, "%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    (V4, "%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    (V4, "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    (V4, "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    (V4, "%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    (V6, "%{ir}.%{v}._spf.%{d2}", IP6_REVERSED + ".ip6._spf.example.com"),
    (V4, "%{i}", "192.0.2.3"),
    (V6, "%{i}", "2.0.0.1.0.d.b.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.b.0.1"),
    (V4, "%{D2}", "example.com"),
    (V4, "%{S}", "strong-bad%40email.example.com"),
    (V4, "%{L}", "strong-bad"),
    (V4, "%{h}", "mx.example.org"),
    (V4, "%{p}", "unknown"),
    (V4, "%{d9r}", "com.example.email"),
    (V4, "%{d002}", "example.com"),
    (V4, "%{d99999999999999999999r}", "com.example.email"),
    (V4, "%{l+-=}", "strong.bad"),
    (V4, "%%%_%-", "% %20"),
    (V4, "%{d}%%%{d1}", "email.example.com%com"),
    (MacroContext("user+tag@example.org", "example.org", "192.0.2.3"), "%{l+}", "user.tag"),
    (MacroContext("example.org", "example.org", "192.0.2.3"), "%{l}@%{o}", "postmaster@example.org"),
    (MacroContext("a@b.example", "b.example", "192.0.2.3", ptr="mail.b.example"), "%{p2}", "b.example"),
]  # fmt: skip


@pytest.mark.parametrize(("context", "text", "expanded"), MACROS)
def test_macro_expansion(context, text, expanded):
    assert expand_macros(text, context) == expanded


EXPLANATION_MACROS = [
    (V4, "%{c}", "192.0.2.3"),
    (V6, "%{c}", "2001:db8::cb01"),
    (V4, "%{r}", "unknown"),
    (MacroContext(SENDER, "x.example", "192.0.2.3", receiver="mx.nhs.example"), "%{r}", "mx.nhs.example"),
    (MacroContext(SENDER, "x.example", "192.0.2.3", timestamp=1700000000), "%{t}", "1700000000"),
    (V4, "%{i} is not allowed to send for %{d}", "192.0.2.3 is not allowed to send for email.example.com"),
]  # fmt: skip


@pytest.mark.parametrize(("context", "text", "expanded"), EXPLANATION_MACROS)
def test_explanation_macros(context, text, expanded):
    assert expand_macros(text, context, explanation=True) == expanded


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("%{c}", "allowed only in explanations"),
        ("%{d0}", "must not be zero"),
        ("%{q}", "unknown macro letter"),
        ("%", "invalid macro"),
        ("%{d", "invalid macro"),
        ("a b", "character ' ' is not allowed"),
    ],
)
def test_bad_macro_strings(text, message):
    with pytest.raises(SpfSyntaxError, match=message):
        expand_macros(text, V4)


def test_expanded_domain_is_cut_from_the_left_to_253_characters():
    long_local = ".".join(["abcdefghij"] * 40)
    context = MacroContext(f"{long_local}@example.org", "example.org", "192.0.2.3")
    name = expand_domain("%{l}._spf.%{d}", context)
    assert len(name) <= 253
    assert name.endswith("abcdefghij._spf.example.org")
    assert name.startswith("abcdefghij.")
    assert expand_domain("Mail.%{d}.", V4) == "mail.email.example.com"


@given(st.text(max_size=200), st.text(max_size=100), st.booleans())
def test_macro_expansion_never_raises_anything_but_syntax_error(text, sender, explanation):
    context = MacroContext(sender, "example.org", "2001:db8::1")
    try:
        expanded = expand_macros(text, context, explanation=explanation)
    except SpfSyntaxError:
        return
    assert isinstance(expanded, str)
    if "%" not in text:
        assert expanded == text


# --- addresses ---------------------------------------------------------------------------


def test_normalise_ip_treats_ipv4_mapped_as_ipv4():
    assert normalise_ip("::ffff:192.0.2.1") == ipaddress.IPv4Address("192.0.2.1")
    assert normalise_ip("[2001:db8::1]") == ipaddress.IPv6Address("2001:db8::1")
    with pytest.raises(ValueError):
        normalise_ip("mail.example.org")


@pytest.mark.parametrize(
    ("ip", "network", "prefix", "inside"),
    [
        ("192.0.2.7", "192.0.2.0", 24, True),
        ("192.0.3.7", "192.0.2.0", 24, False),
        ("192.0.2.7", "192.0.2.7", None, True),
        ("192.0.2.8", "192.0.2.7", None, False),
        ("192.0.2.7", "192.0.2.99", 24, True),  # host bits in the record are ignored
        ("203.0.113.1", "0.0.0.0", 0, True),
        ("2001:db8::1", "2001:db8::", 32, True),
        ("2001:db9::1", "2001:db8::", 32, False),
        ("192.0.2.7", "::", 0, False),  # families never match each other
        ("2001:db8::1", "0.0.0.0", 0, False),
    ],
)
def test_ip_in_network(ip, network, prefix, inside):
    assert ip_in_network(ipaddress.ip_address(ip), network, prefix) is inside


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("example.org", True),
        ("_spf.example.org", True),
        ("localhost", False),
        ("a..example.org", False),
        ("x" * 64 + ".example.org", False),
        ("x" * 63 + ".example.org", True),
        (".".join(["abcdefghi"] * 26), False),  # 259 characters
        ("192.0.2.1", False),
        ("[192.0.2.1]", False),
        ("bad name.example.org", False),
        ("", False),
    ],
)
def test_valid_domain(name, valid):
    assert valid_domain(name) is valid


# --- evaluation against a real DNS server ---------------------------------------------------


@pytest.fixture
def resolver(dns_server):
    return Resolver([dns_server.nameserver], timeout=2.0)


async def check(resolver, ip, domain="example.test", sender="", **kwargs):
    return await check_host(ip, domain, sender or f"jo@{domain}", resolver, **kwargs)


@pytest.mark.parametrize(
    ("qualifier", "result", "verb"),
    [
        ("", Result.PASS, "is permitted by"),
        ("+", Result.PASS, "is permitted by"),
        ("-", Result.FAIL, "is not permitted by"),
        ("~", Result.SOFTFAIL, "is not permitted (softfail) by"),
        ("?", Result.NEUTRAL, "is neither permitted nor denied by"),
    ],
)
async def test_qualifier_decides_the_result(dns_server, resolver, qualifier, result, verb):
    dns_server.add("example.test", "TXT", f"v=spf1 {qualifier}ip4:192.0.2.0/24 -all")
    spf = await check(resolver, "192.0.2.7")
    mechanism = ("" if qualifier == "+" else qualifier) + "ip4:192.0.2.0/24"
    assert spf == SpfResult(
        result,
        "example.test",
        "mailfrom",
        "jo@example.test",
        mechanism,
        f"192.0.2.7 {verb} {mechanism} in example.test",
        0,
    )


async def test_fail_by_all(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    spf = await check(resolver, "198.51.100.1")
    assert (spf.result, spf.mechanism) == (Result.FAIL, "-all")
    assert spf.reason == "198.51.100.1 is not permitted by -all in example.test"
    assert spf.explanation == ""


async def test_nothing_matched_is_neutral_by_default(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32")
    spf = await check(resolver, "198.51.100.1")
    assert (spf.result, spf.mechanism) == (Result.NEUTRAL, "default")
    assert "no mechanism matched 198.51.100.1 in example.test" in spf.reason


async def test_txt_split_into_character_strings_is_joined(dns_server, resolver):
    dns_server.add("example.test", "TXT", '"v=spf1 ip4:192.0.2.0" "/24 -all"')
    assert (await check(resolver, "192.0.2.200")).result is Result.PASS


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ({"example.test": ("TXT", "hello world")}, "no SPF record at example.test"),
        ({"example.test": ("A", "192.0.2.1")}, "no SPF record at example.test"),
        ({"other.test": ("A", "192.0.2.1")}, "example.test does not exist (NXDOMAIN)"),
        ({"example.test": ("SPF", "v=spf1 +all")}, "no SPF record at example.test"),  # type 99
        ({"example.test": ("TXT", "v=spf10 +all")}, "no SPF record at example.test"),
    ],
)
async def test_none(dns_server, resolver, setup, reason):
    for name, (rdtype, value) in setup.items():
        dns_server.add(name, rdtype, value)
    spf = await check(resolver, "192.0.2.1")
    assert (spf.result, spf.mechanism, spf.reason) == (Result.NONE, "", reason)
    assert ("example.test", "SPF") not in dns_server.queries


@pytest.mark.parametrize(
    "domain", ["localhost", "a..example.test", "x" * 64 + ".example.test", "192.0.2.1", ""]
)
async def test_malformed_domain_is_none_without_asking(dns_server, resolver, domain):
    spf = await check(resolver, "192.0.2.1", domain=domain, sender="jo@x.test")
    assert spf.result is Result.NONE
    assert "is not a valid domain name" in spf.reason
    assert dns_server.queries == []


async def test_temperror_on_servfail(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 -all")
    dns_server.behave("example.test", "servfail")
    spf = await check(resolver, "192.0.2.1")
    assert spf.result is Result.TEMPERROR
    assert spf.reason.startswith("TXT example.test: no nameserver answered")


@pytest.mark.timeout(10)
async def test_temperror_on_timeout_in_a_mechanism(dns_server):
    resolver = Resolver([dns_server.nameserver], timeout=0.5)
    dns_server.add("example.test", "TXT", "v=spf1 a:slow.example.test -all")
    dns_server.add("slow.example.test", "A", "192.0.2.1")
    dns_server.behave("slow.example.test", "timeout")
    spf = await check(resolver, "192.0.2.1")
    assert spf.result is Result.TEMPERROR
    assert "DNS timeout after 0.5s" in spf.reason
    assert spf.lookups == 1


@pytest.mark.timeout(10)
async def test_whole_evaluation_has_a_time_limit(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 a:slow.example.test -all")
    dns_server.add("slow.example.test", "A", "192.0.2.1")
    dns_server.behave("slow.example.test", "slow", delay=1.5)
    spf = await check(resolver, "192.0.2.1", time_limit=0.3)
    assert spf.result is Result.TEMPERROR
    assert spf.reason == "SPF evaluation for example.test took longer than 0.3s"


async def test_permerror_on_syntax(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 ip4:1.2.3 -all")
    spf = await check(resolver, "192.0.2.1")  # would pass, but the whole record is refused
    assert spf.result is Result.PERMERROR
    assert spf.reason == 'example.test: term 2 "ip4:1.2.3" : invalid IPv4 network'


async def test_permerror_on_multiple_records(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 -all", "v=spf1 +all", "unrelated")
    spf = await check(resolver, "192.0.2.1")
    assert (spf.result, spf.reason) == (Result.PERMERROR, "example.test: multiple SPF records")


def include_chain(server, length, last="v=spf1 +all"):
    """c0.test includes c1.test ... includes c<length>.test, whose record is ``last``."""
    for n in range(length):
        server.add(f"c{n}.test", "TXT", f"v=spf1 include:c{n + 1}.test -all")
    server.add(f"c{length}.test", "TXT", last)


async def test_ten_lookups_are_allowed(dns_server, resolver):
    include_chain(dns_server, 10)
    spf = await check(resolver, "192.0.2.1", domain="c0.test")
    assert (spf.result, spf.lookups, spf.mechanism) == (Result.PASS, 10, "include:c1.test")


async def test_eleven_lookups_are_a_permerror(dns_server, resolver):
    include_chain(dns_server, 11)
    spf = await check(resolver, "192.0.2.1", domain="c0.test")
    assert (spf.result, spf.reason) == (Result.PERMERROR, "too many DNS lookups (11 > 10)")
    assert ("c11.test", "TXT") not in dns_server.queries


async def test_lookup_limit_counts_every_kind_of_dns_term(dns_server, resolver):
    terms = "a mx ptr exists:x.example.test include:inc.example.test a mx ptr"
    dns_server.add("example.test", "TXT", f"v=spf1 {terms} redirect=r.example.test")
    dns_server.add("example.test", "A", "198.51.100.1")
    dns_server.add("example.test", "MX", "10 example.test.")
    dns_server.add("x.example.test", "TXT", "exists, but no A")
    dns_server.add("inc.example.test", "TXT", "v=spf1 a")
    dns_server.add("r.example.test", "TXT", "v=spf1 a:example.test -all")
    spf = await check(resolver, "192.0.2.1", void_limit=100)
    assert (spf.result, spf.reason) == (Result.PERMERROR, "too many DNS lookups (11 > 10)")
    limited = await check(resolver, "192.0.2.1", lookup_limit=11, void_limit=100)
    assert (limited.result, limited.lookups) == (Result.FAIL, 11)


async def test_terms_after_a_match_are_not_evaluated(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 ip4:192.0.2.1 a:never.example.test -all")
    spf = await check(resolver, "192.0.2.1")
    assert (spf.result, spf.lookups) == (Result.PASS, 0)
    assert dns_server.queries == [("example.test", "TXT")]


@pytest.mark.parametrize("count", [2, 3])
async def test_void_lookup_limit(dns_server, resolver, count):
    voids = " ".join(f"a:gone{n}.void.test" for n in range(count))
    dns_server.add("example.test", "TXT", f"v=spf1 {voids} -all")
    dns_server.add("other.test", "A", "192.0.2.99")  # gone*.void.test are NXDOMAIN
    spf = await check(resolver, "192.0.2.1")
    if count == 2:
        assert (spf.result, spf.lookups) == (Result.FAIL, 2)
    else:
        assert (spf.result, spf.reason) == (Result.PERMERROR, "too many void DNS lookups (3 > 2)")


async def test_empty_answers_are_void_lookups_too(dns_server, resolver):
    dns_server.add(
        "example.test",
        "TXT",
        "v=spf1 a:t.example.test mx:t.example.test exists:t.example.test -all",
    )
    dns_server.add("t.example.test", "TXT", "no addresses, no MX")
    spf = await check(resolver, "192.0.2.1")
    assert (spf.result, spf.reason) == (Result.PERMERROR, "too many void DNS lookups (3 > 2)")
    assert (await check(resolver, "192.0.2.1", void_limit=3)).result is Result.FAIL


async def test_includes_of_missing_domains_are_permerrors(dns_server, resolver):
    names = ["nx1.gone.test", "nx2.gone.test", "nx3.gone.test"]
    dns_server.add("example.test", "TXT", "v=spf1 " + " ".join(f"include:{n}" for n in names))
    spf = await check(resolver, "192.0.2.1")
    assert spf.result is Result.PERMERROR
    assert spf.reason == "include:nx1.gone.test: nx1.gone.test does not exist (NXDOMAIN)"
    assert ("nx2.gone.test", "TXT") not in dns_server.queries


INCLUDED = [
    ("v=spf1 +all", Result.PASS, "include:inc.test"),
    ("v=spf1 -all", Result.NEUTRAL, "?all"),
    ("v=spf1 ~all", Result.NEUTRAL, "?all"),
    ("v=spf1 ?all", Result.NEUTRAL, "?all"),
    ("v=spf1 ip4:198.51.100.0/24", Result.NEUTRAL, "?all"),  # included default neutral
    ("v=spf1 ip4:192.0.2.1 -all", Result.PASS, "include:inc.test"),
    ("v=spf1 exp=e.inc.test", Result.NEUTRAL, "?all"),
    ("v=spf1 foo", Result.PERMERROR, ""),
    ("v=spf1 -all", Result.NEUTRAL, "?all"),
    ("servfail", Result.TEMPERROR, ""),
    ("no record", Result.PERMERROR, ""),
    ("v=spf1 redirect=gone.inc.test", Result.PERMERROR, ""),
]


@pytest.mark.parametrize(("included", "result", "mechanism"), INCLUDED)
async def test_include_result_mapping(dns_server, resolver, included, result, mechanism):
    """§5.2: pass matches; fail/softfail/neutral do not; temperror stays; permerror/none are
    permerror."""
    dns_server.add("example.test", "TXT", "v=spf1 include:inc.test ?all")
    if included == "servfail":
        dns_server.add("inc.test", "TXT", "v=spf1 +all")
        dns_server.behave("inc.test", "servfail")
    elif included == "no record":
        dns_server.add("inc.test", "TXT", "not spf")
    else:
        dns_server.add("inc.test", "TXT", included)
    spf = await check(resolver, "192.0.2.1")
    assert (spf.result, spf.mechanism) == (result, mechanism)
    if included == "no record":
        assert spf.reason == "include:inc.test: no SPF record at inc.test"


async def test_include_with_qualifier_and_macros(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 -include:%{d1}.deny.test +all")
    dns_server.add("test.deny.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    spf = await check(resolver, "192.0.2.9")
    assert (spf.result, spf.mechanism) == (Result.FAIL, "-include:%{d1}.deny.test")
    assert (await check(resolver, "198.51.100.1")).result is Result.PASS


async def test_include_loop_terminates_with_permerror(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 include:loop.test -all")
    dns_server.add("loop.test", "TXT", "v=spf1 include:example.test -all")
    spf = await check(resolver, "192.0.2.1")
    assert (spf.result, spf.reason) == (Result.PERMERROR, "too many DNS lookups (11 > 10)")
    dns_server.add("self.test", "TXT", "v=spf1 include:self.test")
    selfish = await check(resolver, "192.0.2.1", domain="self.test")
    assert selfish.result is Result.PERMERROR


async def test_redirect(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 ip4:198.51.100.1 redirect=_spf.example.test")
    dns_server.add("_spf.example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    passed = await check(resolver, "192.0.2.7")
    assert (passed.result, passed.mechanism, passed.lookups) == (Result.PASS, "ip4:192.0.2.0/24", 1)
    assert passed.domain == "example.test"
    failed = await check(resolver, "203.0.113.1")
    assert failed.result is Result.FAIL
    assert failed.reason == "203.0.113.1 is not permitted by -all in _spf.example.test"


async def test_redirect_is_ignored_when_a_mechanism_matched(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 ip4:192.0.2.7 redirect=elsewhere.test")
    dns_server.add("elsewhere.test", "TXT", "v=spf1 -all")
    spf = await check(resolver, "192.0.2.7")
    assert (spf.result, spf.lookups) == (Result.PASS, 0)
    assert ("elsewhere.test", "TXT") not in dns_server.queries


async def test_redirect_is_ignored_when_there_is_an_all(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 redirect=elsewhere.test ?all")
    dns_server.add("elsewhere.test", "TXT", "v=spf1 +all")
    spf = await check(resolver, "192.0.2.7")
    assert (spf.result, spf.mechanism) == (Result.NEUTRAL, "?all")
    assert ("elsewhere.test", "TXT") not in dns_server.queries


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("norecord.test", "redirect=norecord.test: no SPF record at norecord.test"),
        ("gone.test", "redirect=gone.test: gone.test does not exist (NXDOMAIN)"),
        ("%{l}.x.test", "redirect=a..b.x.test: 'a..b.x.test' is not a valid domain name"),
    ],
)
async def test_redirect_to_a_domain_without_record_is_permerror(
    dns_server, resolver, target, reason
):
    dns_server.add("example.test", "TXT", f"v=spf1 redirect={target}")
    dns_server.add("norecord.test", "A", "192.0.2.1")
    spf = await check(resolver, "192.0.2.1", sender="a..b@example.test")
    assert (spf.result, spf.reason) == (Result.PERMERROR, reason)


async def test_a_with_cidr(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 a/24 -all")
    dns_server.add("example.test", "A", "192.0.2.1")
    assert (await check(resolver, "192.0.2.200")).result is Result.PASS
    assert (await check(resolver, "192.0.3.1")).result is Result.FAIL


async def test_a_ipv6_asks_aaaa_and_uses_the_ipv6_cidr(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 a:host.example.test/32//64 -all")
    dns_server.add("host.example.test", "AAAA", "2001:db8:1::1")
    dns_server.add("host.example.test", "A", "192.0.2.1")
    spf = await check(resolver, "2001:db8:1::abcd")
    assert (spf.result, spf.mechanism) == (Result.PASS, "a:host.example.test/32//64")
    assert ("host.example.test", "AAAA") in dns_server.queries
    assert ("host.example.test", "A") not in dns_server.queries
    assert (await check(resolver, "2001:db8:2::1")).result is Result.FAIL


async def test_ipv4_mapped_ipv6_is_checked_as_ipv4(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 a -all")
    dns_server.add("example.test", "A", "192.0.2.1")
    spf = await check(resolver, "::ffff:192.0.2.1")
    assert spf.result is Result.PASS
    assert spf.reason.startswith("192.0.2.1 is permitted")
    assert ("example.test", "AAAA") not in dns_server.queries


async def test_ip6_mechanism(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all")
    assert (await check(resolver, "2001:db8:ffff::1")).mechanism == "ip6:2001:db8::/32"
    assert (await check(resolver, "2001:db9::1")).result is Result.FAIL


async def test_mx_with_cidr(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 mx/28 -all")
    dns_server.add("example.test", "MX", "10 mx1.example.test.", "20 mx2.example.test.")
    dns_server.add("mx1.example.test", "A", "198.51.100.1")
    dns_server.add("mx2.example.test", "A", "192.0.2.17")
    spf = await check(resolver, "192.0.2.20")
    assert (spf.result, spf.mechanism, spf.lookups) == (Result.PASS, "mx/28", 1)
    assert (await check(resolver, "192.0.2.40")).result is Result.FAIL


async def test_mx_ipv6(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 mx:mail.test -all")
    dns_server.add("mail.test", "MX", "10 mx.mail.test.")
    dns_server.add("mx.mail.test", "AAAA", "2001:db8::25")
    assert (await check(resolver, "2001:db8::25")).result is Result.PASS


async def test_mx_has_no_implicit_mx(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 mx -all")
    dns_server.add("example.test", "A", "192.0.2.1")
    assert (await check(resolver, "192.0.2.1")).result is Result.FAIL


async def test_mx_address_failure_is_temperror(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 mx -all")
    dns_server.add("example.test", "MX", "10 broken.example.test.")
    dns_server.add("broken.example.test", "A", "192.0.2.1")
    dns_server.behave("broken.example.test", "servfail")
    assert (await check(resolver, "192.0.2.1")).result is Result.TEMPERROR


@pytest.mark.parametrize(("names", "result"), [(10, Result.PASS), (11, Result.PERMERROR)])
async def test_mx_record_limit(dns_server, resolver, names, result):
    dns_server.add("example.test", "TXT", "v=spf1 mx -all")
    dns_server.add("example.test", "MX", *(f"{n} mx{n}.example.test." for n in range(names)))
    dns_server.add(f"mx{names - 1}.example.test", "A", "192.0.2.1")
    spf = await check(resolver, "192.0.2.1")
    assert spf.result is result
    if result is Result.PERMERROR:
        assert spf.reason == "mx:example.test: too many MX records (11 > 10)"
        assert not any(rdtype == "A" for _, rdtype in dns_server.queries)


async def test_mx_limit_counts_records_not_hosts(dns_server, resolver):
    """§4.6.4: 11 MX records are too many even when they name only two hosts."""
    dns_server.add("example.test", "TXT", "v=spf1 mx -all")
    hosts = [f"{n} mail{n % 2}.example.test." for n in range(11)]
    dns_server.add("example.test", "MX", *hosts)
    dns_server.add("mail0.example.test", "A", "192.0.2.1")
    spf = await check(resolver, "192.0.2.1")
    assert (spf.result, spf.reason) == (
        Result.PERMERROR,
        "mx:example.test: too many MX records (11 > 10)",
    )


async def test_macro_spaces_in_a_target_are_looked_up(dns_server, resolver):
    """§7.1: %_ is a space and %- is %20; the expanded target is asked for as it is."""
    record = "v=spf1 a:macro%%percent%_%_space%-url-space.example.test -all"
    dns_server.add("example.test", "TXT", record)
    dns_server.add("macro%percent  space%20url-space.example.test", "A", "192.0.2.1")
    spf = await check(resolver, "192.0.2.1")
    assert spf.result is Result.PASS
    # the harness logs names in presentation form, where a space is \\032
    assert ("macro%percent\\032\\032space%20url-space.example.test", "A") in dns_server.queries


async def test_a_sender_domain_with_a_space_is_still_none(dns_server, resolver):
    spf = await check_host("192.0.2.1", "bad name.example.test", "", resolver)
    assert spf.result is Result.NONE
    assert dns_server.queries == []


@pytest.mark.parametrize(
    ("ip", "nibbles"),
    [
        ("2001:db8::cb01", "1.0.b.c" + ".0" * 20 + ".8.b.d.0.1.0.0.2"),  # RFC 7208 §7.4
        ("CAFE:BABE::1", "1" + ".0" * 23 + ".E.B.A.B.E.F.A.C"),  # the suite's v-macro-ip6
    ],
)
async def test_i_macro_nibbles_keep_the_case_of_the_address(dns_server, resolver, ip, nibbles):
    dns_server.add("example.test", "TXT", "v=spf1 -all exp=why.example.test")
    dns_server.add("why.example.test", "TXT", "%{c} is queried as %{ir}.%{v}.arpa")
    spf = await check(resolver, ip)
    assert spf.explanation == f"{ip.lower()} is queried as {nibbles}.ip6.arpa"


async def test_exists_with_macros(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 exists:%{ir}.%{l1r-}.lp._spf.%{d} -all")
    dns_server.add("7.2.0.192.strong.lp._spf.example.test", "A", "127.0.0.2")
    sender = "strong-bad@example.test"
    spf = await check(resolver, "192.0.2.7", sender=sender)
    assert (spf.result, spf.lookups) == (Result.PASS, 1)
    failed = await check(resolver, "192.0.2.8", sender=sender)
    assert failed.result is Result.FAIL
    assert ("8.2.0.192.strong.lp._spf.example.test", "A") in dns_server.queries


async def test_exists_always_asks_for_a_records(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 exists:%{v}.%{d} -all")
    dns_server.add("ip6.example.test", "A", "127.0.0.2")
    assert (await check(resolver, "2001:db8::1")).result is Result.PASS


async def test_target_that_is_not_a_valid_name_does_not_match(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 exists:%{l}.x.test ?all")
    spf = await check(resolver, "192.0.2.1", sender="a..b@example.test")
    assert (spf.result, spf.mechanism, spf.lookups) == (Result.NEUTRAL, "?all", 1)
    assert dns_server.queries == [("example.test", "TXT")]


def add_ptr(server, ip, *names):
    reverse = ipaddress.ip_address(ip).reverse_pointer
    server.add(reverse, "PTR", *(f"{name}." for name in names))


async def test_ptr_mechanism_uses_validated_names(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 ptr -all")
    add_ptr(dns_server, "192.0.2.7", "mail.example.test")
    dns_server.add("mail.example.test", "A", "192.0.2.7")
    add_ptr(dns_server, "192.0.2.8", "forged.example.test")  # forward name does not point back
    dns_server.add("forged.example.test", "A", "198.51.100.1")
    add_ptr(dns_server, "192.0.2.9", "mail.other.test")
    dns_server.add("mail.other.test", "A", "192.0.2.9")
    assert (await check(resolver, "192.0.2.7")).result is Result.PASS
    assert (await check(resolver, "192.0.2.8")).result is Result.FAIL
    assert (await check(resolver, "192.0.2.9")).result is Result.FAIL
    assert ("mail.other.test", "A") not in dns_server.queries  # outside the target: not asked


async def test_ptr_dns_error_is_no_match_not_temperror(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 ptr:example.test ?all")
    add_ptr(dns_server, "192.0.2.7", "mail.example.test")
    dns_server.behave("7.2.0.192.in-addr.arpa", "servfail")
    spf = await check(resolver, "192.0.2.7")
    assert (spf.result, spf.mechanism) == (Result.NEUTRAL, "?all")


async def test_ptr_names_beyond_ten_are_ignored(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 ptr -all")
    names = [f"h{n:02d}.example.test" for n in range(12)]
    add_ptr(dns_server, "192.0.2.7", *names)
    for name in names:
        dns_server.add(name, "A", "198.51.100.1")
    spf = await check(resolver, "192.0.2.7")
    assert spf.result is Result.FAIL
    asked = [name for name, rdtype in dns_server.queries if rdtype == "A"]
    assert len(asked) == 10


async def test_p_macro_is_the_validated_name(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 exists:%{p}.ok.test -all")
    add_ptr(dns_server, "192.0.2.7", "mail.example.test")
    dns_server.add("mail.example.test", "A", "192.0.2.7")
    dns_server.add("mail.example.test.ok.test", "A", "127.0.0.2")
    spf = await check(resolver, "192.0.2.7")
    assert (spf.result, spf.lookups) == (Result.PASS, 2)  # exists, and the PTR for %{p}
    unknown = await check(resolver, "192.0.2.8")
    assert unknown.result is Result.FAIL
    assert ("unknown.ok.test", "A") in dns_server.queries


async def test_explanation_on_fail(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all exp=why.%{d}")
    dns_server.add(
        "why.example.test",
        "TXT",
        "%{c} may not send mail as %{s}%_(see https://%{d}/spf?s=%{S}) %{r}",
    )
    spf = await check(resolver, "2001:db8::1", receiver="mx.nhs.example")
    assert spf.result is Result.FAIL
    assert spf.explanation == (
        "2001:db8::1 may not send mail as jo@example.test "
        "(see https://example.test/spf?s=jo%40example.test) mx.nhs.example"
    )
    passed = await check(resolver, "192.0.2.1")
    assert (passed.result, passed.explanation) == (Result.PASS, "")


async def test_explanation_is_capped(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 -all exp=why.example.test")
    dns_server.add("why.example.test", "TXT", "%{s}" * 500)
    spf = await check(resolver, "192.0.2.1")
    assert spf.explanation == ("jo@example.test" * 500)[:1000]


async def test_explanation_only_on_fail(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 ~all exp=why.example.test")
    dns_server.add("why.example.test", "TXT", "go away")
    spf = await check(resolver, "192.0.2.1")
    assert (spf.result, spf.explanation) == (Result.SOFTFAIL, "")
    assert ("why.example.test", "TXT") not in dns_server.queries


@pytest.mark.parametrize(
    "problem", ["servfail", "nxdomain", "two records", "bad macro", "exp only in include"]
)
async def test_explanation_failures_are_ignored(dns_server, resolver, problem):
    record = "v=spf1 -all exp=why.example.test"
    if problem == "exp only in include":
        dns_server.add("example.test", "TXT", "v=spf1 -include:inc.example.test")
        dns_server.add("inc.example.test", "TXT", "v=spf1 +all " + record[7:])
    else:
        dns_server.add("example.test", "TXT", record)
    if problem != "nxdomain":
        dns_server.add("why.example.test", "TXT", "%{x}" if problem == "bad macro" else "no")
    if problem == "servfail":
        dns_server.behave("why.example.test", "servfail")
    if problem == "two records":
        dns_server.add("why.example.test", "TXT", "another")
    spf = await check(resolver, "192.0.2.1")
    assert (spf.result, spf.explanation) == (Result.FAIL, "")


async def test_redirect_uses_the_target_explanation_only(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 redirect=r.test exp=mine.test")
    dns_server.add("r.test", "TXT", "v=spf1 -all exp=theirs.test")
    dns_server.add("mine.test", "TXT", "from the original")
    dns_server.add("theirs.test", "TXT", "from %{d}")
    spf = await check(resolver, "192.0.2.1")
    assert (spf.result, spf.explanation) == (Result.FAIL, "from r.test")


async def test_check_spf_uses_the_mail_from_domain(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    spf = await check_spf("192.0.2.1", "<Jo.Bloggs@Example.Test>", "mail.elsewhere.test", resolver)
    assert (spf.result, spf.identity, spf.domain) == (Result.PASS, "mailfrom", "example.test")
    assert spf.sender == "Jo.Bloggs@Example.Test"
    assert spf.to_method_result() == MethodResult(
        "spf", Result.PASS, spf.reason, (("smtp.mailfrom", "Jo.Bloggs@Example.Test"),)
    )
    assert spf.to_method_result().clause().startswith("spf=pass reason=")


@pytest.mark.parametrize("mail_from", ["", "<>", "  "])
async def test_null_sender_is_postmaster_at_helo(dns_server, resolver, mail_from):
    dns_server.add("mail.example.test", "TXT", "v=spf1 exists:%{l}.%{d} -all")
    dns_server.add("postmaster.mail.example.test", "A", "127.0.0.2")
    spf = await check_spf("192.0.2.1", mail_from, "mail.example.test", resolver)
    assert (spf.result, spf.identity) == (Result.PASS, "mailfrom")
    assert (spf.sender, spf.domain) == ("postmaster@mail.example.test", "mail.example.test")


async def test_missing_local_part_is_postmaster(dns_server, resolver):
    dns_server.add("example.test", "TXT", "v=spf1 exists:%{l}.%{o} -all")
    dns_server.add("postmaster.example.test", "A", "127.0.0.2")
    spf = await check_host("192.0.2.1", "example.test", "example.test", resolver)
    assert (spf.result, spf.sender) == (Result.PASS, "postmaster@example.test")


async def test_check_helo(dns_server, resolver):
    dns_server.add("mail.example.test", "TXT", "v=spf1 a -all")
    dns_server.add("mail.example.test", "A", "192.0.2.1")
    spf = await check_helo("192.0.2.1", "Mail.Example.Test.", resolver)
    assert (spf.result, spf.identity) == (Result.PASS, "helo")
    assert (spf.domain, spf.sender) == ("mail.example.test", "postmaster@mail.example.test")
    assert spf.to_method_result().props == (("smtp.helo", "mail.example.test"),)
    assert (await check_helo("198.51.100.1", "mail.example.test", resolver)).result is Result.FAIL


@pytest.mark.parametrize(
    "helo", ["[192.0.2.1]", "192.0.2.1", "localhost", "", "[IPv6:2001:db8::1]"]
)
async def test_helo_that_is_not_a_fqdn_is_none(dns_server, resolver, helo):
    spf = await check_helo("192.0.2.1", helo, resolver)
    assert (spf.result, spf.identity, spf.lookups) == (Result.NONE, "helo", 0)
    assert "is not a fully qualified domain name" in spf.reason
    assert dns_server.queries == []


async def test_h_macro_and_unicode_domain(dns_server, resolver):
    dns_server.add("xn--bcher-kva.test", "TXT", "v=spf1 exists:%{h}.helo.test -all")
    dns_server.add("mx.sender.test.helo.test", "A", "127.0.0.2")
    spf = await check_spf("192.0.2.1", "jo@bücher.test", "mx.sender.test", resolver)
    assert (spf.result, spf.domain) == (Result.PASS, "xn--bcher-kva.test")


async def test_bad_ip_is_a_programming_error(resolver):
    with pytest.raises(ValueError):
        await check_host("not-an-ip", "example.test", "jo@example.test", resolver)
