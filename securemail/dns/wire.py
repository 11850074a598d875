"""The query path: dnspython's wire format over sockets of our own, on the event loop.

Why not ``dns.asyncresolver``: at bulk it cost ~22 % of the checker's CPU, most of it
per-query machinery around a few microseconds of parsing (a new socket, a coroutine
stack and a backoff loop per query; see ``bench/dns_bench.py`` for the figures). Here a
query is a packed header plus the question's wire form, sent on a UDP socket that stays
open, and the reply is handed to the waiting future by a reader callback: dnspython
only parses the records the answer is made of (``reply.py`` walks the message).

The resolver also answers the gateway (SPF, DKIM, DMARC, MX for delivery), so a forged
reply must never be taken for a real one. Every reply is checked before it is parsed:
it must come from the nameserver asked (the UDP socket is connected to it, so the kernel
drops other sources, and the address is compared again), carry the id of a query in
flight on that socket (ids from ``secrets``, unique among the socket's queries), echo
the question asked (name case-insensitively, type and class), and be a response (QR) to
a standard query (opcode 0). Anything else is dropped and counted, and the wait goes on,
so a spoofer cannot even cut a lookup short. An off-path attacker must guess the id and
the source port together (the Kaminsky mitigation): each socket is bound by the kernel
to a random ephemeral port (Linux randomises UDP autobind) and replaced after
``ROTATE_QUERIES`` queries or ``ROTATE_SECONDS``, so a port is a moving target with at
most ``ROTATE_QUERIES`` valid ids at any time. A fresh socket costs ~10 µs, under 1 %
of the queries it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

import dns.flags
import dns.rcode

from securemail.dns import reply
from securemail.dns.cache import Answer

PER_TRY_TIMEOUT = 2.0
"""One try's wait for a reply (as dnspython's ``Resolver.timeout``); the lookup's own
timeout bounds the whole of it, retries and further nameservers included."""
EDNS_PAYLOAD = 1232
"""The UDP payload we advertise (DNS flag day 2020): larger answers come with TC set
and are asked again over TCP rather than fragmented."""
ROTATE_QUERIES = 100
"""Queries one socket carries in its life (so also the most it has in flight)."""
ROTATE_SECONDS = 30.0
MAX_SOCKETS = 64
"""Sockets one nameserver may have busy at once: beyond ``MAX_SOCKETS * ROTATE_QUERIES``
queries in flight, further ones wait for a place instead of opening more sockets."""
MAX_READS = 64
"""Datagrams read per wake-up of a socket, so one busy socket cannot starve the loop."""
MAX_MESSAGE = 65_535

_ID = struct.Struct("!H")
_QR, _OPCODE = 0x8000, 0x7800
_TC_IN_BYTE_2 = dns.flags.TC >> 8
_QUERY_FLAGS = struct.pack("!HHHHH", dns.flags.RD, 1, 0, 0, 1)  # RD; one question, one OPT
# OPT at the root: our payload size, extended rcode 0, version 0, the DO flag, no options.
_OPT = b"\x00" + struct.pack("!HHBBHH", 41, EDNS_PAYLOAD, 0, 0, dns.flags.DO, 0)
_IN = 1
_ANSWERED = frozenset({dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.YXDOMAIN})


@dataclass(slots=True)
class DnsStats:
    """What a resolver has done since it was made; ``Resolver.stats()`` returns a copy."""

    lookups: int = 0
    """Lookups asked by callers (cached, coalesced or sent)."""
    cache_hits: int = 0
    coalesced: int = 0
    """Lookups that waited on an identical one already in flight instead of asking."""
    sent: int = 0
    """UDP queries sent (retries count again)."""
    tcp: int = 0
    """Queries asked again over TCP because the UDP reply was truncated."""
    timeouts: int = 0
    """Tries that got no reply in time."""
    dropped: int = 0
    """Datagrams ignored: not a reply to a query in flight (wrong source, id, question,
    flags), too short, or an error queued on the socket."""
    sockets: int = 0
    """UDP sockets opened (each on a fresh random port)."""


class Nameserver(NamedTuple):
    host: str
    port: int
    label: str
    """``host:port`` as shown in errors (``[::1]:53`` for IPv6)."""

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET


class Question(NamedTuple):
    """One question in wire form: what a query sends (after its id) and what a reply
    must echo."""

    rdtype: int
    body: bytes
    """The query after its id: flags, counts, the question and the OPT record."""
    name: bytes
    """The name's wire form in lower case (label lengths are < 64, so ASCII ``lower``
    folds only letters)."""
    tail: bytes
    """Type and class, which must match exactly."""


class Reply(NamedTuple):
    rcode: int
    answer: Answer
    ttl: int
    """How long the answer may be cached: the smallest TTL along its CNAME chain, or
    the SOA's negative TTL for NXDOMAIN and NODATA (``resolve_chaining``)."""


class ServerError(Exception):
    """This nameserver cannot answer this question: ask the next one."""

    def __init__(self, reason: str, *, tcp: bool = False) -> None:
        super().__init__(reason)
        self.tcp = tcp


