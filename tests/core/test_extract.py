"""core.extract: the bounds of a scan (by counts and sizes, never by timing), safe XML,
text decoding, and never raising on hostile bytes."""

import io
import zipfile

import pytest
from harness.documents import CSV, docx, with_attachment, zip_of
from hypothesis import given
from hypothesis import strategies as st

from securemail.core.extract import (
    DEFAULT_LIMITS,
    Budget,
    Limits,
    Text,
    decode_text,
    extract,
    xml_text,
)
from securemail.core.sensitivity import Kind, Marker, scan_message

VALID = "9434765919"
VALID_2 = "4010232137"
ZIP = "part 2 (application/zip)"


def scan_zip(members: dict[str, bytes], limits: Limits = DEFAULT_LIMITS, **kw) -> tuple:
    raw = with_attachment(zip_of(members, **kw), "a.zip", "application/zip")
    return scan_message(raw, limits=limits).markers


def nhs(where: str, number: str = VALID) -> Marker:
    return Marker(Kind.NHS_NUMBER, where, f"*** *** {number[-4:]}")


def unscannable(where: str, reason: str) -> Marker:
    return Marker(Kind.UNSCANNABLE, where, reason)


# --- bounds ------------------------------------------------------------------------------


def nested_zips(levels: int) -> bytes:
    data = CSV
    name = "patients.csv"
    for _ in range(levels):
        data, name = zip_of({name: data}), "inner.zip"
    return data


def test_archive_nesting_is_bounded():
    # The message is depth 0, its attachment 1, the members of each ZIP one more.
    raw = with_attachment(nested_zips(4), "a.zip", "application/zip")
    members = ", member 1" * 3
    assert scan_message(raw, limits=Limits(max_depth=4)).markers == (
        unscannable(f"{ZIP}{members}", "nested deeper than 4 levels"),
    )
    assert scan_message(raw, limits=Limits(max_depth=5)).markers == (
        nhs(f"{ZIP}{members}, member 1"),
    )


def test_mime_and_archive_nesting_count_together():
    inner = with_attachment(nested_zips(1), "a.zip", "application/zip")
    outer = with_attachment(inner, "fwd.eml", "message/rfc822")
    # message 0 → its parts 1 → the attached message 2 → its parts 3 → ZIP members 4.
    assert scan_message(outer, limits=Limits(max_depth=3)).markers == (
        unscannable("part 3 (application/zip)", "nested deeper than 3 levels"),
    )
    assert scan_message(outer, limits=Limits(max_depth=4)).markers == (
        nhs("part 3 (application/zip), member 1"),
    )


def test_number_of_parts_and_members_is_bounded():
    members = {f"{i}.csv": f"Jane,{VALID}\r\n".encode() for i in range(10)}
    # The message, its two parts, then members one by one: the fifth part is member 2.
    assert scan_zip(members, Limits(max_parts=5)) == (
        nhs(f"{ZIP}, member 1"),
        nhs(f"{ZIP}, member 2"),
        unscannable("rest of message", "more than 5 parts and archive members"),
    )


def test_total_decoded_bytes_are_bounded():
    members = {f"{i}.csv": f"Jane,{VALID}\r\n".encode().ljust(600) for i in range(3)}
    raw_size = len(with_attachment(zip_of(members), "a.zip", "application/zip"))
    limits = Limits(max_total_bytes=raw_size + 1000)
    found = scan_zip(members, limits)
    assert found[-1] == unscannable(
        "rest of message", f"more than {raw_size + 1000} bytes decoded in all"
    )
    assert nhs(f"{ZIP}, member 3") not in found


def test_one_member_over_its_size_bound_leaves_the_others_scanned():
    members = {"big.csv": b"x" * 5000, "p.csv": CSV}
    assert scan_zip(members, Limits(max_member_bytes=4000)) == (
        unscannable(f"{ZIP}, member 1", "larger than 4000 bytes"),
        nhs(f"{ZIP}, member 2"),
    )


def test_zip_bomb_stops_at_the_ratio_bound():
    # Two MiB of zeros deflate to about two KiB: a ratio near 1000:1.
    members = {"bomb.bin": bytes(2 * 1024 * 1024), "p.csv": CSV}
    archive = zip_of(members)
    info = zipfile.ZipFile(io.BytesIO(archive)).infolist()[0]
    assert info.file_size > 100 * info.compress_size
    assert scan_zip(members) == (
        unscannable(f"{ZIP}, member 1", "compression ratio over 100:1"),
        nhs(f"{ZIP}, member 2"),
    )
    # Stored, the same member is just large, and read.
    assert scan_zip(members, stored=True) == (nhs(f"{ZIP}, member 2"),)


def test_small_members_may_compress_well():
    repetitive = b"<row><c><v>0</v></c></row>" * 20_000  # ~500 KiB, very compressible
    assert scan_zip({"sheet.xml": repetitive, "p.csv": CSV}) == (nhs(f"{ZIP}, member 2"),)


def test_time_is_read_from_the_clock_passed_in():
    ticks = iter(range(1_000_000))  # one "second" per reading: a count, not a timing

    def clock() -> float:
        return float(next(ticks))

    members = {f"{i}.csv": f"Jane,{VALID}\r\n".encode() for i in range(50)}
    raw = with_attachment(zip_of(members), "a.zip", "application/zip")
    found = scan_message(raw, limits=Limits(max_seconds=20), clock=clock).markers
    assert found[-1] == unscannable("rest of message", "scan took longer than 20 s")
    assert 0 < len(found) - 1 < 50


