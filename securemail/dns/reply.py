"""Reading a reply: the message's framing here, each record's data by dnspython.

``dns.message.from_wire`` builds every name, RRset and the OPT record of a reply as
immutable objects, and then ``resolve_chaining`` searches them again: ~200 µs of CPU a
reply on this machine, most of a lookup's cost (``bench/dns_bench.py``). A resolver needs
much less: walk the records once, follow the CNAME chain from the question to the type
asked, and hand only the records it ends on to dnspython's rdata parser
(``dns.rdata.from_wire``), which stays the one reader of record formats.

What this reads is hostile input, so the framing is checked as strictly as dnspython
checks it: every length stays inside the message, compression pointers must point
strictly backwards from the last one followed (so they cannot loop, as dnspython's
``BadPointer`` rule), names are at most 255 octets, at most one OPT record, no trailing
bytes, a CNAME chain of at most ``MAX_CHAIN`` links, and no answer with NXDOMAIN. Any
breach raises ``Malformed``; an IndexError or struct.error from a short message is
turned into it too. The semantics are those of ``resolve_chaining``: the TTL to cache
is the smallest along the chain, or for a negative answer the SOA's TTL and minimum
(the closest enclosing SOA in the authority section), else ``NEGATIVE_TTL_WITHOUT_SOA``.
"""

from __future__ import annotations

import functools
import struct
from typing import NamedTuple

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.wire

MAX_CHAIN = 16
"""CNAME links followed within one reply (dnspython's ``MAX_CHAIN``)."""
NEGATIVE_TTL_WITHOUT_SOA = 300
MAX_NAME = 255

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_IN = dns.rdataclass.IN
_CNAME = dns.rdatatype.CNAME
_SOA = dns.rdatatype.SOA
_OPT = dns.rdatatype.OPT
_AD = 0x0020


class Malformed(Exception):
    """The reply cannot be read (or breaks a rule above)."""


class Parsed(NamedTuple):
    rcode: int
    """With the OPT record's extended bits, as ``Message.rcode()``."""
    records: tuple[dns.rdata.Rdata, ...] | None
    """The records of the type asked at the end of the CNAME chain, or None (NODATA,
    NXDOMAIN)."""
    ttl: int
    ad: bool


class _Record(NamedTuple):
    owner: bytes
    rdtype: int
    rdclass: int
    ttl: int
    start: int
    length: int


def parse(data: bytes, question_end: int, qname: bytes, rdtype: int) -> Parsed:
    """Read a reply whose header and question were already checked against the query
    (``question_end`` is where the question ends; ``qname`` its lower-case wire name)."""
    try:
        return _parse(data, question_end, qname, rdtype)
    except (IndexError, struct.error) as exc:
        raise Malformed(f"reply cut short ({exc})") from None
    except Malformed:
        raise
    except Exception as exc:  # dnspython's rdata parser raises many types
        raise Malformed(str(exc) or type(exc).__name__) from None


