"""Classification: every row of both guidance tables, boundaries, accredited list, overrides."""

from datetime import date

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from securemail.core.accredited import AccreditedEntry, AccreditedList
from securemail.core.classify import Classifier
from securemail.core.rules import SECURE_SUFFIXES, Audience, Status

TODAY = date(2026, 11, 23)
GOV, HSC = Audience.GOVERNMENT, Audience.HEALTH_AND_CARE
S, U, INV = Status.SECURE, Status.UNKNOWN, Status.INVALID

# (address, government, health-and-care, rule for hsc): the seed's two summary tables,
# each row exercised at the apex and below it, plus what is just outside each row.
TABLE = [
    # *.nhs.net → Yes (both tables)
    ("a@nhs.net", S, S, "nhs-net"),
    ("a@trust.nhs.net", S, S, "nhs-net"),
    ("a@x.y.nhs.net", S, S, "nhs-net"),
    # *secure.nhs.uk → Yes (both tables), read on whole labels
    ("a@secure.nhs.uk", S, S, "secure-nhs-uk"),
    ("a@trust.secure.nhs.uk", S, S, "secure-nhs-uk"),
    ("a@insecure.nhs.uk", U, U, "nhs-uk"),
    ("a@trustsecure.nhs.uk", U, U, "nhs-uk"),
    # *.nhs.uk (does not end secure.nhs.uk) → Unknown
    ("a@nhs.uk", U, U, "nhs-uk"),
    ("a@example.nhs.uk", U, U, "nhs-uk"),
    ("a@secure.example.nhs.uk", U, U, "nhs-uk"),
    # Scotland and Wales: *.nhs.uk, own assurance programme
    ("a@scot.nhs.uk", U, U, "scot-nhs-uk"),
    ("a@nhsgg.scot.nhs.uk", U, U, "scot-nhs-uk"),
    ("a@wales.nhs.uk", U, U, "wales-nhs-uk"),
    ("a@cardiff.wales.nhs.uk", U, U, "wales-nhs-uk"),
    # Only in the health and social care table
    ("a@gov.uk", U, S, "gov-uk"),
    ("a@dwp.gov.uk", U, S, "gov-uk"),
    ("a@cjsm.net", U, S, "cjsm-net"),
    ("a@probation.cjsm.net", U, S, "cjsm-net"),
    ("a@pnn.police.uk", U, S, "pnn-police-uk"),
    ("a@met.pnn.police.uk", U, S, "pnn-police-uk"),
    ("a@mod.uk", U, S, "mod-uk"),
    ("a@army.mod.uk", U, S, "mod-uk"),
    ("a@parliament.uk", U, S, "parliament-uk"),
    ("a@commons.parliament.uk", U, S, "parliament-uk"),
    # Any other email address → Unknown; not-whole-label matches are other addresses
    ("a@gmail.com", U, U, "other"),
    ("a@evilnhs.net", U, U, "other"),
    ("a@nhs.net.evil.com", U, U, "other"),
    ("a@nhsnet.com", U, U, "other"),
    ("a@police.uk", U, U, "other"),
    ("a@met.police.uk", U, U, "other"),
    ("a@fakegov.uk", U, U, "other"),
    ("a@gov.uk.evil.com", U, U, "other"),
    ("a@NHS.NET", S, S, "nhs-net"),
    ("Jo <a@nhs.net>", S, S, "nhs-net"),
    # invalid: never secure
    ("a@nhs.net@evil.com", INV, INV, "invalid-address"),
    ("a@nhs.net.", INV, INV, "invalid-address"),  # a trailing dot is refused, not repaired
    ("a@[192.0.2.1]", INV, INV, "invalid-address"),
    ("", INV, INV, "invalid-address"),
    ("a@ｎｈｓ.ｎｅｔ", INV, INV, "invalid-address"),
    ('"x@nhs.net"@evil.com', U, U, "other"),
    ("a@nhs.nеt", U, U, "other"),  # Cyrillic е
]


