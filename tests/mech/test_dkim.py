"""DKIM signing and verification, checked against independent implementations.

Peers:

* dkimpy: our signatures are byte for byte what its ``dkim.sign`` writes (same key, same
  timestamp) and verify with its ``dkim.verify``; it also signs test messages we verify
  (512-bit keys, ``l=``), which OpenDKIM refuses to do.
* RFC 8463 Appendix A: the published example verifies, and our Ed25519 signer reproduces
  its published ``b=`` exactly.
* OpenDKIM (Debian ``opendkim-tools`` + ``opendkim``; ``scripts/apt-install opendkim-tools
  opendkim``). ``opendkim-testmsg`` verifies what we sign, with the key published in a
  real DNS server. It has no configuration option (its ``-C`` keeps CRLFs), and
  libopendkim looks keys up with the libc resolver, which reads /etc/resolv.conf and
  always uses port 53. So each run gets a private mount namespace (``unshare --mount``,
  private propagation: the host is untouched) in which a resolv.conf naming a test
  ``DnsServer`` on port 53 of a random 127.53.x.y address is bind-mounted over
  /etc/resolv.conf; the tests check that server was asked for the key. This needs root,
  like the Postfix tests. ``opendkim-testmsg`` can only *sign* rsa-sha1 relaxed/simple,
  which RFC 8301 forbids verifiers to accept (tested: refused), so rsa-sha256 and
  ed25519-sha256 messages for ``verify_dkim`` are signed by ``opendkim -t`` (the
  filter's test mode) instead.
"""

import asyncio
import base64
import os
import random
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from harness.dnsserver import DnsServer, _UdpProtocol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securemail.dns import Resolver
from securemail.mech.dkim import (
    SIGNED_HEADERS,
    DkimError,
    DkimSigner,
    DkimVerdict,
    SigningKey,
    dns_record_for,
    generate_key,
    load_keys,
    verify_dkim,
    write_key,
)
from securemail.mech.dkim import common as dkim_common
from securemail.mech.dkim import sign as dkim_sign
from securemail.mech.results import Result, authentication_results

DOMAIN = "example.org"
SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@nhs.net>\r\n"
    b"Subject: Discharge summary\r\n"
    b"Date: Mon, 01 Jan 2024 09:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"The patient was discharged today.  Regards,\r\n"
    b"Alice\r\n"
)


@dataclass(frozen=True)
class Key:
    algorithm: str  # "rsa-sha256" | "ed25519-sha256"
    pem: bytes
    record: str

    def signer(self, selector="sel", domain=DOMAIN):
        return DkimSigner({domain: SigningKey(domain, selector, self.algorithm, self.pem)})


@pytest.fixture(scope="module")
def rsa_key():
    return Key("rsa-sha256", *generate_key("rsa", 2048))


@pytest.fixture(scope="module")
def ed_key():
    return Key("ed25519-sha256", *generate_key("ed25519"))


@pytest.fixture(params=["rsa", "ed25519"])
def key(request, rsa_key, ed_key):
    return rsa_key if request.param == "rsa" else ed_key


@pytest.fixture
def resolver(dns_server):
    return Resolver([dns_server.nameserver], timeout=2.0)


def publish(server, record, selector="sel", domain=DOMAIN):
    server.add(f"{selector}._domainkey.{domain}", "TXT", record)


def signed(key, message=MESSAGE, selector="sel", **kwargs):
    header = key.signer(selector).sign(message, DOMAIN, **kwargs)
    assert header is not None
    return header + message


def tags(data: bytes) -> dict[str, str]:
    """The tags of the first header field of ``data`` (a DKIM-Signature), unfolded."""
    match = re.match(rb"DKIM-Signature:((?:[^\r\n]*\r?\n[ \t])*[^\r\n]*)", data)
    assert match, data[:100]
    value = match.group(1)
    return {
        k.decode(): re.sub(r"\s+", "", v.decode())
        for k, v in dkim.util.parse_tag_value(value).items()
    }


def dkimpy_dns(record):
    def lookup(name, timeout=5):
        return record.encode()

    return lookup


# --- keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "kind", "size"), [("rsa", "rsa", 294), ("ed25519", "ed25519", 32)]
)
def test_generate_key_and_dns_record_for_agree(algorithm, kind, size):
    pem, record = generate_key(algorithm)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert record.startswith(f"v=DKIM1; k={kind}; p=")
    public = base64.b64decode(record.split("p=", 1)[1], validate=True)
    assert len(public) == size  # 2048-bit SubjectPublicKeyInfo, or a raw Ed25519 key
    assert dns_record_for(pem) == record
    assert generate_key(algorithm)[1] != record  # a fresh key each time


def test_dns_record_for_an_opendkim_genkey_key_matches_its_own_record(tmp_path):
    require(["opendkim-genkey"])
    run(["opendkim-genkey", "-b", "2048", "-d", DOMAIN, "-s", "gen", "-D", str(tmp_path)])
    published = "".join(re.findall(r'"([^"]*)"', (tmp_path / "gen.txt").read_text()))
    theirs = dict(part.strip().split("=", 1) for part in published.split(";") if part.strip())
    ours = dns_record_for((tmp_path / "gen.private").read_bytes())
    assert ours == f"v=DKIM1; k=rsa; p={theirs['p']}"


@pytest.mark.parametrize(("algorithm", "bits"), [("rsa", 512), ("rsa", 16384), ("dsa", 2048)])
def test_generate_key_refuses_weak_or_unknown_keys(algorithm, bits):
    with pytest.raises(DkimError, match=r"^dkim: "):
        generate_key(algorithm, bits)


