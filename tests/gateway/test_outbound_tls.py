"""Delivery's TLS failures, typed: real TLS servers, the RFC 8460 type in the Result.

Each case is a real STARTTLS server (aiosmtpd, a trustme CA) behind a real MX record;
the Deliverer with its default policy chain is the client. A refused connection never
carries a message byte, whatever the failure.
"""

import datetime as dt
import ssl
from dataclasses import dataclass

import pytest
from harness.gatewaykit import add_mx
from harness.smtpsink import SinkServer

from securemail.core.levels import TlsFailure, TlsLevel
from securemail.core.transport import StsMode, TransportFacts, decide_transport
from securemail.dns import Resolver
from securemail.gateway.outbound.client import TlsFacts, handshake_failure
from securemail.gateway.outbound.deliver import Deliverer, Item
from securemail.gateway.outbound.policy import (
    Accepted,
    ForcedTls,
    PolicyChain,
    Refusal,
    default_policy,
)
from securemail.tls import opportunistic_client_context, verified_client_context

pytestmark = pytest.mark.timeout(60)

MX = "mx.nhs.net"
BODY = b"Subject: letter\r\n\r\nconfidential clinical letter body\r\n"
PAST = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)


def deliverer(dns_server, pki, port, policy=None):
    add_mx(dns_server, "nhs.net", MX)
    return Deliverer(
        Resolver([dns_server.nameserver], timeout=5),
        helo="mail.example.nhs.uk",
        port=port,
        verified=verified_client_context(pki.ca_file),
        opportunistic=opportunistic_client_context(),
        policy=policy,
    )


async def deliver(d, level, rcpt="gp@nhs.net"):
    facts = TransportFacts(level, why="secure recipient" if level.forced else "")
    try:
        return await d.deliver("nhs.net", facts, [Item("Q1", "jo@example.nhs.uk", (rcpt,), BODY)])
    finally:
        await d.close()


def tls12_only_rsa_kx(pki):
    """A server whose only cipher the NCSC client list refuses: a plain handshake failure."""
    ctx = pki.server_context(MX)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("AES128-SHA256")
    return ctx


SERVERS = {
    "no STARTTLS": (lambda pki: None, TlsFailure.STARTTLS_NOT_SUPPORTED),
    "wrong name": (lambda pki: pki.server_context("mx.other.test"),
                   TlsFailure.CERTIFICATE_HOST_MISMATCH),
    "expired": (lambda pki: pki.server_context(MX, not_before=PAST - dt.timedelta(days=30),
                                                not_after=PAST), TlsFailure.CERTIFICATE_EXPIRED),
    "untrusted CA": (lambda pki: pki.server_context(MX, trusted=False),
                     TlsFailure.CERTIFICATE_NOT_TRUSTED),
    "no shared cipher": (tls12_only_rsa_kx, TlsFailure.VALIDATION_FAILURE),
}  # fmt: skip


@pytest.mark.parametrize("case", SERVERS)
async def test_forced_tls_failure_type_reaches_the_result(case, dns_server, pki):
    make_context, failure = SERVERS[case]
    with SinkServer(hostname=MX, tls_context=make_context(pki)) as sink:
        [result] = await deliver(deliverer(dns_server, pki, sink.port), TlsLevel.VERIFIED)
        assert sink.sessions, "the server was never reached"
    assert (result.delivered, result.permanent) == (False, False)  # deferred, retried
    assert result.tls_failure is failure
    assert result.verified_by == ""
    assert sink.messages == [] and b"MAIL FROM" not in bytes(sink.plaintext)


@pytest.mark.parametrize("level", [TlsLevel.VERIFIED, TlsLevel.MTA_STS, TlsLevel.DANE])
async def test_verified_peer_names_the_check(level, dns_server, pki):
    with SinkServer(hostname=MX, tls_context=pki.server_context(MX)) as sink:
        [result] = await deliver(deliverer(dns_server, pki, sink.port), level)
        [received] = sink.wait(1)
    assert result.delivered and result.tls_failure is None
    assert result.verified_by == "pkix:mx-hostname"
    assert received.tls_version in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("case", ["no STARTTLS", "wrong name", "expired", "untrusted CA"])
