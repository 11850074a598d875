"""Policy: every cell of DESIGN.md's table (``tests/policy_cases.py``), and the reasons."""

from datetime import date

import pytest
from policy_cases import CASES, OWN, UNKNOWN, UNSCANNABLE_CASES

from securemail.core.classify import Classifier
from securemail.core.levels import TlsLevel
from securemail.core.policy import Action, Policy, Unscannable, headline
from securemail.core.rules import Audience, Status
from securemail.core.sensitivity import NOT_SENSITIVE, Kind, Marker, Sensitivity

CLASSIFIER = Classifier(Audience.HEALTH_AND_CARE, clock=lambda: date(2026, 11, 23))
SENSITIVE = Sensitivity((Marker(Kind.MARKING, "subject", "OFFICIAL-SENSITIVE"),))
UNREAD = Marker(Kind.UNSCANNABLE, "part 2 (application/zip), member 1", "encrypted ZIP member")
UNSCANNABLE = Sensitivity((UNREAD,))
OWN_DOMAINS = [OWN.partition("@")[2]]


@pytest.mark.parametrize(("rcpt", "sensitive", "setting", "action", "tls"), CASES)
def test_policy_table(rcpt, sensitive, setting, action, tls):
    policy = Policy.of(OWN_DOMAINS, setting)
    d = policy.decide(CLASSIFIER.classify(rcpt), SENSITIVE if sensitive else NOT_SENSITIVE)
    assert (d.action, d.tls) == (action, tls)
    assert d.reason
    expected_rule = "own-domain" if rcpt == OWN else CLASSIFIER.classify(rcpt).rule
    assert d.rule == expected_rule


def test_reasons_say_why():
    hold = Policy.of(OWN_DOMAINS, "hold")
    held = hold.decide(CLASSIFIER.classify("a@gmail.com"), SENSITIVE)
    assert "OFFICIAL-SENSITIVE" in held.reason and "unknown_sensitive_action = hold" in held.reason
    assert "verified TLS" in held.reason  # the release rule, said where it applies
    portal = Policy.of(OWN_DOMAINS, "portal").decide(CLASSIFIER.classify("a@gmail.com"), SENSITIVE)
    assert portal.action is Action.PORTAL and "secure portal" in portal.reason
    assert "held" not in portal.reason and portal.tls is TlsLevel.NONE
    secure = hold.decide(CLASSIFIER.classify("a@nhs.net"), NOT_SENSITIVE)
    assert "forced TLS" in secure.reason
    invalid = hold.decide(CLASSIFIER.classify("a@[1.2.3.4]"), NOT_SENSITIVE)
    assert "IP-literal" in invalid.reason


def test_every_forced_reason_has_a_short_headline_for_the_transport_label():
    """Delivery has only the stored reason; its label names the rule in a few words."""
    hold = Policy.of(OWN_DOMAINS, "hold")
    decide = hold.decide
    assert headline(decide(CLASSIFIER.classify("a@nhs.net"), NOT_SENSITIVE).reason) == (
        "secure recipient"
    )
    assert headline(decide(CLASSIFIER.classify("a@gmail.com"), SENSITIVE).reason) == (
        "sensitive message"
    )
    assert headline(decide(CLASSIFIER.classify("a@gmail.com"), UNSCANNABLE).reason) == (
        "message with unscannable content"
    )
    assert headline("") == "" and len(headline("x" * 500)) == 80


def test_tls_levels_are_ordered():
    assert TlsLevel.NONE < TlsLevel.OPPORTUNISTIC < TlsLevel.VERIFIED < TlsLevel.MTA_STS
    assert TlsLevel.MTA_STS < TlsLevel.DANE
    assert TlsLevel.VERIFIED.forced and not TlsLevel.OPPORTUNISTIC.forced
    assert TlsLevel.from_label("required") is TlsLevel.VERIFIED
    assert all(TlsLevel.from_label(level.label) is level for level in TlsLevel)
    d = Policy().decide(CLASSIFIER.classify("a@nhs.net"), NOT_SENSITIVE)
    assert d.to_json()["tls"] == "verified"
    assert d.to_json()["status"] == Status.SECURE.value


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError):
        Policy.of(OWN_DOMAINS, "send-anyway")


@pytest.mark.parametrize(("rcpt", "setting", "action", "tls"), UNSCANNABLE_CASES)
def test_unscannable_table(rcpt, setting, action, tls):
    d = Policy.of(OWN_DOMAINS, "hold", setting).decide(CLASSIFIER.classify(rcpt), UNSCANNABLE)
    assert (d.action, d.tls) == (action, tls)


def test_unscannable_counts_as_sensitive_by_default_and_says_why():
    unknown = CLASSIFIER.classify(UNKNOWN)
    held = Policy.of(OWN_DOMAINS).decide(unknown, UNSCANNABLE)
    assert (held.action, held.tls) == (Action.HOLD, TlsLevel.VERIFIED)
    assert "unscannable" in held.reason and "encrypted ZIP member" in held.reason
    assert "[policy] unscannable = sensitive" in held.reason
    refused = Policy.of(OWN_DOMAINS, "reject").decide(unknown, UNSCANNABLE)
    assert refused.action is Action.REJECT and "unscannable" in refused.reason
    ignored = Policy.of(OWN_DOMAINS, "hold", "ignore").decide(unknown, UNSCANNABLE)
    assert ignored.action is Action.DELIVER
    assert "[policy] unscannable = ignore" in ignored.reason
    # Found content is sensitive whatever the setting; the reason names both.
    both = Sensitivity((*SENSITIVE.markers, UNREAD))
    held = Policy.of(OWN_DOMAINS, "hold", "ignore").decide(unknown, both)
    assert held.action is Action.HOLD and "encrypted ZIP member" in held.reason
    assert Policy().unscannable is Unscannable.SENSITIVE


def test_unknown_unscannable_setting_is_refused():
    with pytest.raises(ValueError):
        Policy.of(OWN_DOMAINS, "hold", "deliver")
