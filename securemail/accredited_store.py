"""The accredited-organisations list on disk: read a CSV file, import it atomically.

``core/accredited.py`` parses (pure, and told how to recognise a public suffix); this is
the I/O around it, binding the public suffix list from ``mech.psl`` so that no caller can
forget it (a forgotten check would silently accredit ``*.co.uk``). The stored copy is in
canonical form and written with ``files.write_atomic``, so a running gateway reading it
sees the old list or the new, never half.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from securemail.core.accredited import (
    AccreditedList,
    ImportReport,
    canonical_text,
    parse_accredited_csv,
)
from securemail.errors import AccreditedListError
from securemail.files import write_atomic
from securemail.mech.psl import is_public_suffix


def read_accredited_csv(
    path: Path,
    *,
    today: date,
    list_date: date | None = None,
) -> tuple[AccreditedList, ImportReport]:
    """Read and parse a CSV file: UTF-8 (with or without BOM), else Windows-1252."""
    for encoding in ("utf-8-sig", "cp1252"):  # a failed UTF-8 read restarts from the top
        try:
            with path.open(encoding=encoding, newline="") as file:
                return parse_accredited_csv(
                    file,
                    source=path.name,
                    today=today,
                    is_public_suffix=is_public_suffix,
                    list_date=list_date,
                )
        except UnicodeDecodeError:
            continue
        except FileNotFoundError:
            raise AccreditedListError(f"{path}: no such file") from None
        except OSError as exc:
            raise AccreditedListError(f"{path}: cannot read: {exc.strerror or exc}") from None
    raise AccreditedListError(
        f"{path.name}: not a text CSV file (neither UTF-8 nor Windows-1252; a spreadsheet? "
        "export it as CSV)"
    )


def load_accredited(path: Path, *, today: date) -> AccreditedList:
    """Read a stored list (canonical, or a raw CSV) for the classifier."""
    return read_accredited_csv(path, today=today)[0]


def import_accredited(
    src: Path,
    dest: Path,
    *,
    today: date,
    list_date: date | None = None,
) -> ImportReport:
    """Parse ``src`` and store it at ``dest`` in canonical form, atomically.

    ``dest`` is left untouched if ``src`` cannot be parsed or yields no domains at all
    (an empty list would silently make every domain non-secure).
    """
    accredited, report = read_accredited_csv(src, today=today, list_date=list_date)
    if not accredited.entries:
        raise AccreditedListError(
            f"{src}: no valid domains found ({report.rows} rows, {report.skipped} skipped); "
            f"{dest} not changed"
        )
    try:
        write_atomic(dest, canonical_text(accredited, today).encode())
    except OSError as exc:
        raise AccreditedListError(f"{dest}: cannot write: {exc.strerror or exc}") from None
    return report
