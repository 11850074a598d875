"""``securemail config check``: what would fail at ``serve``, or is dangerous, is found
first and named by its key; values print as they would be written."""

import json
import pwd

import pytest
from harness.cli import run_cli

from securemail.cli import main
from securemail.tls import write_self_signed

pytestmark = pytest.mark.slow  # many CLI processes: the CI lane, not the fast one


@pytest.fixture
def conf(tmp_path):
    """A config whose files are all in place, so one test can break one of them."""
    write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "mail.example.nhs.uk")
    (tmp_path / "dkim").mkdir()
    path = tmp_path / "securemail.toml"
    path.write_text(
        '[tls]\ncert = "cert.pem"\nkey = "key.pem"\n'
        '[relay]\nusers_file = "users.toml"\n'
        '[dkim]\nkey_dir = "dkim"\n'
        '[policy]\naccredited_list = "accredited.csv"\n'
    )
    return path


def check(path, *extra):
    """Run from the config's directory, so short names keep lines under 80 columns."""
    proc = run_cli("config", "check", "-c", path.name, *extra, cwd=path.parent)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_values_print_as_written_in_the_file(conf):
    status, out, err = check(conf)
    assert status == 0, err
    assert "securemail.toml: OK" in out
    assert '  organisation.audience = "health-and-care"' in out
    assert '  organisation.domains = ["example.nhs.uk"]' in out
    assert "  dkim.sign = true" in out
    assert "Audience" not in out and "PosixPath" not in out


def test_forced_tls_inbound_prints_as_written(conf):
    _, out, _ = check(conf)
    assert '  inbound.require_tls_from = "secure"' in out
    conf.write_text(
        conf.read_text() + '[inbound]\nrequire_tls_from = ["Partner.org", "*.bücher.example"]\n'
    )
    status, out, err = check(conf)
    assert status == 0, err
    assert '  inbound.require_tls_from = ["partner.org", "*.xn--bcher-kva.example"]' in out
    _, out, _ = check(conf, "--json")
    values = json.loads(out)["values"]["inbound"]
    assert values["require_tls_from"] == ["partner.org", "*.xn--bcher-kva.example"]


def test_missing_files_are_warnings_naming_the_key(conf):
    status, _out, err = check(conf)
    assert status == 0
    assert "warning: relay.users_file:" in err and "no such file" in err
    assert "warning: dkim.key_dir:" in err and "example.nhs.uk" in err  # no key for it
    assert "warning: policy.accredited_list:" in err


def test_missing_certificate_is_an_error_naming_the_key(conf, tmp_path):
    (tmp_path / "cert.pem").unlink()
    status, out, err = check(conf)
    assert status == 2
    assert "securemail.toml: 1 error\n" in out
    assert f"error: tls.cert: {tmp_path / 'cert.pem'}: no such file" in err


