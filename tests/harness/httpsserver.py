"""A small HTTPS server on loopback, for tests that fetch over real TLS (MTA-STS policies).

``http.server`` in a background thread; each connection's TLS handshake happens in its
own handler thread, so a client that rejects the certificate (or stalls) never blocks
the others, and failed handshakes are recorded rather than printed. Paths map to
``Route``s (status, content type, body, optional redirect, optional delay, optional
close-delimited body with no Content-Length). The port is chosen by the OS.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Route:
    status: int = 200
    content_type: str = "text/plain"
    body: bytes | str = b""
    location: str = ""  # sent as Location (for redirects)
    delay: float = 0.0  # seconds to wait before answering (cut short by stop())
    content_length: bool = True  # False: no Content-Length, body ends when the connection does


class HttpsServer:
    """``with HttpsServer(ctx, {"/path": Route(...)}) as srv: srv.url``; see module docstring."""

    host = "127.0.0.1"

    def __init__(self, context: ssl.SSLContext, routes: dict[str, Route] | None = None) -> None:
        self.context = context
        self.routes: dict[str, Route] = dict(routes or {})
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.sni: list[str | None] = []  # server names clients sent in their TLS hello
        self.tls_errors: list[str] = []
        self.port = 0
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        context.sni_callback = self._on_sni

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def _on_sni(self, _sock: ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.sni.append(name)

    def start(self) -> HttpsServer:
        if self._thread is not None:
            raise RuntimeError("HTTPS server already started")
        self._httpd = _Server((self.host, 0), _Handler, owner=self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._stopping.set()  # wake handlers sleeping in a delay
        httpd.shutdown()
        httpd.server_close()
        thread.join(STOP_TIMEOUT)
        self._httpd = self._thread = None
        if thread.is_alive():
            raise RuntimeError(f"HTTPS server thread did not stop within {STOP_TIMEOUT} s")

    def __enter__(self) -> HttpsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: Any, *, owner: HttpsServer) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's own thread: do the TLS handshake here, then HTTP."""
        request.settimeout(STOP_TIMEOUT)
        try:
            tls = self.owner.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.owner.tls_errors.append(str(exc))
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def shutdown_request(self, request: socket.socket) -> None:
        with contextlib.suppress(OSError):
            request.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-response are expected in these tests


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection; close ends the body

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.requests.append((self.path, self.headers.get("Host", "")))
        route = owner.routes.get(self.path.split("?")[0])
        if route is None:
            route = Route(404, "text/plain", b"not found\n")
        if route.delay and owner._stopping.wait(route.delay):
            return
        body = route.body.encode() if isinstance(route.body, str) else route.body
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        if route.location:
            self.send_header("Location", route.location)
        if route.content_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
