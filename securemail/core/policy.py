"""(classification, sensitivity) → ``Decision`` for one recipient: the whole policy table.

DESIGN.md's table lives here and nowhere else; the gateway, ``securemail policy explain``
and the queue after an operator's release all read the decision this module makes (the
first cut kept the own-domain row in the gateway, so ``policy explain`` said *held* where
the gateway *delivered*).

SCCI1596 §2.2: "Each service provider MUST enable forced TLS inbound and outbound for
secure email delivery and opportunistic for all other emails", and sensitive content must
never go in the clear to a recipient who is not known to be secure: it is held for an
operator, refused, or sent through the secure portal (``securemail/portal``: encrypted
at rest, a link and a passcode), as ``[policy] unknown_sensitive_action`` says.

**Unscannable content.** What the scanner could not read (an encrypted ZIP, a PDF with a
password, anything over a bound: ``Sensitivity.unscannable``) counts as sensitive by
default (``[policy] unscannable = "sensitive"``), so a sender cannot get data past the
check by making it unreadable; ``"ignore"`` judges the message on what could be read.

**The release rule.** Every decision carries the TLS level its recipient's mail needs,
including a held one: a sensitive message held for an ``unknown`` recipient is stored with
at least ``TlsLevel.VERIFIED``, so an operator's release never sends it in plain text or
to an unverified server. The level is stored with the recipient and the queue delivers
with exactly that level.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from securemail.core.classify import Classification
from securemail.core.levels import TlsLevel
from securemail.core.rules import Status
from securemail.core.sensitivity import Sensitivity


class Action(StrEnum):
    DELIVER = "deliver"
    HOLD = "hold"  # kept in the spool until an operator releases or deletes it
    REJECT = "reject"
    PORTAL = "portal"  # encrypted into the secure portal; the recipient gets a link


class Setting(StrEnum):
    """``[policy] unknown_sensitive_action``: sensitive mail to an ``unknown`` recipient."""

    HOLD = "hold"
    REJECT = "reject"
    PORTAL = "portal"  # the secure portal: encrypted, a link and a passcode


class Unscannable(StrEnum):
    """``[policy] unscannable``: what a part the scanner could not read means."""

    SENSITIVE = "sensitive"  # the message counts as sensitive (the safe default)
    IGNORE = "ignore"  # judged on what could be read


OWN_DOMAIN_RULE = "own-domain"


def headline(reason: str) -> str:
    """What a stored decision ``reason`` is about, in a few words ("secure recipient",
    "sensitive message"), for the transport decision's label (``core.transport``).

    Every reason ``Policy.decide`` writes opens with that phrase and continues with a
    parenthesis or ": what happens", so the phrase is cut there; delivery only has the
    reason as the spool kept it.
    """
    cut = min((i for i in (reason.find(": "), reason.find(" (")) if i >= 0), default=len(reason))
    return " ".join(reason[:cut].split())[:80]


@dataclass(frozen=True, slots=True)
class Decision:
    recipient: str
    status: Status
    action: Action
    tls: TlsLevel  # what delivery must achieve; NONE only when nothing is ever sent
    reason: str
    rule: str  # the classification (or policy) rule behind it

    def to_json(self) -> dict[str, object]:
        return {
            "recipient": self.recipient,
            "status": self.status.value,
            "action": self.action.value,
            "tls": self.tls.label,
            "reason": self.reason,
            "rule": self.rule,
        }


_WHY = {
    Setting.HOLD: "held for an operator to release or delete "
    "([policy] unknown_sensitive_action = hold); a release delivers it only over verified TLS",
    Setting.PORTAL: "sent through the secure portal ([policy] unknown_sensitive_action = "
    "portal): stored encrypted, the recipient gets a link and a one-time passcode",
    Setting.REJECT: "refused ([policy] unknown_sensitive_action = reject)",
}


@dataclass(frozen=True, slots=True)
class Policy:
    """The organisation's policy: its own domains and what to do with sensitive mail."""

    own_domains: frozenset[str] = frozenset()
    unknown_sensitive: Setting = Setting.HOLD
    unscannable: Unscannable = Unscannable.SENSITIVE

    @classmethod
    def of(
        cls,
        own_domains: Iterable[str],
        unknown_sensitive: str = "hold",
        unscannable: str = "sensitive",
    ) -> Policy:
        return cls(
            frozenset(d.lower() for d in own_domains),
            Setting(unknown_sensitive),
            Unscannable(unscannable),
        )

    def decide(self, c: Classification, sensitivity: Sensitivity) -> Decision:
        """Decide what happens to mail for one recipient."""

        def decision(action: Action, tls: TlsLevel, reason: str, rule: str = c.rule) -> Decision:
            return Decision(c.address, c.status, action, tls, reason, rule)

        if c.status is Status.INVALID:
            return decision(Action.REJECT, TlsLevel.NONE, f"recipient refused: {c.reason}")
        if c.domain in self.own_domains:
            return decision(
                Action.DELIVER,
                TlsLevel.OPPORTUNISTIC,
                "our own domain: to the internal mail server",
                OWN_DOMAIN_RULE,
            )
        if c.status is Status.SECURE:
            return decision(
                Action.DELIVER,
                TlsLevel.VERIFIED,
                "secure recipient: deliver only over verified TLS (SCCI1596 forced TLS)",
            )
        unread = bool(sensitivity.unscannable)
        if sensitivity.sensitive:
            why = f"sensitive message ({sensitivity.summary()})"
        elif unread and self.unscannable is Unscannable.SENSITIVE:
            why = (
                f"message with unscannable content ({sensitivity.summary()}), which counts "
                "as sensitive ([policy] unscannable = sensitive),"
            )
        else:
            ignored = " (unscannable content ignored: [policy] unscannable = ignore)"
            return decision(
                Action.DELIVER,
                TlsLevel.OPPORTUNISTIC,
                f"recipient not known to be secure, message not sensitive{ignored * unread}: "
                "deliver with opportunistic TLS",
            )
        setting = self.unknown_sensitive
        action = {Setting.REJECT: Action.REJECT, Setting.PORTAL: Action.PORTAL}.get(
            setting, Action.HOLD
        )
        # The portal never sends the message itself anywhere (only a link): TLS n/a.
        tls = TlsLevel.VERIFIED if action is Action.HOLD else TlsLevel.NONE
        return decision(
            action, tls, f"{why} to a recipient not known to be secure: {_WHY[setting]}"
        )
