import base64
import gzip
import json
from email.message import EmailMessage

import pytest
from harness.documents import (
    CSV,
    docx,
    encrypted_zip,
    odf,
    pdf,
    pptx,
    with_attachment,
    xlsx,
    zip_of,
)
from hypothesis import given
from hypothesis import strategies as st

from securemail.core import sensitivity
from securemail.core.sensitivity import (
    NOT_SENSITIVE,
    Kind,
    Marker,
    Sensitivity,
    find_nhs_numbers,
    is_valid_nhs_number,
    mask_nhs_numbers,
    scan_message,
)

WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def check_digit(nine: str) -> int:
    """Reference modulus 11, written independently of the module under test."""
    remainder = sum(int(d) * w for d, w in zip(nine, WEIGHTS, strict=True)) % 11
    return {0: 0, 1: 10}.get(remainder, 11 - remainder)


def with_check_digit(nine: str) -> str:
    check = check_digit(nine)
    assert check != 10, f"{nine} has no valid check digit"
    return nine + str(check)


VALID = "9434765919"
VALID_2 = "4010232137"
BUILT = with_check_digit("123456788")
CHECK_TEN = next(
    f"{n:09d}0" for n in range(100_000_000, 999_999_999) if check_digit(f"{n:09d}") == 10
)


def spaced(number: str, sep: str = " ") -> str:
    return f"{number[:3]}{sep}{number[3:6]}{sep}{number[6:]}"


def message(
    body: str = "Hello,\nSee you on Tuesday.\n", subject: str = "Clinic", **kw: str
) -> bytes:
    msg = EmailMessage()
    msg["From"] = "gp@nhs.net"
    msg["To"] = "someone@example.com"
    msg["Subject"] = subject
    msg.set_content(body, **kw)
    return msg.as_bytes()


def html_message(markup: str, text: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["Subject"] = "Clinic"
    if text is None:
        msg.set_content(markup, subtype="html")
    else:
        msg.set_content(text)
        msg.add_alternative(markup, subtype="html")
    return msg.as_bytes()


def raw_message(headers: str, body: bytes) -> bytes:
    return headers.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


def nhs(where: str, number: str = VALID) -> Marker:
    return Marker(Kind.NHS_NUMBER, where, f"*** *** {number[-4:]}")


def marking(where: str, text: str = "OFFICIAL-SENSITIVE") -> Marker:
    return Marker(Kind.MARKING, where, text)


# --- NHS numbers -------------------------------------------------------------------


def test_reference_numbers_are_what_the_tests_claim():
    assert check_digit(VALID[:9]) == int(VALID[9])
    assert check_digit(VALID_2[:9]) == int(VALID_2[9])
    assert check_digit(CHECK_TEN[:9]) == 10
    for same in ("0000000000", "1111111111", "9999999999"):
        assert check_digit(same[:9]) == int(same[9]), "all-identical passes mod 11"


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        (VALID, True),
        (VALID_2, True),
        (BUILT, True),
        (spaced(VALID), True),
        (spaced(VALID, "-"), True),
        (spaced(VALID, "\u00a0"), True),
        (VALID[:9] + str((int(VALID[9]) + 1) % 10), False),
        (CHECK_TEN, False),
        ("0000000000", False),
        ("1111111111", False),
        ("9999999999", False),
        ("943 476-5919", False),
        ("943  476  5919", False),
        ("9434 76 5919", False),
        ("94347659190", False),
        ("943476591", False),
        (f" {VALID}", False),
        (f"{VALID}\n", False),
        ("943476591x", False),
        ("９４３４７６５９１９", False),
        ("", False),
    ],
    ids=[
        "plain",
        "plain-2",
        "built",
        "spaced",
        "hyphenated",
        "nbsp",
        "wrong-check-digit",
        "check-digit-10",
        "all-zeros",
        "all-ones",
        "all-nines",
        "mixed-separators",
        "double-spaces",
        "wrong-grouping",
        "eleven-digits",
        "nine-digits",
        "leading-space",
        "trailing-newline",
        "letter",
        "fullwidth-digits",
        "empty",
    ],
)
def test_is_valid_nhs_number(number: str, valid: bool):
    assert is_valid_nhs_number(number) is valid


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (f"Patient NHS no. {VALID}, seen today", [VALID]),
        (f"NHS: {spaced(VALID)}.", [VALID]),
        (f"({spaced(VALID, '-')})", [VALID]),
        (f"NHS&nbsp;no {spaced(VALID, chr(0xA0))}", [VALID]),
        (f"{VALID} and {spaced(VALID_2)}", [VALID, VALID_2]),
        (f"NHS{VALID}x", [VALID]),
        (f"1{VALID}", []),
        (f"{VALID}0", []),
        (f"1 {spaced(VALID)}", []),
        (f"{spaced(VALID)} 1", []),
        (f"{spaced(VALID, '-')}-1234", []),
        (f"12-{VALID}", [VALID]),  # solid ten digits: only touching digits disqualify
        (f"{VALID} {VALID_2}", [VALID, VALID_2]),  # back to back: missing one is unsafe
        (f"Tel 020 7946 0958 or {CHECK_TEN}", []),
        ("0000000000 1111111111", []),
        ("943 476-5919", []),
        ("", []),
    ],
    ids=[
        "in-prose",
        "spaced",
        "hyphenated",
        "nbsp",
        "two-numbers",
        "letters-touching",
        "digit-before",
        "digit-after",
        "group-before",
        "group-after",
        "hyphen-group-after",
        "hyphen-before-solid",
        "back-to-back-solid",
        "phone-and-check-ten",
        "all-identical",
        "mixed-separators",
        "empty",
    ],
)
def test_find_nhs_numbers(text: str, found: list[str]):
    assert find_nhs_numbers(text) == found


