"""TLS-RPT (RFC 8460): parsing the record, and looking it up."""

import pytest

from securemail.dns import Resolver
from securemail.mech.tlsrpt import (
    TlsRptRecord,
    TlsRptSyntaxError,
    lookup_tlsrpt,
    parse_tlsrpt,
    tlsrpt_records,
)

DOMAIN = "example.nhs.uk"


@pytest.mark.parametrize(
    ("record", "error"),
    [
        ("v=TLSRPTv1; rua=mailto:a@example.org; rua=mailto:b@example.org", "more than once"),
        ("v=TLSRPTv1; rua=mailto:no-domain", "not a mailto"),
        ("v=TLSRPTv1; ext=", "invalid value"),
        ("v=TLSRPTv1;; rua=mailto:a@example.org", "not name=value"),
        (" v=TLSRPTv1; rua=mailto:a@example.org", "must start with"),
    ],
)
def test_parse_tlsrpt_errors(record, error):
    with pytest.raises(TlsRptSyntaxError, match=error):
        parse_tlsrpt(record)


def test_parse_tlsrpt_extensions():
    record = parse_tlsrpt("v=TLSRPTv1; rua=mailto:a@example.org ,https://r.example.net; x.y=1")
    assert record.rua == ("mailto:a@example.org", "https://r.example.net")
    assert record.extensions == (("x.y", "1"),)


@pytest.mark.parametrize(
    "record",
    [
        "v=TLSRPTv1; rua=mailto:tls@example.org",
        "v=TLSRPTv1;rua=mailto:tls@example.org;",
        "v=TLSRPTv1 ;\trua=mailto:tls@example.org ; ",
    ],
)
def test_parse_tlsrpt_valid(record):
    assert parse_tlsrpt(record) == TlsRptRecord(("mailto:tls@example.org",))


def test_tlsrpt_records_sees_a_mistyped_version():
    texts = ["v=spf1 -all", "v=TLSRPTv1; rua=mailto:a@example.org", "V=TLSRPTv2; rua=x"]
    assert tlsrpt_records(texts) == texts[1:]


@pytest.fixture
def resolver(dns_server):
    return Resolver([dns_server.nameserver], timeout=2.0)


async def test_lookup_tlsrpt(dns_server, resolver):
    record = f"v=TLSRPTv1; rua=mailto:tls@{DOMAIN}"
    dns_server.add(f"_smtp._tls.{DOMAIN}", "TXT", record, "something else")
    assert await lookup_tlsrpt(DOMAIN, resolver) == ([record], "")


async def test_lookup_tlsrpt_absent(dns_server, resolver):
    assert await lookup_tlsrpt(DOMAIN, resolver) == ([], "")


async def test_lookup_tlsrpt_dns_failure_is_an_error_not_absence(dns_server, resolver):
    dns_server.add(f"_smtp._tls.{DOMAIN}", "TXT", f"v=TLSRPTv1; rua=mailto:tls@{DOMAIN}")
    dns_server.behave(f"_smtp._tls.{DOMAIN}", "servfail")
    records, error = await lookup_tlsrpt(DOMAIN, resolver)
    assert records == []
    assert f"_smtp._tls.{DOMAIN}" in error