class Unanswered(Exception):
    """Every nameserver failed; ``str()`` names them and why (at most three)."""


def make_question(wire: bytes, rdtype: int) -> Question:
    """``wire`` is the absolute name in wire form, in the case to send."""
    tail = struct.pack("!HH", rdtype, _IN)
    return Question(rdtype, _QUERY_FLAGS + wire + tail + _OPT, wire.lower(), tail)


def matches(data: bytes, qid: int, question: Question) -> bool:
    """Whether ``data`` is a reply to the query ``qid`` asking ``question``."""
    end = 12 + len(question.name)
    if len(data) < end + 4:
        return False
    rid, flags, qdcount = struct.unpack_from("!HHH", data)
    if rid != qid or not flags & _QR or flags & _OPCODE or qdcount != 1:
        return False
    return data[12:end].lower() == question.name and data[end : end + 4] == question.tail


def read_reply(data: bytes, question: Question, *, tcp: bool = False) -> Reply:
    """Read a reply ``matches`` accepted; one we cannot read is this server's failure."""
    try:
        parsed = reply.parse(data, 12 + len(question.name) + 4, question.name, question.rdtype)
    except reply.Malformed as exc:
        raise ServerError(f"malformed reply ({one_line(exc)})", tcp=tcp) from None
    if parsed.rcode not in _ANSWERED:
        raise ServerError(_rcode_text(parsed.rcode), tcp=tcp)
    nxdomain = parsed.rcode == dns.rcode.NXDOMAIN
    return Reply(parsed.rcode, Answer(parsed.records, parsed.ad, nxdomain), parsed.ttl)


def _rcode_text(rcode: int) -> str:
    try:
        return dns.rcode.to_text(dns.rcode.Rcode(rcode))
    except ValueError:
        return f"rcode {rcode}"


class _Socket:
    """One connected UDP socket and the queries waiting on it, by id."""

    __slots__ = ("closed", "expires", "pending", "retired", "sent", "sock")

    def __init__(self, sock: socket.socket, expires: float) -> None:
        self.sock = sock
        self.expires = expires
        self.pending: dict[int, tuple[Question, asyncio.Future[bytes | None]]] = {}
        self.sent = 0
        self.retired = False
        self.closed = False


