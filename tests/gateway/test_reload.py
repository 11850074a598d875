"""``securemail reload`` (SIGHUP) against a real ``securemail serve`` process.

What an operator changes while mail flows (accredited list, certificate, DKIM key, users,
policy) is in force after one reload, without dropping an open session; a configuration
the gateway cannot use is refused with the reason, and the old one keeps serving; a
setting only a restart can change is named while the rest is applied.
"""

import asyncio
import json
import smtplib
import time

import pytest
from cryptography import x509
from harness.cli import run_cli
from harness.gatewaykit import HOSTNAME, ORG_DOMAIN, PASSWORD, add_mx, client_context, write_config
from harness.serve import GatewayProcess, free_port, greets, refuses
from harness.smtpsink import SinkServer

from securemail.config import load_config
from securemail.dns import Resolver
from securemail.gateway.inbound.users import add_user
from securemail.mech.dkim import generate_key, verify_dkim, write_key
from securemail.mech.results import Result

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]  # processes: CI lane

ALICE = f"alice@{ORG_DOMAIN}"


def _start(tmp_path, pki, dns_server, internal, *, delivery_port=25):
    inbound, submission = free_port(), free_port()
    config = write_config(
        tmp_path, pki=pki, dns_server=dns_server, delivery_port=delivery_port,
        internal_port=internal.port, inbound=f"127.0.0.1:{inbound}",
        submission=f"127.0.0.1:{submission}",
        extra='[service]\npid_file = "securemail.pid"\n[dkim]\nkey_dir = "dkim"\n'
        '[policy]\naccredited_list = "accredited.csv"\nunknown_sensitive_action = "hold"\n',
    )  # fmt: skip
    add_user(tmp_path / "users.toml", "alice", PASSWORD)
    gateway = GatewayProcess(config, inbound, submission)
    gateway.start()
    return config, gateway


def _edit(config, old, new):
    text = config.read_text()
    assert text.count(old) == 1, old
    config.write_text(text.replace(old, new))


