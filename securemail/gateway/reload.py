"""Reload without a restart: build a fresh set of stages' inputs, compare, swap.

The gateway builds what it runs with from one ``Config`` through ``build``, at start and
at every reload, so a reloaded gateway cannot be wired differently from a started one.
A reload (SIGHUP, ``securemail reload``) is all or nothing:

1. **build** everything from the file as it is now (``load_fresh``): the config and the
   files it names (``config_checks.require_files``), the classifier with the accredited
   list, policy, authentication policy and forced TLS inbound, the users file, the
   server TLS context, the DKIM keys, the delivery contexts and TLS policy map. Any
   error refuses the reload, and nothing has changed yet;
2. **compare** the settings that only a restart can change (``RESTART_ONLY``, each with
   the reason). They keep their running values in what is built, so every piece agrees
   with the listeners, spool and limits that keep running, and are named in the result;
3. **swap** (``swap``) the new pieces in: plain reference assignments, run on the event
   loop with no ``await`` between them, so no session or delivery sees half of it.

What each stage does with a swap: new connections get the new TLS context and listen
settings (open sessions keep theirs); a message being received finishes under the
``AcceptRules`` it started with; deliveries already running finish on the deliverer
they started on, which is then retired (its idle connections closed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from securemail.config import Config, load_config
from securemail.config_checks import require_files
from securemail.core.classify import Classifier
from securemail.core.inbound_tls import InboundTlsPolicy
from securemail.dns import Resolver
from securemail.gateway.control import CertFacts, InForce, ListFacts
from securemail.gateway.events import EventSink
from securemail.gateway.inbound import auth
from securemail.gateway.inbound.accept import AcceptRules, AcceptSettings
from securemail.gateway.inbound.limits import AuthLimits
from securemail.gateway.inbound.listeners import ListenSettings
from securemail.gateway.inbound.recipients import RecipientCheck, recipient_check
from securemail.gateway.inbound.users import UsersFile, read_users_file
from securemail.gateway.outbound.deliver import Deliverer
from securemail.gateway.outbound.mta_sts import StsPolicies, StsStore
from securemail.gateway.outbound.tls_policy import TlsPolicyMap
from securemail.gateway.queue.schedule import Schedule
from securemail.loaders import classifier_from_config, policy_from_config
from securemail.mech.dkim import SigningKey, load_keys
from securemail.tls import (
    opportunistic_client_context,
    pinned_client_context,
    served_certificate,
    server_context,
    verified_client_context,
)

if TYPE_CHECKING:
    from securemail.gateway.app import Gateway

# Settings a running gateway cannot take without a restart, and why. A reload keeps the
# running value and names the key ("listen.inbound changed: needs a restart").
RESTART_ONLY: Mapping[str, str] = {
    "organisation.domains": "they route mail, pick DKIM keys and ARC seals and name the "
    "postmaster in every stage at once",
    "organisation.hostname": "every greeting, Received and Authentication-Results header "
    "of one process carries the same name",
    "listen.inbound": "the socket is bound at start",
    "listen.submission": "the socket is bound at start",
    "listen.max_message_size": "the DATA budget all connections share is sized from it",
    "listen.max_connections": "open connections are counted against it since start",
    "listen.max_connections_per_ip": "open connections are counted against it since start",
    "listen.max_data_in_flight": "DATA bytes held are counted against it since start",
    "listen.cpu_budget": "the worker processes that enforce it are set up at start",
    "listen.workers": "the accept processes are started at start",
    "spool.url": "the spool is opened and locked at start",
    "spool.audit_days": "old decision history is pruned when the spool opens",
    "relay.networks": "they also exempt clients from the connection limits set up at start",
    "relay.users_file": "the AUTH lockouts kept beside it are restored at start",
    "delivery.concurrency": "the queue manager's connection slots are made at start",
    "delivery.per_destination": "the queue manager's connection slots are made at start",
    "log.format": "securemail serve installs the log handler before the gateway starts",
    "service.pid_file": "securemail reload finds the gateway through the file it wrote",
    "service.user": "the switch from root happens once, after binding; it cannot be undone",
    "service.group": "the switch from root happens once, after binding; it cannot be undone",
    "log.stderr": "securemail serve installs the log handlers before the gateway starts",
    "log.syslog": "securemail serve installs the log handlers before the gateway starts",
    "log.syslog_facility": "securemail serve installs the log handlers before the gateway starts",
    "portal.enabled": "the portal's database and key are opened at start",
    "portal.key_file": "the master key is read (and a rotation finished) when the portal opens",
    "portal.database": "the portal's database is opened at start",
    "portal.listen": "the portal's web socket is bound at start",
}

# Settings a reload puts in force at once (the rest of the configuration). ``check.*`` is
# here because the gateway never reads it: ``securemail check`` reads it on every run.
LIVE: frozenset[str] = frozenset(
    {
        "organisation.name",
        "organisation.audience",
        "listen.max_recipients",
        "listen.timeout",
        "listen.greet_pause",
        *(f"tls.{key}" for key in ("cert", "key", "ca_file", "min_version")),
        "dns.nameservers",
        "dns.timeout",
        "inbound.deliver_to",
        "inbound.recipients",
        "inbound.require_tls_from",
        *(f"relay.{key}" for key in ("auth_failures_per_login", "auth_failures_per_client")),
        "relay.auth_failure_window",
        *(
            f"delivery.{key}"
            for key in (
                "port",
                "tls_failure_notify_after",
                "retry_base",
                "retry_max",
                "max_lifetime",
                "tls_policy",
                "https_port",
            )
        ),
        *(f"dkim.{key}" for key in ("key_dir", "selector", "sign")),
        *(
            f"auth.{key}"
            for key in ("verify", "enforce_dmarc", "secure_senders_must_pass", "quarantine_to")
        ),
        "auth.arc_seal",
        *(f"check.{key}" for key in ("smtp_port", "https_port", "selectors", "concurrency")),
        "check.timeout",
        *(
            f"portal.{key}"
            for key in (
                "retention_days",
                "base_url",
                "passcode_minutes",
                "max_tries",
                "session_minutes",
            )
        ),
        *(
            f"policy.{key}"
            for key in (
                "accredited_list",
                "secure_domains",
                "deny_domains",
                "unknown_sensitive_action",
                "unscannable",
            )
        ),
    }
)


@dataclass(frozen=True, slots=True)
class Pieces:
    """Everything the gateway takes from a ``Config`` that a reload can replace."""

    config: Config
    classifier: Classifier
    rules: AcceptRules
    keys: Mapping[str, SigningKey]
    users: UsersFile
    tls: ssl.SSLContext
    listen: ListenSettings
    recipients: RecipientCheck
    max_recipients: int
    auth_limits: AuthLimits
    deliverer: Deliverer
    schedule: Schedule
    in_force: InForce
    notes: tuple[str, ...]  # worth a warning in the log (a configured list not there yet)


@dataclass(frozen=True, slots=True)
class Fresh:
    """A reload's build: the pieces, what waits for a restart, the files' warnings."""

    pieces: Pieces
    restart_needed: tuple[str, ...]
    warnings: tuple[str, ...]


def build(
    config: Config,
    *,
    today: Callable[[], date],
    events: EventSink,
    sts_store: StsStore | None = None,
) -> Pieces:
    """Every piece ``config`` describes; raises (``SecuremailError`` mostly) if any
    cannot be built. Blocking file reads: a reload runs it in a thread. ``sts_store``
    keeps MTA-STS policies (the gateway's spool, which a reload does not replace)."""
    notes: list[str] = []
    classifier = classifier_from_config(
        config,
        clock=today,
        on_missing=lambda path: notes.append(f"accredited list {path} not found; not used"),
    )
    org = config.organisation
    own = sorted(set(org.domains))
    keys = load_keys(config.dkim.key_dir, config.dkim.selector, own)
    resolver = Resolver.from_config(config.dns)
    rules = AcceptRules(
        AcceptSettings(
            hostname=org.hostname,
            verify_inbound=config.auth.verify,
            arc_seal=config.auth.arc_seal,
            dkim_sign=config.dkim.sign,
            seal_domain=org.domains[0] if org.domains else "",
            quarantine_to=config.auth.quarantine_to or "",
            relay_networks=tuple(config.relay.networks),
        ),
        policy=policy_from_config(config),
        auth_policy=auth.AuthPolicy(
            enforce_dmarc=config.auth.enforce_dmarc,
            secure_senders_must_pass=config.auth.secure_senders_must_pass,
        ),
        resolver=resolver,
        keys=keys,
        inbound_tls=InboundTlsPolicy.of(config.inbound.require_tls_from, own),
    )
    ca_file = config.tls.ca_file
    deliver_to = split_address(config.inbound.deliver_to)
    listen = config.listen
    delivery = config.delivery
    return Pieces(
        config=config,
        classifier=classifier,
        rules=rules,
        keys=keys,
        users=read_users_file(config.relay.users_file),
        tls=server_context(config.tls.cert, config.tls.key, config.tls.min_version),
        listen=listen_settings(config),
        recipients=recipient_check(
            config.inbound.recipients,
            base=config_base(config),
            deliver_to=deliver_to,
            helo=org.hostname,
        ),
        max_recipients=listen.max_recipients,
        auth_limits=AuthLimits(
            per_login=config.relay.auth_failures_per_login,
            per_client=config.relay.auth_failures_per_client,
            window=config.relay.auth_failure_window,
        ),
        deliverer=Deliverer(
            resolver,
            helo=org.hostname,
            port=delivery.port,
            verified=verified_client_context(ca_file),
            pinned=pinned_client_context(ca_file),
            opportunistic=opportunistic_client_context(),
            internal=dict.fromkeys(own, deliver_to),
            tls_policy=TlsPolicyMap.parse(delivery.tls_policy),
            sts=StsPolicies(
                resolver,
                store=sts_store,
                https_port=delivery.https_port,
                ca_file=ca_file,
                events=events,
            ),
            events=events,
        ),
        schedule=Schedule(
            retry_base=delivery.retry_base,
            retry_max=delivery.retry_max,
            max_lifetime=delivery.max_lifetime,
            tls_notify_after=delivery.tls_failure_notify_after,
        ),
        in_force=in_force(config, classifier, keys),
        notes=tuple(notes),
    )


def load_fresh(
    running: Config,
    *,
    today: Callable[[], date],
    events: EventSink,
    sts_store: StsStore | None = None,
) -> Fresh:
    """Read the running configuration's file again and build from it (step 1 and 2)."""
    new = load_config(running.source)
    changed = restart_needed(running, new)
    effective = keep_running(new, running, changed)
    warnings = tuple(str(finding) for finding in require_files(effective))  # errors raise
    built = build(effective, today=today, events=events, sts_store=sts_store)
    return Fresh(built, changed, warnings)


def restart_needed(running: Config, new: Config) -> tuple[str, ...]:
    """The ``RESTART_ONLY`` keys whose value differs, in table order."""
    return tuple(key for key in RESTART_ONLY if _value(running, key) != _value(new, key))


def keep_running(new: Config, running: Config, keys: tuple[str, ...]) -> Config:
    """``new`` with ``keys`` set back to their running values: what a reload applies."""
    sections: dict[str, dict[str, object]] = {}
    for key in keys:
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = _value(running, key)
    return dataclasses.replace(
        new,
        **{
            section: dataclasses.replace(getattr(new, section), **values)
            for section, values in sections.items()
        },
    )


def _value(config: Config, key: str) -> object:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def swap(gateway: Gateway, pieces: Pieces) -> Deliverer:
    """Step 3: put ``pieces`` in force. Synchronous, on the event loop, so it is atomic
    for every session and delivery. Returns the retired deliverer, for the caller to
    close once (its deliveries in flight keep it until they finish)."""
    gateway.live = pieces
    gateway.config = pieces.config
    gateway.classifier = pieces.classifier
    gateway.pipeline.rules = pieces.rules
    gateway.users.adopt(pieces.users)
    gateway.listeners.reconfigure(pieces.listen, pieces.tls)
    if gateway.web is not None:
        gateway.web.use_tls(pieces.tls)
    for handler in gateway.handlers:
        handler.max_recipients = pieces.max_recipients
        handler.recipients = pieces.recipients
    if gateway.limiter is not None:
        gateway.limiter.limits = pieces.auth_limits
    gateway.queue.schedule = pieces.schedule
    retired, gateway.queue.deliverer = gateway.queue.deliverer, pieces.deliverer
    return retired


def in_force(config: Config, classifier: Classifier, keys: Mapping[str, SigningKey]) -> InForce:
    """The facts the state file reports: which list (with its digest), certificate, keys."""
    listed, path = classifier.accredited, config.policy.accredited_list
    list_facts = None
    if listed is not None and path is not None:
        list_facts = ListFacts(
            path=str(path),
            entries=len(listed.entries),
            date=listed.list_date.isoformat() if listed.list_date else None,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        )
    cert = served_certificate(config.tls.cert)
    return InForce(
        accredited=list_facts,
        certificate=CertFacts(
            path=str(cert.path),
            subject=cert.subject,
            serial=f"{cert.serial:X}",
            expires=cert.expires.isoformat(),
        ),
        dkim=tuple(f"{k.domain} selector {k.selector}" for k in keys.values()),
    )


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (validated at load) → (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def config_base(config: Config) -> Path | None:
    """Where relative paths in the file are anchored (None: built-in defaults)."""
    return config.source.resolve().parent if config.source else None


def listen_settings(config: Config) -> ListenSettings:
    """What each new connection is made with (``Listeners``), from ``[listen]``."""
    listen = config.listen
    return ListenSettings(
        hostname=config.organisation.hostname,
        max_message_size=listen.max_message_size,
        timeout=listen.timeout,
        max_connections=listen.max_connections,
        max_connections_per_ip=listen.max_connections_per_ip,
        max_data_in_flight=listen.data_in_flight,
        greet_pause=listen.greet_pause,
        trusted_networks=tuple(config.relay.networks),
    )