class Channel:
    """One nameserver as seen from one event loop: the socket queries go out on now, and
    retired ones kept open only until their last query is answered or times out."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, server: Nameserver, stats: DnsStats
    ) -> None:
        self.loop = loop
        self.server = server
        self.stats = stats
        self.closed = False
        self._active: _Socket | None = None
        self._sockets: set[_Socket] = set()
        self._peer: tuple[object, ...] | None = None
        self._slots = asyncio.Semaphore(MAX_SOCKETS * ROTATE_QUERIES)

    @property
    def open_sockets(self) -> int:
        return len(self._sockets)

    async def ask(self, question: Question, timeout: float) -> bytes | None:
        """One try over UDP: the matching reply, or None if none came within ``timeout``."""
        async with self._slots:
            if self.closed:
                raise ServerError("resolver closed")
            s = self._current()
            qid = secrets.randbits(16)
            while qid in s.pending:
                qid = secrets.randbits(16)
            future: asyncio.Future[bytes | None] = self.loop.create_future()
            try:
                s.sock.send(_ID.pack(qid) + question.body)
            except OSError as exc:
                self._retire(s)
                raise ServerError(one_line(exc)) from None
            s.pending[qid] = (question, future)
            s.sent += 1
            self.stats.sent += 1
            timer = self.loop.call_later(timeout, _expire, future)
            try:
                return await future
            finally:
                timer.cancel()
                entry = s.pending.get(qid)
                if entry is not None and entry[1] is future:
                    del s.pending[qid]
                if s.retired and not s.pending:
                    self._close_socket(s)

    async def ask_tcp(self, question: Question, timeout: float) -> bytes:
        """The question again over a TCP connection of its own (the UDP reply was
        truncated). Raises ``TimeoutError`` or ``ServerError``."""
        self.stats.tcp += 1
        sock = socket.socket(self.server.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            async with asyncio.timeout(timeout):
                await self.loop.sock_connect(sock, (self.server.host, self.server.port))
                qid = secrets.randbits(16)
                wire = _ID.pack(qid) + question.body
                await self.loop.sock_sendall(sock, _ID.pack(len(wire)) + wire)
                size = _ID.unpack(await self._recv_exactly(sock, 2))[0]
                data = await self._recv_exactly(sock, size)
        except OSError as exc:
            raise ServerError(one_line(exc), tcp=True) from None
        finally:
            sock.close()
        if not matches(data, qid, question):
            raise ServerError("reply does not match the query", tcp=True)
        return data

    def close(self) -> None:
        """Close every socket; queries still waiting fail with ``ServerError``."""
        self.closed = True
        self._active = None
        for s in list(self._sockets):
            for _question, future in s.pending.values():
                if not future.done() and not self.loop.is_closed():
                    future.set_exception(ServerError("resolver closed"))
            s.pending.clear()
            self._close_socket(s)

    def _current(self) -> _Socket:
        s = self._active
        if s is not None and (s.sent >= ROTATE_QUERIES or self.loop.time() >= s.expires):
            self._retire(s)
            s = None
        if s is None:
            s = self._active = self._open()
        return s

    def _open(self) -> _Socket:
        sock = socket.socket(self.server.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # connect() binds a random ephemeral port and makes the kernel drop datagrams
            # from anyone but the nameserver.
            sock.connect((self.server.host, self.server.port))
            if self._peer is None:
                self._peer = sock.getpeername()[:2]
            s = _Socket(sock, self.loop.time() + ROTATE_SECONDS)
            self.loop.add_reader(sock.fileno(), self._readable, s)
        except OSError as exc:
            sock.close()
            raise ServerError(one_line(exc)) from None
        self._sockets.add(s)
        self.stats.sockets += 1
        return s

    def _retire(self, s: _Socket) -> None:
        s.retired = True
        if self._active is s:
            self._active = None
        if not s.pending:
            self._close_socket(s)

    def _close_socket(self, s: _Socket) -> None:
        if s.closed:
            return
        s.closed = True
        self._sockets.discard(s)
        if not self.loop.is_closed():
            self.loop.remove_reader(s.sock.fileno())
        s.sock.close()

    def _readable(self, s: _Socket) -> None:
        for _ in range(MAX_READS):
            if s.closed:
                return
            try:
                data, addr = s.sock.recvfrom(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error queued on the socket: the try's timeout decides
                self.stats.dropped += 1
                continue
            self._deliver(s, data, addr)

    def _deliver(self, s: _Socket, data: bytes, addr: tuple[object, ...]) -> None:
        qid = _ID.unpack_from(data)[0] if len(data) >= 12 and addr[:2] == self._peer else -1
        entry = s.pending.get(qid)
        if entry is None or not matches(data, qid, entry[0]):
            self.stats.dropped += 1
            return
        del s.pending[qid]
        if not entry[1].done():
            entry[1].set_result(data)

    async def _recv_exactly(self, sock: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = await self.loop.sock_recv(sock, size - len(data))
            if not chunk:
                raise ServerError("connection closed before the reply", tcp=True)
            data += chunk
        return data


class Client:
    """One event loop's share of a resolver: a channel per nameserver, and the lookups
    in flight (so identical ones share one query)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, servers: tuple[Nameserver, ...], stats: DnsStats
    ) -> None:
        self.loop = loop
        self.stats = stats
        self.channels = tuple(Channel(loop, server, stats) for server in servers)
        self.inflight: dict[object, list[asyncio.Future[Answer]]] = {}
        """Lookups being asked, by (name, type): the futures of those waiting on them."""

    @property
    def open_sockets(self) -> int:
        return sum(channel.open_sockets for channel in self.channels)

    async def exchange(self, qname: bytes, rdtype: int, lifetime: float) -> Reply:
        """Ask the nameservers in order until one answers. A nameserver that fails
        (SERVFAIL, REFUSED, a malformed reply) is not asked again for this question; one
        that times out is, until ``lifetime`` runs out (``TimeoutError``). Raises
        ``Unanswered`` when every nameserver failed."""
        deadline = self.loop.time() + lifetime
        question = make_question(qname, rdtype)
        servers = list(self.channels)
        errors: list[str] = []
        while servers:
            for channel in tuple(servers):
                left = deadline - self.loop.time()
                if left <= 0.001:
                    raise TimeoutError
                try:
                    reply = await self._try(channel, question, left)
                except ServerError as exc:
                    text = f"{channel.server.label}{' (TCP)' if exc.tcp else ''}: {exc}"
                    if text not in errors:
                        errors.append(text)
                    servers.remove(channel)
                    continue
                if reply is not None:
                    return reply
        raise Unanswered("; ".join(errors[:3]) or "no nameservers")

    async def _try(self, channel: Channel, question: Question, left: float) -> Reply | None:
        data = await channel.ask(question, min(PER_TRY_TIMEOUT, left))
        if data is None:
            self.stats.timeouts += 1
            return None
        if data[2] & _TC_IN_BYTE_2:
            try:
                data = await channel.ask_tcp(question, left)
            except TimeoutError:
                self.stats.timeouts += 1
                return None
            return read_reply(data, question, tcp=True)
        return read_reply(data, question)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def release(self) -> None:
        """``close`` from anywhere: on the loop's own thread, via the loop when it runs
        in another, directly when it has stopped (its sockets are then just closed)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self.loop.is_running() and running is not self.loop:
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                self.loop.call_soon_threadsafe(self.close)
                return
        self.close()


def _expire(future: asyncio.Future[bytes | None]) -> None:
    if not future.done():
        future.set_result(None)


def one_line(error: object) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
