"""(classification, sensitivity, config) → ``Decision`` for one recipient.

The whole table of DESIGN.md in one pure function. SCCI1596 §2.2: "Each service provider
MUST enable forced TLS inbound and outbound for secure email delivery and opportunistic
for all other emails", and sensitive content must never go in the clear to a recipient
who is not known to be secure: it is sent through the portal, held for an operator, or
refused, as ``[policy] unknown_sensitive_action`` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from securemail.core.classify import Classification
from securemail.core.rules import Status
from securemail.core.sensitivity import Sensitivity


class Action(StrEnum):
    DELIVER = "deliver"
    ENCRYPT = "encrypt"  # via the portal: the recipient gets a link, not the content
    HOLD = "hold"  # kept in the spool until an operator releases or deletes it
    REJECT = "reject"


class TlsRequirement(IntEnum):
    """Ordered, like Postfix's TLS levels, so "at least" is a comparison."""

    OPPORTUNISTIC = 1  # STARTTLS when offered, any certificate; else plain text
    REQUIRED = 2  # STARTTLS with a verified certificate matching the MX, or defer

    @property
    def label(self) -> str:
        return self.name.lower()


UNKNOWN_SENSITIVE_ACTIONS = {"hold": Action.HOLD, "reject": Action.REJECT, "portal": Action.ENCRYPT}


@dataclass(frozen=True, slots=True)
class Decision:
    recipient: str
    status: Status
    action: Action
    tls: TlsRequirement | None  # None when nothing is sent to the recipient's servers
    reason: str
    rule: str  # the classification rule behind it

    def to_json(self) -> dict[str, object]:
        return {
            "recipient": self.recipient,
            "status": self.status.value,
            "action": self.action.value,
            "tls": self.tls.label if self.tls is not None else None,
            "reason": self.reason,
            "rule": self.rule,
        }


def decide(
    classification: Classification,
    sensitivity: Sensitivity,
    unknown_sensitive_action: str = "hold",
) -> Decision:
    """Decide what happens to mail for one recipient."""
    c = classification

    def decision(action: Action, tls: TlsRequirement | None, reason: str) -> Decision:
        return Decision(c.address, c.status, action, tls, reason, c.rule)

    if c.status is Status.INVALID:
        return decision(Action.REJECT, None, f"recipient refused: {c.reason}")
    if c.status is Status.SECURE:
        return decision(
            Action.DELIVER,
            TlsRequirement.REQUIRED,
            "secure recipient: deliver only over verified TLS (SCCI1596 forced TLS)",
        )
    if not sensitivity.sensitive:
        return decision(
            Action.DELIVER,
            TlsRequirement.OPPORTUNISTIC,
            "recipient not known to be secure, message not sensitive: "
            "deliver with opportunistic TLS",
        )
    action = UNKNOWN_SENSITIVE_ACTIONS[unknown_sensitive_action]
    found = sensitivity.summary()
    why = {
        Action.ENCRYPT: "sent through the secure portal instead of in the clear",
        Action.HOLD: "held for an operator to release or delete "
        "([policy] unknown_sensitive_action = hold)",
        Action.REJECT: "refused ([policy] unknown_sensitive_action = reject)",
    }[action]
    return decision(
        action,
        None,
        f"sensitive message ({found}) to a recipient not known to be secure: {why}",
    )
