"""Address parsing: every way to hide the real domain is resolved or refused."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.core.addresses import (
    Address,
    AddressError,
    normalise_domain,
    parse_address,
    qualify_postmaster,
    sender_routing,
    skeleton,
    split_address_list,
    valid_helo_name,
)

ACCEPTED = [
    ("plain", "jo@nhs.net", "jo", "nhs.net", ""),
    ("mixed case domain lowered", "Jo.Bloggs@NHS.Net", "Jo.Bloggs", "nhs.net", ""),
    ("display name", "Jo Bloggs <jo@nhs.net>", "jo", "nhs.net", "Jo Bloggs"),
    ("quoted display name", '"Bloggs, Jo" <jo@nhs.net>', "jo", "nhs.net", "Bloggs, Jo"),
    ("angle only", "<jo@nhs.net>", "jo", "nhs.net", ""),
    ("whitespace around", "  jo@nhs.net \t", "jo", "nhs.net", ""),
    ("quoted @ belongs to real domain", '"x@nhs.net"@evil.com', '"x@nhs.net"', "evil.com", ""),
    ("display name lookalike", "jo@nhs.net <jo@evil.com>", "jo", "evil.com", "jo@nhs.net"),
    ("IDNA unicode", "x@bücher.example", "x", "xn--bcher-kva.example", ""),
    ("IDNA upper unicode", "x@BÜCHER.example", "x", "xn--bcher-kva.example", ""),
    ("IDNA A-label", "x@xn--bcher-kva.example", "x", "xn--bcher-kva.example", ""),
    ("atext specials", "a+b!#$%&'*/=?^_`{|}~-c@example.org", "a+b!#$%&'*/=?^_`{|}~-c", "example.org", ""),
    ("utf8 local part", "jöe@example.org", "jöe", "example.org", ""),
    ("subdomain", "a@trust.mail.nhs.net", "a", "trust.mail.nhs.net", ""),
    ("max local", "a" * 64 + "@example.org", "a" * 64, "example.org", ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "local", "domain", "display"),
    [case[1:] for case in ACCEPTED],
    ids=[case[0] for case in ACCEPTED],
)
def test_accepted(text, local, domain, display):
    address = parse_address(text)
    assert (address.local, address.domain, address.display_name) == (local, domain, display)


REFUSED = [
    ("empty", "", "empty"),
    # these three were silently repaired before (the trailing dot was an accepted case)
    ("trailing dot", "jo@nhs.net.", "ends with '.'"),
    ("trailing dot in angles", "Jo <jo@nhs.net.>", "ends with '.'"),
    ("adjacent quoted strings", '"a""b"@nhs.net', "one quoted string only"),
    ("quoted then atom", '"a"b@nhs.net', "one quoted string only"),
    ("spaces inside angles", "Jo < jo@nhs.net >", "space inside '<...>'"),
    ("space before close angle", "<jo@nhs.net >", "space inside '<...>'"),
    ("blank", "   ", "empty"),
    ("no at", "jo.nhs.net", "no '@'"),
    ("two mailboxes", "a@nhs.net@evil.com", "more than one '@'"),
    ("list comma", "a@nhs.net, b@evil.com", "several addresses"),
    ("list semicolon", "a@nhs.net;b@evil.com", "several addresses"),
    ("two angle addrs", "<a@nhs.net> <b@evil.com>", "several '<...>'"),
    ("text after angle", "<a@nhs.net> evil.com", "after the closing"),
    ("ip literal", "a@[192.0.2.1]", "IP-literal"),
    ("ipv6 literal", "a@[IPv6:2001:db8::1]", "IP-literal"),
    ("bare ip", "a@192.0.2.1", "IP address"),
    ("numeric tld", "a@example.123", "IP address"),
    ("single label", "a@localhost", "no dot"),
    ("empty domain", "a@", "empty domain"),
    ("empty local", "@nhs.net", "empty local part"),
    ("double dot local", "a..b@nhs.net", "empty part"),
    ("leading dot local", ".a@nhs.net", "empty part"),
    ("double dot domain", "a@nhs..net", "empty label"),
    ("hyphen label", "a@-nhs.net", "not a valid host name"),
    ("underscore", "a@my_host.nhs.net", "not a valid host name"),
    ("space in local", "a b@nhs.net", "unquoted space"),
    ("CRLF injection", "a@nhs.net\r\nBcc: x@evil.com", "control characters"),
    ("NUL", "a@nhs.net\x00.evil.com", "control characters"),
    ("source route", "<@relay.evil.com:a@nhs.net>", "source routes"),
    ("comment", "a(comment)@nhs.net", "comments"),
    ("unterminated quote", '"a@nhs.net', "unterminated"),
    ("local too long", "a" * 65 + "@example.org", "longer than 64"),
    ("label too long", "a@" + "b" * 64 + ".org", "longer than 63"),
    ("domain too long", "a@" + ".".join(["b" * 60] * 5) + ".org", "longer than 253"),
    ("address too long", "a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".abcdefghijklmnopqrstuvwxyz.org", "longer than 254"),
    ("invalid punycode", "a@xn--zz.example", "not valid IDNA"),
    ("reserved double hyphen", "a@ab--cd.example", "reserved"),
    ("fullwidth nhs.net", "a@ｎｈｓ.ｎｅｔ", "canonical form"),
    ("ideographic full stop", "a@nhs。net", "canonical form"),
    ("invalid idna (emoji)", "a@💩.example", "internationalised"),
    ("lone surrogate", "a\udcff@nhs.net", "not valid UTF-8"),
    ("oversized input", "a" * 5000 + "@nhs.net", "longer than 1024"),
    ("null sender", "<>", "empty"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "why"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED]
)
def test_refused(text, why):
    with pytest.raises(AddressError, match=None) as info:
        parse_address(text)
    assert why in str(info.value)


def test_unicode_domain_round_trip():
    assert parse_address("x@xn--bcher-kva.example").unicode_domain == "bücher.example"
    assert parse_address("x@nhs.net").unicode_domain == "nhs.net"


def test_cyrillic_lookalike_is_a_different_domain():
    address = parse_address("x@nhs.nеt")  # Cyrillic е
    assert address.domain != "nhs.net"
    assert address.domain.startswith("nhs.xn--")
    assert skeleton(address.unicode_domain) == "nhs.net"


def test_normalise_domain_matches_parse():
    assert normalise_domain("NHS.NET.") == "nhs.net"
    with pytest.raises(AddressError):
        normalise_domain("[127.0.0.1]")


SPLITS = [
    ("a@b.org, c@d.org", ["a@b.org", "c@d.org"]),
    ('"Bloggs, Jo" <jo@nhs.net>; x@y.org', ['"Bloggs, Jo" <jo@nhs.net>', "x@y.org"]),
    ("Team: a@x.org, b@y.org;, z@q.org", ["a@x.org", "b@y.org", "z@q.org"]),
    ("undisclosed-recipients:;", []),
    ("a@b.org,\r\n c@d.org", ["a@b.org", "c@d.org"]),
    ("a@nhs.net@evil.com", ["a@nhs.net@evil.com"]),  # left whole, for the parser to refuse
]


@pytest.mark.parametrize(("header", "pieces"), SPLITS)
def test_split_address_list(header, pieces):
    assert split_address_list(header) == pieces


@given(st.text(max_size=300))
def test_parse_never_raises_anything_but_address_error(text):
    try:
        address = parse_address(text)
    except AddressError:
        return
    assert address.domain == address.domain.lower()
    assert address.domain.isascii()
    assert "@" not in address.domain


@given(st.text(max_size=300))
def test_split_never_raises(text):
    assert isinstance(split_address_list(text), list)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("a@example.org (Alice)", "a@example.org"),
        ("(work) a@example.org", "a@example.org"),
        ("Alice <a@example.org> (via list)", "a@example.org"),
        ("a@example.org (nested (comment) here)", "a@example.org"),
        (r"a@example.org (escaped \) paren)", "a@example.org"),
        ('"x (not a comment)"@example.org', '"x (not a comment)"@example.org'),
    ],
)
def test_outer_comments_are_cfws(text, address):
    """RFC 5322 allows comments around a mailbox; they carry no address."""
    assert parse_address(text).addr_spec == address


@pytest.mark.parametrize(
    "text", ["a(x)@example.org", "a@example.org (unclosed", "a@(x)example.org", "a@b (c) d@e"]
)
def test_comments_that_could_hide_an_address_stay_refused(text):
    with pytest.raises(AddressError):
        parse_address(text)


@pytest.mark.parametrize(
    ("text", "routed"),
    [
        ("victim%gmail.test@example.nhs.uk", True),
        ("gmail.test!victim@example.nhs.uk", True),
        ('"victim@gmail.test"@example.nhs.uk', True),
        ('"jo bloggs"@example.nhs.uk', False),
        ("jo.bloggs+tag@example.nhs.uk", False),
    ],
)
def test_sender_routing_in_local_part(text, routed):
    assert sender_routing(parse_address(text)) is routed


def test_bare_postmaster_is_ours():
    assert qualify_postmaster(" PostMaster ", "example.nhs.uk") == "postmaster@example.nhs.uk"
    assert qualify_postmaster("postmaster@nhs.net", "example.nhs.uk") == "postmaster@nhs.net"
    assert qualify_postmaster("postmasters", "example.nhs.uk") == "postmasters"


@pytest.mark.parametrize(
    ("name", "valid"),
    [("mx.example.org", True), ("[192.0.2.1]", True), ("not a name", True),
     ("m\u00e9l.example", False), ("mx\x00.test", False), ("\udcff.test", False), ("", False)],
)  # fmt: skip
def test_helo_name_printable_ascii(name, valid):
    assert valid_helo_name(name) is valid


def test_a_kept_answer_is_the_parse_and_a_refusal_is_never_kept():
    parse_address.cache_clear()
    first = parse_address("Jo Bloggs <jo@NHS.net>")
    assert parse_address("Jo Bloggs <jo@NHS.net>") == first == Address("jo", "nhs.net", "Jo Bloggs")
    assert parse_address.cache_info().hits == 1
    for _ in range(2):
        with pytest.raises(AddressError, match="more than one '@'"):
            parse_address("x@nhs.net@evil.com")
    assert parse_address.cache_info().currsize == 1