def _parse(data: bytes, offset: int, qname: bytes, rdtype: int) -> Parsed:
    _id, flags, _qd, ancount, nscount, arcount = _HEADER.unpack_from(data)
    rcode = flags & 0x000F
    answers: list[_Record] = []
    for _ in range(ancount):
        record, offset = _record(data, offset)
        answers.append(record)
    soas: list[_Record] = []
    for _ in range(nscount):
        record, offset = _record(data, offset)
        if record.rdtype == _SOA and record.rdclass == _IN:
            soas.append(record)
    opt_seen = False
    for _ in range(arcount):
        record, offset = _record(data, offset)
        if record.rdtype == _OPT:
            if opt_seen or record.owner != b"\x00":
                raise Malformed("bad OPT record")
            opt_seen = True
            rcode |= (record.ttl >> 24) << 4
    if offset != len(data):
        raise Malformed("trailing bytes after the last record")

    name, ttl, found = qname, 0xFFFFFFFF, None
    for _link in range(MAX_CHAIN + 1):
        found = [r for r in answers if r.owner == name and r.rdtype == rdtype and r.rdclass == _IN]
        if found or rdtype == _CNAME:
            break
        cname = next(
            (r for r in answers if r.owner == name and r.rdtype == _CNAME and r.rdclass == _IN),
            None,
        )
        if cname is None:
            break
        ttl = min(ttl, cname.ttl)
        name = _name(data, cname.start)[0]
    else:
        raise Malformed("CNAME chain too long")
    if found:
        if rcode == 3:  # NXDOMAIN
            raise Malformed("an answer with NXDOMAIN")
        ttl = min(ttl, *(r.ttl for r in found))
        unique = {data[r.start : r.start + r.length]: r for r in found}.values()
        records = tuple(dns.rdata.from_wire(_IN, rdtype, data, r.start, r.length) for r in unique)
        return Parsed(rcode, records, ttl, bool(flags & _AD))
    soa = _closest_soa(data, soas, name)
    if soa is None:
        ttl = min(ttl, NEGATIVE_TTL_WITHOUT_SOA)
    else:
        end = soa.start + soa.length
        minimum = struct.unpack_from("!I", data, end - 4)[0] if soa.length >= 22 else 0
        ttl = min(ttl, soa.ttl, minimum)
    return Parsed(rcode, None, ttl, bool(flags & _AD))


def _rdata(data: bytes, rdtype: int, record: _Record) -> dns.rdata.Rdata:
    """dnspython's reader of this type, as ``dns.rdata.from_wire`` calls it (the whole
    message given, for compressed names; exactly ``length`` octets consumed)."""
    kind, cls = _rdata_class(rdtype)
    parser = dns.wire.Parser(data, record.start)
    with parser.restrict_to(record.length):
        return cls.from_wire_parser(_IN, kind, parser, None)


@functools.cache
def _rdata_class(rdtype: int) -> tuple[dns.rdatatype.RdataType, type[dns.rdata.Rdata]]:
    kind = dns.rdatatype.RdataType.make(rdtype)
    return kind, dns.rdata.get_rdata_class(_IN, kind)


def _record(data: bytes, offset: int) -> tuple[_Record, int]:
    owner, offset = _name(data, offset)
    rdtype, rdclass, ttl, length = _RR.unpack_from(data, offset)
    start = offset + 10
    if start + length > len(data):
        raise Malformed("record data runs past the end")
    return _Record(owner, rdtype, rdclass, ttl, start, length), start + length


def _name(data: bytes, offset: int) -> tuple[bytes, int]:
    """The name at ``offset`` as lower-case uncompressed wire, and the offset after it."""
    labels: list[bytes] = []
    size = 1
    after = -1
    limit = offset
    while True:
        length = data[offset]
        if length == 0:
            offset += 1
            break
        if length >= 0xC0:
            pointer = (length & 0x3F) << 8 | data[offset + 1]
            if after < 0:
                after = offset + 2
            if pointer >= limit:
                raise Malformed("bad compression pointer")
            limit = offset = pointer
            continue
        if length > 63:
            raise Malformed("unknown label type")
        size += length + 1
        if size > MAX_NAME:
            raise Malformed("name longer than 255 octets")
        end = offset + 1 + length
        if end > len(data):
            raise Malformed("name runs past the end")
        labels.append(data[offset:end])
        offset = end
    return b"".join(labels).lower() + b"\x00", after if after >= 0 else offset


def _closest_soa(data: bytes, soas: list[_Record], name: bytes) -> _Record | None:
    """The authority SOA owned by ``name`` or its nearest ancestor (as dnspython looks)."""
    if not soas:
        return None
    at = 0
    while True:
        suffix = name[at:]
        for soa in soas:
            if soa.owner == suffix:
                return soa
        if name[at] == 0:
            return None
        at += name[at] + 1
