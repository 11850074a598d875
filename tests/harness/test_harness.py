"""The test harness itself, proven against real software: Postfix, swaks, OpenSSL, aiosmtpd."""

import contextlib
import email
import email.policy
import smtplib
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from harness import postfix
from harness.pki import NamedSMTP, TestPKI
from harness.postfix import PostfixInstance, PostfixReceiver, postfix_receiver, postfix_sender
from harness.smtpsink import SinkServer
from harness.strip_proxy import StripTLSProxy

pytestmark = pytest.mark.slow  # real Postfix / SIGKILL trials: CI, not the fast lane

MX = "mx.nhs.net"
FROM = "jo.bloggs@example.nhs.uk"
TO = "ward7@nhs.net"


def make_message(subject: str, body: str, *, to: str = TO) -> bytes:
    msg = email.message.EmailMessage()
    msg["From"] = FROM
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4()}@example.nhs.uk>"
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    postfix.require_tools("swaks")
    return subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(port), "--timeout", "20", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def receiver(postfix_tmp: Path, pki: TestPKI) -> Iterator[PostfixReceiver]:
    with postfix_receiver(postfix_tmp, pki, postfix_tmp / "mailbox", hostname=MX) as mx:
        yield mx


@pytest.fixture
def sink() -> Iterator[SinkServer]:
    with SinkServer(hostname=MX) as server:
        yield server


@pytest.fixture
def tls_sink(pki: TestPKI) -> Iterator[SinkServer]:
    with SinkServer(hostname=MX, tls_context=pki.server_context(MX)) as server:
        yield server


