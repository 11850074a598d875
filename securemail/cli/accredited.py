"""``securemail accredited import|show``: the list of DCB1596-accredited organisations.

An import while the gateway runs is only half done until the gateway uses the list, so
``import`` reloads a gateway running for the configuration and reports its answer
(``--no-reload`` to leave it alone).

The CSV is published by someone else and its cells reach the terminal (organisation
names, warnings quoting rows), so everything shown goes through ``common.text``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from securemail.accredited_store import import_accredited, load_accredited
from securemail.cli.common import ConfigOpt, JsonOpt, out, print_json, say, tell, text, warn
from securemail.config import Config, load_config
from securemail.errors import InputError
from securemail.gateway.control import OK, NoGateway, ReloadTimeout, reload_running

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
    reload: Annotated[
        bool,
        typer.Option(
            "--reload/--no-reload",
            help="Have a running gateway use the list at once (default), and say so.",
        ),
    ] = True,
) -> None:
    """Import the accredited-organisations CSV: columns are found by their names.

    If a gateway is running for this configuration, it is reloaded (as by 'securemail
    reload') and the answer shown; a refused reload exits with status 1.
    """
    cfg = load_config(config)
    dest = output or cfg.policy.accredited_list
    if dest is None:
        raise InputError("no destination: set [policy] accredited_list or give --output PATH")
    when = _parse_date(list_date) if list_date else None
    report = import_accredited(csv_file, dest, today=date.today(), list_date=when)
    gateway = _reload_gateway(cfg, dest) if reload else None
    if json_out:
        fields = ("rows", "imported", "expired", "skipped")
        summary: dict[str, object] = {f: getattr(report, f) for f in fields}
        summary |= {"stored": str(dest), "warnings": list(report.warnings)}
        summary["gateway"] = gateway.to_json() if gateway else None
        print_json(summary)
    else:
        for warning in report.warnings:
            warn(warning)
        say(
            f"imported {report.imported} domains from {report.rows} rows "
            f"({report.expired} expired, {report.skipped} rows skipped) → {dest}"
        )
        if gateway is not None:
            (say if gateway.ok else tell)(gateway.message)
    if gateway is not None and not gateway.ok:
        raise typer.Exit(1)


@dataclass(frozen=True, slots=True)
class GatewayAnswer:
    """What the running gateway made of the import; ``ok`` False exits with status 1."""

    result: str  # "ok", "refused", "other-list", "timeout", "none", "elsewhere"
    message: str
    pid: int | None = None
    entries: int | None = None

    @property
    def ok(self) -> bool:
        return self.result in ("ok", "none", "elsewhere")

    def to_json(self) -> dict[str, object]:
        return {
            "result": self.result,
            "message": self.message,
            "pid": self.pid,
            "entries": self.entries,
        }


def _reload_gateway(cfg: Config, stored: Path) -> GatewayAnswer:
    """Reload the gateway running for ``cfg`` (``control.reload_running``, as
    ``securemail reload`` does) and check it took the very file just written."""
    configured = cfg.policy.accredited_list
    if configured is None or stored.resolve() != configured.resolve():
        return GatewayAnswer(
            "elsewhere",
            f"not stored at [policy] accredited_list ({configured or 'unset'}): "
            "no running gateway reads it, none reloaded",
        )
    try:
        state = reload_running(cfg.service)
    except NoGateway:
        return GatewayAnswer("none", "no running gateway: the list is read when it starts")
    except ReloadTimeout as exc:
        return GatewayAnswer("timeout", str(exc))
    if state.result != OK:
        why = state.message.removeprefix("reload refused: ")
        return GatewayAnswer("refused", f"running gateway refused the reload: {why}", state.pid)
    listed = state.in_force.accredited
    written = hashlib.sha256(stored.read_bytes()).hexdigest()
    if listed is None or listed.sha256 != written:
        using = f"{listed.path} ({listed.entries} entries)" if listed else "no list"
        return GatewayAnswer(
            "other-list",
            f"running gateway (pid {state.pid}) reloaded but uses {using}, not this import",
            state.pid,
            listed.entries if listed else None,
        )
    return GatewayAnswer(
        "ok",
        f"running gateway (pid {state.pid}) now uses it: {listed.entries} entries",
        state.pid,
        listed.entries,
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
