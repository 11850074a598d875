"""Every consumer of header fields reads the same fields, From set and body start.

Five readers once disagreed on one crafted block: DKIM saw one header, ARC three, DMARC
two From lines, the stripper its own view and the scanner found the marking "in body".
These tests run each consumer on crafted header blocks and check what it *does* (what
it signs, verifies, strips, reports), never which parser it imports, so a consumer
switched back to a private parser fails here. The expectations are written out from the
rule (``securemail.core.message``): the header section ends at the first line that is
neither a field nor a continuation, and that line is the first line of the body.
"""

import asyncio
import base64
import hashlib
import re
from dataclasses import dataclass

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import CanonicalizationPolicy
from harness.crafted import CRAFTED
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.core.message import HeaderLimitError, read_headers
from securemail.core.sensitivity import Kind, scan_message
from securemail.dns import DnsNotFound
from securemail.gateway.inbound.auth import strip_own_headers
from securemail.gateway.queue.dsn import build_dsn
from securemail.mech.arc import ArcError, arc_seal, verify_arc
from securemail.mech.dkim import (
    SIGNED_HEADERS,
    DkimSigner,
    SigningKey,
    generate_key,
    verify_dkim,
)
from securemail.mech.dmarc import header_from_domain
from securemail.mech.results import MethodResult, Result, authentication_results

GATEWAY = "gw.example"
DOMAIN = "good.example"

TRUST = b"X-Securemail-Trust: secure"
OWN_AR = b"Authentication-Results: (forged) GW.Example 1; dkim=pass"
OTHER_AR = b"Authentication-Results: mx.other.example; spf=pass"
# What a header that only a signer or we could write looks like, below the header section.
BODY_PROBES = [
    b"From: b@evil.example",
    b"Subject: OFFICIAL-SENSITIVE",
    TRUST,
    b"DKIM-Signature: v=1; a=rsa-sha256; d=evil.example; s=x; h=from; bh=AAAA; b=AAAA",
    b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=evil.example; s=x; t=1; b=AAAA",
]
SIGNED = {name.lower().encode() for name in SIGNED_HEADERS}


@dataclass(frozen=True)
class Case:
    head: list[bytes]  # the lines that are the header section, one field each
    breaker: bytes | None  # the line that ends it and starts the body; None: an empty line
    rest: list[bytes]
    newline: bytes = b"\r\n"

    @property
    def raw(self) -> bytes:
        nl = self.newline
        lines = [*self.head, self.breaker if self.breaker is not None else b"", *self.rest]
        return nl.join(lines) + nl + nl + b"body" + nl

    @property
    def header_section(self) -> bytes:
        return b"".join(line + self.newline for line in self.head)

    @property
    def body(self) -> bytes:
        skip = len(self.newline) if self.breaker is None else 0
        return self.raw[len(self.header_section) + skip :]

    @property
    def names(self) -> list[bytes]:
        return [line.split(b":", 1)[0].rstrip(b" \t").lower() for line in self.head]


BLOCK = [b"From: a@good.example", TRUST, OWN_AR, OTHER_AR, b"To: c@nhs.net"]
CASES = {
    "bogus line": Case(BLOCK, b"Bogus line without colon", BODY_PROBES),
    "continuation before any field": Case([], b" folded before any field", BLOCK + BODY_PROBES),
    "space before colon": Case(
        [
            b"From : a@good.example",
            b"Subject\t: OFFICIAL-SENSITIVE",
            b"X-Securemail-Trust : secure",
            b"Authentication-Results :\r\n gw.example; dkim=pass",
            b"To: c@nhs.net",
        ],
        None,
        BODY_PROBES,
    ),
    "NUL in a name": Case(BLOCK, b"X-Fo\x00o: bar", BODY_PROBES),
    "LF-only lines": Case(BLOCK, b"Bogus line without colon", BODY_PROBES, newline=b"\n"),
    "mbox From_ line": Case(
        [], b"From b@evil.example Mon Jan  1 00:00:00 2024", BLOCK + BODY_PROBES
    ),
}
WELL_FORMED = {name for name, case in CASES.items() if case.breaker is None}


class ZoneResolver:
    """The gateway's resolver, answering TXT lookups from a dict."""

    def __init__(self, zone):
        self.zone = zone

    async def txt(self, name):
        if name not in self.zone:
            raise DnsNotFound(f"{name}: no TXT record")
        return [self.zone[name]]


@pytest.fixture(scope="module")
def dkim_key():
    pem, record = generate_key("ed25519")
    signer = DkimSigner({DOMAIN: SigningKey(DOMAIN, "sel", "ed25519-sha256", pem)})
    return signer, ZoneResolver({f"sel._domainkey.{DOMAIN}": record})


