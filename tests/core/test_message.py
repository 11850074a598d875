"""The one header reader: where the header section ends, what each field is, its bounds."""

import base64
import email.policy
import re
from email.parser import BytesParser

import dkim
import pytest
from harness.crafted import CRAFTED
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.core.message import (
    MAX_BYTES,
    MAX_FIELDS,
    HeaderBlock,
    HeaderField,
    HeaderLimitError,
    decode_words,
    read_headers,
    reparse_input,
    without_fields,
)
from securemail.errors import SecuremailError


def names(block: HeaderBlock) -> list[bytes]:
    return [f.name for f in block.fields]


# --- where the header section ends ------------------------------------------------------


def test_well_formed_message():
    raw = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
    block = read_headers(raw)
    assert names(block) == [b"From", b"Subject"]
    assert [f.raw for f in block.fields] == [b"From: a@example.org\r\n", b"Subject: hi\r\n"]
    assert (block.header_end, block.body_offset, block.malformed) == (34, 36, "")
    assert raw[block.body_offset :] == b"body\r\n"


def test_crafted_block_ends_at_the_line_without_colon():
    block = read_headers(CRAFTED)
    assert names(block) == [b"From"]
    assert block.malformed == "line 2 is not a header field (no name and colon)"
    assert block.header_end == block.body_offset == len(b"From: a@good.example\r\n")
    assert CRAFTED[block.body_offset :].startswith(b"Bogus line without colon\r\nFrom: b@")


@pytest.mark.parametrize(
    ("raw", "fields", "body", "malformed"),
    [
        (b" folded first\r\nFrom: a@x.example\r\n\r\nb", [], b" folded first\r\n", "line 1 is a"),
        (b"From : a@x.example\r\nSubject\t: s\r\n\r\nb", [b"From ", b"Subject\t"], b"b", ""),
        (b"From: a@x.example\r\nX-Fo\x00o: v\r\n\r\nb", [b"From"], b"X-Fo\x00o", "line 2 is not"),
        (b"From: a@x.example\nSubject: s\n\nbody\n", [b"From", b"Subject"], b"body\n", ""),
        (b"From a@x.example Mon Jan  1\r\nFrom: a@x.example\r\n\r\nb", [], b"From a@", "line 1"),
        (b":no name\r\n\r\nb", [], b":no name", "line 1 is not a header field"),
        (b"Caf\xc3\xa9: x\r\n\r\nb", [], b"Caf\xc3\xa9", "line 1 is not"),
        (b"\r\nFrom: a@x.example\r\n", [], b"From: a@x.example\r\n", ""),
        (b"\nFrom: a@x.example\n", [], b"From: a@x.example\n", ""),
        (b"", [], b"", ""),
        (b"From: a@x.example", [b"From"], b"", ""),
        (b"From: a@x.example\r\nSubject: s\r\n", [b"From", b"Subject"], b"", ""),
        (b"A: 1\r\n \r\n\tmore\r\n\r\n\r\nb", [b"A"], b"\r\nb", ""),
        (b"A: 1\r\r\nB: 2\r\n\r\n", [b"A", b"B"], b"", ""),
        (b"A: 1\r\n\rB: 2\r\n\r\n", [b"A"], b"\rB: 2", "line 2 is not"),
    ],
    ids=[
        "continuation-before-any-field",
        "wsp-before-colon",
        "nul-in-name",
        "lf-only",
        "mbox-from-line",
        "empty-name",
        "8-bit-name",
        "no-header-section",
        "no-header-section-lf",
        "empty-message",
        "no-line-end-at-all",
        "headers-only",
        "whitespace-only-continuations",
        "cr-inside-a-value",
        "line-starting-with-cr",
    ],
)
def test_where_the_header_section_ends(raw, fields, body, malformed):
    block = read_headers(raw)
    assert names(block) == fields
    assert raw[block.body_offset :].startswith(body)
    assert block.malformed.startswith(malformed)
    assert bool(block.malformed) == bool(malformed)
    assert b"".join(f.raw for f in block.fields) == raw[: block.header_end]


# --- one field --------------------------------------------------------------------------


def test_field_properties():
    raw = b"Subject \t: =?utf-8?q?Caf=C3=A9?=\r\n  and \xff more\r\n\r\n"
    [field] = read_headers(raw).fields
    assert field == HeaderField(b"Subject \t", raw[:-2])
    assert field.lname == b"subject"
    assert field.value == b" =?utf-8?q?Caf=C3=A9?=\r\n  and \xff more"
    assert field.unfolded == b" =?utf-8?q?Caf=C3=A9?=  and \xff more"
    assert field.text == " =?utf-8?q?Caf=C3=A9?=  and \udcff more"
    assert field.decoded == " Café  and \ufffd more"


