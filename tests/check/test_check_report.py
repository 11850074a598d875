"""Rendering reports: JSON lines, the terminal (rich), and HTML checked in real Chromium."""

import json
import re
import shutil
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

import securemail
from securemail.check.model import DomainReport, failed, passed, warned
from securemail.check.report import render_html, to_json_line
from securemail.cli.check_report import render_terminal

HOSTILE = "<script>alert(1)</script>"
MARKUP = "v=spf1 [bold]include:evil[/bold] [link=https://evil.example]x[/link] -all"
WHEN = datetime(2025, 3, 12, 14, 3, tzinfo=UTC)


def failing() -> DomainReport:
    """Findings deliberately out of mechanism order, with hostile text in them."""
    return DomainReport(
        "failing.nhs.uk",
        (
            failed(
                "mta_sts.mx_coverage",
                "MX host mx.backup.net not covered by the policy's mx patterns",
                "Add 'mx: mx.backup.net' to the policy",
                "mx.backup.net",
            ),
            warned("spf.record", f"SPF record is {MARKUP}", "Publish one SPF record"),
            passed("mx.present", "2 MX hosts"),
            failed("tls.version", "TLS 1.0 offered", "Disable TLS 1.0", "mx1.failing.nhs.uk"),
            warned("dmarc.policy", f"DMARC record: {HOSTILE}", f"Replace {HOSTILE}"),
            passed("dkim.selector", "banner \x1b[31mred\x1b[0m \u202eevil"),
        ),
        facts={"spf": MARKUP, "dmarc": HOSTILE, "mx_hosts": ["mx1.failing.nhs.uk"]},
    )


def good() -> DomainReport:
    return DomainReport(
        "good.nhs.uk", (passed("mx.present", "1 MX host"), passed("dmarc.policy", "p=reject"))
    )


def broken() -> DomainReport:
    return DomainReport("bad domain", (), error="not a domain name: spaces")


# --- JSON lines --------------------------------------------------------------------------


def test_json_line_schema():
    line = to_json_line(failing())
    assert "\n" not in line
    assert line.isascii()  # control and bidi characters escaped, not passed through
    data = json.loads(line)
    assert list(data) == ["domain", "verdict", "findings", "facts"]
    assert data["domain"] == "failing.nhs.uk"
    assert data["verdict"] == "fail"
    assert data["findings"][0] == {
        "check": "mta_sts.mx_coverage",
        "status": "fail",
        "message": "MX host mx.backup.net not covered by the policy's mx patterns",
        "fix": "Add 'mx: mx.backup.net' to the policy",
        "subject": "mx.backup.net",
    }
    assert {f["status"] for f in data["findings"]} == {"pass", "warn", "fail"}
    for finding in data["findings"]:
        assert {"check", "status", "message", "fix"} <= set(finding)
    assert data["findings"][-1]["message"] == "banner \x1b[31mred\x1b[0m \u202eevil"  # round trip
    assert data["facts"]["dmarc"] == HOSTILE


def test_json_line_error_and_no_facts():
    data = json.loads(to_json_line(broken()))
    assert data == {
        "domain": "bad domain",
        "verdict": "error",  # could not check: not a grade
        "findings": [],
        "error": "not a domain name: spaces",
    }
    assert json.loads(to_json_line(good()))["verdict"] == "pass"


# --- terminal ----------------------------------------------------------------------------


def _console() -> Console:
    return Console(record=True, width=200, color_system="truecolor", force_terminal=True)


def test_terminal_one_domain_grouped_with_verdict_and_literal_markup():
    console = _console()
    render_terminal([failing()], console, detail=False)
    text = console.export_text()
    codes = [
        "mx.present",
        "tls.version",
        "spf.record",
        "dkim.selector",
        "dmarc.policy",
        "mta_sts.mx_coverage",
    ]
    positions = [text.index(code) for code in codes]
    assert positions == sorted(positions), "findings not grouped in mechanism order"
    assert "[bold]include:evil[/bold]" in text  # printed, not interpreted
    assert "[link=https://evil.example]x[/link]" in text
    assert HOSTILE in text
    assert "\x1b[31m" not in text and "\\x1b[31mred" in text  # the banner's ESC made visible
    assert "\\u202eevil" in text
    assert "mx.backup.net: MX host mx.backup.net not covered" in text
    assert "Disable TLS 1.0" in text
    assert re.search(r"failing\.nhs\.uk: FAIL \(2 fail, 2 warn, 2 pass\)", text)
    assert '"mx_hosts"' not in text  # facts only with detail


def test_terminal_one_domain_detail_shows_facts():
    console = _console()
    render_terminal([failing()], console, detail=True)
    text = console.export_text()
    assert '"mx_hosts": [' in text
    assert '"spf": "v=spf1 [bold]include:evil[/bold]' in text


