"""A fast authoritative DNS server for benchmarks: every answer rendered once, copied per query.

The test harness's server (``tests/harness/dnsserver.py``) builds each answer with
dnspython when the query arrives, which costs far more than the checker under test spends
on the same query: a benchmark behind it measures the server. Here every positive answer
is rendered to wire bytes once, when the zone is built, and keyed by the question as it
appears on the wire (the lower-cased name, then the type). A query is never parsed into
objects: the header and question are read from the raw bytes, and the reply is the query
id, the flags, the question exactly as sent (so 0x20 case randomisation survives) and the
stored bytes. Owners in stored answers are compression pointers to the question, so one
answer serves every spelling of the name and identical answers (every customer of one
mail provider has the same MX set) are stored once.

What a checker meets from a real recursive resolver is there: NXDOMAIN and NODATA carry
the zone's SOA (so negative answers are cached), CNAME chains come with the records they
lead to (a type the chain's end does not have gets a plain NODATA), an EDNS OPT record
is echoed (with DO when asked), answers over 1,232 bytes (512 without EDNS) are
truncated with TC so the client retries over TCP, which is served too.
Names under a *dead* domain are never answered at all, as when a domain's nameservers are
gone: the client can only time out.

UDP is served by a plain blocking socket loop in one thread, measured faster here than an
asyncio DatagramProtocol; TCP by a thread per connection (only truncated answers use it).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterable

TTL = 3600
UDP_LIMIT = 1232  # the EDNS payload we offer and the most we send over UDP
PLAIN_LIMIT = 512  # a client without EDNS can take no more
MAX_CHAIN = 8
RECV_BUFFER = 4 * 1024 * 1024  # bursts of a thousand queries must not be dropped
TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28}
DEFAULT_SOA = "ns1.dns.example. hostmaster.dns.example. 2026010101 3600 600 86400 3600"

_CNAME = TYPES["CNAME"].to_bytes(2, "big")
_CLASS_IN = b"\x00\x01"
_RR_FIXED = _CLASS_IN + TTL.to_bytes(4, "big")
_QUESTION_POINTER = b"\xc0\x0c"  # the name at offset 12: the question's
_HEADER = struct.Struct("!2sHHHHH")
_NOERROR, _NXDOMAIN, _REFUSED = 0, 3, 5
_LENGTH = [bytes([n]) for n in range(64)]
# Our OPT record: root owner, type 41, payload 1232, no extended rcode, DO echoed, no options.
_OPT = b"\x00\x00\x29" + UDP_LIMIT.to_bytes(2, "big") + b"\x00\x00\x00\x00\x00\x00"
_OPT_DO = b"\x00\x00\x29" + UDP_LIMIT.to_bytes(2, "big") + b"\x00\x00\x80\x00\x00\x00"


def wire_name(name: str) -> bytes:
    """``name`` in uncompressed wire form, lower case (``ValueError`` if it is not one)."""
    raw = name.lower().rstrip(".").encode("ascii")
    if not raw:
        return b"\x00"
    labels = raw.split(b".")
    if len(raw) > 253 or not 0 < min(map(len, labels)) <= max(map(len, labels)) <= 63:
        raise ValueError(f"not a DNS name: {name!r}")
    return b"".join([_LENGTH[len(label)] + label for label in labels]) + b"\x00"


@functools.lru_cache(maxsize=4096)  # hosts, addresses and shared records repeat
def rdata(rtype: str, value: str) -> bytes:
    """The wire rdata of one record written as zone-file text (TXT: the raw string)."""
    if rtype == "A":
        return ipaddress.IPv4Address(value).packed
    if rtype == "AAAA":
        return ipaddress.IPv6Address(value).packed
    if rtype in ("NS", "CNAME", "PTR"):
        return wire_name(value)
    if rtype == "MX":
        preference, host = value.split()
        return int(preference).to_bytes(2, "big") + wire_name(host)
    if rtype == "TXT":
        raw = value.encode()
        chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
        return b"".join(bytes([len(chunk)]) + chunk for chunk in chunks)
    if rtype == "SOA":
        mname, rname, *numbers = value.split()
        return wire_name(mname) + wire_name(rname) + struct.pack("!5I", *map(int, numbers))
    raise ValueError(f"record type {rtype} is not served")


def _rr(owner: bytes, rtype: bytes, data: bytes) -> bytes:
    return owner + rtype + _RR_FIXED + len(data).to_bytes(2, "big") + data


def _split_rrs(body: bytes) -> list[bytes]:
    """Each RR of a stored answer without its owner (a 2-byte pointer): type onwards."""
    out, pos = [], 0
    while pos < len(body):
        end = pos + 12 + int.from_bytes(body[pos + 10 : pos + 12], "big")
        out.append(body[pos + 2 : end])
        pos = end
    return out


class Zone:
    """Records in, pre-rendered answers out. Add RRsets, apexes and dead domains, then
    ``finish()``; after that the zone is read-only and ``answer`` serves it."""

    def __init__(self, soa: str = DEFAULT_SOA) -> None:
        self._answers: dict[bytes, bytes] = {}  # name+type -> ANCOUNT, NSCOUNT, RRs
        self._interned: dict[bytes, bytes] = {}
        self._cnames: dict[bytes, bytes] = {}  # name -> target, until finish()
        self._apexes: set[bytes] = set()
        self._dead: set[bytes] = set()
        self._empty: set[bytes] = set()  # empty non-terminals (names with none of their own)
        self._types: set[bytes] = set()  # every type present: the NODATA test tries these
        self._soa_tail = TYPES["SOA"].to_bytes(2, "big") + _RR_FIXED
        soa_data = rdata("SOA", soa)
        self._soa_tail += len(soa_data).to_bytes(2, "big") + soa_data
        self._soa = soa
        self.rrsets = 0
        self.finished = False

    # --- building ----------------------------------------------------------------------

    def add(self, name: str, rtype: str, values: Iterable[str]) -> None:
        """One RRset (all the records of ``name``/``rtype``); adding it twice is an error."""
        owner, code = wire_name(name), TYPES[rtype].to_bytes(2, "big")
        key = owner + code
        if key in self._answers or (rtype == "CNAME" and owner in self._cnames):
            raise ValueError(f"{name} {rtype} added twice")
        rrs = [_rr(_QUESTION_POINTER, code, rdata(rtype, v)) for v in values]
        if rtype == "CNAME":
            if len(rrs) != 1:
                raise ValueError(f"{name}: a CNAME RRset has one record")
            self._cnames[owner] = wire_name(next(iter(values)))
        self._store(key, len(rrs), b"".join(rrs))
        self._types.add(code)
        self.rrsets += 1

    def apex(self, name: str) -> None:
        """A zone apex: its SOA (and NS) answer, and the SOA negative answers under it carry."""
        owner = wire_name(name)
        self._apexes.add(owner)
        self.add(name, "SOA", [self._soa])
        self.add(name, "NS", ["ns1.dns.example.", "ns2.dns.example."])

    def dead(self, name: str) -> None:
        """No query for ``name`` or any name under it is ever answered."""
        self._dead.add(wire_name(name))

    def _store(self, key: bytes, count: int, body: bytes) -> None:
        value = count.to_bytes(2, "big") + b"\x00\x00" + body
        self._answers[key] = self._interned.setdefault(value, value)

    def finish(self) -> None:
        """Render CNAME chains (as a recursive resolver returns them: the CNAME, then the
        target's records) and note the empty non-terminals."""
        for owner in list(self._cnames):
            chain, target = [owner], self._cnames[owner]
            while target in self._cnames and len(chain) < MAX_CHAIN:
                chain.append(target)
                target = self._cnames[target]
            links = [_split_rrs(self._answers[o + _CNAME][4:])[0] for o in chain]
            for code in self._types - {_CNAME}:
                final = self._answers.get(target + code)
                if final is None:
                    continue
                rrs = [_QUESTION_POINTER + links[0]]
                rrs += [o + link for o, link in zip(chain[1:], links[1:], strict=True)]
                rrs += [target + rr for rr in _split_rrs(final[4:])]
                self._store(owner + code, len(rrs), b"".join(rrs))
        self._cnames.clear()
        for key in self._answers:
            name = key[:-2]
            pos = name[0] + 1
            while name[pos] and name[pos:] not in self._apexes:
                self._empty.add(name[pos:])
                pos += name[pos] + 1
        self._empty -= {key[:-2] for key in self._answers}
        self._interned.clear()
        self.finished = True

    @property
    def answers(self) -> int:
        return len(self._answers)

    # --- serving -----------------------------------------------------------------------

    def answer(self, query: bytes, tcp: bool = False) -> bytes | None:
        """The reply to one query message, or None to drop it (dead, malformed, not a query)."""
        try:
            qid, flags, qdcount, _an, _ns, arcount = _HEADER.unpack_from(query)
            if flags & 0xF800 or qdcount != 1:  # a response, or not a standard query
                return None
            end = query.index(0, 12)  # the question's root label (names here hold no NUL)
            key = query[12:end].lower() + query[end : end + 3]
            question = query[12 : end + 5]
            opt = b""
            limit = PLAIN_LIMIT
            if arcount and query[end + 5 : end + 8] == b"\x00\x00\x29":
                opt = _OPT_DO if query[end + 12] & 0x80 else _OPT
                payload = int.from_bytes(query[end + 8 : end + 10], "big")
                limit = max(PLAIN_LIMIT, min(payload, UDP_LIMIT))
        except (IndexError, ValueError, struct.error):
            return None
        flags = (flags & 0x0100) | 0x8480  # QR, AA, RA; RD as asked
        stored = self._answers.get(key)
        if stored is not None:
            rcode, counts, body = _NOERROR, stored[:4], stored[4:]
        else:
            negative = self._negative(key)
            if negative is None:
                return None
            rcode, counts, body = negative
        ar = b"\x00\x01" if opt else b"\x00\x00"
        reply = b"".join(
            (qid, (flags | rcode).to_bytes(2, "big"), b"\x00\x01", counts, ar, question, body, opt)
        )
        if not tcp and len(reply) > limit:
            tc = (flags | 0x0200 | rcode).to_bytes(2, "big")
            return b"".join((qid, tc, b"\x00\x01\x00\x00\x00\x00", ar, question, opt))
        return reply

    def _negative(self, key: bytes) -> tuple[int, bytes, bytes] | None:
        """NXDOMAIN or NODATA with the apex SOA, REFUSED out of zone, None when dead."""
        name, code = key[:-3], key[-2:]
        pos = 0
        while True:
            suffix = key[pos:-2]
            if suffix in self._dead:
                return None
            if suffix in self._apexes:
                break
            if not key[pos]:
                return _REFUSED, b"\x00\x00\x00\x00", b""
            pos += key[pos] + 1
        pointer = (0xC000 | (12 + pos)).to_bytes(2, "big")
        soa = b"\x00\x00\x00\x01", pointer + self._soa_tail
        if name + b"\x00" in self._empty or any(
            name + b"\x00" + t in self._answers for t in self._types if t != code
        ):
            return _NOERROR, *soa
        return _NXDOMAIN, *soa


class FastDnsServer:
    """Serves a finished ``Zone`` on ``host``: UDP on a thread, TCP on the same port."""

    def __init__(self, zone: Zone, host: str = "127.0.0.1", port: int = 0) -> None:
        if not zone.finished:
            raise ValueError("finish() the zone before serving it")
        self.zone = zone
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        self.udp.bind((host, port))
        self.host, self.port = self.udp.getsockname()[:2]
        self.tcp = _TcpServer((self.host, self.port), _TcpHandler)
        self.tcp.zone = zone
        self.queries = 0
        self.dropped = 0
        self._udp_thread = threading.Thread(target=self._serve_udp, name="dns-udp", daemon=True)
        self._tcp_thread = threading.Thread(target=self.tcp.serve_forever, daemon=True)

    def start(self) -> FastDnsServer:
        self._udp_thread.start()
        self._tcp_thread.start()
        return self

    def udp_cpu(self) -> float:
        """CPU seconds of the UDP thread so far (what the queries cost the server)."""
        ident = self._udp_thread.ident
        if ident is None:
            return 0.0
        return time.clock_gettime(time.pthread_getcpuclockid(ident))

    def kernel_drops(self) -> int:
        """Queries the kernel dropped because our receive buffer was full (the ``drops``
        column of /proc/net/udp for this socket; 0 where it cannot be read)."""
        local = f"{int(ipaddress.IPv4Address(self.host)):08X}:{self.port:04X}"
        little = f"{int.from_bytes(ipaddress.IPv4Address(self.host).packed, 'little'):08X}"
        wanted = {local, f"{little}:{self.port:04X}"}
        try:
            with open("/proc/net/udp") as table:  # noqa: PTH123
                rows = [line.split() for line in table.readlines()[1:]]
        except OSError:
            return 0
        return sum(int(row[-1]) for row in rows if len(row) > 12 and row[1] in wanted)

    def _serve_udp(self) -> None:
        recv, send, answer = self.udp.recvfrom, self.udp.sendto, self.zone.answer
        while True:
            try:
                query, peer = recv(4096)
            except OSError:
                return  # closed
            reply = answer(query)
            self.queries += 1
            if reply is None:
                self.dropped += 1
                continue
            with contextlib.suppress(OSError):
                send(reply, peer)

    def stop(self) -> None:
        self.tcp.shutdown()
        self.tcp.server_close()
        self.udp.close()


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    zone: Zone


class _TcpHandler(socketserver.BaseRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        with contextlib.suppress(OSError):
            while True:
                size = _read(sock, 2)
                query = _read(sock, int.from_bytes(size, "big")) if size else b""
                if not query:
                    return
                reply = self.server.zone.answer(query, tcp=True)
                if reply is not None:  # dead: say nothing, as an unreachable server would
                    sock.sendall(len(reply).to_bytes(2, "big") + reply)


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data