def test_masking_hides_exactly_what_is_found():
    """``queue cat`` masks with the scanner's own detector: the same numbers, nothing else."""
    text = (
        f"NHS {spaced(VALID)}, ({spaced(VALID_2, '-')}), NHS{VALID}x, id=X{VALID}&s, "
        f"tel {spaced(VALID)} 12, {CHECK_TEN}"
    )
    masked = mask_nhs_numbers(text)
    assert masked == (
        f"NHS *** *** {VALID[-4:]}, (*** *** {VALID_2[-4:]}), NHS*** *** {VALID[-4:]}x, "
        f"id=X{VALID}&s, tel {spaced(VALID)} 12, {CHECK_TEN}"
    )
    assert find_nhs_numbers(masked) == []
    assert mask_nhs_numbers("no numbers here") == "no numbers here"


def test_ten_digits_inside_a_letters_and_digits_token_are_an_identifier():
    cases = {
        f"build a{VALID}f": [],  # a hex id
        f"https://example.test/r?id=X{VALID}&s=1": [],  # a URL token
        f"ref {VALID}f": [],
        f"Ａ{VALID}": [],  # a letter in any script
        # Still NHS numbers: on their own, after punctuation, or labelled as one.
        f"https://example.test/r?id={VALID}&s=1": [VALID],
        f"id_{VALID}": [VALID],
        f"nhs{VALID}": [VALID],
        f"NHS{VALID}x": [VALID],
    }
    assert {text: find_nhs_numbers(text) for text in cases} == cases


# --- protective markings and subject tags ------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("OFFICIAL-SENSITIVE: referral", "OFFICIAL-SENSITIVE"),
        ("official sensitive referral", "OFFICIAL-SENSITIVE"),
        ("Re: OFFICIAL_SENSITIVE", "OFFICIAL-SENSITIVE"),
        ("OFFICIAL:SENSITIVE", "OFFICIAL-SENSITIVE"),
        ("OFFICIAL–SENSITIVE", "OFFICIAL-SENSITIVE"),
        ("OFFICIAL-SENSITIVE [PERSONAL] referral", "OFFICIAL-SENSITIVE [PERSONAL]"),
        ("Official-Sensitive [ commercial ]", "OFFICIAL-SENSITIVE [COMMERCIAL]"),
        ("OFFICIAL-SENSITIVE[LOCSEN]", "OFFICIAL-SENSITIVE [LOCSEN]"),
        ("OFFICIAL-SENSITIVE - PERSONAL", "OFFICIAL-SENSITIVE [PERSONAL]"),
        ("OFFICIAL-SENSITIVE: PERSONAL", "OFFICIAL-SENSITIVE [PERSONAL]"),
        ("OFFICIAL-SENSITIVE - please read", "OFFICIAL-SENSITIVE"),
        ("(OFFICIAL-SENSITIVE)", "OFFICIAL-SENSITIVE"),
    ],
    ids=[
        "hyphen",
        "space-lower",
        "underscore",
        "colon",
        "en-dash",
        "bracket-descriptor",
        "bracket-spaces",
        "bracket-no-space",
        "dash-descriptor",
        "colon-descriptor",
        "dash-prose-not-descriptor",
        "parenthesised",
    ],
)
def test_marking_in_subject(subject: str, expected: str):
    assert scan_message(message(subject=subject)).markers == (marking("subject", expected),)


@pytest.mark.parametrize(
    "subject",
    [
        "OFFICIAL",
        "OFFICIAL: meeting notes",
        "UNOFFICIAL-SENSITIVE",
        "Sensitive, official",
        "OFFICIALSENSITIVE",
        "secure results",
        "[securely] sent",
        "[secure results",
    ],
    ids=[
        "official-alone",
        "official-colon",
        "letter-before",
        "reversed",
        "no-separator",
        "secure-unbracketed",
        "securely",
        "unclosed-bracket",
    ],
)
def test_subject_not_sensitive(subject: str):
    assert scan_message(message(subject=subject)).markers == ()


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("[secure] blood results", ("[secure]",)),
        ("Re: FW: [SECURE] results", ("[secure]",)),
        ("results [ Secure ]", ("[secure]",)),
        ("[encrypt] results", ("[encrypt]",)),
        ("[ENCRYPT][secure]", ("[encrypt]", "[secure]")),
        ("[secure] [secure]", ("[secure]",)),
    ],
    ids=["lower", "upper-after-prefixes", "inner-spaces", "legacy", "both", "duplicate"],
)
def test_subject_tags(subject: str, expected: tuple[str, ...]):
    found = scan_message(message(subject=subject)).markers
    assert found == tuple(Marker(Kind.SUBJECT_TAG, "subject", tag) for tag in expected)


def test_subject_tag_in_body_is_not_a_tag():
    assert scan_message(message("[secure]\nplease encrypt this\n")).markers == ()


def numbered_lines(count: int, special: dict[int, str]) -> str:
    return "\n".join(special.get(i, f"line {i} of the letter") for i in range(1, count + 1))


