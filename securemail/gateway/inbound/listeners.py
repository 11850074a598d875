"""The listening sockets: one aiosmtpd protocol per connection, per role, and a clean stop.

Two roles share one accept pipeline: ``inbound`` (MX; STARTTLS offered) and
``submission`` (STARTTLS then AUTH required). Stopping closes the sockets first, lets
sessions in the middle of a transaction finish for ``grace`` seconds, and tells idle
clients ``421`` (RFC 5321 §3.8), so a SIGTERM never cuts a message half received.

What every connection shares is bounded here, once for both roles: connections open
(in total and per client address) and DATA bytes in flight (``limits``). Each connection
is made with the settings and TLS context current when it arrives (``_protocol``), which
is how a reload reaches new connections without touching open ones.

Binding and accepting are two steps: ``bind`` creates a role's socket (bound, not yet
listening: a client is refused, never queued), ``serve`` starts accepting on it. Between
them ``securemail serve`` gives up root (``privileges``), so ports below 1024 are bound
as root and every connection is served by the service user.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from dataclasses import dataclass

from securemail.gateway.inbound.capacity import (
    Admission,
    Admitted,
    ConnectionLimits,
    DataBudget,
    Pregreet,
)
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
    def __init__(self, settings: ListenSettings) -> None:
        self.settings = settings
        self.servers: dict[str, asyncio.Server] = {}  # role → its server, once bound
        self.addresses: dict[str, tuple[str, int]] = {}  # role → bound (host, port)
        self._handlers: dict[str, GatewayHandler] = {}  # role → handler, once serving
        self._tls: ssl.SSLContext | None = None  # given with the handlers, to ``serve``
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
        self.settings, self._tls = settings, tls
        self.pregreet.pause = settings.greet_pause

    async def bind(self, role: str, host: str, port: int) -> None:
        """Create ``role``'s socket on ``host:port``, bound but not accepting yet (if it
        is not bound already: ``serve`` binds before it gives up root)."""
        if role in self.servers:
            return
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: self._protocol(role), host, port, start_serving=False
        )
        self.servers[role] = server
        bound = server.sockets[0].getsockname()
        self.addresses[role] = (bound[0], bound[1])

    async def serve(self, role: str, handler: GatewayHandler, tls: ssl.SSLContext) -> None:
        """Accept connections on ``role``'s bound socket, each served by ``handler``."""
        self._handlers[role] = handler
        self._tls = tls
        await self.servers[role].start_serving()

    def detach(self, role: str) -> list[socket.socket]:
        """``role``'s bound sockets, listening, for another to accept on (``AcceptPool``):
        copies of the descriptors, so the server this holds can be closed as usual."""
        sockets = []
        for sock in self.servers[role].sockets:
            copy = socket.socket(fileno=os.dup(sock.fileno()))
            copy.listen(socket.SOMAXCONN)
            sockets.append(copy)
        return sockets

    def adopt(self, role: str, handler: GatewayHandler, tls: ssl.SSLContext) -> None:
        """Serve ``role``'s sessions handed over by the gateway process (``take``), in an
        accept worker, which binds nothing."""
        self._handlers[role] = handler
        self._tls = tls

    async def take(self, role: str, sock: socket.socket, on_close: Admitted) -> None:
        """Serve one connection the gateway process accepted and counted."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        await loop.connect_accepted_socket(lambda: self._protocol(role, on_close), sock)

    def _protocol(self, role: str, limits: Admission | None = None) -> GatewaySMTP:
        s = self.settings
        protocol = GatewaySMTP(
            self._handlers[role],
            hostname=s.hostname,
            ident="securemail",
            tls_context=self._tls,
            require_starttls=role == "submission",
            auth_required=role == "submission",
            auth_require_tls=True,
            data_size_limit=s.max_message_size,
            timeout=s.timeout,
            enable_SMTPUTF8=True,
            command_call_limit=1000,
            limits=limits or self.limits,
            budget=self.budget,
            greet_pause=self.pregreet,
        )
        protocol.on_close = self._sessions.discard
        self._sessions.add(protocol)
        return protocol

    async def stop(self, grace: float) -> float:
        """Close, drain, and return the monotonic deadline the rest of the stop may use."""
        for server in self.servers.values():
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
