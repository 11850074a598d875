"""ARC: seal with dkimpy, verify through our resolver against a loopback DNS server."""

import base64
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securemail.dns import Resolver
from securemail.mech.arc import ArcError, ArcVerdict, arc_seal, verify_arc
from securemail.mech.results import MethodResult, Result, authentication_results

GATEWAY = "gw.trust.example"
KEY_NAME = f"arc1._domainkey.{GATEWAY}"
RELAY = "relay.example.net"
RELAY_KEY_NAME = f"hop._domainkey.{RELAY}"
NOW = 1_700_000_000

MESSAGE = (
    b"From: Jo Bloggs <jo@example.org>\r\n"
    b"To: clinic@trust.example\r\n"
    b"Subject: Referral\r\n"
    b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"Message-ID: <referral-1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Please see the attached referral.\r\n"
)


def make_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"


def pem(key, fmt=serialization.PrivateFormat.PKCS8):
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


@pytest.fixture(scope="module")
def gateway_key():
    return make_key()


@pytest.fixture(scope="module")
def relay_key():
    return make_key()


@pytest.fixture
def resolver(dns_server, gateway_key, relay_key):
    dns_server.add(KEY_NAME, "TXT", gateway_key[1])
    dns_server.add(RELAY_KEY_NAME, "TXT", relay_key[1])
    return Resolver([dns_server.nameserver], timeout=2.0, cache=False)


def seal(message, key, results, *, authserv_id=GATEWAY, domain=GATEWAY, selector="arc1"):
    """What a forwarding hop does: its A-R header, sealed, both prepended."""
    header = authentication_results(authserv_id, results)
    arc_set = arc_seal(
        message,
        domain=domain,
        selector=selector,
        private_pem=pem(key),
        authserv_id=authserv_id,
        auth_results=header,
        now=NOW,
    )
    return arc_set + header.encode() + message


def header_names(block):
    return [m.group(1) for m in re.finditer(rb"^([A-Za-z-]+):", block, re.MULTILINE)]


SPF_PASS = MethodResult("spf", Result.PASS, props=(("smtp.mailfrom", "jo@example.org"),))


async def test_no_arc_headers_is_none(resolver, dns_server):
    verdict = await verify_arc(MESSAGE, resolver)
    assert verdict == ArcVerdict(Result.NONE, 0, "no ARC headers")
    assert verdict.to_method_result().clause() == 'arc=none reason="no ARC headers"'
    assert dns_server.queries == []  # nothing to look up


async def test_seal_then_verify_passes(resolver, dns_server, gateway_key):
    first = await verify_arc(MESSAGE, resolver)
    sealed = seal(MESSAGE, gateway_key[0], [SPF_PASS, first.to_method_result()])
    names = header_names(sealed.split(b"\r\n\r\n")[0])
    assert names[:4] == [
        b"ARC-Seal",
        b"ARC-Message-Signature",
        b"ARC-Authentication-Results",
        b"Authentication-Results",
    ]
    assert b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=gw.trust.example; s=arc1" in sealed
    assert f"t={NOW}".encode() in sealed
    aar = re.search(rb"ARC-Authentication-Results: (.*?)\r\n(?=\S)", sealed, re.DOTALL)
    assert aar is not None
    assert aar.group(1).startswith(b"i=1; gw.trust.example;")
    assert b"spf=pass smtp.mailfrom=jo@example.org" in aar.group(1)

    verdict = await verify_arc(sealed, resolver)
    assert verdict.result is Result.PASS
    assert verdict.instance == 1
    assert "gw.trust.example" in verdict.reason
    assert (KEY_NAME, "TXT") in dns_server.queries  # the key came through our resolver


async def test_body_modified_after_sealing_fails(resolver, gateway_key):
    sealed = seal(MESSAGE, gateway_key[0], [SPF_PASS])
    tampered = sealed.replace(b"attached referral", b"attached invoice")
    verdict = await verify_arc(tampered, resolver)
    assert verdict.result is Result.FAIL
    assert verdict.instance == 1
    assert "did not validate" in verdict.reason


async def test_signed_header_modified_after_sealing_fails(resolver, gateway_key):
    sealed = seal(MESSAGE, gateway_key[0], [SPF_PASS])
    tampered = sealed.replace(b"Subject: Referral", b"Subject: Urgent: pay now")
    assert (await verify_arc(tampered, resolver)).result is Result.FAIL


async def test_aar_modified_after_sealing_fails(resolver, gateway_key):
    sealed = seal(MESSAGE, gateway_key[0], [MethodResult("dkim", Result.FAIL)])
    forged = sealed.replace(b"dkim=fail", b"dkim=pass", 1)
    assert forged != sealed
    verdict = await verify_arc(forged, resolver)
    assert verdict.result is Result.FAIL
    assert "ARC-Seal[1] did not validate" in verdict.reason


