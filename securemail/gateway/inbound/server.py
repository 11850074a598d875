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

On both, a session without TLS may not carry mail from a domain that must use it
(``core.inbound_tls``: secure domains, ``[inbound] require_tls_from``): ``MAIL FROM``
such a sender gets ``530 5.7.0`` here, and the header From is judged the same way at end
of DATA (``accept``). ``REQUIRETLS`` (RFC 8689) is advertised after STARTTLS only, and
``MAIL FROM:<…> REQUIRETLS`` is taken only inside TLS; the flag travels with the message
(``Transaction.requiretls``) to the spool.

The protocol keeps aiosmtpd's command parsing and replaces what an attacker could abuse
(see ``tests/security/test_listener_*``): DATA is read in one pass into one buffer
(``data.DataReader``: only ``CRLF.CRLF`` ends it, bare CR/LF become CRLF, size and line
limits, and a budget across connections); connections are counted per client address
and in total (``limits.ConnectionLimits``); the greeting waits ``greet_pause`` and a
client that talks first is refused (postscreen's pregreet test); only commands that move
a transaction forward keep a session from its idle timeout, which ends with a ``421``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from securemail.core import replies
from securemail.core.addresses import (
    Address,
    AddressError,
    parse_address,
    qualify_postmaster,
    sender_routing,
    valid_helo_name,
)
from securemail.core.classify import Classification
from securemail.core.inbound_tls import InboundTlsPolicy
from securemail.core.replies import SmtpReply
from securemail.core.senders import OwnedAddresses, mail_from_refusal
from securemail.gateway.events import (
    ConnectionRefused,
    EventSink,
    ForcedTlsRefused,
    LogSink,
    RcptRefused,
    Refused,
    RelayDenied,
    SessionAuth,
)
from securemail.gateway.inbound.capacity import Admission, DataBudget, Pregreet
from securemail.gateway.inbound.data import DataReader
from securemail.gateway.inbound.limits import AuthLimiter
from securemail.gateway.inbound.networks import Networks
from securemail.gateway.inbound.recipients import AnyRecipient, RecipientCheck
from securemail.gateway.inbound.smtp_init import getaddr, initialise

log = logging.getLogger("securemail.smtp")

MAX_RECIPIENTS = 100
DATA_CHUNK = 256 * 1024  # bytes taken from the connection at a time during DATA
REQUIRETLS = "REQUIRETLS"  # RFC 8689 §2: the EHLO keyword and the MAIL parameter


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
    requiretls: bool = False  # MAIL FROM … REQUIRETLS (RFC 8689), given inside TLS


Accept = Callable[[Transaction], Awaitable[SmtpReply]]
Classify = Callable[[str], Classification]
Authenticate = Callable[[str, str], Awaitable[bool]]
Senders = Callable[[str], OwnedAddresses]  # login -> the addresses that user may send as
InboundTls = Callable[[], InboundTlsPolicy]  # the policy in force (a reload replaces it)


class _PendingAuth:
    """aiosmtpd parsed the credentials; verification is still to be awaited."""

    def __init__(self, login: bytes, password: bytes) -> None:
        self.login, self.password = login, password


class GatewaySMTP(SMTP):
    """aiosmtpd's protocol, hardened where one client could hurt the others.

    * AUTH: aiosmtpd calls its authenticator synchronously, which would run an argon2
      verification (tens of milliseconds of CPU) on the event loop. Its own PLAIN/LOGIN
      parsing is kept; only the final check is deferred to ``authenticate`` (a thread).
    * DATA: ``data.DataReader`` instead of aiosmtpd's list of lines (memory, CPU).
    * Connections over ``limits`` get ``421`` and are closed before the greeting; the
      greeting waits ``greet_pause`` seconds, and a client that sends anything first
      is refused (a real MTA waits for the 220; spam engines often do not).
    * Construction: ``smtp_init.initialise`` instead of ``SMTP.__init__``, whose method
      tables cost ~0.3 ms of introspection per connection; MAIL and RCPT addresses:
      ``smtp_init.getaddr``, which builds no class per command.
    * Idle timeout: only commands that move a transaction forward re-arm it (not NOOP,
      RSET, HELP or VRFY), and it ends the session with ``421`` (RFC 5321 §4.5.3.2).
    """

    _getaddr = getaddr

    def __init__(
        self,
        handler: GatewayHandler,
        *,
        limits: Admission | None = None,
        budget: DataBudget | None = None,
        greet_pause: float | Pregreet = 0.0,
        **kwargs: Any,
    ) -> None:
        initialise(self, handler, **kwargs)  # SMTP.__init__, its method tables cached
        self.gateway_handler = handler
        self.on_close: Callable[[GatewaySMTP], None] | None = None
        self.limits = limits
        self.budget = budget or DataBudget(4 * (self.data_size_limit or 0))
        self.pregreet = greet_pause if isinstance(greet_pause, Pregreet) else Pregreet(greet_pause)
        self._client = ""
        self._refused: str | None = None  # why the connection limits refused it
        self._counted = False
        self._greeted = False
        self._talked = asyncio.Event()
        self._previous_deadline: float | None = None

    # --- connection: limits, greeting ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # not the TLS layer after STARTTLS
        super().connection_made(transport)
        if first:
            assert self.session is not None
            self._client = _peer_ip(self.session)
            if self.limits is not None:
                self._refused = self.limits.admit(self._client)
                self._counted = self._refused is None

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self._counted and self.limits is not None:
            self._counted = False
            self.limits.leave(self._client)
        if self.on_close is not None:
            self.on_close(self)

    def data_received(self, data: bytes) -> None:
        if not self._greeted:
            self._talked.set()
        super().data_received(data)

    async def _handle_client(self) -> None:
        if self._refused is not None:
            self._refuse(replies.TOO_MANY_CONNECTIONS, self._refused)
            return
        pause = self.pregreet.pause_for(self._client)
        if pause > 0:
            if await self._talks_first(pause):
                self._refuse(replies.PREGREET, "sent data before the greeting")
                return
            self.pregreet.passed(self._client)
        self._greeted = True
        await super()._handle_client()

    async def _talks_first(self, pause: float) -> bool:
        try:
            await asyncio.wait_for(self._talked.wait(), pause)
        except TimeoutError:
            return False
        return True

    def _refuse(self, reply: SmtpReply, reason: str) -> None:
        self.gateway_handler.events.emit(ConnectionRefused(self._client, str(reply), reason))
        self._say_and_close(reply)

    def _say_and_close(self, reply: SmtpReply) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"{reply}\r\n".encode())
            self.transport.close()

    @property
    def in_transaction(self) -> bool:
        """Between MAIL FROM and the reply to DATA: shutting down now would lose work."""
        return self.envelope is not None and self.envelope.mail_from is not None

    def close_idle(self) -> None:
        """Tell an idle client we are going away (RFC 5321 §3.8), then close."""
        self._say_and_close(replies.SHUTTING_DOWN)

    # --- idle timeout ---------------------------------------------------------------------

    def _reset_timeout(self, duration: float | None = None) -> None:
        handle = self._timeout_handle
        live = handle is not None and not handle.cancelled()
        self._previous_deadline = handle.when() if live and handle is not None else None
        super()._reset_timeout(duration)

    def _keep_idle_deadline(self) -> None:
        """aiosmtpd re-arms the idle timer before every command; for one that moves
        nothing forward, put the previous deadline back, so NOOP every few seconds
        cannot hold a connection (and a file descriptor) for ever."""
        if self._previous_deadline is not None and self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = self.loop.call_at(self._previous_deadline, self._timeout_cb)

    def _timeout_cb(self) -> None:
        self._say_and_close(replies.IDLE_TIMEOUT)
        super()._timeout_cb()

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:
        self._keep_idle_deadline()
        await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        self._keep_idle_deadline()
        await super().smtp_RSET(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:
        self._keep_idle_deadline()
        await super().smtp_HELP(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        self._keep_idle_deadline()
        await super().smtp_VRFY(arg)

    # --- MAIL parameters ------------------------------------------------------------

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        """aiosmtpd's parameter parsing, knowing REQUIRETLS (RFC 8689 §2) too.

        aiosmtpd checks BODY, SMTPUTF8 and SIZE itself and answers ``555`` to any other
        parameter before calling ``handle_MAIL``. REQUIRETLS is taken out of what it
        checks here, so its own checks still run and every other unknown parameter still
        gets ``555``; the option stays in the list ``handle_MAIL`` receives, which judges
        it (inside TLS, or ``530``). It takes no value: ``REQUIRETLS=x`` is a syntax
        error (``501``). On RCPT it reaches ``handle_RCPT``, which refuses every RCPT
        parameter (``555``), this one included.
        """
        parsed = super()._getparams(params)
        if parsed is None:
            return None
        given = parsed.pop(REQUIRETLS, None)
        if given is not None and given is not True:
            return None
        return parsed

    # --- DATA -------------------------------------------------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA checks and replies, with the content read by ``DataReader``."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(str(replies.NEED_RCPT))
            return
        if arg:
            await self.push(str(replies.DATA_SYNTAX))
            return
        await self.push(replies.START_DATA)
        reader = DataReader(self.data_size_limit or 0, self.line_length_limit, self.budget)
        try:
            while not reader.done:
                chunk = await self._reader.read(DATA_CHUNK)
                if not chunk:
                    return  # the client went away mid-DATA; nothing to answer
                self._reset_timeout()  # data arriving is progress
                after = reader.feed(chunk)
            if after:
                self._unread(after)
            if reader.refusal is not None:
                self._set_post_data_state()
                await self.push(str(reader.refusal))
                return
            self.envelope.original_content = self.envelope.content = reader.content()
            status = await self._call_handler_hook("DATA")
        finally:
            reader.release()
        self._set_post_data_state()
        await self.push(status)

    def _unread(self, data: bytes) -> None:
        """Give back what a client sent after the end of DATA without waiting for our
        reply (a pipelined QUIT, a smuggling attempt): it is the next command.
        asyncio's StreamReader has no public unread; aiosmtpd itself clears this buffer
        on STARTTLS."""
        self._reader._buffer[:0] = data  # type: ignore[attr-defined]

    # --- AUTH -------------------------------------------------------------------------

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
        postmaster_domain: str = "",
        inbound_tls: InboundTls | None = None,
    ) -> None:
        self.role = role
        self.classify = classify
        self.accept = accept
        self.own_domains = frozenset(own_domains)
        self.relay_networks = Networks(relay_networks)
        self.authenticate = authenticate
        self.max_recipients = max_recipients
        self.limiter = limiter or AuthLimiter()
        self.events = events or LogSink()
        self.recipients = recipients or AnyRecipient()
        self.senders = senders or (lambda user: OwnedAddresses(user, frozenset()))
        self.postmaster_domain = postmaster_domain  # where a bare RCPT TO:<postmaster> goes
        default_tls = InboundTlsPolicy(own_domains=self.own_domains)
        self.inbound_tls = inbound_tls or (lambda: default_tls)  # [inbound] require_tls_from

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:  # fmt: skip
        if not valid_helo_name(hostname):
            session.host_name = None  # type: ignore[assignment]
            return [str(replies.BAD_HELO)]
        session.host_name = hostname
        if _tls_active(server):
            # RFC 8689 §2: offered only once the session is encrypted; the MAIL command
            # may be 11 characters longer (" REQUIRETLS"), as aiosmtpd does for SIZE.
            responses.insert(len(responses) - 1, f"250-{REQUIRETLS}")
            server.command_size_limits["MAIL"] += len(REQUIRETLS) + 1
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        if not valid_helo_name(hostname):
            session.host_name = None  # type: ignore[assignment]
            return str(replies.BAD_HELO)
        session.host_name = hostname
        return f"250 {server.hostname}"

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
        tls = _tls_active(server)
        if REQUIRETLS in options and not tls:
            bare = replies.REQUIRETLS_WITHOUT_TLS.logged("MAIL FROM … REQUIRETLS without TLS")
            self.events.emit(Refused(address, _peer_ip(session), str(bare), bare.log,
                                     bare.check))  # fmt: skip
            return str(bare)
        # The null sender stays "<>" in the envelope: aiosmtpd reads an empty mail_from
        # as "no MAIL command yet". handle_DATA turns it into "".
        if address in ("", "<>"):
            if self.role == "submission":
                return str(replies.NULL_SENDER_REFUSED)
            address = "<>"  # no domain to judge for forced TLS: its header From is judged
        else:
            try:
                sender = parse_address(address)
            except AddressError as exc:
                return str(replies.bad_sender(str(exc)))
            forced = None if tls else self._forced_tls(session, address)
            if forced is not None:
                return forced
            if self.role == "submission":
                refused = mail_from_refusal(self.senders(_auth_user(session)), sender)
                if refused is not None:
                    self.events.emit(Refused(address, _peer_ip(session), str(refused),
                                             refused.log, refused.check))  # fmt: skip
                    return str(refused)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return str(replies.MAIL_OK)

    def _forced_tls(self, session: Session, address: str) -> str | None:
        """``530`` when the envelope sender's domain must use TLS (``core.inbound_tls``)
        and this session has none; the classification is the one RCPT would make."""
        ip = _peer_ip(session)
        trusted = self.role == "inbound" and ip in self.relay_networks
        required = self.inbound_tls().decide(self.classify(address), trusted_client=trusted)
        if required is None:
            return None
        reply = replies.starttls_required(required.domain)
        self.events.emit(ForcedTlsRefused("MAIL FROM", required.domain, required.rule, ip,
                                          address, str(reply), required.reason))  # fmt: skip
        return str(reply)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS)
        if options:
            return str(replies.RCPT_PARAMETERS)
        if self.postmaster_domain:
            address = qualify_postmaster(address, self.postmaster_domain)
        classification = self.classify(address)
        if not classification.domain:
            return str(replies.bad_recipient(classification.reason))
        parsed = parse_address(classification.address)
        accepted = _recipients(envelope)
        if parsed.addr_spec in accepted:
            return str(replies.RCPT_OK)  # said twice: one recipient, not a stuck retry
        refused = await self._refuse_rcpt(session, classification, parsed)
        if refused is not None:
            return str(refused)
        envelope.rcpt_tos.append(classification.address)
        accepted[parsed.addr_spec] = classification
        return str(replies.RCPT_OK)

    async def _refuse_rcpt(
        self, session: Session, classification: Classification, address: Address
    ) -> SmtpReply | None:
        ip = _peer_ip(session)
        if self.role == "inbound" and not self._may_relay(session, classification.domain):
            self.events.emit(RelayDenied(ip, classification.address))
            return replies.RELAY_DENIED
        if classification.domain not in self.own_domains:
            return None
        if sender_routing(address) and not self._trusted(session):
            refused = replies.SENDER_ROUTING.logged("sender-specified routing, untrusted client")
        else:
            refused = await self.recipients.check(address.addr_spec)
        if refused is not None:
            self.events.emit(RcptRefused(ip, classification.address, str(refused), refused.log))
        return refused

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """The content is already dot-unstuffed and CRLF-only (``GatewaySMTP.smtp_DATA``)."""
        transaction = Transaction(
            role=self.role,
            peer=f"{_peer_ip(session)}",
            helo=session.host_name or "",
            auth_user=_auth_user(session),
            tls=_tls_summary(server),
            sender="" if envelope.mail_from == "<>" else envelope.mail_from or "",
            recipients=[(c.address, c) for c in _recipients(envelope).values()],
            data=envelope.original_content or b"",
            requiretls=REQUIRETLS in envelope.mail_options,
        )
        return str(await self.accept(transaction))

    def _may_relay(self, session: Session, domain: str) -> bool:
        return domain in self.own_domains or self._trusted_network(session)

    def _trusted(self, session: Session) -> bool:
        """Authenticated, or in ``[relay] networks``: may route through our domains."""
        return bool(session.authenticated) or self._trusted_network(session)

    def _trusted_network(self, session: Session) -> bool:
        return _peer_ip(session) in self.relay_networks