@pytest.mark.parametrize(("address", "gov", "hsc", "rule"), TABLE, ids=[t[0] for t in TABLE])
def test_guidance_tables(address, gov, hsc, rule):
    hsc_result = Classifier(HSC, clock=lambda: TODAY).classify(address)
    gov_result = Classifier(GOV, clock=lambda: TODAY).classify(address)
    assert hsc_result.status is hsc
    assert gov_result.status is gov
    assert hsc_result.rule == rule
    assert hsc_result.reason


def test_reason_cites_the_guidance_table():
    c = Classifier(GOV, clock=lambda: TODAY).classify("a@example.nhs.uk")
    assert "Guidance issued to government organisations" in c.reason
    assert "*.nhs.uk (does not end secure.nhs.uk)" in c.reason
    c = Classifier(HSC, clock=lambda: TODAY).classify("a@dwp.gov.uk")
    assert "Guidance issued to health and social care organisations" in c.reason
    assert "*.gov.uk" in c.reason


def test_scotland_and_wales_notes():
    scot = Classifier(HSC, clock=lambda: TODAY).classify("a@x.scot.nhs.uk")
    wales = Classifier(HSC, clock=lambda: TODAY).classify("a@x.wales.nhs.uk")
    assert any("own email assurance programme" in n for n in scot.notes)
    assert any("NHS Wales" in n for n in wales.notes)


def test_lookalike_notes():
    c = Classifier(HSC, clock=lambda: TODAY).classify("a@nhs.nеt")
    assert any("lookalike" in n and "nhs.net" in n for n in c.notes)
    c = Classifier(HSC, clock=lambda: TODAY).classify("a@nhs.net.evil.com")
    assert any("not under it" in n for n in c.notes)
    c = Classifier(HSC, clock=lambda: TODAY).classify("a@insecure.nhs.uk")
    assert any("whole labels" in n for n in c.notes)


def test_government_note_for_hsc_only_rows():
    c = Classifier(GOV, clock=lambda: TODAY).classify("a@dwp.gov.uk")
    assert c.status is U
    assert any("health and social care senders" in n for n in c.notes)


def _listed(*entries):
    return AccreditedList(
        source="dcb1596.csv", list_date=date(2026, 10, 1), entries={e.domain: e for e in entries}
    )


ACCREDITED = _listed(
    AccreditedEntry("trust.nhs.uk", "Example Trust", date(2027, 3, 31)),
    AccreditedEntry("oldtrust.nhs.uk", "Old Trust", date(2026, 11, 22)),
    AccreditedEntry("carehome.co.uk", "Care Home Ltd", TODAY),
    AccreditedEntry("group.org.uk", "Group", None, subdomains=True),
    AccreditedEntry("nhs.net", "NHSmail expired row", date(2020, 1, 1)),
)


@pytest.mark.parametrize("audience", [GOV, HSC])
@pytest.mark.parametrize(
    ("address", "status", "rule"),
    [
        ("a@trust.nhs.uk", S, "accredited-list"),
        ("a@sub.trust.nhs.uk", U, "nhs-uk"),  # plain entries cover the domain only
        ("a@oldtrust.nhs.uk", U, "accredited-expired"),
        ("a@carehome.co.uk", S, "accredited-list"),  # expires today: still valid today
        ("a@group.org.uk", S, "accredited-list"),
        ("a@a.b.group.org.uk", S, "accredited-list"),
        ("a@evilgroup.org.uk", U, "other"),
        ("a@nhs.net", S, "nhs-net"),  # an expired row never downgrades the guidance
    ],
)
def test_accredited_list(audience, address, status, rule):
    c = Classifier(audience, clock=lambda: TODAY, accredited=ACCREDITED).classify(address)
    assert (c.status, c.rule) == (status, rule)