@pytest.mark.parametrize(
    ("body", "flagged"),
    [
        (numbered_lines(30, {1: "OFFICIAL-SENSITIVE"}), True),
        (numbered_lines(30, {10: "OFFICIAL-SENSITIVE"}), True),
        (numbered_lines(30, {11: "OFFICIAL-SENSITIVE"}), False),
        (numbered_lines(30, {15: "We do not use OFFICIAL-SENSITIVE for routine letters."}), False),
        (numbered_lines(30, {25: "OFFICIAL-SENSITIVE"}), False),
        (numbered_lines(30, {26: "OFFICIAL-SENSITIVE"}), True),
        (numbered_lines(30, {30: "OFFICIAL-SENSITIVE"}), True),
        ("\n\n  \n" * 20 + numbered_lines(30, {3: "OFFICIAL-SENSITIVE"}), True),
        (numbered_lines(30, {28: "OFFICIAL-SENSITIVE"}) + "\n \n\n" * 20, True),
        ("OFFICIAL SENSITIVE", True),
        ("OFFICIAL\nSENSITIVE", False),
    ],
    ids=[
        "first-line",
        "tenth-line",
        "eleventh-line",
        "prose-mid-body",
        "sixth-from-last",
        "fifth-from-last",
        "last-line",
        "blank-lines-before-do-not-count",
        "blank-lines-after-do-not-count",
        "one-line-body",
        "split-over-lines",
    ],
)
def test_marking_position_in_body(body: str, flagged: bool):
    expected = (marking("body"),) if flagged else ()
    assert scan_message(message(body)).markers == expected


def test_short_body_marking_counted_once():
    body = numbered_lines(6, {3: "OFFICIAL-SENSITIVE [PERSONAL]"})
    assert scan_message(message(body)).markers == (
        marking("body", "OFFICIAL-SENSITIVE [PERSONAL]"),
    )


def test_marking_with_a_case_folded_letter_is_found():
    """The quick look for "official" before the full pattern is as case-blind as the
    pattern: a dotless i or a Kelvin sign matches under re.IGNORECASE, not str.lower()."""
    for text in ("OFF\u0131CIAL-SENSITIVE", "offıcial sensitive", "OFFICIAL-SENSITIVE"):
        body = numbered_lines(6, {1: text})
        assert scan_message(message(body)).markers == (marking("body"),), text


@given(st.lists(st.sampled_from(["official", "OFFICIAL", "Offıcial", "ofﬁcial", "sensitive",
                                 "SENSITIVE", "-", " ", "[personal]", "x", "é", "\u212a"]))
       .map("".join))  # fmt: skip
def test_every_marking_holds_the_hint(line: str):
    for match in sensitivity._MARKING.finditer(line):
        assert sensitivity._MARKING_HINT.search(match[0]) is not None


def test_nhs_number_counts_anywhere_in_body():
    body = numbered_lines(200, {100: f"NHS number {VALID}"})
    assert scan_message(message(body)).markers == (nhs("body"),)


# --- decoding: headers, transfer encodings, charsets, HTML -------------------------


def b64_word(text: str, charset: str = "utf-8") -> str:
    return f"=?{charset}?b?{base64.b64encode(text.encode(charset)).decode()}?="


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (b64_word("Résumé OFFICIAL-SENSITIVE [PERSONAL]"), "OFFICIAL-SENSITIVE [PERSONAL]"),
        ("=?iso-8859-1?q?Caf=E9_OFFICIAL=2DSENSITIVE?=", "OFFICIAL-SENSITIVE"),
        ("=?utf-8?q?OFFICIAL-?=\n =?utf-8?q?SENSITIVE?=", "OFFICIAL-SENSITIVE"),
        ("=?utf-8?q?OFFICIAL?= SENSITIVE", "OFFICIAL-SENSITIVE"),
        (
            "Referral for a very long subject line that is folded OFFICIAL\n SENSITIVE",
            "OFFICIAL-SENSITIVE",
        ),
        (b64_word("OFFICIAL–SENSITIVE"), "OFFICIAL-SENSITIVE"),
        ("=?x-bogus?q?OFFICIAL-SENSITIVE?=", "OFFICIAL-SENSITIVE"),
    ],
    ids=[
        "base64-word",
        "q-word-latin1",
        "adjacent-words-joined",
        "word-then-text",
        "folded",
        "en-dash-in-word",
        "bogus-charset",
    ],
)
def test_encoded_subject(subject: str, expected: str):
    raw = raw_message(f"From: gp@nhs.net\nSubject: {subject}", b"Hello\r\n")
    assert scan_message(raw).markers == (marking("subject", expected),)


def test_eight_bit_utf8_subject():
    raw = b"Subject: Caf\xc3\xa9 OFFICIAL\xe2\x80\x93SENSITIVE\r\n\r\nHello\r\n"
    assert scan_message(raw).markers == (marking("subject"),)


def test_nhs_number_in_subject():
    assert scan_message(message(subject=f"Results for {spaced(VALID)}")).markers == (
        nhs("subject"),
    )


