"""What stands between a browser and the pages: CSRF tokens, rate limits, body bounds
and the headers every response carries.

**CSRF.** Every form carries a token that is an HMAC (app secret, per process) over
its purpose and what it is bound to: before a session, a random per-browser cookie
(``__Host-sm_pre``); after, the session id. A token from another browser, another
session or another form is worth nothing, and a cross-site POST cannot read one. The
cookies are ``SameSite=Strict`` too, so this is the second of two locks.

**Rate limits** per client address (``WebLimits``, applied with the core's
``securemail.portal.limits.ClientLimiter``): passcodes cost an email each, and verify
attempts are guesses. The per-link counts (passcodes sent, wrong tries, the lock) are
the core's alone, kept in its database, so a restart or a second listener cannot reset
them.

**Bounds.** A request body larger than the limit is refused with ``413`` before it is
read, or as soon as a body with no length passes it; nothing is buffered past it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class Csrf:
    """Form tokens bound to a purpose and a browser or session (module docstring)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def token(self, purpose: str, binding: str) -> str:
        message = f"{purpose}\x00{binding}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def valid(self, purpose: str, binding: str, given: str) -> bool:
        return bool(binding and given) and hmac.compare_digest(self.token(purpose, binding), given)


@dataclass(frozen=True, slots=True)
class WebLimits:
    """The web layer's bounds; the core has its own (passcodes per link, passcode life,
    tries, the lock)."""

    passcodes_per_client: int = 10
    verifies_per_client: int = 20
    window: float = 900.0
    """Seconds over which the two per-client counts above are kept."""
    max_body: int = 25 * 1024 * 1024
    """Bytes in one request body: the reply's text and attachments together."""
    max_attachments: int = 10
    max_reply_chars: int = 100_000


class Guard:
    """ASGI middleware: the security headers on every response, and the body bound."""

    def __init__(self, app: ASGIApp, *, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {name for name, _ in SECURITY_HEADERS}
                headers = [h for h in message.get("headers", []) if h[0].lower() not in names]
                message = {**message, "headers": [*headers, *SECURITY_HEADERS]}
            await send(message)

        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _too_large(send_with_headers)
            return
        seen = 0

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise _TooLarge
            return message

        try:
            await self.app(scope, bounded_receive, send_with_headers)
        except _TooLarge:
            if not started:
                await _too_large(send_with_headers)


class _TooLarge(Exception):
    pass


async def _too_large(send: Send) -> None:
    body = b"Request too large.\n"
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
