"""``securemail check``: grade domains against the secure email standard.

The checking is ``securemail.check``; the rendering of a report is
``securemail.check.report``. This module turns options into ``CheckOptions``, feeds the
domains in and the reports out, and shows progress and the totals for bulk runs.

``--json`` and ``--csv`` stream one line per domain as each completes (a million-domain
run never holds its reports), so the totals line goes to stderr with them, keeping
stdout machine-readable; the terminal table is sorted and the totals follow it.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from securemail.cli.common import ConfigOpt, JsonOpt, err, out, run_async, safe, stdin_lines, tell
from securemail.config import load_config
from securemail.errors import InputError

if TYPE_CHECKING:
    from securemail.check.model import DomainReport


def check(
    domains: Annotated[
        list[str],
        typer.Argument(
            help="Domains to check; '-' reads one per line from stdin.", show_default=False
        ),
    ],
    json_out: JsonOpt = False,
    csv_out: Annotated[
        bool,
        typer.Option(
            "--csv",
            help="One CSV row per domain: domain, verdict, counts, first failing check.",
        ),
    ] = False,
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

    from securemail.check.model import Status
    from securemail.check.report import CSV_HEADER, render_html, to_csv_row, to_json_line
    from securemail.check.runner import ORDER, Checker, CheckOptions
    from securemail.cli.check_report import render_terminal, render_totals
    from securemail.dns import Resolver

    if json_out and csv_out:
        raise InputError("--json and --csv cannot be combined: choose one output format")
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
    source: Iterable[str] = stdin_lines() if domains == ["-"] else domains
    bulk = domains == ["-"] or len(domains) > 1
    streamed = json_out or csv_out
    reports: list[DomainReport] = []
    total = dict.fromkeys(Status, 0)
    rows = csv.writer(sys.stdout)
    if csv_out:
        rows.writerow(CSV_HEADER)

    async def run() -> None:
        checker = Checker(Resolver.from_config(cfg.dns), options)
        progress = _CheckProgress() if bulk and err.is_terminal and not streamed else None
        async for report in checker.check_many(
            source, concurrency=concurrency or cfg.check.concurrency
        ):
            total[report.verdict] += 1
            if json_out:
                sys.stdout.write(to_json_line(report) + "\n")
            elif csv_out:
                rows.writerow(to_csv_row(report))
            if streamed:
                sys.stdout.flush()
            if html is not None or not streamed:
                reports.append(report)
            if progress:
                progress.advance(report.domain)
        if progress:
            progress.done()

    run_async(run())
    reports.sort(key=lambda r: r.domain)
    if not streamed:
        render_terminal(reports, out, detail=False)  # raw facts: --json or --html
    if bulk:
        render_totals(total, err if streamed else out)
    if html is not None:
        try:
            html.write_text(render_html(reports, generated=dt.datetime.now(dt.UTC)), "utf-8")
        except OSError as exc:
            raise InputError(f"--html {html}: cannot write: {exc.strerror}") from None
        tell(f"wrote {html}")


class _CheckProgress:
    """Domains done, on stderr, for bulk runs at a terminal. The last domain is shown as
    typed (made ``safe``) in a column that does not read markup."""

    def __init__(self) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.completed} domains checked {task.description}", markup=False),
            TimeElapsedColumn(), console=err, transient=True,
        )  # fmt: skip
        self.progress.start()
        self.task = self.progress.add_task("", total=None)

    def advance(self, domain: str) -> None:
        self.progress.update(self.task, advance=1, description=f"(last: {safe(domain)})")

    def done(self) -> None:
        self.progress.stop()
