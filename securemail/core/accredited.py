"""Import NHS England's list of organisations accredited to DCB1596 (secure email).

Columns are found by header name, because the published CSV changes shape over time:
the header is the first row (of the first 30, preferring rows with two or more cells,
so a title like "Secure email domains" is passed over) with a cell containing "domain".
Organisation comes from "organisation"/"organization", else "org", else "name"; the
expiry from "expir"/"renew"/"valid until"/"end date", else from "accredit"+"date" or
"accredited on" plus one year (29 Feb -> 28 Feb). Dates are ISO or day-first UK.

A domain cell may list several domains (``;``, ``,``, whitespace); a leading ``@`` is
dropped, ``*.example.org`` or ``.example.org`` also covers subdomains, and mailboxes are
ignored with a warning. If the list has a date column, a row whose date is empty or
unparseable is SKIPPED with a warning, since nothing shows the accreditation is current;
only the canonical file written by ``import_accredited`` may leave ``expires`` empty
(its source list had no dates). A repeated domain keeps the later expiry (no date is
latest). Warnings give file line numbers. Parsing is pure; the clock is passed in.

A wildcard over a shared suffix (``*.nhs.uk``, ``*.co.uk``) is refused, since it would
accredit every organisation registered beneath it. The guidance tables name our own
shared suffixes; the Public Suffix List names the rest. That list is protocol knowledge
kept in ``securemail.mech.psl`` (core imports nothing from mech), so every function that
parses a list takes ``is_public_suffix``, and callers pass ``mech.psl.is_public_suffix``.
It has no default: a caller that forgot it would silently accept ``*.co.uk``.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from types import MappingProxyType

from securemail.core.addresses import AddressError, normalise_domain
from securemail.core.rules import TABLES
from securemail.errors import AccreditedListError

HEADER_SEARCH_ROWS = 30
MAX_WARNINGS = 20
CANONICAL_HEADER = ("domain", "organisation", "expires")

_ORG_KEYS = ((("organisation",), ("organization",)), (("org",),), (("name",),))
_EXPIRY_KEYS = (("expir",), ("renew",), ("valid until",), ("end date",))
_ACCREDITED_KEYS = (("accredit", "date"), ("accredited on",))
_SEPARATORS = re.compile(r"[;,\s]+")
_WRAPPERS = "\"'<>()[]{}"
_META = re.compile(r"#\s*securemail accredited list;(.*)")
_META_UNSAFE = re.compile(r"[;\x00-\x1f\x7f]")
_ISO = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?")
_NUMERIC = re.compile(r"(\d{1,2})([/.-])(\d{1,2})\2(\d{4}|\d{2})(?: \d{1,2}:\d{2}(?::\d{2})?)?")
_NAMED = re.compile(r"(\d{1,2})(?:st|nd|rd|th)?[ -]([A-Za-z]+)\.?[ -](\d{4}|\d{2})")
_MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august",
                "september", "october", "november", "december")  # fmt: skip
_MONTHS = {key: i for i, n in enumerate(_MONTH_NAMES, 1) for key in (n, n[:3])} | {"sept": 9}


@dataclass(frozen=True, slots=True)
class AccreditedEntry:
    """One accredited domain. ``domain`` is lower-case ASCII (IDNA A-labels)."""

    domain: str
    organisation: str
    expires: date | None
    subdomains: bool = False

    def expired(self, today: date) -> bool:
        """True if the accreditation ended before ``today`` (the expiry day itself is valid)."""
        return self.expires is not None and self.expires < today


@dataclass(frozen=True, slots=True)
class AccreditedList:
    """An imported list: ``source`` is the original CSV's file name."""

    source: str
    list_date: date | None
    entries: Mapping[str, AccreditedEntry]

    def lookup(self, domain: str) -> AccreditedEntry | None:
        """The entry for a normalised ``domain``: an exact match, else the nearest parent
        entry that covers subdomains. Whole labels only: ``example.org`` never matches
        ``evilexample.org``."""
        entry = self.entries.get(domain)
        if entry is not None:
            return entry
        dot = domain.find(".")
        while dot != -1:
            parent = self.entries.get(domain[dot + 1 :])
            if parent is not None and parent.subdomains:
                return parent
            dot = domain.find(".", dot + 1)
        return None

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did, for the operator. ``warnings`` holds at most 20 messages."""

    rows: int
    imported: int
    expired: int
    skipped: int
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Columns:
    domain: int
    org: int | None
    date: int | None
    accreditation_date: bool  # the date column is when accredited, not when it expires


class _Lines:
    """Feeds ``csv.reader``: counts lines, drops ``#`` comment lines between records."""

    def __init__(self, lines: Iterable[str], source: str) -> None:
        self._lines = iter(lines)
        self._source = source
        self.comments: list[str] = []
        self.line_no = 0
        self.start = 0  # line on which the current record began
        self.between = True  # the next line starts a new record

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            line = next(self._lines)
            self.line_no += 1
            if "\x00" in line:
                raise AccreditedListError(
                    f"{self._source}: line {self.line_no} contains NUL bytes: not a text CSV "
                    "file (a spreadsheet? export it as CSV)"
                )
            if self.between:
                if self.line_no == 1:
                    line = line.removeprefix("\ufeff")
                if line.startswith("#"):
                    self.comments.append(line.strip())
                    continue
                self.start, self.between = self.line_no, False
            return line


