"""The listening sockets: one aiosmtpd protocol per connection, per role, and a clean stop.

Two roles share one accept pipeline: ``inbound`` (MX; STARTTLS offered) and
``submission`` (STARTTLS then AUTH required). Stopping closes the sockets first, lets
sessions in the middle of a transaction finish for ``grace`` seconds, and tells idle
clients ``421`` (RFC 5321 §3.8), so a SIGTERM never cuts a message half received.

What every connection shares is bounded here, once for both roles: connections open
(in total and per client address) and DATA bytes in flight (``limits``). Each connection
is made with the settings and TLS context current when it arrives (``_protocol``), which
is how a reload reaches new connections without touching open ones.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

from securemail.gateway.events import EventSink, Lifecycle
from securemail.gateway.inbound.capacity import ConnectionLimits, DataBudget, Pregreet
from securemail.gateway.inbound.server import GatewayHandler, GatewaySMTP

ROLES = ("inbound", "submission")


@dataclass(frozen=True, slots=True)
class ListenSettings:
    hostname: str
    max_message_size: int
    timeout: float
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    max_data_in_flight: int = 0  # 0: four times max_message_size
    greet_pause: float = 0.0
    trusted_networks: tuple[str, ...] = ()  # no per-address connection limit


class Listeners:
    def __init__(self, settings: ListenSettings, tls: ssl.SSLContext, events: EventSink) -> None:
        self.settings = settings
        self.tls = tls
        self.events = events
        self.servers: list[asyncio.Server] = []
        self.addresses: dict[str, tuple[str, int]] = {}  # role → bound (host, port)
        self._sessions: set[GatewaySMTP] = set()
        self.limits = ConnectionLimits(
            settings.max_connections, settings.max_connections_per_ip, settings.trusted_networks
        )
        self.budget = DataBudget(settings.max_data_in_flight or 4 * settings.max_message_size)
        self.pregreet = Pregreet(settings.greet_pause, settings.trusted_networks)

    def reconfigure(self, settings: ListenSettings, tls: ssl.SSLContext) -> None:
        """A reload: each connection accepted from now on gets ``settings`` and ``tls``
        (so a new certificate is served at once, without restarting a listener); open
        sessions keep what they started with. What all connections share (connection
        counts, the DATA budget) was sized at start and stays: the reload keeps the
        settings it was sized from (``gateway.reload.RESTART_ONLY``)."""
        self.settings, self.tls = settings, tls
        self.pregreet.pause = settings.greet_pause

    async def listen(self, role: str, host: str, port: int, handler: GatewayHandler) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: self._protocol(handler, role), host, port)
        self.servers.append(server)
        bound = server.sockets[0].getsockname()
        self.addresses[role] = (bound[0], bound[1])
        self.events.emit(Lifecycle(f"listening role={role} address={bound[0]}:{bound[1]}"))

    def _protocol(self, handler: GatewayHandler, role: str) -> GatewaySMTP:
        s = self.settings
        protocol = GatewaySMTP(
            handler,
            hostname=s.hostname,
            ident="securemail",
            tls_context=self.tls,
            require_starttls=role == "submission",
            auth_required=role == "submission",
            auth_require_tls=True,
            data_size_limit=s.max_message_size,
            timeout=s.timeout,
            enable_SMTPUTF8=True,
            command_call_limit=1000,
            limits=self.limits,
            budget=self.budget,
            greet_pause=self.pregreet,
        )
        protocol.on_close = self._sessions.discard
        self._sessions.add(protocol)
        return protocol

    async def stop(self, grace: float) -> float:
        """Close, drain, and return the monotonic deadline the rest of the stop may use."""
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
        return deadline
