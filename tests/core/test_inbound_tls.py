"""core.inbound_tls: which senders must reach us over TLS, which rule says so, and what a
message's header asks of TLS (RFC 8689)."""

from datetime import date

import pytest

from securemail.core.accredited import AccreditedEntry, AccreditedList
from securemail.core.classify import Classifier
from securemail.core.inbound_tls import (
    ForcedBy,
    InboundTlsPolicy,
    from_addresses,
)
from securemail.core.message import read_headers
from securemail.core.rules import Audience
from securemail.core.transport import tls_required_no

TODAY = date(2026, 11, 23)
OWN = "example.nhs.uk"
ACCREDITED = AccreditedList(
    source="dcb1596.csv",
    list_date=date(2026, 10, 1),
    entries={
        "trust.nhs.uk": AccreditedEntry("trust.nhs.uk", "Example Trust", date(2027, 3, 31)),
        "gone.nhs.uk": AccreditedEntry("gone.nhs.uk", "Old Trust", date(2026, 1, 1)),
    },
)
CLASSIFIER = Classifier(
    Audience.HEALTH_AND_CARE,
    clock=lambda: TODAY,
    accredited=ACCREDITED,
    secure_domains=["*.partner-secure.org", OWN],
    deny_domains=["denied.gov.uk"],
)
SECURE = InboundTlsPolicy.of("secure", [OWN])
OFF = InboundTlsPolicy.of("none", [OWN])
LISTED = InboundTlsPolicy.of(("partner.org", "*.xn--bcher-kva.example"), [OWN])


def decide(policy, address, *, trusted=False):
    return policy.decide(CLASSIFIER.classify(address), trusted_client=trusted)


# (sender, policy, trusted client, expected rule or None), one row per rule and exception
CASES = [
    ("gp@nhs.net", SECURE, False, "guidance:nhs.net"),
    ("gp@trust.nhs.net", SECURE, False, "guidance:nhs.net"),
    ("a@dwp.gov.uk", SECURE, False, "guidance:gov.uk"),
    ("a@x.secure.nhs.uk", SECURE, False, "guidance:secure.nhs.uk"),
    ("a@cjsm.net", SECURE, False, "guidance:cjsm.net"),
    ("a@trust.nhs.uk", SECURE, False, "accredited"),
    ("a@gone.nhs.uk", SECURE, False, None),  # accreditation expired: not secure
    ("a@mail.partner-secure.org", SECURE, False, "local secure_domains"),
    ("a@denied.gov.uk", SECURE, False, None),  # deny_domains overrides the guidance
    ("a@gmail.com", SECURE, False, None),  # opportunistic for everyone else
    ("a@other.nhs.uk", SECURE, False, None),  # *.nhs.uk is not secure
    ("a@partner.org", SECURE, False, None),  # listed only in LISTED
    ("gp@nhs.net", OFF, False, None),
    ("a@trust.nhs.uk", OFF, False, None),
    ("a@partner.org", LISTED, False, "require_tls_from:partner.org"),
    ("a@sub.partner.org", LISTED, False, None),  # "partner.org" is that domain exactly
    ("a@shop.bücher.example", LISTED, False, "require_tls_from:*.xn--bcher-kva.example"),
    ("a@shop.xn--bcher-kva.example", LISTED, False, "require_tls_from:*.xn--bcher-kva.example"),
    ("gp@nhs.net", LISTED, False, "guidance:nhs.net"),  # the list adds to "secure"
    # Our own domain (here classified secure): exempt only from the trusted internal
    # server; a stranger claiming it is judged like anyone.
    (f"alice@{OWN}", SECURE, True, None),
    (f"alice@{OWN}", SECURE, False, "local secure_domains"),
    ("gp@nhs.net", SECURE, True, "guidance:nhs.net"),  # trusted to relay, not to vouch
    ("<>", SECURE, False, None),  # no domain: nothing to judge
    ("not an address", SECURE, False, None),
]


@pytest.mark.parametrize(("sender", "policy", "trusted", "rule"), CASES)
def test_who_must_use_tls(sender, policy, trusted, rule):
    required = decide(policy, sender, trusted=trusted)
    assert (required.rule if required else None) == rule
    if required is not None:
        assert required.domain == CLASSIFIER.classify(sender).domain
        assert required.reason