@pytest.mark.parametrize(
    ("kw", "body", "hidden"),
    [
        ({"cte": "base64"}, f"Patient {spaced(VALID)}\n", spaced(VALID)),
        ({"cte": "quoted-printable"}, "OFFICIAL–SENSITIVE\nhello\n", "OFFICIAL–SENSITIVE"),
        (
            {"cte": "quoted-printable", "charset": "latin-1"},
            f"Née {spaced(VALID, chr(0xA0))}\n",
            spaced(VALID, chr(0xA0)),
        ),
        ({"cte": "base64", "charset": "utf-8"}, f"Café {spaced(VALID, chr(0xA0))}\n", "Café"),
    ],
    ids=["base64", "quoted-printable-utf8", "quoted-printable-latin1", "base64-utf8"],
)
def test_transfer_encodings_and_charsets(kw: dict[str, str], body: str, hidden: str):
    raw = message(body, **kw)
    assert hidden.encode() not in raw, "the body must really be encoded for this test"
    expected = (marking("body"),) if "OFFICIAL" in body else (nhs("body"),)
    assert scan_message(raw).markers == expected


@pytest.mark.parametrize(
    "charset",
    ["x-bogus", "base64", "idna", "utf-8\x00", ""],
    ids=["bogus", "base64", "idna", "nul", "empty"],
)
def test_unknown_charset_falls_back_to_utf8(charset: str):
    raw = raw_message(
        f'Subject: x\nContent-Type: text/plain; charset="{charset}"', f"NHS {VALID}\r\n".encode()
    )
    assert scan_message(raw).markers == (nhs("body"),)


@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        (f"<p>NHS&nbsp;{spaced(VALID, '&nbsp;')}</p>", (nhs("body"),)),
        (f"<p><b>{VALID[:3]}</b> {VALID[3:6]} <i>{VALID[6:]}</i></p>", (nhs("body"),)),
        (f"<p>{VALID[:3]}&#32;{VALID[3:6]}&#x20;{VALID[6:]}</p>", (nhs("body"),)),
        ("<p><span>OFFICIAL</span>-<span>SENSITIVE</span></p><p>Dear Dr</p>", (marking("body"),)),
        ("<p>OFFICIAL\n  SENSITIVE</p>", (marking("body"),)),
        (
            "<div>OFFICIAL&ndash;SENSITIVE&nbsp;[PERSONAL]</div>",
            (marking("body", "OFFICIAL-SENSITIVE [PERSONAL]"),),
        ),
        (f"<script>var id = {VALID};</script><p>Hello</p>", ()),
        ("<style>/* OFFICIAL-SENSITIVE */</style><p>Hello</p>", ()),
        ("<!-- OFFICIAL-SENSITIVE --><p>Hello</p>", ()),
        (f'<p title="{VALID}">Hello</p>', ()),
        (f"<table><tr><td>{VALID[:5]}</td><td>{VALID[5:]}</td></tr></table>", ()),
        ("<p>" + "<p>filler</p>" * 20 + "<p>OFFICIAL-SENSITIVE</p>" + "<p>x</p>" * 20, ()),
    ],
    ids=[
        "nbsp-entities",
        "inline-tags",
        "numeric-entities",
        "marking-split-by-spans",
        "marking-split-by-source-newline",
        "named-entities",
        "script-ignored",
        "style-ignored",
        "comment-ignored",
        "attribute-ignored",
        "table-cells-separate",
        "marking-deep-in-html",
    ],
)
def test_html_body(markup: str, expected: tuple[Marker, ...]):
    assert scan_message(html_message(markup)).markers == expected


def test_multipart_alternative_reports_each_part():
    raw = html_message(
        f"<p>OFFICIAL-SENSITIVE</p><p>NHS {spaced(VALID, '&nbsp;')}</p>",
        text=f"OFFICIAL-SENSITIVE\nNHS {VALID}\n",
    )
    assert scan_message(raw).markers == (
        marking("part 1 (text/plain)"),
        nhs("part 1 (text/plain)"),
        marking("part 2 (text/html)"),
        nhs("part 2 (text/html)"),
    )


def test_nested_message_is_scanned():
    inner = EmailMessage()
    inner["Subject"] = "Referral"
    inner.set_content(f"Patient {spaced(VALID)}\n")
    outer = EmailMessage()
    outer["Subject"] = "FW: referral"
    outer.set_content("See below.\n")
    outer.add_attachment(inner)
    assert scan_message(outer.as_bytes()).markers == (nhs("part 2 (text/plain)"),)


def attachment_message(maintype: str, subtype: str) -> bytes:
    msg = EmailMessage()
    msg["Subject"] = "Report"
    msg.set_content("Report attached.\n")
    msg.add_attachment(
        f"%PDF-1.4 NHS {VALID} OFFICIAL-SENSITIVE".encode(),
        maintype=maintype,
        subtype=subtype,
        filename="report",
    )
    return msg.as_bytes()


def test_attachment_that_is_not_really_a_pdf_is_unscannable():
    # Until issue 15, attachments were not scanned at all. A "PDF" that is not one is
    # neither skipped nor guessed at: a person could not open it either, so it is
    # reported, and policy decides ([policy] unscannable).
    assert scan_message(attachment_message("application", "pdf")).markers == (
        Marker(Kind.UNSCANNABLE, "part 2 (application/pdf)", "malformed PDF"),
    )
    # An attachment is read by what its bytes are, whatever its declared type.
    assert scan_message(attachment_message("text", "plain")).markers == (
        Marker(Kind.UNSCANNABLE, "part 2 (text/plain)", "malformed PDF"),
    )
    # But without a file name, mail clients show a text/* part inline, as text.
    msg = EmailMessage()
    msg["Subject"] = "Report"
    msg.set_content(f"%PDF-1.4 NHS {VALID} OFFICIAL-SENSITIVE\n")
    assert scan_message(msg.as_bytes()).markers == (marking("body"), nhs("body"))


