"""DMARC: record parsing, alignment, policy, DNS lookup, From header."""

import pytest

from securemail.dns import Resolver
from securemail.mech.dmarc import (
    DkimPass,
    DmarcLookup,
    DmarcRecord,
    DmarcSyntaxError,
    SpfOutcome,
    aligned,
    applicable_policy,
    check_dmarc,
    dmarc_records,
    evaluate_dmarc,
    header_from_domain,
    lookup_dmarc,
    lookup_dmarc_records,
    parse_dmarc,
    select_dmarc_record,
)
from securemail.mech.results import Result, authentication_results


@pytest.fixture
def resolver(dns_server):
    return Resolver([dns_server.nameserver], timeout=2.0)


# --- parsing ------------------------------------------------------------------------------

VALID = [
    ("minimal", "v=DMARC1; p=reject", {"p": "reject", "sp": None, "pct": 100}),
    ("defaults", "v=DMARC1; p=none", {"adkim": "r", "aspf": "r", "fo": "0", "rf": "afrf", "ri": 86400, "rua": (), "ruf": ()}),
    ("trailing semicolon", "v=DMARC1; p=quarantine;", {"p": "quarantine"}),
    ("no spaces", "v=DMARC1;p=reject;sp=none;pct=20", {"p": "reject", "sp": "none", "pct": 20}),
    ("whitespace around everything", "  v = DMARC1 ;  p = reject ;\tadkim = s ", {"p": "reject", "adkim": "s"}),
    ("upper-case tag names and values", "V=DMARC1; P=Reject; SP=QUARANTINE; ADKIM=S; ASPF=s", {"p": "reject", "sp": "quarantine", "adkim": "s", "aspf": "s"}),
    ("all tags", "v=DMARC1; p=reject; sp=quarantine; pct=50; adkim=s; aspf=r; rua=mailto:agg@example.org; ruf=mailto:fail@example.org; fo=1:d; rf=afrf; ri=3600",
     {"p": "reject", "sp": "quarantine", "pct": 50, "adkim": "s", "aspf": "r", "rua": ("mailto:agg@example.org",), "ruf": ("mailto:fail@example.org",), "fo": "1:d", "rf": "afrf", "ri": 3600}),
    ("several rua with size limits", "v=DMARC1; p=none; rua=mailto:a@example.org!10m, mailto:b@example.net", {"rua": ("mailto:a@example.org!10m", "mailto:b@example.net")}),
    ("pct zero", "v=DMARC1; p=reject; pct=0", {"pct": 0}),
    ("fo s", "v=DMARC1; p=none; fo=s", {"fo": "s"}),
]  # fmt: skip


