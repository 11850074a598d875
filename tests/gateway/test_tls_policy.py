"""The per-destination TLS policy map: parsing, lookup, name patterns, the link, config.

The pattern tables follow Postfix's ``smtp_tls_policy_test.c``: for every pattern, names
that must be accepted AND names that must be refused (a matcher that accepts everything
passes a permit-only table). The Deliverer cases use real STARTTLS servers.
"""

import dataclasses

import pytest
from harness.gatewaykit import add_mx
from harness.smtpsink import SinkServer

from securemail.config import load_config
from securemail.core.levels import TlsFailure, TlsLevel
from securemail.core.transport import TransportFacts, decide_transport
from securemail.dns import Resolver
from securemail.errors import ConfigError
from securemail.gateway.events import Lifecycle, MemorySink
from securemail.gateway.outbound.client import TlsFacts
from securemail.gateway.outbound.deliver import Deliverer, Item
from securemail.gateway.outbound.policy import Accepted, Handshake, Refusal, default_policy
from securemail.gateway.outbound.tls_policy import (
    PolicyError,
    PolicyLevel,
    PolicyMap,
    TlsPolicyMap,
    parse_policy,
)
from securemail.tls import (
    opportunistic_client_context,
    pinned_client_context,
    verified_client_context,
)

pytestmark = pytest.mark.timeout(60)

# --- match patterns: permit AND reject, per pattern ---------------------------------------

# (policy, recipient domain, certificate names that satisfy it, names that must not)
PATTERNS = [
    ("secure match=nexthop", "nhs.net",
     [("nhs.net",), ("NHS.Net.",), ("other.test", "nhs.net")],
     [("mx.nhs.net",), ("*.nhs.net",), ("evilnhs.net",), ("nhs.net.evil.test",), ("*.net",),
      ()]),
    ("secure match=dot-nexthop", "nhs.net",
     [("mx.nhs.net",), ("a.b.nhs.net",), ("*.nhs.net",), ("*.mx.nhs.net",), ("MX.NHS.NET.",)],
     [("nhs.net",), ("evilnhs.net",), ("mx.evilnhs.net",), ("mx.nhs.net.evil.test",),
      ("*.net",), ("*.evilnhs.net",), ("m*.nhs.net",), ("*",), ("mx.attacker.test",), ()]),
    ("secure", "nhs.net",  # Postfix's default for secure: nexthop:dot-nexthop
     [("nhs.net",), ("mx.nhs.net",)],
     [("evilnhs.net",), ("mx.attacker.test",)]),
    ("verify match=mx1.partner.example:mx2.partner.example", "partner.example",
     [("mx1.partner.example",), ("mx2.partner.example",), ("*.partner.example",)],
     [("partner.example",), ("mx3.partner.example",), ("a.mx1.partner.example",),
      ("*.mx1.partner.example",), ("mx1.partner.example.evil.test",), ("*.example",)]),
    ("verify match=.nhs.net", "trust.nhs.net",
     [("mx.nhs.net",), ("mx.trust.nhs.net",), ("*.nhs.net",)],
     [("nhs.net",), ("evilnhs.net",), ("nhs.net.evil.test",), ("trust.nhs.net.evil.test",)]),
    ("secure match=nexthop:.relay.example", "nhs.net",
     [("nhs.net",), ("mx.relay.example",)],
     [("mx.nhs.net",), ("relay.example",), ("mx.relay.example.evil.test",)]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "domain", "permit", "reject"), PATTERNS)