async def test_opportunistic_delivers_unverified(case, dns_server, pki):
    make_context, _ = SERVERS[case]
    context = make_context(pki)
    with SinkServer(hostname=MX, tls_context=context) as sink:
        [result] = await deliver(deliverer(dns_server, pki, sink.port), TlsLevel.OPPORTUNISTIC)
        [received] = sink.wait(1)
    assert result.delivered and result.tls_failure is None and result.verified_by == ""
    assert (received.tls_version is None) == (context is None)


async def test_opportunistic_handshake_failure_is_no_tls_failure(dns_server, pki):
    """Opportunistic TLS demands nothing, so a broken handshake is an ordinary deferral
    (no delay notice, nothing for TLS-RPT), as before typed failures."""
    with SinkServer(hostname=MX, tls_context=tls12_only_rsa_kx(pki)) as sink:
        [result] = await deliver(deliverer(dns_server, pki, sink.port), TlsLevel.OPPORTUNISTIC)
    assert (result.delivered, result.permanent, result.tls_failure) == (False, False, None)
    assert "TLS handshake with" in result.detail and sink.messages == []


# --- the chain: links plug in without the Deliverer knowing ------------------------------


UNVERIFIED = Accepted()


@dataclass
class Link:
    """A scripted link recording what it was asked (the levels it saw)."""

    prepare_to: TransportFacts | Refusal | None = None
    mx_to: TlsLevel | Refusal | None = None
    conn: Accepted | Refusal = UNVERIFIED

    def __post_init__(self):
        self.asked: list[tuple] = []

    async def prepare(self, domain, facts):
        self.asked.append(("prepare", domain, facts.recipient, facts.sts_mode))
        return facts if self.prepare_to is None else self.prepare_to

    async def check_mx(self, domain, mx, decision):
        self.asked.append(("check_mx", domain, mx, decision.level))
        return decision.level if self.mx_to is None else self.mx_to

    def handshake(self, domain, mx, decision):
        return None  # no opinion: the chain's default for the level

    async def check_conn(self, domain, mx, facts, decision):
        self.asked.append(("check_conn", domain, mx, decision.level))
        return self.conn


async def test_a_link_raises_the_level_and_names_its_check(dns_server, pki):
    enforce = TransportFacts(TlsLevel.OPPORTUNISTIC, sts_mode=StsMode.ENFORCE, sts_id="1")
    sts = Link(prepare_to=enforce, conn=Accepted("mta-sts:enforce"))
    after = Link()
    chain = PolicyChain([ForcedTls(), sts, after])
    with SinkServer(hostname=MX, tls_context=pki.server_context(MX)) as sink:
        d = deliverer(dns_server, pki, sink.port, chain)
        [result] = await deliver(d, TlsLevel.OPPORTUNISTIC)
        sink.wait(1)
    assert result.delivered and result.verified_by == "mta-sts:enforce"
    assert result.transport == "tls=required (MTA-STS enforce, id=1)"
    assert after.asked == [
        ("prepare", "nhs.net", TlsLevel.OPPORTUNISTIC, StsMode.ENFORCE),  # facts, not levels
        ("check_mx", "nhs.net", MX, TlsLevel.MTA_STS),
        ("check_conn", "nhs.net", MX, TlsLevel.MTA_STS),
    ]


async def test_a_link_cannot_lower_the_level(dns_server, pki):
    # A link that rewrote the message's own facts (the recipient's level) is overruled.
    lax = Link(prepare_to=TransportFacts(TlsLevel.OPPORTUNISTIC), mx_to=TlsLevel.NONE)
    with SinkServer(hostname=MX) as plain:  # no STARTTLS
        d = deliverer(dns_server, pki, plain.port, PolicyChain([lax, ForcedTls()]))
        [result] = await deliver(d, TlsLevel.VERIFIED)
    assert result.tls_failure is TlsFailure.STARTTLS_NOT_SUPPORTED and plain.messages == []


