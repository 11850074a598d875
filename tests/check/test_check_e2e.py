"""`securemail check` end to end: a fully set-up domain and a broken one, on loopback.

DNS from the loopback server, STARTTLS from a real SMTP server with a test-CA
certificate, the MTA-STS policy from a real HTTPS server; the command is run as a user
runs it (a subprocess with a config file), and its JSON, terminal and HTML outputs are
checked.
"""

import csv
import io
import json
import socket
import subprocess
import sys

import pytest
from harness.httpsserver import HttpsServer, Route
from harness.smtpsink import SinkServer

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]  # processes: CI lane

GOOD, BAD = "good.nhs.uk", "bad.example"
POLICY = "version: STSv1\nmode: enforce\nmx: mx.good.nhs.uk\nmax_age: 604800\n"


@pytest.fixture
def world(pki, dns_server, tmp_path):
    """Both domains' DNS, one SMTP server (STARTTLS, cert for mx.good.nhs.uk), one HTTPS
    server for mta-sts.good.nhs.uk, and a config pointing the checker at them."""
    smtp_ctx = pki.server_context("mx.good.nhs.uk")
    https_ctx = pki.server_context(f"mta-sts.{GOOD}")
    routes = {"/.well-known/mta-sts.txt": Route(200, "text/plain", POLICY.encode())}
    with (
        SinkServer(hostname="mx.good.nhs.uk", tls_context=smtp_ctx) as smtp,
        HttpsServer(https_ctx, routes) as https,
    ):
        z = dns_server
        z.add(GOOD, "MX", "10 mx.good.nhs.uk.")
        z.add("mx.good.nhs.uk", "A", "127.0.0.1")
        z.add("1.0.0.127.in-addr.arpa", "PTR", "mx.good.nhs.uk.")
        z.add(GOOD, "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
        z.add(f"_dmarc.{GOOD}", "TXT", f"v=DMARC1; p=reject; rua=mailto:dmarc@{GOOD}")
        z.add(f"_mta-sts.{GOOD}", "TXT", "v=STSv1; id=20261123")
        z.add(f"mta-sts.{GOOD}", "A", "127.0.0.1")
        z.add(f"_smtp._tls.{GOOD}", "TXT", f"v=TLSRPTv1; rua=mailto:tlsrpt@{GOOD}")
        from securemail.mech.dkim import generate_key

        _pem, record = generate_key("rsa", 2048)
        z.add(f"s1._domainkey.{GOOD}", "TXT", record)
        # bad.example: MX with no STARTTLS-capable server on the port, +all, p=none
        z.add(BAD, "MX", "10 mx.bad.example.")
        z.add("mx.bad.example", "A", "127.0.0.2")
        z.add(BAD, "TXT", "v=spf1 +all")
        z.add(f"_dmarc.{BAD}", "TXT", "v=DMARC1; p=none")
        config = tmp_path / "securemail.toml"
        config.write_text(
            f'[dns]\nnameservers = ["{z.nameserver}"]\ntimeout = 2.0\n'
            f'[tls]\nca_file = "{pki.ca_file}"\n'
            f"[check]\nsmtp_port = {smtp.port}\nhttps_port = {https.port}\ntimeout = 3.0\n"
        )
        yield config


def run(config, *args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "securemail.cli", "check", "--config", str(config), *args],
        input=stdin, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip


def test_good_domain_passes_json(world):
    proc = run(world, "--json", GOOD)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    statuses = {f["check"]: f["status"] for f in report["findings"]}
    assert report["domain"] == GOOD
    for code in ("mx.records", "tls.starttls", "tls.version", "tls.certificate_chain",
                 "tls.certificate_name", "spf.all", "dmarc.policy", "dkim.key",
                 "mta_sts.mode", "mta_sts.mx_coverage", "tlsrpt.present"):  # fmt: skip
        assert statuses.get(code) == "pass", (code, statuses.get(code), report["findings"])
    assert report["verdict"] in ("pass", "warn")
    assert all(f["status"] != "fail" for f in report["findings"]), report["findings"]
    assert {"check", "status", "message", "fix"} <= report["findings"][0].keys()


def test_bad_domain_fails_with_fixes(world):
    proc = run(world, "--json", BAD)
    report = json.loads(proc.stdout)
    assert report["verdict"] == "fail"
    failing = {f["check"]: f for f in report["findings"] if f["status"] == "fail"}
    assert "spf.all" in failing and "tls.connect" in failing
    assert all(f["fix"] for f in failing.values())
    assert any(f["check"] == "dmarc.policy" and f["status"] == "warn" for f in report["findings"])


def test_bulk_from_stdin_with_summary_and_html(world, tmp_path):
    html = tmp_path / "report.html"
    proc = run(
        world, "--html", str(html), "-", stdin=f"{GOOD}\n\n# comment\n{BAD}\nnot a domain!\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert GOOD in proc.stdout and BAD in proc.stdout and "FAIL" in proc.stdout.upper()
    page = html.read_text()
    assert "<html" in page and GOOD in page and BAD in page and "<script" not in page


def test_bad_usage_is_one_line(world):
    proc = run(world, "-", GOOD)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().startswith("securemail: error:") and len(proc.stderr.splitlines()) == 1
    )


def test_only_selected_mechanisms(world):
    proc = run(world, "--json", "--only", "spf,dmarc", GOOD)
    mechanisms = {f["check"].split(".")[0] for f in json.loads(proc.stdout)["findings"]}
    assert mechanisms == {"mx", "spf", "dmarc"}
    bad = run(world, "--only", "spf,nope", GOOD)
    assert bad.returncode == 2 and "unknown nope" in bad.stderr


# --- output: JSON lines, de-duplication, totals, CSV, "could not check", NXDOMAIN --------


def test_json_is_one_line_per_domain_each_checked_once(world):
    """``--json a b c | wc -l`` counts domains: every object ends in a newline, and a
    domain written several ways (case, trailing dot) is checked once, first spelling."""
    proc = run(world, "--json", "--no-tls", GOOD, BAD, GOOD.upper(), f"{GOOD}.", f"{BAD}.")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n") and proc.stdout.count("\n") == 2
    domains = sorted(json.loads(line)["domain"] for line in proc.stdout.splitlines())
    assert domains == sorted([GOOD, BAD])
    # the totals go to stderr, so stdout stays JSON Lines
    assert "2 domains: " in proc.stderr and ", 1 fail, 0 error" in proc.stderr


def test_idna_forms_are_one_domain_and_nxdomain_is_one_finding(world):
    proc = run(world, "--json", "bücher.example", "XN--BCHER-KVA.EXAMPLE.")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    report = json.loads(line)
    assert report["domain"] == "xn--bcher-kva.example"
    assert report["verdict"] == "fail"
    assert [(f["check"], f["status"]) for f in report["findings"]] == [("domain.exists", "fail")]
    assert "does not exist" in report["findings"][0]["message"]
    assert report["findings"][0]["fix"]
    assert "facts" not in report  # nothing else was looked up


@pytest.fixture
def unreachable(tmp_path):
    """A config whose only nameserver is a loopback port nobody answers on."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "unreachable.toml"
    config.write_text(
        f'[dns]\nnameservers = ["127.0.0.1:{port}"]\ntimeout = 1.0\n[check]\ntimeout = 2.0\n'
    )
    return config


def test_dns_unreachable_is_error_not_a_grade(unreachable, tmp_path):
    proc = run(unreachable, "--json", GOOD)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "error"
    assert report["findings"] and {f["status"] for f in report["findings"]} == {"error"}
    assert all("result unknown" in f["message"] for f in report["findings"])
    html = tmp_path / "unreachable.html"
    terminal = run(unreachable, "--html", str(html), GOOD)
    assert f"{GOOD}: ERROR (0 fail, 0 warn, " in terminal.stdout
    assert "could not check" in terminal.stdout
    assert '<span class="badge error">ERROR</span>' in html.read_text()


@pytest.mark.parametrize("workers", [1, 2])
def test_csv_rows_never_formulas_and_totals_on_stderr(world, workers):
    stdin = f"{GOOD}\n{BAD}\n=HYPERLINK(1)\n"
    proc = run(world, "--csv", "--no-tls", "--workers", str(workers), "-", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    header, *rows = list(csv.reader(io.StringIO(proc.stdout)))
    columns = ["domain", "verdict", "fail", "warn", "error", "pass", "first_failing_check"]
    if workers == 1:
        assert header == columns
    else:  # completion order from two processes: each row says where it came in
        assert header == [*columns, "index"]
        assert {row[0]: row[-1] for row in rows} == {GOOD: "0", BAD: "1", "'=HYPERLINK(1)": "2"}
    by_domain = {row[0]: row for row in rows}
    assert len(rows) == 3 and set(by_domain) == {GOOD, BAD, "'=HYPERLINK(1)"}
    bad = by_domain[BAD]
    assert bad[1] == "fail" and int(bad[2]) >= 1 and bad[6].startswith("spf.all")
    junk = by_domain["'=HYPERLINK(1)"]
    assert junk[1] == "error" and junk[6].startswith("error: not a domain name")
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
    assert "3 domains: " in proc.stderr and ", 1 fail, 1 error" in proc.stderr
    assert run(world, "--csv", "--json", GOOD).returncode == 2


def test_bulk_terminal_ends_with_totals(world):
    proc = run(world, "--no-tls", GOOD, BAD, "nope.invalid")
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("3 domains: ") and last.endswith(", 2 fail, 0 error"), last
    assert "domain.exists" in proc.stdout  # the first failing check of nope.invalid
