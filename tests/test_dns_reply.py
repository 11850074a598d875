"""securemail.dns.reply: the reply reader, against dnspython's own reading of the same
bytes, and against hostile bytes (which must raise ``Malformed``, never anything else)."""

import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.dns.reply import MAX_CHAIN, NEGATIVE_TTL_WITHOUT_SOA, Malformed, parse


def question(name: str, rdtype: str) -> tuple[dns.message.QueryMessage, bytes, int]:
    query = dns.message.make_query(name, rdtype, use_edns=0, want_dnssec=True, payload=1232)
    qname = dns.name.from_text(name).to_wire().lower()
    return query, qname, dns.rdatatype.from_text(rdtype)


def read(response: dns.message.Message, qname: bytes, rdtype: int):
    wire = response.to_wire()
    return parse(wire, 12 + len(qname) + 4, qname, rdtype)


def rrset(name, rdtype, *texts, ttl=300):
    return dns.rrset.from_text(name, ttl, "IN", rdtype, *texts)


def agrees_with_dnspython(response: dns.message.Message, qname: bytes, rdtype: int):
    """Our reading and dnspython's (from_wire + resolve_chaining) of the same bytes."""
    ours = read(response, qname, rdtype)
    theirs = dns.message.from_wire(response.to_wire())
    chain = theirs.resolve_chaining()
    assert ours.rcode == theirs.rcode()
    assert ours.ttl == chain.minimum_ttl
    assert ours.ad == bool(theirs.flags & dns.flags.AD)
    if chain.answer is None:
        assert ours.records is None
    else:
        assert ours.records is not None
        assert sorted(r.to_text() for r in ours.records) == sorted(
            r.to_text() for r in chain.answer
        )
    return ours


def test_plain_answer_with_compression_and_ad():
    query, qname, rdtype = question("Mail.Example.test", "MX")
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AD
    response.answer.append(
        rrset("mail.example.test.", "MX", "10 mx1.example.test.", "20 mx2.example.test.", ttl=120)
    )
    ours = agrees_with_dnspython(response, qname, rdtype)
    assert ours.ad
    assert ours.ttl == 120
    # The targets were compressed against the question, so they share its case.
    assert sorted(r.to_text().lower() for r in ours.records) == [
        "10 mx1.example.test.",
        "20 mx2.example.test.",
    ]


def test_cname_chain_takes_the_smallest_ttl():
    query, qname, rdtype = question("a.test", "A")
    response = dns.message.make_response(query)
    response.answer.append(rrset("a.test.", "CNAME", "b.test.", ttl=50))
    response.answer.append(rrset("b.test.", "CNAME", "C.test.", ttl=500))
    response.answer.append(rrset("c.test.", "A", "192.0.2.1", "192.0.2.2", ttl=200))
    ours = agrees_with_dnspython(response, qname, rdtype)
    assert ours.ttl == 50
    assert len(ours.records) == 2


def test_chain_not_ending_in_the_type_is_nodata_with_soa_ttl():
    query, qname, rdtype = question("a.test", "TXT")
    response = dns.message.make_response(query)
    response.answer.append(rrset("a.test.", "CNAME", "b.test.", ttl=500))
    response.authority.append(rrset("test.", "SOA", "ns. host. 1 2 3 4 30", ttl=400))
    ours = agrees_with_dnspython(response, qname, rdtype)
    assert ours.records is None
    assert ours.ttl == 30


@pytest.mark.parametrize("soa_owner", ["x.y.test.", "y.test.", "test.", "other.example."])
def test_nxdomain_negative_ttl_from_the_closest_soa(soa_owner):
    query, qname, rdtype = question("x.y.test", "A")
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.NXDOMAIN)
    response.authority.append(rrset(soa_owner, "SOA", "ns. host. 1 2 3 4 45", ttl=900))
    ours = agrees_with_dnspython(response, qname, rdtype)
    expected = NEGATIVE_TTL_WITHOUT_SOA if soa_owner == "other.example." else 45
    assert ours.ttl == expected
    assert ours.rcode == dns.rcode.NXDOMAIN


def test_records_of_other_names_types_and_sections_are_ignored():
    query, qname, rdtype = question("a.test", "A")
    response = dns.message.make_response(query)
    response.answer.append(rrset("other.test.", "A", "192.0.2.9"))
    response.answer.append(rrset("a.test.", "AAAA", "::1"))
    response.answer.append(rrset("a.test.", "A", "192.0.2.1"))
    response.additional.append(rrset("a.test.", "A", "192.0.2.66"))
    ours = agrees_with_dnspython(response, qname, rdtype)
    assert [r.to_text() for r in ours.records] == ["192.0.2.1"]


