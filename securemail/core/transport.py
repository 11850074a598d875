"""What TLS the next hop for one recipient needs, and why: the one transport decision.

Several rules can ask for verified TLS on a delivery, and before this module each was a
link of the delivery chain raising the level on its own: nothing could say, in one
place, *which* rule forced a delivery, and an exception (a sender's ``TLS-Required: No``)
would have had to be taught to every link. Here the facts every rule needs are gathered
into ``TransportFacts`` (by the delivery chain, from the spool and from lookups it
caches) and one pure function decides; the chain then enforces what it decided, and
``securemail policy explain`` shows the same decision.

Precedence, strongest first (a rule can only raise the level, never lower it):

1. **The recipient's policy decision** (``core.policy``): a secure recipient, or
   sensitive content, is stored with at least ``VERIFIED``: SCCI1596 forced TLS. Nothing
   below relaxes it, not even ``TLS-Required: No``.
2. **REQUIRETLS** (RFC 8689 §4): the sender asked for verified TLS on every hop; the
   next hop must also offer REQUIRETLS so the flag travels on. ``TLS-Required: No`` is
   ignored when the flag is set (§4.1).
3. **The operator's ``[delivery.tls_policy]``** entry for the destination: ``verify`` and
   ``secure`` force ``VERIFIED`` (names pinned by the map itself); ``none``/``may`` never
   lower anything above.
4. **MTA-STS** (RFC 8461): ``enforce`` raises to ``MTA_STS`` (verified TLS to an MX that
   matches the policy); ``testing`` changes nothing but asks for failures to be recorded.
   ``TLS-Required: No`` (RFC 8689 §5) switches MTA-STS off, but only for a recipient
   whose own decision did not force TLS: it is the sender's choice for ordinary mail,
   never for secure or sensitive mail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from securemail.core.levels import TlsLevel


class StsMode(StrEnum):
    """RFC 8461 §3.2 ``mode`` of a destination's current MTA-STS policy."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


class Source(StrEnum):
    """The rule that set the level in force (the strongest one that raised it)."""

    OPPORTUNISTIC = "opportunistic"  # nothing forced TLS
    RECIPIENT = "recipient"  # the recipient's policy decision (secure or sensitive)
    REQUIRETLS = "requiretls"
    TLS_POLICY = "tls-policy"
    MTA_STS = "mta-sts"


@dataclass(frozen=True, slots=True)
class TransportFacts:
    """Everything the decision reads about one recipient's next delivery.

    ``recipient`` is the level its policy decision stored (``why`` a short phrase for
    it, e.g. "secure recipient"); ``map_forces`` is None without a ``tls_policy``
    entry, else whether the entry forces TLS (``map_entry`` names it); ``sts_mode`` is
    None when the destination publishes no usable MTA-STS policy.
    """

    recipient: TlsLevel
    why: str = ""
    requiretls: bool = False
    tls_required_no: bool = False
    map_forces: bool | None = None
    map_entry: str = ""
    sts_mode: StsMode | None = None
    sts_id: str = ""


@dataclass(frozen=True, slots=True)
class TransportDecision:
    level: TlsLevel
    source: Source
    reasons: tuple[str, ...]  # every rule that asked for TLS, strongest first
    requiretls: bool  # the next hop must offer REQUIRETLS and gets the flag passed on
    sts_testing: bool  # MTA-STS testing: deliver as if absent, record what would fail
    relaxed: bool  # TLS-Required: No switched a published MTA-STS policy off

    @property
    def label(self) -> str:
        """``tls=required (MTA-STS enforce, id=20261130)`` as logs and ``queue show``
        print it: "required" when plain text is never acceptable."""
        if not self.level.forced:
            extra = "; ".join(self.reasons)
            return "tls=opportunistic" + (f" ({extra})" if extra else "")
        return f"tls=required ({'; '.join(self.reasons)})"

    def to_json(self) -> dict[str, object]:
        return {
            "level": self.level.label,
            "source": self.source.value,
            "reasons": list(self.reasons),
            "requiretls": self.requiretls,
            "sts_testing": self.sts_testing,
            "relaxed": self.relaxed,
        }


def decide_transport(facts: TransportFacts) -> TransportDecision:
    """The TLS level a delivery must achieve, the rule that set it and every reason.

    Pure and total: every combination of facts gives one decision (the table tests in
    ``tests/core/test_transport.py`` enumerate them all).
    """
    level, source = TlsLevel.OPPORTUNISTIC, Source.OPPORTUNISTIC
    reasons: list[str] = []

    def require(at_least: TlsLevel, by: Source, reason: str) -> None:
        nonlocal level, source
        if at_least > level:
            level, source = at_least, by
        reasons.append(reason)

    if facts.recipient.forced:
        require(facts.recipient, Source.RECIPIENT, facts.why or "recipient's policy")
    if facts.requiretls:
        require(TlsLevel.VERIFIED, Source.REQUIRETLS, "REQUIRETLS")
    if facts.map_forces:
        require(TlsLevel.VERIFIED, Source.TLS_POLICY, f"tls_policy {facts.map_entry}".strip())
    # RFC 8689 §4.1: with REQUIRETLS set, TLS-Required is ignored; and it never relaxes
    # what the recipient's own decision forced (a secure recipient, sensitive content).
    relax = facts.tls_required_no and not facts.requiretls and not facts.recipient.forced
    published = facts.sts_mode in (StsMode.ENFORCE, StsMode.TESTING)
    sts = f"id={facts.sts_id}" if facts.sts_id else "no id"
    if facts.sts_mode is StsMode.ENFORCE and not relax:
        require(TlsLevel.MTA_STS, Source.MTA_STS, f"MTA-STS enforce, {sts}")
    sts_testing = facts.sts_mode is StsMode.TESTING and not relax
    if sts_testing:
        reasons.append(f"MTA-STS testing, {sts}")
    relaxed = relax and published
    if relaxed:
        reasons.append(f"MTA-STS {facts.sts_mode} ignored: TLS-Required: No")
    return TransportDecision(
        level=level,
        source=source,
        reasons=tuple(reasons),
        requiretls=facts.requiretls,
        sts_testing=sts_testing,
        relaxed=relaxed,
    )


def tls_required_no(values: Sequence[str]) -> bool:
    """Whether a message's ``TLS-Required`` header fields (their values, unfolded) ask
    to relax recipient TLS policies: RFC 8689 §5 defines one field with the one value
    ``No``. Anything else (no field, two fields, another value) asks nothing, so a
    malformed header can never relax a policy.
    """
    return len(values) == 1 and values[0].strip().lower() == "no"
