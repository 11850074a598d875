"""Policy: every cell of DESIGN.md's table, for each unknown_sensitive_action."""

from datetime import date

import pytest

from securemail.core.classify import Classifier
from securemail.core.policy import Action, TlsRequirement, decide
from securemail.core.rules import Audience, Status
from securemail.core.sensitivity import NOT_SENSITIVE, Kind, Marker, Sensitivity

CLASSIFIER = Classifier(Audience.HEALTH_AND_CARE, today=date(2026, 11, 23))
SENSITIVE = Sensitivity((Marker(Kind.MARKING, "subject", "OFFICIAL-SENSITIVE"),))
REQ, OPP = TlsRequirement.REQUIRED, TlsRequirement.OPPORTUNISTIC

CELLS = [
    # recipient, sensitive?, unknown_sensitive_action, action, tls
    ("a@nhs.net", False, "hold", Action.DELIVER, REQ),
    ("a@nhs.net", True, "hold", Action.DELIVER, REQ),
    ("a@nhs.net", True, "reject", Action.DELIVER, REQ),
    ("a@nhs.net", True, "portal", Action.DELIVER, REQ),
    ("a@gmail.com", False, "hold", Action.DELIVER, OPP),
    ("a@gmail.com", False, "reject", Action.DELIVER, OPP),
    ("a@gmail.com", True, "hold", Action.HOLD, None),
    ("a@gmail.com", True, "reject", Action.REJECT, None),
    ("a@gmail.com", True, "portal", Action.ENCRYPT, None),
    ("a@nhs.net@evil.com", False, "hold", Action.REJECT, None),
    ("a@nhs.net@evil.com", True, "portal", Action.REJECT, None),
]


@pytest.mark.parametrize(("rcpt", "sensitive", "setting", "action", "tls"), CELLS)
def test_policy_table(rcpt, sensitive, setting, action, tls):
    sensitivity = SENSITIVE if sensitive else NOT_SENSITIVE
    d = decide(CLASSIFIER.classify(rcpt), sensitivity, setting)
    assert (d.action, d.tls) == (action, tls)
    assert d.reason
    assert d.rule == CLASSIFIER.classify(rcpt).rule


def test_reasons_say_why():
    held = decide(CLASSIFIER.classify("a@gmail.com"), SENSITIVE, "hold")
    assert "OFFICIAL-SENSITIVE" in held.reason and "unknown_sensitive_action = hold" in held.reason
    secure = decide(CLASSIFIER.classify("a@nhs.net"), NOT_SENSITIVE, "hold")
    assert "forced TLS" in secure.reason
    invalid = decide(CLASSIFIER.classify("a@[1.2.3.4]"), NOT_SENSITIVE, "hold")
    assert "IP-literal" in invalid.reason


def test_tls_levels_are_ordered():
    assert REQ > OPP
    assert REQ.label == "required"
    d = decide(CLASSIFIER.classify("a@nhs.net"), NOT_SENSITIVE)
    assert d.to_json()["tls"] == "required"
    assert d.to_json()["status"] == Status.SECURE.value