def _wait_log(gateway, text, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in gateway.log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged:\n{gateway.tail()}")


def _session(port, pki, user="alice"):
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    smtp.ehlo("client.test")
    smtp.starttls(context=client_context(pki))
    smtp.ehlo("client.test")
    smtp.login(user, PASSWORD)
    return smtp


def _message(sender, rcpt, subject):
    return (
        f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{time.time_ns()}@x>\r\n\r\nreferral\r\n"
    ).encode()


def _send(port, pki, rcpt, subject="OFFICIAL-SENSITIVE", user="alice"):
    sender = f"{user}@{ORG_DOMAIN}"
    with _session(port, pki, user) as smtp:
        smtp.sendmail(sender, [rcpt], _message(sender, rcpt, subject))


def _reload(config, *args):
    """(exit status, stdout, stderr), whitespace folded (rich wraps at 80 columns)."""
    proc = run_cli("reload", "--config", str(config), *args)
    return proc.returncode, _fold(proc.stdout), _fold(proc.stderr)


def _fold(output: bytes) -> str:
    return " ".join(output.decode().split())


def _tls_files(config):
    tls = load_config(config, environ={}).tls
    return tls.cert, tls.key


def _serial(cert_path):
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number


def test_one_reload_applies_list_certificate_key_users_and_policy_mid_session(
    tmp_path, pki, dns_server, internal
):
    add_mx(dns_server, "nhs.net")
    old_pem, old_record = generate_key("rsa", 2048)
    write_key(tmp_path / "dkim", ORG_DOMAIN, "s1", old_pem)
    dns_server.add(f"s1._domainkey.{ORG_DOMAIN}", "TXT", old_record)
    with SinkServer(hostname="mx.nhs.net", tls_context=pki.server_context("mx.nhs.net")) as mx:
        config, gateway = _start(tmp_path, pki, dns_server, internal, delivery_port=mx.port)
        try:
            _, submission = gateway.ports
            _send(submission, pki, "manager@carehome.test")
            _wait_log(gateway, "('manager@carehome.test', 'hold'")
            # A session in the middle of a transaction when the reload comes.
            open_session = _session(submission, pki)
            open_session.mail(ALICE)
            open_session.rcpt("gp@nhs.net")

            (tmp_path / "accredited.csv").write_text(
                "domain,organisation,expiry date\ncarehome.test,Care Home Ltd,2099-01-01\n"
            )
            old_cert, old_key = _tls_files(config)
            new_cert, new_key = pki.server_cert(HOSTNAME)
            _edit(config, f'cert = "{old_cert}"', f'cert = "{new_cert}"')
            _edit(config, f'key = "{old_key}"', f'key = "{new_key}"')
            new_pem, new_record = generate_key("rsa", 2048)
            write_key(tmp_path / "dkim", ORG_DOMAIN, "s1", new_pem, overwrite=True)
            dns_server.remove(f"s1._domainkey.{ORG_DOMAIN}", "TXT")
            dns_server.add(f"s1._domainkey.{ORG_DOMAIN}", "TXT", new_record)
            add_user(tmp_path / "users.toml", "bob", PASSWORD)
            _edit(
                config, 'unknown_sensitive_action = "hold"', 'unknown_sensitive_action = "reject"'
            )

            status, out, err = _reload(config)
            assert status == 0, err
            assert out.startswith("reloaded: accredited list 1 entries (")
            assert f"serial {_serial(new_cert):X} expires" in out
            assert f"DKIM keys: {ORG_DOMAIN} selector s1" in out
            _wait_log(gateway, "reloaded ")

            code, _ = open_session.data(_message(ALICE, "gp@nhs.net", "started before"))
            assert code == 250  # the open session was not dropped
            open_session.quit()
            with _session(submission, pki) as fresh:  # a new connection: the new certificate
                peer = fresh.sock.getpeercert()
                assert int(peer["serialNumber"], 16) == _serial(new_cert) != _serial(old_cert)

            _send(submission, pki, "manager@carehome.test")
            _wait_log(gateway, "('manager@carehome.test', 'deliver', 'verified')")
            with pytest.raises(smtplib.SMTPDataError, match="refused by policy"):
                _send(submission, pki, "someone@gmail.test")  # reject, no longer hold
            _send(submission, pki, "gp@nhs.net", subject="from bob", user="bob")
            received = mx.wait(2)
        finally:
            gateway.stop()
    assert gateway.proc.returncode == 0
    (from_bob,) = [m for m in received if b"Subject: from bob" in m.data]
    verdicts = _verify(from_bob.data, dns_server)
    assert [(v.result, v.domain) for v in verdicts] == [(Result.PASS, ORG_DOMAIN)]  # new key


def _verify(data, dns_server):
    return asyncio.run(verify_dkim(data, Resolver([dns_server.nameserver], timeout=2)))


def test_refused_reloads_keep_the_running_configuration(tmp_path, pki, dns_server, internal):
    config, gateway = _start(tmp_path, pki, dns_server, internal)
    good = config.read_text()
    cert, key = _tls_files(config)
    _, other_key = pki.server_cert(HOSTNAME)
    try:
        _, submission = gateway.ports
        for broken, why in (
            (good + "\n[listen\n", "securemail.toml"),
            (good.replace(str(key), str(other_key)), "does not match"),
            (good.replace(str(cert), str(tmp_path / "missing.pem")), "no such file"),
        ):
            config.write_text(broken)
            status, _, err = _reload(config)
            assert status == 1, err
            assert err.startswith("reload refused: ") and why in err
            assert err.endswith("; keeping the running configuration")
            _wait_log(gateway, f"reload refused: {err.removeprefix('reload refused: ')[:40]}")
            _send(submission, pki, "someone@gmail.test", subject="still flowing")
            with _session(submission, pki) as session:  # still the certificate it started with
                assert int(session.sock.getpeercert()["serialNumber"], 16) == _serial(cert)
        assert gateway.running
    finally:
        gateway.stop()
    assert gateway.proc.returncode == 0


def test_a_restart_only_change_is_named_and_the_rest_applied(tmp_path, pki, dns_server, internal):
    config, gateway = _start(tmp_path, pki, dns_server, internal)
    inbound, submission = gateway.ports
    moved = free_port()
    try:
        _edit(config, f'inbound = "127.0.0.1:{inbound}"', f'inbound = "127.0.0.1:{moved}"')
        _edit(config, 'unknown_sensitive_action = "hold"', 'unknown_sensitive_action = "reject"')
        proc = run_cli("reload", "--config", str(config), "--json")
        assert proc.returncode == 0, proc.stderr
        state = json.loads(proc.stdout)
        assert (state["result"], state["generation"]) == ("ok", 1)
        assert state["restart_needed"] == ["listen.inbound"]
        assert state["accredited"] is None and state["certificate"]["subject"].startswith("CN=")
        _wait_log(gateway, "; listen.inbound changed: needs a restart")
        assert greets(inbound) and refuses(moved)  # the listener stays where it is
        with pytest.raises(smtplib.SMTPDataError, match="refused by policy"):
            _send(submission, pki, "someone@gmail.test")
        status, _, err = _reload(config)  # still waiting for a restart: said again
        assert status == 0 and "listen.inbound changed: needs a restart" in err
    finally:
        gateway.stop()
    assert gateway.proc.returncode == 0
