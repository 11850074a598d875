"""DKIM key records (RFC 6376 §3.6.1): the one parser, used by the verifier and the checker.

The verifier's tests (test_dkim.py) show each problem becoming a permerror verdict; these
read records directly, including what only the checker needs: a revoked key's ``k=`` and
``t=y``, and RSA keys shorter than the verifier accepts (parsed, then refused by it).
"""

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securemail.mech.dkim import KeyProblem, KeyRevoked, generate_key, parse_key_record


def _rsa_record(bits: int) -> str:
    """A record for an RSA key of any size (cryptography will not generate short ones)."""
    public = rsa.RSAPublicNumbers(65537, (1 << (bits - 1)) | 0x1F3A5 | 1).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def test_rsa_and_ed25519_keys():
    rsa_key = parse_key_record(generate_key("rsa", 2048)[1])
    assert (rsa_key.kind, rsa_key.bits, rsa_key.testing, rsa_key.strict) == (
        b"rsa",
        2048,
        False,
        False,
    )
    ed_key = parse_key_record(generate_key("ed25519")[1])
    assert (ed_key.kind, ed_key.bits) == (b"ed25519", 256)


def test_short_rsa_key_is_read_with_its_size():
    """Refusing it is the verifier's decision (RFC 8301), and the checker's finding."""
    assert parse_key_record(_rsa_record(512)).bits == 512


def test_flags_and_defaults():
    record = _rsa_record(1024).replace("k=rsa; ", "") + "; t=y:s; s=email; h=sha256"
    key = parse_key_record(record)
    assert (key.kind, key.testing, key.strict) == (b"rsa", True, True)
    assert parse_key_record(record.replace("v=DKIM1; ", "")).kind == b"rsa"  # v= is optional


@pytest.mark.parametrize(
    ("record", "kind", "testing"),
    [
        ("v=DKIM1; k=rsa; p=", b"rsa", False),
        ("v=DKIM1; p= ", b"rsa", False),
        ("v=DKIM1; k=ed25519; t=Y; p=", b"ed25519", True),
    ],
)
def test_revoked_key_keeps_its_kind_and_testing_flag(record, kind, testing):
    with pytest.raises(KeyRevoked) as info:
        parse_key_record(record)
    assert (info.value.kind, info.value.testing) == (kind, testing)
    assert info.value.reason == "key revoked (empty p=)"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ("hello world", "key record is malformed: hello world"),
        ("v=DKIM2; k=rsa; p=AAAA", "key record is not v=DKIM1"),
        ("v=DKIM1; h=sha1; p=AAAA", "key record's h= does not allow sha256"),
        ("v=DKIM1; s=tlsrpt; p=AAAA", "key record's s= excludes email"),
        ("v=DKIM1; k=rsa", "key record has no p="),
        ("v=DKIM1; k=rsa; p=!!!", "key record's p= is not base64"),
        ("v=DKIM1; k=rsa; p=AAAA", "key record's p= is not an RSA public key"),
        ("v=DKIM1; k=ed25519; p=AAAA", "key record's p= is not an Ed25519 public key"),
        ("v=DKIM1; k=dsa; p=AAAA", "key record has unknown k=dsa"),
    ],
)
def test_unusable_records(record, reason):
    with pytest.raises(KeyProblem) as info:
        parse_key_record(record)
    assert not isinstance(info.value, KeyRevoked)
    assert info.value.reason == reason