async def test_second_hop_seal_verifies(resolver, gateway_key, relay_key):
    hop1 = seal(MESSAGE, relay_key[0], [SPF_PASS], authserv_id=RELAY, domain=RELAY, selector="hop")
    chain = await verify_arc(hop1, resolver)
    assert chain.result is Result.PASS
    hop2 = seal(hop1, gateway_key[0], [chain.to_method_result()])
    assert b"ARC-Seal: i=2; cv=pass;" in hop2
    verdict = await verify_arc(hop2, resolver)
    assert verdict.result is Result.PASS
    assert verdict.instance == 2
    assert "relay.example.net" in verdict.reason and "gw.trust.example" in verdict.reason


async def test_broken_chain_is_sealed_as_cv_fail(resolver, gateway_key, relay_key):
    hop1 = seal(MESSAGE, relay_key[0], [SPF_PASS], authserv_id=RELAY, domain=RELAY, selector="hop")
    broken = hop1.replace(b"attached referral", b"changed body")
    chain = await verify_arc(broken, resolver)
    assert chain.result is Result.FAIL
    hop2 = seal(broken, gateway_key[0], [chain.to_method_result()])
    assert b"ARC-Seal: i=2; cv=fail;" in hop2
    verdict = await verify_arc(hop2, resolver)
    assert verdict.result is Result.FAIL
    assert verdict.instance == 2
    assert "reported failure" in verdict.reason


async def test_no_set_is_added_after_a_cv_fail_seal(resolver, gateway_key, relay_key):
    """RFC 8617 §5.1: a chain whose last seal says cv=fail has ended."""
    hop1 = seal(MESSAGE, relay_key[0], [SPF_PASS], authserv_id=RELAY, domain=RELAY, selector="hop")
    broken = hop1.replace(b"attached referral", b"changed body")
    failed = MethodResult("arc", Result.FAIL, "body changed")
    hop2 = seal(broken, gateway_key[0], [failed])
    verdict = await verify_arc(hop2, resolver)
    assert verdict.result is Result.FAIL
    with pytest.raises(ArcError, match=r"last ARC-Seal has cv=fail \(RFC 8617 §5.1\)"):
        seal(hop2, gateway_key[0], [verdict.to_method_result()])


@pytest.mark.parametrize(("instance", "refused"), [(49, False), (50, True)])
def test_no_set_is_added_to_a_chain_of_fifty(gateway_key, instance, refused):
    """RFC 8617: instances run 1-50. The existing sets are not verified here, only counted."""
    chain = (
        f"ARC-Seal: i={instance}; a=rsa-sha256; cv=pass; d={RELAY}; s=hop; t={NOW}; b=AAAA\r\n"
    ).encode()
    verdict = [MethodResult("arc", Result.PASS)]
    if refused:
        with pytest.raises(ArcError, match="already has 50 sets"):
            seal(chain + MESSAGE, gateway_key[0], verdict)
    else:
        assert b"ARC-Seal: i=50; cv=pass;" in seal(chain + MESSAGE, gateway_key[0], verdict)


async def test_temperror_verdict_is_sealed_as_cv_fail(resolver, gateway_key, relay_key):
    hop1 = seal(MESSAGE, relay_key[0], [SPF_PASS], authserv_id=RELAY, domain=RELAY, selector="hop")
    unsure = MethodResult("arc", Result.TEMPERROR, "key lookup failed")
    hop2 = seal(hop1, gateway_key[0], [unsure])
    assert b"ARC-Seal: i=2; cv=fail;" in hop2
    assert b"arc=fail" in hop2.split(b"Authentication-Results: ")[1]  # in the AAR, too


async def test_dns_servfail_during_verify_is_temperror(resolver, dns_server, gateway_key):
    sealed = seal(MESSAGE, gateway_key[0], [SPF_PASS])
    dns_server.behave(KEY_NAME, "servfail")
    verdict = await verify_arc(sealed, resolver)
    # dkimpy itself would say "fail" (it cannot tell a DNS failure from a bad signature);
    # the lookups are ours, so we know it was temporary.
    assert verdict.result is Result.TEMPERROR
    assert KEY_NAME in verdict.reason and "SERVFAIL" in verdict.reason
    dns_server.behave(KEY_NAME, "normal")
    assert (await verify_arc(sealed, resolver)).result is Result.PASS


async def test_missing_key_is_fail(resolver, dns_server, gateway_key):
    sealed = seal(MESSAGE, gateway_key[0], [SPF_PASS])
    dns_server.remove(KEY_NAME)
    verdict = await verify_arc(sealed, resolver)
    assert verdict.result is Result.FAIL


