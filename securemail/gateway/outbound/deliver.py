"""Deliver a batch of messages for one destination, with the TLS the policy demands.

The queue manager hands over every due recipient for one (domain, TLS requirement);
this module finds where that domain's mail goes (MX, implicit MX, null MX, or our
internal server for our own domains), opens connections in MX preference order, and
sends the messages over as few connections as it can: idle connections are kept per
destination for a few seconds and reused (Postfix's connection cache), which spares a
TCP and TLS handshake per message.

Forced TLS is enforced in ``SmtpConnection.open``; here a TLS failure on one MX host
moves on to the next host, and if none can meet it the recipients are deferred, never
sent in the clear.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from securemail.core.policy import TlsRequirement
from securemail.dns import DnsError, DnsNotFound, DnsTemporaryError, Resolver
from securemail.gateway.outbound.client import DeliveryError, Reply, SmtpConnection

log = logging.getLogger("securemail.delivery")

IDLE_SECONDS = 5.0
MAX_IDLE_PER_DESTINATION = 32
MESSAGES_PER_CONNECTION = 500


@dataclass(frozen=True, slots=True)
class Route:
    """Where to connect: (host name used for TLS verification, port)."""

    hosts: tuple[str, ...]
    port: int
    literal_ip: str | None = None  # for the internal server given as IP:port


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
    tls_failure: bool = False


class Deliverer:
    """Routes and sends; owns the connection cache."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        helo: str,
        port: int,
        verified: ssl.SSLContext,
        opportunistic: ssl.SSLContext,
        internal: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        self.resolver = resolver
        self.helo = helo
        self.port = port
        self.contexts = {
            TlsRequirement.REQUIRED: verified,
            TlsRequirement.OPPORTUNISTIC: opportunistic,
        }
        self.internal = internal or {}
        self._idle: dict[tuple[str, str, int, TlsRequirement], list[tuple[float, SmtpConnection]]]
        self._idle = defaultdict(list)
        self._closing: set[asyncio.Future[None]] = set()

    async def route(self, domain: str) -> Route:
        """Raises DnsError subclasses; DnsNotFound / null MX are permanent."""
        if domain in self.internal:
            ip, port = self.internal[domain]
            return Route((ip,), port, literal_ip=ip)
        mx = await self.resolver.mx(domain)
        if mx.null:
            raise DnsNotFound(f"{domain} accepts no mail (null MX, RFC 7505)")
        return Route(tuple(h.host for h in mx.hosts), self.port)

    async def deliver(
        self,
        domain: str,
        tls: TlsRequirement,
        items: Sequence[Item],
        *,
        report: Callable[[list[Result]], None] | None = None,
    ) -> list[Result]:
        """Deliver every item; one Result per (item, recipient).

        ``report`` is called with each message's results the moment its DATA reply
        arrives, so the caller can record them at once: a crash then can only repeat
        the one message in flight, not every message already sent on the connection.
        """
        try:
            route = await self.route(domain)
        except DnsTemporaryError as exc:
            return _all(items, False, False, f"DNS lookup for {domain} failed: {exc}")
        except DnsNotFound as exc:
            return _all(items, False, True, f"no mail servers for {domain}: {exc}")
        except DnsError as exc:
            return _all(items, False, False, f"DNS error for {domain}: {exc}")
        pending = list(items)
        results: list[Result] = []
        errors: list[str] = []
        tls_failures = 0
        for host in route.hosts:
            if not pending:
                break
            try:
                ips = (
                    [route.literal_ip] if route.literal_ip else await self.resolver.addresses(host)
                )
            except DnsError as exc:
                errors.append(f"{host}: {exc}")
                continue
            for ip in ips:
                if not pending:
                    break
                try:
                    done = await self._deliver_via(host, ip, route.port, tls, pending, report)
                except DeliveryError as exc:
                    errors.append(str(exc))
                    tls_failures += exc.tls
                    if exc.permanent:
                        results += _all(pending, False, True, str(exc))
                        pending = []
                    continue
                results += done
                finished = {r.queue_id for r in done}
                pending = [i for i in pending if i.queue_id not in finished]
        if pending:
            detail = "; ".join(errors[-3:]) or f"no usable mail server for {domain}"
            results += _all(pending, False, False, detail, tls=tls_failures > 0)
        return results

    async def _deliver_via(
        self,
        host: str,
        ip: str,
        port: int,
        tls: TlsRequirement,
        items: list[Item],
        report: Callable[[list[Result]], None] | None,
    ) -> list[Result]:
        """Send as many items as possible through one connection to ``ip``.

        Returns results for the items attempted; raises ``DeliveryError`` if the
        connection could not be opened (nothing attempted) so the caller tries the next.
        """
        key = (host, ip, port, tls)
        conn = self._take_idle(key)
        if conn is not None:
            try:
                return await self._send_all(key, conn, items, report)
            except DeliveryError:
                pass  # the server closed the idle connection: start afresh
        conn = SmtpConnection(host, ip, port, helo=self.helo)
        await conn.open(tls, self.contexts[tls])
        return await self._send_all(key, conn, items, report)

    async def _send_all(
        self,
        key: tuple[str, str, int, TlsRequirement],
        conn: SmtpConnection,
        items: list[Item],
        report: Callable[[list[Result]], None] | None,
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
            results += _all(left[:1], False, exc.permanent, str(exc))
            return results
        if conn.is_open and conn.transactions < MESSAGES_PER_CONNECTION * 4:
            self._park(key, conn)
        else:
            await conn.close()
        return results

    def _judge(
        self, conn: SmtpConnection, item: Item, rcpts: dict[str, Reply], data: Reply | None
    ) -> list[Result]:
        out = []
        tls_info = f"{conn.tls_version} {conn.cipher}" if conn.tls_version else "no TLS"
        verified = "verified" if conn.verified and conn.tls_version else "unverified"
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
            log.info(
                "delivery id=%s rcpt=<%s> relay=%s tls=%s (%s) delay=%.3f result=%s reply=%r",
                item.queue_id,
                rcpt,
                conn.peer,
                tls_info,
                verified,
                time.time() - item.received if item.received else 0.0,
                "sent" if delivered else ("bounced" if reply.code >= 500 else "deferred"),
                str(reply)[:200],
            )
            out.append(Result(item.queue_id, rcpt, delivered, reply.code >= 500, detail))
        return out

    def _take_idle(self, key: tuple[str, str, int, TlsRequirement]) -> SmtpConnection | None:
        now = time.monotonic()
        idle = self._idle.get(key)
        while idle:
            parked, conn = idle.pop()
            if now - parked < IDLE_SECONDS and conn.is_open:
                return conn
            self._close_later(conn)
        return None

    def _park(self, key: tuple[str, str, int, TlsRequirement], conn: SmtpConnection) -> None:
        idle = self._idle[key]
        if len(idle) >= MAX_IDLE_PER_DESTINATION:
            self._close_later(conn)
            return
        idle.append((time.monotonic(), conn))

    def _close_later(self, conn: SmtpConnection) -> None:
        task = asyncio.ensure_future(conn.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        conns = [c for idle in self._idle.values() for _, c in idle]
        self._idle.clear()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)

    async def expire_idle(self) -> None:
        """Close connections idle too long (called by the queue manager's loop)."""
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            keep = [(t, c) for t, c in idle if now - t < IDLE_SECONDS and c.is_open]
            for t, c in idle:
                if (t, c) not in keep:
                    await c.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]


def _all(
    items: Sequence[Item], delivered: bool, permanent: bool, detail: str, *, tls: bool = False
) -> list[Result]:
    return [
        Result(i.queue_id, r, delivered, permanent, detail, tls) for i in items for r in i.rcpts
    ]