def test_match_patterns_permit_and_reject(text, domain, permit, reject):
    policy = parse_policy(domain, text)
    assert policy.pinned
    for names in permit:
        assert policy.matching(domain, names) is not None, names
    for names in reject:
        assert policy.matching(domain, names) is None, names


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "text", "destination", "level", "written"),
    [
        ("nhs.net", "secure match=nexthop:dot-nexthop", "nhs.net", PolicyLevel.SECURE,
         "secure match=nexthop:dot-nexthop"),
        ("NHS.net.", "secure", "nhs.net", PolicyLevel.SECURE, "secure match=nexthop:dot-nexthop"),
        (".nhs.net", "  verify   match=.NHS.net ", ".nhs.net", PolicyLevel.VERIFY,
         "verify match=.nhs.net"),
        ("partner.example", "VERIFY MATCH=mx1.partner.example:mx2.partner.example",
         "partner.example", PolicyLevel.VERIFY,
         "verify match=mx1.partner.example:mx2.partner.example"),
        ("partner.example", "verify", "partner.example", PolicyLevel.VERIFY, "verify"),
        ("legacy.example", "may", "legacy.example", PolicyLevel.MAY, "may"),
        ("broken.example", "none", "broken.example", PolicyLevel.NONE, "none"),
    ],
)  # fmt: skip
def test_policies_parse_to_typed_records(key, text, destination, level, written):
    policy = parse_policy(key, text)
    assert (policy.destination, policy.level, str(policy)) == (destination, level, written)
    assert policy.pinned == ("match=" in written)
    assert policy.forces == (level in (PolicyLevel.VERIFY, PolicyLevel.SECURE))


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("nhs.net", "", "empty policy"),
        ("nhs.net", "encrypt", "encrypt (TLS that authenticates no one) is not supported"),
        ("nhs.net", "dane-only", "not supported here yet"),
        ("nhs.net", "strict", "unknown level 'strict'"),
        ("nhs.net", "secure ciphers=high", "unknown attribute 'ciphers'"),
        ("nhs.net", "secure nexthop", "expected NAME=VALUE"),
        ("nhs.net", "secure match=nexthop match=dot-nexthop", "match= given twice"),
        ("nhs.net", "may match=nexthop", "match= applies to verify and secure, not may"),
        ("nhs.net", "none match=.nhs.net", "not none"),
        ("nhs.net", "secure match=", "empty match= pattern"),
        ("nhs.net", "secure match=nexthop::dot-nexthop", "empty match= pattern"),
        ("nhs.net", "verify match=hostname", "match=hostname trusts the MX name from DNS"),
        ("nhs.net", "secure match=*.nhs.net", "use .example.org to match its subdomains"),
        ("nhs.net", "secure match=localhost", "match pattern 'localhost'"),
        ("*.nhs.net", "secure", "wildcards are not destinations"),
        ("[127.0.0.1]", "secure", "IP-literal"),
        ("nhs", "secure", "no dot"),
    ],
)
def test_bad_policies_are_refused_with_a_reason(key, text, message):
    with pytest.raises(PolicyError) as info:
        parse_policy(key, text)
    assert message in str(info.value) and info.value.key == key


def test_one_destination_written_twice_is_refused():
    with pytest.raises(PolicyError, match=r"the same destination as 'nhs\.net'") as info:
        TlsPolicyMap.parse({"nhs.net": "secure", "NHS.NET": "verify"})
    assert info.value.key == "NHS.NET"


@pytest.mark.parametrize(
    ("domain", "found"),
    [
        ("nhs.net", "nhs.net"),
        ("NHS.Net.", "nhs.net"),
        ("trust.nhs.net", ".nhs.net"),
        ("a.b.trust.nhs.net", ".trust.nhs.net"),  # the nearest parent wins
        ("evilnhs.net", None),
        ("nhs.net.evil.test", None),
        ("example.org", None),  # ".example.org" is its subdomains only
        ("a.b.example.org", ".example.org"),
    ],
)
def test_lookup_is_exact_then_nearest_parent(domain, found):
    policies = TlsPolicyMap.parse(
        {"nhs.net": "secure", ".nhs.net": "verify", ".trust.nhs.net": "may",
         ".example.org": "verify"}
    )  # fmt: skip
    policy = policies.lookup(domain)
    assert (policy.destination if policy else None) == found


# --- the link ---------------------------------------------------------------------------------

