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
from typing import Annotated, Any, TextIO

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
from securemail.config import Config, default_config_text, find_config, load_config
from securemail.core.accredited import import_accredited, load_accredited
from securemail.core.addresses import split_address_list
from securemail.core.classify import Classification, Classifier
from securemail.core.policy import Decision, decide
from securemail.core.rules import Audience, Status
from securemail.core.sensitivity import scan_message
from securemail.errors import InputError, SecuremailError

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

    def missing(path: Path) -> None:
        err.print(
            f"[yellow]warning:[/] accredited list {escape(str(path))} not found; "
            "run 'securemail accredited import CSV' to use one"
        )

    return Classifier.from_config(
        config, today=date.today(), audience=audience, accredited=accredited, on_missing=missing
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


# --- gateway ---------------------------------------------------------------------------


@app.command()
def serve(
    config: ConfigOpt = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Run the gateway: inbound and submission listeners, spool and delivery.

    Stops gracefully on SIGTERM or Ctrl-C: no new connections, sessions in a
    transaction finish, deliveries in flight finish or are retried on the next start.
    """
    import asyncio
    import logging
    import signal

    from securemail.gateway.app import Gateway

    cfg = load_config(config)
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise InputError(f"--log-level {log_level!r}: expected debug, info, warning or error")
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter

    async def run() -> None:
        gateway = Gateway(cfg)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await gateway.start()
        except OSError as exc:
            await gateway.stop(grace=0)
            raise InputError(f"cannot listen: {exc.strerror or exc}") from None
        inbound = cfg.listen.inbound
        err.print(
            f"securemail {__version__} ready: inbound {inbound}, submission "
            f"{cfg.listen.submission}; e.g. swaks --server {inbound} --to someone@"
            f"{cfg.organisation.domains[0] if cfg.organisation.domains else 'example.org'}"
        )
        await stop.wait()
        err.print("stopping…")
        await gateway.stop()

    _run_async(run())


def _run_async(coro: Any) -> None:
    """uvloop when installed (measurably faster TLS and socket handling), else asyncio."""
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


queue_app = typer.Typer(help="Inspect and manage the spool (works while the gateway runs).")
app.add_typer(queue_app, name="queue", no_args_is_help=True)


def _with_spool(config: Path | None, action: Any) -> Any:
    import asyncio

    from securemail.gateway.spool import open_spool

    cfg = load_config(config)
    base = cfg.source.resolve().parent if cfg.source else None

    async def run() -> Any:
        spool = open_spool(cfg.spool.url, base=base)
        await spool.open()
        try:
            return await action(spool)
        finally:
            await spool.close()

    return asyncio.run(run())


@queue_app.command("list")
def queue_list(
    status: Annotated[
        str | None, typer.Option("--status", help="Only recipients in this state.")
    ] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Messages in the spool, one row per recipient."""
    from securemail.gateway.spool import RcptStatus

    wanted = None
    if status is not None:
        try:
            wanted = RcptStatus(status)
        except ValueError:
            names = ", ".join(s.value for s in RcptStatus)
            raise InputError(f"--status {status!r}: expected one of {names}") from None
    messages = _with_spool(config, lambda spool: spool.list_messages(status=wanted))
    if json_out:
        for m in messages:
            sys.stdout.write(_json_line(_message_json(m)))
        return
    table = Table(title=f"{len(messages)} messages", expand=True)
    table.add_column("queue id / received", no_wrap=True)
    table.add_column("envelope", ratio=1, overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("last error / decision", ratio=2, overflow="fold")
    for m in messages:
        for r in m.recipients:
            status = f"{r.status.value}\n{r.tls.label}, {r.attempts} tries"
            table.add_row(
                f"{m.queue_id}\n{_when(m.received)}",
                Text(f"{m.sender or '<>'}\n→ {r.rcpt}"),
                status,
                Text(r.last_error or r.reason),
            )
    out.print(table)


@queue_app.command("show")
def queue_show(
    queue_id: Annotated[str, typer.Argument(help="Queue ID.")],
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One message: envelope, sensitivity and each recipient's state."""
    info = _with_spool(config, lambda spool: spool.get(queue_id))
    if info is None:
        raise InputError(f"{queue_id}: no such message in the spool")
    if json_out:
        sys.stdout.write(_json_line(_message_json(info)))
        return
    out.print(Text(f"{info.queue_id}  received {_when(info.received)}  size {info.size}"))
    out.print(Text(f"from <{info.sender}>  client {info.client}  user {info.auth_user or '-'}"))
    out.print(Text(f"sensitivity: {info.sensitivity or 'none'}"))
    for r in info.recipients:
        out.print(Text(f"  <{r.rcpt}> {r.status.value} tls={r.tls.label} attempts={r.attempts}"))
        out.print(Text(f"      decision: {r.reason}"))
        if r.last_error:
            out.print(Text(f"      last: {r.last_error}"))


@queue_app.command("flush")
def queue_flush(config: ConfigOpt = None) -> None:
    """Retry every deferred recipient now."""
    count = _with_spool(config, lambda spool: spool.flush())
    out.print(f"{count} recipients due now")


@queue_app.command("release")
def queue_release(
    queue_id: Annotated[str, typer.Argument(help="Queue ID of a held message.")],
    config: ConfigOpt = None,
) -> None:
    """Release a held message for delivery (an operator's decision, logged)."""
    count = _with_spool(config, lambda spool: spool.release(queue_id))
    if not count:
        raise InputError(f"{queue_id}: no held recipients (see 'securemail queue show')")
    out.print(f"released {count} recipients of {queue_id}")


@queue_app.command("delete")
def queue_delete(
    queue_id: Annotated[str, typer.Argument(help="Queue ID.")],
    config: ConfigOpt = None,
) -> None:
    """Delete a message from the spool, whatever its state."""
    if not _with_spool(config, lambda spool: spool.delete(queue_id)):
        raise InputError(f"{queue_id}: no such message in the spool")
    out.print(f"deleted {queue_id}")


def _message_json(m: Any) -> dict[str, object]:
    return {
        "queue_id": m.queue_id,
        "sender": m.sender,
        "received": m.received,
        "size": m.size,
        "client": m.client,
        "auth_user": m.auth_user,
        "sensitivity": m.sensitivity,
        "recipients": [
            {
                "rcpt": r.rcpt,
                "domain": r.domain,
                "status": r.status.value,
                "tls": r.tls.label,
                "reason": r.reason,
                "attempts": r.attempts,
                "next_attempt": r.next_attempt,
                "last_error": r.last_error,
            }
            for r in m.recipients
        ],
    }


def _when(epoch: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


user_app = typer.Typer(help="Submission users (argon2id password hashes).")
app.add_typer(user_app, name="user", no_args_is_help=True)


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="User name (the AUTH login).")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Add or replace a user allowed to send through the submission listener."""
    import getpass

    from securemail.gateway.inbound.users import add_user

    cfg = load_config(config)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise InputError("the passwords differ")
    existed = add_user(cfg.relay.users_file, name, password)
    out.print(f"{'replaced' if existed else 'added'} {name} in {escape(str(cfg.relay.users_file))}")


@app.command()
def check(
    domains: Annotated[
        list[str],
        typer.Argument(
            help="Domains to check; '-' reads one per line from stdin.", show_default=False
        ),
    ],
    json_out: JsonOpt = False,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML report here.")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-j",
            help="Domains checked at once (default: [check]).",
            min=1,
            max=10000,
        ),
    ] = None,
    selector: Annotated[
        list[str] | None,
        typer.Option("--selector", "-s", help="DKIM selector to look for (repeatable)."),
    ] = None,
    no_tls: Annotated[
        bool, typer.Option("--no-tls", help="Skip the SMTP/TLS probes (DNS checks only).")
    ] = False,
    only: Annotated[
        str | None,
        typer.Option(
            "--only",
            help="Comma-separated mechanisms to check: mx, tls, spf, dkim, dmarc, mta_sts, "
            "tlsrpt, dane (MX is always looked up).",
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Grade domains against the secure email standard (the NCSC Mail Check's job).

    MX, STARTTLS/TLS (versions, ciphers, certificates), SPF, DKIM, DMARC, MTA-STS,
    TLS-RPT and DANE: each finding pass/warn/fail with what to fix, and a verdict.
    """
    import datetime as dt

    from securemail.check.report import render_html, render_terminal, to_json_line
    from securemail.check.runner import ORDER, Checker, CheckOptions
    from securemail.dns import Resolver

    cfg = load_config(config)
    wanted = frozenset(ORDER)
    if only is not None:
        wanted = frozenset(m.strip() for m in only.split(",") if m.strip()) | {"mx"}
        if unknown := sorted(wanted - set(ORDER)):
            raise InputError(f"--only: unknown {', '.join(unknown)} (use {', '.join(ORDER)})")
    options = CheckOptions(
        smtp_port=cfg.check.smtp_port,
        https_port=cfg.check.https_port,
        selectors=tuple(cfg.check.selectors) + tuple(selector or ()),
        timeout=cfg.check.timeout,
        ca_file=cfg.tls.ca_file,
        tls=not no_tls,
        only=wanted,
    )
    if "-" in domains and domains != ["-"]:
        raise InputError("'-' (read stdin) cannot be combined with domain names")
    source: Iterable[str] = _stdin_lines() if domains == ["-"] else domains
    bulk = domains == ["-"] or len(domains) > 1
    reports = []

    async def run() -> None:
        checker = Checker(Resolver.from_config(cfg.dns), options)
        progress = _CheckProgress() if bulk and err.is_terminal and not json_out else None
        async for report in checker.check_many(
            source, concurrency=concurrency or cfg.check.concurrency
        ):
            if json_out:
                sys.stdout.write(to_json_line(report))
                sys.stdout.flush()
            if html is not None or not json_out:
                reports.append(report)
            if progress:
                progress.advance(report.domain)
        if progress:
            progress.done()

    _run_async(run())
    reports.sort(key=lambda r: r.domain)
    if not json_out:
        render_terminal(reports, out, detail=False)  # raw facts: --json or --html
    if html is not None:
        try:
            html.write_text(render_html(reports, generated=dt.datetime.now(dt.UTC)), "utf-8")
        except OSError as exc:
            raise InputError(f"--html {html}: cannot write: {exc.strerror}") from None
        err.print(f"wrote {escape(str(html))}")


class _CheckProgress:
    """Domains done, on stderr, for bulk runs at a terminal."""

    def __init__(self) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.completed} domains checked {task.description}"),
            TimeElapsedColumn(), console=err, transient=True,
        )  # fmt: skip
        self.progress.start()
        self.task = self.progress.add_task("", total=None)

    def advance(self, domain: str) -> None:
        self.progress.update(self.task, advance=1, description=f"(last: {domain})")

    def done(self) -> None:
        self.progress.stop()


dkim_app = typer.Typer(help="DKIM signing keys for our domains.")
app.add_typer(dkim_app, name="dkim", no_args_is_help=True)


@dkim_app.command("keygen")
def dkim_keygen(
    domain: Annotated[str, typer.Argument(help="The signing domain (d=).")],
    selector: Annotated[str, typer.Argument(help="The selector (s=), e.g. s1 or 2026q4.")],
    algorithm: Annotated[
        str, typer.Option("--algorithm", "-a", help="rsa (2048-bit, the norm) or ed25519.")
    ] = "rsa",
    bits: Annotated[int, typer.Option("--bits", help="RSA key size.")] = 2048,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Create a signing key (mode 0600) and print the DNS TXT record to publish."""
    from securemail.mech.dkim import generate_key, write_key

    cfg = load_config(config)
    pem, record = generate_key(algorithm, bits)
    path = write_key(cfg.dkim.key_dir, domain, selector, pem, overwrite=force)
    err.print(f"wrote {escape(str(path))} (mode 0600)")
    _print_record(domain, selector, record)
    if selector != cfg.dkim.selector:
        err.print(
            f"note: \\[dkim] selector is {cfg.dkim.selector!r}; "
            f"set it to {selector!r} to sign with this key"
        )


@dkim_app.command("show-record")
def dkim_show_record(
    domain: Annotated[str, typer.Argument(help="The signing domain.")],
    selector: Annotated[
        str | None, typer.Argument(help="The selector (default: [dkim] selector).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Print the DNS TXT record for an existing key."""
    from securemail.mech.dkim import dns_record_for

    cfg = load_config(config)
    selector = selector or cfg.dkim.selector
    path = cfg.dkim.key_dir / domain.lower().rstrip(".") / f"{selector}.pem"
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such key (create it with 'securemail dkim keygen')") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    _print_record(domain, selector, dns_record_for(pem))


def _print_record(domain: str, selector: str, record: str) -> None:
    """Zone-file form, the TXT value split into 255-byte strings as DNS requires."""
    chunks = " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))
    sys.stdout.write(f"{selector}._domainkey.{domain.lower().rstrip('.')}. IN TXT ( {chunks} )\n")


tls_app = typer.Typer(help="The listeners' certificate.")
app.add_typer(tls_app, name="tls", no_args_is_help=True)


@tls_app.command("selfsigned")
def tls_selfsigned(
    config: ConfigOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing pair.")] = False,
) -> None:
    """Create a self-signed certificate for [organisation] hostname, if none exists."""
    from securemail.tls import write_self_signed

    cfg = load_config(config)
    cert, key = cfg.tls.cert, cfg.tls.key
    if cert.exists() and key.exists() and not force:
        out.print(f"{escape(str(cert))} exists; kept it")
        return
    write_self_signed(cert, key, cfg.organisation.hostname)
    out.print(f"wrote {escape(str(cert))} and {escape(str(key))} for {cfg.organisation.hostname}")


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
