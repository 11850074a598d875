"""Tests for importing the DCB1596 accredited-organisations list."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.accredited_store import import_accredited, load_accredited, read_accredited_csv
from securemail.core.accredited import (
    AccreditedEntry,
    AccreditedList,
    ImportReport,
    covers_shared_suffix,
    parse_accredited_csv,
)
from securemail.errors import AccreditedListError
from securemail.mech.psl import is_public_suffix

TODAY = date(2026, 6, 15)


def parse(text: str, **kwargs: object) -> tuple[AccreditedList, ImportReport]:
    return parse_accredited_csv(
        text.splitlines(keepends=True),
        source="list.csv",
        today=TODAY,
        is_public_suffix=is_public_suffix,
        **kwargs,
    )


def summary(accredited: AccreditedList) -> dict[str, tuple[str, date | None, bool]]:
    return {d: (e.organisation, e.expires, e.subdomains) for d, e in accredited.entries.items()}


# --- header layouts ---------------------------------------------------------------------

LAYOUTS = {
    "name-domain-expiry": (
        "Organisation Name,Email Domain,Accreditation Expiry Date\n"
        "Leeds Teaching Hospitals,leedsth.nhs.uk,31/03/2027\n"
        "Acme Health Ltd,acmehealth.co.uk,2027-01-15\n",
        {
            "leedsth.nhs.uk": ("Leeds Teaching Hospitals", date(2027, 3, 31), False),
            "acmehealth.co.uk": ("Acme Health Ltd", date(2027, 1, 15), False),
        },
    ),
    "ods-org-domains-accredited": (
        "ODS Code,Organisation,Domain(s),Date Accredited\n"
        "RR8,Leeds Teaching Hospitals,leedsth.nhs.uk,01/04/2026\n"
        "X26,Example Care,examplecare.org.uk; examplecare.com,15 Jan 2026\n",
        {
            "leedsth.nhs.uk": ("Leeds Teaching Hospitals", date(2027, 4, 1), False),
            "examplecare.org.uk": ("Example Care", date(2027, 1, 15), False),
            "examplecare.com": ("Example Care", date(2027, 1, 15), False),
        },
    ),
    "title-rows-above-header": (
        "NHS England,,\n"
        "Organisations accredited to DCB1596 secure email domains,,\n"
        "Published 1 June 2026,,\n"
        ",,\n"
        "Organisation,Domain,Expiry\n"
        "Example Care,examplecare.org.uk,30-06-2026\n",
        {"examplecare.org.uk": ("Example Care", date(2026, 6, 30), False)},
    ),
    "upper-case-header-and-padding": (
        "  ORGANIZATION  ,  DOMAIN NAME ,RENEWAL DATE\n"
        " Example Care , ExampleCare.ORG.uk ,31.12.2026\n",
        {"examplecare.org.uk": ("Example Care", date(2026, 12, 31), False)},
    ),
    "no-date-column": (
        "Org,Domain\nExample Care,examplecare.org.uk\n",
        {"examplecare.org.uk": ("Example Care", None, False)},
    ),
    "no-organisation-column": (
        "Domain,Valid until\nexamplecare.org.uk,31-Mar-27\n",
        {"examplecare.org.uk": ("", date(2027, 3, 31), False)},
    ),
    "name-column-and-multiline-header": (
        'Supplier name,"Email\nDomain",End date\nAcme,acme.example,2026-12-01T00:00:00\n',
        {"acme.example": ("Acme", date(2026, 12, 1), False)},
    ),
    "domain-column-not-first": (
        "Region,Accredited on,Trading Name,Secure domain\nNorth,29/02/2024,Leap Ltd,leap.example\n",
        {"leap.example": ("Leap Ltd", date(2025, 2, 28), False)},
    ),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_header_layouts(name: str) -> None:
    text, expected = LAYOUTS[name]
    accredited, report = parse(text)
    assert summary(accredited) == expected
    assert report.imported == len(expected)
    assert report.skipped == 0
    assert report.warnings == ()


def test_title_rows_are_not_counted_as_data_rows() -> None:
    _, report = parse(LAYOUTS["title-rows-above-header"][0])
    assert report.rows == 1


def test_title_row_mentioning_domains_is_not_taken_for_the_header() -> None:
    text = "Secure email domains\n\nOrganisation,Domain,Expiry\nA,a.example,2027-01-01\n"
    accredited, report = parse(text)
    assert summary(accredited) == {"a.example": ("A", date(2027, 1, 1), False)}
    assert report.rows == 1


def test_direct_expiry_wins_over_accreditation_date() -> None:
    text = "Domain,Date accredited,Expiry date\na.example,01/01/2020,01/01/2027\n"
    accredited, _ = parse(text)
    assert accredited.entries["a.example"].expires == date(2027, 1, 1)


def test_header_must_be_within_first_30_rows() -> None:
    text = "title\n" * 30 + "Domain\na.example\n"
    with pytest.raises(AccreditedListError, match="in the first 30 rows"):
        parse(text)
    accredited, _ = parse("title\n" * 29 + "Domain\na.example\n")
    assert list(accredited.entries) == ["a.example"]


def test_missing_domain_column_is_one_clear_line() -> None:
    with pytest.raises(AccreditedListError) as info:
        parse_accredited_csv(
            ["Org,Date\n", "Example,2026-01-01\n"],
            source="dcb.csv",
            today=TODAY,
            is_public_suffix=is_public_suffix,
        )
    message = str(info.value)
    assert message == (
        'dcb.csv: no column whose name contains "domain" in the first 30 rows '
        "(found columns: Org, Date)"
    )
    assert "\n" not in message


def test_empty_input_has_no_domain_column() -> None:
    with pytest.raises(AccreditedListError, match="file is empty"):
        parse("")


# --- dates ------------------------------------------------------------------------------

DATES = [
    ("2026-03-31", date(2026, 3, 31)),
    ("31/03/2026", date(2026, 3, 31)),
    ("31-03-2026", date(2026, 3, 31)),
    ("31.03.2026", date(2026, 3, 31)),
    ("31/03/26", date(2026, 3, 31)),
    ("1/4/2026", date(2026, 4, 1)),
    ("31 March 2026", date(2026, 3, 31)),
    ("31 Mar 2026", date(2026, 3, 31)),
    ("31-Mar-2026", date(2026, 3, 31)),
    ("31-Mar-26", date(2026, 3, 31)),
    ("1st September 2026", date(2026, 9, 1)),
    ("2026-03-31T00:00:00", date(2026, 3, 31)),
    ("2026-03-31 00:00:00", date(2026, 3, 31)),
    ("03/04/2026", date(2026, 4, 3)),  # day first, never US
    (" 31/03/2026 ", date(2026, 3, 31)),
]


@pytest.mark.parametrize(("text", "expected"), DATES)
def test_date_formats(text: str, expected: date) -> None:
    accredited, report = parse(f'Domain,Expiry date\na.example,"{text}"\n')
    assert accredited.entries["a.example"].expires == expected
    assert report.warnings == ()


BAD_DATES = ["", "31/02/2026", "2026-13-01", "tomorrow", "31 Smarch 2026", "03/31/2026", "TBC"]


@pytest.mark.parametrize("text", BAD_DATES)
def test_row_with_missing_or_bad_date_is_skipped(text: str) -> None:
    accredited, report = parse(f"Domain,Expiry date\nok.example,2027-01-01\na.example,{text}\n")
    assert list(accredited.entries) == ["ok.example"]
    assert report.skipped == 1
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith("row 3: no valid expiry date")
    assert "row skipped" in report.warnings[0]


def test_missing_accreditation_date_warning_names_the_kind() -> None:
    _, report = parse("Domain,Date accredited\na.example,\n")
    assert report.warnings == (
        "row 2: no valid accreditation date (empty); row skipped: "
        "nothing shows the accreditation is current",
    )


@pytest.mark.parametrize(
    ("accredited_on", "expires"),
    [
        ("15/06/2025", date(2026, 6, 15)),
        ("29/02/2024", date(2025, 2, 28)),
        ("28/02/2023", date(2024, 2, 28)),
        ("31/12/2025", date(2026, 12, 31)),
    ],
)
def test_expiry_is_one_year_after_accreditation(accredited_on: str, expires: date) -> None:
    accredited, _ = parse(f"Domain,Accreditation date\na.example,{accredited_on}\n")
    assert accredited.entries["a.example"].expires == expires


@pytest.mark.parametrize(
    ("expires", "expired"),
    [
        (date(2026, 6, 14), True),
        (date(2026, 6, 15), False),  # expires == today: still valid today
        (date(2026, 6, 16), False),
        (None, False),
    ],
)
def test_expired(expires: date | None, expired: bool) -> None:
    assert AccreditedEntry("a.example", "", expires).expired(TODAY) is expired


def test_report_counts_expired_entries() -> None:
    text = (
        "Domain,Expiry date\n"
        "old.example,14/06/2026\n"
        "today.example,15/06/2026\n"
        "new.example,16/06/2026\n"
    )
    accredited, report = parse(text)
    assert report.expired == 1
    assert [d for d, e in accredited.entries.items() if e.expired(TODAY)] == ["old.example"]


# --- domain cells -----------------------------------------------------------------------


def test_many_domains_in_one_cell() -> None:
    text = (
        "Organisation,Domains\n"
        'Example Trust,"@a.example; b.example,c.example  d.example\n*.e.example .f.example"\n'
        "Other,\"[g.example], 'h.example', <@i.example>\"\n"
    )
    accredited, report = parse(text)
    assert summary(accredited) == {
        "a.example": ("Example Trust", None, False),
        "b.example": ("Example Trust", None, False),
        "c.example": ("Example Trust", None, False),
        "d.example": ("Example Trust", None, False),
        "e.example": ("Example Trust", None, True),
        "f.example": ("Example Trust", None, True),
        "g.example": ("Other", None, False),
        "h.example": ("Other", None, False),
        "i.example": ("Other", None, False),
    }
    assert report.rows == 2
    assert report.warnings == ()


def test_domains_are_normalised() -> None:
    accredited, _ = parse("Domain\nExample.NHS.UK.\nbücher.example\n")
    assert list(accredited.entries) == ["example.nhs.uk", "xn--bcher-kva.example"]


def test_email_addresses_are_ignored_with_a_warning() -> None:
    accredited, report = parse('Domain\n"jo@x.example; y.example"\nann@z.example\n')
    assert list(accredited.entries) == ["y.example"]
    assert report.skipped == 1
    assert report.warnings == (
        'row 2: "jo@x.example" is an email address, not a domain; ignored',
        'row 3: "ann@z.example" is an email address, not a domain; ignored',
    )


def test_invalid_token_beside_a_valid_one_warns_but_keeps_the_row() -> None:
    accredited, report = parse('Domain\n"good.example, bad_domain.example"\n')
    assert list(accredited.entries) == ["good.example"]
    assert report.skipped == 0
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith('row 2: "bad_domain.example" is not a valid domain: ')


def test_garbage_rows_are_skipped_with_row_numbers() -> None:
    text = (
        "Organisation,Domain,Expiry date\n"  # row 1
        "Good,good.example,2027-01-01\n"  # row 2
        ",,\n"  # row 3: blank, silent
        "\n"  # row 4: blank, silent
        "Short row\n"  # row 5: no domain cell
        "Bad,not a domain!,2027-01-01\n"  # row 6
        "Localhost,localhost,2027-01-01\n"  # row 7
        "IP,192.168.0.1,2027-01-01\n"  # row 8
        "Total: 1 organisation,,\n"  # row 9: footer
    )
    accredited, report = parse(text)
    assert list(accredited.entries) == ["good.example"]
    assert report.rows == 8
    assert report.skipped == 7
    assert report.imported == 1
    assert report.rows == report.skipped + 1
    warnings = report.warnings
    assert len(warnings) == 5
    assert warnings[0] == 'row 5: no domain; row skipped ("Short row")'
    assert warnings[1].startswith('row 6: "not a domain!" is not a valid domain: ')
    assert warnings[2].startswith('row 7: "localhost" is not a valid domain: ')
    assert "has no dot" in warnings[2]
    assert warnings[3].startswith('row 8: "192.168.0.1" is not a valid domain: ')
    assert warnings[4].startswith("row 9: no domain; row skipped")


def test_warnings_are_capped_at_twenty() -> None:
    text = "Domain\n" + "bad!\n" * 50
    _, report = parse(text)
    assert report.skipped == 50
    assert len(report.warnings) == 20
    assert report.warnings[0].startswith("row 2: ")
    assert report.warnings[-1] == "... and 31 more warnings"


def test_warning_text_is_one_printable_line() -> None:
    _, report = parse('Domain\n"bad\x1b[31m!"\n')
    assert len(report.warnings) == 1
    assert report.warnings[0].isprintable()


def test_duplicates_keep_the_later_expiry() -> None:
    text = (
        "Organisation,Domain,Expiry date\n"
        "First,a.example,2027-01-01\n"
        "Second,a.example,2026-01-01\n"
        "Third,b.example,2026-01-01\n"
        "Fourth,B.example,2027-06-01\n"
    )
    accredited, report = parse(text)
    assert summary(accredited) == {
        "a.example": ("First", date(2027, 1, 1), False),
        "b.example": ("Fourth", date(2027, 6, 1), False),
    }
    assert report.imported == 2
    assert report.skipped == 0
    assert report.warnings == (
        "row 3: a.example is listed again (first on row 2); keeping the entry expiring 2027-01-01",
        "row 5: b.example is listed again (first on row 4); keeping the entry expiring 2027-06-01",
    )


def test_duplicate_wildcard_and_apex_with_same_expiry_keeps_wildcard() -> None:
    accredited, report = parse("Domain\na.example\n*.a.example\na.example\n")
    assert summary(accredited) == {"a.example": ("", None, True)}
    assert len(report.warnings) == 2


# --- comments and the canonical format -------------------------------------------------


def test_comment_lines_are_skipped_but_not_inside_quoted_cells() -> None:
    text = (
        "# exported by someone\n"
        "Organisation,Domain\n"
        '"Hash\n# Trust",hash.example\n'
        "# a footer note\n"
        "Next,next.example\n"
    )
    accredited, report = parse(text)
    assert summary(accredited) == {
        "hash.example": ("Hash # Trust", None, False),
        "next.example": ("Next", None, False),
    }
    assert report.rows == 2


def test_canonical_comment_gives_source_and_list_date() -> None:
    text = (
        "# securemail accredited list; source=dcb1596-2026-10.csv; list_date=2026-10-01; "
        "imported=2026-10-02\n"
        "domain,organisation,expires\n"
        "*.a.example,A,2027-01-01\n"
        "b.example,B,\n"
    )
    accredited, report = parse(text)
    assert accredited.source == "dcb1596-2026-10.csv"
    assert accredited.list_date == date(2026, 10, 1)
    assert summary(accredited) == {
        "a.example": ("A", date(2027, 1, 1), True),
        "b.example": ("B", None, False),
    }
    assert report.warnings == ()


def test_empty_expires_is_only_allowed_in_canonical_files() -> None:
    text = "domain,organisation,expires\nb.example,B,\n"
    accredited, report = parse(text)
    assert len(accredited) == 0
    assert report.skipped == 1


def test_list_date_defaults_to_today_and_can_be_given() -> None:
    accredited, _ = parse("Domain\na.example\n")
    assert accredited.source == "list.csv"
    assert accredited.list_date == TODAY
    accredited, _ = parse("Domain\na.example\n", list_date=date(2026, 5, 1))
    assert accredited.list_date == date(2026, 5, 1)


# --- lookup -----------------------------------------------------------------------------


def make_list(*entries: AccreditedEntry) -> AccreditedList:
    return AccreditedList("t.csv", TODAY, MappingProxyType({e.domain: e for e in entries}))


LOOKUP_LIST = make_list(
    AccreditedEntry("example.org", "Exact", None),
    AccreditedEntry("wild.org", "Wild", None, subdomains=True),
    AccreditedEntry("b.wild.org", "Inner exact", None),
    AccreditedEntry("nhs.net", "NHSmail", None, subdomains=True),
    AccreditedEntry("trust.nhs.net", "Trust", None, subdomains=True),
)


@pytest.mark.parametrize(
    ("domain", "organisation"),
    [
        ("example.org", "Exact"),
        ("sub.example.org", None),  # not a wildcard entry
        ("evilexample.org", None),
        ("example.org.evil.com", None),
        ("org", None),
        ("wild.org", "Wild"),  # wildcard covers the apex
        ("a.wild.org", "Wild"),
        ("x.y.z.wild.org", "Wild"),
        ("b.wild.org", "Inner exact"),
        ("c.b.wild.org", "Wild"),  # b.wild.org is not a wildcard: keep walking up
        ("evilwild.org", None),
        ("wild.org.evil.com", None),
        ("x.trust.nhs.net", "Trust"),  # nearest wildcard parent wins
        ("other.nhs.net", "NHSmail"),
        ("nhs.net.evil.com", None),
        ("", None),
    ],
)
def test_lookup(domain: str, organisation: str | None) -> None:
    entry = LOOKUP_LIST.lookup(domain)
    assert (entry.organisation if entry else None) == organisation


def test_len() -> None:
    assert len(LOOKUP_LIST) == 5
    assert len(make_list()) == 0


LABEL = st.text(alphabet="abx-", min_size=1, max_size=3).filter(
    lambda s: not s.startswith("-") and not s.endswith("-")
)
DOMAIN = st.lists(LABEL, min_size=2, max_size=4).map(".".join)


@st.composite
def query_for(draw: st.DrawFn, domains: list[str]) -> str:
    base = draw(st.sampled_from(domains))
    return draw(
        st.one_of(
            DOMAIN,
            st.just(base),
            LABEL.map(lambda label: f"{label}.{base}"),
            LABEL.map(lambda label: f"{label}{base}"),
            DOMAIN.map(lambda suffix: f"{base}.{suffix}"),
        )
    )


@settings(max_examples=300, deadline=None)
@given(data=st.data(), entries=st.lists(st.tuples(DOMAIN, st.booleans()), min_size=1))
def test_lookup_only_matches_whole_labels(
    data: st.DataObject, entries: list[tuple[str, bool]]
) -> None:
    accredited = make_list(*(AccreditedEntry(d, d, None, sub) for d, sub in entries))
    query = data.draw(query_for([d for d, _ in entries]))
    entry = accredited.lookup(query)
    if entry is None:
        # Nothing applies: no exact entry and no wildcard entry on a whole-label parent.
        assert query not in accredited.entries
        assert not any(
            e.subdomains and query.endswith("." + e.domain) for e in accredited.entries.values()
        )
    else:
        assert entry.domain == query or (entry.subdomains and query.endswith("." + entry.domain))


# --- files ------------------------------------------------------------------------------


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffDomain,Organisation\na.example,Café Health\n".encode())
    accredited, _ = read_accredited_csv(path, today=TODAY)
    assert summary(accredited) == {"a.example": ("Café Health", None, False)}
    assert accredited.source == "bom.csv"


def test_cp1252_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    # Long ASCII prefix so the undecodable byte is not in the first decoded chunk.
    rows = "".join(f"ok{i}.example,Org {i}\n" for i in range(2000))
    path.write_bytes(f"Domain,Organisation\n{rows}a.example,Café £5 Ltd\n".encode("cp1252"))
    accredited, report = read_accredited_csv(path, today=TODAY)
    assert accredited.entries["a.example"].organisation == "Café £5 Ltd"
    assert report.imported == 2001
    assert report.rows == 2001


@pytest.mark.parametrize(
    "content",
    [
        b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00domain" + bytes(range(256)) * 4,
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64,
        "Domain\r\na.example\r\n".encode("utf-16"),
        b"Domain\n\x81\x8d\x8f\x90\x9d\n",
    ],
    ids=["xlsx", "png", "utf-16", "undecodable"],
)
def test_binary_file_is_one_line_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "list.xlsx"
    path.write_bytes(content)
    with pytest.raises(AccreditedListError) as info:
        read_accredited_csv(path, today=TODAY)
    assert "not a text CSV file" in str(info.value)
    assert "\n" not in str(info.value)


def test_oversized_field_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text('Domain\n"' + "a" * 200_000 + '"\n', encoding="utf-8")
    with pytest.raises(AccreditedListError, match="not valid CSV"):
        read_accredited_csv(path, today=TODAY)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(AccreditedListError) as info:
        load_accredited(path, today=TODAY)
    assert str(info.value) == f"{path}: no such file"


def test_directory_is_not_readable(tmp_path: Path) -> None:
    with pytest.raises(AccreditedListError, match="cannot read"):
        read_accredited_csv(tmp_path, today=TODAY)


ORIGINAL = (
    "NHS England - DCB1596 accredited organisations\n"
    "\n"
    "ODS Code,Organisation Name,Email Domain,Date Accredited\n"
    'RR8,"Leeds Teaching Hospitals, NHS Trust",leedsth.nhs.uk,01/04/2026\n'
    "X1,Wild Care,*.wildcare.example,15/01/2025\n"
    "X2,Undated,undated.example,\n"
    "X3,Café Health,café.example; cafe.example,2026-02-01\n"
)


def test_import_then_load_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "dcb1596-accredited-2026-10.csv"
    src.write_text(ORIGINAL, encoding="utf-8")
    dest = tmp_path / "state" / "lists" / "accredited.csv"
    report = import_accredited(src, dest, today=TODAY, list_date=date(2026, 6, 1))
    assert report == ImportReport(
        rows=4,
        imported=4,
        expired=1,
        skipped=1,
        warnings=(
            "row 6: no valid accreditation date (empty); row skipped: "
            "nothing shows the accreditation is current",
        ),
    )
    assert dest.read_text(encoding="utf-8").splitlines() == [
        "# securemail accredited list; source=dcb1596-accredited-2026-10.csv; "
        "list_date=2026-06-01; imported=2026-06-15",
        "domain,organisation,expires",
        "cafe.example,Café Health,2027-02-01",
        'leedsth.nhs.uk,"Leeds Teaching Hospitals, NHS Trust",2027-04-01',
        "*.wildcare.example,Wild Care,2026-01-15",
        "xn--caf-dma.example,Café Health,2027-02-01",
    ]
    original, _ = read_accredited_csv(src, today=TODAY, list_date=date(2026, 6, 1))
    loaded = load_accredited(dest, today=date(2030, 1, 1))
    assert loaded == original
    assert loaded.source == "dcb1596-accredited-2026-10.csv"
    assert loaded.list_date == date(2026, 6, 1)
    assert loaded.lookup("mail.wildcare.example") == original.entries["wildcare.example"]
    assert not list(dest.parent.glob(".*.tmp"))


def test_reimporting_a_stored_list_keeps_its_name_and_undated_entries(tmp_path: Path) -> None:
    src = tmp_path / "orig.csv"
    src.write_text("Domain,Organisation\na.example,A\n", encoding="utf-8")
    first, second = tmp_path / "one.csv", tmp_path / "two.csv"
    import_accredited(src, first, today=TODAY)
    report = import_accredited(first, second, today=date(2026, 7, 1))
    assert report.warnings == ()
    loaded = load_accredited(second, today=TODAY)
    assert loaded.source == "orig.csv"
    assert loaded.list_date == TODAY
    assert summary(loaded) == {"a.example": ("A", None, False)}


def test_source_name_cannot_inject_into_the_comment(tmp_path: Path) -> None:
    src = tmp_path / "a;list_date=1999-01-01.csv"
    src.write_text("Domain\na.example\n", encoding="utf-8")
    dest = tmp_path / "stored.csv"
    import_accredited(src, dest, today=TODAY)
    loaded = load_accredited(dest, today=TODAY)
    assert loaded.list_date == TODAY
    assert loaded.source == "a_list_date=1999-01-01.csv"


@pytest.mark.parametrize(
    "content",
    [b"Org,Date\nx,2026-01-01\n", b"Domain\nnot a domain\n", b"\x00\x01\x02binary"],
    ids=["no-domain-column", "no-valid-domains", "binary"],
)
def test_failed_import_leaves_dest_untouched(tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "new.csv"
    src.write_bytes(content)
    dest = tmp_path / "accredited.csv"
    dest.write_text("previous contents\n", encoding="utf-8")
    with pytest.raises(AccreditedListError):
        import_accredited(src, dest, today=TODAY)
    assert dest.read_text(encoding="utf-8") == "previous contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accredited.csv", "new.csv"]


def test_import_replaces_and_keeps_file_mode(tmp_path: Path) -> None:
    src = tmp_path / "new.csv"
    src.write_text("Domain\nnew.example\n", encoding="utf-8")
    dest = tmp_path / "accredited.csv"
    dest.write_text("old\n", encoding="utf-8")
    dest.chmod(0o640)
    import_accredited(src, dest, today=TODAY)
    assert list(load_accredited(dest, today=TODAY).entries) == ["new.example"]
    assert dest.stat().st_mode & 0o777 == 0o640
    fresh = tmp_path / "fresh.csv"
    import_accredited(src, fresh, today=TODAY)
    assert fresh.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "wildcard", ["*.nhs.uk", ".gov.uk", "*.co.uk", "*.scot.nhs.uk", "*.nhs.net"]
)
def test_wildcard_over_a_shared_suffix_is_refused(wildcard):
    """`*.nhs.uk` on the list would make every trust secure: refused, with a warning."""
    lines = ["Organisation,Domain", f"Too Broad,{wildcard}", "Real Trust,*.realtrust.nhs.uk"]
    listed, report = parse_accredited_csv(
        lines, source="x.csv", today=date(2026, 11, 23), is_public_suffix=is_public_suffix
    )
    assert listed.lookup("anytrust.nhs.uk") is None
    assert listed.lookup("a.realtrust.nhs.uk") is not None
    assert any("shared suffix" in w for w in report.warnings)


def test_the_public_suffix_list_is_the_callers():
    """core decides on the guidance's own suffixes; the caller's list decides the rest."""
    lines = ["Organisation,Domain", "Registry,*.example.org"]

    def only_example_org(domain: str) -> bool:
        return domain == "example.org"

    listed, report = parse_accredited_csv(
        lines, source="x.csv", today=TODAY, is_public_suffix=only_example_org
    )
    assert listed.lookup("a.example.org") is None
    assert report.warnings == ('row 2: "*.example.org" covers every organisation under a '
                               "shared suffix; ignored",)  # fmt: skip
    listed, report = parse_accredited_csv(
        lines, source="x.csv", today=TODAY, is_public_suffix=lambda domain: False
    )
    assert listed.lookup("a.example.org") is not None
    assert report.warnings == ()


@pytest.mark.parametrize(
    ("domain", "covers"),
    [
        ("nhs.uk", True),
        ("nhs.net", True),
        ("gov.uk", True),
        ("co.uk", False),
        ("trust.nhs.uk", False),
    ],
)
def test_guidance_suffixes_are_shared_whatever_the_list_says(domain, covers):
    assert covers_shared_suffix(domain, lambda _: False) is covers
    assert covers_shared_suffix(domain, lambda _: True) is True