def test_write_key_is_private_and_refuses_to_overwrite(tmp_path, rsa_key, ed_key):
    key_dir = tmp_path / "keys"
    path = write_key(key_dir, "Example.ORG.", "sel", rsa_key.pem)
    assert path == key_dir / DOMAIN / "sel.pem"
    assert path.read_bytes() == rsa_key.pem
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    with pytest.raises(DkimError, match="already exists"):
        write_key(key_dir, DOMAIN, "sel", ed_key.pem)
    assert path.read_bytes() == rsa_key.pem

    write_key(key_dir, DOMAIN, "sel", ed_key.pem, overwrite=True)
    assert path.read_bytes() == ed_key.pem
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["sel.pem"]  # no temp files left


@pytest.mark.parametrize(
    ("domain", "selector", "pem", "message"),
    [
        ("../etc", "sel", None, "not a domain name"),
        (DOMAIN, "../sel", None, "not a valid selector"),
        (DOMAIN, "sel", b"not a key", "not a usable PEM private key"),
    ],
)
def test_write_key_refuses_bad_names_and_keys(tmp_path, rsa_key, domain, selector, pem, message):
    with pytest.raises(DkimError, match=message):
        write_key(tmp_path, domain, selector, pem or rsa_key.pem)
    assert list(tmp_path.iterdir()) == []


def test_load_keys_finds_our_domains_keys(tmp_path, rsa_key, ed_key):
    write_key(tmp_path, DOMAIN, "s2024", rsa_key.pem)
    write_key(tmp_path, "nhs.example", "s2024", ed_key.pem)
    write_key(tmp_path, "other.example", "older", rsa_key.pem)
    keys = load_keys(tmp_path, "s2024", ["Example.org", "nhs.example", "other.example"])
    assert keys == {
        DOMAIN: SigningKey(DOMAIN, "s2024", "rsa-sha256", rsa_key.pem),
        "nhs.example": SigningKey("nhs.example", "s2024", "ed25519-sha256", ed_key.pem),
    }
    assert "PRIVATE" not in repr(keys)  # the key material never reaches logs via repr()


def test_load_keys_corrupt_pem_is_a_one_line_error_naming_the_file(tmp_path, rsa_key):
    path = write_key(tmp_path, DOMAIN, "sel", rsa_key.pem)
    path.write_bytes(rsa_key.pem[:200] + b"\n-----END PRIVATE KEY-----\n")
    with pytest.raises(DkimError) as info:
        load_keys(tmp_path, "sel", [DOMAIN])
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"dkim: {path}: not a usable PEM private key")


def test_load_keys_refuses_rsa_keys_below_1024_bits(tmp_path):
    pem = openssl_rsa_512(tmp_path)
    path = tmp_path / DOMAIN / "sel.pem"
    path.parent.mkdir()
    path.write_bytes(pem)
    with pytest.raises(
        DkimError, match=r"RSA key has 512 bits; DKIM needs at least 1024 \(RFC 8301\)"
    ):
        load_keys(tmp_path, "sel", [DOMAIN])


def test_signer_refuses_broken_or_mislabelled_keys(rsa_key, ed_key):
    with pytest.raises(DkimError, match="not a usable PEM private key"):
        DkimSigner({DOMAIN: SigningKey(DOMAIN, "sel", "rsa-sha256", b"garbage")})
    with pytest.raises(DkimError, match="is an ed25519-sha256 key, not rsa-sha256"):
        DkimSigner({DOMAIN: SigningKey(DOMAIN, "sel", "rsa-sha256", ed_key.pem)})
    with pytest.raises(DkimError, match="filed under"):
        DkimSigner({"nhs.net": SigningKey(DOMAIN, "sel", "rsa-sha256", rsa_key.pem)})


# --- signing ---------------------------------------------------------------------------


def test_signature_is_byte_for_byte_what_dkimpy_signs(rsa_key):
    ours = rsa_key.signer().sign(MESSAGE, DOMAIN, now=1_700_000_000)
    assert ours is not None
    pkcs1 = serialization.load_pem_private_key(rsa_key.pem, None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    include = [name.encode() for name in tags(ours)["h"].split(":")]
    with mock.patch.object(dkim.time, "time", return_value=1_700_000_000):
        theirs = dkim.sign(
            MESSAGE, b"sel", DOMAIN.encode(), pkcs1,
            canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
        )  # fmt: skip
    assert ours == theirs
    assert dkim.verify(ours + MESSAGE, dnsfunc=dkimpy_dns(rsa_key.record))


def test_signature_tags_signed_headers_and_from_oversigning(key):
    header = key.signer().sign(MESSAGE, "EXAMPLE.org.", now=1_700_000_123)
    assert header is not None
    assert header.startswith(b"DKIM-Signature: v=1; ")
    assert header.endswith(b"\r\n")
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))
    assert re.fullmatch(rb"(?:[^\r\n]*\r\n)(?:[ \t][^\r\n]*\r\n)*", header)  # folded, CRLF only
    t = tags(header)
    assert t["a"] == key.algorithm
    assert t["c"] == "relaxed/relaxed"
    assert (t["d"], t["s"], t["t"]) == (DOMAIN, "sel", "1700000123")
    assert "l" not in t
    # Every listed header that is present, X-Mailer (not in the set) left out, From twice.
    assert t["h"] == "from:to:subject:date:message-id:mime-version:content-type:from"
    assert {"From", "Subject", "Message-ID", "List-Unsubscribe"} <= set(SIGNED_HEADERS)


def test_every_from_is_signed_plus_one(key):
    message = b"From: a@example.org\r\nFrom: b@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    t = tags(key.signer().sign(message, DOMAIN))
    assert t["h"] == "from:from:subject:from"


