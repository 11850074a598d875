"""The ``securemail`` command line: the only module that prints or parses arguments.

Errors a user can fix (``SecuremailError``, bad usage, unreadable files) end as one
line on stderr and exit status 2; a traceback means a bug and is shown only with
``SECUREMAIL_DEBUG=1``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from datetime import date
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

try:  # typer >= 0.22 vendors click; older releases depend on it
    from typer._click import exceptions as click_errors
    from typer._click.utils import echo
except ImportError:  # pragma: no cover
    from click import echo
    from click import exceptions as click_errors

from securemail import __version__
from securemail.accredited import import_accredited, load_accredited
from securemail.addresses import split_address_list
from securemail.classify import Classification, Classifier
from securemail.config import Config, default_config_text, find_config, load_config
from securemail.errors import InputError, SecuremailError
from securemail.policy import Decision, decide
from securemail.rules import Audience, Status
from securemail.sensitivity import scan_message

app = typer.Typer(
    name="securemail",
    help="Secure email gateway and assurance toolkit for the NHS secure email standard (DCB1596).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
policy_app = typer.Typer(help="Decide what happens to a message, per recipient.")
accredited_app = typer.Typer(help="The list of DCB1596-accredited organisations.")
config_app = typer.Typer(help="Create and check securemail.toml.")
app.add_typer(policy_app, name="policy", no_args_is_help=True)
app.add_typer(accredited_app, name="accredited", no_args_is_help=True)
app.add_typer(config_app, name="config", no_args_is_help=True)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

STATUS_STYLE = {Status.SECURE: "bold green", Status.UNKNOWN: "yellow", Status.INVALID: "bold red"}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (default: $SECUREMAIL_CONFIG, else ./securemail.toml if present).",
        show_default=False,
    ),
]
AudienceOpt = Annotated[
    Audience | None,
    typer.Option(
        "--audience",
        "-a",
        help="Whose guidance table applies: the sender's kind of organisation "
        "(default: [organisation] audience, else health-and-care).",
        show_default=False,
    ),
]
AccreditedOpt = Annotated[
    Path | None,
    typer.Option(
        "--accredited",
        help="Accredited-organisations CSV to use instead of [policy] accredited_list.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON lines).")]


def build_classifier(
    config: Config, audience: Audience | None, accredited: Path | None
) -> Classifier:
    """The classifier for this run: config, overridden by command-line options."""
    today = date.today()
    listed = None
    path = accredited or config.policy.accredited_list
    if path is not None:
        if accredited is None and not path.exists():
            err.print(
                f"[yellow]warning:[/] accredited list {escape(str(path))} not found; "
                "run 'securemail accredited import CSV' to use one"
            )
        else:
            listed = load_accredited(path, today=today)
    return Classifier(
        audience or config.organisation.audience,
        today=today,
        accredited=listed,
        secure_domains=config.policy.secure_domains,
        deny_domains=config.policy.deny_domains,
    )


# --- classify --------------------------------------------------------------------------


@app.command()
def classify(
    addresses: Annotated[
        list[str],
        typer.Argument(
            help="Addresses to classify; '-' reads one per line from stdin (streamed).",
            show_default=False,
        ),
    ],
    audience: AudienceOpt = None,
    accredited: AccreditedOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Say whether email to each address is inside the secure boundary.

    Status is 'secure', 'unknown' or 'invalid', with the rule that decided and the
    reason. Exit status is 0 whatever the statuses are; 2 for bad usage or input.
    """
    classifier = build_classifier(load_config(config), audience, accredited)
    if "-" in addresses:
        if addresses != ["-"]:
            raise InputError("'-' (read stdin) cannot be combined with addresses")
        _classify_stream(classifier, _stdin_lines(), sys.stdout, json_out)
    elif json_out:
        for text in addresses:
            sys.stdout.write(_json_line(classifier.classify(text).to_json()))
    else:
        _print_classifications([classifier.classify(text) for text in addresses])


