"""The accept pipeline: one received message → authenticated or signed, decided, stored.

Postfix's smtpd → cleanup in one object. The stages, in order:

0. **forced TLS inbound**: over a session without TLS, a header From whose domain must
   use TLS (``core.inbound_tls``, the rule the listener applied to MAIL FROM) is refused
   with ``530 5.7.0`` before anything else is done or stored;
1. **authenticate** mail from other organisations (SPF, DKIM, DMARC, ARC → one
   Authentication-Results header, the trust mark, perhaps an ARC seal), or **sign** mail
   our own users and relay clients send (DKIM, for our domains), once a signed-in user's
   header From is known to be theirs (``core.senders``);
2. **decide** per recipient (``core.policy``: the one table ``policy explain`` reads too);
3. **store** durably, and only then say ``250`` (``STORE_FAILED`` 451 otherwise), with
   the message's RFC 8689 facts: ``MAIL FROM … REQUIRETLS`` and ``TLS-Required: No``,
   each stored as it is (delivery, ``core.transport``, decides what they mean together).
   Recipients decided ``PORTAL`` are deposited in the portal (encrypted) FIRST, and the
   spool stores the message only for the others: a message only for the portal is never
   written in plain text at all. Then the portal's notices go out (``Portal.notify``).

The CPU-heavy steps (verification, sealing, signing, the sensitivity scan) of a large or
complex message run in worker processes, within ``[listen] cpu_budget`` seconds
(``offload``); a message that needs more gets ``CPU_BUDGET`` (451).

Every outcome is reported as an event; replies are ``SmtpReply`` values from
``core.replies``. The pipeline is also how the queue's DSNs enter the spool (role
``dsn``), so a bounce goes through policy like any other message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

from securemail.core import replies
from securemail.core.classify import Classification
from securemail.core.inbound_tls import InboundTlsPolicy, from_addresses
from securemail.core.message import (
    HeaderBlock,
    HeaderLimitError,
    decode_words,
    read_headers,
    reparse_input,
)
from securemail.core.policy import Action, Decision, Policy
from securemail.core.replies import SmtpReply
from securemail.core.senders import OwnedAddresses, header_from, header_from_refusal
from securemail.core.sensitivity import Sensitivity, scan_message, text_is_sensitive
from securemail.core.transport import tls_required_no
from securemail.cpu import RunCpu, run_inline
from securemail.dns import Resolver
from securemail.gateway import events as ev
from securemail.gateway.events import EventSink
from securemail.gateway.inbound import auth
from securemail.gateway.inbound.networks import Networks
from securemail.gateway.inbound.offload import Offload, OffloadError
from securemail.gateway.inbound.server import Transaction, received_header
from securemail.gateway.spool import NewMessage, NewRecipient, RcptStatus, Spool, new_queue_id
from securemail.mech.arc import arc_seal
from securemail.mech.dkim import DkimSigner, SigningKey
from securemail.mech.dmarc import header_from_domain
from securemail.mech.results import authentication_results
from securemail.portal import Deposit, Portal

log = logging.getLogger("securemail.gateway")

HeldNotice = Callable[[str, str, list[tuple[str, str]], bytes, float, bool], Awaitable[None]]

_STATUS_FOR = {Action.DELIVER: RcptStatus.QUEUED, Action.HOLD: RcptStatus.HELD}
# Our own messages, made here and submitted to ourselves: DSNs (never signed: null
# sender, RFC 3464) and the portal's notices and replies (signed when From is ours).
_OWN_ROLES = frozenset({"dsn", "portal"})


@dataclass(frozen=True, slots=True)
class AcceptSettings:
    """What the pipeline needs from the config (validated once, in ``config.py``)."""

    hostname: str  # our host name and authserv-id
    verify_inbound: bool = True  # [auth] verify
    arc_seal: bool = True
    dkim_sign: bool = True
    seal_domain: str = ""  # the organisation's first domain: its key seals ARC
    quarantine_to: str = ""
    relay_networks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AcceptRules:
    """Everything the pipeline decides with that a reload may change, as one value.

    ``accept`` reads ``AcceptPipeline.rules`` once per message and uses that value to
    the end, so a reload (which replaces the whole value, on the event loop) makes a
    message in progress finish under the rules it started with, never half old and
    half new: its signature and its policy decision come from one configuration.
    """

    settings: AcceptSettings
    policy: Policy
    auth_policy: auth.AuthPolicy
    resolver: Resolver
    keys: Mapping[str, SigningKey]
    inbound_tls: InboundTlsPolicy = field(default_factory=InboundTlsPolicy)
    signer: DkimSigner = field(init=False)
    relay: Networks = field(init=False)

    def __post_init__(self) -> None:
        # Derived once here: a key the signer cannot load fails the build (the start,
        # or the reload, which is then refused), never the first message it signs.
        object.__setattr__(self, "signer", DkimSigner(self.keys))
        object.__setattr__(self, "relay", Networks(self.settings.relay_networks))


class AcceptPipeline:
    def __init__(
        self,
        rules: AcceptRules,
        *,
        classify: Callable[[str], Classification],
        spool: Spool,
        events: EventSink,
        clock: Callable[[], float],
        senders: Callable[[str], OwnedAddresses],
        stored: Callable[[], None] = lambda: None,
        offload: Offload | None = None,
    ) -> None:
        self.rules = rules  # replaced whole by a reload (gateway/reload.py)
        self.classify = classify
        self.spool = spool
        self.events = events
        self.clock = clock
        self.senders = senders  # submission: login -> the addresses that user may send as
        self.stored = stored  # wakes the queue manager
        self.offload = offload  # None: every CPU step inline (no event loop to protect)
        self.on_held: HeldNotice | None = None  # set by the app: the notifier's held_notice
        self.portal: Portal | None = None  # set by the app when [portal] enabled
        self._notices: set[asyncio.Future[None]] = set()

    def decisions(
        self, rules: AcceptRules, t: Transaction, sensitivity: Sensitivity
    ) -> list[Decision]:
        return [rules.policy.decide(c, sensitivity) for _, c in t.recipients]

    async def accept(self, t: Transaction) -> SmtpReply:
        """Authenticate (inbound) or sign (outbound), decide per recipient, then store
        durably: 250 only after commit."""
        rules = self.rules  # one configuration for the whole message (``AcceptRules``)
        try:
            block = read_headers(t.data)
        except HeaderLimitError as exc:
            return self._refuse(t, replies.header_too_large(str(exc)))
        if not t.tls and t.role not in _OWN_ROLES:  # our own mail never crosses a network
            forced = self._forced_tls(rules, t, block)
            if forced is not None:
                return forced
        if t.role == "submission":  # never sign or relay a From the user does not own
            not_theirs = header_from_refusal(self.senders(t.auth_user), block)
            if not_theirs is not None:
                return self._refuse(t, not_theirs)
        run = self.offload.runner(t.data, block) if self.offload else run_inline
        # One header/body boundary for everyone downstream too: a line our reader calls
        # body (after a line that is not a header field) is made body for every other
        # parser by an explicit empty line; well-formed messages are not copied.
        data = reparse_input(t.data, block)
        if t.role != "dsn":
            # Only we may write these, whoever the client is (a signed-in user included):
            # our Authentication-Results (whatever its version or comments) and the trust
            # and quarantine marks. The trust mark we set below replaces any removed.
            same = data is t.data  # reparse_input changed nothing: block is data's
            data = auth.strip_own_headers(data, rules.settings.hostname, block if same else None)
        t = replace(t, data=data)
        queue_id = new_queue_id()
        now = self.clock()
        headers, body = b"", t.data
        if self._from_outside(rules, t):
            judged = await self._authenticate(rules, t, queue_id, run)
            if isinstance(judged, SmtpReply):
                return self._refuse(t, judged)
            headers, body, t = judged
        elif t.role != "dsn":
            # Submission: a signed-in user over TLS (both required there). Anything else
            # (relay networks, inbound with verification off) is not vouched for.
            headers = auth.trust_header(t.role == "submission" and bool(t.auth_user))
            signature = await self._dkim_sign(rules, body, run)
            if isinstance(signature, SmtpReply):
                return self._refuse(t, signature)
            headers += signature
        sensitivity = await self._scan(body, run)
        if isinstance(sensitivity, SmtpReply):
            return self._refuse(t, sensitivity)
        decisions = self.decisions(rules, t, sensitivity)
        refused = [d for d in decisions if d.action is Action.REJECT]
        if refused:
            who = ", ".join(d.recipient for d in refused[:3])
            return self._refuse(t, replies.policy_refused(who).logged(refused[0].reason))
        data = received_header(t, rules.settings.hostname, queue_id, now) + headers + body
        for_portal = [d.recipient for d in decisions if d.action is Action.PORTAL]
        deposit = None
        if for_portal:
            deposited = await self._deposit(t, data, block, for_portal, queue_id)
            if isinstance(deposited, SmtpReply):
                return self._refuse(t, deposited)
            deposit = deposited
        spooled = [(d, r) for d, r in zip(decisions, t.recipients, strict=True)
                   if d.action is not Action.PORTAL]  # fmt: skip
        # A finding, or a part that could not be read. Only such a message is stored with
        # its summary: the spool erases those (secure_delete, then a WAL checkpoint) when
        # they are done, and deletes the rest as ordinary mail (``remove_if_final``).
        flagged = bool(sensitivity.markers)
        message = NewMessage(
            sender=t.sender,
            recipients=_recipients([d for d, _ in spooled], [r for _, r in spooled]),
            data=data,
            client=f"{t.peer} helo={t.helo}",
            auth_user=t.auth_user,
            sensitivity=sensitivity.summary() if flagged else "",
            received=now,
            queue_id=queue_id,
            requiretls=t.requiretls,
            tls_required_no=tls_required_no([f.text for f in block.get_all("tls-required")]),
        )
        if message.recipients:
            try:
                await self.spool.store(message)
            except Exception as exc:
                log.exception("could not store message from=<%s>", t.sender)
                if deposit is not None and self.portal is not None:  # the client will retry
                    await self.portal.revoke(deposit.message_id, "gateway: spool store failed")
                return self._refuse(t, replies.STORE_FAILED.logged(f"spool: {exc}"))
            self.stored()
        if deposit is not None and self.portal is not None:
            self._later(self.portal.notify(deposit, t.sender, _display_name(block)))
        held = [(d.recipient, d.reason) for d in decisions if d.action is Action.HOLD]
        if held and t.sender and t.role not in _OWN_ROLES and self.on_held is not None:
            # The client hears 250 now; the sender is told at once what was held and why.
            self._later(self.on_held(queue_id, t.sender, held, headers + body, now, t.requiretls))
        self.events.emit(
            ev.Accepted(
                queue_id=queue_id,
                sender=t.sender,
                rcpts=len(message.recipients),
                held=sum(r.status is RcptStatus.HELD for r in message.recipients),
                size=len(data),
                client=t.peer,
                tls=t.tls,
                auth_user=t.auth_user,
                sensitive=flagged,
                decisions=tuple(
                    ev.RcptDecision(d.recipient, d.action.value, d.tls.label if d.tls else "-")
                    for d in decisions
                ),
            )
        )
        return replies.queued(queue_id)

    def _later(self, notice: Awaitable[None]) -> None:
        """Send a notice after the client's 250 (kept referenced until it is done)."""
        task = asyncio.ensure_future(notice)
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    async def _deposit(
        self, t: Transaction, data: bytes, block: HeaderBlock, rcpts: list[str], queue_id: str
    ) -> Deposit | SmtpReply:
        """Encrypt and commit the portal's copy; a 451 if that cannot be done (the
        client keeps the message: nothing was written in the clear)."""
        if self.portal is None or t.role in _OWN_ROLES:
            # No portal (the config refuses portal without [portal] enabled, so only an
            # embedded pipeline gets here), or our own notice judged sensitive: never loop.
            return replies.STORE_FAILED.logged("portal: not available for this message")
        try:
            return await self.portal.deposit(
                data, sender=t.sender, sender_name=_display_name(block), recipients=rcpts,
                queue_id=queue_id,
            )  # fmt: skip
        except Exception as exc:
            log.exception("could not deposit message from=<%s> in the portal", t.sender)
            return replies.STORE_FAILED.logged(f"portal: {exc}")

    def _refuse(self, t: Transaction, reply: SmtpReply) -> SmtpReply:
        self.events.emit(ev.Refused(t.sender, t.peer, str(reply), reply.log, reply.check))
        return reply

    def _forced_tls(
        self, rules: AcceptRules, t: Transaction, block: HeaderBlock
    ) -> SmtpReply | None:
        """``530`` when the header From (as DMARC reads it) must arrive over TLS and this
        message did not: the null sender and unrelated envelopes are caught here."""
        trusted = t.role == "inbound" and t.peer in rules.relay
        for address in from_addresses(block):
            required = rules.inbound_tls.decide(
                self.classify(address.addr_spec), trusted_client=trusted
            )
            if required is not None:
                reply = replies.starttls_required(required.domain)
                self.events.emit(ev.ForcedTlsRefused("header From", required.domain,
                                                     required.rule, t.peer, t.sender,
                                                     str(reply), required.reason))  # fmt: skip
                return reply.logged(required.reason, reply.check)
        return None

    # --- authentication ------------------------------------------------------------

    def _from_outside(self, rules: AcceptRules, t: Transaction) -> bool:
        """Inbound mail from another organisation (not our relay clients): verify it."""
        if t.role != "inbound" or not rules.settings.verify_inbound:
            return False
        return t.peer not in rules.relay

    async def _authenticate(
        self, rules: AcceptRules, t: Transaction, queue_id: str, run: RunCpu
    ) -> SmtpReply | tuple[bytes, bytes, Transaction]:
        """SPF/DKIM/DMARC/ARC; a reply to refuse, or (headers, body, transaction) to go on."""
        authserv_id = rules.settings.hostname
        body = t.data  # our own headers already stripped in accept()
        try:
            verdict = await auth.authenticate(
                body, ip=t.peer, helo=t.helo, mail_from=t.sender, resolver=rules.resolver, run=run
            )
        except OffloadError as exc:
            return replies.CPU_BUDGET.logged(str(exc))
        decision = auth.decide(
            verdict, tls=bool(t.tls), classify=self.classify, policy=rules.auth_policy
        )
        self.events.emit(
            ev.AuthJudged(
                queue_id=queue_id,
                sender=t.sender,
                header_from=verdict.from_domain,
                methods=tuple((m.method, m.result.value) for m in verdict.method_results()),
                action=decision.action.value,
                trusted=decision.trusted,
                detail=decision.log,
            )
        )
        if decision.reply is not None:
            return decision.reply
        results = authentication_results(authserv_id, verdict.method_results())
        headers = auth.result_headers(results, decision)
        quarantine_to = rules.settings.quarantine_to
        if decision.action is auth.Action.QUARANTINE and quarantine_to:
            t = replace(t, recipients=[(quarantine_to, self.classify(quarantine_to))])
        if rules.settings.arc_seal and rules.keys:
            seal = await self._arc_seal(rules, headers + body, results, run)
            if isinstance(seal, SmtpReply):
                return seal
            headers = seal + headers
        return headers, body, t

    async def _arc_seal(
        self, rules: AcceptRules, message: bytes, results: str, run: RunCpu
    ) -> bytes | SmtpReply:
        keys = rules.keys
        key = keys.get(rules.settings.seal_domain) or next(iter(keys.values()))
        seal = partial(
            arc_seal,
            message,
            domain=key.domain,
            selector=key.selector,
            private_pem=key.private_pem,
            authserv_id=rules.settings.hostname,
            auth_results=results,
        )
        try:
            return await run("ARC sealing", seal)
        except OffloadError as exc:  # not finished in time: the message was not handled
            return replies.CPU_BUDGET.logged(str(exc))
        except Exception:  # sealing is best effort: never lose mail over it
            log.exception("ARC sealing failed; forwarding unsealed")
            return b""

    async def _dkim_sign(self, rules: AcceptRules, data: bytes, run: RunCpu) -> bytes | SmtpReply:
        """A DKIM-Signature for mail From one of our domains, when we hold its key."""
        if not rules.settings.dkim_sign or not rules.keys:
            return b""
        domain, _ = header_from_domain(data)
        if domain is None or domain not in rules.keys:
            return b""
        try:
            return await run("DKIM signing", partial(rules.signer.sign, data, domain)) or b""
        except OffloadError as exc:  # the standard wants our mail signed: never send it bare
            return replies.CPU_BUDGET.logged(str(exc))

    async def _scan(self, body: bytes, run: RunCpu) -> Sensitivity | SmtpReply:
        """The sensitivity scan; a 451 if it cannot finish in time.

        "Could not scan" must never read as "not sensitive", and a message we could not
        finish checking is not ours to store: the sender keeps it and tries later.
        """
        try:
            return await run("sensitivity scan", partial(scan_message, body))
        except OffloadError as exc:
            return replies.CPU_BUDGET.logged(str(exc))


def _display_name(block: HeaderBlock) -> str:
    """The header From's display name ("Dr A Smith"), for the portal's notices: read by
    the same From reader DMARC uses (``header_from``), so a message with two From fields
    or two mailboxes names no one rather than whichever a second parser picked. A name
    the scanner calls sensitive ("J Smith 943 476 5919") names no one either: the notice
    goes to someone outside the secure boundary, in the clear."""
    address, _ = header_from(block)
    if address is None:
        return ""
    name = decode_words(address.display_name.encode("utf-8", "surrogateescape"))
    name = " ".join(name.split())[:100]
    return "" if text_is_sensitive(name) else name


def _recipients(
    decisions: Sequence[Decision], recipients: Sequence[tuple[str, Classification]]
) -> tuple[NewRecipient, ...]:
    return tuple(
        NewRecipient(
            address=d.recipient,
            domain=c.domain,
            status=_STATUS_FOR[d.action],
            tls=d.tls,
            reason=d.reason,
        )
        for d, (_, c) in zip(decisions, recipients, strict=True)
    )