def test_ed25519_signature_reproduces_rfc8463_example():
    """RFC 8463 A.3's Ed25519 signature, recomputed from A.1's key: same b=, byte for byte.

    Uses the module's internal signer, because the RFC signs an h= list (From, Subject
    and Date oversigned) that our signed-header choice would not produce.
    """
    seed = base64.b64decode("nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=")
    signing = dkim_sign._Signing(
        b"football.example.com", b"brisbane", b"ed25519-sha256",
        ed25519.Ed25519PrivateKey.from_private_bytes(seed),
    )  # fmt: skip
    headers, body = dkim_common._for_dkimpy(RFC8463_MESSAGE)
    include = b"from to subject date message-id from subject date".split()
    header = dkim_sign._signature(signing, headers, body, include, 1528637909)
    # Identical but for where lines are folded (the RFC's example was refolded by hand).
    ours_head, ours_b = header.split(b" b=")
    rfc_head, rfc_b = RFC8463_ED25519_SIGNATURE.split(b" b=")
    assert ours_head.replace(b"\r\n ", b" ") == rfc_head.replace(b"\r\n ", b" ")
    assert re.sub(rb"\s", b"", ours_b) == re.sub(rb"\s", b"", rfc_b)
    assert tags(header)["b"].startswith("/gCrinpcQOoIfuHN")


async def test_rfc8463_example_verifies(dns_server, resolver):
    publish(dns_server, RFC8463_ED25519_RECORD, "brisbane", "football.example.com")
    publish(dns_server, RFC8463_RSA_RECORD, "test", "football.example.com")
    message = RFC8463_ED25519_SIGNATURE + RFC8463_RSA_SIGNATURE + RFC8463_MESSAGE
    verdicts = await verify_dkim(message, resolver)
    assert [(v.result, v.selector, v.algorithm, v.key_bits) for v in verdicts] == [
        (Result.PASS, "brisbane", "ed25519-sha256", 256),
        (Result.PASS, "test", "rsa-sha256", 1024),
    ]
    tampered = await verify_dkim(message.replace(b"dinner", b"lunch"), resolver)
    assert [(v.result, v.reason) for v in tampered] == [
        (Result.FAIL, "signature did not verify")
    ] * 2


def test_sign_without_a_key_for_the_domain_is_none(rsa_key):
    signer = rsa_key.signer()
    assert signer.sign(MESSAGE, "nhs.net") is None
    assert signer.sign(MESSAGE, "not a domain") is None
    assert signer.sign(MESSAGE, "sub.example.org") is None  # d= is exactly our domain
    assert signer.domains == frozenset({DOMAIN})


ODD_MESSAGES = {
    "bare LF line ends": MESSAGE.replace(b"\r\n", b"\n"),
    "headers only, no blank line": b"From: a@example.org\r\nSubject: x\r\n",
    "empty body": b"From: a@example.org\r\nSubject: x\r\n\r\n",
    "no final line end": b"From: a@example.org\r\n\r\nno newline at the end",
    "8-bit headers and body": "From: Zoë <z@example.org>\r\nSubject: Tâche\r\n\r\nÉté\r\n".encode(),
    "folded long header": b"From: a@example.org\r\nSubject: "
    + b"word " * 60
    + b"\r\n\tend\r\n\r\nb\r\n",
    "no From at all": b"Subject: x\r\nTo: b@nhs.net\r\n\r\nbody\r\n",
    "obsolete space before colon": b"From : a@example.org\r\nSubject\t: x\r\n\r\nbody\r\n",
    "mbox From_ line": b"From a@example.org Mon Jan  1 00:00:00 2024\r\nFrom: a@example.org\r\n\r\nb\r\n",
    "whitespace and blank lines": b"From: a@example.org\r\n\r\n  lead  \t\r\n\r\n\r\n\r\n",
    "no header at all": b"\r\njust a body\r\n",
    "huge single line": b"From: a@example.org\r\n\r\n" + b"x" * 1_000_000,
}


@pytest.mark.parametrize("name", ODD_MESSAGES)
async def test_odd_but_valid_messages_sign_and_verify(name, key, dns_server, resolver):
    publish(dns_server, key.record)
    message = ODD_MESSAGES[name]
    verdicts = await verify_dkim(signed(key, message), resolver)
    assert [(v.result, v.reason) for v in verdicts] == [(Result.PASS, "")]
    # dkimpy refuses space before the colon and skips mbox "From " lines; the one header
    # reader (securemail.core.message) takes a "From " line as the start of the body.
    if key.algorithm == "rsa-sha256" and name not in (
        "obsolete space before colon",
        "no From at all",
        "mbox From_ line",
    ):
        assert dkim.verify(signed(key, message), dnsfunc=dkimpy_dns(key.record))


async def test_malformed_header_section_still_signs_what_can_be_parsed(
    rsa_key, dns_server, resolver
):
    """A header line without a colon starts the body (as Python's email parser reads it)."""
    publish(dns_server, rsa_key.record)
    message = b"From: a@example.org\r\nno colon here\r\nSubject: x\r\n\r\nbody\r\n"
    header = rsa_key.signer().sign(message, DOMAIN)
    assert header is not None
    assert tags(header)["h"] == "from:from"  # Subject is below the bad line: body, not header
    [verdict] = await verify_dkim(header + message, resolver)
    assert verdict.result == Result.PASS
    [verdict] = await verify_dkim(header + message.replace(b"Subject: x", b"Subject: y"), resolver)
    assert (verdict.result, verdict.reason) == (Result.FAIL, "body hash did not verify")