@pytest.mark.parametrize(("record", "fields"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_records(record, fields):
    parsed = parse_dmarc(record)
    for name, value in fields.items():
        assert getattr(parsed, name) == value, name
    assert parsed.warnings == ()


INVALID = [
    ("empty", "", 'v: the record must start with v=DMARC1, not ""'),
    ("version not first", "p=reject; v=DMARC1", 'v: the record must start with v=DMARC1, not "p=reject"'),
    ("wrong version", "v=DMARC2; p=reject", "v: the record must start with v=DMARC1"),
    ("lower-case version value", "v=dmarc1; p=reject", "v: the record must start with v=DMARC1"),
    ("no p", "v=DMARC1", "p: missing (the policy tag is required)"),
    ("no p, only invalid rua", "v=DMARC1; rua=not a uri", "p: missing"),
    ("bad p", "v=DMARC1; p=rejected", 'p: "rejected" is not none, quarantine or reject'),
    ("empty p", "v=DMARC1; p=", 'p: "" is not none, quarantine or reject'),
    ("bad sp", "v=DMARC1; p=reject; sp=all", 'sp: "all" is not none, quarantine or reject'),
    ("duplicate p", "v=DMARC1; p=none; p=reject", "p: given more than once"),
    ("duplicate tag differing in case", "v=DMARC1; p=none; pct=10; PCT=100", "pct: given more than once"),
    ("duplicate rua", "v=DMARC1; p=none; rua=mailto:a@x.org; rua=mailto:b@x.org", "rua: given more than once"),
    ("second v", "v=DMARC1; p=none; v=DMARC1", "v: given more than once"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("record", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_records(record, message):
    with pytest.raises(DmarcSyntaxError) as err:
        parse_dmarc(record)
    assert str(err.value).startswith(message)
    assert isinstance(err.value, ValueError)


TOLERATED = [
    ("pct above 100 clamped", "v=DMARC1; p=reject; pct=150", {"pct": 100}, "pct: 150 is outside 0-100; 100 used"),
    ("negative pct clamped", "v=DMARC1; p=reject; pct=-5", {"pct": 0}, "pct: -5 is outside 0-100; 0 used"),
    ("pct not a number", "v=DMARC1; p=reject; pct=half", {"pct": 100}, 'pct: "half" is not a whole number'),
    ("unknown tag", "v=DMARC1; p=reject; np=reject", {"p": "reject"}, 'unknown tag "np" ignored'),
    ("part without =", "v=DMARC1; p=reject; oops", {"p": "reject"}, '"oops" is not a tag=value pair'),
    ("bad adkim", "v=DMARC1; p=reject; adkim=x", {"adkim": "r"}, 'adkim: "x" is not r or s; r used'),
    ("bad aspf", "v=DMARC1; p=reject; aspf=strict", {"aspf": "r"}, 'aspf: "strict" is not r or s'),
    ("bad ri", "v=DMARC1; p=reject; ri=daily", {"ri": 86400}, 'ri: "daily" is not a number of seconds'),
    ("bad fo item dropped", "v=DMARC1; p=reject; fo=1:x", {"fo": "1"}, 'fo: "x" is not one of 0, 1, d, s'),
    ("unknown rf", "v=DMARC1; p=reject; rf=iodef", {"rf": "afrf"}, "rf: no usable value; afrf used"),
    ("bad rua uri dropped", "v=DMARC1; p=reject; rua=mailto:a@x.org,not a uri", {"rua": ("mailto:a@x.org",)}, 'rua: "not a uri" is not a report URI'),
    ("non-mailto rua kept", "v=DMARC1; p=reject; rua=https://r.example/dmarc", {"rua": ("https://r.example/dmarc",)}, "is not mailto:"),
    ("p missing but rua valid", "v=DMARC1; rua=mailto:agg@example.org", {"p": "none", "rua": ("mailto:agg@example.org",)}, "treated as p=none because rua is valid"),
    ("bad p but rua valid", "v=DMARC1; p=rejected; rua=mailto:agg@example.org", {"p": "none"}, 'p: "rejected" is not none, quarantine or reject; treated as p=none'),
    ("bad sp but rua valid", "v=DMARC1; p=reject; sp=x; rua=mailto:agg@example.org", {"p": "none", "sp": None}, 'sp: "x"'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("record", "fields", "warning"), [c[1:] for c in TOLERATED], ids=[c[0] for c in TOLERATED]
)
def test_tolerated_oddities_warn(record, fields, warning):
    parsed = parse_dmarc(record)
    for name, value in fields.items():
        assert getattr(parsed, name) == value, name
    assert any(warning in text for text in parsed.warnings), parsed.warnings


def test_long_warning_values_are_shortened():
    parsed = parse_dmarc("v=DMARC1; p=none; adkim=" + "x" * 500)
    assert len(parsed.warnings) == 1
    assert len(parsed.warnings[0]) < 120


def test_select_dmarc_record():
    spf = "v=spf1 -all"
    dmarc = "v=DMARC1; p=reject"
    assert select_dmarc_record([spf, dmarc]) == dmarc
    assert select_dmarc_record([spf]) is None
    assert select_dmarc_record([]) is None
    assert select_dmarc_record([dmarc, "v=DMARC1; p=none"]) is None  # several: no policy
    assert select_dmarc_record(["v=DMARC10; p=reject"]) is None
    assert select_dmarc_record(["v=DMARC1"]) == "v=DMARC1"
    assert dmarc_records([dmarc, spf, "v=DMARC1;p=none"]) == [dmarc, "v=DMARC1;p=none"]


# --- alignment ----------------------------------------------------------------------------

ALIGNMENT = [
    ("example.com", "example.com", "s", True),
    ("EXAMPLE.com.", "example.COM", "s", True),
    ("mail.example.com", "example.com", "s", False),
    ("mail.example.com", "example.com", "r", True),
    ("a.example.com", "b.example.com", "r", True),
    ("example.com", "example.net", "r", False),
    ("example.com.evil.net", "example.com", "r", False),
    ("trust-a.nhs.uk", "trust-b.nhs.uk", "r", False),  # nhs.uk is a public suffix
    ("mail.trust-a.nhs.uk", "trust-a.nhs.uk", "r", True),
    ("bar.co.uk", "foo.bar.co.uk", "r", True),
    ("co.uk", "example.co.uk", "r", False),
    ("alice.github.io", "bob.github.io", "r", False),
    ("", "example.com", "r", False),
]


@pytest.mark.parametrize(("a", "b", "mode", "expected"), ALIGNMENT)
def test_aligned(a, b, mode, expected):
    assert aligned(a, b, mode) is expected
    assert aligned(b, a, mode) is expected


def test_aligned_rejects_unknown_mode():
    with pytest.raises(ValueError, match="alignment mode"):
        aligned("example.com", "example.com", "x")


# --- evaluation ---------------------------------------------------------------------------

REJECT = parse_dmarc("v=DMARC1; p=reject")
STRICT = parse_dmarc("v=DMARC1; p=reject; adkim=s; aspf=s")
SUBDOMAINS = parse_dmarc("v=DMARC1; p=reject; sp=quarantine")
MONITOR = parse_dmarc("v=DMARC1; p=none; rua=mailto:agg@example.com")


def spf(result, domain):
    return SpfOutcome(result, domain)


def dkim(*domains):
    return [DkimPass(d) for d in domains]


# (name, from, record, policy domain, spf, dkim, result, spf aligned, dkim aligned, policy,
#  disposition) — scenarios in the spirit of RFC 7489 Appendix B, written for this project.
SCENARIOS = [
    ("direct mail, both aligned", "example.com", REJECT, "example.com", spf("pass", "example.com"), dkim("example.com"), Result.PASS, True, True, "reject", "none"),
    ("aligned SPF only", "example.com", REJECT, "example.com", spf("pass", "example.com"), [], Result.PASS, True, False, "reject", "none"),
    ("aligned DKIM only", "example.com", REJECT, "example.com", spf("fail", "example.com"), dkim("example.com"), Result.PASS, False, True, "reject", "none"),
    ("neither", "example.com", REJECT, "example.com", spf("softfail", "example.com"), [], Result.FAIL, False, False, "reject", "reject"),
    ("no SPF result at all", "example.com", REJECT, "example.com", None, [], Result.FAIL, False, False, "reject", "reject"),
    ("DKIM passed for an unrelated domain", "example.com", REJECT, "example.com", None, dkim("esp.example.net"), Result.FAIL, False, False, "reject", "reject"),
    ("list forwarded: SPF passes for the list", "example.com", REJECT, "example.com", spf("pass", "lists.example.org"), [], Result.FAIL, False, False, "reject", "reject"),
    ("ESP signs with the customer's subdomain, relaxed", "example.com", REJECT, "example.com", spf("pass", "bounce.esp.example.net"), dkim("esp.example.net", "mail.example.com"), Result.PASS, False, True, "reject", "none"),
    ("ESP subdomain signature, strict", "example.com", STRICT, "example.com", None, dkim("mail.example.com"), Result.FAIL, False, False, "reject", "reject"),
    ("bounce subdomain, relaxed SPF", "example.com", REJECT, "example.com", spf("pass", "bounces.example.com"), [], Result.PASS, True, False, "reject", "none"),
    ("bounce subdomain, strict SPF", "example.com", STRICT, "example.com", spf("pass", "bounces.example.com"), [], Result.FAIL, False, False, "reject", "reject"),
    ("SPF result is case-insensitive", "example.com", REJECT, "example.com", spf("PASS", "Example.COM"), [], Result.PASS, True, False, "reject", "none"),
    ("lookalike domain", "example.com", REJECT, "example.com", spf("pass", "example.com.evil.net"), dkim("example.com.evil.net"), Result.FAIL, False, False, "reject", "reject"),
    ("sibling under a public suffix", "trust-a.nhs.uk", REJECT, "trust-a.nhs.uk", spf("pass", "trust-b.nhs.uk"), dkim("nhs.uk"), Result.FAIL, False, False, "reject", "reject"),
    ("subdomain From uses sp", "mail.example.com", SUBDOMAINS, "example.com", None, [], Result.FAIL, False, False, "quarantine", "quarantine"),
    ("subdomain From without sp uses p", "mail.example.com", REJECT, "example.com", None, [], Result.FAIL, False, False, "reject", "reject"),
    ("sp ignored for the domain itself", "example.com", SUBDOMAINS, "example.com", None, [], Result.FAIL, False, False, "reject", "reject"),
    ("subdomain passes with org-domain DKIM", "mail.example.com", SUBDOMAINS, "example.com", None, dkim("example.com"), Result.PASS, False, True, "quarantine", "none"),
    ("monitoring policy fails without action", "example.com", MONITOR, "example.com", spf("fail", "example.com"), [], Result.FAIL, False, False, "none", "none"),
    ("no record", "example.com", None, "example.com", spf("pass", "example.com"), [], Result.NONE, True, False, "none", "none"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("from_domain", "record", "policy_domain", "spf_outcome", "passes", "result", "spf_al", "dkim_al", "policy", "disposition"),
    [c[1:] for c in SCENARIOS],
    ids=[c[0] for c in SCENARIOS],
)  # fmt: skip
def test_evaluate(
    from_domain,
    record,
    policy_domain,
    spf_outcome,
    passes,
    result,
    spf_al,
    dkim_al,
    policy,
    disposition,
):
    verdict = evaluate_dmarc(from_domain, record, policy_domain, spf_outcome, passes, rng_value=0.0)
    assert verdict.result is result
    assert (verdict.spf_aligned, verdict.dkim_aligned) == (spf_al, dkim_al)
    assert (verdict.policy, verdict.disposition) == (policy, disposition)
    assert verdict.from_domain == from_domain
    assert verdict.record is record
    assert verdict.reason


@pytest.mark.parametrize(
    ("record", "rng", "disposition"),
    [
        ("v=DMARC1; p=reject; pct=50", 0.49, "reject"),  # sampled
        ("v=DMARC1; p=reject; pct=50", 0.5, "quarantine"),  # not sampled: one step down
        ("v=DMARC1; p=quarantine; pct=50", 0.75, "none"),
        ("v=DMARC1; p=quarantine; pct=50", 0.25, "quarantine"),
        ("v=DMARC1; p=reject; pct=0", 0.0, "quarantine"),
        ("v=DMARC1; p=reject; pct=100", 0.999, "reject"),
        ("v=DMARC1; p=none; pct=10", 0.9, "none"),
    ],
)
def test_pct_sampling(record, rng, disposition):
    verdict = evaluate_dmarc(
        "example.com", parse_dmarc(record), "example.com", None, [], rng_value=rng
    )
    assert verdict.result is Result.FAIL
    assert verdict.disposition == disposition
    assert verdict.policy == parse_dmarc(record).p
    if disposition != verdict.policy:
        assert "did not select this message" in verdict.reason


def test_pct_does_not_touch_a_pass():
    record = parse_dmarc("v=DMARC1; p=reject; pct=10")
    verdict = evaluate_dmarc(
        "example.com", record, "example.com", None, dkim("example.com"), rng_value=0.99
    )
    assert (verdict.result, verdict.disposition) == (Result.PASS, "none")


def test_random_sampling_when_no_rng_value_given():
    full = parse_dmarc("v=DMARC1; p=reject")
    assert evaluate_dmarc("example.com", full, "example.com", None, []).disposition == "reject"
    never = parse_dmarc("v=DMARC1; p=reject; pct=0")
    assert evaluate_dmarc("example.com", never, "example.com", None, []).disposition == "quarantine"


@pytest.mark.parametrize("rng", [-0.1, 1.0, 2.0])
def test_rng_value_out_of_range(rng):
    with pytest.raises(ValueError, match="rng_value"):
        evaluate_dmarc("example.com", REJECT, "example.com", None, [], rng_value=rng)


def test_fail_reason_explains_both_methods():
    verdict = evaluate_dmarc(
        "example.com",
        REJECT,
        "example.com",
        spf("pass", "lists.example.org"),
        dkim("lists.example.org"),
        rng_value=0.0,
    )
    assert "SPF passed for lists.example.org, not aligned with example.com" in verdict.reason
    assert "DKIM passed only for d=lists.example.org" in verdict.reason
    assert "policy reject from _dmarc.example.com" in verdict.reason


def test_method_result_clauses():
    failed = evaluate_dmarc("example.com", SUBDOMAINS, "example.com", None, [], rng_value=0.0)
    header = authentication_results("gw.example", [failed.to_method_result()])
    assert 'dmarc=fail reason="p=reject sp=quarantine dis=reject" header.from=example.com' in header
    passed = evaluate_dmarc("example.com", REJECT, "example.com", None, dkim("example.com"))
    assert passed.to_method_result().clause() == (
        'dmarc=pass reason="p=reject dis=none" header.from=example.com'
    )
    nothing = evaluate_dmarc("example.com", None, "example.com", None, [])
    assert nothing.to_method_result().clause() == (
        'dmarc=none reason="no DMARC record for example.com" header.from=example.com'
    )


def test_applicable_policy_is_sp_only_below_the_policy_domain():
    record = DmarcRecord(p="reject", sp="none")
    assert applicable_policy("example.org", "example.org", record) == "reject"
    assert applicable_policy("mail.example.org", "example.org", record) == "none"
    inherit = DmarcRecord(p="quarantine")
    assert applicable_policy("mail.example.org", "example.org", inherit) == "quarantine"


# --- DNS lookup ---------------------------------------------------------------------------


async def test_lookup_at_the_from_domain(dns_server, resolver):
    dns_server.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject", "v=spf1 -all")
    record, policy_domain, status = await lookup_dmarc("Example.COM", resolver)
    assert record == DmarcRecord(p="reject")
    assert (policy_domain, status) == ("example.com", Result.PASS)


async def test_lookup_falls_back_to_the_organizational_domain(dns_server, resolver):
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject; sp=quarantine")
    record, policy_domain, status = await lookup_dmarc("a.b.example.org", resolver)
    assert record is not None and record.sp == "quarantine"
    assert (policy_domain, status) == ("example.org", Result.PASS)
    asked = [name for name, rdtype in dns_server.queries if rdtype == "TXT"]
    assert asked == ["_dmarc.a.b.example.org", "_dmarc.example.org"]  # not _dmarc.b.example.org


async def test_subdomain_record_wins_over_the_organizational_one(dns_server, resolver):
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    dns_server.add("_dmarc.mail.example.org", "TXT", "v=DMARC1; p=none")
    record, policy_domain, _status = await lookup_dmarc("mail.example.org", resolver)
    assert record is not None and record.p == "none"
    assert policy_domain == "mail.example.org"


async def test_non_dmarc_txt_at_the_from_domain_is_skipped(dns_server, resolver):
    dns_server.add("_dmarc.mail.example.org", "TXT", "google-site-verification=abc")
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=quarantine")
    record, policy_domain, _status = await lookup_dmarc("mail.example.org", resolver)
    assert record is not None and record.p == "quarantine"
    assert policy_domain == "example.org"


async def test_no_record_anywhere_is_none(dns_server, resolver):
    record, policy_domain, status = await lookup_dmarc("mail.nowhere.example", resolver)
    assert (record, policy_domain, status) == (None, "mail.nowhere.example", Result.NONE)


async def test_version_lookalike_is_not_a_record(dns_server, resolver):
    dns_server.add("_dmarc.example.net", "TXT", "v=DMARC10; p=reject")
    assert (await lookup_dmarc("example.net", resolver))[2] is Result.NONE


async def test_servfail_is_temperror_not_none(dns_server, resolver):
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    dns_server.behave("_dmarc.mail.example.org", "servfail")
    record, policy_domain, status = await lookup_dmarc("mail.example.org", resolver)
    assert (record, policy_domain, status) == (None, "mail.example.org", Result.TEMPERROR)
    assert ("_dmarc.example.org", "TXT") not in dns_server.queries  # no fallback past a failure


async def test_servfail_at_the_organizational_domain_is_temperror(dns_server, resolver):
    dns_server.behave("_dmarc.example.org", "servfail")
    _record, policy_domain, status = await lookup_dmarc("mail.example.org", resolver)
    assert (policy_domain, status) == ("example.org", Result.TEMPERROR)


async def test_two_records_is_permerror(dns_server, resolver):
    dns_server.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject", "v=DMARC1; p=none")
    assert await lookup_dmarc("example.com", resolver) == (None, "example.com", Result.PERMERROR)


async def test_garbage_record_is_permerror(dns_server, resolver):
    dns_server.add("_dmarc.example.com", "TXT", "v=DMARC1; p=maybe; pct=lots")
    assert await lookup_dmarc("example.com", resolver) == (None, "example.com", Result.PERMERROR)


async def test_long_record_split_into_strings(dns_server, resolver):
    uris = ",".join(f"mailto:dmarc-{n}@reports.example.com" for n in range(12))
    dns_server.add("_dmarc.example.com", "TXT", f"v=DMARC1; p=reject; rua={uris}")
    record, _domain, _status = await lookup_dmarc("example.com", resolver)
    assert record is not None and len(record.rua) == 12


async def test_lookup_dmarc_records_keeps_several_records_apart(dns_server, resolver):
    """The raw §6.6.3 walk, which the checker reads: nothing chosen, nothing parsed."""
    dns_server.add(
        "_dmarc.example.org", "TXT", "v=DMARC1; p=reject", "v=DMARC1; p=none", "v=spf1 -all"
    )
    found = await lookup_dmarc_records("Mail.Example.ORG.", resolver)
    assert (found.domain, found.policy_domain, found.error) == (
        "mail.example.org",
        "example.org",
        "",
    )
    assert sorted(found.records) == ["v=DMARC1; p=none", "v=DMARC1; p=reject"]
    nothing = await lookup_dmarc_records("nowhere.example", resolver)
    assert nothing == DmarcLookup("nowhere.example", "nowhere.example", ())


async def test_lookup_dmarc_records_failure_is_an_error_not_absence(dns_server, resolver):
    dns_server.behave("_dmarc.down.example", "servfail")
    down = await lookup_dmarc_records("down.example", resolver)
    assert (down.policy_domain, down.records) == ("down.example", ())
    assert "SERVFAIL" in down.error


async def test_check_dmarc_end_to_end(dns_server, resolver):
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject; sp=quarantine; pct=100")
    failed = await check_dmarc("mail.example.org", spf("pass", "evil.example"), [], resolver)
    assert (failed.result, failed.policy, failed.disposition) == (
        Result.FAIL,
        "quarantine",
        "quarantine",
    )
    assert failed.policy_domain == "example.org"
    passed = await check_dmarc(
        "mail.example.org", spf("pass", "bounce.example.org"), [], resolver, rng_value=0.5
    )
    assert (passed.result, passed.spf_aligned, passed.disposition) == (Result.PASS, True, "none")


async def test_check_dmarc_temperror_and_permerror(dns_server, resolver):
    dns_server.behave("_dmarc.down.example", "servfail")
    dns_server.add("_dmarc.broken.example", "TXT", "v=DMARC1; p=rejected")
    down = await check_dmarc("down.example", None, dkim("down.example"), resolver)
    assert (down.result, down.record, down.disposition) == (Result.TEMPERROR, None, "none")
    assert "SERVFAIL" in down.reason
    assert down.dkim_aligned
    broken = await check_dmarc("broken.example", None, [], resolver)
    assert broken.result is Result.PERMERROR
    assert 'p: "rejected" is not none, quarantine or reject' in broken.reason
    assert broken.to_method_result().clause().startswith("dmarc=permerror reason=")


async def test_check_dmarc_none(dns_server, resolver):
    verdict = await check_dmarc("quiet.example", spf("pass", "quiet.example"), [], resolver)
    assert (verdict.result, verdict.disposition, verdict.spf_aligned) == (
        Result.NONE,
        "none",
        True,
    )


# --- the From header ----------------------------------------------------------------------

FROM_CASES = [
    ("plain", b"From: jo@Example.ORG\r\nTo: a@nhs.net\r\n\r\nbody\r\n", "example.org", ""),
    ("display name", b'From: "Bloggs, Jo" <jo@example.org>\r\n\r\n', "example.org", ""),
    ("RFC 2047 display name", b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jm@trust.nhs.uk>\r\n\r\n", "trust.nhs.uk", ""),
    ("folded", b"Subject: x\r\nFrom: Jo Bloggs\r\n <jo@example.org>\r\n\r\n", "example.org", ""),
    ("LF only, case-insensitive name", b"FROM: jo@example.org\nSubject: x\n\n", "example.org", ""),
    ("IDN domain", "From: jo@bücher.example\r\n\r\n".encode(), "xn--bcher-kva.example", ""),
    ("From in the body ignored", b"From: jo@example.org\r\n\r\nFrom: evil@evil.example\r\n", "example.org", ""),
    # The one header reader (securemail.core.message) ends the header section at a line
    # that is not a field, as Postfix does: an mbox "From " line starts the body.
    ("mbox From_ line starts the body", b"From jo@evil.example Mon Jan  1 00:00:00 2024\nFrom: jo@example.org\n\n", None, "no From header"),
    ("From below a line that is not a field is body", b"From: jo@example.org\r\nno colon\r\nFrom: ceo@nhs.net\r\n\r\n", "example.org", ""),
    ("over the reader's field limit", b"X: y\r\n" * 1001 + b"From: jo@example.org\r\n\r\n", None, "header section not read: more than 1000 header fields"),
    ("no From", b"To: a@nhs.net\r\nSubject: x\r\n\r\nFrom: jo@example.org\r\n", None, "no From header"),
    ("empty message", b"", None, "no From header"),
    ("two From headers", b"From: jo@example.org\r\nSubject: x\r\nFrom: ceo@nhs.net\r\n\r\n", None, "more than one From header"),
    ("two addresses", b"From: jo@example.org, ceo@nhs.net\r\n\r\n", None, "From header with several addresses"),
    ("unquoted comma in display name", b"From: Bloggs, Jo <jo@example.org>\r\n\r\n", None, "From header with several addresses"),
    ("empty group", b"From: undisclosed-senders:;\r\n\r\n", None, "From header has no address"),
    ("not an address", b"From: Jo Bloggs\r\n\r\n", None, "From address not valid: "),
    ("double @", b"From: jo@nhs.net@evil.example\r\n\r\n", None, "From address not valid: more than one '@'"),
    ("bad UTF-8", b"From: j\xffo@example.org\r\n\r\n", None, "From address not valid: contains bytes that are not valid UTF-8"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("message", "domain", "problem"), [c[1:] for c in FROM_CASES], ids=[c[0] for c in FROM_CASES]
)
def test_header_from_domain(message, domain, problem):
    found, why = header_from_domain(message)
    assert found == domain
    if problem:
        assert why.startswith(problem)
    else:
        assert why == ""