# --- attachments and documents (issue 15) -------------------------------------------

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
ODT = "application/vnd.oasis.opendocument.text"
ODS = "application/vnd.oasis.opendocument.spreadsheet"
ODP = "application/vnd.oasis.opendocument.presentation"
OCTET = "application/octet-stream"
SECURE_TAG = "[secure]"


def eml(subject: str, body: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "gp@nhs.net"
    msg["Subject"] = subject
    msg.set_content(body)
    return msg.as_bytes()


@pytest.mark.parametrize(
    ("data", "filename", "content_type", "where"),
    [
        (CSV, "patients.csv", "text/csv", "part 2 (text/csv)"),
        (CSV, "patients.csv", OCTET, f"part 2 ({OCTET})"),
        (CSV, "patients", "application/vnd.ms-excel", "part 2 (application/vnd.ms-excel)"),
        (CSV.decode().encode("utf-16"), "unicode.txt", "text/plain", "part 2 (text/plain)"),
        (CSV.decode().encode("utf-16-le"), "unicode.txt", OCTET, f"part 2 ({OCTET})"),
        (b"\x00" + CSV, "nul.csv", OCTET, f"part 2 ({OCTET})"),
        (b"<p>943 <b>476</b> 5919</p>", "letter.html", "text/html", "part 2 (text/html)"),
        (docx("Jane ", "943", "4765919"), "letter.docx", DOCX, f"part 2 ({DOCX}), member 2"),
        (xlsx(("Jane", 9434765919)), "list.xlsx", XLSX, f"part 2 ({XLSX}), member 2"),
        (pptx(f"Patient {VALID}"), "slides.pptx", PPTX, f"part 2 ({PPTX}), member 2"),
        (odf("text", VALID), "letter.odt", ODT, f"part 2 ({ODT}), member 2"),
        (odf("spreadsheet", VALID), "list.ods", ODS, f"part 2 ({ODS}), member 2"),
        (odf("presentation", VALID), "slides.odp", ODP, f"part 2 ({ODP}), member 2"),
        (pdf(f"Jane {VALID}"), "letter.pdf", "application/pdf", "part 2 (application/pdf)"),
        (
            pdf(f"Jane {VALID}", user_password=""),  # an owner password only: opens for all
            "letter.pdf",
            "application/pdf",
            "part 2 (application/pdf)",
        ),
        (
            pdf("See the attached list.", attachment=("list.csv", CSV)),
            "letter.pdf",
            "application/pdf",
            "part 2 (application/pdf), embedded file 1",
        ),
        (
            zip_of({"a/patients.csv": CSV}),
            "p.zip",
            "application/zip",
            "part 2 (application/zip), member 1",
        ),
        (
            zip_of({"readme.txt": b"hello", "inner.zip": zip_of({"letter.docx": docx(VALID)})}),
            "p.zip",
            "application/zip",
            "part 2 (application/zip), member 2, member 1, member 2",
        ),
        (docx(VALID), "letter.txt", "text/plain", "part 2 (text/plain), member 2"),  # by magic
    ],
    ids=[
        "csv",
        "csv-as-octet-stream",
        "csv-without-extension",
        "utf16-with-bom",
        "utf16-without-bom",
        "nul-before-csv",
        "html-attachment",
        "docx-number-split-over-runs",
        "xlsx-numeric-cell",
        "pptx",
        "odt",
        "ods",
        "odp",
        "pdf",
        "pdf-owner-password-only",
        "pdf-embedded-csv",
        "zip",
        "docx-in-zip-in-zip",
        "docx-declared-as-text",
    ],
)
def test_nhs_number_in_attachment(data: bytes, filename: str, content_type: str, where: str):
    assert scan_message(with_attachment(data, filename, content_type)).markers == (nhs(where),)


def test_marking_in_document():
    raw = with_attachment(odf("text", "OFFICIAL-SENSITIVE [PERSONAL]"), "letter.odt", ODT)
    assert scan_message(raw).markers == (
        marking(f"part 2 ({ODT}), member 2", "OFFICIAL-SENSITIVE [PERSONAL]"),
    )


def test_attached_message_subject_and_parts():
    inner = EmailMessage()
    inner["Subject"] = "[secure] OFFICIAL-SENSITIVE referral"
    inner.set_content("Dear Dr\n")
    inner.add_attachment(CSV, maintype="text", subtype="csv", filename="p.csv")
    outer = EmailMessage()
    outer["Subject"] = "FW: referral"
    outer.set_content("See below.\n")
    outer.add_attachment(inner)
    assert scan_message(outer.as_bytes()).markers == (
        Marker(Kind.SUBJECT_TAG, "attached message 1 subject", SECURE_TAG),
        marking("attached message 1 subject"),
        nhs("part 3 (text/csv)"),
    )


def test_message_inside_zip():
    raw = with_attachment(
        zip_of({"fwd.eml": eml("[secure] results", f"NHS {VALID}\n")}), "m.zip", "application/zip"
    )
    member = "part 2 (application/zip), member 1"
    assert scan_message(raw).markers == (
        Marker(Kind.SUBJECT_TAG, f"{member}, subject", SECURE_TAG),
        nhs(f"{member}, body"),
    )


def test_spreadsheet_cells_do_not_run_together():
    # "943476" and "5919" in two cells are not one number; "1" before a number in the
    # next cell does not make it part of a longer one.
    assert scan_message(with_attachment(xlsx((943476, 5919)), "a.xlsx", XLSX)).markers == ()
    found = scan_message(with_attachment(xlsx((1, 9434765919)), "a.xlsx", XLSX)).markers
    assert found == (nhs(f"part 2 ({XLSX}), member 2"),)


def test_identifiers_in_attachments_are_not_nhs_numbers():
    data = f"id,url,nhs\r\na{VALID}f,https://example.test/?id=X{VALID},{VALID_2}\r\n"
    raw = with_attachment(data.encode(), "ids.csv", "text/csv")
    assert scan_message(raw).markers == (nhs("part 2 (text/csv)", VALID_2),)


OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


@pytest.mark.parametrize(
    ("data", "where", "reason"),
    [
        (
            encrypted_zip("p.csv", CSV, b"pw"),
            "part 2 (application/zip), member 1",
            "encrypted ZIP member",
        ),
        (pdf(f"Jane {VALID}", user_password="pw"), "part 2 (application/zip)", "encrypted PDF"),
        (
            odf("text", VALID, encrypted=True),
            "part 2 (application/zip)",
            "encrypted OpenDocument file",
        ),
        (
            OLE2 + bytes(100) + "EncryptedPackage".encode("utf-16-le") + bytes(100),
            "part 2 (application/zip)",
            "encrypted Office document",
        ),
        (OLE2 + bytes(500), "part 2 (application/zip)", "legacy Office (OLE2) file, not read"),
        (gzip.compress(CSV), "part 2 (application/zip)", "gzip archive, not opened"),
        (b"7z\xbc\xaf\x27\x1c" + bytes(40), "part 2 (application/zip)", "7z archive, not opened"),
        (b"PK\x03\x04" + b"\x00garbage" * 10, "part 2 (application/zip)", "malformed ZIP"),
        (b"%PDF-1.7\n" + CSV, "part 2 (application/zip)", "malformed PDF"),
    ],
    ids=[
        "encrypted-zip",
        "encrypted-pdf",
        "encrypted-opendocument",
        "encrypted-ooxml",
        "legacy-office",
        "gzip",
        "7z",
        "malformed-zip",
        "malformed-pdf",
    ],
)
def test_unscannable_attachment(data: bytes, where: str, reason: str):
    result = scan_message(with_attachment(data, "file", "application/zip"))
    assert result.markers == (Marker(Kind.UNSCANNABLE, where, reason),)
    assert result.sensitive is False  # policy decides what unscannable means
    assert result.unscannable == result.markers


def test_message_fragment_is_unscannable():
    raw = raw_message(
        "Subject: x\nContent-Type: message/partial; id=abc; number=1; total=2",
        f"Subject: part one\r\n\r\n{VALID}\r\n".encode(),
    )
    assert scan_message(raw).markers == (
        Marker(Kind.UNSCANNABLE, "body", "a fragment of a message (message/partial)"),
    )


def test_unscannable_in_summary_and_json():
    raw = with_attachment(encrypted_zip("p.csv", CSV, b"pw"), "p.zip", "application/zip")
    result = scan_message(raw)
    where = "part 2 (application/zip), member 1"
    assert result.summary() == (
        f"no sensitive content found in what could be read; {where} unscannable "
        "(encrypted ZIP member)"
    )
    assert result.to_json() == {
        "sensitive": False,
        "markers": [{"kind": "unscannable", "where": where, "text": "encrypted ZIP member"}],
    }
    both = Sensitivity((nhs("body"), *result.markers))
    assert both.sensitive is True
    assert both.summary() == (f"1 NHS number in body; {where} unscannable (encrypted ZIP member)")


# --- results: order, dedupe, summary, JSON, masking --------------------------------


def test_order_dedupe_summary_and_json():
    raw = message(
        f"{VALID} and {spaced(VALID)} again, and {VALID_2}\n",
        subject="OFFICIAL-SENSITIVE [secure] OFFICIAL-SENSITIVE",
    )
    result = scan_message(raw)
    assert result.sensitive is True
    assert result.markers == (
        Marker(Kind.SUBJECT_TAG, "subject", "[secure]"),
        marking("subject"),
        nhs("body", VALID),
        nhs("body", VALID_2),
    )
    assert result.summary() == (
        "[secure] tag in subject; OFFICIAL-SENSITIVE marking in subject; 2 NHS numbers in body"
    )
    assert result.to_json() == {
        "sensitive": True,
        "markers": [
            {"kind": "subject-tag", "where": "subject", "text": "[secure]"},
            {"kind": "protective-marking", "where": "subject", "text": "OFFICIAL-SENSITIVE"},
            {"kind": "nhs-number", "where": "body", "text": "*** *** 5919"},
            {"kind": "nhs-number", "where": "body", "text": "*** *** 2137"},
        ],
    }


def test_summary_matches_documented_example():
    msg = EmailMessage()
    msg["Subject"] = "OFFICIAL-SENSITIVE"
    msg.set_content(f"{VALID}\n{VALID_2}\n")
    msg.add_alternative("<p>Hello</p>", subtype="html")
    assert scan_message(msg.as_bytes()).summary() == (
        "OFFICIAL-SENSITIVE marking in subject; 2 NHS numbers in part 1 (text/plain)"
    )


def test_full_nhs_numbers_never_appear_in_output():
    raw = html_message(f"<p>{spaced(VALID)}</p>", text=f"{VALID}, {BUILT}\n")
    result = scan_message(raw)
    assert len(result.markers) == 3
    rendered = [result.summary(), json.dumps(result.to_json()), repr(result), str(result.markers)]
    for number in (VALID, BUILT):
        for text in rendered:
            assert number not in text
            assert spaced(number) not in text
            assert number[:6] not in text


@pytest.mark.parametrize(
    "raw",
    [
        message(),
        message(f"Call 020 7946 0958 or 07700 900123. Ref {CHECK_TEN}. ID 1{VALID}.\n"),
        message("This is OFFICIAL.\nUnofficial-sensitive is not a marking.\n", subject="Minutes"),
        html_message("<p>Hello <b>there</b></p>", text="Hello there\n"),
        b"",
    ],
    ids=["plain", "numbers-that-are-not-nhs", "near-misses", "alternative", "empty"],
)
def test_nothing_sensitive(raw: bytes):
    result = scan_message(raw)
    assert result.sensitive is False
    assert result.markers == ()
    assert result == NOT_SENSITIVE
    assert result.summary() == "no sensitive content found"
    assert result.to_json() == {"sensitive": False, "markers": []}


def test_not_sensitive_constant():
    assert Sensitivity() == NOT_SENSITIVE
    assert NOT_SENSITIVE.sensitive is False
    assert Sensitivity((marking("subject"),)).sensitive is True


# --- malformed input ---------------------------------------------------------------


BOUNDARY_HEADERS = "Subject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=abc"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\x00\xff\xfe garbage \x80" * 50, ()),
        (f"no headers at all, just {VALID}".encode(), (nhs("body"),)),
        (
            raw_message(BOUNDARY_HEADERS, f"--xyz\r\n\r\n{VALID}\r\n--xyz--\r\n".encode()),
            (nhs("body"),),
        ),
        (
            raw_message(BOUNDARY_HEADERS, f"--abc\r\n\r\n{VALID}\r\n".encode()),
            (nhs("part 1 (text/plain)"),),
        ),
        (
            raw_message("Subject: x\nContent-Type: multipart/mixed", f"{VALID}\r\n".encode()),
            (nhs("body"),),
        ),
        (
            raw_message("Subject: x\nContent-Transfer-Encoding: base64", b"!!not base64 at all"),
            (),
        ),
        (
            raw_message(
                "Subject: x\nContent-Transfer-Encoding: base64",
                base64.b64encode(VALID.encode())[:-2],
            ),
            (nhs("body"),),
        ),
        (
            b"Subject: [secure]\r\nBroken header line without colon\r\n\r\nhi",
            (Marker(Kind.SUBJECT_TAG, "subject", "[secure]"),),
        ),
        (b"Subject: =?utf-8?b?!!!?= =?utf-8?q?=ZZ?=\r\n\r\nhi", ()),
        (
            b"Content-Type: text/plain; charset*=utf-8''%FF%FE\r\n\r\n" + VALID.encode(),
            (nhs("body"),),
        ),
        (raw_message("Subject: x\nContent-Type: " + "a;" * 50_000, VALID.encode()), (nhs("body"),)),
    ],
    ids=[
        "garbage",
        "no-headers",
        "wrong-boundary",
        "missing-close-boundary",
        "multipart-without-boundary",
        "invalid-base64",
        "truncated-base64",
        "header-without-colon",
        "broken-encoded-words",
        "bad-rfc2231-charset",
        "huge-content-type",
    ],
)
def test_malformed_input(raw: bytes, expected: tuple[Marker, ...]):
    assert scan_message(raw).markers == expected


