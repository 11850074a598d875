"""securemail.tls: the client contexts and RFC 6125 name matching shared by check/ and delivery.

``name_matches`` has its table in tests/check/test_check_tls.py (its first user); here is
the subtree rule pinned policies use, with names it must accept AND names it must refuse.
"""

import ssl

import pytest

from securemail.tls import (
    peer_dns_names,
    pinned_client_context,
    subdomain_matches,
    verified_client_context,
)


@pytest.mark.parametrize(
    ("parent", "permit", "reject"),
    [
        ("nhs.net",
         ["mx.nhs.net", "a.b.nhs.net", "MX.NHS.NET.", "*.nhs.net", "*.mx.nhs.net"],
         ["nhs.net", "evilnhs.net", "mx.evilnhs.net", "nhs.net.evil.test", "*.net", "*",
          "m*.nhs.net", "*.*.nhs.net", "*.evilnhs.net", ".nhs.net", ""]),
        ("Trust.NHS.net.",
         ["mx.trust.nhs.net", "*.trust.nhs.net"],
         ["trust.nhs.net", "*.nhs.net", "mx.nhs.net", "mx.trust.nhs.net.evil.test"]),
    ],
)  # fmt: skip
def test_subdomain_matching_permits_and_rejects(parent, permit, reject):
    for name in permit:
        assert subdomain_matches(parent, [name]), name
    for name in reject:
        assert not subdomain_matches(parent, [name]), name
    assert subdomain_matches(parent, [*reject, permit[0]])  # any one name is enough


def test_peer_dns_names_reads_only_dns_subject_alt_names():
    peercert = {
        "subject": ((("commonName", "cn-is-not-used.test"),),),
        "subjectAltName": (
            ("DNS", "mx.nhs.net"),
            ("IP Address", "192.0.2.7"),
            ("DNS", "*.nhs.net"),
        ),
    }
    assert peer_dns_names(peercert) == ("mx.nhs.net", "*.nhs.net")
    assert peer_dns_names({}) == () and peer_dns_names(None) == ()


def test_the_pinned_context_verifies_the_chain_but_not_the_name(pki):
    pinned, verified = pinned_client_context(pki.ca_file), verified_client_context(pki.ca_file)
    assert pinned.verify_mode == verified.verify_mode == ssl.CERT_REQUIRED
    assert (pinned.check_hostname, verified.check_hostname) == (False, True)
    assert pinned.minimum_version == verified.minimum_version == ssl.TLSVersion.TLSv1_2