# ---------------------------------------------------------------------- Postfix roles
@pytest.mark.timeout(120)
def test_swaks_via_postfix_sender_reaches_receiver_once_over_tls(
    postfix_tmp: Path, receiver: PostfixReceiver
) -> None:
    subject = f"harness {uuid.uuid4()}"
    body = f"body line {uuid.uuid4()}"
    with postfix_sender(postfix_tmp, receiver.address) as sender:
        r = swaks(
            sender.port,
            "--from",
            FROM,
            "--to",
            TO,
            "--header",
            f"Subject: {subject}",
            "--body",
            body,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        sender.wait_for_log(r"status=sent")
        sender.wait_queue_empty()
        receiver.wait_received(1)
        receiver.wait_queue_empty()
        assert "TLS connection established to 127.0.0.1" in sender.log()

    deliveries = receiver.deliveries()
    assert len(deliveries) == 1, [d.data[:200] for d in deliveries]
    d = deliveries[0]
    assert (d.sender, d.recipients) == (FROM, (TO,))
    msg = email.message_from_bytes(d.data, policy=email.policy.default)
    assert msg["Subject"] == subject
    assert body in msg.get_content()
    # The receiver's smtpd negotiated TLS with the sender, and says so in its Received header.
    (line,) = receiver.wait_for_log(r"TLS connection established from")
    assert "TLSv1." in line
    assert "(using TLSv1." in str(msg.get_all("Received")[0])


@pytest.mark.timeout(120)
def test_receiver_certificate_verifies_for_its_hostname(
    receiver: PostfixReceiver, pki: TestPKI
) -> None:
    with NamedSMTP(MX, "127.0.0.1", receiver.port, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        s.starttls(context=pki.client_context())
        cert = s.sock.getpeercert()
        assert ("DNS", MX) in cert["subjectAltName"]
        assert ("IP Address", "127.0.0.1") not in cert["subjectAltName"]
        s.ehlo()
        s.sendmail(FROM, [TO], make_message("verified", "over verified TLS"))
    (data,) = receiver.wait_received(1)
    assert b"over verified TLS" in data
    receiver.wait_for_log(r"TLS connection established from .*TLSv1\.3")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["wrong-name", "untrusted-ca"])
def test_receiver_certificate_verification_fails(
    receiver: PostfixReceiver, pki: TestPKI, case: str
) -> None:
    if case == "wrong-name":
        name, ctx = "mx.other.test", pki.client_context()
        expected = "Hostname mismatch"
    else:
        name, ctx = MX, ssl.create_default_context()
        trustme.CA().configure_trust(ctx)  # some CA, but not the receiver's
        expected = "unable to get local issuer certificate"
    with NamedSMTP(name, "127.0.0.1", receiver.port, timeout=10) as s:
        s.ehlo()
        with pytest.raises(ssl.SSLCertVerificationError, match=expected):
            s.starttls(context=ctx)
    assert receiver.received() == []


@pytest.mark.timeout(120)
def test_receiver_without_tls_offers_no_starttls_and_still_stores(
    postfix_tmp: Path, pki: TestPKI
) -> None:
    with postfix_receiver(postfix_tmp, pki, postfix_tmp / "mbox", tls=False) as mx:
        with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as s:
            s.ehlo()
            assert not s.has_extn("starttls")
            s.sendmail(FROM, [TO, "second@other.test"], make_message("plain", "in clear"))
        mx.wait_received(1)
        (d,) = mx.deliveries()
        assert d.recipients == (TO, "second@other.test")  # one message, one file
        assert b"in clear" in d.data
        assert b"with ESMTP id" in d.data  # not ESMTPS
        assert "TLS connection established" not in mx.log()


@pytest.mark.timeout(120)
def test_postfix_sender_requiring_tls_defers_behind_strip_proxy(
    postfix_tmp: Path, receiver: PostfixReceiver
) -> None:
    body = f"secret {uuid.uuid4()}"
    with (
        StripTLSProxy("127.0.0.1", receiver.port) as proxy,
        postfix_sender(
            postfix_tmp, proxy.address, main_cf={"smtp_tls_security_level": "encrypt"}
        ) as sender,
    ):
        with smtplib.SMTP("127.0.0.1", sender.port, timeout=10) as s:
            s.sendmail(FROM, [TO], make_message("must be encrypted", body))
        sender.wait_for_log(r"TLS is required, but was not offered by host")
        sender.wait_for_log(r"status=deferred")
        assert sender.queue_count() == 1
        assert proxy.stripped >= 1
        assert body.encode() not in proxy.from_client
    assert receiver.received() == []


# ---------------------------------------------------------------------- PostfixInstance
@pytest.mark.timeout(120)
def test_postfix_instance_retries_when_chosen_port_is_taken(
    postfix_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = iter([taken])
        real_free_port = postfix.free_port
        monkeypatch.setattr(
            postfix, "free_port", lambda host="127.0.0.1": next(ports, None) or real_free_port()
        )
        inst = PostfixInstance(postfix_tmp, "retry")
        assert inst.port == taken
        with inst:
            assert inst.port != taken
            with socket.create_connection(("127.0.0.1", inst.port), timeout=5) as c:
                assert c.recv(100).startswith(b"220 mx.test ESMTP")
            pid = inst.master_pid()
            assert pid is not None
        assert not Path(f"/proc/{pid}").exists() or not postfix._pid_alive(pid)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", inst.port), timeout=2).close()


@pytest.mark.timeout(120)
def test_postconf_on_running_instance_reloads(postfix_tmp: Path) -> None:
    with PostfixInstance(postfix_tmp, "reload") as inst:
        inst.postconf(smtpd_banner="$myhostname ESMTP reloaded-banner")
        with socket.create_connection(("127.0.0.1", inst.port), timeout=5) as c:
            assert b"reloaded-banner" in c.recv(100)
        assert inst.queue_count() == 0
        with pytest.raises(AssertionError, match="no-such-line"):
            inst.wait_for_log("no-such-line", timeout=0.3)


# ---------------------------------------------------------------------- SinkServer
def test_sink_plain_session_records_every_byte(sink: SinkServer) -> None:
    body = f"plain body {uuid.uuid4()}"
    with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="client.test", timeout=10) as s:
        s.sendmail(FROM, [TO], make_message("plain", body))
    (m,) = sink.wait(1)
    assert (m.mail_from, m.rcpt_tos, m.ehlo) == (FROM, [TO], "client.test")
    assert m.tls_version is None and not m.tls
    assert body.encode() in m.data
    assert body.encode() in sink.plaintext
    assert b"MAIL FROM:<" + FROM.encode().upper() + b">" in sink.plaintext.upper()
    assert m.peer is not None and m.peer[0] == "127.0.0.1"


def test_sink_tls_session_keeps_body_out_of_plaintext(tls_sink: SinkServer, pki: TestPKI) -> None:
    body = f"tls body {uuid.uuid4()}"
    with NamedSMTP(MX, "127.0.0.1", tls_sink.port, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        s.starttls(context=pki.client_context())
        s.ehlo()
        s.sendmail(FROM, [TO], make_message("tls", body))
    (m,) = tls_sink.wait(1)
    assert m.tls_version in ("TLSv1.2", "TLSv1.3")
    assert m.cipher
    assert body.encode() in m.data
    assert body.encode() not in tls_sink.plaintext
    assert b"MAIL FROM" not in tls_sink.plaintext.upper()
    assert b"FROM:" not in tls_sink.plaintext.upper()  # no header either
    assert tls_sink.plaintext.upper().endswith(b"STARTTLS\r\n")
    (session,) = tls_sink.wait_sessions_closed(1)
    assert session.tls and session.ehlo == ["client.test", "client.test"]


def test_sink_require_tls_and_forced_reply(pki: TestPKI) -> None:
    with SinkServer(tls_context=pki.server_context(MX), require_tls=True, reply_code=450) as srv:
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as s:
            s.ehlo()
            code, _ = s.mail(FROM)
            assert code == 530
        with NamedSMTP(MX, "127.0.0.1", srv.port, timeout=10) as s:
            s.starttls(context=pki.client_context())
            with pytest.raises(smtplib.SMTPDataError) as exc:
                s.sendmail(FROM, [TO], make_message("tempfail", "later"))
            assert exc.value.smtp_code == 450
        assert srv.messages == []
        assert len(srv.rejected) == 1 and srv.rejected[0].tls
        srv.reply_code = None
        with NamedSMTP(MX, "127.0.0.1", srv.port, timeout=10) as s:
            s.starttls(context=pki.client_context())
            s.sendmail(FROM, [TO], make_message("retry", "now"))
        assert len(srv.wait(1)) == 1


# ---------------------------------------------------------------------- StripTLSProxy
def test_strip_proxy_removes_starttls_and_refuses_it(tls_sink: SinkServer) -> None:
    with smtplib.SMTP("127.0.0.1", tls_sink.port, timeout=10) as direct:
        direct.ehlo()
        assert direct.has_extn("starttls")  # control: the server does offer it
    body = f"never in clear {uuid.uuid4()}"
    with StripTLSProxy("127.0.0.1", tls_sink.port) as proxy:
        with smtplib.SMTP("127.0.0.1", proxy.port, timeout=10) as s:
            code, resp = s.ehlo()
            assert code == 250
            assert not s.has_extn("starttls")
            assert b"STARTTLS" not in resp.upper()
            assert s.has_extn("smtputf8")  # the rest of the EHLO reply is intact
            with pytest.raises(smtplib.SMTPNotSupportedError):
                s.starttls()
            assert s.docmd("STARTTLS") == (502, b"5.5.1 not implemented")
            # A careful client gives up here, before MAIL FROM / DATA.
        assert proxy.stripped >= 1
        assert proxy.refused_starttls == 1
        assert b"STARTTLS" in proxy.from_client
        assert b"STARTTLS" not in proxy.to_server
        assert body.encode() not in proxy.from_client
    assert tls_sink.messages == []
    assert body.encode() not in tls_sink.plaintext


def test_strip_proxy_records_a_naive_client_downgraded(tls_sink: SinkServer) -> None:
    body = f"leaked {uuid.uuid4()}"
    with StripTLSProxy("127.0.0.1", tls_sink.port) as proxy:
        with smtplib.SMTP("127.0.0.1", proxy.port, timeout=10) as s:
            s.sendmail(FROM, [TO], make_message("naive", body))
        (m,) = tls_sink.wait(1)
        assert not m.tls
        assert body.encode() in proxy.from_client
        assert body.encode() in tls_sink.plaintext


def test_strip_proxy_passthrough_mode_allows_tls(tls_sink: SinkServer, pki: TestPKI) -> None:
    body = f"through {uuid.uuid4()}"
    with StripTLSProxy("127.0.0.1", tls_sink.port, strip=False) as proxy:
        with NamedSMTP(MX, "127.0.0.1", proxy.port, timeout=10) as s:
            s.ehlo()
            assert s.has_extn("starttls")
            s.starttls(context=pki.client_context())
            s.sendmail(FROM, [TO], make_message("through", body))
        (m,) = tls_sink.wait(1)
        assert m.tls
        assert body.encode() not in proxy.from_client
        assert proxy.stripped == proxy.refused_starttls == 0


# ---------------------------------------------------------------------- PKI
def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str) -> str:
    """An in-memory TLS handshake; returns the version or raises the client's error."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = 0
        for obj, out, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
                done += 1
            peer_in.write(out.read())
        if done == 2:
            return str(client.version())
    raise AssertionError("handshake did not complete")


def test_pki_certificates(pki: TestPKI) -> None:
    client = pki.client_context()
    assert _handshake(pki.server_context(MX), client, MX) == "TLSv1.3"
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(pki.server_context(MX), client, "mx.other.test")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(pki.server_context(MX, trusted=False), client, MX)
    past = datetime.now(UTC) - timedelta(days=1)
    expired = pki.server_context(MX, not_before=past - timedelta(days=30), not_after=past)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
        _handshake(expired, client, MX)
    chain, key = pki.server_cert(MX, "127.0.0.1")
    assert chain.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" in key.read_bytes()
    assert pki.ca_file.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