LINES = st.sampled_from(
    [
        b"From: a@example.org",
        b"Subject: x",
        b" continued",
        b"\tfolded",
        b"",
        b"no colon here",
        b"From a@example.org Mon Jan  1 00:00:00 2024",
        b"X-Obsolete :value",
        b"body  text \t",
        "Zoë: ünïcode".encode(),
        b"\xff\xfe\x00",
        b"DKIM-Signature: v=1; junk",
    ]
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(LINES, max_size=12),
    newline=st.sampled_from([b"\r\n", b"\n"]),
    tail=st.binary(max_size=300),
)
def test_any_message_signs_and_verifies(ed_key, dns_server, resolver, lines, newline, tail):
    """Sign never raises on message content, and what it signs verifies (first verdict)."""
    dns_server.remove(f"sel._domainkey.{DOMAIN}")
    publish(dns_server, ed_key.record)
    message = newline.join(lines) + tail
    header = ed_key.signer().sign(message, DOMAIN)
    assert header is not None
    assert re.fullmatch(rb"DKIM-Signature: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", header)
    verdicts = asyncio.run(verify_dkim(header + message, resolver))
    # Unless its first line is a continuation line, which would continue our header field
    # once that is prepended (an mbox "From " line is not skipped: it starts the body).
    if not message.startswith((b" ", b"\t")):
        assert (verdicts[0].result, verdicts[0].reason) == (Result.PASS, "")


@pytest.mark.timeout(30)
def test_signing_speed_1000_messages_of_10kb(rsa_key):
    signer = rsa_key.signer()
    body = b"".join(
        b"line %d of a clinical letter, nothing special here.\r\n" % i for i in range(190)
    )
    messages = [
        MESSAGE.replace(b"<1@", b"<%d@" % i).split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body
        for i in range(1000)
    ]
    assert all(9_500 < len(m) < 11_000 for m in messages)
    start = time.perf_counter()
    headers = [signer.sign(m, DOMAIN) for m in messages]
    ours = (time.perf_counter() - start) / len(messages)
    assert len({h for h in headers if h}) == 1000
    pkcs1 = serialization.load_pem_private_key(rsa_key.pem, None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    start = time.perf_counter()
    for m in messages[:50]:
        dkim.sign(m, b"sel", DOMAIN.encode(), pkcs1, canonicalize=(b"relaxed", b"relaxed"))
    theirs = (time.perf_counter() - start) / 50
    print(
        f"\nDKIM RSA-2048, 10 KB: securemail {ours * 1000:.3f} ms/message ({1 / ours:.0f}/s); "
        f"dkimpy dkim.sign {theirs * 1000:.3f} ms/message ({1 / theirs:.0f}/s)"
    )
    for i in (0, 499, 999):
        assert dkim.verify(headers[i] + messages[i], dnsfunc=dkimpy_dns(rsa_key.record))


# --- verifying -------------------------------------------------------------------------


async def test_unsigned_message_has_no_verdicts(resolver, dns_server):
    assert await verify_dkim(MESSAGE, resolver) == []
    assert dns_server.queries == []


async def test_good_signature_passes_with_authentication_results(key, dns_server, resolver):
    publish(dns_server, key.record)
    message = signed(key)
    [verdict] = await verify_dkim(message, resolver)
    b_value = tags(message)["b"]
    assert verdict == DkimVerdict(
        Result.PASS, DOMAIN, "sel", key.algorithm, "",
        key_bits=2048 if key.algorithm == "rsa-sha256" else 256, b_prefix=b_value[:8],
    )  # fmt: skip
    assert dns_server.queries == [(f"sel._domainkey.{DOMAIN}", "TXT")]
    header = authentication_results("mx.example.org", [verdict.to_method_result()])
    assert header == (
        "Authentication-Results: mx.example.org;\r\n"
        f"\tdkim=pass header.d={DOMAIN} header.s=sel header.a={key.algorithm} "
        f"header.b={b_value[:8]}\r\n"
    )


TAMPERING = {
    "body": (lambda m: m.replace(b"discharged", b"admitted"), "body hash did not verify"),
    "subject": (lambda m: m.replace(b"Discharge summary", b"Invoice"), "signature did not verify"),
    "second From added": (
        lambda m: m.replace(b"From: Alice", b"From: Mallory <m@evil.example>\r\nFrom: Alice"),
        "signature did not verify",
    ),
}


@pytest.mark.parametrize("change", TAMPERING)
async def test_tampered_message_fails_with_a_reason(change, key, dns_server, resolver):
    publish(dns_server, key.record)
    edit, reason = TAMPERING[change]
    [verdict] = await verify_dkim(edit(signed(key)), resolver)
    assert (verdict.result, verdict.reason) == (Result.FAIL, reason)


async def test_unsigned_header_may_be_added(key, dns_server, resolver):
    publish(dns_server, key.record)
    message = signed(key).replace(b"X-Mailer: test", b"X-Mailer: test\r\nReceived: by relay")
    [verdict] = await verify_dkim(message, resolver)
    assert verdict.result == Result.PASS


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("mode", "result", "reason"),
    [
        (
            None,
            Result.PERMERROR,
            "key not found: TXT sel._domainkey.example.org: no such domain (NXDOMAIN)",
        ),
        (
            "servfail",
            Result.TEMPERROR,
            "key lookup failed: TXT sel._domainkey.example.org: no nameserver",
        ),
        (
            "timeout",
            Result.TEMPERROR,
            "key lookup failed: TXT sel._domainkey.example.org: DNS timeout",
        ),
    ],
)
async def test_key_lookup_failures(rsa_key, dns_server, mode, result, reason):
    resolver = Resolver([dns_server.nameserver], timeout=0.5)
    if mode:
        dns_server.behave(f"sel._domainkey.{DOMAIN}", mode)
    [verdict] = await verify_dkim(signed(rsa_key), resolver)
    assert verdict.result == result
    assert verdict.reason.startswith(reason)
    assert (verdict.domain, verdict.selector) == (DOMAIN, "sel")


async def test_name_without_txt_record_is_no_key(rsa_key, dns_server, resolver):
    dns_server.add(f"sel._domainkey.{DOMAIN}", "A", "192.0.2.1")
    [verdict] = await verify_dkim(signed(rsa_key), resolver)
    assert (verdict.result, verdict.reason) == (
        Result.PERMERROR,
        f"key not found: no TXT record at sel._domainkey.{DOMAIN}",
    )