def _records(feed: _Lines, source: str) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(feed)
    try:
        for cells in reader:
            feed.between = True
            yield feed.start, cells
    except csv.Error as exc:
        raise AccreditedListError(f"{source}: line {feed.line_no}: not valid CSV: {exc}") from None


def _capped(warnings: list[str]) -> tuple[str, ...]:
    if len(warnings) <= MAX_WARNINGS:
        return tuple(warnings)
    more = len(warnings) - MAX_WARNINGS + 1
    return (*warnings[: MAX_WARNINGS - 1], f"... and {more} more warnings")


def _clean(text: str, limit: int = 60) -> str:
    """One printable line, shortened: cell text is untrusted and goes to a terminal."""
    text = "".join(ch if ch.isprintable() else " " for ch in " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(text: str) -> str:
    return f'"{_clean(text)}"'


def _cell(cells: list[str], index: int | None) -> str:
    return cells[index].strip() if index is not None and index < len(cells) else ""


def _find(names: list[str], skip: int, keys: tuple[tuple[str, ...], ...]) -> int | None:
    for i, name in enumerate(names):
        if i != skip and any(all(k in name for k in key) for key in keys):
            return i
    return None


def _columns(header: list[str]) -> _Columns:
    names = [" ".join(cell.split()).lower() for cell in header]
    domain = next(i for i, name in enumerate(names) if "domain" in name)
    org = None
    for keys in _ORG_KEYS:
        if (org := _find(names, domain, keys)) is not None:
            break
    expiry = _find(names, domain, _EXPIRY_KEYS)
    if expiry is not None:
        return _Columns(domain, org, expiry, accreditation_date=False)
    accredited = _find(names, domain, _ACCREDITED_KEYS)
    return _Columns(domain, org, accredited, accreditation_date=accredited is not None)


def _year(text: str) -> int:
    return 2000 + int(text) if len(text) == 2 else int(text)


def _parse_date(text: str) -> date | None:
    """Parse an ISO or day-first UK date (as Excel writes them); None if it is not one."""
    text = text.strip()
    if m := _ISO.fullmatch(text):
        year, month, day = int(m[1]), int(m[2]), int(m[3])
    elif m := _NUMERIC.fullmatch(text):
        year, month, day = _year(m[4]), int(m[3]), int(m[1])
    elif (m := _NAMED.fullmatch(text)) and (named := _MONTHS.get(m[2].lower())):
        year, month, day = _year(m[3]), named, int(m[1])
    else:
        return None
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _add_year(day: date) -> date:
    try:
        return day.replace(year=day.year + 1)
    except ValueError:  # 29 February
        return day.replace(year=day.year + 1, day=28)


# A wildcard over one of these would accredit every organisation beneath it.
_SHARED_SUFFIXES = frozenset(rule.suffix for table in TABLES.values() for rule in table)


def covers_shared_suffix(domain: str, is_public_suffix: Callable[[str], bool]) -> bool:
    """Would ``*.domain`` accredit organisations that are not the one listed?

    True for a suffix from the guidance tables (``nhs.uk``, ``gov.uk``) and for any
    public suffix (``co.uk``); ``domain`` is normalised.
    """
    return domain in _SHARED_SUFFIXES or is_public_suffix(domain)


def _split_domains(
    cell: str, is_public_suffix: Callable[[str], bool]
) -> tuple[list[tuple[str, bool]], list[tuple[str, str]]]:
    """Valid (domain, covers_subdomains) pairs in a cell, and (token, problem) pairs."""
    found: list[tuple[str, bool]] = []
    problems: list[tuple[str, str]] = []
    for raw in _SEPARATORS.split(cell):
        token = raw.strip(_WRAPPERS).removeprefix("@").strip(_WRAPPERS)
        if not token:
            continue
        if "@" in token:
            problems.append((raw, "is an email address, not a domain; ignored"))
            continue
        wildcard = token.startswith(("*.", "."))
        try:
            domain = normalise_domain(token[token.index(".") + 1 :] if wildcard else token)
        except AddressError as exc:
            problems.append((raw, f"is not a valid domain: {exc}"))
            continue
        if wildcard and covers_shared_suffix(domain, is_public_suffix):
            problems.append((raw, "covers every organisation under a shared suffix; ignored"))
            continue
        found.append((domain, wildcard))
    return found, problems


def _rank(entry: AccreditedEntry) -> tuple[bool, date, bool]:
    """Later expiry wins (no date is latest); on a tie, the entry covering subdomains."""
    return entry.expires is None, entry.expires or date.min, entry.subdomains


def _no_header(source: str, head: list[tuple[int, list[str]]]) -> AccreditedListError:
    widest = max((row for _, row in head), key=lambda r: sum(1 for c in r if c.strip()), default=[])
    names = ", ".join(_clean(c, 40) for c in widest if c.strip()) or "none: the file is empty"
    return AccreditedListError(
        f'{source}: no column whose name contains "domain" in the first {HEADER_SEARCH_ROWS} '
        f"rows (found columns: {_clean(names, 200)})"
    )


def parse_accredited_csv(
    lines: Iterable[str],
    *,
    source: str,
    today: date,
    is_public_suffix: Callable[[str], bool],
    list_date: date | None = None,
) -> tuple[AccreditedList, ImportReport]:
    """Parse the accredited list from CSV ``lines`` (see the module docstring for the rules).

    ``source`` names the list, unless a securemail comment line in a canonical file gives
    the original name. ``list_date`` defaults to the comment's date, else ``today``.
    Raises ``AccreditedListError`` (one line) if there is no domain column or it is not CSV.
    """
    feed = _Lines(lines, source)
    records = _records(feed, source)
    head = list(itertools.islice(records, HEADER_SEARCH_ROWS))
    found_at = [i for i, (_, row) in enumerate(head) if any("domain" in c.lower() for c in row)]
    if not found_at:
        raise _no_header(source, head)
    wide = [i for i in found_at if sum(1 for c in head[i][1] if c.strip()) >= 2]
    header_index = (wide or found_at)[0]
    header = head[header_index][1]
    cols = _columns(header)
    meta = _metadata(feed.comments)
    canonical = meta is not None and tuple(c.strip() for c in header) == CANONICAL_HEADER
    kind = "accreditation" if cols.accreditation_date else "expiry"

    entries: dict[str, AccreditedEntry] = {}
    first_row: dict[str, int] = {}
    warnings: list[str] = []
    rows = skipped = 0
    for row_no, cells in itertools.chain(head[header_index + 1 :], records):
        rows += 1
        if not any(c.strip() for c in cells):
            skipped += 1
            continue
        cell = _cell(cells, cols.domain)
        found, problems = _split_domains(cell, is_public_suffix)
        if not found:
            skipped += 1
            if not cell:
                warnings.append(f"row {row_no}: no domain; row skipped ({_show(' '.join(cells))})")
            elif len(problems) == 1:
                warnings.append(f"row {row_no}: {_show(problems[0][0])} {problems[0][1]}")
            else:
                warnings.append(f"row {row_no}: {_show(cell)} {problems[0][1]}")
            continue
        for token, problem in problems:
            warnings.append(f"row {row_no}: {_show(token)} {problem}")
        expires = None
        if cols.date is not None:
            text = _cell(cells, cols.date)
            parsed = _parse_date(text)
            if parsed is None and (text or not canonical):
                skipped += 1
                warnings.append(
                    f"row {row_no}: no valid {kind} date ({_show(text) if text else 'empty'}); "
                    "row skipped: nothing shows the accreditation is current"
                )
                continue
            expires = _add_year(parsed) if parsed and cols.accreditation_date else parsed
        org = _from_cell(" ".join(_cell(cells, cols.org).split()))
        for domain, wildcard in found:
            entry = AccreditedEntry(domain, org, expires, wildcard)
            if (old := entries.get(domain)) is None:
                entries[domain], first_row[domain] = entry, row_no
                continue
            entries[domain] = keep = max(old, entry, key=_rank)
            warnings.append(
                f"row {row_no}: {domain} is listed again (first on row {first_row[domain]}); "
                f"keeping the entry expiring {keep.expires or 'never'}"
            )

    meta = meta or {}
    accredited = AccreditedList(
        source=meta.get("source") or source,
        list_date=list_date or _parse_date(meta.get("list_date", "")) or today,
        entries=MappingProxyType(dict(sorted(entries.items()))),
    )
    report = ImportReport(
        rows=rows,
        imported=len(entries),
        expired=sum(1 for e in entries.values() if e.expired(today)),
        skipped=skipped,
        warnings=_capped(warnings),
    )
    return accredited, report


def _metadata(comments: list[str]) -> dict[str, str] | None:
    for comment in comments:
        if m := _META.fullmatch(comment):
            pairs = (part.partition("=") for part in m[1].split(";"))
            return {key.strip(): value.strip() for key, _, value in pairs}
    return None


# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...)),
# so anything we write as CSV is neutralised with a leading apostrophe (OWASP's advice),
# which reading our own file takes off again.
_FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")


def to_cell(text: str) -> str:
    """``text`` safe to open in a spreadsheet: never read as a formula."""
    return f"'{text}" if text.startswith(_FORMULA_LEAD) else text


def _from_cell(text: str) -> str:
    """The inverse of ``to_cell`` for our own canonical file (and harmless on others)."""
    return text[1:] if text[:1] == "'" and text[1:].startswith(_FORMULA_LEAD) else text


def canonical_text(accredited: AccreditedList, today: date) -> str:
    out = io.StringIO()
    source = _META_UNSAFE.sub("_", accredited.source)
    listed = accredited.list_date.isoformat() if accredited.list_date else ""
    out.write(
        f"# securemail accredited list; source={source}; list_date={listed}; "
        f"imported={today.isoformat()}\n"
    )
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CANONICAL_HEADER)
    for domain, entry in sorted(accredited.entries.items()):
        expires = entry.expires.isoformat() if entry.expires else ""
        writer.writerow(
            (f"*.{domain}" if entry.subdomains else domain, to_cell(entry.organisation), expires)
        )
    return out.getvalue()