def nested_multipart(depth: int) -> bytes:
    parts = "".join(
        f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n" for i in range(depth)
    )
    return b"Subject: OFFICIAL-SENSITIVE\r\n" + parts.encode() + f"\r\n{VALID}\r\n".encode()


def test_nested_multipart_is_walked():
    assert scan_message(nested_multipart(50)).markers == (
        marking("subject"),
        nhs("part 1 (text/plain)"),
    )


@pytest.mark.parametrize("depth", [102, 1000, 2000])
def test_too_deep_multipart_is_unscannable_and_read_as_raw_text(depth: int):
    # Deeper than Limits.max_depth (100): reported, and the rest is still scanned as one
    # raw text. The Subject comes from the one header reader, so it is found "in subject".
    where = "part 1 (multipart/mixed)"
    assert scan_message(nested_multipart(depth)).markers == (
        marking("subject"),
        Marker(Kind.UNSCANNABLE, where, "nested deeper than 100 levels"),
        nhs(where),
    )
    # At the bound itself, the tree is still walked.
    assert scan_message(nested_multipart(100)).markers == (
        marking("subject"),
        nhs("part 1 (text/plain)"),
    )


def test_subject_tag_found_when_header_section_is_over_the_reader_limit():
    # Too many fields for the header reader: the whole text is searched, subject tags too.
    raw = b"X-Filler: y\r\n" * 1001 + b"Subject: [secure] results\r\n\r\nhi\r\n"
    assert scan_message(raw).markers == (Marker(Kind.SUBJECT_TAG, "body", "[secure]"),)


