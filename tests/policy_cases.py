"""The policy table as data, run through every reader of the decision.

``tests/core/test_policy.py`` runs it through ``Policy.decide``;
``tests/gateway/test_policy_agreement.py`` through ``securemail policy explain`` and the
live gateway (what it stores, holds or refuses). One table, so the CLI and the gateway
cannot drift apart again (the own-domain row once lived only in the gateway).
"""

from securemail.core.levels import TlsLevel
from securemail.core.policy import Action

OWN = "jo@example.nhs.uk"  # the test organisation's own domain (harness.gatewaykit)
SECURE = "bob@nhs.net"
SECURE_GOV = "case@dwp.gov.uk"
UNKNOWN = "carer@gmail.test"
INVALID = "a@[127.0.0.1]"

V, OPP, N = TlsLevel.VERIFIED, TlsLevel.OPPORTUNISTIC, TlsLevel.NONE
D, H, R, P = Action.DELIVER, Action.HOLD, Action.REJECT, Action.PORTAL

# (recipient, sensitive?, [policy] unknown_sensitive_action) → (action, TLS level)
CASES = [
    (OWN, False, "hold", D, OPP),
    (OWN, True, "reject", D, OPP),
    (OWN, True, "hold", D, OPP),
    (SECURE, False, "hold", D, V),
    (SECURE, True, "hold", D, V),
    (SECURE, True, "reject", D, V),
    (SECURE, True, "portal", D, V),
    (SECURE_GOV, True, "portal", D, V),
    (UNKNOWN, False, "hold", D, OPP),
    (UNKNOWN, False, "reject", D, OPP),
    (UNKNOWN, True, "hold", H, V),
    (UNKNOWN, True, "portal", P, N),  # encrypted into the portal: only a link is sent
    (UNKNOWN, True, "reject", R, N),
    (INVALID, False, "hold", R, N),
    (INVALID, True, "portal", R, N),
]

SETTINGS = ("hold", "reject", "portal")

# A message whose only finding is a part that could not be read (an encrypted ZIP), with
# unknown_sensitive_action = "hold": (recipient, [policy] unscannable) → (action, TLS level)
UNSCANNABLE_CASES = [
    (OWN, "sensitive", D, OPP),
    (SECURE, "sensitive", D, V),
    (UNKNOWN, "sensitive", H, V),
    (UNKNOWN, "ignore", D, OPP),
    (SECURE, "ignore", D, V),
    (INVALID, "sensitive", R, N),
]
UNSCANNABLE_SETTINGS = ("sensitive", "ignore")
