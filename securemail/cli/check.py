"""``securemail check``: grade domains against the secure email standard.

The checking is ``securemail.check``; the rendering of a report is
``securemail.check.report``. This module turns options into ``CheckOptions``, feeds the
domains in and the reports out, and shows progress and the totals for bulk runs.

``--json`` and ``--csv`` stream one line per domain as each completes (a million-domain
run never holds its reports), so the totals line goes to stderr with them, keeping
stdout machine-readable; the terminal table is sorted and the totals follow it.

With ``--workers N`` above 1 the domains are shared among N worker processes
(``check.shard``); each is this command again with the hidden ``--worker`` flag, reading
``[index, domain]`` lines and writing each report as the parent will use it. Standard
input is read by a thread of its own (``_in_background``), so a slow producer never
stalls the event loop that times the checks.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from securemail.cli.common import ConfigOpt, JsonOpt, err, out, run_async, safe, stdin_lines, tell
from securemail.config import load_config
from securemail.errors import InputError

if TYPE_CHECKING:
    from securemail.check.model import DomainReport, Status
    from securemail.check.runner import CheckOptions
    from securemail.check.shard import Render
    from securemail.config import Config

MAX_WORKERS = 64
STDIN_BOUND = 1024  # lines read ahead of the checks


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
            help="Domains checked at once, shared among the workers (default: [check]).",
            min=1,
            max=10000,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Processes to check in (default: one per CPU; 1: this process only). "
            "--json and --csv lines come as domains complete; with more than 1 worker each "
            'carries "index", the domain\'s position in the input (0 = first; blank lines '
            "and # comments not counted), as a JSON field or the last CSV column.",
            min=1,
            max=MAX_WORKERS,
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
    worker: Annotated[bool, typer.Option("--worker", hidden=True)] = False,
    config: ConfigOpt = None,
) -> None:
    """Grade domains against the secure email standard (the NCSC Mail Check's job).

    MX, STARTTLS/TLS (versions, ciphers, certificates), SPF, DKIM, DMARC, MTA-STS,
    TLS-RPT and DANE: each finding pass/warn/fail with what to fix, and a verdict.
    """
    if json_out and csv_out:
        raise InputError("--json and --csv cannot be combined: choose one output format")
    if "-" in domains and domains != ["-"]:
        raise InputError("'-' (read stdin) cannot be combined with domain names")
    cfg = load_config(config)
    options = _options(cfg, selector, no_tls=no_tls, only=only)
    concurrency = concurrency or cfg.check.concurrency
    fmt = "json" if json_out else "csv" if csv_out else "full"
    if worker:
        _serve_worker(cfg, options, concurrency, fmt)
        return
    count = workers or os.cpu_count() or 1
    if domains != ["-"]:
        count = min(count, len(domains))
    run = _Run(
        json_out=json_out, csv_out=csv_out, html=html,
        bulk=domains == ["-"] or len(domains) > 1, indexed=count > 1,
    )  # fmt: skip
    if run.bulk:
        from securemail.cpu import tune_gc

        tune_gc()
    source: Iterable[str] = stdin_lines() if domains == ["-"] else domains
    if count > 1:
        command = _worker_command(
            cfg, selector, no_tls=no_tls, only=only, fmt="full" if run.keeps else fmt,
            concurrency=max(1, concurrency // count),
        )  # fmt: skip
        job = run.sharded(source, command, count, concurrency)
    else:
        job = run.in_process(source, cfg, options, concurrency)
    try:
        run_async(job)
    finally:
        if run.progress:
            run.progress.done()
    run.finish()


def _options(
    cfg: Config, selector: list[str] | None, *, no_tls: bool, only: str | None
) -> CheckOptions:
    from securemail.check.runner import ORDER, CheckOptions

    wanted = frozenset(ORDER)
    if only is not None:
        wanted = frozenset(m.strip() for m in only.split(",") if m.strip()) | {"mx"}
        if unknown := sorted(wanted - set(ORDER)):
            raise InputError(f"--only: unknown {', '.join(unknown)} (use {', '.join(ORDER)})")
    return CheckOptions(
        smtp_port=cfg.check.smtp_port,
        https_port=cfg.check.https_port,
        selectors=tuple(cfg.check.selectors) + tuple(selector or ()),
        timeout=cfg.check.timeout,
        ca_file=cfg.tls.ca_file,
        tls=not no_tls,
        only=wanted,
    )


def _worker_command(
    cfg: Config, selector: list[str] | None, *, no_tls: bool, only: str | None, fmt: str,
    concurrency: int,
) -> list[str]:  # fmt: skip
    """This command as a worker: the same config and check options, ``fmt`` output.
    (Values are joined to their options: a value starting with "-" stays a value.)"""
    command = [sys.executable, "-m", "securemail.cli", "check", "-", "--worker"]
    command += [f"--concurrency={concurrency}"]
    command += {"json": ["--json"], "csv": ["--csv"]}.get(fmt, [])
    if cfg.source is not None:
        command.append(f"--config={cfg.source}")
    command += [f"--selector={name}" for name in selector or ()]
    if no_tls:
        command.append("--no-tls")
    if only is not None:
        command.append(f"--only={only}")
    return command


def _render(fmt: str, *, indexed: bool) -> Render:
    """How a report becomes its output line (without the line end): ``json`` and ``csv``
    as written out; ``full`` (for the terminal and HTML, which keep reports) all of it."""
    from securemail.check.report import to_csv_row, to_json_line

    if fmt == "csv":
        return lambda index, report: _csv_line(to_csv_row(report, index if indexed else None))
    if fmt == "json":
        return lambda index, report: to_json_line(report, index if indexed else None)
    return lambda _index, report: to_json_line(report)


def _csv_line(cells: Iterable[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue()


def _serve_worker(cfg: Config, options: CheckOptions, concurrency: int, fmt: str) -> None:
    """``--worker``: check what the parent deals on stdin; reports to stdout."""
    from securemail.check.runner import Checker
    from securemail.check.shard import serve_worker
    from securemail.cpu import tune_gc
    from securemail.dns import Resolver

    sys.stdout.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    tune_gc()

    async def serve() -> None:
        checker = Checker(Resolver.from_config(cfg.dns), options)
        await serve_worker(
            checker, _in_background(stdin_lines()), sys.stdout, concurrency=concurrency,
            render=_render(fmt, indexed=True),
        )  # fmt: skip

    run_async(serve())


class _Run:
    """One run's output: streamed lines, kept reports, totals and progress."""

    def __init__(
        self, *, json_out: bool, csv_out: bool, html: Path | None, bulk: bool, indexed: bool
    ) -> None:
        from securemail.check.model import Status

        self.json_out, self.csv_out, self.html = json_out, csv_out, html
        self.bulk, self.indexed = bulk, indexed
        self.streamed = json_out or csv_out
        self.keeps = html is not None or not self.streamed  # the terminal and HTML
        self.reports: list[DomainReport] = []
        self.total = dict.fromkeys(Status, 0)
        self.render = _render("csv" if csv_out else "json", indexed=indexed)
        self.progress = _CheckProgress() if bulk and err.is_terminal and not self.streamed else None
        if csv_out:
            from securemail.check.report import CSV_HEADER, CSV_INDEX

            header = (*CSV_HEADER, CSV_INDEX) if indexed else CSV_HEADER
            sys.stdout.write(_csv_line(header) + "\r\n")

    def emit(self, verdict: Status, line: str, domain: str) -> None:
        """One domain's outcome: its output ``line`` (as ``render`` makes it) if streamed."""
        self.total[verdict] += 1
        if self.streamed:
            sys.stdout.write(line + ("\r\n" if self.csv_out else "\n"))
            sys.stdout.flush()
        if self.progress:
            self.progress.advance(domain)

    async def in_process(
        self, source: Iterable[str], cfg: Config, options: CheckOptions, concurrency: int
    ) -> None:
        from securemail.check.runner import Checker, unique_domains
        from securemail.dns import Resolver

        checker = Checker(Resolver.from_config(cfg.dns), options)
        items = unique_domains(_in_background(source))
        async for index, report in checker.check_tagged(items, concurrency=concurrency):
            self.emit(report.verdict, self.render(index, report) if self.streamed else "",
                      report.domain)  # fmt: skip
            if self.keeps:
                self.reports.append(report)

    async def sharded(
        self, source: Iterable[str], command: list[str], workers: int, concurrency: int
    ) -> None:
        import json

        from securemail.check.model import DomainReport
        from securemail.check.runner import unique_domains
        from securemail.check.shard import check_sharded

        share = max(1, concurrency // workers)
        items = unique_domains(_in_background(source))
        render = _render("full", indexed=False) if self.keeps else self.render
        async for done in check_sharded(
            items, command=command, workers=workers, window=2 * share, render=render
        ):
            line = done.line
            if self.keeps:  # the worker sent the whole report: rebuild it
                report = DomainReport.from_json(json.loads(line))
                self.reports.append(report)
                line = self.render(done.index, report) if self.streamed else ""
            self.emit(done.verdict, line, done.text.strip())

    def finish(self) -> None:
        import datetime as dt

        from securemail.check.report import render_html
        from securemail.cli.check_report import render_terminal, render_totals

        self.reports.sort(key=lambda r: r.domain)
        if not self.streamed:
            render_terminal(self.reports, out, detail=False)  # raw facts: --json or --html
        if self.bulk:
            render_totals(self.total, err if self.streamed else out)
        if self.html is not None:
            generated = dt.datetime.now(dt.UTC)
            try:
                self.html.write_text(render_html(self.reports, generated=generated), "utf-8")
            except OSError as exc:
                raise InputError(f"--html {self.html}: cannot write: {exc.strerror}") from None
            tell(f"wrote {self.html}")


async def _in_background(lines: Iterable[str]) -> AsyncIterator[str]:
    """``lines`` read by a thread of their own, at most ``STDIN_BOUND`` ahead, so a slow
    or paused producer (a pipe from another program) never blocks the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str | None, BaseException | None]] = asyncio.Queue()
    space = threading.Semaphore(STDIN_BOUND)

    def hand_over(line: str | None, error: BaseException | None = None) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (line, error))
        except RuntimeError:  # the loop has closed: the run is over
            return False
        return True

    def pump() -> None:
        try:
            for line in lines:
                space.acquire()
                if not hand_over(line):
                    return
        except Exception as exc:  # handed to the reader, which raises it
            hand_over(None, exc)
            return
        hand_over(None)

    threading.Thread(target=pump, name="check-input", daemon=True).start()
    while True:
        line, error = await queue.get()
        if error is not None:
            raise error
        if line is None:
            return
        space.release()
        yield line


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