PEER = "mx.attacker.test[192.0.2.7]:25"
MAP = TlsPolicyMap.parse(
    {"nhs.net": "secure match=nexthop:dot-nexthop", "partner.example": "verify",
     "legacy.example": "may", "broken.example": "none"}
)  # fmt: skip


VERIFIED = decide_transport(TransportFacts(TlsLevel.VERIFIED, why="secure recipient"))


def chain_verified(*names):
    return TlsFacts(PEER, True, "TLSv1.3", chain_verified=True, names=names)


@pytest.mark.parametrize(
    ("domain", "level", "expected"),
    [
        ("nhs.net", TlsLevel.OPPORTUNISTIC, TlsLevel.VERIFIED),  # the map forces TLS
        ("partner.example", TlsLevel.OPPORTUNISTIC, TlsLevel.VERIFIED),
        ("nhs.net", TlsLevel.DANE, TlsLevel.DANE),  # never lowers
        ("legacy.example", TlsLevel.OPPORTUNISTIC, TlsLevel.OPPORTUNISTIC),
        ("legacy.example", TlsLevel.VERIFIED, TlsLevel.VERIFIED),
        ("broken.example", TlsLevel.VERIFIED, TlsLevel.VERIFIED),
        ("unlisted.example", TlsLevel.OPPORTUNISTIC, TlsLevel.OPPORTUNISTIC),
    ],
)
async def test_the_map_raises_levels_and_never_lowers_them(domain, level, expected):
    decision = await default_policy(PolicyMap(MAP)).prepare(domain, TransportFacts(level))
    assert decision.level == expected


async def test_the_map_entry_is_named_among_the_decisions_reasons():
    decision = await default_policy(PolicyMap(MAP)).prepare(
        "nhs.net", TransportFacts(TlsLevel.OPPORTUNISTIC)
    )
    assert decision.label == "tls=required (tls_policy nhs.net = secure match=nexthop:dot-nexthop)"


async def test_a_weaker_entry_for_forced_mail_is_logged_once_and_kept():
    events = MemorySink()
    link = PolicyMap(MAP, events)
    forced = TransportFacts(TlsLevel.VERIFIED, why="secure recipient")
    for _ in range(3):
        facts = await link.prepare("broken.example", forced)
        assert facts.map_forces is False and facts.map_entry == "broken.example = none"
        assert decide_transport(facts).level is TlsLevel.VERIFIED
    [warning] = events.of(Lifecycle)
    assert warning.warning and "'broken.example' = 'none' ignored" in warning.message
    ordinary = await link.prepare("broken.example", TransportFacts(TlsLevel.OPPORTUNISTIC))
    assert decide_transport(ordinary).level is TlsLevel.OPPORTUNISTIC
    assert len(events.events) == 1


@pytest.mark.parametrize(
    ("domain", "level", "handshake"),
    [
        ("nhs.net", TlsLevel.VERIFIED, Handshake.PKIX_CHAIN),
        ("partner.example", TlsLevel.VERIFIED, Handshake.PKIX_MX_HOSTNAME),  # as today
        ("unlisted.example", TlsLevel.VERIFIED, Handshake.PKIX_MX_HOSTNAME),
        ("legacy.example", TlsLevel.OPPORTUNISTIC, Handshake.OPPORTUNISTIC),
        ("broken.example", TlsLevel.OPPORTUNISTIC, Handshake.PLAINTEXT),
        ("broken.example", TlsLevel.VERIFIED, Handshake.PKIX_MX_HOSTNAME),  # kept forced
    ],
)
def test_the_chain_picks_the_handshake(domain, level, handshake):
    decision = decide_transport(TransportFacts(level))
    assert default_policy(PolicyMap(MAP)).handshake(domain, "mx.x.test", decision) is handshake


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (chain_verified("mx.nhs.net"), Accepted("pkix:policy-match(.nhs.net)")),
        (chain_verified("nhs.net"), Accepted("pkix:policy-match(nhs.net)")),
        (chain_verified("mx.attacker.test"),
         Refusal(TlsFailure.CERTIFICATE_HOST_MISMATCH,
                 f"the certificate of {PEER} names mx.attacker.test, but the TLS policy for "
                 "nhs.net requires match=nexthop:dot-nexthop", check="tls-policy")),
        (TlsFacts(PEER, True, failure=TlsFailure.CERTIFICATE_NOT_TRUSTED, error="untrusted"),
         Refusal(TlsFailure.CERTIFICATE_NOT_TRUSTED, "untrusted", check="forced-tls")),
        (TlsFacts(PEER, False),
         Refusal(TlsFailure.STARTTLS_NOT_SUPPORTED,
                 f"TLS is required but {PEER} did not offer STARTTLS", check="forced-tls")),
    ],
)  # fmt: skip
async def test_a_pinned_destination_accepts_only_matching_names(facts, expected):
    chain = default_policy(PolicyMap(MAP))
    assert await chain.check_conn("nhs.net", "mx.attacker.test", facts, VERIFIED) == expected