def test_accredited_reason_names_org_list_and_date():
    c = Classifier(HSC, clock=lambda: TODAY, accredited=ACCREDITED).classify("a@trust.nhs.uk")
    assert "Example Trust" in c.reason
    assert "dcb1596.csv" in c.reason
    assert "2026-10-01" in c.reason
    expired = Classifier(HSC, clock=lambda: TODAY, accredited=ACCREDITED).classify(
        "a@oldtrust.nhs.uk"
    )
    assert "expired on 2026-11-22" in expired.reason


def test_expiry_is_judged_against_the_clock_on_every_decision():
    """A long-running classifier (the gateway's) must see an accreditation expire."""
    day = [TODAY]  # carehome.co.uk expires at the end of TODAY
    classifier = Classifier(HSC, clock=lambda: day[0], accredited=ACCREDITED)
    before = classifier.classify("a@carehome.co.uk")
    assert (before.status, before.rule) == (S, "accredited-list")
    day[0] = date.fromordinal(TODAY.toordinal() + 1)
    after = classifier.classify("a@carehome.co.uk")  # same object, cached domain
    assert (after.status, after.rule) == (U, "accredited-expired")
    assert f"expired on {TODAY.isoformat()}" in after.reason


def test_local_overrides_apply_last():
    classifier = Classifier(
        HSC,
        clock=lambda: TODAY,
        accredited=ACCREDITED,
        secure_domains=["partner.org", "*.council.example"],
        deny_domains=["*.compromised.nhs.net", "trust.nhs.uk", "partner.org"],
    )
    assert classifier.classify("a@partner.org").rule == "local-deny"  # deny beats secure
    assert classifier.classify("a@x.council.example").status is S
    assert classifier.classify("a@council.example").rule == "local-secure"
    assert classifier.classify("a@sub.partner.org").status is U  # exact entry only
    assert classifier.classify("a@trust.nhs.uk").rule == "local-deny"  # beats the list
    assert classifier.classify("a@x.compromised.nhs.net").status is U
    assert classifier.classify("a@nhs.net").status is S
    assert classifier.classify("a@partner.org@nhs.net").status is INV  # invalid stays invalid


def test_cache_is_bounded(monkeypatch):
    import securemail.core.classify as module

    monkeypatch.setattr(module, "CACHE_LIMIT", 10)
    classifier = Classifier(HSC, clock=lambda: TODAY)
    for n in range(100):
        assert classifier.classify(f"a@d{n}.nhs.net").status is S
    assert len(classifier._cache) <= 10


LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).filter(
    lambda s: not s.startswith("-") and not s.endswith("-") and s[2:4] != "--"
)
LOOKALIKE = st.text(alphabet="nhsеtgоvukрlіcеmdараrlаmеnt.-ｎ", min_size=3, max_size=25)


def _under_secure_suffix(domain):
    return any(domain == s or domain.endswith("." + s) for s in SECURE_SUFFIXES)


@given(st.lists(LABEL, min_size=2, max_size=5), st.sampled_from([GOV, HSC]))
def test_random_domains_are_secure_only_under_a_listed_suffix(labels, audience):
    domain = ".".join(labels)
    assume(not labels[-1].isdigit())
    c = Classifier(audience, clock=lambda: TODAY).classify(f"x@{domain}")
    if c.status is S:
        assert _under_secure_suffix(c.domain)


@given(LOOKALIKE, st.sampled_from([GOV, HSC]))
def test_lookalikes_are_never_secure(text, audience):
    c = Classifier(audience, clock=lambda: TODAY).classify(f"x@{text}")
    if c.status is S:
        assert c.domain.isascii() and _under_secure_suffix(c.domain)
        assert c.domain == text.lower().rstrip(".")


@given(st.text(max_size=80))
def test_arbitrary_text_is_secure_only_under_a_listed_suffix(text):
    c = Classifier(HSC, clock=lambda: TODAY, accredited=ACCREDITED).classify(text)
    if c.status is S:
        assert _under_secure_suffix(c.domain) or ACCREDITED.lookup(c.domain) is not None
