"""Text from outside never drives the terminal: no raw ESC or CR reaches stdout.

Each test puts an ANSI colour sequence and a carriage return where a stranger can put
them (an address typed or piped in, a remote server's reply stored in the spool, an
organisation name in a published CSV), runs the command as a user does, and checks the
bytes on stdout: the control characters are shown as visible escapes, never sent raw.
"""

import asyncio
import json

from harness.cli import run_cli
from hypothesis import given
from hypothesis import strategies as st

from securemail.cli.common import json_line, plain_line, safe, text

HOSTILE = "\x1b[31m\r"  # recolour, then return to column 0 to overwrite the line


def run(*args, stdin=None, cwd=None):
    return run_cli(*args, stdin=stdin, cwd=cwd, columns=200)


def assert_inert(stdout: bytes) -> str:
    """No ESC (7-bit or as C1 CSI) and no CR on stdout; returns it decoded."""
    assert b"\x1b" not in stdout
    assert b"\r" not in stdout
    out = stdout.decode()
    assert "\x9b" not in out
    return out


def test_classify_address_table(tmp_path):
    proc = run("classify", f"x{HOSTILE}@gmail.com", "jo@nhs.net", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = assert_inert(proc.stdout)
    assert "x\\x1b[31m\\x0d@gmail.com" in out
    assert "nhs-net" in out  # the other row is untouched


def test_classify_address_streamed(tmp_path):
    """Plain lines for pipes: a TAB in the address cannot forge a field. (A CR in the
    input ends the line, as reading stdin as text does.)"""
    piped = b"x\x1b[31m\t@gmail.com\njo@nhs.net\n"
    proc = run("classify", "-", stdin=piped, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = assert_inert(proc.stdout)
    rows = [line.split("\t") for line in out.splitlines()]
    assert [len(row) for row in rows] == [4, 4]
    assert rows[0][:2] == ["invalid", "x\\x1b[31m\\x09@gmail.com"]


def test_classify_address_json_keeps_the_value(tmp_path):
    address = f"x{HOSTILE}\x9b@gmail.com"
    proc = run("classify", "--json", address, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_inert(proc.stdout)
    assert json.loads(proc.stdout)["address"] == address  # escaped, not altered


def test_usage_error_quoting_the_input_is_inert(tmp_path):
    proc = run(f"no{HOSTILE}such", cwd=tmp_path)
    assert proc.returncode == 2
    assert b"\x1b" not in proc.stderr and b"\r" not in proc.stderr
    assert len(proc.stderr.decode().strip().splitlines()) == 1


def _seed_spool(path):
    """A message as the gateway would have stored it: a hostile sender, EHLO name and
    decision reason, then a delivery attempt whose remote reply was hostile too."""
    from securemail.core.levels import TlsLevel
    from securemail.gateway.spool import (
        NewMessage,
        NewRecipient,
        Outcome,
        RcptStatus,
        open_spool,
    )

    async def seed():
        spool = open_spool(f"sqlite:///{path}")
        await spool.open()
        try:
            rcpts = (
                NewRecipient("held@gmail.com", "gmail.com", RcptStatus.HELD, TlsLevel.VERIFIED,
                             f"held: {HOSTILE}sensitive"),
                NewRecipient("jo@nhs.net", "nhs.net", RcptStatus.QUEUED, TlsLevel.VERIFIED, "secure"),
            )  # fmt: skip
            message = NewMessage(
                f"me{HOSTILE}@example.nhs.uk",
                rcpts,
                b"Subject: x\r\n\r\nhi\r\n",
                client=f"192.0.2.1:5000 helo=pc{HOSTILE}",
            )
            queue_id = await spool.store(message)
            claimed = await spool.claim_due(2e9, 10)
            await spool.record(
                [
                    Outcome(d.queue_id, d.rcpt, RcptStatus.DEFERRED, f"451 4.7.0 {HOSTILE}later",
                            next_attempt=4e9)
                    for d in claimed
                ]
            )  # fmt: skip
            return queue_id
        finally:
            await spool.close()

    return asyncio.run(seed())


def test_queue_show_reason_and_last_error(tmp_path):
    config = tmp_path / "securemail.toml"
    config.write_text('[spool]\nurl = "sqlite:///spool.db"\n')
    queue_id = _seed_spool(tmp_path / "spool.db")
    proc = run("queue", "show", "-c", str(config), queue_id, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = assert_inert(proc.stdout)
    assert "decision: held: \\x1b[31m\\x0dsensitive" in out
    assert "last: 451 4.7.0 \\x1b[31m\\x0dlater" in out
    assert "helo=pc\\x1b[31m\\x0d" in out
    listed = run("queue", "list", "-c", str(config), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "\\x1b[31m\\x0dlater" in assert_inert(listed.stdout)
    shown = run("queue", "show", "-c", str(config), "--json", queue_id, cwd=tmp_path)
    assert_inert(shown.stdout)
    errors = [r["last_error"] for r in json.loads(shown.stdout)["recipients"]]
    assert f"451 4.7.0 {HOSTILE}later" in errors


def test_accredited_show_organisation(tmp_path):
    """core folds whitespace (the CR) in organisation names; the ESC is the CLI's to stop."""
    csv = tmp_path / "published.csv"
    csv.write_text(
        f'Organisation,Domain,Expiry date\n"Evil{HOSTILE}Trust",evil.nhs.uk,2099-01-01\n',
        newline="",
    )
    config = tmp_path / "securemail.toml"
    config.write_text('[policy]\naccredited_list = "accredited.csv"\n')
    imported = run("accredited", "import", "-c", str(config), str(csv), cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert_inert(imported.stdout)
    proc = run("accredited", "show", "-c", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = assert_inert(proc.stdout)
    assert "Evil\\x1b[31m" in out and "evil.nhs.uk" in out


# --- the one function, directly ---------------------------------------------------------


def test_safe_shows_every_control_character():
    assert safe("a\x1b[2Jb\rc\nd\te\x00\x7f\x9b") == "a\\x1b[2Jb\\x0dc\\x0ad\\x09e\\x00\\x7f\\x9b"
    assert safe("\u202eevil") == "\\u202eevil"  # bidi override
    assert safe(b"caf\xff".decode("utf-8", "surrogateescape")) == "caf\\xff"
    assert safe("Trust [bold]plain[/] café") == "Trust [bold]plain[/] café"


def test_text_is_never_markup():
    assert text("[red]x", ("[/]", "bold")).plain == "[red]x[/]"


ANY_TEXT = st.text(st.characters(exclude_categories=()))  # lone surrogates too


@given(ANY_TEXT)
def test_safe_output_is_inert(value):
    shown = safe(value)
    assert shown.isprintable()
    assert (shown == value) is value.isprintable()


@given(st.lists(ANY_TEXT, max_size=4))
def test_plain_line_keeps_fields_and_lines(fields):
    line = plain_line(*fields)
    assert line.endswith("\n") and line.count("\n") == 1
    assert line.count("\t") == max(len(fields) - 1, 0)


@given(st.dictionaries(ANY_TEXT, ANY_TEXT | st.integers(), max_size=4))
def test_json_line_round_trips_and_is_inert(obj):
    line = json_line(obj)
    assert line.endswith("\n") and line.count("\n") == 1
    body = line[:-1]
    assert body.isprintable()
    assert json.loads(body) == obj
