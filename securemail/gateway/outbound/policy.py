"""The delivery policy chain: what TLS a destination needs, and whether a peer meets it.

After maddy's MX/TLS authentication policies: the Deliverer does not know any TLS rule;
it asks the chain four questions at the moments a rule can act, and every link answers:

* ``prepare(domain, facts)`` once per destination and batch, before routing: each link
  adds what it knows about the destination to the message's ``TransportFacts`` (the
  operator's ``tls_policy`` entry; the MTA-STS policy, looked up and cached), and the
  chain makes THE transport decision from them, ``core.transport.decide_transport``:
  the level, the rule that set it, every reason, REQUIRETLS, MTA-STS testing;
* ``check_mx(domain, mx, decision)`` per MX host, before connecting (MTA-STS: the host
  must match the policy's ``mx`` patterns; DANE, next: TLSA records raise it);
* ``handshake(domain, mx, decision)`` per MX host: what STARTTLS must check on the wire
  (``Handshake``); a link that pins certificate names asks for ``PKIX_CHAIN`` and then
  checks the names itself, as DANE will ask for a handshake of its own;
* ``check_conn(domain, mx, facts, decision)`` per connection, after EHLO/STARTTLS and
  before anything of a message is written: accept, naming the check that verified the
  peer (``verified_by``), or refuse.

The gateway's chain (``default_policy``) holds ``ForcedTls`` (verified TLS for forced
levels, opportunistic below), ``RequireTls`` (RFC 8689: the next hop must offer
REQUIRETLS), ``MtaSts`` (``mta_sts.py``, RFC 8461) and, when the operator configured
one, ``PolicyMap`` (``tls_policy.py``, after Postfix's ``smtp_tls_policy_maps``); DANE
joins as a link. Every link is asked (none can wave a connection through for the
others), and a refusal carries its RFC 8460 failure type so TLS-RPT can report it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

from securemail.core.levels import TlsFailure, TlsLevel
from securemail.core.transport import TransportDecision, TransportFacts, decide_transport
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
        return DeliveryError(
            self.detail, permanent=self.permanent, failure=self.failure, check=self.check
        )

    def host_failure(self) -> DeliveryError:
        """A refused *connection* as a failure of that host only, never permanent.

        What one MX presented (no STARTTLS, a certificate for the wrong name) says
        nothing about the recipient: the next MX is tried, and if every one is refused
        the recipient is deferred, never bounced.
        """
        return DeliveryError(self.detail, permanent=False, failure=self.failure, check=self.check)


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
    """One link. Asynchronous because links look things up (a policy, TLSA records);
    ``handshake`` is not: it is decided from what ``prepare``/``check_mx`` learned.

    ``prepare`` returns ``facts`` with what the link knows about the destination added
    (or unchanged); the other questions answer for the decision the chain made. A link
    with no opinion answers the decision's own level, None, or ``Accepted()``.
    """

    async def prepare(self, domain: str, facts: TransportFacts) -> TransportFacts | Refusal: ...
    async def check_mx(
        self, domain: str, mx: str, decision: TransportDecision
    ) -> TlsLevel | Refusal: ...
    def handshake(self, domain: str, mx: str, decision: TransportDecision) -> Handshake | None: ...
    async def check_conn(
        self, domain: str, mx: str, facts: TlsFacts, decision: TransportDecision
    ) -> Accepted | Refusal: ...


class NeutralLink:
    """A link's answers when it has no opinion at a step: the facts and level as they
    are, no handshake of its own. Links override only the steps they act at."""

    async def prepare(self, domain: str, facts: TransportFacts) -> TransportFacts | Refusal:
        return facts

    async def check_mx(
        self, domain: str, mx: str, decision: TransportDecision
    ) -> TlsLevel | Refusal:
        return decision.level

    def handshake(self, domain: str, mx: str, decision: TransportDecision) -> Handshake | None:
        return None


class PolicyChain:
    """Links asked in order; the Deliverer holds one.

    The chain, not each link, keeps the invariants. The decision is made once, by
    ``decide_transport``, from the facts the links gathered; the message's own facts
    (the recipient's level and why, REQUIRETLS, ``TLS-Required: No``) are put back
    after every link, so no link can weaken what the recipient's decision demanded,
    and a level only rises (a lower ``check_mx`` answer is ignored). A forced level is
    only ever handshaken with a verifying ``Handshake``; and a connection at a forced
    level is accepted only if some link names the check that verified the peer, so a
    chain-only handshake whose names nobody matched is refused, not waved through. The
    first refusal ends a question. ``verified_by`` and the handshake come from the last
    link that names one: later links (MTA-STS, the pinned map, DANE) are the more
    specific checks.
    """

    CHECK = "policy-chain"

    def __init__(self, links: Sequence[DeliveryPolicy]) -> None:
        if not links:
            raise ValueError("a delivery policy chain needs at least one link")
        self.links = tuple(links)

    async def prepare(self, domain: str, facts: TransportFacts) -> TransportDecision | Refusal:
        message = facts
        for link in self.links:
            answer = await link.prepare(domain, facts)
            if isinstance(answer, Refusal):
                return answer
            facts = replace(
                answer,
                recipient=message.recipient,
                why=message.why,
                requiretls=message.requiretls,
                tls_required_no=message.tls_required_no,
            )
        return decide_transport(facts)

    async def check_mx(
        self, domain: str, mx: str, decision: TransportDecision
    ) -> TransportDecision | Refusal:
        for link in self.links:
            answer = await link.check_mx(domain, mx, decision)
            if isinstance(answer, Refusal):
                return answer
            if answer > decision.level:
                decision = replace(decision, level=answer)
        return decision

    def handshake(self, domain: str, mx: str, decision: TransportDecision) -> Handshake:
        forced = decision.level.forced
        chosen = default_handshake(decision.level)
        for link in self.links:
            answer = link.handshake(domain, mx, decision)
            if answer is not None and (answer.verifies or not forced):
                chosen = answer
        return chosen

    async def check_conn(
        self, domain: str, mx: str, facts: TlsFacts, decision: TransportDecision
    ) -> Accepted | Refusal:
        verified_by = ""
        for link in self.links:
            answer = await link.check_conn(domain, mx, facts, decision)
            if isinstance(answer, Refusal):
                return answer
            verified_by = answer.verified_by or verified_by
        if decision.level.forced and not verified_by:
            return Refusal(
                TlsFailure.VALIDATION_FAILURE,
                f"TLS is required but no check verified {facts.peer}",
                check=self.CHECK,
            )
        return Accepted(verified_by)


class ForcedTls(NeutralLink):
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

    def handshake(self, domain: str, mx: str, decision: TransportDecision) -> Handshake | None:
        return default_handshake(decision.level)

    async def check_conn(
        self, domain: str, mx: str, facts: TlsFacts, decision: TransportDecision
    ) -> Accepted | Refusal:
        if not decision.level.forced:
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


class RequireTls(NeutralLink):
    """RFC 8689 §4.2.1: a message whose sender set REQUIRETLS goes only to a next hop
    that offers REQUIRETLS after STARTTLS, so the flag travels on with it.

    Verified TLS itself is the decision's doing (REQUIRETLS raises the level to
    ``VERIFIED``, so ``ForcedTls`` and MTA-STS check the certificate); this link only
    asks for the extension in the EHLO reply that followed the handshake. A server
    without it is refused like a bad certificate: the next MX is tried, and when every
    one was refused the recipient bounces (``requiretls_undeliverable``).
    """

    CHECK = "requiretls"

    async def check_conn(
        self, domain: str, mx: str, facts: TlsFacts, decision: TransportDecision
    ) -> Accepted | Refusal:
        if not decision.requiretls or "REQUIRETLS" in facts.extensions:
            return Accepted()
        return Refusal(
            TlsFailure.VALIDATION_FAILURE,
            f"{facts.peer} does not offer REQUIRETLS after STARTTLS, and the sender "
            "asked for it on every hop (RFC 8689)",
            check=self.CHECK,
        )


def requiretls_undeliverable(domain: str, refusals: Sequence[DeliveryError]) -> DeliveryError:
    """RFC 8689 §4.2.1: every MX host of ``domain`` was tried and refused by the policy,
    so the REQUIRETLS message must not go to the domain at all, and its sender gets a
    non-delivery report: ``5.7.30`` when a host lacked REQUIRETLS, ``5.7.10`` (encryption
    needed) when none could even give verified TLS. Permanent: the sender asked for a
    bounce rather than a downgrade, and waiting would only delay the news.
    """
    capability = any(r.check == RequireTls.CHECK for r in refusals)
    code = "5.7.30 REQUIRETLS support required" if capability else "5.7.10 Encryption needed"
    why = "; ".join(dict.fromkeys(str(r) for r in refusals[-3:]))
    return DeliveryError(
        f"{code}: no mail server for {domain} can take this REQUIRETLS message ({why})",
        permanent=True,
        failure=refusals[-1].failure if refusals else None,
        check=RequireTls.CHECK,
    )


def default_policy(*links: DeliveryPolicy) -> PolicyChain:
    """The chain the gateway delivers with: ``ForcedTls``, ``RequireTls``, then ``links``
    (MTA-STS, then the operator's map: the map's handshake, pinned or plain, wins)."""
    return PolicyChain([ForcedTls(), RequireTls(), *links])