async def test_wrong_key_is_fail(dns_server, gateway_key, relay_key):
    dns_server.add(KEY_NAME, "TXT", relay_key[1])  # someone else's public key
    sealed = seal(MESSAGE, gateway_key[0], [SPF_PASS])
    verdict = await verify_arc(sealed, Resolver([dns_server.nameserver], timeout=2.0))
    assert verdict.result is Result.FAIL


async def test_each_key_is_fetched_once(resolver, dns_server, gateway_key):
    hop1 = seal(MESSAGE, gateway_key[0], [SPF_PASS])
    hop2 = seal(hop1, gateway_key[0], [MethodResult("arc", Result.PASS)])
    assert (await verify_arc(hop2, resolver)).result is Result.PASS
    assert dns_server.queries.count((KEY_NAME, "TXT")) == 1  # 4 signatures, one key


async def test_malformed_instance_spacing_is_fail_not_a_crash(resolver, gateway_key):
    sealed = seal(MESSAGE, gateway_key[0], [SPF_PASS])
    # dkimpy finds the raw AMS by searching for " i=1;" and raises IndexError without it.
    odd = sealed.replace(b"ARC-Message-Signature: i=1;", b"ARC-Message-Signature: i=1 ;")
    verdict = await verify_arc(odd, resolver)
    assert verdict.result is Result.FAIL
    assert verdict.reason.startswith("ARC headers could not be verified")


async def test_arc_headers_without_instance_fail(resolver):
    message = b"ARC-Seal: cv=none; a=rsa-sha256; d=x.example; s=s; b=AAAA\r\n" + MESSAGE
    verdict = await verify_arc(message, resolver)
    assert verdict.result is Result.FAIL
    assert verdict.instance == 0


async def test_lf_line_endings(resolver, gateway_key):
    message = MESSAGE.replace(b"\r\n", b"\n")
    header = authentication_results(GATEWAY, [SPF_PASS]).replace("\r\n", "\n")
    arc_set = arc_seal(
        message,
        domain=GATEWAY,
        selector="arc1",
        private_pem=pem(gateway_key[0], serialization.PrivateFormat.TraditionalOpenSSL),
        authserv_id=GATEWAY,
        auth_results=header,
    )
    assert b"\r" not in arc_set
    verdict = await verify_arc(arc_set + header.encode() + message, resolver)
    assert verdict.result is Result.PASS


async def test_inbound_auth_results_claiming_our_id_are_not_sealed(resolver, gateway_key):
    forged = f"Authentication-Results: {GATEWAY}; dkim=pass header.d=nhs.net\r\n".encode()
    sealed = seal(forged + MESSAGE, gateway_key[0], [SPF_PASS])
    arc_headers = sealed.split(b"Authentication-Results: gw.trust.example;")[0]
    assert b"header.d=nhs.net" not in arc_headers
    assert (await verify_arc(sealed, resolver)).result is Result.PASS


def test_seal_accepts_the_header_value_alone(gateway_key):
    arc_set = arc_seal(
        MESSAGE,
        domain=GATEWAY,
        selector="arc1",
        private_pem=pem(gateway_key[0]),
        authserv_id=GATEWAY,
        auth_results=f"{GATEWAY}; spf=pass smtp.mailfrom=jo@example.org",
        now=NOW,
    )
    assert arc_set.startswith(b"ARC-Seal: i=1; cv=none;")
    assert arc_set.count(b"\r\nARC-") == 2


def test_seal_refuses_another_authserv_id(gateway_key):
    with pytest.raises(ArcError, match=re.escape("authserv-id 'elsewhere.example'")):
        arc_seal(
            MESSAGE,
            domain=GATEWAY,
            selector="arc1",
            private_pem=pem(gateway_key[0]),
            authserv_id=GATEWAY,
            auth_results=authentication_results("elsewhere.example", [SPF_PASS]),
        )


def test_seal_needs_the_chain_verdict_when_a_chain_exists(gateway_key):
    hop1 = seal(MESSAGE, gateway_key[0], [SPF_PASS])
    with pytest.raises(ArcError, match="must include verify_arc's arc= result"):
        seal(hop1, gateway_key[0], [SPF_PASS])


def test_seal_refuses_a_chain_verdict_without_a_chain(gateway_key):
    with pytest.raises(ArcError, match="no ARC sets"):
        seal(MESSAGE, gateway_key[0], [MethodResult("arc", Result.PASS)])


def test_seal_refuses_a_bad_key():
    bad = b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ArcError, match="ARC sealing failed"):
        arc_seal(
            MESSAGE,
            domain=GATEWAY,
            selector="arc1",
            private_pem=bad,
            authserv_id=GATEWAY,
            auth_results=authentication_results(GATEWAY, [SPF_PASS]),
        )