# --- size and speed ----------------------------------------------------------------


@pytest.mark.timeout(10)
def test_five_megabyte_line_of_digits_and_spaces():
    # Each copy touches the next ("5919 943"), so only the one after "x" stands alone.
    line = (spaced(VALID) + " ") * 400_000 + "x " + spaced(VALID_2)
    assert len(line) >= 5_000_000
    assert scan_message(message(line + "\n")).markers == (nhs("body", VALID_2),)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("where", "copies", "found"),
    [
        ("body", 600_000, "body"),
        ("subject", 110_000, "subject"),  # just under the header reader's 1 MiB
        # Over it, the whole text is scanned, subject tags too; what is found is "in body".
        ("subject", 600_000, "body"),
    ],
)
def test_five_megabyte_line_of_official(where: str, copies: int, found: str):
    line = "OFFICIAL " * copies + "SENSITIVE"
    raw = (
        raw_message("Subject: x", line.encode())
        if where == "body"
        else raw_message(f"Subject: {line}", b"hi")
    )
    assert scan_message(raw).markers == (marking(found),)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("value", ["a;" * 1_000_000, 'text/plain; x="' + "b " * 1_000_000])
def test_huge_mime_header(value: str):
    raw = raw_message(f"Subject: x\nContent-Type: {value}", f"NHS {VALID}\r\n".encode())
    assert scan_message(raw).markers == (nhs("body"),)