async def test_a_chain_only_handshake_nobody_matched_is_refused():
    """Without the link that asked for it, a verified chain for any name is not enough."""
    verdict = await default_policy().check_conn(
        "nhs.net", "mx.nhs.net", chain_verified("mx.attacker.test"), VERIFIED
    )
    assert isinstance(verdict, Refusal) and verdict.failure is TlsFailure.VALIDATION_FAILURE


# --- the Deliverer with the map: real STARTTLS servers ---------------------------------------

BODY = b"Subject: letter\r\n\r\nconfidential clinical letter body\r\n"


def deliverer(dns_server, pki, port, policies):
    return Deliverer(
        Resolver([dns_server.nameserver], timeout=5),
        helo="mail.example.nhs.uk",
        port=port,
        verified=verified_client_context(pki.ca_file),
        pinned=pinned_client_context(pki.ca_file),
        opportunistic=opportunistic_client_context(),
        tls_policy=TlsPolicyMap.parse(policies),
    )


def test_a_pinned_map_without_the_pinned_context_fails_at_startup(dns_server, pki):
    with pytest.raises(ValueError, match="needs the pinned TLS context"):
        Deliverer(
            Resolver([dns_server.nameserver], timeout=5),
            helo="mail.example.nhs.uk",
            port=25,
            verified=verified_client_context(pki.ca_file),
            opportunistic=opportunistic_client_context(),
            tls_policy=TlsPolicyMap.parse({"nhs.net": "secure"}),
        )


async def test_a_connection_is_not_reused_for_another_domain(dns_server, pki):
    """The pool is keyed by domain: a spoofed MX that is fine for an unpinned domain must
    not carry the pinned domain's mail over the connection it already holds."""
    add_mx(dns_server, "spoofed.example", "mx.attacker.test")
    add_mx(dns_server, "nhs.net", "mx.attacker.test")
    context = pki.server_context("mx.attacker.test")
    with SinkServer(hostname="mx.attacker.test", tls_context=context) as sink:
        d = deliverer(dns_server, pki, sink.port, {"nhs.net": "secure"})
        try:
            [first] = await d.deliver("spoofed.example", TransportFacts(TlsLevel.VERIFIED),
                                      [Item("Q1", "jo@example.nhs.uk", ("a@spoofed.example",), BODY)])  # fmt: skip
            [second] = await d.deliver("nhs.net", TransportFacts(TlsLevel.VERIFIED),
                                       [Item("Q2", "jo@example.nhs.uk", ("b@nhs.net",), BODY)])  # fmt: skip
        finally:
            await d.close()
        assert [m.rcpt_tos for m in sink.messages] == [["a@spoofed.example"]]
    assert first.delivered and first.verified_by == "pkix:mx-hostname"
    assert (second.delivered, second.permanent) == (False, False)
    assert second.tls_failure is TlsFailure.CERTIFICATE_HOST_MISMATCH


