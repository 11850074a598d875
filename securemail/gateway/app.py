"""The gateway: listeners → policy → spool → queue manager → delivery, in one process.

This module only wires the pieces together from one ``Config`` and owns their
lifecycle. Start order is spool (recovery of interrupted deliveries), queue manager,
then listeners; stop order is the reverse, so a SIGTERM never loses mail: listeners
stop accepting, open sessions get ``grace`` seconds to finish, in-flight deliveries
finish or stay ``delivering`` for the next start, and the spool is flushed and closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

from securemail.config import Config
from securemail.core.classify import Classifier
from securemail.core.levels import TlsLevel
from securemail.core.policy import Action, Decision, TlsRequirement, decide
from securemail.core.rules import Status
from securemail.core.sensitivity import Sensitivity, scan_message
from securemail.dns import Resolver
from securemail.gateway.inbound import auth
from securemail.gateway.inbound.server import (
    AuthLimiter,
    GatewayHandler,
    GatewaySMTP,
    Reply,
    Transaction,
    received_header,
)
from securemail.gateway.inbound.users import UserStore
from securemail.gateway.outbound.deliver import Deliverer
from securemail.gateway.queue.dsn import build_dsn
from securemail.gateway.queue.manager import QueueManager, Schedule
from securemail.gateway.spool import Delivery, NewMessage, NewRecipient, RcptStatus, new_queue_id
from securemail.gateway.spool import open_spool as open_spool_url
from securemail.mech.arc import arc_seal
from securemail.mech.dkim import DkimSigner, load_keys
from securemail.mech.dmarc import header_from_domain
from securemail.mech.results import authentication_results
from securemail.tls import (
    opportunistic_client_context,
    server_context,
    verified_client_context,
)

log = logging.getLogger("securemail.gateway")

_STATUS_FOR = {Action.DELIVER: RcptStatus.QUEUED, Action.HOLD: RcptStatus.HELD,
               Action.ENCRYPT: RcptStatus.HELD}  # fmt: skip


@dataclass
class Gateway:
    config: Config
    clock: object = field(default=time.time)
    servers: list[asyncio.Server] = field(default_factory=list)
    _sessions: set[GatewaySMTP] = field(default_factory=set)

    def __post_init__(self) -> None:
        cfg = self.config
        self.own_domains = frozenset(cfg.organisation.domains)
        self.classifier = Classifier.from_config(
            cfg,
            today=date.today(),
            on_missing=lambda path: log.warning("accredited list %s not found; not used", path),
        )
        self.spool = open_spool_url(cfg.spool.url, base=_base(cfg))
        self.resolver = Resolver.from_config(cfg.dns)
        host, port = _split(cfg.inbound.deliver_to)
        self.deliverer = Deliverer(
            self.resolver,
            helo=cfg.organisation.hostname,
            port=cfg.delivery.port,
            verified=verified_client_context(cfg.tls.ca_file),
            opportunistic=opportunistic_client_context(),
            internal=dict.fromkeys(self.own_domains, (host, port)),
        )
        self.queue = QueueManager(
            self.spool,
            self.deliverer,
            bounce=self.bounce,
            delay_notice=self.delay_notice,
            schedule=Schedule(
                retry_base=cfg.delivery.retry_base,
                retry_max=cfg.delivery.retry_max,
                max_lifetime=cfg.delivery.max_lifetime,
                tls_notify_after=cfg.delivery.tls_failure_notify_after,
            ),
            concurrency=cfg.delivery.concurrency,
            per_destination=cfg.delivery.per_destination,
        )
        self.users = UserStore(cfg.relay.users_file)
        self.keys = load_keys(cfg.dkim.key_dir, cfg.dkim.selector, sorted(self.own_domains))
        self.signer = DkimSigner(self.keys)
        self.relay_networks = [ipaddress.ip_network(n) for n in cfg.relay.networks]
        self.auth_policy = auth.AuthPolicy(
            enforce_dmarc=cfg.auth.enforce_dmarc,
            secure_senders_must_pass=cfg.auth.secure_senders_must_pass,
        )
        self.tls = server_context(cfg.tls.cert, cfg.tls.key, cfg.tls.min_version)
        self._queue_task: asyncio.Task[None] | None = None
        self.addresses: dict[str, tuple[str, int]] = {}  # role → bound (host, port)

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.spool.open()
        if self.spool.recovered:
            log.warning("recovered %d interrupted deliveries; retrying", self.spool.recovered)
        self._queue_task = asyncio.ensure_future(self.queue.run())
        limiter = AuthLimiter()
        loop = asyncio.get_running_loop()
        for role, address in (
            ("inbound", self.config.listen.inbound),
            ("submission", self.config.listen.submission),
        ):
            handler = GatewayHandler(
                role,
                classify=self.classifier.classify,
                accept=self.accept,
                own_domains=self.own_domains,
                relay_networks=self.config.relay.networks if role == "inbound" else (),
                authenticate=self.users.verify if role == "submission" else None,
                max_recipients=self.config.listen.max_recipients,
                limiter=limiter,
            )
            host, port = _split(address)
            server = await loop.create_server(
                lambda handler=handler, role=role: self._protocol(handler, role), host, port
            )
            self.servers.append(server)
            bound = server.sockets[0].getsockname()
            self.addresses[role] = (bound[0], bound[1])
            log.info("listening role=%s address=%s:%d", role, bound[0], bound[1])

    def _protocol(self, handler: GatewayHandler, role: str) -> GatewaySMTP:
        listen = self.config.listen
        protocol = GatewaySMTP(
            handler,
            hostname=self.config.organisation.hostname,
            ident="securemail",
            tls_context=self.tls,
            require_starttls=role == "submission",
            auth_required=role == "submission",
            auth_require_tls=True,
            data_size_limit=listen.max_message_size,
            timeout=listen.timeout,
            enable_SMTPUTF8=True,
            command_call_limit=1000,
        )
        protocol.on_close = self._sessions.discard
        self._sessions.add(protocol)
        return protocol

    async def stop(self, grace: float = 30.0) -> None:
        for server in self.servers:
            server.close()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for session in list(self._sessions):
                if not session.in_transaction:
                    session.close_idle()
            if not self._sessions:
                break
            await asyncio.sleep(0.05)
        for session in list(self._sessions):
            session.close_idle()
        await self.queue.stop(max(deadline - time.monotonic(), 1.0))
        if self._queue_task is not None:
            self._queue_task.cancel()
            await asyncio.gather(self._queue_task, return_exceptions=True)
        await self.spool.close()
        log.info("stopped")

    # --- the pipeline ------------------------------------------------------------------

    def decisions(self, t: Transaction, sensitivity: Sensitivity) -> list[Decision]:
        action = self.config.policy.unknown_sensitive_action
        out = []
        for rcpt, c in t.recipients:
            if c.domain in self.own_domains:
                out.append(
                    Decision(rcpt, c.status, Action.DELIVER, TlsRequirement.OPPORTUNISTIC,
                             "our own domain: to the internal mail server", "own-domain")
                )  # fmt: skip
            else:
                out.append(decide(c, sensitivity, action))
        return out

    async def accept(self, t: Transaction) -> Reply:
        """Authenticate (inbound) or sign (outbound), decide per recipient, then store
        durably: 250 only after commit."""
        queue_id = new_queue_id()
        now = time.time()
        headers, body = b"", t.data
        if self._from_outside(t):
            judged = await self._authenticate(t, queue_id)
            if isinstance(judged, Reply):
                return judged
            headers, body, t = judged
        elif t.role != "dsn":
            headers = self._dkim_sign(body)
        sensitivity = scan_message(body)
        decisions = self.decisions(t, sensitivity)
        refused = [d for d in decisions if d.action is Action.REJECT]
        if refused:
            log.warning(
                "refused from=<%s> client=%s reason=%r", t.sender, t.peer, refused[0].reason
            )
            who = ", ".join(d.recipient for d in refused[:3])
            return Reply(
                "550 5.7.1 Message refused by policy: sensitive content to a recipient not "
                f"known to be secure ({who}); remove them or use a secure route"
            )
        data = received_header(t, self.config.organisation.hostname, queue_id, now) + headers + body
        recipients = tuple(
            NewRecipient(
                address=d.recipient,
                domain=c.domain,
                status=_STATUS_FOR[d.action],
                # Release rule (spool/store.py): held mail has no level; it is kept VERIFIED.
                tls=TlsLevel.OPPORTUNISTIC
                if d.tls is TlsRequirement.OPPORTUNISTIC
                else TlsLevel.VERIFIED,
                reason=d.reason,
            )
            for d, (_, c) in zip(decisions, t.recipients, strict=True)
        )
        message = NewMessage(
            sender=t.sender,
            recipients=recipients,
            data=data,
            client=f"{t.peer} helo={t.helo}",
            auth_user=t.auth_user,
            sensitivity=sensitivity.summary(),
            received=now,
            queue_id=queue_id,
        )
        try:
            await self.spool.store(message)
        except Exception:
            log.exception("could not store message from=<%s>", t.sender)
            return Reply("451 4.3.0 Temporary failure storing the message; try again later")
        self.queue.wake()
        held = sum(r.status is RcptStatus.HELD for r in recipients)
        log.info(
            "accepted id=%s from=<%s> rcpts=%d held=%d size=%d client=%s tls=%s auth=%s "
            "sensitive=%s decisions=%s",
            queue_id,
            t.sender,
            len(recipients),
            held,
            len(data),
            t.peer,
            t.tls or "none",
            t.auth_user or "-",
            "yes" if sensitivity.sensitive else "no",
            [(d.recipient, d.action.value, d.tls.label if d.tls else "-") for d in decisions],
        )
        return Reply(f"250 2.0.0 Ok: queued as {queue_id}")

    # --- authentication ------------------------------------------------------------

    def _from_outside(self, t: Transaction) -> bool:
        """Inbound mail from another organisation (not our relay clients): verify it."""
        if t.role != "inbound" or not self.config.auth.verify:
            return False
        ip = ipaddress.ip_address(t.peer)
        return not any(ip in network for network in self.relay_networks)

    async def _authenticate(
        self, t: Transaction, queue_id: str
    ) -> Reply | tuple[bytes, bytes, Transaction]:
        """SPF/DKIM/DMARC/ARC; a Reply to refuse, or (headers, body, transaction) to go on."""
        authserv_id = self.config.organisation.hostname
        body = auth.strip_own_headers(t.data, authserv_id)
        verdict = await auth.authenticate(
            body, ip=t.peer, helo=t.helo, mail_from=t.sender, resolver=self.resolver
        )
        decision = auth.decide(
            verdict, tls=bool(t.tls), classify=self.classifier.classify, policy=self.auth_policy
        )
        log.info(
            "auth id=%s from=<%s> header_from=%s %s action=%s trust=%s detail=%r",
            queue_id,
            t.sender,
            verdict.from_domain,
            " ".join(f"{m.method}={m.result.value}" for m in verdict.method_results()),
            decision.action.value,
            "secure" if decision.trusted else "external",
            decision.log,
        )
        if decision.action in (auth.Action.REJECT, auth.Action.TEMPFAIL):
            return Reply(decision.reply, decision.log)
        results = authentication_results(authserv_id, verdict.method_results())
        headers = auth.result_headers(results, decision)
        quarantine_to = self.config.auth.quarantine_to
        if decision.action is auth.Action.QUARANTINE and quarantine_to:
            c = self.classifier.classify(quarantine_to)
            t = replace(t, recipients=[(quarantine_to, c)])
        if self.config.auth.arc_seal and self.keys:
            headers = self._arc_seal(headers + body, results) + headers
        return headers, body, t

    def _arc_seal(self, message: bytes, results: str) -> bytes:
        key = self.keys.get(self.config.organisation.domains[0]) or next(iter(self.keys.values()))
        try:
            return arc_seal(
                message,
                domain=key.domain,
                selector=key.selector,
                private_pem=key.private_pem,
                authserv_id=self.config.organisation.hostname,
                auth_results=results,
            )
        except Exception:  # sealing is best effort: never lose mail over it
            log.exception("ARC sealing failed; forwarding unsealed")
            return b""

    def _dkim_sign(self, data: bytes) -> bytes:
        """A DKIM-Signature for mail From one of our domains, when we hold its key."""
        if not self.config.dkim.sign or not self.keys:
            return b""
        domain, _ = header_from_domain(data)
        if domain is None or domain not in self.keys:
            return b""
        return self.signer.sign(data, domain) or b""

    async def bounce(self, delivery: Delivery, detail: str, original: bytes) -> None:
        """Queue a DSN to the sender; it goes through policy like any other message."""
        await self._notify(delivery, detail, original, "failed")

    async def delay_notice(self, delivery: Delivery, detail: str, original: bytes) -> None:
        """Forced TLS keeps failing: tell the sender the message has NOT arrived yet."""
        await self._notify(delivery, detail, original, "delayed")

    async def _notify(self, delivery: Delivery, detail: str, original: bytes, action: str) -> None:
        dsn = build_dsn(
            hostname=self.config.organisation.hostname,
            sender=delivery.sender,
            queue_id=delivery.queue_id,
            failures=[(delivery.rcpt, detail)],
            original=original,
            arrival=delivery.received,
            action=action,
        )
        c = self.classifier.classify(delivery.sender)
        if c.status is Status.INVALID:
            log.warning("no DSN for id=%s: sender %r invalid", delivery.queue_id, delivery.sender)
            return
        t = Transaction("dsn", "127.0.0.1", self.config.organisation.hostname, "", "", "",
                        [(delivery.sender, c)], dsn)  # fmt: skip
        reply = await self.accept(t)
        log.info(
            "dsn (%s) for id=%s to=<%s>: %s", action, delivery.queue_id, delivery.sender, reply.text
        )


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _base(config: Config) -> Path | None:
    return config.source.resolve().parent if config.source else None
