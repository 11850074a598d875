"""Deliver a batch of messages for one destination, under one transport decision.

The queue manager hands over every due recipient for one destination whose messages
share the same transport facts (the recipient's TLS level and why, REQUIRETLS,
``TLS-Required: No``). The Deliverer asks its policy chain (``policy.py``) for the
transport decision (``core.transport``, made once per batch from what the links found:
the ``tls_policy`` entry, the MTA-STS policy), routes the domain (``route.py``), tries
the MX hosts in preference order, and sends the messages over as few connections as it
can, reusing idle ones (``pool.py``). It holds no TLS rule of its own: the chain says
which handshake each MX gets, and a connection is used only once the chain has accepted
what ``SmtpConnection.open`` achieved. A refusal at the TLS stage (STARTTLS refused, a
failed handshake, a policy's "no" to the peer) is a failure of that host, never of the
recipient: the next MX is tried, and if none meets the level the recipients are
deferred with the refusal's RFC 8460 failure type, never sent in the clear. The one
exception is RFC 8689's: a REQUIRETLS message every MX host refused bounces (5.7.30).

Every result carries the decision's label (``tls=required (MTA-STS enforce, id=…)``)
for the log lines and ``queue show``.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from securemail.core.levels import TlsFailure
from securemail.core.transport import TransportDecision, TransportFacts
from securemail.dns import DnsError, DnsNotFound, DnsTemporaryError, Resolver
from securemail.gateway.events import DeliveryAttempt, EventSink, LogSink
from securemail.gateway.outbound.client import DeliveryError, Reply, SmtpConnection, TlsFacts
from securemail.gateway.outbound.mta_sts import MtaSts, StsPolicies
from securemail.gateway.outbound.policy import (
    Accepted,
    DeliveryPolicy,
    Handshake,
    PolicyChain,
    Refusal,
    default_policy,
    requiretls_undeliverable,
)
from securemail.gateway.outbound.pool import ConnectionPool, PoolKey
from securemail.gateway.outbound.route import Router
from securemail.gateway.outbound.tls_policy import PolicyMap, TlsPolicyMap

MESSAGES_PER_CONNECTION = 500

Report = Callable[[list["Result"]], None]


@dataclass(frozen=True, slots=True)
class Item:
    """One message to one or more recipients at the destination."""

    queue_id: str
    sender: str
    rcpts: tuple[str, ...]
    data: bytes
    received: float = 0.0  # when we accepted it (epoch), for the delay= log field
    requiretls: bool = False  # RFC 8689's flag: passed on as MAIL FROM ... REQUIRETLS


@dataclass(frozen=True, slots=True)
class Result:
    queue_id: str
    rcpt: str
    delivered: bool
    permanent: bool
    detail: str
    tls_failure: TlsFailure | None = None  # the TLS requirement was not met, and why
    verified_by: str = ""  # which check verified the peer ("pkix:mx-hostname"), "" if none
    transport: str = ""  # the transport decision's label ("tls=required (secure recipient)")


class Deliverer:
    """Asks the policy chain, routes, and sends; owns the connection pool.

    One context per ``Handshake``: ``verified`` checks the chain and the MX host name
    (forced levels), ``pinned`` only the chain (for a ``tls_policy`` entry with
    ``match=``, whose link matches the names), ``opportunistic`` nothing. Without an
    explicit ``policy`` the chain is ``default_policy`` with the ``MtaSts`` link when
    ``sts`` is given (our own ``internal`` domains skipped) and the ``PolicyMap`` link
    when ``tls_policy`` has entries.
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        helo: str,
        port: int,
        verified: ssl.SSLContext,
        opportunistic: ssl.SSLContext,
        pinned: ssl.SSLContext | None = None,
        internal: dict[str, tuple[str, int]] | None = None,
        policy: DeliveryPolicy | None = None,
        tls_policy: TlsPolicyMap | None = None,
        sts: StsPolicies | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.router = Router(resolver, port=port, internal=internal)
        self.helo = helo
        self.events = events or LogSink()
        self.contexts: dict[Handshake, ssl.SSLContext | None] = {
            Handshake.PLAINTEXT: None,
            Handshake.OPPORTUNISTIC: opportunistic,
            Handshake.PKIX_MX_HOSTNAME: verified,
        }
        if pinned is not None:
            self.contexts[Handshake.PKIX_CHAIN] = pinned
        elif tls_policy and any(p.pinned for p in tls_policy.values()):
            raise ValueError("a tls_policy with match= names needs the pinned TLS context")
        if policy is None:
            links: list[DeliveryPolicy] = []
            if sts is not None:
                links.append(MtaSts(sts, skip=self.router.internal, events=self.events))
            if tls_policy:
                links.append(PolicyMap(tls_policy, self.events))
            policy = default_policy(*links)
        # The chain keeps the invariants (levels only rise, forced means verified).
        self.policy = policy if isinstance(policy, PolicyChain) else PolicyChain([policy])
        self.pool = ConnectionPool()

    async def deliver(
        self,
        domain: str,
        facts: TransportFacts,
        items: Sequence[Item],
        *,
        report: Report | None = None,
    ) -> list[Result]:
        """Deliver every item under the decision for ``facts``; one Result per (item,
        recipient).

        ``report`` is called with each message's results the moment its DATA reply
        arrives, so the caller can record them at once: a crash then can only repeat
        the one message in flight, not every message already sent on the connection.
        """
        decision = await self.policy.prepare(domain, facts)
        if isinstance(decision, Refusal):
            return _all(items, decision.permanent, decision.detail, failure=decision.failure)
        label = decision.label

        def everyone(permanent: bool, detail: str) -> list[Result]:
            return _all(items, permanent, detail, transport=label)

        try:
            route = await self.router.route(domain)
        except DnsTemporaryError as exc:
            return everyone(False, f"DNS lookup for {domain} failed: {exc}")
        except DnsNotFound as exc:
            return everyone(True, f"no mail servers for {domain}: {exc}")
        except DnsError as exc:
            return everyone(False, f"DNS error for {domain}: {exc}")
        pending = list(items)
        results: list[Result] = []
        errors: list[str] = []
        refusals: list[DeliveryError] = []  # hosts the policy said no to
        unrefused = False  # a host failed for another reason (unreachable, DNS, ...)
        failure: TlsFailure | None = None  # the last TLS requirement not met

        def failed(exc: DeliveryError) -> None:
            """One server (or the policy for it) said no: a permanent no ends it all."""
            nonlocal pending, failure, unrefused
            errors.append(str(exc))
            failure = exc.failure or failure
            if exc.check:
                refusals.append(exc)
            else:
                unrefused = True
            if exc.permanent:
                results.extend(_all(pending, True, str(exc), failure=exc.failure, transport=label))
                pending = []

        for host in route.hosts:
            if not pending:
                break
            host_decision = await self.policy.check_mx(domain, host, decision)
            if isinstance(host_decision, Refusal):
                failed(host_decision.error())
                continue
            try:
                ips = await self.router.addresses(route, host)
            except DnsError as exc:
                errors.append(f"{host}: {exc}")
                unrefused = True
                continue
            for ip in ips:
                if not pending:
                    break
                try:
                    key = (domain, host, ip, route.port, host_decision.level,
                           host_decision.requiretls)  # fmt: skip
                    done = await self._deliver_via(key, host_decision, pending, report)
                except DeliveryError as exc:
                    failed(exc)
                    continue
                results += done
                finished = {r.queue_id for r in done}
                pending = [i for i in pending if i.queue_id not in finished]
        if pending and decision.requiretls and refusals and not unrefused:
            bounce = requiretls_undeliverable(domain, refusals)
            results += _all(pending, True, str(bounce), failure=bounce.failure, transport=label)
        elif pending:
            detail = "; ".join(errors[-3:]) or f"no usable mail server for {domain}"
            results += _all(pending, False, detail, failure=failure, transport=label)
        return results

    async def _deliver_via(
        self, key: PoolKey, decision: TransportDecision, items: list[Item], report: Report | None
    ) -> list[Result]:
        """Send as many items as possible through one connection to ``key``'s address.

        Returns results for the items attempted; raises ``DeliveryError`` if no usable
        connection could be had (nothing attempted), so the caller tries the next.
        """
        conn = self.pool.take(key)
        if conn is not None:
            try:
                return await self._send_all(key, decision, conn, items, report)
            except DeliveryError:
                pass  # the server closed the idle connection: start afresh
        domain, host, *_ = key
        handshake = self.policy.handshake(domain, host, decision)
        conn, facts, verdict = await self._connect(key, decision, handshake)
        if not conn.is_open and handshake.verifies and not decision.level.forced:
            # A link asked to verify only to learn the result (MTA-STS testing); this
            # mail does not need it, so it goes as it would have: opportunistically.
            conn, facts, verdict = await self._connect(key, decision, Handshake.OPPORTUNISTIC)
        if not conn.is_open:  # STARTTLS or the handshake failed where TLS was not needed
            raise DeliveryError(facts.error)
        conn.verified_by = verdict.verified_by
        # A pinned peer is authenticated by the policy's name match, not the handshake's.
        conn.verified = conn.verified or bool(verdict.verified_by)
        return await self._send_all(key, decision, conn, items, report)

    async def _connect(
        self, key: PoolKey, decision: TransportDecision, handshake: Handshake
    ) -> tuple[SmtpConnection, TlsFacts, Accepted]:
        """Open a connection with ``handshake`` and have the chain judge it; a refusal
        closes it and raises (a failure of this host only)."""
        domain, host, ip, port, *_ = key
        if handshake not in self.contexts:  # wiring: a link pins names, no context for it
            raise DeliveryError(f"no TLS context for a {handshake.value} handshake to {host}")
        conn = SmtpConnection(host, ip, port, helo=self.helo)
        facts = await conn.open(self.contexts[handshake])
        try:
            verdict = await self.policy.check_conn(domain, host, facts, decision)
        except BaseException:  # a link's bug or cancellation: never leave the session open
            await conn.close()
            raise
        if isinstance(verdict, Refusal):
            await conn.close()
            raise verdict.host_failure()
        return conn, facts, verdict

    async def _send_all(
        self,
        key: PoolKey,
        decision: TransportDecision,
        conn: SmtpConnection,
        items: list[Item],
        report: Report | None,
    ) -> list[Result]:
        results: list[Result] = []
        try:
            for item in items[:MESSAGES_PER_CONNECTION]:
                outcome = await conn.send(
                    item.sender, item.rcpts, item.data, requiretls=item.requiretls
                )
                judged = self._judge(conn, item, outcome.rcpts, outcome.data, decision.label)
                results += judged
                if report is not None:
                    report(judged)
        except DeliveryError as exc:
            attempted = {r.queue_id for r in results}
            left = [i for i in items if i.queue_id not in attempted]
            if not results:
                raise
            # The connection broke mid-batch: what is left is retried on the next pass.
            results += _all(left[:1], exc.permanent, str(exc), transport=decision.label)
            return results
        if conn.is_open and conn.transactions < MESSAGES_PER_CONNECTION * 4:
            self.pool.park(key, conn)
        else:
            await conn.close()
        return results

    def _judge(
        self,
        conn: SmtpConnection,
        item: Item,
        rcpts: dict[str, Reply],
        data: Reply | None,
        label: str,
    ) -> list[Result]:
        out = []
        tls_info = f"{conn.tls_version} {conn.cipher}" if conn.tls_version else "no TLS"
        verified = bool(conn.verified and conn.tls_version)
        for rcpt in item.rcpts:
            reply = rcpts.get(rcpt)
            if reply is not None and reply.ok and data is not None:
                reply = data
            elif reply is not None and reply.ok:
                reply = Reply(451, "message not sent: DATA was not accepted")
            assert reply is not None
            delivered = reply.ok and data is not None and data.ok
            detail = (
                f"{conn.peer} said {reply.code} {reply.text.splitlines()[-1] if reply.text else ''}"
            )
            outcome = "sent" if delivered else ("bounced" if reply.code >= 500 else "deferred")
            self.events.emit(
                DeliveryAttempt(
                    queue_id=item.queue_id,
                    rcpt=rcpt,
                    relay=conn.peer,
                    tls=tls_info,
                    verified=verified,
                    delay=time.time() - item.received if item.received else 0.0,
                    result=outcome,
                    reply=str(reply),
                    verified_by=conn.verified_by,
                    transport=label,
                )
            )
            permanent = reply.code >= 500
            out.append(
                Result(item.queue_id, rcpt, delivered, permanent, detail, None, conn.verified_by,
                       label)
            )  # fmt: skip
        return out

    async def close(self) -> None:
        await self.pool.close()

    async def expire_idle(self) -> None:
        """Close connections idle too long (called by the queue manager's loop)."""
        await self.pool.expire()


def _all(
    items: Sequence[Item],
    permanent: bool,
    detail: str,
    *,
    failure: TlsFailure | None = None,
    transport: str = "",
) -> list[Result]:
    """The same undelivered result for every recipient of ``items``."""
    return [
        Result(i.queue_id, r, False, permanent, detail, failure, transport=transport)
        for i in items
        for r in i.rcpts
    ]