async def test_verify_forces_tls_on_an_unclassified_destination(dns_server, pki):
    add_mx(dns_server, "partner.example", "mx.partner.example")
    untrusted = pki.server_context("mx.partner.example", trusted=False)
    with SinkServer(hostname="mx.partner.example", tls_context=untrusted) as sink:
        d = deliverer(dns_server, pki, sink.port, {"partner.example": "verify"})
        try:
            [result] = await d.deliver("partner.example", TransportFacts(TlsLevel.OPPORTUNISTIC),
                                       [Item("Q1", "jo@example.nhs.uk", ("a@partner.example",), BODY)])  # fmt: skip
        finally:
            await d.close()
        assert sink.messages == []
    assert result.tls_failure is TlsFailure.CERTIFICATE_NOT_TRUSTED and not result.permanent


async def test_none_sends_opportunistic_mail_without_starttls(dns_server, pki):
    add_mx(dns_server, "broken.example", "mx.broken.example")
    context = pki.server_context("mx.broken.example")
    with SinkServer(hostname="mx.broken.example", tls_context=context) as sink:
        d = deliverer(dns_server, pki, sink.port, {"broken.example": "none"})
        try:
            [result] = await d.deliver("broken.example", TransportFacts(TlsLevel.OPPORTUNISTIC),
                                       [Item("Q1", "jo@example.nhs.uk", ("a@broken.example",), BODY)])  # fmt: skip
        finally:
            await d.close()
        [received] = sink.messages
    assert result.delivered and received.tls_version is None
    assert b"STARTTLS" not in bytes(sink.plaintext)


# --- config: loaded once, one clear line per mistake ------------------------------------------


def load(tmp_path, text):
    path = tmp_path / "securemail.toml"
    path.write_text(text)
    return load_config(path, environ={})


def test_the_map_loads_from_config(tmp_path):
    cfg = load(
        tmp_path,
        "[delivery]\nport = 25\n\n[delivery.tls_policy]\n"
        '"nhs.net" = "secure match=nexthop:dot-nexthop"\n".nhs.net" = "verify match=.nhs.net"\n',
    )
    assert dict(cfg.delivery.tls_policy) == {
        "nhs.net": "secure match=nexthop:dot-nexthop", ".nhs.net": "verify match=.nhs.net"
    }  # fmt: skip
    assert dataclasses.asdict(cfg.delivery)["tls_policy"] == cfg.delivery.tls_policy  # config check
    policies = TlsPolicyMap.parse(cfg.delivery.tls_policy)
    assert policies.lookup("mx.nhs.net").destination == ".nhs.net"
    assert dict(load(tmp_path, "").delivery.tls_policy) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[delivery.tls_policy]\n"nhs.net" = "secure"\n"partner.example" = "encrypt"\n',
         'securemail.toml:3: delivery.tls_policy."partner.example": encrypt'),
        ('[delivery]\nport = 25\ntls_policy = { "nhs.net" = "secure", "x.example" = "sure" }\n',
         'securemail.toml:3: delivery.tls_policy."x.example": unknown level \'sure\''),
        ('[delivery]\ntls_policy."nhs.net" = "secure match=hostname"\n',
         'securemail.toml:2: delivery.tls_policy."nhs.net": match=hostname'),
        ('[delivery.tls_policy]\nnhs.net = "secure"\n',
         'delivery.tls_policy."nhs": expected a string, got a table (quote a key with dots'),
        ('[delivery.tls_policy]\n"nhs.net" = 3\n',
         'securemail.toml:2: delivery.tls_policy."nhs.net": expected a string, got a number'),
        ('[delivery]\ntls_policy = "secure"\n',
         "securemail.toml:2: delivery.tls_policy: expected a table of strings, got a string"),
    ],
)  # fmt: skip
def test_config_errors_name_the_line_and_the_entry(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert message in str(info.value) and "\n" not in str(info.value)