@pytest.fixture(scope="module")
def arc_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    return pem, ZoneResolver({f"arc._domainkey.{GATEWAY}": record})


def tags(header: bytes) -> dict[bytes, bytes]:
    value = header.split(b":", 1)[1]
    return {k: re.sub(rb"\s", b"", v) for k, v in dkim.util.parse_tag_value(value).items()}


def relaxed_body_hash(body: bytes) -> bytes:
    body = b"\r\n".join(re.split(rb"\r?\n", body))
    canonical = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed").canonicalize_body(body)
    return base64.b64encode(hashlib.sha256(canonical).digest())


# --- the crafted block from the report ----------------------------------------------------


async def test_the_crafted_block_reads_the_same_everywhere(dkim_key):
    signer, resolver = dkim_key
    block = read_headers(CRAFTED)
    assert [f.lname for f in block.fields] == [b"from"]
    assert header_from_domain(CRAFTED) == (DOMAIN, "")
    header = signer.sign(CRAFTED, DOMAIN)
    assert tags(header)[b"h"] == b"from:from"  # one From, oversigned; no Subject
    assert tags(header)[b"bh"] == relaxed_body_hash(CRAFTED[block.body_offset :])
    [verdict] = await verify_dkim(header + CRAFTED, resolver)
    assert verdict.result is Result.PASS
    evil = (header + CRAFTED).replace(b"b@evil", b"c@evil")
    [verdict] = await verify_dkim(evil, resolver)  # the second From is body
    assert (verdict.result, verdict.reason) == (Result.FAIL, "body hash did not verify")
    assert (await verify_arc(CRAFTED, resolver)).result is Result.NONE
    [marker] = scan_message(CRAFTED).markers
    assert (marker.kind, marker.where) == (Kind.MARKING, "body")
    assert strip_own_headers(CRAFTED, GATEWAY) == CRAFTED


# --- each consumer on each crafted variant --------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_dmarc_from(name):
    case = CASES[name]
    froms = case.names.count(b"from")
    expected = (DOMAIN, "") if froms == 1 else (None, "no From header")
    assert froms in (0, 1)
    assert header_from_domain(case.raw) == expected


@pytest.mark.parametrize("name", CASES)
async def test_dkim_signs_and_verifies_the_readers_fields_and_body(name, dkim_key):
    signer, resolver = dkim_key
    case = CASES[name]
    header = signer.sign(case.raw, DOMAIN)
    signed = [n for n in case.names if n in SIGNED] + [b"from"]
    assert tags(header)[b"h"] == b":".join(signed)
    assert tags(header)[b"bh"] == relaxed_body_hash(case.body)
    # The DKIM-Signature below the header section is body: nothing to verify.
    assert await verify_dkim(case.raw, resolver) == []
    if case.raw.startswith((b" ", b"\t")):
        return  # prepending a field would make the first line its continuation
    [verdict] = await verify_dkim(header + case.raw, resolver)
    assert (verdict.result, verdict.reason) == (Result.PASS, "")
    tampered = header + case.raw.replace(b"evil.example", b"evil.exampla")
    [verdict] = await verify_dkim(tampered, resolver)
    assert (verdict.result, verdict.reason) == (Result.FAIL, "body hash did not verify")
    if case.names:
        tampered = header + case.raw.replace(b"a@good", b"a@gooe", 1)
        [verdict] = await verify_dkim(tampered, resolver)
        assert (verdict.result, verdict.reason) == (Result.FAIL, "signature did not verify")


@pytest.mark.parametrize("name", CASES)
async def test_arc_sees_only_the_readers_fields(name, arc_key):
    pem, resolver = arc_key
    case = CASES[name]
    # The ARC-Seal below the header section is body: no chain at all.
    verdict = await verify_arc(case.raw, resolver)
    assert (verdict.result, verdict.reason) == (Result.NONE, "no ARC headers")
    results = authentication_results(GATEWAY, [MethodResult("dkim", Result.NONE)])

    def seal():
        return arc_seal(
            case.raw, domain=GATEWAY, selector="arc", private_pem=pem,
            authserv_id=GATEWAY, auth_results=results,
        )  # fmt: skip

    if name not in WELL_FORMED:
        with pytest.raises(ArcError, match="malformed header section: line"):
            seal()
        return
    sealed = seal() + results.encode() + case.raw
    verdict = await verify_arc(sealed, resolver)
    assert (verdict.result, verdict.instance) == (Result.PASS, 1), verdict.reason
    # The forged Authentication-Results claiming our authserv-id was not vouched for.
    aar = read_headers(sealed).first("ARC-Authentication-Results")
    assert b"dkim=pass" not in aar.unfolded