def test_key_of_another_certificate_is_an_error(conf, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    write_self_signed(other / "cert.pem", other / "key.pem", "mail.example.nhs.uk")
    (other / "key.pem").replace(tmp_path / "key.pem")
    status, _out, err = check(conf)
    assert status == 2
    assert "error: tls.key:" in err and "does not match the certificate in tls.cert" in err


def test_unreadable_users_file_and_bad_dkim_key_are_errors(conf, tmp_path):
    (tmp_path / "users.toml").write_text("[users\n")
    (tmp_path / "dkim" / "example.nhs.uk").mkdir()
    (tmp_path / "dkim" / "example.nhs.uk" / "s1.pem").write_text("not a key")
    status, out, err = check(conf)
    assert status == 2
    assert "securemail.toml: 2 errors\n" in out
    assert "error: relay.users_file:" in err and "cannot read users file" in err
    assert "error: dkim.key_dir:" in err and "not a usable PEM private key" in err


def test_missing_recipient_list_is_an_error(conf):
    conf.write_text(conf.read_text() + '[inbound]\nrecipients = "ours.txt"\n')
    status, _out, err = check(conf)
    assert status == 2
    assert "error: inbound.recipients:" in err and "ours.txt: no such file" in err
    (conf.parent / "ours.txt").write_text("@example.nhs.uk\n")
    assert check(conf)[0] == 0


def test_json_has_values_and_problems(conf, tmp_path):
    (tmp_path / "key.pem").unlink()
    status, out, _err = check(conf, "--json")
    assert status == 2
    report = json.loads(out)
    assert report["ok"] is False
    assert report["values"]["organisation"]["audience"] == "health-and-care"
    assert report["values"]["tls"]["ca_file"] is None
    errors = [p for p in report["problems"] if p["severity"] == "error"]
    assert errors == [
        {"severity": "error", "key": "tls.key", "message": f"{tmp_path / 'key.pem'}: no such "
         "file (create a pair: securemail tls selfsigned)"}
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[policy]\nsecure_domains = ["nhs.uk"]\n', "'nhs.uk' covers a public suffix"),
        ('[policy]\nsecure_domains = ["*.co.uk"]\n', "'*.co.uk' covers a public suffix"),
        ('[relay]\nnetworks = ["10.0.0.0/8", "0.0.0.0/0"]\n', "0.0.0.0/0 is every address"),
        ('[relay]\nnetworks = ["::/0"]\n', "::/0 is every address: an open relay"),
        ('[organisation]\ndomains = ["nhs.net"]\n', "nhs.net is a shared secure service"),
        ('[organisation]\ndomains = ["co.uk"]\n', "co.uk is a public suffix"),
        ('[spool]\nurl = "mysql://db/spool"\n', "spool.url: 'mysql://db/spool': expected sqlite"),
        (
            "[listen]\nmax_message_size = 4096\nmax_data_in_flight = 2048\n",
            "listen.max_data_in_flight: 2048 is below max_message_size (4096)",
        ),
        ('[log]\nsyslog = "tcp:logs:514"\n', "log.syslog: 'tcp:logs:514': expected"),
        ("[log]\nstderr = false\n", "log.stderr: false with no [log] syslog target"),
        ('[service]\nuser = "-x"\n', "service.user: '-x' is not a user or group name"),
    ],
)
def test_dangerous_values_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "securemail.toml"
    path.write_text(text)
    status, _out, err = check(path)
    assert status == 2
    assert err.startswith("securemail: error: securemail.toml:") and message in err
    assert err.count("\n") == 1


def test_misspelt_variable_is_warned_with_a_suggestion(conf, monkeypatch, capsys):
    monkeypatch.setenv("SECUREMAIL_DELIVERY_PROT", "2525")
    assert main(["config", "check", "-c", str(conf)]) == 0
    err = capsys.readouterr().err
    assert "$SECUREMAIL_DELIVERY_PROT: not a securemail setting, ignored" in err
    assert "did you mean SECUREMAIL_DELIVERY_PORT?" in err


def test_queue_without_a_spool_says_so_and_creates_none(conf, tmp_path):
    proc = run_cli("queue", "list", "-c", str(conf))
    assert proc.returncode == 2
    assert "no spool here" in " ".join(proc.stderr.decode().split())
    assert not (tmp_path / "var" / "spool.db").exists()


def test_serve_stops_before_listening_on_a_file_error(conf, tmp_path):
    (tmp_path / "cert.pem").write_text("not a certificate")
    proc = run_cli("serve", "-c", str(conf))
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == (
        f"securemail: error: tls.cert: {tmp_path / 'cert.pem'}: not a PEM certificate"
    )


def test_who_serve_runs_as_and_why_it_needs_root(conf, tmp_path):
    """The service user exists, is reported with its ids, and is checked as itself: the
    fixture's files sit in pytest's private (0700) directory, out of nobody's reach."""
    nobody = pwd.getpwnam("nobody")
    conf.write_text(conf.read_text() + '[service]\nuser = "nobody"\n')
    status, out, err = check(conf)
    assert status == 2
    assert (
        f"service: user nobody (uid {nobody.pw_uid}, gid {nobody.pw_gid}) exists; root "
        "needed: to switch to nobody (none if started as nobody)"
    ) in " ".join(out.split())
    assert f"error: tls.key: {tmp_path / 'key.pem'}: not readable by user nobody" in err
    report = json.loads(check(conf, "--json")[1])
    assert report["service"] == {
        "user": "nobody",
        "exists": True,
        "uid": nobody.pw_uid,
        "gid": nobody.pw_gid,
        "root_needed": ["to switch to nobody (none if started as nobody)"],
    }
    conf.write_text(conf.read_text().replace('"nobody"', '"sm-no-such-user"'))
    status, out, err = check(conf)
    assert status == 2
    assert "error: service.user: no such user 'sm-no-such-user' on this system" in err
    assert json.loads(check(conf, "--json")[1])["service"]["exists"] is False
