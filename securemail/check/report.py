"""Rendering the checker's ``DomainReport``s: JSON lines, the terminal, and one HTML file.

Rendering only: no checks happen here. Findings carry text we do not control (TXT
records, SMTP banners, certificate names, domain names typed by a user), so the terminal
renderer passes everything through ``rich.text.Text`` (never markup-parsed) with control
characters made visible, and the HTML renderer escapes every interpolated value. The HTML
file is self-contained (inline CSS; no fonts, scripts or images fetched from anywhere) so
it can be attached to an email to an IT supplier and printed.
"""

from __future__ import annotations

import html
import json
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime

from securemail import __version__
from securemail.check.model import DomainReport, Finding, Status
from securemail.core.accredited import to_cell

MECHANISMS: dict[str, str] = {
    "domain": "The domain itself",
    "mx": "Mail servers (MX)",
    "tls": "Encryption in transit (STARTTLS and TLS)",
    "spf": "SPF: which servers may send the domain's email",
    "dkim": "DKIM: signing outgoing email",
    "dmarc": "DMARC: what receivers do with forged email",
    "mta_sts": "MTA-STS: insisting on encrypted delivery",
    "tlsrpt": "TLS-RPT: reports of encryption failures",
    "dane": "DANE: certificates pinned in DNSSEC",
}
_MEANING = {
    Status.PASS: "Meets the standard or guidance. Nothing to do.",
    Status.WARN: "Works, but falls short of guidance or good practice. Fix when you can.",
    Status.ERROR: "Could not be checked (a DNS server or mail server did not answer). Not "
    "a grade: check again later.",
    Status.FAIL: "Does not meet the standard, or puts secure delivery at risk. Fix this first.",
}


def to_json_line(report: DomainReport, index: int | None = None) -> str:
    """One JSON object on one line (non-ASCII and control characters escaped), without
    the newline: the writer ends each line, so JSON Lines output counts with ``wc -l``.
    ``index`` (the domain's input position, when output is in completion order from
    several processes) comes first, as ``"index"``."""
    data = report.to_json() if index is None else {"index": index, **report.to_json()}
    return json.dumps(data, ensure_ascii=True, default=str)


CSV_HEADER = ("domain", "verdict", "fail", "warn", "error", "pass", "first_failing_check")
CSV_INDEX = "index"  # the last column when rows carry their input position


def to_csv_row(report: DomainReport, index: int | None = None) -> list[str]:
    """One ``CSV_HEADER`` row (then the ``index`` when given). Every cell goes through
    ``to_cell``: a domain, a subject or an error message starting ``=`` or ``+`` must
    not run as a spreadsheet formula."""
    n = counts(report)
    return [
        to_cell(clean(cell))
        for cell in (
            report.domain,
            report.verdict.label,
            *(str(n[s]) for s in (Status.FAIL, Status.WARN, Status.ERROR, Status.PASS)),
            headline(report),
            *(() if index is None else (str(index),)),
        )
    ]


def totals(reports: Iterable[DomainReport]) -> dict[Status, int]:
    """Domains per verdict."""
    out = dict.fromkeys(Status, 0)
    for report in reports:
        out[report.verdict] += 1
    return out


def totals_line(total: dict[Status, int]) -> str:
    """``4 domains: 1 pass, 1 warn, 1 fail, 1 error``: the last line of a bulk run."""
    order = (Status.PASS, Status.WARN, Status.FAIL, Status.ERROR)
    count = sum(total.values())
    parts = ", ".join(f"{total[s]} {s.label}" for s in order)
    return f"{count} domain{'s' * (count != 1)}: {parts}"


def grouped(findings: Iterable[Finding]) -> list[tuple[str, list[Finding]]]:
    """Findings by mechanism (the code's first part), in ``MECHANISMS`` order, then others."""
    groups: dict[str, list[Finding]] = {}
    for finding in findings:
        groups.setdefault(finding.check.split(".")[0], []).append(finding)
    order = list(MECHANISMS)
    seen = list(groups)
    keys = sorted(seen, key=lambda k: (order.index(k) if k in order else len(order), seen.index(k)))
    return [(key, groups[key]) for key in keys]


def counts(report: DomainReport) -> dict[Status, int]:
    out = dict.fromkeys(Status, 0)
    for finding in report.findings:
        out[finding.status] += 1
    return out


