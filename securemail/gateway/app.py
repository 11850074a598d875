"""The gateway's composition root: one ``Config`` → the stages, wired; start and stop.

listeners → accept pipeline → spool → queue manager → delivery, in one process. Nothing
here decides anything: each stage lives in its own package (``inbound/``, ``spool/``,
``queue/``, ``outbound/``) and reports through one ``EventSink``.

Start is in steps. ``bind_listeners`` creates the listening sockets (not accepting yet):
the one step that may need root, so ``securemail serve`` runs it before it gives root
up, and only then builds the ``Gateway``, which reads the keys, lists and users as the
service user. ``start`` then opens the spool (recovery of interrupted deliveries),
starts the queue manager, and lets the listeners accept (binding them first when
nothing did: tests, and any caller that needs no root). Stop order is the reverse, so
a SIGTERM never loses mail: listeners stop accepting, open sessions get ``grace``
seconds to finish, in-flight deliveries finish or stay ``delivering`` for the next
start, and the spool is flushed and closed.

What the stages take from the config is built by ``reload.build``, at start and again
on every reload (SIGHUP), which swaps the new pieces in without a restart; the pid and
state files through which ``securemail reload`` finds and hears from this process are
``control.ServiceFiles``.

With ``workers`` above 1 (``[listen] workers``, under ``securemail serve``), the inbound
listener's sessions run in that many accept worker processes (``inbound/pool.py`` says
why and how); each is a ``Gateway`` too, built with the ``channel`` to this one, which
runs only the inbound sessions and the accept pipeline, with its own spool writer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from securemail.config import Config
from securemail.core.classify import Classification
from securemail.core.replies import SmtpReply
from securemail.errors import SecuremailError
from securemail.gateway.control import OK, REFUSED, GatewayState, ServiceFiles
from securemail.gateway.events import EventSink, Lifecycle, LogSink
from securemail.gateway.inbound import handoff
from securemail.gateway.inbound.accept import AcceptPipeline
from securemail.gateway.inbound.capacity import Admitted
from securemail.gateway.inbound.limits import AuthLimiter, LockoutFiles
from securemail.gateway.inbound.listeners import ROLES, Listeners
from securemail.gateway.inbound.offload import Offload
from securemail.gateway.inbound.pool import AcceptPool
from securemail.gateway.inbound.pool import worker_command as default_worker_command
from securemail.gateway.inbound.server import GatewayHandler, Transaction
from securemail.gateway.inbound.users import UserStore
from securemail.gateway.queue.manager import QueueManager
from securemail.gateway.queue.notify import Notifier
from securemail.gateway.reload import (
    Pieces,
    build,
    config_base,
    listen_settings,
    load_fresh,
    split_address,
    swap,
)
from securemail.gateway.spool import open_spool, spool_path
from securemail.portal import Portal, PortalError
from securemail.privileges import describe_uid
from securemail.tls import served_certificate

if TYPE_CHECKING:
    from securemail.web.serve import PortalWeb

SPOOL_LINGER = 0.02  # seconds the gateway's commits wait for company beside accept workers
PORTAL_EXPIRY_EVERY = 300.0  # seconds between two expiry runs of the portal


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        today: Callable[[], date] = date.today,
        events: EventSink | None = None,
        service: ServiceFiles | None = None,
        listeners: Listeners | None = None,
        portal_socket: socket.socket | None = None,
        workers: int = 1,
        worker_command: Sequence[str] = (),
        channel: handoff.Channel | None = None,
    ) -> None:
        """Wire the stages; reads the TLS key, DKIM keys and accredited list (so, under
        ``serve``, after the switch to the service user). ``service``: the pid and state
        files (``securemail serve`` passes them); None for a gateway embedded in a test or
        benchmark, which nothing outside signals. ``listeners``: those ``bind_listeners``
        bound, else new ones that ``start`` binds; ``portal_socket`` likewise for the
        portal's HTTPS listener (``bind_portal``), when the portal is enabled.
        ``workers``: accept processes for the inbound listener (1: none, all in this
        process), each started with ``worker_command`` (``pool.worker_command``).
        ``channel``: this is an accept worker, fed connections over it."""
        self.clock = clock
        self.today = today
        self.events = events or LogSink()
        self.service = service
        # The spool first: it also keeps the MTA-STS policies the deliverer uses.
        self.spool = open_spool(
            config.spool.url,
            base=config_base(config),
            audit_days=config.spool.audit_days,
            # Beside accept workers, this process's writes are delivery bookkeeping:
            # batched a little longer, they hold the lock the workers wait for less often.
            linger=SPOOL_LINGER if workers > 1 and channel is None else 0.0,
        )
        live = self.live = build(config, today=today, events=self.events, sts_store=self.spool)
        for note in live.notes:
            self.events.emit(Lifecycle(note, warning=True))
        cfg = self.config = live.config
        self.classifier = live.classifier
        self.own_domains = frozenset(cfg.organisation.domains)
        self.users = UserStore(cfg.relay.users_file, cfg.organisation.domains)
        self.users.adopt(live.users)
        self.offload = Offload(cfg.listen.cpu_budget)
        self.pipeline = AcceptPipeline(
            live.rules,
            classify=self.classify,
            spool=self.spool,
            events=self.events,
            clock=clock,
            senders=self.users.owned,
            stored=self._stored,
            offload=self.offload,
        )
        notifier = Notifier(
            hostname=cfg.organisation.hostname,
            classify=self.classify,
            submit=self.pipeline.accept,
            events=self.events,
        )
        self.pipeline.on_held = notifier.held_notice
        self.portal: Portal | None = None
        if cfg.portal.enabled:
            self.portal = Portal.open(
                cfg.portal, clock=clock, organisation=cfg.organisation.name,
                address=f"portal@{cfg.organisation.domains[0]}", send=self.submit_portal,
            )  # fmt: skip
            self.pipeline.portal = self.portal
        self._expiry_task: asyncio.Task[None] | None = None
        self._portal_socket = portal_socket
        self.web: PortalWeb | None = None  # the portal's HTTPS listener, once started
        self.portal_address: tuple[str, int] | None = None  # its bound (host, port)
        self.queue = QueueManager(
            self.spool,
            live.deliverer,
            bounce=notifier.bounce,
            delay_notice=notifier.delay_notice,
            schedule=live.schedule,
            concurrency=cfg.delivery.concurrency,
            per_destination=cfg.delivery.per_destination,
            clock=clock,
            events=self.events,
        )
        self.channel = channel
        self.listeners = listeners or Listeners(live.listen)
        self.pool: AcceptPool | None = None
        if workers > 1 and channel is None:
            self.pool = AcceptPool(
                workers,
                command=worker_command or default_worker_command(),
                limits=self.listeners.limits,  # one count for both listeners' sessions
                budget=self.listeners.budget,  # and one DATA budget for every process
                events=self.events,
                stored=lambda: self.queue.wake(),
            )
        self._store_signalled = False
        self.handlers: list[GatewayHandler] = []
        self.limiter: AuthLimiter | None = None
        self.generation = 0  # reload attempts so far (the state file's generation)
        self.started = ""
        self._reloading = asyncio.Lock()  # one reload (or the start) at a time
        self._queue_task: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()

    def classify(self, address: str) -> Classification:
        """The classifier in force: read at each call, so a reload reaches every stage."""
        return self.classifier.classify(address)

    async def reload(self) -> GatewayState | None:
        """SIGHUP: re-read everything that can change live, all or nothing, keeping
        every session and delivery (``gateway/reload.py`` says how).

        In force at once: the configuration's decision inputs (accredited list, local
        policy lists, audience, policy, authentication and forced TLS inbound settings),
        the users file, the server certificate and key (new connections), the DKIM keys,
        the delivery TLS contexts, policy map, port and retry schedule, DNS, recipient
        check and AUTH limits. An invalid configuration, an unreadable file, or a key that does not
        match its certificate refuses the reload with one warning line, and the running
        configuration stays. Settings only a restart can change (``RESTART_ONLY``:
        listen addresses, spool, connection limits, ...) keep their running values, and
        the log line names each ("listen.inbound changed: needs a restart").

        Returns the state recorded (None before ``start``, when there is nothing to
        reload yet). The accept workers are sent what is now in force.
        """
        async with self._reloading:
            if not self.started:
                return None
            self.generation += 1
            try:
                new = await asyncio.to_thread(
                    load_fresh,
                    self.config,
                    today=self.today,
                    events=self.events,
                    sts_store=self.spool,
                )
            except Exception as exc:  # whatever it is, the running configuration stays
                message = self._refused(exc)
                return self._record(REFUSED, message, ())
            self._apply(new.pieces)
            if self.pool is not None:
                self.pool.reload(new.pieces.config)
            for warning in new.warnings:
                self.events.emit(Lifecycle(f"reload: config: {warning}", warning=True))
            waiting = "".join(f"; {key} changed: needs a restart" for key in new.restart_needed)
            message = (
                f"reloaded {self.config.source or '(built-in defaults)'} (generation "
                f"{self.generation}): {new.pieces.in_force.summary()}{waiting}"
            )
            self.events.emit(Lifecycle(message, warning=bool(new.restart_needed)))
            return self._record(OK, message, new.restart_needed)

    async def adopt(self, config: Config) -> str:
        """An accept worker's reload: build what the gateway process now runs (its
        ``config``, already checked there) and put it in force. What happened, in words."""
        async with self._reloading:
            self.generation += 1
            try:
                pieces = await asyncio.to_thread(
                    build, config, today=self.today, events=self.events, sts_store=self.spool
                )
            except Exception as exc:  # this worker keeps what it runs; the log says so
                return self._refused(exc)
            self._apply(pieces)
            return f"reloaded (generation {self.generation})"

    def _refused(self, exc: Exception) -> str:
        why = str(exc) if isinstance(exc, SecuremailError) else repr(exc)
        message = f"reload refused: {why}; keeping the running configuration"
        self.events.emit(Lifecycle(message, warning=True))
        return message

    def _apply(self, pieces: Pieces) -> None:
        """Swap ``pieces`` in (no await before it: atomic on the loop) and retire the
        deliverer they replace once its deliveries are done."""
        retired = swap(self, pieces)
        if self.portal is not None:  # its LIVE keys; the files stay (RESTART_ONLY)
            running = self.portal.config
            self.portal.config = replace(
                pieces.config.portal, enabled=True, key_file=running.key_file,
                database=running.database, listen=running.listen,
            )  # fmt: skip
        task = asyncio.ensure_future(retired.close())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    def _stored(self) -> None:
        """New mail in the spool: the queue manager looks now; from an accept worker,
        the gateway process's is told, once per turn of the loop however many came."""
        if self.channel is None:
            self.queue.wake()
        elif not self._store_signalled:
            self._store_signalled = True
            asyncio.get_running_loop().call_soon(self._signal_stored)

    def _signal_stored(self) -> None:
        self._store_signalled = False
        if self.channel is not None:
            self.channel.send(handoff.STORED)

    def _record(self, result: str, message: str, restart: tuple[str, ...]) -> GatewayState:
        state = GatewayState(
            pid=self.service.pid if self.service else 0,
            started=self.started,
            generation=self.generation,
            at=self._now(),
            result=result,
            message=message,
            in_force=self.live.in_force,
            restart_needed=restart,
        )
        if self.service is not None:
            try:
                self.service.record(state)
            except OSError as exc:
                self.events.emit(
                    Lifecycle(f"cannot write {self.service.state_file}: {exc}", warning=True)
                )
        return state

    def _now(self) -> str:
        return datetime.fromtimestamp(self.clock(), UTC).isoformat(timespec="seconds")

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        """role → the (host, port) each listener is bound to."""
        return self.listeners.addresses

    async def start(self) -> None:
        """Spool (with recovery), queue manager, listeners; then the pid and state files.

        With ``service``, refuses (``InputError``) before opening anything while the pid
        file names another live gateway.
        """
        async with self._reloading:  # a SIGHUP during start waits for it
            if self.service is not None:
                took_over = self.service.claim()
                if took_over:
                    self.events.emit(Lifecycle(took_over, warning=True))
            for fact, warning in self.startup_facts():
                self.events.emit(Lifecycle(fact, warning=warning))
            await self.spool.open()
            if self.portal is not None:
                await self.portal.start()  # a missing or exposed key stops the start here
            if self.spool.recovered:
                self.events.emit(
                    Lifecycle(
                        f"recovered {self.spool.recovered} interrupted deliveries; retrying",
                        warning=True,
                    )
                )
            self._queue_task = asyncio.ensure_future(self.queue.run())
            if self.portal is not None:
                self._expiry_task = asyncio.ensure_future(self._portal_upkeep(self.portal))
            if self.pool is not None:  # each opens the spool this one has just prepared
                await self.pool.start(self.config)
            await self._listen()
            if self.portal is not None:
                self.web = await self._serve_portal(self.portal)
            listening = ", ".join(
                f"{role} {host}:{port}" for role, (host, port) in self.addresses.items()
            )
            workers = (
                f"; inbound sessions in {self.pool.count} accept workers (pids "
                f"{', '.join(map(str, self.pool.pids))})"
                if self.pool is not None
                else ""
            )
            running = describe_uid(os.geteuid())
            self.events.emit(Lifecycle(f"listening on {listening}; running as {running}{workers}"))
            self.started = self._now()
            if self.service is not None:
                self.service.publish()
            self._record(OK, "started", ())

    async def start_worker(self) -> None:
        """An accept worker's start: the spool (and the portal's store), then the inbound
        sessions the gateway process hands over; ``READY`` tells it so."""
        assert self.channel is not None
        async with self._reloading:
            await self.spool.open()
            if self.portal is not None:
                await self.portal.start()
            self.listeners.adopt("inbound", self._handler("inbound"), self.live.tls)
            self.started = self._now()
            self.channel.send(handoff.READY)

    def take(self, sock: socket.socket, conn_id: int) -> None:
        """An accept worker's session: a connection the gateway process counted."""
        assert self.channel is not None
        channel = self.channel
        task = asyncio.ensure_future(
            self.listeners.take(
                "inbound", sock, Admitted(lambda: channel.send(handoff.closed(conn_id)))
            )
        )
        task.add_done_callback(_close_on_failure(sock, channel, conn_id, self.events))

    async def _listen(self) -> None:
        cfg = self.config
        self.limiter = AuthLimiter(
            self.live.auth_limits, files=LockoutFiles(cfg.relay.users_file), events=self.events
        )
        for role, (host, port) in _listen_addresses(cfg):
            await self.listeners.bind(role, host, port)  # unless bind_listeners did
            if role == "inbound" and self.pool is not None:
                self.pool.serve(self.listeners.detach(role))
            else:
                await self.listeners.serve(role, self._handler(role), self.live.tls)

    def _handler(self, role: str) -> GatewayHandler:
        cfg, live = self.config, self.live
        handler = GatewayHandler(
            role,
            classify=self.classify,
            accept=self.pipeline.accept,
            own_domains=self.own_domains,
            relay_networks=cfg.relay.networks if role == "inbound" else (),
            authenticate=self.users.verify if role == "submission" else None,
            max_recipients=live.max_recipients,
            limiter=self.limiter,
            events=self.events,
            recipients=live.recipients,
            senders=self.users.owned,
            postmaster_domain=cfg.organisation.domains[0] if cfg.organisation.domains else "",
            inbound_tls=lambda: self.pipeline.rules.inbound_tls,  # a reload's, at once
        )
        self.handlers.append(handler)
        return handler

    def startup_facts(self) -> list[tuple[str, bool]]:
        """What this gateway runs with, as (fact, warning) for the start-up log: which
        file, spool, certificate, keys, list and policy, so "which config did it load?"
        is answered by the log rather than by guessing after an incident."""
        cfg = self.config
        cert = served_certificate(cfg.tls.cert)
        expired = cert.expired(self.clock())
        facts = [
            (f"config {cfg.source or '(built-in defaults)'}", False),
            (f"spool {spool_path(cfg.spool.url, base=config_base(cfg))}", False),
            (
                f"certificate {cert.path}: {cert.subject}, "
                f"{'EXPIRED' if expired else 'expires'} {cert.expires.isoformat()}",
                expired,
            ),
        ]
        keys = self.live.keys
        signing = ", ".join(f"{k.domain} selector {k.selector}" for k in keys.values())
        unsigned = sorted(self.own_domains - keys.keys())
        facts.append(
            (
                f"DKIM keys: {signing or 'none'}"
                + (f"; unsigned: {', '.join(unsigned)}" if unsigned and cfg.dkim.sign else ""),
                bool(unsigned and cfg.dkim.sign),
            )
        )
        listed = self.classifier.accredited
        if listed is not None:
            dated = listed.list_date.isoformat() if listed.list_date else "undated"
            facts.append(
                (f"accredited list {listed.source}: {len(listed.entries)} entries, {dated}", False)
            )
        facts.append(
            (
                f"policy: audience {cfg.organisation.audience.value}, sensitive mail to an "
                f"unknown recipient: {cfg.policy.unknown_sensitive_action}, unscannable "
                f"parts: {cfg.policy.unscannable}, DMARC enforced: "
                f"{'yes' if cfg.auth.enforce_dmarc else 'no'}, local secure domains: "
                f"{len(cfg.policy.secure_domains)}, denied domains: "
                f"{len(cfg.policy.deny_domains)}",
                False,
            )
        )
        facts.append(
            (f"forced TLS inbound: {self.live.rules.inbound_tls.summary} (SCCI1596)", False)
        )
        portal = cfg.portal
        facts.append(
            (
                f"portal: {portal.base_url} (listen {portal.listen}), database "
                f"{portal.database}, key {portal.key_file}, kept {portal.retention_days} days"
                if portal.enabled
                else "portal: off ([portal] enabled = false)",
                False,
            )
        )
        return facts

    async def submit_portal(self, rcpt: str, data: bytes) -> SmtpReply:
        """The portal's notices (and the web's replies) into our own pipeline, role
        ``portal``: decided, DKIM-signed for our domains and queued like any mail.
        Raises ``PortalError`` unless the pipeline took it (250)."""
        t = Transaction("portal", "127.0.0.1", self.config.organisation.hostname, "", "",
                        "", [(rcpt, self.classify(rcpt))], data)  # fmt: skip
        reply = await self.pipeline.accept(t)
        if not 200 <= reply.code < 300:
            raise PortalError(f"the gateway did not take the portal's mail to {rcpt}: {reply}")
        return reply

    async def _portal_upkeep(self, portal: Portal) -> None:
        """Notices a crash interrupted, then expiry every ``PORTAL_EXPIRY_EVERY`` seconds."""
        try:
            if sent := await portal.renotify():
                self.events.emit(Lifecycle(f"portal: re-sent {sent} interrupted notices"))
        except Exception as exc:
            self.events.emit(Lifecycle(f"portal: re-sending notices failed: {exc}", warning=True))
        while True:
            try:
                if expired := await portal.expire():
                    self.events.emit(Lifecycle(f"portal: {expired} messages expired"))
            except Exception as exc:  # the next round tries again
                self.events.emit(Lifecycle(f"portal: expiry failed: {exc}", warning=True))
            await asyncio.sleep(PORTAL_EXPIRY_EVERY)

    async def _serve_portal(self, portal: Portal) -> PortalWeb:
        """The portal's pages over HTTPS on ``[portal] listen``, with the SMTP listeners'
        certificate; replies from its recipients go into our pipeline as portal mail.
        The web stack is imported here, not at the top: an accept worker never serves it,
        and FastAPI's import is a third of a worker's start."""
        from securemail.web.app import create_app
        from securemail.web.serve import portal_listen, start_portal_web

        listen = portal_listen(self.config.portal.listen, self.config.portal.base_url)

        async def submit_reply(rcpt: str, data: bytes) -> None:
            await self.submit_portal(rcpt, data)  # raises unless the pipeline took it

        app = create_app(portal, base_url=listen.base_url, submit_reply=submit_reply)
        web = await start_portal_web(app, listen, self.live.tls, sock=self._portal_socket)
        self.portal_address = (listen.host, web.port)
        self.events.emit(Lifecycle(f"portal listening on https://{listen.host}:{web.port}"))
        return web

    async def stop(self, grace: float = 30.0) -> None:
        if self.channel is not None:
            await self._stop_worker(grace)
            return
        if self.web is not None:  # no new page views; requests in flight finish
            await self.web.stop(min(grace, 10.0))
        workers = asyncio.ensure_future(self.pool.stop(grace)) if self.pool else None
        deadline = await self.listeners.stop(grace)  # the workers drain meanwhile
        if workers is not None:
            await workers
        await self.queue.stop(max(deadline - time.monotonic(), 1.0))
        for task in (self._queue_task, self._expiry_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._close_stores()
        if self.service is not None and self.started:
            self.service.withdraw()
        self.events.emit(Lifecycle("stopped"))

    async def _stop_worker(self, grace: float) -> None:
        await self.listeners.stop(grace)
        await self._close_stores()

    async def _close_stores(self) -> None:
        await asyncio.gather(*self._retired, return_exceptions=True)
        await self.offload.close()
        await self.spool.close()
        if self.portal is not None:
            await self.portal.close()


def _close_on_failure(
    sock: socket.socket, channel: handoff.Channel, conn_id: int, events: EventSink
) -> Callable[[asyncio.Future[None]], None]:
    """A handed-over connection the loop could not take (out of descriptors, say) is
    closed, said, and the gateway process told, so its count goes down."""

    def done(task: asyncio.Future[None]) -> None:
        if task.cancelled() or task.exception() is not None:
            why = "cancelled" if task.cancelled() else repr(task.exception())
            message = f"a handed-over connection could not be served: {why}"
            events.emit(Lifecycle(message, warning=True))
            sock.close()
            channel.send(handoff.closed(conn_id))

    return done


async def bind_listeners(config: Config) -> Listeners:
    """Both listening sockets, bound but not accepting: the step that may need root.

    Raises ``OSError`` (address in use, permission) with nothing left bound.
    """
    listeners = Listeners(listen_settings(config))
    try:
        for role, (host, port) in _listen_addresses(config):
            await listeners.bind(role, host, port)
    except OSError:
        await listeners.stop(0)
        raise
    return listeners


def _listen_addresses(cfg: Config) -> list[tuple[str, tuple[str, int]]]:
    """(role, (host, port)) for each listener, in ``ROLES`` order."""
    addresses = (cfg.listen.inbound, cfg.listen.submission)
    return [(role, split_address(address)) for role, address in zip(ROLES, addresses, strict=True)]
