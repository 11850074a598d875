"""The delivery policy chain: what TLS a destination needs, and whether a peer meets it.

After maddy's MX/TLS authentication policies: the Deliverer does not know any TLS rule;
it asks the chain four questions at the moments a rule can act, and every link answers
with a level (it may only raise it), a handshake, or a ``Refusal``:

* ``prepare(domain, level)`` once per destination, before routing (MTA-STS will fetch
  the domain's policy here and raise ``VERIFIED``/``OPPORTUNISTIC`` to ``MTA_STS``; the
  operator's ``tls_policy`` map raises a pinned destination to ``VERIFIED``);
* ``check_mx(domain, mx, level)`` per MX host, before connecting (MTA-STS: the host must
  match the policy's ``mx`` patterns; DANE: the host's TLSA records raise it to ``DANE``);
* ``handshake(domain, mx, level)`` per MX host: what STARTTLS must check on the wire
  (``Handshake``); a link that pins certificate names asks for ``PKIX_CHAIN`` and then
  checks the names itself, as DANE will ask for a handshake of its own;
* ``check_conn(domain, mx, facts, level)`` per connection, after EHLO/STARTTLS and
  before anything of a message is written: accept, naming the check that verified the
  peer (``verified_by``), or refuse.

The chain holds ``ForcedTls`` (SCCI1596's forced TLS for ``VERIFIED`` and above,
opportunistic TLS below) and, when the operator configured one, ``PolicyMap``
(``tls_policy.py``, after Postfix's ``smtp_tls_policy_maps``). MTA-STS and DANE join as
links; the Deliverer stays. Every link is asked (none can wave a connection through for
the others), and a refusal carries its RFC 8460 failure type so TLS-RPT can report it
as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from securemail.core.levels import TlsFailure, TlsLevel
from securemail.gateway.outbound.client import DeliveryError, TlsFacts


@dataclass(frozen=True, slots=True)
class Refusal:
    """A link's "no": like an ``SmtpReply`` for the log and the DSN, plus its TLS type."""

    failure: TlsFailure  # RFC 8460 §4.3 result type
    detail: str  # for the log, the spool's last error and the sender's notice
    permanent: bool = False  # only when retrying cannot help; TLS problems usually heal
    check: str = ""  # the link that refused

    def error(self) -> DeliveryError:
        """The refusal as the failure of one server, like any other on the way."""
        return DeliveryError(self.detail, permanent=self.permanent, failure=self.failure)

    def host_failure(self) -> DeliveryError:
        """A refused *connection* as a failure of that host only, never permanent.

        What one MX presented (no STARTTLS, a certificate for the wrong name) says
        nothing about the recipient: the next MX is tried, and if every one is refused
        the recipient is deferred, never bounced.
        """
        return DeliveryError(self.detail, permanent=False, failure=self.failure)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A connection a link lets mail go through."""

    verified_by: str = ""  # which check authenticated the peer ("" when none did)


class Handshake(Enum):
    """What STARTTLS checks on the wire; the Deliverer holds one context for each."""

    PLAINTEXT = "plaintext"  # no STARTTLS at all (a tls_policy "none" destination)
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, any certificate
    PKIX_MX_HOSTNAME = "pkix-mx-hostname"  # a trusted chain naming the MX host
    PKIX_CHAIN = "pkix-chain"  # a trusted chain; the asking link matches the names itself

    @property
    def verifies(self) -> bool:
        """The handshake fails without a certificate chaining to a trusted root."""
        return self in (Handshake.PKIX_MX_HOSTNAME, Handshake.PKIX_CHAIN)


def default_handshake(level: TlsLevel) -> Handshake:
    """SCCI1596's rule: a verified MX host name for forced levels, opportunistic below."""
    return Handshake.PKIX_MX_HOSTNAME if level.forced else Handshake.OPPORTUNISTIC


class DeliveryPolicy(Protocol):
    """One link. Asynchronous because the next links look things up (policy, TLSA);
    ``handshake`` is not: it is decided from what ``prepare``/``check_mx`` learned.
    It answers None when the link has no opinion."""

    async def prepare(self, domain: str, level: TlsLevel) -> TlsLevel | Refusal: ...
    async def check_mx(self, domain: str, mx: str, level: TlsLevel) -> TlsLevel | Refusal: ...
    def handshake(self, domain: str, mx: str, level: TlsLevel) -> Handshake | None: ...
    async def check_conn(
        self, domain: str, mx: str, facts: TlsFacts, level: TlsLevel
    ) -> Accepted | Refusal: ...


