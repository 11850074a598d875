"""Deliver a batch of messages for one destination, at the TLS level the policy demands.

The queue manager hands over every due recipient for one (domain, ``TlsLevel``). The
Deliverer asks its policy chain (``policy.py``) what that destination needs, routes it
(``route.py``), tries the MX hosts in preference order, and sends the messages over as
few connections as it can, reusing idle ones (``pool.py``). It holds no TLS rule of its
own: the chain says which handshake each MX gets, and a connection is used only once the
chain has accepted what ``SmtpConnection.open`` achieved. A refusal at the TLS stage
(STARTTLS refused, a failed handshake, a policy's "no" to the peer) is a failure of that
host, never of the recipient: the next MX is tried, and if none meets the level the
recipients are deferred with the refusal's RFC 8460 failure type, never bounced and
never sent in the clear.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from securemail.core.levels import TlsFailure, TlsLevel
from securemail.dns import DnsError, DnsNotFound, DnsTemporaryError, Resolver
from securemail.gateway.events import DeliveryAttempt, EventSink, LogSink
from securemail.gateway.outbound.client import DeliveryError, Reply, SmtpConnection
from securemail.gateway.outbound.policy import (
    DeliveryPolicy,
    Handshake,
    PolicyChain,
    Refusal,
    default_policy,
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


@dataclass(frozen=True, slots=True)
class Result:
    queue_id: str
    rcpt: str
    delivered: bool
    permanent: bool
    detail: str
    tls_failure: TlsFailure | None = None  # the TLS requirement was not met, and why
    verified_by: str = ""  # which check verified the peer ("pkix:mx-hostname"), "" if none


class Deliverer:
    """Asks the policy chain, routes, and sends; owns the connection pool.

    One context per ``Handshake``: ``verified`` checks the chain and the MX host name
    (forced levels), ``pinned`` only the chain (for a ``tls_policy`` entry with
    ``match=``, whose link matches the names), ``opportunistic`` nothing. Without an
    explicit ``policy`` the chain is ``ForcedTls`` plus, when ``tls_policy`` has
    entries, the ``PolicyMap`` link over it.
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
            links = [PolicyMap(tls_policy, self.events)] if tls_policy else []
            policy = default_policy(*links)
        # The chain keeps the invariants (levels only rise, forced means verified).
        self.policy = policy if isinstance(policy, PolicyChain) else PolicyChain([policy])
        self.pool = ConnectionPool()

    async def deliver(
        self,
        domain: str,
        level: TlsLevel,
        items: Sequence[Item],
        *,
        report: Report | None = None,
    ) -> list[Result]:
        """Deliver every item; one Result per (item, recipient).

        ``report`` is called with each message's results the moment its DATA reply
        arrives, so the caller can record them at once: a crash then can only repeat
        the one message in flight, not every message already sent on the connection.
        """
        prepared = await self.policy.prepare(domain, level)
        if isinstance(prepared, Refusal):
            return _all(items, prepared.permanent, prepared.detail, failure=prepared.failure)
        try:
            route = await self.router.route(domain)
        except DnsTemporaryError as exc:
            return _all(items, False, f"DNS lookup for {domain} failed: {exc}")
        except DnsNotFound as exc:
            return _all(items, True, f"no mail servers for {domain}: {exc}")
        except DnsError as exc:
            return _all(items, False, f"DNS error for {domain}: {exc}")
        pending = list(items)
        results: list[Result] = []
        errors: list[str] = []
        failure: TlsFailure | None = None  # the last TLS requirement not met

        def failed(exc: DeliveryError) -> None:
            """One server (or the policy for it) said no: a permanent no ends it all."""
            nonlocal pending, failure
            errors.append(str(exc))
            failure = exc.failure or failure
            if exc.permanent:
                results.extend(_all(pending, True, str(exc), failure=exc.failure))
                pending = []

        for host in route.hosts:
            if not pending:
                break
            host_level = await self.policy.check_mx(domain, host, prepared)
            if isinstance(host_level, Refusal):
                failed(host_level.error())
                continue
            try:
                ips = await self.router.addresses(route, host)
            except DnsError as exc:
                errors.append(f"{host}: {exc}")
                continue
            for ip in ips:
                if not pending:
                    break
                try:
                    key = (domain, host, ip, route.port, host_level)
                    done = await self._deliver_via(key, pending, report)
                except DeliveryError as exc:
                    failed(exc)
                    continue
                results += done
                finished = {r.queue_id for r in done}
                pending = [i for i in pending if i.queue_id not in finished]
        if pending:
            detail = "; ".join(errors[-3:]) or f"no usable mail server for {domain}"
            results += _all(pending, False, detail, failure=failure)
        return results

    async def _deliver_via(
        self, key: PoolKey, items: list[Item], report: Report | None
    ) -> list[Result]:
        """Send as many items as possible through one connection to ``key``'s address.

        Returns results for the items attempted; raises ``DeliveryError`` if no usable
        connection could be had (nothing attempted), so the caller tries the next.
        """
        conn = self.pool.take(key)
        if conn is not None:
            try:
                return await self._send_all(key, conn, items, report)
            except DeliveryError:
                pass  # the server closed the idle connection: start afresh
        domain, host, ip, port, level = key
        handshake = self.policy.handshake(domain, host, level)
        if handshake not in self.contexts:  # wiring: a link pins names, no context for it
            raise DeliveryError(f"no TLS context for a {handshake.value} handshake to {host}")
        conn = SmtpConnection(host, ip, port, helo=self.helo)
        facts = await conn.open(self.contexts[handshake])
        try:
            verdict = await self.policy.check_conn(domain, host, facts, level)
        except BaseException:  # a link's bug or cancellation: never leave the session open
            await conn.close()
            raise
        if isinstance(verdict, Refusal):
            await conn.close()
            raise verdict.host_failure()
        if not conn.is_open:  # STARTTLS or the handshake failed where TLS was not needed
            raise DeliveryError(facts.error)
        conn.verified_by = verdict.verified_by
        # A pinned peer is authenticated by the policy's name match, not the handshake's.
        conn.verified = conn.verified or bool(verdict.verified_by)
        return await self._send_all(key, conn, items, report)

    async def _send_all(
        self, key: PoolKey, conn: SmtpConnection, items: list[Item], report: Report | None
    ) -> list[Result]:
        results: list[Result] = []
        try:
            for item in items[:MESSAGES_PER_CONNECTION]:
                outcome = await conn.send(item.sender, item.rcpts, item.data)
                judged = self._judge(conn, item, outcome.rcpts, outcome.data)
                results += judged
                if report is not None:
                    report(judged)
        except DeliveryError as exc:
            attempted = {r.queue_id for r in results}
            left = [i for i in items if i.queue_id not in attempted]
            if not results:
                raise
            # The connection broke mid-batch: what is left is retried on the next pass.
            results += _all(left[:1], exc.permanent, str(exc))
            return results
        if conn.is_open and conn.transactions < MESSAGES_PER_CONNECTION * 4:
            self.pool.park(key, conn)
        else:
            await conn.close()
        return results

    def _judge(
        self, conn: SmtpConnection, item: Item, rcpts: dict[str, Reply], data: Reply | None
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
                )
            )
            permanent = reply.code >= 500
            out.append(
                Result(item.queue_id, rcpt, delivered, permanent, detail, None, conn.verified_by)
            )
        return out

    async def close(self) -> None:
        await self.pool.close()

    async def expire_idle(self) -> None:
        """Close connections idle too long (called by the queue manager's loop)."""
        await self.pool.expire()


def _all(
    items: Sequence[Item], permanent: bool, detail: str, *, failure: TlsFailure | None = None
) -> list[Result]:
    """The same undelivered result for every recipient of ``items``."""
    return [
        Result(i.queue_id, r, False, permanent, detail, failure) for i in items for r in i.rcpts
    ]
