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
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

from securemail.config import Config, load_config
from securemail.dns import Resolver
from securemail.errors import SecuremailError
from securemail.gateway.events import EventSink, Lifecycle, LogSink
from securemail.gateway.inbound import auth
from securemail.gateway.inbound.accept import AcceptPipeline, AcceptSettings
from securemail.gateway.inbound.limits import AuthLimiter, AuthLimits, LockoutFiles
from securemail.gateway.inbound.listeners import ROLES, Listeners, ListenSettings
from securemail.gateway.inbound.offload import Offload
from securemail.gateway.inbound.recipients import recipient_check
from securemail.gateway.inbound.server import GatewayHandler
from securemail.gateway.inbound.users import UserStore
from securemail.gateway.outbound.deliver import Deliverer
from securemail.gateway.outbound.tls_policy import TlsPolicyMap
from securemail.gateway.queue.manager import QueueManager, Schedule
from securemail.gateway.queue.notify import Notifier
from securemail.gateway.spool import open_spool, spool_path
from securemail.loaders import classifier_from_config, policy_from_config
from securemail.mech.dkim import load_keys
from securemail.privileges import describe_uid
from securemail.tls import (
    opportunistic_client_context,
    pinned_client_context,
    server_context,
    verified_client_context,
)

log = logging.getLogger("securemail.gateway")


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        today: Callable[[], date] = date.today,
        events: EventSink | None = None,
        listeners: Listeners | None = None,
    ) -> None:
        """Wire the stages; reads the TLS key, DKIM keys and accredited list (so, under
        ``serve``, after the switch to the service user). ``listeners``: those
        ``bind_listeners`` bound, else new ones that ``start`` binds."""
        cfg = self.config = config
        self.clock = clock
        self.events = events or LogSink()
        self.own_domains = frozenset(cfg.organisation.domains)
        self.classifier = classifier_from_config(
            cfg,
            clock=today,
            on_missing=lambda path: self.events.emit(
                Lifecycle(f"accredited list {path} not found; not used", warning=True)
            ),
        )
        self.policy = policy_from_config(cfg)
        self.spool = open_spool(cfg.spool.url, base=_base(cfg))
        self.resolver = Resolver.from_config(cfg.dns)
        self.keys = load_keys(cfg.dkim.key_dir, cfg.dkim.selector, sorted(self.own_domains))
        self.users = UserStore(cfg.relay.users_file, cfg.organisation.domains)
        self.tls = server_context(cfg.tls.cert, cfg.tls.key, cfg.tls.min_version)
        self.offload = Offload(cfg.listen.cpu_budget)
        self.pipeline = AcceptPipeline(
            AcceptSettings(
                hostname=cfg.organisation.hostname,
                verify_inbound=cfg.auth.verify,
                arc_seal=cfg.auth.arc_seal,
                dkim_sign=cfg.dkim.sign,
                seal_domain=cfg.organisation.domains[0] if cfg.organisation.domains else "",
                quarantine_to=cfg.auth.quarantine_to or "",
                relay_networks=tuple(cfg.relay.networks),
            ),
            classify=self.classifier.classify,
            policy=self.policy,
            auth_policy=auth.AuthPolicy(
                enforce_dmarc=cfg.auth.enforce_dmarc,
                secure_senders_must_pass=cfg.auth.secure_senders_must_pass,
            ),
            resolver=self.resolver,
            spool=self.spool,
            keys=self.keys,
            events=self.events,
            clock=clock,
            senders=self.users.owned,
            stored=lambda: self.queue.wake(),
            offload=self.offload,
        )
        notifier = Notifier(
            hostname=cfg.organisation.hostname,
            classify=self.classifier.classify,
            submit=self.pipeline.accept,
            events=self.events,
        )
        self.pipeline.on_held = notifier.held_notice
        host, port = _split(cfg.inbound.deliver_to)
        self.deliverer = Deliverer(
            self.resolver,
            helo=cfg.organisation.hostname,
            port=cfg.delivery.port,
            verified=verified_client_context(cfg.tls.ca_file),
            pinned=pinned_client_context(cfg.tls.ca_file),
            opportunistic=opportunistic_client_context(),
            internal=dict.fromkeys(self.own_domains, (host, port)),
            tls_policy=TlsPolicyMap.parse(cfg.delivery.tls_policy),
            events=self.events,
        )
        self.queue = QueueManager(
            self.spool,
            self.deliverer,
            bounce=notifier.bounce,
            delay_notice=notifier.delay_notice,
            schedule=Schedule(
                retry_base=cfg.delivery.retry_base,
                retry_max=cfg.delivery.retry_max,
                max_lifetime=cfg.delivery.max_lifetime,
                tls_notify_after=cfg.delivery.tls_failure_notify_after,
            ),
            concurrency=cfg.delivery.concurrency,
            per_destination=cfg.delivery.per_destination,
            clock=clock,
            events=self.events,
        )
        self.listeners = listeners or Listeners(_listen_settings(cfg))
        self._queue_task: asyncio.Task[None] | None = None

    def reload(self) -> None:
        """SIGHUP: re-read the configuration's decision inputs without dropping sessions.

        What takes effect now: the accredited list and the local policy domain lists (the
        classifier every listener and the queue read), so a list imported while the
        gateway runs is used at once; the users file is re-read on change anyway. An
        invalid new configuration is refused with a log line and the running one kept.
        Other settings (listeners, TLS, DKIM keys, delivery) still need a restart, and
        the log says so.
        """
        try:
            cfg = load_config(self.config.source)
            fresh = classifier_from_config(cfg, clock=self.classifier.clock)
        except SecuremailError as exc:
            self.events.emit(Lifecycle(f"reload refused: {exc}; keeping the running "
                                       "configuration", warning=True))  # fmt: skip
            return
        self.classifier.replace_lists(fresh)
        listed = len(fresh.accredited.entries) if fresh.accredited is not None else 0
        self.events.emit(
            Lifecycle(
                f"reloaded {cfg.source}: accredited list ({listed} entries) and local "
                "policy domains in force; other changes need a restart"
            )
        )

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        """role → the (host, port) each listener is bound to."""
        return self.listeners.addresses

    async def start(self) -> None:
        """Say what this gateway runs with, open the spool, start the queue, accept mail."""
        for fact, warning in self.startup_facts():
            self.events.emit(Lifecycle(fact, warning=warning))
        await self._open_spool()
        self._queue_task = asyncio.ensure_future(self.queue.run())
        await self._accept()
        listening = ", ".join(
            f"{role} {host}:{port}" for role, (host, port) in self.addresses.items()
        )
        self.events.emit(
            Lifecycle(f"listening on {listening}; running as {describe_uid(os.geteuid())}")
        )

    async def _open_spool(self) -> None:
        """Open the spool; deliveries a previous process left ``delivering`` are retried."""
        await self.spool.open()
        if self.spool.recovered:
            self.events.emit(
                Lifecycle(
                    f"recovered {self.spool.recovered} interrupted deliveries; retrying",
                    warning=True,
                )
            )

    async def _accept(self) -> None:
        """Both listeners accept connections, each with its role's SMTP handler."""
        cfg = self.config
        limiter = AuthLimiter(
            AuthLimits(
                per_login=cfg.relay.auth_failures_per_login,
                per_client=cfg.relay.auth_failures_per_client,
                window=cfg.relay.auth_failure_window,
            ),
            files=LockoutFiles(cfg.relay.users_file),
            events=self.events,
        )
        recipients = recipient_check(
            cfg.inbound.recipients,
            base=_base(cfg),
            deliver_to=_split(cfg.inbound.deliver_to),
            helo=cfg.organisation.hostname,
        )
        for role, (host, port) in _listen_addresses(cfg):
            handler = GatewayHandler(
                role,
                classify=self.classifier.classify,
                accept=self.pipeline.accept,
                own_domains=self.own_domains,
                relay_networks=cfg.relay.networks if role == "inbound" else (),
                authenticate=self.users.verify if role == "submission" else None,
                max_recipients=cfg.listen.max_recipients,
                limiter=limiter,
                events=self.events,
                recipients=recipients,
                senders=self.users.owned,
                postmaster_domain=cfg.organisation.domains[0] if cfg.organisation.domains else "",
            )
            await self.listeners.bind(role, host, port)  # unless bind_listeners did
            await self.listeners.serve(role, handler, self.tls)

    def startup_facts(self) -> list[tuple[str, bool]]:
        """What this gateway runs with, as (fact, warning) for the start-up log: which
        file, spool, certificate, keys, list and policy, so "which config did it load?"
        is answered by the log rather than by guessing after an incident."""
        cfg = self.config
        facts = [
            (f"config {cfg.source or '(built-in defaults)'}", False),
            (f"spool {spool_path(cfg.spool.url, base=_base(cfg))}", False),
            _certificate_fact(cfg.tls.cert, self.clock()),
        ]
        signing = ", ".join(f"{k.domain} selector {k.selector}" for k in self.keys.values())
        unsigned = sorted(self.own_domains - self.keys.keys())
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
        return facts

    async def stop(self, grace: float = 30.0) -> None:
        deadline = await self.listeners.stop(grace)
        await self.queue.stop(max(deadline - time.monotonic(), 1.0))
        if self._queue_task is not None:
            self._queue_task.cancel()
            await asyncio.gather(self._queue_task, return_exceptions=True)
        await self.offload.close()
        await self.spool.close()
        self.events.emit(Lifecycle("stopped"))