def _rsa_record_with(extra):
    return lambda key: key.record.replace("v=DKIM1; ", f"v=DKIM1; {extra}; ")


KEY_RECORDS = {
    "revoked": (lambda key: "v=DKIM1; k=rsa; p=", "key revoked (empty p=)"),
    "other key type": (
        lambda key: generate_key("ed25519")[1],
        "key is k=ed25519, signature is a=rsa-sha256",
    ),
    "sha1 only": (_rsa_record_with("h=sha1"), "key record's h= does not allow sha256"),
    "not for email": (_rsa_record_with("s=tlsrpt"), "key record's s= excludes email"),
    "not base64": (lambda key: "v=DKIM1; k=rsa; p=!!!", "key record's p= is not base64"),
    "not a key": (lambda key: "v=DKIM1; k=rsa; p=AAAA", "key record's p= is not an RSA public key"),
    "unknown k=": (
        lambda key: key.record.replace("k=rsa", "k=dsa"),
        "key record has unknown k=dsa",
    ),
    "wrong version": (
        lambda key: key.record.replace("DKIM1", "DKIM2"),
        "key record is not v=DKIM1",
    ),
    "no p=": (lambda key: "v=DKIM1; k=rsa", "key record has no p="),
    "garbage": (lambda key: "hello world", "key record is malformed: hello world"),
}


@pytest.mark.parametrize("case", KEY_RECORDS)
async def test_unusable_key_records_are_permerror(case, rsa_key, dns_server, resolver):
    make, reason = KEY_RECORDS[case]
    publish(dns_server, make(rsa_key))
    [verdict] = await verify_dkim(signed(rsa_key), resolver)
    assert (verdict.result, verdict.reason) == (Result.PERMERROR, reason)


async def test_first_usable_key_record_is_used(rsa_key, dns_server, resolver):
    publish(dns_server, "v=spf1 -all")
    publish(dns_server, rsa_key.record)
    [verdict] = await verify_dkim(signed(rsa_key), resolver)
    assert verdict.result == Result.PASS


async def test_512_bit_rsa_key_is_permerror(tmp_path, dns_server, resolver):
    pem = openssl_rsa_512(tmp_path)
    record = dns_record_for_unchecked(pem)
    publish(dns_server, record)
    header = dkim.sign(MESSAGE, b"sel", DOMAIN.encode(), pem, canonicalize=(b"relaxed", b"relaxed"))
    # dkimpy itself, with its minimum lowered, says the signature is otherwise valid.
    assert dkim.verify(header + MESSAGE, dnsfunc=dkimpy_dns(record), minkey=512)
    [verdict] = await verify_dkim(header + MESSAGE, resolver)
    assert (verdict.result, verdict.key_bits) == (Result.PERMERROR, 512)
    assert verdict.reason == "RSA key too short: 512 bits (RFC 8301 requires 1024)"


async def test_testing_flag_is_noted(key, dns_server, resolver):
    publish(dns_server, key.record.replace("v=DKIM1; ", "v=DKIM1; t=y; "))
    [verdict] = await verify_dkim(signed(key), resolver)
    assert (verdict.result, verdict.testing) == (Result.PASS, True)
    assert verdict.reason == "key is in testing mode (t=y)"
    assert 'reason="key is in testing mode (t=y)"' in verdict.to_method_result().clause()


async def test_strict_key_requires_i_in_exactly_d(rsa_key, dns_server, resolver):
    publish(dns_server, rsa_key.record + "; t=s")
    message = signed(rsa_key)
    [verdict] = await verify_dkim(message, resolver)
    assert verdict.result == Result.PASS  # i=@example.org
    sub = message.replace(b"i=@example.org", b"i=@sub.example.org")
    [verdict] = await verify_dkim(sub, resolver)
    assert (verdict.result, verdict.reason) == (
        Result.PERMERROR,
        "key has t=s but i= is in sub.example.org, not example.org",
    )


async def test_body_length_limit_verifies_but_is_noted(rsa_key, dns_server, resolver):
    publish(dns_server, rsa_key.record)
    header = dkim.sign(
        MESSAGE,
        b"sel",
        DOMAIN.encode(),
        rsa_key.pem,
        canonicalize=(b"relaxed", b"relaxed"),
        length=True,
    )
    length = int(tags(header)["l"])
    assert length == 65  # the relaxed body: one space fewer than the 66 bytes after the blank line
    [verdict] = await verify_dkim(header + MESSAGE, resolver)
    assert (verdict.result, verdict.reason) == (
        Result.PASS,
        "l= body length limit (65 of 65 body bytes signed)",
    )
    # What l= allows, and why it is noted: text appended after signing still "passes".
    appended = b"\r\nClick here: http://evil.example/\r\n"  # 36 bytes: CRLF, 32, CRLF
    [verdict] = await verify_dkim(header + MESSAGE + appended, resolver)
    assert (verdict.result, verdict.reason) == (
        Result.PASS,
        "l= body length limit (65 of 101 body bytes signed)",
    )
    longer = header.replace(b"l=65", b"l=999")
    [verdict] = await verify_dkim(longer + MESSAGE, resolver)
    assert (verdict.result, verdict.reason) == (Result.PERMERROR, "l= is longer than the body")


async def test_two_signatures_one_good_one_bad_in_order(rsa_key, ed_key, dns_server, resolver):
    publish(dns_server, rsa_key.record, "good")
    publish(dns_server, generate_key("ed25519")[1], "bad")  # not the key that signed
    good = rsa_key.signer("good").sign(MESSAGE, DOMAIN)
    assert good is not None
    bad = ed_key.signer("bad").sign(good + MESSAGE, DOMAIN)
    assert bad is not None
    verdicts = await verify_dkim(bad + good + MESSAGE, resolver)
    assert [(v.result, v.selector, v.reason) for v in verdicts] == [
        (Result.FAIL, "bad", "signature did not verify"),
        (Result.PASS, "good", ""),
    ]


