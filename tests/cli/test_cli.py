"""The command line, as a user meets it: real processes, exit codes, one-line errors."""

import json
import subprocess
import sys
from datetime import date, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from harness.cli import run_cli

from securemail.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(*args, stdin=None, cwd=None, columns=80):
    return run_cli(*args, stdin=stdin, cwd=cwd, columns=columns)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "securemail.toml"
    path.write_text('[policy]\naccredited_list = "accredited.csv"\n')
    return path


def test_classify_json_fields(config):
    proc = run("classify", "-c", str(config), "--json", "jo@nhs.net", "a@nhs.net@evil.com")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["status"] for r in rows] == ["secure", "invalid"]
    assert rows[0]["domain"] == "nhs.net"
    assert rows[0]["rule"] == "nhs-net"
    assert {"address", "domain", "status", "rule", "reason", "notes"} <= rows[0].keys()


def test_classify_table_for_people(config):
    proc = run("classify", "-c", str(config), "jo@nhs.net", "x@gmail.com")
    out = proc.stdout.decode()
    assert proc.returncode == 0
    assert "secure" in out and "unknown" in out and "nhs-net" in out


def test_classify_stdin_streams(config):
    lines = "\n".join(["jo@nhs.net", "", "x@gmail.com", "bad", "a@dwp.gov.uk"] * 200) + "\n"
    proc = run("classify", "-c", str(config), "--json", "-", stdin=lines.encode())
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert len(rows) == 800  # blank lines skipped
    assert [r["status"] for r in rows[:4]] == ["secure", "unknown", "invalid", "secure"]


def test_classify_stdin_plain_lines(config):
    proc = run("classify", "-c", str(config), "-", stdin=b"jo@nhs.net\n")
    assert proc.stdout.decode().startswith("secure\tjo@nhs.net\tnhs-net\t")


def test_classify_stdin_undecodable_bytes_are_invalid_not_a_crash(config):
    proc = run("classify", "-c", str(config), "--json", "-", stdin=b"a\xff@nhs.net\njo@nhs.net\n")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.decode(errors="replace").splitlines()]
    assert [r["status"] for r in rows] == ["invalid", "secure"]


def test_classify_stdin_a_huge_line_is_cut_not_held(config):
    """One newline-free 50 MB line: read in bounded pieces, what is kept reported as
    invalid (at most MAX_STDIN_LINE characters of it), and the next line still read."""
    huge = b"a" * 50_000_000 + b"@nhs.net\njo@nhs.net\nlast@nhs.net"
    proc = run("classify", "-c", str(config), "--json", "-", stdin=huge)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["status"] for r in rows] == ["invalid", "secure", "secure"]
    assert len(proc.stdout) < 20_000  # the first row names at most 4096 characters


