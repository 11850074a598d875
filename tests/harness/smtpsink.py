"""An in-process SMTP receiver (aiosmtpd) on its own thread + event loop, for tests.

It records, per session: peer, client EHLO names, whether/which TLS was negotiated,
every message (envelope, content, TLS state at DATA), and every raw byte the client
sent *before* TLS was established (``plaintext``), so downgrade tests can prove that
no message byte crossed the wire in the clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from aiosmtpd.smtp import SMTP, Envelope, Session

T = TypeVar("T")


class BackgroundLoop:
    """An asyncio event loop running in a daemon thread; every wait is bounded."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        """Run `coro` on the loop and wait (≤ `timeout` s) for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 10) -> None:
        """Cancel every task, stop the loop, join the thread, close the loop."""
        if not self._thread.is_alive():
            if not self.loop.is_closed():
                self.loop.close()
            return

        async def _cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout / 2)
            await self.loop.shutdown_asyncgens()

        with contextlib.suppress(Exception):
            self.call(_cancel_all(), timeout=timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"event loop thread {self._thread.name} did not stop")
        self.loop.close()


class LoopbackService:
    """A test server on its own thread and event loop: start/stop, context manager.

    Subclasses set ``host``/``port``/``_bg``/``_server`` in ``__init__`` and provide
    ``_create_server`` and ``_abort_connections``.
    """

    host: str
    port: int
    _bg: BackgroundLoop | None
    _server: asyncio.AbstractServer | None

    async def _create_server(self) -> asyncio.AbstractServer:
        raise NotImplementedError

    def _abort_connections(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        if self._bg is not None:
            return self
        bg = BackgroundLoop(type(self).__name__)
        bg.start()
        self._bg = bg
        try:
            self._server = bg.call(self._create_server())
        except BaseException:
            self._bg = None
            bg.stop()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        self._abort_connections()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        await asyncio.sleep(0)

    def stop(self) -> None:
        bg, self._bg = self._bg, None
        if bg is None:
            return
        try:
            if self._server is not None:
                with contextlib.suppress(Exception):
                    bg.call(self._close())
        finally:
            self._server = None
            bg.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``[127.0.0.1]:port`` (Postfix nexthop syntax)."""
        return f"[{self.host}]:{self.port}"


@dataclass
class SessionRecord:
    """One SMTP connection as the sink saw it."""

    peer: tuple[str, int] | None
    ehlo: list[str] = field(default_factory=list)  # every EHLO/HELO name, in order
    plaintext: bytearray = field(default_factory=bytearray)  # bytes received before TLS
    tls_version: str | None = None
    cipher: str | None = None
    messages: list[ReceivedMessage] = field(default_factory=list)
    closed: bool = False

    @property
    def tls(self) -> bool:
        return self.tls_version is not None


@dataclass
class ReceivedMessage:
    """One DATA transaction (accepted, or rejected because of `reply_code`)."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # dot-unstuffed content, CRLF line endings, as received
    tls_version: str | None  # e.g. "TLSv1.3"; None if the transaction was in the clear
    cipher: str | None
    peer: tuple[str, int] | None
    ehlo: str | None
    mail_options: list[str]
    rcpt_options: list[str]
    reply: str  # what the sink answered at end of DATA

    @property
    def tls(self) -> bool:
        return self.tls_version is not None


def _default_reply(code: int) -> str:
    if code == 450:
        return "450 4.3.0 Temporary failure (test sink)"
    if code == 550:
        return "550 5.7.1 Message rejected (test sink)"
    return f"{code} {code // 100}.0.0 Reply forced by test sink"


class _Handler:
    def __init__(self, sink: SinkServer) -> None:
        self.sink = sink

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # a handle_EHLO hook must do this itself
        self.sink._record_ehlo(server, hostname)
        if self.sink.requiretls and server._tls_protocol is not None:  # RFC 8689: inside TLS
            responses = [*responses[:-1], "250-REQUIRETLS", responses[-1]]
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        self.sink._record_ehlo(server, hostname)
        return f"250 {server.hostname}"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        known = self.sink.known
        if known is not None and address.lower() not in known:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.sink.hold is not None:  # a test holds the reply to DATA until it says go
            await asyncio.to_thread(self.sink.hold.wait, 60)
        return self.sink._record_message(server, session, envelope)


class _RecordingSMTP(SMTP):
    """aiosmtpd SMTP that captures raw bytes while the connection is not yet TLS."""

    def __init__(self, handler: _Handler, *, sink: SinkServer, **kw: Any) -> None:
        super().__init__(handler, **kw)
        self._sink = sink
        self.record: SessionRecord | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.record = self._sink._new_session(self, transport.get_extra_info("peername"))
        else:  # second call: the STARTTLS handshake completed
            ssl_object = transport.get_extra_info("ssl_object")
            if self.record is not None and ssl_object is not None:
                cipher = ssl_object.cipher()
                self.record.tls_version = ssl_object.version()
                self.record.cipher = cipher[0] if cipher else None

    def _getparams(self, params: Any) -> dict[str, str | bool] | None:
        """aiosmtpd refuses MAIL parameters it does not know; a sink that advertises
        REQUIRETLS takes that one inside TLS (it stays in ``mail_options``)."""
        result = super()._getparams(params)
        if result is not None and self._sink.requiretls and self._tls_protocol is not None:
            result.pop("REQUIRETLS", None)
        return result

    def data_received(self, data: bytes) -> None:
        # Before STARTTLS the transport is the socket itself; afterwards this method
        # receives decrypted bytes from the SSL protocol and _original_transport is set.
        if self._original_transport is None and self.record is not None:
            self._sink._record_plaintext(self.record, data)
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        self._sink._session_closed(self)
        super().connection_lost(error)


class SinkServer(LoopbackService):
    """An SMTP server on 127.0.0.1:<OS-chosen port> that records everything.

    * `tls_context`: offer STARTTLS with it; `require_tls`: refuse MAIL etc. before it.
    * `reply_code` (e.g. 450, 550): answer end-of-DATA with it (attribute, may be changed
      while running); such transactions go to `rejected`, not `messages`.
    * `hold`: a `threading.Event`; while it is not set, the reply to DATA waits.
    * `known`: a set of lower-cased addresses; RCPT for any other gets 550 5.1.1.
    * `requiretls`: advertise REQUIRETLS after STARTTLS and take ``MAIL FROM:<..>
      REQUIRETLS`` (RFC 8689); it is recorded in the message's ``mail_options``.
    """

    def __init__(
        self,
        *,
        hostname: str = "mx.nhs.net",
        tls_context: ssl.SSLContext | None = None,
        require_tls: bool = False,
        port: int = 0,
        host: str = "127.0.0.1",
        reply_code: int | None = None,
        reply_message: str | None = None,
        smtputf8: bool = True,
        timeout: float = 60,
        requiretls: bool = False,
    ) -> None:
        self.hostname = hostname
        self.requiretls = requiretls
        self.tls_context = tls_context
        self.require_tls = require_tls
        self.host = host
        self.port = port
        self.reply_code = reply_code
        self.reply_message = reply_message
        self.smtputf8 = smtputf8
        self.timeout = timeout
        self.hold: threading.Event | None = None
        self.known: set[str] | None = None
        self.sessions: list[SessionRecord] = []
        self.messages: list[ReceivedMessage] = []
        self.rejected: list[ReceivedMessage] = []
        self.plaintext = bytearray()  # all sessions' pre-TLS bytes (commands included)
        self._cond = threading.Condition()
        self._protocols: set[_RecordingSMTP] = set()
        self._bg: BackgroundLoop | None = None
        self._server: asyncio.AbstractServer | None = None

    async def _create_server(self) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        handler = _Handler(self)

        def factory() -> _RecordingSMTP:
            return _RecordingSMTP(
                handler,
                sink=self,
                hostname=self.hostname,
                tls_context=self.tls_context,
                require_starttls=self.require_tls,
                enable_SMTPUTF8=self.smtputf8,
                decode_data=False,
                timeout=self.timeout,
                loop=loop,
            )

        return await loop.create_server(factory, host=self.host, port=self.port)

    def _abort_connections(self) -> None:
        for proto in list(self._protocols):
            raw = proto._original_transport or proto.transport
            if raw is not None:
                raw.abort()

    # ------------------------------------------------------------- recording (loop thread)
    def _new_session(self, proto: _RecordingSMTP, peer: Any) -> SessionRecord:
        rec = SessionRecord(peer=tuple(peer) if peer else None)
        with self._cond:
            self._protocols.add(proto)
            self.sessions.append(rec)
            self._cond.notify_all()
        return rec

    def _session_closed(self, proto: _RecordingSMTP) -> None:
        with self._cond:
            self._protocols.discard(proto)
            if proto.record is not None:
                proto.record.closed = True
            self._cond.notify_all()

    def _record_plaintext(self, rec: SessionRecord, data: bytes) -> None:
        with self._cond:
            rec.plaintext += data
            self.plaintext += data

    def _record_ehlo(self, server: SMTP, hostname: str) -> None:
        rec = getattr(server, "record", None)
        if rec is not None:
            with self._cond:
                rec.ehlo.append(hostname)

    def _record_message(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rec: SessionRecord | None = getattr(server, "record", None)
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        cipher = ssl_object.cipher() if ssl_object is not None else None
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        code = self.reply_code
        reply = (self.reply_message or _default_reply(code)) if code else "250 2.0.0 OK: stored"
        msg = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(content),
            tls_version=ssl_object.version() if ssl_object is not None else None,
            cipher=cipher[0] if cipher else None,
            peer=tuple(session.peer) if session.peer else None,  # type: ignore[arg-type]
            ehlo=session.host_name,
            mail_options=list(envelope.mail_options),
            rcpt_options=list(envelope.rcpt_options),
            reply=reply,
        )
        with self._cond:
            if code:
                self.rejected.append(msg)
            else:
                self.messages.append(msg)
                if rec is not None:
                    rec.messages.append(msg)
            self._cond.notify_all()
        return reply

    # ------------------------------------------------------------- waiting (test thread)
    def wait(self, n: int = 1, timeout: float = 30) -> list[ReceivedMessage]:
        """Wait until ≥ `n` messages were accepted; return all of them."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.messages) >= n, timeout)
            if not ok:
                raise AssertionError(
                    f"SinkServer: {len(self.messages)}/{n} messages after {timeout}s "
                    f"({len(self.sessions)} sessions, {len(self.rejected)} rejected)"
                )
            return list(self.messages)

    def wait_sessions_closed(self, n: int = 1, timeout: float = 30) -> list[SessionRecord]:
        """Wait until ≥ `n` sessions exist and all of them are closed."""

        def done() -> bool:
            return len(self.sessions) >= n and all(s.closed for s in self.sessions)

        with self._cond:
            if not self._cond.wait_for(done, timeout):
                raise AssertionError(
                    f"SinkServer: sessions {[(s.peer, s.closed) for s in self.sessions]} "
                    f"not {n} closed after {timeout}s"
                )
            return list(self.sessions)

    def wait_until(self, predicate: Any, timeout: float = 30) -> None:
        """Wait (bounded) until ``predicate(self)`` is true."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"SinkServer: condition not met after {timeout}s")
                self._cond.wait(min(left, 0.1))