def test_letter_case_is_one_domain():
    for sender, domain in (("GP@NHS.NET", "nhs.net"), ("gp@Trust.NHS.net", "trust.nhs.net")):
        required = decide(SECURE, sender)
        assert required is not None and required.rule == "guidance:nhs.net", sender
        assert required.domain == domain
    # A final dot is no address at all (the listener answers 553 before this is asked;
    # tests/security/test_forced_tls_inbound.py shows what the client gets).
    assert CLASSIFIER.classify("gp@nhs.net.").domain == ""


def test_the_typed_answer_names_its_rule_and_reason():
    guidance = decide(SECURE, "gp@nhs.net")
    assert guidance is not None
    assert (guidance.by, guidance.matched) == (ForcedBy.GUIDANCE, "nhs.net")
    assert "NHSmail" in guidance.reason
    accredited = decide(SECURE, "a@trust.nhs.uk")
    assert accredited is not None and accredited.by is ForcedBy.ACCREDITED
    assert "Example Trust" in accredited.reason and accredited.rule == "accredited"
    listed = decide(LISTED, "a@partner.org")
    assert listed is not None and listed.by is ForcedBy.LISTED
    assert listed.reason == "[inbound] require_tls_from lists partner.org"


def test_settings():
    assert SECURE.classified and not SECURE.listed
    assert not OFF.classified
    assert LISTED.classified and LISTED.listed == ("partner.org", "*.xn--bcher-kva.example")
    assert OFF.summary == "off (require_tls_from = none)"
    assert LISTED.summary == "from secure domains and partner.org, *.xn--bcher-kva.example"
    with pytest.raises(ValueError, match="secure"):
        InboundTlsPolicy.of("partner.org")


def _block(headers: str):
    return read_headers(f"{headers}\r\n\r\nbody\r\n".encode())


def _domains(headers: str) -> list[str]:
    return [a.domain for a in from_addresses(_block(headers))]


@pytest.mark.parametrize(
    ("headers", "domains"),
    [
        ("From: gp@nhs.net", ["nhs.net"]),
        ('From: "x@evil.test" <gp@nhs.net>', ["nhs.net"]),  # the addr-spec counts ...
        ('From: "gp@nhs.net" <x@evil.test>', ["evil.test"]),  # ... never the display name
        ("From: =?utf-8?q?gp=40nhs=2Enet?= <x@evil.test>", ["evil.test"]),
        ("From: x@evil.test (gp@nhs.net)", ["evil.test"]),  # a comment is not an address
        ("From: (sent by x@evil.test) gp@nhs.net", ["nhs.net"]),
        ("From: GP@NHS.NET", ["nhs.net"]),
        ("From: gp@xn--bcher-kva.example", ["xn--bcher-kva.example"]),
        # Unusable for DMARC: which one a person sees is not guessed, all are judged.
        ("From: x@evil.test\r\nFrom: gp@nhs.net", ["evil.test", "nhs.net"]),
        ("From: x@evil.test, gp@nhs.net", ["evil.test", "nhs.net"]),
        ("From: not an address, gp@nhs.net", ["nhs.net"]),
        ("Subject: no From", []),
        ("Subject: x\r\nbody line\r\nFrom: gp@nhs.net", []),  # below the header section
    ],
)
def test_the_from_that_is_judged_is_the_one_dmarc_reads(headers, domains):
    assert _domains(headers) == domains


@pytest.mark.parametrize(
    ("headers", "relaxed"),
    [
        ("TLS-Required: No", True),
        ("tls-required:no", True),
        ("TLS-REQUIRED:   NO  ", True),
        ("TLS-Required:\r\n No", True),  # folded
        ("TLS-Required: Yes", False),  # only "No" is defined
        ("TLS-Required: No thanks", False),
        ("TLS-Required: No\r\nTLS-Required: maybe", False),  # one unreadable: never relax
        ("TLS-Required: No\r\nTLS-Required: no", False),  # RFC 8689 defines one field
        ("Subject: none", False),
    ],
)
def test_tls_required_no_as_the_gateway_reads_it(headers, relaxed):
    """The gateway reads the fields with THE header reader, and the one rule decides."""
    values = [f.text for f in _block(headers).get_all("tls-required")]
    assert tls_required_no(values) is relaxed