async def test_signature_count_is_capped(rsa_key, dns_server, resolver):
    publish(dns_server, rsa_key.record)
    header = rsa_key.signer().sign(MESSAGE, DOMAIN)
    assert header is not None
    verdicts = await verify_dkim(header * 8 + MESSAGE, resolver, max_signatures=3)
    assert [v.result for v in verdicts] == [Result.PASS] * 3
    assert len(dns_server.queries) == 1  # one lookup per distinct key, not per signature


def _edit_tag(tag, new):
    return lambda h: re.sub(rf"\b{tag}=[^;]*;".encode(), new.encode(), h, count=1)


MALFORMED = {
    "not a tag list": (lambda h: b"DKIM-Signature: this is not dkim\r\n", "malformed signature: "),
    "missing bh=": (_edit_tag("bh", ""), "malformed signature: missing bh="),
    "duplicate tag": (_edit_tag("s", "s=sel; s=sel;"), "malformed signature: "),
    "unknown algorithm": (
        _edit_tag("a", "a=rsa-md5;"),
        "malformed signature: unknown signature algorithm",
    ),
    "rsa-sha1": (_edit_tag("a", "a=rsa-sha1;"), "rsa-sha1 is not accepted (RFC 8301)"),
    "From not signed": (_edit_tag("h", "h=to : subject;"), "From is not signed (h= has no from)"),
    "i= outside d=": (
        _edit_tag("i", "i=@evil.example;"),
        "malformed signature: i= domain is not a subdomain",
    ),
    "expired": (_edit_tag("t", "t=1000; x=2000;"), "signature expired"),
    "future t=": (
        _edit_tag("t", f"t={int(time.time()) + 86400 * 30};"),
        "malformed signature: t= value is in the future",
    ),
    "bad c=": (_edit_tag("c", "c=relaxed/odd;"), "malformed signature: unknown canonicalization"),
    "bad l=": (_edit_tag("q", "q=dns/txt; l=lots;"), "malformed signature: l= value is not"),
    "bad version": (_edit_tag("v", "v=2;"), "malformed signature: v= value is not 1"),
    "empty l=": (_edit_tag("q", "q=dns/txt; l=;"), "malformed signature: l= is not a number"),
    "binary junk": (
        lambda h: b"DKIM-Signature: \xff\xfe=\x00; d=\xff\r\n",
        "malformed signature: ",
    ),
    "empty": (lambda h: b"DKIM-Signature:\r\n", "malformed signature: missing"),
}


@pytest.mark.parametrize("case", MALFORMED)
async def test_malformed_signature_is_permerror_not_an_exception(
    case, rsa_key, dns_server, resolver
):
    publish(dns_server, rsa_key.record)
    edit, reason = MALFORMED[case]
    header = edit(rsa_key.signer().sign(MESSAGE, DOMAIN))
    [verdict] = await verify_dkim(header + MESSAGE, resolver)
    assert verdict.result == Result.PERMERROR
    assert verdict.reason.startswith(reason), verdict.reason
    assert "\n" not in verdict.reason
    verdict.to_method_result().clause()  # renders without error
    assert dns_server.queries == []  # nothing worth a lookup


async def test_bad_signature_base64_is_permerror(rsa_key, dns_server, resolver):
    publish(dns_server, rsa_key.record)
    header = rsa_key.signer().sign(MESSAGE, DOMAIN)
    assert header is not None
    broken = re.sub(rb"bh=[^;]*;", b"bh=!!!!;", header)
    [verdict] = await verify_dkim(broken + MESSAGE, resolver)
    assert (verdict.result, verdict.reason) == (Result.PERMERROR, "malformed signature: bad base64")


async def test_garbage_header_line_does_not_break_verification(rsa_key, dns_server, resolver):
    publish(dns_server, rsa_key.record)
    message = signed(rsa_key).replace(
        b"X-Mailer: test\r\n", b"X-Mailer: test\r\nthis is not a header\r\n"
    )
    [verdict] = await verify_dkim(message, resolver)
    assert (verdict.result, verdict.reason) == (Result.FAIL, "body hash did not verify")


# --- OpenDKIM --------------------------------------------------------------------------


class Port53DnsServer(DnsServer):
    """The test DNS server on port 53 of one loopback address (libc's resolver needs 53)."""

    def __init__(self, host):
        super().__init__()
        self.host = host

    async def _bind(self):
        loop = asyncio.get_running_loop()
        udp, _protocol = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(self.host, 53)
        )
        try:
            tcp = await asyncio.start_server(self._tcp_client, self.host, 53)
        except OSError:
            udp.close()
            raise
        self.port = 53
        return udp, tcp


@dataclass
class OpendkimTestmsg:
    """opendkim-testmsg, looking keys up in ``dns`` (see the module docstring)."""

    dns: Port53DnsServer
    resolv_conf: Path
    tmp: Path

    def run(self, message: bytes, *args: str) -> subprocess.CompletedProcess:
        script = 'mount --bind "$1" /etc/resolv.conf && shift && exec opendkim-testmsg "$@"'
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
        return subprocess.run(
            [*command, str(self.resolv_conf), "-t", str(self.tmp), *args],
            input=message, capture_output=True, timeout=30, check=False,
        )  # fmt: skip

    def verify(self, message: bytes) -> str:
        """ "ok", or opendkim-testmsg's complaint (it exits 70, EX_SOFTWARE, on any)."""
        result = self.run(message)
        if result.returncode == 0:
            return "ok"
        if result.returncode != 70:
            pytest.fail(f"opendkim-testmsg exited {result.returncode}: {result.stderr!r}")
        return result.stderr.decode().strip()