def test_value_without_any_line_end():
    [field] = read_headers(b"To: a@x.example\n b@x.example").fields
    assert (field.value, field.unfolded) == (
        b" a@x.example\n b@x.example",
        b" a@x.example b@x.example",
    )


def test_lookups_ignore_case_and_keep_order():
    raw = b"Received: 1\r\nFROM: a@x.example\r\nreceived: 2\r\nFrom : b@x.example\r\n\r\n"
    block = read_headers(raw)
    assert [f.unfolded for f in block.get_all("Received")] == [b" 1", b" 2"]
    assert [f.unfolded for f in block.get_all("from")] == [b" a@x.example", b" b@x.example"]
    assert block.first("RECEIVED").unfolded == b" 1"
    assert block.first("Subject") is None
    assert (block.count("from"), block.count("received"), block.count("to")) == (2, 2, 0)


# --- bounds -----------------------------------------------------------------------------


def test_field_limit():
    assert len(read_headers(b"X: y\r\n" * MAX_FIELDS + b"\r\n").fields) == MAX_FIELDS
    with pytest.raises(HeaderLimitError, match=f"more than {MAX_FIELDS} header fields"):
        read_headers(b"X: y\r\n" * (MAX_FIELDS + 1) + b"\r\n")
    assert len(read_headers(b"X: y\r\n" * 5, max_fields=5).fields) == 5
    with pytest.raises(HeaderLimitError):
        read_headers(b"X: y\r\n" * 6, max_fields=5)


def test_byte_limit_counts_the_header_section_only():
    field = b"X: " + b"y" * 95 + b"\r\n"  # 100 bytes
    assert len(read_headers(field * 10 + b"\r\n" + b"b" * 5000, max_bytes=1000).fields) == 10
    with pytest.raises(HeaderLimitError, match="header section larger than 999 bytes"):
        read_headers(field * 10 + b"\r\n", max_bytes=999)
    with pytest.raises(HeaderLimitError):  # one long folded field counts the same
        read_headers(b"X: y\r\n" + b" z\r\n" * (MAX_BYTES // 4))


def test_limit_error_is_a_securemail_error_in_one_line():
    with pytest.raises(SecuremailError) as info:
        read_headers(b"a:b\n" * 2000)
    assert "\n" not in str(info.value)


def test_a_million_tiny_headers_stop_at_the_limit():
    with pytest.raises(HeaderLimitError):
        read_headers(b"a:b\r\n" * 1_200_000)
    with pytest.raises(HeaderLimitError):
        read_headers(b"a:b\r\n" + b" \r\n" * 1_200_000)  # continuation lines: the byte bound


def test_long_lines_without_a_field_do_not_raise():
    block = read_headers(b"x" * 5_000_000)
    assert (block.fields, block.body_offset, block.malformed[:6]) == ((), 0, "line 1")


# --- rebuilding -------------------------------------------------------------------------


def test_without_fields_is_byte_exact():
    raw = b"A: 1\r\nX-Drop: me\r\n folded\r\nB : 2\nX-DROP: again\r\n\r\nX-Drop: body\r\n"
    block = read_headers(raw)
    dropped = without_fields(raw, block, lambda f: f.lname == b"x-drop")
    assert dropped == b"A: 1\r\nB : 2\n\r\nX-Drop: body\r\n"
    assert without_fields(raw, block, lambda f: False) is raw  # no copy of the body


def test_without_fields_keeps_the_line_that_ended_the_header_section():
    block = read_headers(CRAFTED)
    assert without_fields(CRAFTED, block, lambda f: True) == CRAFTED[block.body_offset :]


def test_reparse_input_leaves_a_well_formed_message_alone():
    raw = b"From: a@x.example\r\nSubject: s\r\n folded\r\n\r\nbody\r\n"
    assert reparse_input(raw, read_headers(raw)) == raw


def test_reparse_input_puts_the_split_where_the_reader_has_it():
    assert reparse_input(CRAFTED, read_headers(CRAFTED)) == (
        b"From: a@good.example\r\n\r\n" + CRAFTED[len(b"From: a@good.example\r\n") :]
    )
    raw = b"Subject : x\ry\r\nZ: 1"
    assert reparse_input(raw, read_headers(raw)) == b"Subject: x y\r\nZ: 1\r\n\r\n"


# --- RFC 2047 -------------------------------------------------------------------------


def b_word(text: str, charset: str = "utf-8") -> bytes:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?=".encode()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (b"plain text", "plain text"),
        (b_word("Résumé"), "Résumé"),
        (b"=?iso-8859-1?q?Caf=E9_au_lait?=", "Café au lait"),
        (b"=?utf-8?q?OFFICIAL-?= \t =?utf-8?q?SENSITIVE?=", "OFFICIAL-SENSITIVE"),
        (b"=?utf-8?q?one?= two =?utf-8?q?three?=", "one two three"),
        (b"=?utf-8*en?q?lang?=", "lang"),
        (b"=?UTF-8?b?w6k?=", "é"),  # padding left out
        (b"=?utf-8?b?ww==?= =?utf-8?b?qQ==?=", "é"),  # a character's bytes split over words
        (b"=?x-unknown?q?caf=C3=A9?=", "café"),
        (b"=?utf-8?q?bad=ZZ?=", "bad=ZZ"),
        (b"=?base64?q?x?=", "x"),  # a codec that is not a text encoding
        (b"8-bit \xff text", "8-bit \ufffd text"),
        (b"=?utf-8?q?no end", "=?utf-8?q?no end"),
    ],
)
def test_decode_words(value, text):
    assert decode_words(value) == text