@pytest.mark.timeout(10)
def test_ten_megabyte_message():
    body = "Lorem ipsum dolor sit amet, 0123 456 789 consectetur adipiscing elit.\r\n" * 150_000
    raw = raw_message("Subject: big", (body + f"NHS {VALID}\r\n").encode())
    assert len(raw) > 10_000_000
    assert scan_message(raw).markers == (nhs("body"),)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("junk", ["<a ", "<!--", "</a", "<!x", "<", "<script>"])
def test_pathological_html_is_linear(junk: str):
    markup = junk * (3_000_000 // len(junk)) + f"<p>{spaced(VALID)}</p>"
    raw = raw_message("Subject: x\nContent-Type: text/html", markup.encode())
    assert scan_message(raw).markers == (nhs("body"),)


# --- properties --------------------------------------------------------------------

nine_digits = st.text(alphabet="0123456789", min_size=9, max_size=9)


@given(nine_digits)
def test_property_check_digit_round_trip(nine: str):
    check = check_digit(nine)
    number = nine + str(check % 10)
    if check == 10 or len(set(number)) == 1:
        assert not is_valid_nhs_number(number)
        return
    assert is_valid_nhs_number(number)
    assert is_valid_nhs_number(spaced(number))
    assert is_valid_nhs_number(spaced(number, "-"))
    assert find_nhs_numbers(f"NHS no: {spaced(number)}.") == [number]


@given(nine_digits, st.integers(0, 9), st.integers(1, 9))
def test_property_any_single_digit_error_is_detected(nine: str, position: int, delta: int):
    if check_digit(nine) == 10:
        return
    number = with_check_digit(nine)
    wrong = number[:position] + str((int(number[position]) + delta) % 10) + number[position + 1 :]
    assert not is_valid_nhs_number(wrong)


@given(st.text(alphabet="0123456789", min_size=10, max_size=10))
def test_property_agrees_with_reference(number: str):
    expected = check_digit(number[:9]) == int(number[9]) and len(set(number)) > 1
    assert is_valid_nhs_number(number) is expected


@given(st.text(alphabet="0123456789 -\u00a0x\n", max_size=200))
def test_property_found_numbers_are_valid(text: str):
    for number in find_nhs_numbers(text):
        assert is_valid_nhs_number(number)
        assert number in text.replace(" ", "").replace("-", "").replace("\u00a0", "")


@given(st.binary(max_size=2000))
def test_property_scan_never_raises(raw: bytes):
    result = scan_message(raw)
    assert isinstance(result, Sensitivity)
    assert result.sensitive is bool(result.markers)


@given(
    st.sampled_from(
        [
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n",
            b"Content-Type: text/html; charset=latin-1\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n",
            b"Subject: =?utf-8?q?",
            b"Content-Type: message/rfc822\r\n\r\nContent-Type: multipart/alternative; boundary=",
        ]
    ),
    st.binary(max_size=2000),
)
def test_property_scan_never_raises_after_mime_headers(prefix: bytes, rest: bytes):
    assert isinstance(scan_message(prefix + rest), Sensitivity)


def test_runs_of_empty_lines_cost_nothing_and_hide_nothing():
    """4.9 M empty lines made the stdlib parser keep a line object each (~400 MB); runs
    are cut to one, so part boundaries and findings stay where they were."""
    blank = b"\r\n" * 200_000
    body = (
        b"--b\r\nContent-Type: text/plain\r\n" + blank + b"Intro\r\n" + blank
        + b"OFFICIAL-SENSITIVE\r\n--b\r\nContent-Type: text/plain\r\n"
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(b"NHS 943 476 5919\n").replace(b"\n", b"\r\n" + blank)
        + b"--b--\r\n"
    )  # fmt: skip
    raw = b'Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    found = scan_message(raw + body)
    assert {m.kind for m in found.markers} == {Kind.MARKING, Kind.NHS_NUMBER}


@given(nine_digits, st.text(alphabet="ab .-\n0123456789", max_size=20))
def test_property_masked_text_has_no_number_left(nine: str, around: str):
    if check_digit(nine) == 10:
        return  # no valid number ends these nine digits
    number = with_check_digit(nine)
    text = f"{around} {spaced(number)} {around}"
    masked = mask_nhs_numbers(text)
    assert find_nhs_numbers(masked) == []
    assert masked.count("*** ***") == len(find_nhs_numbers(text))