@pytest.fixture
def testmsg(tmp_path):
    require(["opendkim-testmsg", "unshare", "mount"])
    if os.geteuid() != 0:
        pytest.fail(
            "opendkim-testmsg tests need root (a private mount namespace and port 53)",
            pytrace=False,
        )
    error = None
    for _ in range(10):
        host = f"127.53.{random.randint(1, 254)}.{random.randint(1, 254)}"
        server = Port53DnsServer(host)
        try:
            server.start()
        except RuntimeError as exc:
            error = exc
            continue
        break
    else:
        pytest.fail(f"cannot bind a test DNS server to port 53 on 127.53.x.y: {error}")
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(f"nameserver {host}\noptions timeout:2 attempts:2\n")
    try:
        yield OpendkimTestmsg(server, resolv_conf, tmp_path)
    finally:
        server.stop()


@dataclass
class OpendkimFilter:
    """opendkim(8) in test mode (``-t FILE``), the milter's own verify and sign code.

    Its resolver is libunbound, configured (``ResolverConfiguration``) to forward every
    query to the ``dns_server`` fixture on its loopback port, so this needs no root.
    """

    dns: DnsServer
    tmp: Path

    def verify(self, message: bytes) -> str:
        """OpenDKIM's verdict line: "succeeded", or "failed: <reason>"."""
        unbound = self.tmp / "unbound.conf"
        unbound.write_text(
            'server:\n  do-not-query-localhost: no\n  module-config: "iterator"\n'
            f'forward-zone:\n  name: "."\n  forward-addr: 127.0.0.1@{self.dns.port}\n'
        )
        conf = self.tmp / "verify.conf"
        conf.write_text(f"Mode v\nSyslog no\nResolverConfiguration {unbound}\n")
        path = self.tmp / "verify.eml"
        path.write_bytes(message)
        output = run(["opendkim", "-x", str(conf), "-t", str(path)]).decode().strip()
        match = re.fullmatch(
            rf"opendkim: {re.escape(str(path))}: verification \([^)]*\) (.*)", output
        )
        assert match, output
        return match.group(1)

    def sign(self, message: bytes, key_pem: bytes, algorithm: str, selector: str = "od") -> bytes:
        """The DKIM-Signature header opendkim(8) makes for ``message``, CRLF-terminated."""
        key_file = self.tmp / f"{selector}.key"
        key_file.write_bytes(key_pem)
        key_file.chmod(0o600)
        conf = self.tmp / f"{selector}.conf"
        conf.write_text(
            "Mode s\n"
            f"Domain {DOMAIN}\nSelector {selector}\nKeyFile {key_file}\n"
            f"SignatureAlgorithm {algorithm}\nCanonicalization relaxed/relaxed\n"
            "Syslog no\nRequireSafeKeys false\n"
        )
        path = self.tmp / f"{selector}.eml"
        path.write_bytes(message)
        lines = run(["opendkim", "-x", str(conf), "-t", str(path)]).decode().splitlines()
        assert lines[0] == f"opendkim: {path}:", lines
        assert lines[1].startswith("DKIM-Signature: "), lines
        return "\r\n".join(lines[1:]).encode() + b"\r\n"


@pytest.fixture
def opendkim(dns_server, tmp_path):
    require(["opendkim"])
    return OpendkimFilter(dns_server, tmp_path)


def require(tools):
    missing = [tool for tool in tools if shutil.which(tool, path=SBIN) is None]
    if missing:
        pytest.fail(
            f"missing program(s) {', '.join(missing)}: run "
            "`scripts/apt-install opendkim-tools opendkim openssl util-linux`",
            pytrace=False,
        )


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, timeout=30, check=False, **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{command[0]} exited {result.returncode}: {result.stderr.decode()[-500:]}")
    return result.stdout


def add_from(message):
    return message.replace(b"From: Alice", b"From: Mallory <m@evil.example>\r\nFrom: Alice")


# What each OpenDKIM verifier says about our signed message after each change.
# opendkim-testmsg refuses a message with two From fields outright (its library flags
# include STRICTHDRS), before looking at signatures; the filter checks the signature.
CHANGES = {
    "none": (lambda m: m, "ok", "succeeded"),
    "unsigned header added": (
        lambda m: m.replace(b"X-Mailer: test", b"X-Mailer: test\r\nReceived: by relay"),
        "ok",
        "succeeded",
    ),
    "body": (
        TAMPERING["body"][0],
        "opendkim-testmsg: dkim_eom(): Bad signature",
        "failed: signature verification failed",  # OpenDKIM says so for a body hash too
    ),
    "subject": (
        TAMPERING["subject"][0],
        "opendkim-testmsg: dkim_eom(): Bad signature",
        "failed: signature verification failed",
    ),
    "second From added": (
        add_from,
        "opendkim-testmsg: dkim_chunk(): Syntax error",
        "failed: signature verification failed",
    ),
}


@pytest.mark.parametrize("change", CHANGES)
def test_opendkim_testmsg_verifies_our_signatures(testmsg, key, change):
    publish(testmsg.dns, key.record)
    edit, expected, _filter = CHANGES[change]
    assert testmsg.verify(edit(signed(key))) == expected
    if change != "second From added":
        assert testmsg.dns.queries == [(f"sel._domainkey.{DOMAIN}", "TXT")]  # from DNS


def test_opendkim_testmsg_fails_with_another_key_in_dns(testmsg, rsa_key):
    publish(testmsg.dns, generate_key("rsa")[1])
    assert testmsg.verify(signed(rsa_key)) == "opendkim-testmsg: dkim_eom(): Bad signature"
    assert testmsg.dns.queries == [(f"sel._domainkey.{DOMAIN}", "TXT")]