def first_failure(report: DomainReport) -> Finding | None:
    for _key, findings in grouped(report.findings):
        for finding in findings:
            if finding.status == Status.FAIL:
                return finding
    return None


def headline(report: DomainReport) -> str:
    """What a summary row says after the counts: why the check could not run, else the
    first failing check (and its subject), else ""."""
    if report.error:
        return f"error: {report.error}"
    first = first_failure(report)
    return f"{first.check} {first.subject}".strip() if first else ""


def clean(text: object) -> str:
    """``text`` with control and format characters (ESC, bidi overrides...) made visible."""
    return "".join(
        (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        if unicodedata.category(c) in ("Cc", "Cf")
        else c
        for c in str(text)
    )


# --- HTML -------------------------------------------------------------------------------

_CSS = """
:root { --blue: #005eb8; --ink: #212b32; --grey: #4c6272; --line: #d8dde0;
  --pass: #007f3b; --warn: #ffb81c; --fail: #d5281b; --pale: #f0f4f5; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.45;
  font: 16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
header { background: var(--blue); color: #fff; padding: 24px 32px; }
header h1 { margin: 0 0 4px; font-size: 28px; }
header p { margin: 0; opacity: .9; }
main { padding: 8px 32px 32px; max-width: 1200px; }
h2 { font-size: 22px; margin: 32px 0 8px; border-bottom: 2px solid var(--line);
  padding-bottom: 4px; }
h3 { font-size: 18px; margin: 24px 0 8px; }
.intro { max-width: 60em; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 16px; font-size: 14px; }
th, td { text-align: left; vertical-align: top; padding: 6px 8px;
  border-bottom: 1px solid var(--line); overflow-wrap: anywhere; }
thead th { background: var(--pale); border-bottom: 2px solid var(--grey); }
tr.group th { background: var(--pale); color: var(--blue); font-size: 15px; padding-top: 10px; }
.num { text-align: right; width: 4.5em; }
table.findings { table-layout: fixed; } col.status { width: 6.5em; }
col.check { width: 14em; } col.found { width: 46%; }
code { font: 13px/1.3 ui-monospace, Consolas, monospace; }
.badge { display: inline-block; min-width: 4.2em; white-space: nowrap; text-align: center;
  font-weight: 700; font-size: 13px; padding: 2px 6px; border-radius: 4px; color: #fff; }
.badge.pass { background: var(--pass); } .badge.fail { background: var(--fail); }
.badge.warn { background: var(--warn); color: var(--ink); }
.badge.error { background: var(--grey); }
.verdict { font-size: 18px; margin: 8px 0; }
p.error { border-left: 6px solid var(--fail); background: #fbe9e7; padding: 8px 12px; }
.legend td:first-child { width: 6em; } .muted { color: var(--grey); }
details { margin: 8px 0 24px; } summary { cursor: pointer; color: var(--blue); }
pre { background: var(--pale); padding: 12px; overflow-x: auto; font-size: 12px;
  white-space: pre-wrap; overflow-wrap: anywhere; }
footer { color: var(--grey); font-size: 13px; padding: 0 32px 24px; }
@media print {
  header { background: none; color: var(--ink); padding: 0 0 8px;
    border-bottom: 3px solid var(--blue); }
  main, footer { padding: 0; max-width: none; } details { display: none; }
  a { color: inherit; text-decoration: none; } tr, .verdict { break-inside: avoid; }
  section.domain { break-before: page; }
  .badge, tr.group th, thead th { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
}
"""

_INTRO = (
    "This report shows how well each domain's email meets the NHS secure email standard "
    "(DCB1596). The standard requires email to be encrypted in transit with TLS, and each "
    "domain to publish SPF, DKIM and DMARC records so that receivers can tell genuine email "
    "from forgeries. UK government guidance also recommends MTA-STS, so that sending servers "
    "insist on an encrypted, authenticated connection, and TLS-RPT, so that the domain hears "
    "when that fails. Each row says what we found and, where something needs to change, how "
    "to fix it. If an IT supplier manages your email, you can send them this report."
)


def _badge(status: Status) -> str:
    return f'<span class="badge {status.label}">{status.name}</span>'


def _html_finding(finding: Finding) -> str:
    e = html.escape
    found = e(clean(finding.message))
    if finding.subject:
        found = f"<strong>{e(clean(finding.subject))}</strong>: {found}"
    fix = e(clean(finding.fix)) if finding.fix else '<span class="muted">Nothing to do</span>'
    return (
        f'<tr><td>{_badge(finding.status)}</td><td class="check"><code>'
        f"{e(clean(finding.check))}</code></td>"
        f"<td>{found}</td><td>{fix}</td></tr>"
    )


def _html_domain(index: int, report: DomainReport) -> str:
    e = html.escape
    n = counts(report)
    out = [
        f'<section class="domain" id="domain-{index}">',
        f"<h2>{e(clean(report.domain))}</h2>",
        f'<p class="verdict">Verdict: {_badge(report.verdict)} &nbsp; '
        f"{n[Status.FAIL]} to fix, {n[Status.WARN]} to improve, "
        f"{n[Status.ERROR]} could not be checked, {n[Status.PASS]} passed</p>",
    ]
    if report.error:
        out.append(f'<p class="error">The check could not run: {e(clean(report.error))}</p>')
    if report.findings:
        out.append(
            '<table class="findings"><colgroup><col class="status"><col class="check">'
            '<col class="found"><col class="fix"></colgroup><thead><tr><th>Status</th>'
            "<th>Check</th><th>What we found</th><th>How to fix</th></tr></thead><tbody>"
        )
        for key, findings in grouped(report.findings):
            title = MECHANISMS.get(key, key)
            out.append(f'<tr class="group"><th colspan="4">{e(clean(title))}</th></tr>')
            out.extend(_html_finding(finding) for finding in findings)
        out.append("</tbody></table>")
    if report.facts:
        facts = json.dumps(report.facts, indent=2, ensure_ascii=True, default=str)
        out.append(
            "<details><summary>Raw facts (for technical staff)</summary>"
            f"<pre>{e(facts)}</pre></details>"
        )
    out.append("</section>")
    return "\n".join(out)


def render_html(
    reports: Sequence[DomainReport],
    *,
    generated: datetime,
    title: str = "Secure email assurance report",
) -> str:
    """One self-contained, printable HTML page: summary, then each domain in full."""
    e = html.escape
    when = generated.strftime("%d %B %Y %H:%M") + (
        f" {generated.tzname()}" if generated.tzinfo else ""
    )
    legend = "".join(
        f"<tr><td>{_badge(status)}</td><td>{e(_MEANING[status])}</td></tr>" for status in Status
    )
    rows = []
    for index, report in enumerate(reports, 1):
        n = counts(report)
        rows.append(
            f'<tr><td><a href="#domain-{index}">{e(clean(report.domain))}</a></td>'
            f"<td>{_badge(report.verdict)}</td><td class=num>{n[Status.FAIL]}</td>"
            f"<td class=num>{n[Status.WARN]}</td><td class=num>{n[Status.ERROR]}</td>"
            f"<td class=num>{n[Status.PASS]}</td>"
            f"<td>{e(clean(headline(report))) or '-'}</td></tr>"
        )
    return "\n".join(
        [
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>",
            f"<header><h1>{e(title)}</h1>",
            f"<p>Generated {e(when)} by securemail {e(__version__)}</p></header>\n<main>",
            f'<p class="intro">{e(_INTRO)}</p>',
            "<h3>What the statuses mean</h3>",
            f'<table class="legend"><tbody>{legend}</tbody></table>',
            "<h2>Summary</h2>\n<table><thead><tr><th>Domain</th><th>Verdict</th>"
            '<th class="num">Fail</th><th class="num">Warn</th><th class="num">Error</th>'
            '<th class="num">Pass</th>'
            "<th>First thing to fix</th></tr></thead>",
            f"<tbody>{''.join(rows)}</tbody></table>",
            *(_html_domain(index, report) for index, report in enumerate(reports, 1)),
            "</main>",
            "<footer>Checks follow DCB1596 (secure email), RFC 7208 (SPF), RFC 6376 (DKIM), "
            "RFC 7489 (DMARC), RFC 8461 (MTA-STS), RFC 8460 (TLS-RPT) and RFC 7672 (DANE). "
            "Results reflect DNS and servers as seen at the time above.</footer>",
            "</body>\n</html>\n",
        ]
    )