def test_budget_keeps_the_first_bound_reached():
    budget = Budget(Limits(max_parts=1, max_total_bytes=10), clock=lambda: 0.0)
    assert budget.count_part() and budget.within()
    assert not budget.take(11)
    assert not budget.count_part()
    assert budget.spent == "more than 10 bytes decoded in all"
    assert budget.too_deep(DEFAULT_LIMITS.max_depth) == ""
    assert Budget(Limits(max_depth=2), clock=lambda: 0.0).too_deep(3) == (
        "nested deeper than 2 levels"
    )


# --- XML ---------------------------------------------------------------------------------

W = 'xmlns:w="urn:w"'


@pytest.mark.parametrize(
    ("xml", "text"),
    [
        (
            f"<w:document {W}><w:p><w:r><w:t>943</w:t></w:r><w:r><w:rPr><w:b/></w:rPr>"
            "<w:t>4765919</w:t></w:r></w:p><w:p><w:r><w:t>next</w:t></w:r></w:p></w:document>",
            "9434765919\nnext\n",
        ),
        ("<row><c><v>1</v></c><c><v>2</v></c></row>", "1\n\n2\n\n\n"),
        ("<props><title>Report</title><rev>1</rev></props>", "Report\n1\n"),
        ("<doc>\n  <p>one</p>\n  <p>two</p>\n</doc>", "one\ntwo\n"),
        ("<p>a<s/>b<tab/>c<br/>d</p>", "a b\tc\nd\n"),
        ('<p><t xml:space="preserve"> 943 </t></p>', " 943 \n"),
    ],
    ids=["word-runs-join", "cells-separate", "values-separate", "indentation", "breaks", "spaces"],
)
def test_xml_text(xml: str, text: str):
    assert xml_text(xml.encode()) == text


def _laughs() -> str:
    entities = ['<!ENTITY lol0 "lol">']
    for i in range(1, 10):
        ref = f"&lol{i - 1};"
        entities.append(f'<!ENTITY lol{i} "{ref * 10}">')
    return (
        f'<?xml version="1.0"?><!DOCTYPE lolz [{"".join(entities)}]>'
        "<w:document><w:p><w:t>&lol9;</w:t></w:p></w:document>"
    )


LAUGHS = _laughs()
EXTERNAL = '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY e SYSTEM "file:///etc/hostname">]><d>&e;</d>'


@pytest.mark.parametrize("xml", [LAUGHS, EXTERNAL, '<!DOCTYPE d SYSTEM "http://x.test/d.dtd"><d/>'])
def test_xml_with_a_document_type_is_not_read_as_xml(xml: str):
    assert xml_text(xml.encode()) is None


def test_entity_bomb_in_a_document_is_never_expanded():
    # Not read as XML: read as plain text, which holds the declarations, not a billion lols.
    bomb = zip_of({"word/document.xml": LAUGHS.encode(), "p.csv": CSV})
    [text, found] = extract(bomb, "att", depth=0, budget=Budget(DEFAULT_LIMITS, lambda: 0.0))
    assert isinstance(text, Text) and len(text.text) == len(LAUGHS)
    assert found == Text("att, member 2", CSV.decode())


def test_malformed_xml_member_is_read_as_text():
    members = {"word/document.xml": f"<w:p><w:t>{VALID}</w:t>".encode()}
    assert scan_zip(members) == (nhs(f"{ZIP}, member 1"),)


# --- text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "charset", "text"),
    [
        ("Née 9434765919".encode("utf-16"), None, "Née 9434765919"),
        ("Née 9434765919".encode("utf-16-be"), None, "Née 9434765919"),
        ("Née".encode("utf-8-sig"), "latin-1", "Née"),  # the mark wins over the label
        ("Née".encode("latin-1"), "latin-1", "Née"),
        (b"N\xe9e", None, "N\ufffde"),
        (b"abc", "x-bogus", "abc"),
        (b"a\x00b\x00c", None, "a\x00b\x00c"),  # too short to call UTF-16
    ],
    ids=["utf16-bom", "utf16-be-sniffed", "bom-over-label", "label", "bad-utf8", "bogus", "short"],
)
def test_decode_text(data: bytes, charset: str | None, text: str):
    assert decode_text(data, charset) == text


def test_extract_reads_unknown_binary_as_text():
    budget = Budget(DEFAULT_LIMITS, lambda: 0.0)
    data = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + f" {VALID} ".encode()
    assert extract(data, "att", depth=0, budget=budget) == [
        Text("att", data.decode("utf-8", errors="replace"))
    ]


@given(
    st.sampled_from([b"PK\x03\x04", b"%PDF-1.7\n", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b""]),
    st.binary(max_size=3000),
)
def test_property_extract_never_raises(prefix: bytes, rest: bytes):
    budget = Budget(DEFAULT_LIMITS, lambda: 0.0)
    items = extract(prefix + rest, "att", depth=0, budget=budget, filename="f.docx")
    assert isinstance(items, list)


def test_property_document_inside_hostile_zip_never_raises():
    data = bytearray(zip_of({"word/document.xml": docx(VALID)}))
    for i in range(0, len(data), 7):
        data[i] ^= 0x5A
        assert isinstance(
            extract(bytes(data), "a", depth=0, budget=Budget(DEFAULT_LIMITS, lambda: 0.0)), list
        )
