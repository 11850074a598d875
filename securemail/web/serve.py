"""The portal's HTTPS listener, run by ``securemail serve`` on the gateway's event loop.

Why uvicorn's programmatic ``Server`` rather than hypercorn or a second process: it
runs on the loop the gateway already has (one process, one shutdown), takes the
gateway's own ``ssl.SSLContext`` through ``ssl_context_factory`` (one certificate set,
the same hardening as the SMTP listeners; ``tls.FollowingContext`` so a reload's new
certificate is served here too), and stops on ``should_exit`` with a bounded
grace for requests in flight. The one change made to it: it must not take SIGTERM and
SIGINT for itself (``capture_signals``), since ``serve`` owns them and stops the portal
with the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI

from securemail.errors import InputError
from securemail.tls import FollowingContext


@dataclass(frozen=True, slots=True)
class PortalListen:
    host: str
    port: int
    base_url: str


def portal_listen(listen: str, base_url: str) -> PortalListen:
    """``[portal] listen`` ("host:port", "[v6]:port") and ``base_url`` (an https URL
    with no path beyond "/"), checked; ``InputError`` names the key that is wrong."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"portal.listen: expected host:port, got {listen!r}")
    url = urlsplit(base_url)
    if url.scheme != "https" or not url.hostname or url.path not in ("", "/") or url.query:
        raise InputError(f"portal.base_url: expected https://host[:port], got {base_url!r}")
    return PortalListen(host, int(port), base_url.rstrip("/"))


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # ``securemail serve`` owns the signals and calls ``stop``


class PortalWeb:
    """A started portal listener: ``port`` (the bound one), ``await stop()``."""

    def __init__(
        self, server: uvicorn.Server, task: asyncio.Task[None], tls: FollowingContext
    ) -> None:
        self._server = server
        self._task = task
        self._tls = tls

    def use_tls(self, tls: ssl.SSLContext) -> None:
        """A reload: connections from now on get ``tls``'s certificate."""
        self._tls.use(tls)

    @property
    def port(self) -> int:
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return 0

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, give requests in flight ``grace`` seconds, then close."""
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._server.force_exit = True
            await asyncio.gather(self._task, return_exceptions=True)


def bind_portal(listen: PortalListen) -> socket.socket:
    """The listening socket, bound but not yet accepting: the step that may need root,
    so ``serve`` can take it before giving root up (as ``bind_listeners`` does for SMTP).
    Raises ``OSError`` (address in use, permission)."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    return socket.create_server((listen.host, listen.port), family=family, backlog=128)


async def start_portal_web(
    app: FastAPI, listen: PortalListen, tls: ssl.SSLContext, *, sock: socket.socket | None = None
) -> PortalWeb:
    """Serve ``app`` on ``sock`` (default: ``bind_portal(listen)`` now) over HTTPS with
    ``tls``, the gateway's server context (``gateway.live.tls``); returns once it
    accepts. The integrator calls it from ``securemail serve`` after ``gateway.start()``
    and ``await portal.stop()`` before ``gateway.stop()``."""
    sock = sock or bind_portal(listen)
    following = FollowingContext(tls)
    config = uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        ssl_context_factory=lambda _config, _default: following.context,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    server = _Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():  # startup failed; uvicorn has logged why
            sock.close()
            raise InputError(f"cannot serve the portal on {listen.host}:{listen.port}")
        await asyncio.sleep(0.01)
    return PortalWeb(server, task, following)