def test_terminal_many_domains_summary():
    console = _console()
    render_terminal([failing(), good(), broken()], console, detail=False)
    text = console.export_text()
    rows = {line.split()[1]: line for line in text.splitlines() if "nhs.uk" in line}
    assert re.search(
        r"failing\.nhs\.uk\s.*FAIL\s.*2\s.*2\s.*tls\.version mx1\.failing\.nhs\.uk",
        rows["failing.nhs.uk"],
    )
    assert re.search(r"good\.nhs\.uk\s.*PASS\s.*0\s.*0\s", rows["good.nhs.uk"])
    assert re.search(r"bad domain\s.*ERROR\s.*error: not a domain name: spaces", text)
    assert "spf.record" not in text  # no per-domain tables without detail


def test_terminal_many_domains_detail_adds_each_domain():
    console = _console()
    render_terminal([failing(), good()], console, detail=True)
    text = console.export_text()
    assert "spf.record" in text
    assert "good.nhs.uk: PASS (0 fail, 0 warn, 2 pass)" in text
    assert "[bold]include:evil[/bold]" in text


# --- HTML --------------------------------------------------------------------------------


def _hostile_report() -> DomainReport:
    return DomainReport(
        f"x{HOSTILE}.nhs.uk",
        (warned(f"spf.{HOSTILE}", HOSTILE, HOSTILE, HOSTILE),),
        facts={"txt": [HOSTILE], HOSTILE: "x"},
        error=HOSTILE,
    )


def test_html_escapes_everything():
    page = render_html([failing(), _hostile_report()], generated=WHEN, title=f"Report {HOSTILE}")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("&lt;script&gt;") >= 10  # title x2, summary, domain, check, subject, ...
    assert "<title>Report &lt;script&gt;alert(1)&lt;/script&gt;</title>" in page
    assert 'id="domain-2"' in page  # anchors never built from untrusted names
    assert "\x1b" not in page and "\u202e" not in page
    assert "\\x1b[31mred" in page
    assert "[bold]include:evil[/bold]" in page  # plain text in HTML, shown as it is


def test_html_is_self_contained_and_complete():
    page = render_html([failing(), good(), broken()], generated=WHEN)
    assert page.startswith("<!DOCTYPE html>")
    for external in ("src=", "<link", "@import", "url(", "<img", "<iframe", "<object", "<embed"):
        assert external not in page, external
    assert re.findall(r'href="([^"]*)"', page) == ["#domain-1", "#domain-2", "#domain-3"]
    assert not re.search(r"(?:href|action)\s*=\s*[^\"]", page)  # every link is a fragment above
    assert "<title>Secure email assurance report</title>" in page
    assert "Generated 12 March 2025 14:03 UTC" in page
    assert f"securemail {securemail.__version__}" in page
    for term in ("DCB1596", "TLS", "SPF", "DKIM", "DMARC", "MTA-STS", "TLS-RPT", "IT supplier"):
        assert term in page
    assert "@media print" in page
    summary = page[page.index("<h2>Summary</h2>") : page.index('<section class="domain"')]
    assert re.search(
        r'failing\.nhs\.uk</a></td><td><span class="badge fail">FAIL</span></td>'
        r"<td class=num>2</td><td class=num>2</td><td class=num>0</td><td class=num>2</td>"
        r"<td>tls\.version mx1\.failing\.nhs\.uk</td>",
        summary,
    )
    assert 'good.nhs.uk</a></td><td><span class="badge pass">PASS</span>' in summary
    assert "not a domain name: spaces" in summary
    section = page[page.index('id="domain-1"') : page.index('id="domain-2"')]
    groups = re.findall(r'<tr class="group"><th colspan="4">([^<]+)</th>', section)
    assert [g.split()[0].rstrip(":") for g in groups] == [
        "Mail",
        "Encryption",
        "SPF",
        "DKIM",
        "DMARC",
        "MTA-STS",
    ]
    assert "<strong>mx.backup.net</strong>: MX host" in section
    assert "<details><summary>Raw facts" in section
    assert "&quot;mx_hosts&quot;: [\n    &quot;mx1.failing.nhs.uk&quot;\n  ]" in section
    assert "The check could not run: not a domain name: spaces" in page


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "chromium is not installed: run scripts/apt-install chromium (Debian package 'chromium')"
        )
    return path


def _run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-2000:]}"
    return result


@pytest.mark.timeout(120)
def test_html_renders_in_headless_chromium(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(
        render_html([failing(), good(), _hostile_report()], generated=WHEN), encoding="utf-8"
    )
    shot = tmp_path / "shot.png"
    _run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    assert shot.exists(), "chromium wrote no screenshot"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1280, 2000)
    assert len(data) > 10_000, f"screenshot is only {len(data)} bytes: blank page?"

    dom = _run_chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    assert '<span class="badge fail">FAIL</span>' in dom
    assert '<span class="badge pass">PASS</span>' in dom
    assert "failing.nhs.uk" in dom
    assert "good.nhs.uk" in dom
    assert "<script" not in dom.lower()  # the hostile value stayed text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