def _stdin_lines() -> Iterator[str]:
    """Lines of stdin; undecodable bytes survive as lone surrogates (then: invalid)."""
    stream = open(  # noqa: SIM115 - wraps stdin's own descriptor, which we must not close
        sys.stdin.fileno(), encoding="utf-8", errors="surrogateescape", closefd=False
    )
    with stream:
        for line in stream:
            if line.strip():
                yield line


def _classify_stream(
    classifier: Classifier, lines: Iterable[str], sink: TextIO, json_out: bool
) -> None:
    """Constant memory whatever the input size: one line in, one line out, batched writes."""
    counts = dict.fromkeys(Status, 0)
    batch: list[str] = []
    progress = _Progress() if err.is_terminal else None
    for n, line in enumerate(lines, 1):
        c = classifier.classify(line)
        counts[c.status] += 1
        if json_out:
            batch.append(_json_line(c.to_json()))
        else:
            batch.append(f"{c.status.value}\t{c.address}\t{c.rule}\t{c.reason}\n")
        if len(batch) >= 4096:
            sink.write("".join(batch))
            batch.clear()
            if progress:
                progress.update(n)
    sink.write("".join(batch))
    sink.flush()
    if progress:
        progress.done(counts)


class _Progress:
    """A one-line counter on stderr for long runs at a terminal."""

    def __init__(self) -> None:
        self.status = err.status("classifying…")
        self.status.start()

    def update(self, n: int) -> None:
        self.status.update(f"classified {n:,} addresses…")

    def done(self, counts: dict[Status, int]) -> None:
        self.status.stop()
        total = sum(counts.values())
        parts = ", ".join(f"{v:,} {k.value}" for k, v in counts.items())
        err.print(f"classified {total:,} addresses: {parts}")


