"""A small authoritative DNS server on loopback, for tests that need real DNS.

It speaks the real wire protocol over UDP and TCP (big UDP answers are truncated with
the TC bit so clients retry over TCP), so the code under test runs exactly as it would
against a real server, and gateway subprocesses can use it through ``[dns] nameservers``.
It runs in a background thread with its own event loop, so it serves synchronous tests,
async tests and other processes alike.

Records are given as rdata text (``"10 mx.nhs.net."``); TXT values that are not quoted
are taken as one raw string (split into 255-byte character-strings as needed). Per-name
faults (``servfail``, ``refused``, ``timeout``, ``slow``) and the AD flag let tests
reproduce what real resolvers do without any network but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

IN = dns.rdataclass.IN
UDP_LIMIT = 1232
NEGATIVE_TTL = 60
MAX_CNAME_CHAIN = 8
MAX_PENDING = 1000
MAX_TCP_QUERIES = 1000
TCP_IDLE_TIMEOUT = 10.0
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
MODES = ("servfail", "refused", "timeout", "slow", "normal")

_SYNTHETIC_SOA = dns.rrset.from_text(
    dns.name.root,
    NEGATIVE_TTL,
    IN,
    dns.rdatatype.SOA,
    f"localhost. hostmaster.localhost. 1 3600 600 86400 {NEGATIVE_TTL}",
)


class DnsServer:
    """Authoritative for every name it is given; see the module docstring."""

    host: str = "127.0.0.1"

    def __init__(self, zones: Mapping[str, Mapping[str, Sequence[object]]] | None = None) -> None:
        self.port = 0
        self.queries: list[tuple[str, str]] = []
        self.tcp_queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._zones: dict[dns.name.Name, dict[dns.rdatatype.RdataType, dns.rrset.RRset]] = {}
        self._behaviour: dict[dns.name.Name, tuple[str, float]] = {}
        self._ad = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        for name, records in (zones or {}).items():
            for rdtype, rdatas in records.items():
                self.add(name, rdtype, *rdatas)

    # --- records and behaviour (thread-safe) ------------------------------------------

    def add(self, name: str, rdtype: str, *rdatas: object, ttl: int = 300) -> None:
        if not rdatas:
            raise ValueError("add() needs at least one record")
        owner = _name(name)
        kind = dns.rdatatype.RdataType.make(rdtype)
        parsed = [_rdata(kind, value) for value in rdatas]
        with self._lock:
            node = self._zones.setdefault(owner, {})
            old = list(node[kind]) if kind in node else []
            # A fresh RRset each time: answers being sent keep the one they were given.
            node[kind] = dns.rrset.from_rdata_list(owner, ttl, [*old, *parsed])

    def remove(self, name: str, rdtype: str | None = None) -> None:
        owner = _name(name)
        with self._lock:
            if rdtype is None:
                self._zones.pop(owner, None)
                return
            node = self._zones.get(owner, {})
            node.pop(dns.rdatatype.RdataType.make(rdtype), None)
            if not node:
                self._zones.pop(owner, None)

    def behave(self, name: str, mode: str, delay: float = 0.0) -> None:
        """Make queries for ``name`` fail: servfail, refused, timeout, slow; normal undoes."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        with self._lock:
            if mode == "normal":
                self._behaviour.pop(_name(name), None)
            else:
                self._behaviour[_name(name)] = (mode, delay)

    def set_ad(self, on: bool) -> None:
        with self._lock:
            self._ad = on

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> DnsServer:
        if self._thread is not None:
            raise RuntimeError("DNS server already started")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="test-dns-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError("DNS server did not start")
        if self._error is not None:
            self._thread = None
            raise RuntimeError(f"DNS server failed to start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(stopping.set)
        thread.join(STOP_TIMEOUT)
        self._thread = None
        if thread.is_alive():
            raise RuntimeError(f"DNS server thread did not stop within {STOP_TIMEOUT} s")

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        udp, tcp = await self._bind()
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            udp.close()
            tcp.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tcp.wait_closed(), STOP_TIMEOUT / 2)

    async def _bind(self) -> tuple[asyncio.DatagramTransport, asyncio.Server]:
        """UDP on a free port, then TCP on the same one (retrying if TCP's is taken)."""
        loop = asyncio.get_running_loop()
        for _ in range(20):
            udp, _protocol = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, 0)
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._tcp_client, self.host, port)
            except OSError:
                udp.close()
                continue
            self.port = port
            return udp, tcp
        raise OSError("no port free for both UDP and TCP")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if len(self._tasks) >= MAX_PENDING:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if not _is_loopback(writer.get_extra_info("peername")):
                return
            for _ in range(MAX_TCP_QUERIES):
                try:
                    size = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                    data = await asyncio.wait_for(
                        reader.readexactly(int.from_bytes(size, "big")), TCP_IDLE_TIMEOUT
                    )
                except (asyncio.IncompleteReadError, TimeoutError, OSError):
                    return
                reply = await self._reply(data, tcp=True)
                if reply is not None:
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
        except OSError:
            return
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    # --- answering ----------------------------------------------------------------------

    async def _reply(self, data: bytes, *, tcp: bool) -> bytes | None:
        """The wire answer to one query, or None to stay silent (malformed, or "timeout")."""
        try:
            query = dns.message.from_wire(data)
            if query.flags & dns.flags.QR or len(query.question) != 1:
                return None
            response = dns.message.make_response(query)
        except Exception:
            return None
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        entry = (qname.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(qtype))
        with self._lock:
            self.queries.append(entry)
            if tcp:
                self.tcp_queries.append(entry)
            mode, delay = self._behaviour.get(qname, ("normal", 0.0))
            ad = self._ad
        if mode == "timeout":
            return None
        if mode == "slow":
            await asyncio.sleep(delay)
        response.flags |= dns.flags.AA
        if ad:
            response.flags |= dns.flags.AD
        if mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif mode == "refused":
            response.set_rcode(dns.rcode.REFUSED)
        elif query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif question.rdclass != IN:
            response.set_rcode(dns.rcode.REFUSED)
        else:
            self._answer(response, qname, qtype)
        if tcp:
            limit = 65535
        elif query.edns >= 0:
            limit = max(512, min(query.payload, UDP_LIMIT))
        else:
            limit = 512
        try:
            return response.to_wire(max_size=limit, prefer_truncation=True)
        except dns.exception.DNSException:
            return None

    def _answer(
        self, response: dns.message.Message, qname: dns.name.Name, qtype: dns.rdatatype.RdataType
    ) -> None:
        with self._lock:
            name = qname
            seen = {name}
            for _ in range(MAX_CNAME_CHAIN):
                node = self._zones.get(name)
                if node is None:
                    if name == qname and not self._has_descendant(qname):
                        response.set_rcode(dns.rcode.NXDOMAIN)
                    break
                if qtype == dns.rdatatype.ANY:
                    response.answer.extend(node.values())
                    break
                if qtype in node:
                    response.answer.append(node[qtype])
                    break
                cname = node.get(dns.rdatatype.CNAME)
                if cname is None:
                    break
                response.answer.append(cname)
                name = cname[0].target  # type: ignore[attr-defined]
                if name in seen:
                    break
                seen.add(name)
            if qtype == dns.rdatatype.ANY:
                negative = not response.answer
            else:
                negative = all(rrset.rdtype != qtype for rrset in response.answer)
            if negative:
                response.authority.append(self._soa_for(name))

    def _has_descendant(self, name: dns.name.Name) -> bool:
        """True for an empty non-terminal: no records, but names below it have some."""
        return any(owner != name and owner.is_subdomain(name) for owner in self._zones)

    def _soa_for(self, name: dns.name.Name) -> dns.rrset.RRset:
        """The SOA of the closest enclosing name that has one, else a synthetic root SOA."""
        current = name
        while True:
            soa = self._zones.get(current, {}).get(dns.rdatatype.SOA)
            if soa is not None:
                return soa
            if current == dns.name.root:
                return _SYNTHETIC_SOA
            current = current.parent()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if _is_loopback(addr):
            self.server._spawn(self._respond(data, addr))

    async def _respond(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = await self.server._reply(data, tcp=False)
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


def _is_loopback(addr: object) -> bool:
    try:
        return ipaddress.ip_address(addr[0]).is_loopback  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return False


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text, origin=dns.name.root)


def _rdata(kind: dns.rdatatype.RdataType, value: object) -> dns.rdata.Rdata:
    if isinstance(value, dns.rdata.Rdata):
        return value
    if not isinstance(value, str):
        raise TypeError(f"record data must be text or a dns.rdata.Rdata, not {value!r}")
    if kind in (dns.rdatatype.TXT, dns.rdatatype.SPF) and not value.startswith('"'):
        raw = value.encode()
        chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
        return dns.rdata.get_rdata_class(IN, kind)(IN, kind, chunks)
    return dns.rdata.from_text(IN, kind, value, origin=dns.name.root, relativize=False)