@pytest.mark.parametrize("permanent", [False, True])
async def test_a_refusing_link_stops_delivery_before_connecting(permanent, dns_server, pki):
    detail = f"{MX} is not in the MTA-STS policy"
    no_mx = Refusal(TlsFailure.STS_POLICY_INVALID, detail, permanent=permanent)
    with SinkServer(hostname=MX, tls_context=pki.server_context(MX)) as sink:
        d = deliverer(dns_server, pki, sink.port, PolicyChain([ForcedTls(), Link(mx_to=no_mx)]))
        [result] = await deliver(d, TlsLevel.VERIFIED)
        assert sink.sessions == []
    assert (result.delivered, result.permanent) == (False, permanent)  # bounce or retry
    assert result.tls_failure is TlsFailure.STS_POLICY_INVALID
    assert f"{MX} is not in the MTA-STS policy" in result.detail


async def test_a_refusal_at_prepare_covers_every_recipient(dns_server, pki):
    fetch = Refusal(TlsFailure.STS_POLICY_FETCH_ERROR, "policy fetch failed", check="mta-sts")
    d = deliverer(dns_server, pki, 9, PolicyChain([Link(prepare_to=fetch), ForcedTls()]))
    items = [Item(f"Q{n}", "jo@example.nhs.uk", ("a@nhs.net", "b@nhs.net"), BODY) for n in (1, 2)]
    results = await d.deliver("nhs.net", TransportFacts(TlsLevel.VERIFIED), items)
    assert [(r.queue_id, r.rcpt) for r in results] == [
        ("Q1", "a@nhs.net"), ("Q1", "b@nhs.net"), ("Q2", "a@nhs.net"), ("Q2", "b@nhs.net")
    ]  # fmt: skip
    assert {(r.tls_failure, r.detail, r.delivered) for r in results} == {
        (TlsFailure.STS_POLICY_FETCH_ERROR, "policy fetch failed", False)
    }


# --- the rule and the mapping in isolation ------------------------------------------------

PEER = "mx.nhs.net[192.0.2.7]:25"


@pytest.mark.parametrize(
    ("facts", "level", "expected"),
    [
        (TlsFacts(PEER, False), TlsLevel.OPPORTUNISTIC, Accepted()),
        (TlsFacts(PEER, True, "TLSv1.3"), TlsLevel.OPPORTUNISTIC, Accepted()),
        (TlsFacts(PEER, True, "TLSv1.3", verified=True), TlsLevel.VERIFIED,
         Accepted("pkix:mx-hostname")),
        (TlsFacts(PEER, False), TlsLevel.VERIFIED,
         Refusal(TlsFailure.STARTTLS_NOT_SUPPORTED,
                 f"TLS is required but {PEER} did not offer STARTTLS", check="forced-tls")),
        (TlsFacts(PEER, True, failure=TlsFailure.CERTIFICATE_EXPIRED, error="expired"),
         TlsLevel.DANE, Refusal(TlsFailure.CERTIFICATE_EXPIRED, "expired", check="forced-tls")),
        (TlsFacts(PEER, True, "TLSv1.3"), TlsLevel.MTA_STS,  # encrypted, not verified
         Refusal(TlsFailure.VALIDATION_FAILURE,
                 f"TLS is required but the certificate of {PEER} was not verified",
                 check="forced-tls")),
    ],
)  # fmt: skip
async def test_forced_tls_rule(facts, level, expected):
    decision = decide_transport(TransportFacts(level, why="secure recipient"))
    assert await ForcedTls().check_conn("nhs.net", MX, facts, decision) == expected
    assert await default_policy().check_conn("nhs.net", MX, facts, decision) == expected


@pytest.mark.parametrize(
    ("code", "failure"),
    [
        (10, TlsFailure.CERTIFICATE_EXPIRED),
        (62, TlsFailure.CERTIFICATE_HOST_MISMATCH),
        (18, TlsFailure.CERTIFICATE_NOT_TRUSTED),
        (19, TlsFailure.CERTIFICATE_NOT_TRUSTED),
        (20, TlsFailure.CERTIFICATE_NOT_TRUSTED),
        (9, TlsFailure.VALIDATION_FAILURE),  # not yet valid: RFC 8460 has no better type
    ],
)
def test_verify_codes_map_to_rfc8460_types(code, failure):
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = code
    assert handshake_failure(exc) is failure
    assert handshake_failure(ssl.SSLError(1, "handshake failure")) is TlsFailure.VALIDATION_FAILURE
    assert handshake_failure(ConnectionResetError()) is TlsFailure.VALIDATION_FAILURE
