"""The listeners: aiosmtpd protocol objects on our own event loop, with thin hooks.

Each hook copies what aiosmtpd collected into our records, asks pure code (classify,
policy) what to do, and maps the answer to an SMTP reply. Two roles:

* ``inbound`` (MX): mail for our own domains, relayed to the internal server; any
  other destination is refused (``554 5.7.1``) unless the client is in
  ``[relay] networks``. STARTTLS offered.
* ``submission``: STARTTLS required before AUTH (PLAIN/LOGIN, argon2 hashes); an
  authenticated user may send anywhere, subject to policy, but only as an address the
  user owns (``core.senders``: MAIL FROM here, the header From at end of DATA). Failed
  AUTH is limited per (client, login) and per client (``limits.AuthLimiter``).

aiosmtpd ≥ 1.4.6 only ends DATA at ``CRLF.CRLF`` (CVE-2024-27305), so ``\\n.\\n`` cannot
end a message here. Bare CR/LF inside the content are normalised to CRLF before the
message is stored, and the client dot-stuffs on the way out, so nothing we relay can
end a message early at the next hop either.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from securemail.core import replies
from securemail.core.addresses import AddressError, parse_address
from securemail.core.classify import Classification
from securemail.core.replies import SmtpReply
from securemail.core.senders import OwnedAddresses, mail_from_refusal
from securemail.gateway.events import (
    EventSink,
    LogSink,
    RcptRefused,
    Refused,
    RelayDenied,
    SessionAuth,
)
from securemail.gateway.inbound.limits import AuthLimiter
from securemail.gateway.inbound.recipients import AnyRecipient, RecipientCheck

log = logging.getLogger("securemail.smtp")

MAX_RECIPIENTS = 100
_BARE_NEWLINE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@dataclass(slots=True)
class Transaction:
    """One message as received, handed to the gateway's ``accept`` callback."""

    role: str
    peer: str
    helo: str
    auth_user: str
    tls: str  # "TLSv1.3 TLS_AES_256_GCM_SHA384" or ""
    sender: str
    recipients: list[tuple[str, Classification]]
    data: bytes


Accept = Callable[[Transaction], Awaitable[SmtpReply]]
Classify = Callable[[str], Classification]
Authenticate = Callable[[str, str], Awaitable[bool]]
Senders = Callable[[str], OwnedAddresses]  # login -> the addresses that user may send as


class _PendingAuth:
    """aiosmtpd parsed the credentials; verification is still to be awaited."""

    def __init__(self, login: bytes, password: bytes) -> None:
        self.login, self.password = login, password