@pytest.mark.parametrize("change", CHANGES)
def test_opendkim_filter_verifies_our_signatures(opendkim, key, change):
    publish(opendkim.dns, key.record)
    edit, _testmsg, expected = CHANGES[change]
    assert opendkim.verify(edit(signed(key))) == expected
    assert (f"sel._domainkey.{DOMAIN}", "TXT") in opendkim.dns.queries


async def test_oversigning_is_what_stops_an_added_from(opendkim, key, resolver):
    """Without From listed once more than it occurs, OpenDKIM accepts an added From."""
    publish(opendkim.dns, key.record)
    signing = DkimSigner({DOMAIN: SigningKey(DOMAIN, "sel", key.algorithm, key.pem)})._keys[DOMAIN]
    headers, body = dkim_common._for_dkimpy(MESSAGE)
    plain = dkim_sign._signature(
        signing, headers, body, [b"from", b"to", b"subject"], int(time.time())
    )
    assert opendkim.verify(add_from(plain + MESSAGE)) == "succeeded"  # the attack works...
    assert opendkim.verify(add_from(signed(key))) == "failed: signature verification failed"
    # ...and our verifier, like dkimpy, also hashes an unsigned extra From, so it fails both.
    for message in (add_from(plain + MESSAGE), add_from(signed(key))):
        [verdict] = await verify_dkim(message, resolver)
        assert (verdict.result, verdict.reason) == (Result.FAIL, "signature did not verify")


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
async def test_opendkim_signed_message_verifies(algorithm, opendkim, resolver, rsa_key, ed_key):
    key = rsa_key if algorithm == "rsa-sha256" else ed_key
    publish(opendkim.dns, key.record, "od")
    header = opendkim.sign(MESSAGE, key.pem, algorithm)
    assert tags(header)["a"] == algorithm
    [verdict] = await verify_dkim(header + MESSAGE, resolver)
    assert (verdict.result, verdict.domain, verdict.selector, verdict.reason) == (
        Result.PASS, DOMAIN, "od", "",
    )  # fmt: skip
    for change, (edit, reason) in TAMPERING.items():
        [verdict] = await verify_dkim(edit(header + MESSAGE), resolver)
        assert (verdict.result, verdict.reason) == (Result.FAIL, reason), change


async def test_opendkim_genkey_key_signed_by_opendkim_verifies(opendkim, tmp_path, resolver):
    require(["opendkim-genkey"])
    run(["opendkim-genkey", "-b", "2048", "-d", DOMAIN, "-s", "od", "-D", str(tmp_path)])
    published = "".join(re.findall(r'"([^"]*)"', (tmp_path / "od.txt").read_text()))
    assert "h=sha256" in published
    publish(opendkim.dns, published, "od")  # as opendkim-genkey wrote it
    header = opendkim.sign(MESSAGE, (tmp_path / "od.private").read_bytes(), "rsa-sha256")
    [verdict] = await verify_dkim(header + MESSAGE, resolver)
    assert (verdict.result, verdict.key_bits) == (Result.PASS, 2048)


async def test_opendkim_testmsg_rsa_sha1_signature_is_refused(
    testmsg, tmp_path, rsa_key, dns_server, resolver
):
    key_file = tmp_path / "sha1.key"
    key_file.write_bytes(rsa_key.pem)
    result = testmsg.run(MESSAGE, "-C", "-d", DOMAIN, "-s", "sel", "-k", str(key_file))
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert tags(message)["a"] == "rsa-sha1"
    publish(testmsg.dns, rsa_key.record)
    assert testmsg.verify(message) == "ok"  # a valid signature by OpenDKIM's standards...
    publish(dns_server, rsa_key.record)
    [verdict] = await verify_dkim(message, resolver)  # ...that RFC 8301 forbids accepting
    assert (verdict.result, verdict.reason) == (
        Result.PERMERROR,
        "rsa-sha1 is not accepted (RFC 8301)",
    )


# --- helpers and vectors ---------------------------------------------------------------


def openssl_rsa_512(tmp_path):
    """A 512-bit RSA key (cryptography refuses to generate one; OpenSSL 3 still does)."""
    require(["openssl"])
    path = tmp_path / "rsa512.pem"
    run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:512",
            "-out",
            str(path),
        ]
    )
    return path.read_bytes()


def dns_record_for_unchecked(pem):
    """The TXT record of any RSA key (``dns_record_for`` refuses keys below 1024 bits)."""
    public = serialization.load_pem_private_key(pem, None).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


# RFC 8463 Appendix A (A.2 records, A.3 signed message).
RFC8463_MESSAGE = (
    b"From: Joe SixPack <joe@football.example.com>\r\n"
    b"To: Suzie Q <suzie@shopping.example.net>\r\n"
    b"Subject: Is dinner ready?\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    b"\r\n"
    b"Hi.\r\n"
    b"\r\n"
    b"We lost the game.  Are you hungry yet?\r\n"
    b"\r\n"
    b"Joe.\r\n"
    b"\r\n"
)
RFC8463_ED25519_SIGNATURE = (
    b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
    b" d=football.example.com; i=@football.example.com;\r\n"
    b" q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
    b" subject : date : message-id : from : subject : date;\r\n"
    b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    b" b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n"
    b" Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n"
)
RFC8463_RSA_SIGNATURE = (
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n"
    b" d=football.example.com; i=@football.example.com;\r\n"
    b" q=dns/txt; s=test; t=1528637909; h=from : to : subject :\r\n"
    b" date : message-id : from : subject : date;\r\n"
    b" bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    b" b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3\r\n"
    b" DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz\r\n"
    b" dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=\r\n"
)
RFC8463_ED25519_RECORD = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
RFC8463_RSA_RECORD = (
    "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWR"
    "iGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutAC"
    "DfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3"
    "Ip3G+2kryOTIKT+l/K4w3QIDAQAB"
)