def _json_line(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def _print_classifications(results: list[Classification]) -> None:
    table = Table(show_lines=False, expand=False)
    table.add_column("status")
    table.add_column("address", overflow="fold")
    table.add_column("rule")
    table.add_column("reason", overflow="fold", ratio=1)
    for c in results:
        reason = Text(c.reason)
        for note in c.notes:
            reason.append(f"\nnote: {note}", style="dim")
        table.add_row(Text(c.status.value, STATUS_STYLE[c.status]), Text(c.address), c.rule, reason)
    out.print(table)


# --- policy ----------------------------------------------------------------------------


@policy_app.command("explain")
def policy_explain(
    message: Annotated[Path, typer.Argument(help="The message (.eml, RFC 5322); '-' for stdin.")],
    rcpt: Annotated[
        list[str] | None,
        typer.Option(
            "--rcpt", "-r", help="Recipient (repeatable); default: To, Cc and Bcc headers."
        ),
    ] = None,
    audience: AudienceOpt = None,
    accredited: AccreditedOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the sensitivity found in a message and the decision for each recipient."""
    cfg = load_config(config)
    raw = _read_message(message)
    recipients = rcpt or _header_recipients(raw)
    if not recipients:
        raise InputError(f"{message}: no recipients in To, Cc or Bcc; give --rcpt ADDRESS")
    classifier = build_classifier(cfg, audience, accredited)
    sensitivity = scan_message(raw)
    decisions = [
        decide(classifier.classify(r), sensitivity, cfg.policy.unknown_sensitive_action)
        for r in recipients
    ]
    if json_out:
        sys.stdout.write(
            _json_line(
                {
                    "message": str(message),
                    "sensitivity": sensitivity.to_json(),
                    "decisions": [d.to_json() for d in decisions],
                }
            )
        )
        return
    label = "[bold red]sensitive[/]" if sensitivity.sensitive else "[green]not sensitive[/]"
    out.print(f"{escape(str(message))}: {label}: {escape(sensitivity.summary())}")
    _print_decisions(decisions)


def _read_message(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read(MAX_MESSAGE_BYTES + 1)[:MAX_MESSAGE_BYTES]
    try:
        if path.stat().st_size > MAX_MESSAGE_BYTES:
            raise InputError(f"{path}: larger than {MAX_MESSAGE_BYTES // 2**20} MiB")
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a message file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None


def _header_recipients(raw: bytes) -> list[str]:
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
    found: list[str] = []
    for name in ("To", "Cc", "Bcc"):
        for value in headers.get_all(name, []):
            found.extend(split_address_list(str(value)))
    return found


def _print_decisions(decisions: list[Decision]) -> None:
    table = Table()
    for column in ("recipient", "status", "action", "tls", "reason"):
        table.add_column(column, overflow="fold", ratio=1 if column == "reason" else None)
    for d in decisions:
        table.add_row(
            Text(d.recipient),
            Text(d.status.value, STATUS_STYLE[d.status]),
            d.action.value,
            d.tls.label if d.tls is not None else "-",
            Text(d.reason),
        )
    out.print(table)


# --- accredited ------------------------------------------------------------------------


@accredited_app.command("import")
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
        sys.stdout.write(_json_line(summary))
        return
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    out.print(
        f"imported {report.imported} domains from {report.rows} rows "
        f"({report.expired} expired, {report.skipped} rows skipped) → {escape(str(dest))}"
    )


@accredited_app.command("show")
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
            sys.stdout.write(
                _json_line(
                    {
                        "domain": f"*.{e.domain}" if e.subdomains else e.domain,
                        "organisation": e.organisation,
                        "expires": expires,
                        "expired": e.expired(today),
                    }
                )
            )
        return
    table = Table(title=Text(f"{listed.source} ({len(listed)} domains)"))
    for column in ("domain", "organisation", "expires"):
        table.add_column(column)
    for e in entries:
        expires = e.expires.isoformat() if e.expires else "-"
        style = "red" if e.expired(today) else ""
        domain = f"*.{e.domain}" if e.subdomains else e.domain
        table.add_row(domain, Text(e.organisation), Text(expires, style))
    out.print(table)


def _parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InputError(f"--date {text!r}: expected YYYY-MM-DD") from None


# --- config ----------------------------------------------------------------------------


@config_app.command("init")
def config_init(
    path: Annotated[Path, typer.Argument(help="Where to write it.")] = Path("securemail.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented default securemail.toml (kept if it exists)."""
    if path.exists() and not force:
        out.print(f"{escape(str(path))} exists; kept it (use --force to overwrite)")
        return
    path.write_text(default_config_text(), encoding="utf-8")
    out.print(f"wrote {escape(str(path))}")


@config_app.command("check")
def config_check(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Validate the configuration and print the values in effect."""
    cfg = load_config(config)
    effective = _config_dict(cfg)
    if json_out:
        sys.stdout.write(_json_line(effective))
        return
    out.print(escape(f"{find_config(config) or 'built-in defaults'}: OK"))
    for section, values in effective.items():
        if isinstance(values, dict):
            for key, value in values.items():
                out.print(escape(f"  {section}.{key} = {value!r}"))


def _config_dict(cfg: Config) -> dict[str, object]:
    import dataclasses

    def plain(value: object) -> object:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return {
        f.name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, f.name)).items()}
        for f in dataclasses.fields(cfg)
        if f.name != "source"
    }


@app.command()
def version() -> None:
    """Print the version."""
    out.print(f"securemail {__version__}")


# --- entry point -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; turn every user error into one line and exit status 2."""
    try:
        rv = app(args=argv, prog_name="securemail", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        echo(exc.ctx.get_help() if exc.ctx else str(exc))
        rv = 0
    except click_errors.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "securemail"
        _fail(f"{command}: {exc.format_message()} (see '{command} --help')")
    except click_errors.ClickException as exc:
        _fail(exc.format_message())
    except SecuremailError as exc:
        _fail(str(exc))
    except typer.Abort:
        _fail("aborted", status=130)
    except KeyboardInterrupt:
        _fail("interrupted", status=130)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if os.environ.get("SECUREMAIL_DEBUG"):
            raise
        _fail(f"internal error: {exc!r} (a bug; rerun with SECUREMAIL_DEBUG=1 for details)", 1)
    return rv if isinstance(rv, int) else 0


def _fail(message: str, status: int = 2) -> None:
    sys.stdout.flush()
    print(f"securemail: error: {message}", file=sys.stderr)
    raise SystemExit(status)


if __name__ == "__main__":
    sys.exit(main())