def test_decode_words_is_linear():
    many = b"=?utf-8?q?a?= " * 200_000
    assert decode_words(many) == "a" * 200_000 + " "
    assert decode_words(b"=?a?q?" * 300_000).startswith("=?a?q?")


# --- properties -------------------------------------------------------------------------

LINES = st.sampled_from(
    [
        b"From: a@x.example",
        b"Subject: =?utf-8?q?hi?=",
        b"To : b@y.example",
        b" continued",
        b"\tfolded",
        b"",
        b"no colon here",
        b"From a@x.example Mon Jan  1 00:00:00 2024",
        b":empty name",
        b"X-Nul\x00: v",
        b"X-Cr: a\rb",
        b"Caf\xc3\xa9: x",
        b"Content-Type: text/plain",
    ]
)
MESSAGES = st.builds(
    lambda lines, newline, tail: newline.join(lines) + tail,
    st.lists(LINES, max_size=12),
    st.sampled_from([b"\r\n", b"\n"]),
    st.binary(max_size=40),
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300), MESSAGES))
def test_reader_raises_nothing_and_fields_are_the_header_section(raw):
    try:
        block = read_headers(raw, max_fields=8, max_bytes=200)
    except HeaderLimitError:
        return
    assert b"".join(f.raw for f in block.fields) == raw[: block.header_end]
    assert block.header_end <= block.body_offset <= len(raw)
    assert all(f.raw.startswith(f.name + b":") for f in block.fields)
    gap = raw[block.header_end : block.body_offset]
    assert gap in (b"", b"\n", b"\r\n")
    assert bool(block.malformed) == (gap == b"" and block.body_offset < len(raw))


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_libraries_fed_reparse_input_see_the_readers_fields_and_body(raw):
    """The stdlib's parser and dkimpy, given ``reparse_input``, agree with the reader."""
    block = read_headers(raw)
    body = raw[block.body_offset :]
    again = reparse_input(raw, block)
    names = [f.name.rstrip(b" \t") for f in block.fields]
    values = [re.sub(rb"\r(?!\n)", b" ", f.raw[len(f.name) + 1 :]) for f in block.fields]

    reread = read_headers(again)
    assert [f.name for f in reread.fields] == names
    assert [f.raw[len(f.name) + 1 :].rstrip(b"\r\n") for f in reread.fields] == [
        v.rstrip(b"\r\n") for v in values
    ]
    assert (again[reread.body_offset :], reread.malformed) == (body, "")
    assert reparse_input(again, reread) == again

    parsed = BytesParser(policy=email.policy.compat32).parsebytes(again)
    assert [(k.encode(), v.encode("ascii", "surrogateescape")) for k, v in parsed.raw_items()] == [
        (name, value.lstrip(b" \t").rstrip(b"\r\n"))
        for name, value in zip(names, values, strict=True)
    ]
    if not parsed.is_multipart():
        assert parsed.get_payload(decode=True) == body

    headers, dkimpy_body = dkim.rfc822_parse(again)
    assert [name for name, _value in headers] == names
    assert dkimpy_body == b"\r\n".join(re.split(rb"\r?\n", body))