class PolicyChain:
    """Links asked in order; itself a ``DeliveryPolicy``, so the Deliverer holds one.

    The chain, not each link, keeps the invariants: a level only rises (a lower answer
    is ignored, so no link can weaken what the recipient's decision demanded); a forced
    level is only ever handshaken with a verifying ``Handshake``; and a connection at a
    forced level is accepted only if some link names the check that verified the peer,
    so a chain-only handshake whose names nobody matched is refused, not waved through.
    The first refusal ends a question. ``verified_by`` and the handshake come from the
    last link that names one: later links (the pinned map, MTA-STS, DANE) are the more
    specific checks.
    """

    CHECK = "policy-chain"

    def __init__(self, links: Sequence[DeliveryPolicy]) -> None:
        if not links:
            raise ValueError("a delivery policy chain needs at least one link")
        self.links = tuple(links)

    async def prepare(self, domain: str, level: TlsLevel) -> TlsLevel | Refusal:
        for link in self.links:
            answer = await link.prepare(domain, level)
            if isinstance(answer, Refusal):
                return answer
            level = max(level, answer)
        return level

    async def check_mx(self, domain: str, mx: str, level: TlsLevel) -> TlsLevel | Refusal:
        for link in self.links:
            answer = await link.check_mx(domain, mx, level)
            if isinstance(answer, Refusal):
                return answer
            level = max(level, answer)
        return level

    def handshake(self, domain: str, mx: str, level: TlsLevel) -> Handshake:
        chosen = default_handshake(level)
        for link in self.links:
            answer = link.handshake(domain, mx, level)
            if answer is not None and (answer.verifies or not level.forced):
                chosen = answer
        return chosen

    async def check_conn(
        self, domain: str, mx: str, facts: TlsFacts, level: TlsLevel
    ) -> Accepted | Refusal:
        verified_by = ""
        for link in self.links:
            answer = await link.check_conn(domain, mx, facts, level)
            if isinstance(answer, Refusal):
                return answer
            verified_by = answer.verified_by or verified_by
        if level.forced and not verified_by:
            return Refusal(
                TlsFailure.VALIDATION_FAILURE,
                f"TLS is required but no check verified {facts.peer}",
                check=self.CHECK,
            )
        return Accepted(verified_by)


class ForcedTls:
    """SCCI1596 §2.2: forced TLS to secure services, opportunistic for all other mail.

    At ``VERIFIED`` and above the server must offer STARTTLS and its certificate must
    chain to a trusted root and name the MX host (the handshake checks both, with the
    verified context); otherwise the connection is refused and the mail deferred, never
    sent in the clear. Below it, STARTTLS is used when offered, with any certificate, and
    plain text when not: encryption that is better than none, authenticating no one.

    When a later link asked for a chain-only handshake (a pinned ``tls_policy``), the MX
    host name is deliberately not what authenticates the peer: this link accepts the
    verified chain without naming a check, and the chain refuses the connection unless
    the asking link matched the names.
    """

    CHECK = "forced-tls"
    VERIFIED_BY = "pkix:mx-hostname"

    async def prepare(self, domain: str, level: TlsLevel) -> TlsLevel | Refusal:
        return level

    async def check_mx(self, domain: str, mx: str, level: TlsLevel) -> TlsLevel | Refusal:
        return level

    def handshake(self, domain: str, mx: str, level: TlsLevel) -> Handshake | None:
        return default_handshake(level)

    async def check_conn(
        self, domain: str, mx: str, facts: TlsFacts, level: TlsLevel
    ) -> Accepted | Refusal:
        if not level.forced:
            return Accepted()
        if not facts.starttls:
            return Refusal(
                TlsFailure.STARTTLS_NOT_SUPPORTED,
                f"TLS is required but {facts.peer} did not offer STARTTLS",
                check=self.CHECK,
            )
        if facts.failure is not None:
            return Refusal(facts.failure, facts.error, check=self.CHECK)
        if facts.chain_verified and not facts.verified:  # PKIX_CHAIN: names are not ours
            return Accepted()
        if not facts.verified:  # a context that does not verify was used: a bug, refuse
            return Refusal(
                TlsFailure.VALIDATION_FAILURE,
                f"TLS is required but the certificate of {facts.peer} was not verified",
                check=self.CHECK,
            )
        return Accepted(self.VERIFIED_BY)


def default_policy(*links: DeliveryPolicy) -> PolicyChain:
    """The chain the gateway delivers with: ``ForcedTls``, then ``links`` (the map)."""
    return PolicyChain([ForcedTls(), *links])
