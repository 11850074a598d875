"""The Public Suffix List: organizational domains (DMARC) and public suffixes (accredited list)."""

import pytest

from securemail.mech.psl import is_public_suffix, organizational_domain

ORG = [
    ("example.com", "example.com"),
    ("x.y.example.com", "example.com"),
    ("example.co.uk", "example.co.uk"),
    ("foo.bar.co.uk", "bar.co.uk"),
    ("co.uk", "co.uk"),  # itself a public suffix
    ("mail.nhs.net", "nhs.net"),
    ("nhs.net", "nhs.net"),
    ("a.b.example.nhs.uk", "example.nhs.uk"),  # nhs.uk is on the list (ICANN section)
    ("nhs.uk", "nhs.uk"),
    ("hscic.gov.uk", "hscic.gov.uk"),  # gov.uk is on the list too
    ("a.b.gov.uk", "b.gov.uk"),
    ("gov.uk", "gov.uk"),
    ("a.b.c.sch.uk", "b.c.sch.uk"),  # wildcard rule *.sch.uk
    ("alice.github.io", "alice.github.io"),  # private section is used
    ("Mail.Example.COM.", "example.com"),
    ("host.unlisted-tld", "host.unlisted-tld"),  # unknown TLD: the default "*" rule
]


@pytest.mark.parametrize(("domain", "org"), ORG)
def test_organizational_domain(domain, org):
    assert organizational_domain(domain) == org


@pytest.mark.parametrize(
    ("domain", "public"),
    [
        ("co.uk", True),
        ("nhs.uk", True),
        ("gov.uk", True),
        ("CO.UK.", True),  # case and a trailing dot do not matter
        ("github.io", True),  # private section
        ("example.co.uk", False),
        ("trust.nhs.uk", False),
        ("nhs.net", False),  # registered under .net, not a suffix itself
        ("alice.github.io", False),
    ],
)
def test_is_public_suffix(domain, public):
    assert is_public_suffix(domain) is public