def test_extended_rcode_from_opt():
    query, qname, rdtype = question("a.test", "A")
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.BADVERS)
    assert read(response, qname, rdtype).rcode == dns.rcode.BADVERS


# --- hostile bytes ---------------------------------------------------------------------------


def _header(ancount=1, nscount=0, arcount=0, flags=0x8180):
    return struct.pack("!HHHHHH", 1, flags, 1, ancount, nscount, arcount)


QNAME = b"\x01a\x04test\x00"
QUESTION = QNAME + struct.pack("!HH", 1, 1)
START = 12 + len(QUESTION)


def _rr(owner: bytes, rdata: bytes, rdtype=1, ttl=60):
    return owner + struct.pack("!HHIH", rdtype, 1, ttl, len(rdata)) + rdata


def test_duplicate_records_are_kept_once():
    # Two identical RRs (dnspython's message builder would have merged them).
    txt = QNAME + struct.pack("!HH", 16, 1)
    body = _header(ancount=2) + txt + _rr(b"\xc0\x0c", b"\x04same", rdtype=16) * 2
    parsed = parse(body, START, QNAME, 16)
    assert [r.to_text() for r in parsed.records] == ['"same"']


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (
            _header() + QUESTION + _rr(struct.pack("!H", 0xC000 | START), b"\x7f\x00\x00\x01"),
            "pointer",
        ),
        (_header() + QUESTION + _rr(b"\xc0\x40", b"\x7f\x00\x00\x01"), "pointer"),  # forwards
        (_header() + QUESTION + b"\x80abc", "label"),
        (
            _header()
            + QUESTION
            + _rr(
                b"\x3f"
                + b"a" * 63
                + b"\x3f"
                + b"b" * 63
                + b"\x3f"
                + b"c" * 63
                + b"\x3f"
                + b"d" * 63
                + b"\x00",
                b"",
            ),
            "255",
        ),
        (_header() + QUESTION + _rr(b"\xc0\x0c", b"\x7f\x00\x00\x01")[:-2], "short"),
        (_header() + QUESTION + _rr(b"\xc0\x0c", b"\x7f\x00\x00\x01") + b"junk", "trailing"),
        (_header(ancount=3) + QUESTION + _rr(b"\xc0\x0c", b"\x7f\x00\x00\x01"), "short"),
        (_header(flags=0x8183) + QUESTION + _rr(b"\xc0\x0c", b"\x7f\x00\x00\x01"), "NXDOMAIN"),
        (_header(ancount=0, arcount=2) + QUESTION + _rr(b"\x00", b"", rdtype=41) * 2, "OPT"),
        (_header() + QUESTION + _rr(b"\xc0\x0c", b"\x7f\x00\x01"), "A"),  # A of 3 octets
    ],
)
def test_hostile_replies_are_malformed(body, why):
    with pytest.raises(Malformed):
        parse(body, START, QNAME, 1)


def test_pointer_loop_inside_record_data_is_malformed():
    # A CNAME whose target points at itself: dnspython must refuse it, not loop.
    at = START + 2 + 10
    cname = _rr(b"\xc0\x0c", struct.pack("!H", 0xC000 | at), rdtype=5)
    with pytest.raises(Malformed):
        parse(_header() + QUESTION + cname, START, QNAME, 1)


def test_cname_chain_too_long_is_malformed():
    query, qname, rdtype = question("c0.test", "A")
    response = dns.message.make_response(query)
    for i in range(MAX_CHAIN + 2):
        response.answer.append(rrset(f"c{i}.test.", "CNAME", f"c{i + 1}.test."))
    with pytest.raises(Malformed, match="CNAME chain too long"):
        read(response, qname, rdtype)


def test_cname_loop_is_nodata_or_malformed_never_a_hang():
    query, qname, rdtype = question("x.test", "A")
    response = dns.message.make_response(query)
    response.answer.append(rrset("x.test.", "CNAME", "y.test."))
    response.answer.append(rrset("y.test.", "CNAME", "x.test."))
    with pytest.raises(Malformed):
        read(response, qname, rdtype)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 5), st.integers(0, 5), st.integers(0, 5))
def test_garbage_after_the_question_raises_only_malformed(tail, an, ns, ar):
    body = _header(an, ns, ar) + QUESTION + tail
    try:
        parsed = parse(body, START, QNAME, 1)
    except Malformed:
        return
    assert parsed.records is None or all(r.rdtype == 1 for r in parsed.records)