def test_audience_option_and_config_default(tmp_path):
    cfg = tmp_path / "gov.toml"
    cfg.write_text('[organisation]\naudience = "government"\n')
    gov = run("classify", "-c", str(cfg), "--json", "a@dwp.gov.uk")
    assert json.loads(gov.stdout)["status"] == "unknown"
    hsc = run("classify", "-c", str(cfg), "--audience", "health-and-care", "--json", "a@dwp.gov.uk")
    assert json.loads(hsc.stdout)["status"] == "secure"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["classify", "--audience", "nhs", "a@b.org"], "Invalid value for '--audience'"),
        (["classify", "--bogus", "a@b.org"], "No such option: --bogus"),
        (["classify", "-c", "/nonexistent/x.toml", "a@b.org"], "no such config file"),
        (["classify", "-", "a@b.org"], "cannot be combined"),
        (["classify", "--accredited", "/nonexistent.csv", "a@b.org"], "no such file"),
        (["policy", "explain", "/nonexistent.eml"], "no such file"),
        (["accredited", "import", "/nonexistent.csv", "-o", "/tmp/x.csv"], "no such file"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    proc = run(*args)
    err = proc.stderr.decode()
    assert proc.returncode == 2, (proc.stdout, err)
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[delivery]\nport = 99999\n")
    proc = run("classify", "-c", str(cfg), "a@b.org")
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == (
        f"securemail: error: {cfg}:2: delivery.port: must be between 1 and 65535"
    )


def test_help_explains():
    proc = run("classify", "--help")
    assert proc.returncode == 0
    assert "secure boundary" in proc.stdout.decode()
    top = run()
    assert top.returncode == 0 and "classify" in top.stdout.decode()


def _message(tmp_path, subject, body, to="a@trust.nhs.net, b@gmail.com", bcc=None):
    msg = EmailMessage()
    msg["From"] = "me@example.nhs.uk"
    msg["To"] = to
    if bcc:
        msg["Bcc"] = bcc
    msg["Subject"] = subject
    msg.set_content(body)
    path = tmp_path / "m.eml"
    path.write_bytes(msg.as_bytes())
    return path


def test_policy_explain_sensitive(tmp_path, config):
    eml = _message(tmp_path, "[secure] referral", "NHS number 943 476 5919", bcc="c@x.nhs.uk")
    proc = run("policy", "explain", "-c", str(config), "--json", str(eml))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["sensitivity"]["sensitive"] is True
    kinds = {m["kind"] for m in result["sensitivity"]["markers"]}
    assert kinds == {"subject-tag", "nhs-number"}
    assert "9434765919" not in proc.stdout.decode()  # NHS numbers are masked
    actions = {d["recipient"]: (d["action"], d["tls"]) for d in result["decisions"]}
    assert actions == {
        "a@trust.nhs.net": ("deliver", "verified"),
        "b@gmail.com": ("hold", "verified"),  # the release rule: never unverified
        "c@x.nhs.uk": ("hold", "verified"),
    }


def test_policy_explain_not_sensitive_and_rcpt_override(tmp_path, config):
    eml = _message(tmp_path, "lunch", "see you at one")
    proc = run("policy", "explain", "-c", str(config), "--json", "-r", "z@gmail.com", str(eml))
    decisions = json.loads(proc.stdout)["decisions"]
    assert [(d["recipient"], d["action"], d["tls"]) for d in decisions] == [
        ("z@gmail.com", "deliver", "opportunistic")
    ]


def test_policy_explain_reject_setting(tmp_path):
    cfg = tmp_path / "r.toml"
    cfg.write_text('[policy]\nunknown_sensitive_action = "reject"\n')
    eml = _message(tmp_path, "OFFICIAL-SENSITIVE", "x", to="b@gmail.com")
    proc = run("policy", "explain", "-c", str(cfg), "--json", str(eml))
    assert json.loads(proc.stdout)["decisions"][0]["action"] == "reject"


def test_policy_explain_human_output_example():
    proc = run("policy", "explain", str(EXAMPLES / "referral.eml"), cwd=EXAMPLES)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr
    assert "sensitive" in out and "OFFICIAL-SENSITIVE" in out
    assert "hold" in out and "verified" in out


def test_policy_explain_no_recipients(tmp_path, config):
    eml = tmp_path / "m.eml"
    eml.write_bytes(b"Subject: hi\n\nbody\n")
    proc = run("policy", "explain", "-c", str(config), str(eml))
    assert proc.returncode == 2
    assert "no recipients" in proc.stderr.decode()


def test_accredited_import_then_classify(tmp_path, config):
    today = date.today()
    csv = tmp_path / "published.csv"
    csv.write_text(
        "Organisation,Domain,Expiry date\n"
        f"Good Trust,good.nhs.uk,{(today + timedelta(days=30)).isoformat()}\n"
        f"Old Trust,old.nhs.uk,{(today - timedelta(days=1)).isoformat()}\n"
        "Junk,not a domain!,2099-01-01\n"
    )
    proc = run("accredited", "import", "-c", str(config), "--json", str(csv))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["imported"], report["expired"], report["skipped"]) == (2, 1, 1)
    assert (tmp_path / "accredited.csv").exists()
    rows = run("classify", "-c", str(config), "--json", "a@good.nhs.uk", "a@old.nhs.uk")
    good, old = (json.loads(line) for line in rows.stdout.decode().splitlines())
    assert (good["status"], good["rule"]) == ("secure", "accredited-list")
    assert "Good Trust" in good["reason"]
    assert (old["status"], old["rule"]) == ("unknown", "accredited-expired")
    shown = run("accredited", "show", "-c", str(config), "--json")
    assert {json.loads(line)["domain"] for line in shown.stdout.decode().splitlines()} == {
        "good.nhs.uk",
        "old.nhs.uk",
    }


def test_accredited_import_without_domain_column(tmp_path, config):
    csv = tmp_path / "bad.csv"
    csv.write_text("Organisation,Date\nX,2026-01-01\n")
    proc = run("accredited", "import", "-c", str(config), str(csv))
    assert proc.returncode == 2
    assert "domain" in proc.stderr.decode()
    assert len(proc.stderr.decode().strip().splitlines()) == 1
    assert not (tmp_path / "accredited.csv").exists()


def test_missing_configured_list_warns(config):
    proc = run("classify", "-c", str(config), "a@nhs.net")
    assert proc.returncode == 0
    assert "accredited list" in proc.stderr.decode() and "not found" in proc.stderr.decode()


def test_config_init_and_check(tmp_path):
    path = tmp_path / "new.toml"
    assert main(["config", "init", str(path)]) == 0
    assert "[policy]" in path.read_text()
    assert main(["tls", "selfsigned", "-c", str(path)]) == 0  # else tls.cert is an error
    proc = run("config", "check", "-c", str(path), "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["values"]["delivery"]["port"] == 25
    assert main(["config", "init", str(path)]) == 0  # kept, not overwritten
    assert "[policy]" in path.read_text()


def test_broken_pipe_is_quiet(config):
    lines = b"jo@nhs.net\n" * 200000
    proc = subprocess.run(
        f"{sys.executable} -m securemail.cli classify -c {config} --json - | head -n 1",
        shell=True,
        input=lines,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout.count(b"\n") == 1
    assert b"Traceback" not in proc.stderr


def test_untrusted_text_is_not_rich_markup(tmp_path, config):
    eml = _message(tmp_path, "[secure] [bold]referral[/bold]", "hello", to="b@gmail.com")
    proc = run("policy", "explain", "-c", str(config), str(eml), columns=1000)
    out = proc.stdout.decode()
    assert "[secure]" in out  # the tag is shown, not swallowed as markup
    assert "[policy] unknown_sensitive_action = hold" in out
    proc = run("classify", "-c", str(config), "[red]x@gmail.com")
    assert "[red]x@gmail.com" in proc.stdout.decode()


@pytest.mark.parametrize(
    ("args", "section"),
    [
        (("tls", "selfsigned"), "[organisation] hostname"),
        (("classify",), "[organisation] audience"),
        (("accredited", "import"), "[policy] accredited_list"),
        (("dkim", "show-record"), "[dkim] selector"),
    ],
)
def test_help_keeps_config_section_names(args, section):
    """``[section]`` in a help text is a config name, not rich markup to swallow."""
    proc = run(*args, "--help", columns=200)
    assert proc.returncode == 0, proc.stderr
    assert section in " ".join(proc.stdout.decode().split())
