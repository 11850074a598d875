"""Issue items 4 and 12, through the live gateway and the real queue.

4. A spoofed ``MX mx.attacker.test`` with a valid certificate for its own name got secure
   mail "(verified)". With ``[delivery.tls_policy] "nhs.net" = "secure
   match=nexthop:dot-nexthop"`` the certificate must name nhs.net or a subdomain of it,
   whatever the MX host name: the spoofed MX is refused with certificate-host-mismatch
   and nothing reaches it. Without an entry for the destination the gap remains, and a
   test below documents it.
12. A 554 to STARTTLS on the first MX bounced the message without trying the next. A
    TLS-stage refusal is now the failure of that host: the next MX gets the message, and
    if every MX refuses, the recipient is deferred, never bounced.
"""

import asyncio
import logging

import pytest
from harness.gatewaykit import ORG_DOMAIN, add_mx, eventually, message, rcpt_states, submit
from harness.smtpsink import LoopbackService, SinkServer

pytestmark = pytest.mark.timeout(90)

ALICE = f"alice@{ORG_DOMAIN}"
BOB = "bob@nhs.net"
PIN = '[delivery.tls_policy]\n"nhs.net" = "secure match=nexthop:dot-nexthop"\n'


def _log(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def _send_to_bob(gateway, pki) -> None:
    refused = await asyncio.to_thread(submit, gateway, pki, ALICE, [BOB], message(to=BOB))
    assert refused == {}


@pytest.fixture
def attacker(pki):
    """The spoofed MX: a certificate from the trusted test CA, valid for its own name."""
    context = pki.server_context("mx.attacker.test")
    with SinkServer(hostname="mx.attacker.test", tls_context=context) as sink:
        yield sink


async def test_pinned_policy_defers_a_spoofed_mx(gateway_factory, dns_server, attacker, pki,
                                                 caplog):  # fmt: skip
    caplog.set_level(logging.INFO, logger="securemail")
    add_mx(dns_server, "nhs.net", "mx.attacker.test")
    gateway = await gateway_factory(attacker.port, delivery_extra=PIN)
    await _send_to_bob(gateway, pki)

    await eventually(lambda: _log(caplog, "failure=certificate-host-mismatch"))
    status, error = (await rcpt_states(gateway))[BOB]
    assert status in ("deferred", "queued", "delivering")  # waiting to retry, never bounced
    assert "names mx.attacker.test" in error and "match=nexthop:dot-nexthop" in error
    assert attacker.sessions and attacker.sessions[0].tls  # refused after the handshake
    assert attacker.messages == [] and attacker.rejected == []
    assert not _log(caplog, "result=sent")


async def test_without_a_pin_a_spoofed_mx_still_gets_secure_mail(
    gateway_factory, dns_server, attacker, pki, caplog
):
    """The gap a pin closes: a map that has no entry for nhs.net leaves it as before, and
    an attacker who answers its MX query with a host they hold a certificate for gets the
    message, logged as verified (by the MX host name DNS gave)."""
    caplog.set_level(logging.INFO, logger="securemail")
    add_mx(dns_server, "nhs.net", "mx.attacker.test")
    other = '[delivery.tls_policy]\n"partner.example" = "secure"\n'
    gateway = await gateway_factory(attacker.port, delivery_extra=other)
    await _send_to_bob(gateway, pki)

    [received] = await asyncio.to_thread(attacker.wait, 1)
    assert received.rcpt_tos == [BOB] and received.tls
    await eventually(lambda: _log(caplog, "result=sent"))
    [line] = _log(caplog, "result=sent")
    assert "relay=mx.attacker.test" in line and "(verified by pkix:mx-hostname)" in line


async def test_pinned_policy_delivers_to_the_real_mx_verified_by_the_match(
    gateway_factory, dns_server, pki, caplog
):
    caplog.set_level(logging.INFO, logger="securemail")
    add_mx(dns_server, "nhs.net", "mx.nhs.net")
    with SinkServer(hostname="mx.nhs.net", tls_context=pki.server_context("mx.nhs.net")) as mx:
        gateway = await gateway_factory(mx.port, delivery_extra=PIN)
        await _send_to_bob(gateway, pki)
        [received] = await asyncio.to_thread(mx.wait, 1)
    assert received.rcpt_tos == [BOB] and received.tls
    await eventually(lambda: _log(caplog, "result=sent"))
    [line] = _log(caplog, "result=sent")
    assert "(verified by pkix:policy-match(.nhs.net))" in line


# --- item 12: a TLS-stage refusal is the host's failure, not the recipient's ----------


class StartTlsRefuser(LoopbackService):
    """An MX that offers STARTTLS and answers it with 554; it records every command."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.commands: list[bytes] = []
        self._bg = None
        self._server = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _create_server(self) -> asyncio.AbstractServer:
        return await asyncio.start_server(self._session, self.host, self.port)

    def _abort_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def _session(self, reader, writer) -> None:
        self._writers.add(writer)
        try:
            writer.write(b"220 mx1.nhs.net ESMTP\r\n")
            while line := await reader.readline():
                self.commands.append(line.strip())
                verb = line.split()[0].upper() if line.split() else b""
                if verb == b"EHLO":
                    writer.write(b"250-mx1.nhs.net\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
                elif verb == b"STARTTLS":
                    writer.write(b"554 5.7.0 TLS not available\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    break
                else:
                    writer.write(b"503 5.5.1 not now\r\n")
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()


async def test_starttls_refused_on_first_mx_tries_the_next(gateway_factory, dns_server, pki,
                                                           caplog):  # fmt: skip
    caplog.set_level(logging.INFO, logger="securemail")
    dns_server.add("nhs.net", "MX", "10 mx1.nhs.net.", "20 mx2.nhs.net.")
    dns_server.add("mx1.nhs.net", "A", "127.0.0.2")
    dns_server.add("mx2.nhs.net", "A", "127.0.0.1")
    context = pki.server_context("mx2.nhs.net")
    with (
        SinkServer(hostname="mx2.nhs.net", tls_context=context) as second,
        StartTlsRefuser("127.0.0.2", second.port) as first,
    ):
        gateway = await gateway_factory(second.port)
        await _send_to_bob(gateway, pki)
        [received] = await asyncio.to_thread(second.wait, 1)
        assert b"STARTTLS" in first.commands
        assert not any(c.upper().startswith(b"MAIL") for c in first.commands)
    assert received.rcpt_tos == [BOB] and received.tls
    await eventually(lambda: _log(caplog, "result=sent"))
    assert not _log(caplog, "bounced id=")


async def test_starttls_refused_on_every_mx_defers_never_bounces(
    gateway_factory, dns_server, internal, pki, caplog
):
    caplog.set_level(logging.INFO, logger="securemail")
    add_mx(dns_server, "nhs.net", "mx1.nhs.net", ip="127.0.0.2")
    with StartTlsRefuser("127.0.0.2", 0) as only:
        gateway = await gateway_factory(only.port)
        await _send_to_bob(gateway, pki)
        await eventually(lambda: _log(caplog, "failure=starttls-not-supported"))
        status, error = (await rcpt_states(gateway))[BOB]
    assert status in ("deferred", "queued", "delivering")
    assert "answered STARTTLS with 554" in error
    assert not _log(caplog, "bounced id=") and internal.messages == []  # no DSN to alice
