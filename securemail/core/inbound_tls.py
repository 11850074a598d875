"""Forced TLS inbound: must mail from this sender domain arrive over TLS, and which rule
says so; and what a received message asks of TLS on its way out (RFC 8689).

SCCI1596 §2.2: "Each service provider MUST enable forced TLS inbound and outbound for
secure email delivery and opportunistic for all other emails." Delivery already forces
TLS to secure recipients; this module decides the inbound half: a session without TLS
may not carry mail *from* a domain that must use it. Before it, a plain-text session
claiming ``nhs.net`` got ``250`` to MAIL and RCPT, and only DMARC stood between it and
delivery.

**Which identities.** One decision (``InboundTlsPolicy.decide``) judges both, with the
classification the caller already has:

* the envelope sender at ``MAIL FROM`` (the null sender ``<>`` has no domain: nothing to
  judge there);
* the header From at end of DATA, before anything is stored, read as DMARC reads it
  (``core.senders.header_from``: one From field, one mailbox, the addr-spec's domain;
  a display name such as ``"gp@nhs.net" <x@evil.test>`` is a name, not an address).
  This catches a null-sender bounce from a secure domain's MTA, and an envelope from an
  unrelated domain carrying a secure From. When that From is unusable (two From fields,
  several mailboxes), which one a person will be shown is not guessed: every mailbox in
  every From field is judged (``from_addresses``), and one that must use TLS refuses the
  message. (DMARC refuses such a message from outside anyway; this keeps the rule whole
  when ``[auth] verify`` is off or the client is trusted.)

**Which domains** (``[inbound] require_tls_from``):

* ``"secure"`` (the default): every domain the classifier calls secure for our audience:
  a guidance row, the accredited list, ``[policy] secure_domains`` (and, as everywhere,
  ``[policy] deny_domains`` overrides them);
* ``"none"``: nothing is forced; every sender is opportunistic (STARTTLS offered);
* a list of domain patterns (``partner.org``, ``*.partner.org``): those domains are
  forced *in addition to* everything classified secure.

**Trusted relay networks.** The internal server on ``[relay] networks`` sending our own
domains' mail is our relay client inside our network, not a secure domain's MTA on the
internet, and is often configured without TLS on that link: its mail From our own
domains is not forced. It is trusted to relay, not to vouch for other organisations:
mail it passes on From a forced external domain (an ``nhs.net`` From forwarded by the
internal server) is judged like anyone's. Our own domains from an untrusted client are
judged like any other domain (a stranger claiming to be us gets no exemption).

**Why 530.** RFC 3207 §4 names ``530 5.7.0 Must issue a STARTTLS command first`` for a
server that requires TLS; it is permanent, so a sending MTA bounces at once and the
sender learns now that the message did not arrive (clinical safety), rather than after
days of retries. RFC 3207 §4 also says a publicly-referenced server must not require
STARTTLS to deliver mail locally; SCCI1596 requires exactly that for secure senders, and
only for them: everyone else stays opportunistic.

**RFC 8689.** ``tls_required_no`` reads the ``TLS-Required: No`` header field. It only
records what the sender asked; what it may relax is decided at delivery
(``core.transport``): MTA-STS, for a recipient that is neither secure nor getting a
sensitive message, never our forced TLS, and nothing at all when the sender also gave
``MAIL FROM … REQUIRETLS``.

Pure: no I/O, no config. ``gateway.reload.build`` makes the policy from the config.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from securemail.core.addresses import Address, AddressError, parse_address, split_address_list
from securemail.core.classify import Classification, DomainPatterns
from securemail.core.message import HeaderBlock
from securemail.core.rules import TABLES, Status
from securemail.core.senders import header_from

SECURE = "secure"  # [inbound] require_tls_from: everything classified secure (default)
NONE = "none"  # [inbound] require_tls_from: nothing forced


class ForcedBy(StrEnum):
    """The kind of rule that forced TLS (``TlsRequired.rule`` adds which one)."""

    GUIDANCE = "guidance"  # a row of the guidance table for our audience
    ACCREDITED = "accredited"  # the imported accredited list
    LOCAL_SECURE = "local secure_domains"  # [policy] secure_domains
    LISTED = "require_tls_from"  # [inbound] require_tls_from lists it


_BY_CLASSIFIER_RULE = {
    "accredited-list": ForcedBy.ACCREDITED,
    "local-secure": ForcedBy.LOCAL_SECURE,
}
_GUIDANCE_SUFFIX = {rule.id: rule.suffix for table in TABLES.values() for rule in table}


@dataclass(frozen=True, slots=True)
class TlsRequired:
    """Mail from ``domain`` must arrive over TLS, because of ``by`` (``matched`` says
    which guidance suffix or listed pattern, when there is one)."""

    domain: str
    by: ForcedBy
    matched: str
    reason: str  # one sentence for the log: the classification's reason or the list entry

    @property
    def rule(self) -> str:
        """``guidance:nhs.net``, ``accredited``, ``local secure_domains`` or
        ``require_tls_from:*.partner.org``: what the log line names."""
        return f"{self.by.value}:{self.matched}" if self.matched else self.by.value


@dataclass(frozen=True, slots=True)
class InboundTlsPolicy:
    """``[inbound] require_tls_from`` and our own domains: who must use TLS to reach us."""

    classified: bool = True  # everything classified secure ("secure" or a list)
    listed: tuple[str, ...] = ()  # patterns forced in addition, as the config cleaned them
    own_domains: frozenset[str] = frozenset()
    _patterns: DomainPatterns = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_patterns", DomainPatterns(self.listed))

    @classmethod
    def of(cls, setting: str | Sequence[str], own_domains: Iterable[str] = ()) -> InboundTlsPolicy:
        """From the config's value: ``"secure"``, ``"none"`` or a list of patterns
        (already validated and normalised by the config loader)."""
        own = frozenset(d.lower() for d in own_domains)
        if isinstance(setting, str):
            if setting not in (SECURE, NONE):
                raise ValueError(f'expected "{SECURE}", "{NONE}" or a list of domain patterns')
            return cls(setting == SECURE, (), own)
        return cls(True, tuple(setting), own)

    @property
    def summary(self) -> str:
        """One phrase for the start-up log."""
        if not self.classified:
            return "off (require_tls_from = none)"
        extra = f" and {', '.join(self.listed)}" if self.listed else ""
        return f"from secure domains{extra}"

    def decide(self, sender: Classification, *, trusted_client: bool) -> TlsRequired | None:
        """Must mail from ``sender``'s domain arrive over TLS, and which rule says so?

        None when it need not (including a sender with no domain: the null sender, or an
        address that did not parse). ``trusted_client``: the client is in ``[relay]
        networks`` (the module docstring says what that exempts, and what it does not).
        """
        domain = sender.domain
        if not domain or (trusted_client and domain in self.own_domains):
            return None
        if self.classified and sender.status is Status.SECURE:
            by = _BY_CLASSIFIER_RULE.get(sender.rule, ForcedBy.GUIDANCE)
            matched = _GUIDANCE_SUFFIX.get(sender.rule, "") if by is ForcedBy.GUIDANCE else ""
            return TlsRequired(domain, by, matched, sender.reason)
        pattern = self._patterns.match(domain)
        if pattern is not None:
            reason = f"[inbound] require_tls_from lists {pattern}"
            return TlsRequired(domain, ForcedBy.LISTED, pattern, reason)
        return None


def from_addresses(block: HeaderBlock) -> tuple[Address, ...]:
    """The header From mailboxes to judge: DMARC's one From when the message has one,
    else every mailbox that parses in every From field (see the module docstring)."""
    address, _ = header_from(block)
    if address is not None:
        return (address,)
    found: list[Address] = []
    for f in block.get_all("from"):
        for piece in split_address_list(f.text):
            try:
                found.append(parse_address(piece))
            except AddressError:
                continue
    return tuple(found)