class GatewaySMTP(SMTP):
    """aiosmtpd's protocol with asynchronous credential checks.

    aiosmtpd calls its authenticator synchronously, which would run an argon2
    verification (tens of milliseconds of CPU) on the event loop. Its own PLAIN/LOGIN
    parsing is kept; only the final check is deferred to ``authenticate`` (in a thread).
    """

    def __init__(self, handler: GatewayHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.gateway_handler = handler
        self.on_close: Callable[[GatewaySMTP], None] | None = None

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self.on_close is not None:
            self.on_close(self)

    @property
    def in_transaction(self) -> bool:
        """Between MAIL FROM and the reply to DATA: shutting down now would lose work."""
        return self.envelope is not None and self.envelope.mail_from is not None

    def close_idle(self) -> None:
        """Tell an idle client we are going away (RFC 5321 §3.8), then close."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"{replies.SHUTTING_DOWN}\r\n".encode())
            self.transport.close()

    def _authenticate(self, mechanism: str, auth_data: Any) -> Any:
        assert isinstance(auth_data, LoginPassword)
        return _PendingAuth(auth_data.login, auth_data.password)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._finish(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._finish(await super().auth_LOGIN(_, args))

    async def _finish(self, result: object) -> AuthResult:
        if not isinstance(result, _PendingAuth):
            assert isinstance(result, AuthResult)
            return result
        assert self.session is not None
        return await self.gateway_handler.check_credentials(
            self.session, result.login, result.password
        )


class GatewayHandler:
    """aiosmtpd hooks for one listener role."""

    def __init__(
        self,
        role: str,
        *,
        classify: Classify,
        accept: Accept,
        own_domains: Sequence[str],
        relay_networks: Sequence[str] = (),
        authenticate: Authenticate | None = None,
        max_recipients: int = MAX_RECIPIENTS,
        limiter: AuthLimiter | None = None,
        events: EventSink | None = None,
        recipients: RecipientCheck | None = None,
        senders: Senders | None = None,
    ) -> None:
        self.role = role
        self.classify = classify
        self.accept = accept
        self.own_domains = frozenset(own_domains)
        self.relay_networks = [ipaddress.ip_network(n) for n in relay_networks]
        self.authenticate = authenticate
        self.max_recipients = max_recipients
        self.limiter = limiter or AuthLimiter()
        self.events = events or LogSink()
        self.recipients = recipients or AnyRecipient()
        self.senders = senders or (lambda user: OwnedAddresses(user, frozenset()))

    async def check_credentials(
        self, session: Session, login: bytes, password: bytes
    ) -> AuthResult:
        ip = _peer_ip(session)
        if self.authenticate is None:
            return AuthResult(success=False, handled=False)
        user = login.decode("utf-8", "replace")
        # The slot is taken before the (slow, awaited) verification: parallel tries
        # cannot all pass a count that only a finished failure would raise.
        ticket = self.limiter.reserve(ip, user)
        if ticket is None:
            self.events.emit(SessionAuth(user, ip, "refused (rate limit)"))
            await self.limiter.publish()
            return AuthResult(success=False, handled=False, message=str(replies.AUTH_RATE_LIMITED))
        try:
            ok = await self.authenticate(user, password.decode("utf-8", "replace"))
        except BaseException:  # an unreadable users file, a client gone: no verdict
            self.limiter.release(ticket)
            raise
        if ok:
            self.limiter.succeeded(ticket)
            self.events.emit(SessionAuth(user, ip, "ok"))
            await self.limiter.publish()
            return AuthResult(success=True, handled=False, auth_data=LoginPassword(login, b""))
        self.limiter.failed(ticket)
        self.events.emit(SessionAuth(user, ip, "failed"))
        await self.limiter.publish()
        await asyncio.sleep(0.5)  # slow down guessing on this connection
        return AuthResult(success=False, handled=False)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        # The null sender stays "<>" in the envelope: aiosmtpd reads an empty mail_from
        # as "no MAIL command yet". handle_DATA turns it into "".
        if address in ("", "<>"):
            if self.role == "submission":
                return str(replies.NULL_SENDER_REFUSED)
            address = "<>"
        else:
            try:
                sender = parse_address(address)
            except AddressError as exc:
                return str(replies.bad_sender(str(exc)))
            if self.role == "submission":
                refused = mail_from_refusal(self.senders(_auth_user(session)), sender)
                if refused is not None:
                    self.events.emit(Refused(address, _peer_ip(session), str(refused),
                                             refused.log, refused.check))  # fmt: skip
                    return str(refused)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return str(replies.MAIL_OK)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS)
        if options:
            return str(replies.RCPT_PARAMETERS)
        classification = self.classify(address)
        if not classification.domain:
            return str(replies.bad_recipient(classification.reason))
        if self.role == "inbound" and not self._may_relay(session, classification.domain):
            self.events.emit(RelayDenied(_peer_ip(session), classification.address))
            return str(replies.RELAY_DENIED)
        if classification.domain in self.own_domains:
            refused = await self.recipients.check(_addr_spec(classification.address))
            if refused is not None:
                self.events.emit(RcptRefused(_peer_ip(session), classification.address,
                                             str(refused), refused.log))  # fmt: skip
                return str(refused)
        envelope.rcpt_tos.append(address)
        _classifications(envelope)[address] = classification
        return str(replies.RCPT_OK)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        data = _BARE_NEWLINE.sub(b"\r\n", raw) if b"\n" in raw or b"\r" in raw else raw
        classifications = _classifications(envelope)
        transaction = Transaction(
            role=self.role,
            peer=f"{_peer_ip(session)}",
            helo=session.host_name or "",
            auth_user=_auth_user(session),
            tls=_tls_summary(server),
            sender="" if envelope.mail_from == "<>" else envelope.mail_from or "",
            recipients=[(r, classifications[r]) for r in envelope.rcpt_tos],
            data=data,
        )
        return str(await self.accept(transaction))

    def _may_relay(self, session: Session, domain: str) -> bool:
        if domain in self.own_domains:
            return True
        ip = ipaddress.ip_address(_peer_ip(session))
        return any(ip in network for network in self.relay_networks)


def _addr_spec(address: str) -> str:
    return parse_address(address).addr_spec


def _classifications(envelope: Envelope) -> dict[str, Classification]:
    found: dict[str, Classification] | None = getattr(envelope, "securemail_rcpts", None)
    if found is None:
        found = {}
        envelope.securemail_rcpts = found  # type: ignore[attr-defined]
    return found


def _auth_user(session: Session) -> str:
    data = session.auth_data if session.authenticated else None
    return data.login.decode("utf-8", "replace") if isinstance(data, LoginPassword) else ""


def _peer_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def _tls_summary(server: SMTP) -> str:
    transport = server.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return ""
    return f"{ssl_object.version()} {ssl_object.cipher()[0]}"


def received_header(t: Transaction, hostname: str, queue_id: str, now: float) -> bytes:
    """RFC 5321 §4.4 trace header, with TLS details as Postfix writes them."""
    protocol = "ESMTP"
    if t.tls:
        protocol += "S"
    if t.auth_user:
        protocol += "A"
    tls = f" ({t.tls.replace(' ', ' with cipher ')})" if t.tls else ""
    helo = re.sub(r"[^\x21-\x7e]", "?", t.helo)[:255]
    single = f" for <{t.recipients[0][0]}>" if len(t.recipients) == 1 else ""
    return (
        f"Received: from {helo} ([{t.peer}])\r\n\tby {hostname} (securemail) with {protocol}{tls}"
        f"\r\n\tid {queue_id}{single};\r\n\t{formatdate(now, localtime=False)}\r\n"
    ).encode()