def _certificate_fact(path: Path, now: float) -> tuple[str, bool]:
    """The served certificate's subject and expiry; a warning once it has expired."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(path.read_bytes())  # the leaf: first in file
    expires = cert.not_valid_after_utc
    expired = expires.timestamp() < now
    return (
        f"certificate {path}: {cert.subject.rfc4514_string()}, "
        f"{'EXPIRED' if expired else 'expires'} {expires.isoformat()}",
        expired,
    )


async def bind_listeners(config: Config) -> Listeners:
    """Both listening sockets, bound but not accepting: the step that may need root.

    Raises ``OSError`` (address in use, permission) with nothing left bound.
    """
    listeners = Listeners(_listen_settings(config))
    try:
        for role, (host, port) in _listen_addresses(config):
            await listeners.bind(role, host, port)
    except OSError:
        await listeners.stop(0)
        raise
    return listeners


def _listen_settings(cfg: Config) -> ListenSettings:
    return ListenSettings(
        hostname=cfg.organisation.hostname,
        max_message_size=cfg.listen.max_message_size,
        timeout=cfg.listen.timeout,
        max_connections=cfg.listen.max_connections,
        max_connections_per_ip=cfg.listen.max_connections_per_ip,
        max_data_in_flight=cfg.listen.data_in_flight,
        greet_pause=cfg.listen.greet_pause,
        trusted_networks=tuple(cfg.relay.networks),
    )


def _listen_addresses(cfg: Config) -> list[tuple[str, tuple[str, int]]]:
    """(role, (host, port)) for each listener, in ``ROLES`` order."""
    addresses = (cfg.listen.inbound, cfg.listen.submission)
    return [(role, _split(address)) for role, address in zip(ROLES, addresses, strict=True)]


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _base(config: Config) -> Path | None:
    return config.source.resolve().parent if config.source else None
