"""``securemail accredited import|show``: the list of DCB1596-accredited organisations.

The CSV is published by someone else and its cells reach the terminal (organisation
names, warnings quoting rows), so everything shown goes through ``common.text``.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from securemail.accredited_store import import_accredited, load_accredited
from securemail.cli.common import ConfigOpt, JsonOpt, out, print_json, say, text, warn
from securemail.config import load_config
from securemail.errors import InputError

app = typer.Typer(
    rich_markup_mode=None,  # "[section] key" in help texts is text, not markup
    help="The list of DCB1596-accredited organisations.",
)


@app.command("import")
def accredited_import(
    csv_file: Annotated[Path, typer.Argument(help="The CSV as published by NHS England.")],
    list_date: Annotated[
        str | None,
        typer.Option("--date", help="Date of the list, YYYY-MM-DD (default: today)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Where to store it (default: [policy] accredited_list)."
        ),
    ] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Import the accredited-organisations CSV: columns are found by their names."""
    cfg = load_config(config)
    dest = output or cfg.policy.accredited_list
    if dest is None:
        raise InputError("no destination: set [policy] accredited_list or give --output PATH")
    when = _parse_date(list_date) if list_date else None
    report = import_accredited(csv_file, dest, today=date.today(), list_date=when)
    if json_out:
        fields = ("rows", "imported", "expired", "skipped")
        summary: dict[str, object] = {f: getattr(report, f) for f in fields}
        summary |= {"stored": str(dest), "warnings": list(report.warnings)}
        print_json(summary)
        return
    for warning in report.warnings:
        warn(warning)
    say(
        f"imported {report.imported} domains from {report.rows} rows "
        f"({report.expired} expired, {report.skipped} rows skipped) → {dest}"
    )


@app.command("show")
def accredited_show(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """List the stored accredited domains, with expiry."""
    cfg = load_config(config)
    path = cfg.policy.accredited_list
    if path is None or not path.exists():
        raise InputError("no accredited list stored; run 'securemail accredited import CSV'")
    today = date.today()
    listed = load_accredited(path, today=today)
    entries = sorted(listed.entries.values(), key=lambda e: e.domain)
    if json_out:
        for e in entries:
            expires = e.expires.isoformat() if e.expires else None
            print_json(
                {
                    "domain": f"*.{e.domain}" if e.subdomains else e.domain,
                    "organisation": e.organisation,
                    "expires": expires,
                    "expired": e.expired(today),
                }
            )
        return
    table = Table(title=text(f"{listed.source} ({len(listed)} domains)"))
    for column in ("domain", "organisation", "expires"):
        table.add_column(column)
    for e in entries:
        expires = e.expires.isoformat() if e.expires else "-"
        style = "red" if e.expired(today) else ""
        domain = f"*.{e.domain}" if e.subdomains else e.domain
        table.add_row(text(domain), text(e.organisation), text((expires, style)))
    out.print(table)


def _parse_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InputError(f"--date {value!r}: expected YYYY-MM-DD") from None
