"""core.senders: which addresses a signed-in user owns, and the one From address."""

import pytest

from securemail.core.addresses import parse_address
from securemail.core.message import read_headers
from securemail.core.senders import (
    OwnedAddresses,
    default_addresses,
    header_from,
    header_from_refusal,
    mail_from_refusal,
)


def test_default_addresses_are_the_login_at_each_of_our_domains():
    assert default_addresses("alice", ["example.nhs.uk", "Trust.NHS.UK"]) == (
        "alice@example.nhs.uk",
        "alice@trust.nhs.uk",
    )


def test_a_login_that_is_an_address_owns_just_itself():
    assert default_addresses("jo@example.nhs.uk", ["example.nhs.uk", "other.nhs.uk"]) == (
        "jo@example.nhs.uk",
    )


def test_a_login_that_makes_no_valid_address_owns_nothing():
    assert default_addresses("a..b", ["example.nhs.uk"]) == ()
    assert default_addresses("x@y@z", ["example.nhs.uk"]) == ()


OWNED = OwnedAddresses.of("alice", ["alice@example.nhs.uk", "Team@Example.NHS.uk", "not valid"])


@pytest.mark.parametrize(
    ("address", "owned"),
    [
        ("alice@example.nhs.uk", True),
        ("ALICE@EXAMPLE.NHS.UK", True),  # case folded, as Postfix's lookup tables do
        ("team@example.nhs.uk", True),
        ("Alice <alice@example.nhs.uk>", True),
        ("alice+x@example.nhs.uk", False),
        ("alice@example.nhs.uk.evil.test", False),
        ("alice@evilexample.nhs.uk", False),
        ("ceo@nhs.net", False),
        ('"alice@example.nhs.uk"@evil.test', False),
    ],
)
def test_owns_compares_whole_addresses(address, owned):
    assert OWNED.owns(parse_address(address)) is owned


def test_an_unparsable_stored_address_is_owned_by_nobody():
    assert len(OWNED.keys) == 2


def test_mail_from_refusal_is_postfix_style_553():
    assert mail_from_refusal(OWNED, parse_address("alice@example.nhs.uk")) is None
    reply = mail_from_refusal(OWNED, parse_address("ceo@nhs.net"))
    assert reply is not None
    assert str(reply) == "553 5.7.1 Sender address not owned by user alice"
    assert "ceo@nhs.net" in reply.log and reply.check == "sender-login"


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        (b"Subject: x\r\n", "no From header"),
        (b"From: a@x.test\r\nFrom: b@y.test\r\n", "more than one From header"),
        (b"From: a@x.test, b@y.test\r\n", "From header with several addresses"),
        (b"From: undisclosed:;\r\n", "From header has no address"),
        (b"From: a@[192.0.2.1]\r\n", "From address not valid: IP-literal"),
    ],
)
def test_header_from_problems(headers, problem):
    address, found = header_from(read_headers(headers + b"\r\nbody\r\n"))
    assert address is None and found.startswith(problem)
    refusal = header_from_refusal(OWNED, read_headers(headers + b"\r\n"))
    assert refusal is not None and refusal.code == 553 and refusal.enhanced == "5.7.1"


def test_header_from_below_the_header_section_is_not_read():
    block = read_headers(b"Subject: x\r\n\r\nFrom: alice@example.nhs.uk\r\n")
    assert header_from(block) == (None, "no From header")


def test_header_from_owned_and_not_owned():
    ours = read_headers(b"From: Alice Smith <Alice@example.nhs.uk>\r\n\r\n")
    assert header_from_refusal(OWNED, ours) is None
    theirs = read_headers(b"From: Alice Smith <ceo@nhs.net>\r\n\r\n")
    reply = header_from_refusal(OWNED, theirs)
    assert reply is not None
    assert str(reply) == "553 5.7.1 From header refused for user alice: address not owned"