def _recipients(envelope: Envelope) -> dict[str, Classification]:
    """The envelope's accepted recipients: normalised address → classification."""
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


def _ssl_object(server: SMTP) -> Any:
    transport = server.transport
    return transport.get_extra_info("ssl_object") if transport is not None else None


def _tls_active(server: SMTP) -> bool:
    """The session is encrypted (after STARTTLS; the listeners have no implicit TLS)."""
    return _ssl_object(server) is not None


def _tls_summary(server: SMTP) -> str:
    ssl_object = _ssl_object(server)
    if ssl_object is None:
        return ""
    return f"{ssl_object.version()} {ssl_object.cipher()[0]}"


def received_header(t: Transaction, hostname: str, queue_id: str, now: float) -> bytes:
    """RFC 5321 §4.4 trace header, with TLS details as Postfix writes them:
    ``with ESMTPS (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)``."""
    protocol = "ESMTP"
    if t.tls:
        protocol += "S"
    if t.auth_user:
        protocol += "A"
    tls = f" (using {t.tls.replace(' ', ' with cipher ')})" if t.tls else ""
    helo = re.sub(r"[^\x21-\x7e]", "?", t.helo)[:255]
    single = f" for <{t.recipients[0][0]}>" if len(t.recipients) == 1 else ""
    return (
        f"Received: from {helo} ([{t.peer}])\r\n\tby {hostname} (securemail) with {protocol}{tls}"
        f"\r\n\tid {queue_id}{single};\r\n\t{formatdate(now, localtime=False)}\r\n"
    ).encode()