@pytest.mark.parametrize("name", CASES)
def test_sensitivity_scanner_finds_the_subject_where_the_reader_put_it(name):
    case = CASES[name]
    where = ["subject"] if b"subject" in case.names else []
    where.append("body")  # every case has a Subject line with the marking in its body
    markings = [m for m in scan_message(case.raw).markers if m.kind is Kind.MARKING]
    assert [(m.where, m.text) for m in markings] == [(w, "OFFICIAL-SENSITIVE") for w in where]


@pytest.mark.parametrize("name", CASES)
def test_strip_own_headers_strips_only_the_header_section(name):
    case = CASES[name]
    nl = case.newline
    own = (b"x-securemail-trust", b"authentication-results")
    kept = [
        line
        for line in case.head
        if not (line.split(b":")[0].rstrip().lower() in own and b"other" not in line)
    ]
    stripped = b"".join(line + nl for line in kept) + case.raw[len(case.header_section) :]
    assert strip_own_headers(case.raw, GATEWAY) == stripped
    assert (TRUST in stripped) == (TRUST in case.rest)  # the copy in the body stays
    assert (OTHER_AR in stripped) == (OTHER_AR in case.raw)


@pytest.mark.parametrize("name", CASES)
def test_dsn_returns_the_header_section_and_no_body(name):
    case = CASES[name]
    dsn = build_dsn(
        hostname=GATEWAY, sender="a@good.example", queue_id="Q1",
        failures=[("c@nhs.net", "550 no")], original=case.raw, arrival=0.0,
    )  # fmt: skip
    returned = dsn.split(b"Content-Type: text/rfc822-headers\r\n\r\n", 1)[1]
    assert returned.split(b"\r\n--=_securemail_Q1_", 1)[0] == case.header_section
    subject = "OFFICIAL-SENSITIVE" if b"subject" in case.names else ""
    assert f"Subject: {subject}\n".encode() in dsn.replace(b"\r\n", b"\n")


# --- the header limit -----------------------------------------------------------------


async def test_over_the_limit_everyone_refuses_to_read(dkim_key):
    signer, resolver = dkim_key
    raw = b"From: a@good.example\r\n" + TRUST + b"\r\n" + b"X-Filler: y\r\n" * 1000 + b"\r\nb"
    with pytest.raises(HeaderLimitError):
        read_headers(raw)
    assert header_from_domain(raw) == (
        None,
        "header section not read: more than 1000 header fields",
    )
    assert signer.sign(raw, DOMAIN) is None
    [verdict] = await verify_dkim(raw, resolver)
    assert (verdict.result, verdict.reason[:26]) == (Result.PERMERROR, "header section not read: m")
    assert (await verify_arc(raw, resolver)).result is Result.FAIL
    # Returned as it is: authenticate() then finds no usable From and decide() refuses it.
    assert strip_own_headers(raw, GATEWAY) == raw


# --- property: agreement on any message ------------------------------------------------

LINES = st.sampled_from(
    [
        b"From: a@good.example",
        b"From : b@evil.example",
        b"Subject: OFFICIAL-SENSITIVE",
        TRUST,
        OWN_AR,
        b" continued",
        b"",
        b"no colon here",
        b"From a@x.example Mon Jan  1 00:00:00 2024",
        b"X-Nul\x00: v",
        b"To: c@nhs.net",
    ]
)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(LINES, max_size=10), newline=st.sampled_from([b"\r\n", b"\n"]))
def test_consumers_agree_with_the_reader_on_any_message(dkim_key, lines, newline):
    signer, resolver = dkim_key
    raw = newline.join(lines) + newline + b"body" + newline
    block = read_headers(raw)
    lnames = [f.lname for f in block.fields]
    froms = [f.text.strip() for f in block.get_all("from")]

    domain, problem = header_from_domain(raw)
    if len(froms) == 1:
        assert domain == (froms[0].rpartition("@")[2] if " " not in froms[0] else None)
    else:
        assert (domain, problem) == (
            None,
            "more than one From header" if froms else "no From header",
        )

    h = tags(signer.sign(raw, DOMAIN))[b"h"]
    assert h == b":".join([n for n in lnames if n in SIGNED] + [b"from"])

    ours = {b"x-securemail-trust", b"authentication-results"}
    stripped = strip_own_headers(raw, GATEWAY)
    expected = b"".join(f.raw for f in block.fields if f.lname not in ours)
    assert stripped == expected + raw[block.header_end :]

    in_subject = any("OFFICIAL-SENSITIVE" in f.text for f in block.get_all("subject"))
    where = {m.where for m in scan_message(raw).markers if m.kind is Kind.MARKING}
    assert ("subject" in where) == in_subject

    assert asyncio.run(verify_arc(raw, resolver)).result is Result.NONE
