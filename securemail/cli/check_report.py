"""``securemail check``'s terminal report (rich): one domain's findings, or a summary.

The report's content (grouping, counts, the first failure) comes from ``check.report``,
which also writes JSON and HTML; only the terminal rendering lives here, because the CLI
is the one place that imports rich and the one place that makes text terminal-safe
(``common.safe``: a DNS answer or a server banner cannot move the operator's cursor).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from securemail.check.model import DomainReport, Status
from securemail.check.report import counts, grouped, headline, totals_line
from securemail.cli.common import safe

_STYLE = {
    Status.PASS: "green",
    Status.WARN: "yellow",
    Status.ERROR: "bold magenta",  # could not check: unlike any grade
    Status.FAIL: "bold red",
}


def _text(value: object, style: str = "") -> Text:
    return Text(safe(value), style=style)


def _status(status: Status) -> Text:
    return Text(status.name, style=_STYLE[status])


def _verdict_line(report: DomainReport) -> Text:
    n = counts(report)
    return Text.assemble(
        _text(report.domain, "bold"),
        ": ",
        _status(report.verdict),
        f" ({n[Status.FAIL]} fail, {n[Status.WARN]} warn, ",
        *((f"{n[Status.ERROR]} could not check, ",) if n[Status.ERROR] else ()),
        f"{n[Status.PASS]} pass)",
    )


def _terminal_domain(report: DomainReport, console: Console, *, detail: bool) -> None:
    table = Table(title=_text(report.domain, "bold"), show_lines=False, expand=False)
    for name in ("Status", "Check", "What we found", "How to fix"):
        table.add_column(name, overflow="fold")
    for _key, findings in grouped(report.findings):
        for finding in findings:
            found = _text(finding.message)
            if finding.subject:
                found = Text.assemble(_text(finding.subject, "bold"), ": ", found)
            table.add_row(_status(finding.status), _text(finding.check), found, _text(finding.fix))
        table.add_section()
    if report.findings:
        console.print(table)
    if report.error:
        console.print(Text.assemble(("error: ", "bold red"), _text(report.error)))
    console.print(_verdict_line(report))
    if detail and report.facts:
        # ensure_ascii escapes every control/format character inside the values, so the
        # only raw newlines are json's own indentation.
        console.print(Text(json.dumps(report.facts, indent=2, ensure_ascii=True, default=str)))


def render_totals(total: dict[Status, int], console: Console) -> None:
    """The last line of a bulk run: domains per verdict (``report.totals_line``)."""
    console.print(Text(totals_line(total), style="bold"))


def render_terminal(reports: Sequence[DomainReport], console: Console, *, detail: bool) -> None:
    """One domain: its findings and verdict. Several: a summary table (and with ``detail``,
    each domain's findings after it). ``detail`` also prints the raw facts."""
    if len(reports) == 1:
        _terminal_domain(reports[0], console, detail=detail)
        return
    table = Table(title="Secure email assurance")
    for name in ("Domain", "Verdict", "Fails", "Warns", "Errors", "First failing check"):
        table.add_column(name, overflow="fold")
    for report in reports:
        n = counts(report)
        why = headline(report)
        table.add_row(
            _text(report.domain),
            _status(report.verdict),
            str(n[Status.FAIL]),
            str(n[Status.WARN]),
            str(n[Status.ERROR]),
            _text(why, "red" if report.error else "") if why else Text("-"),
        )
    console.print(table)
    if detail:
        for report in reports:
            console.print()
            _terminal_domain(report, console, detail=True)
