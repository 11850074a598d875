"""``[listen] workers``: inbound sessions served by accept worker processes, through a
real ``securemail serve`` (two workers, as ``write_config`` sets).

What must hold across the processes, each test failing without the piece it names: a
reload reaches every worker; connections are counted once, for the whole gateway, so
the limit holds however they are spread, and a killed worker's connections stop
counting; a killed worker is replaced; the workers never outlive the gateway.
"""

from __future__ import annotations

import os
import pickle
import signal
import smtplib
import socket
import time

import pytest
from harness.gatewaykit import ORG_DOMAIN, write_config
from harness.serve import GatewayProcess, alive, free_port, reply_line

from securemail.gateway.inbound import handoff
from securemail.gateway.inbound.capacity import BudgetSlots, DataBudget

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]  # processes: CI lane

MESSAGE = (
    f"From: pat@partner.test\r\nTo: jo@{ORG_DOMAIN}\r\nSubject: hello\r\n\r\nhi\r\n"
).encode()


def _gateway(tmp_path, pki, dns_server, internal, *, listen: str = "", inbound: str = ""):
    port, submission = free_port(), free_port()
    config = write_config(
        tmp_path, pki=pki, dns_server=dns_server, delivery_port=25,
        internal_port=internal.port, inbound=f"127.0.0.1:{port}",
        submission=f"127.0.0.1:{submission}", listen_extra=listen, inbound_extra=inbound,
    )  # fmt: skip
    gateway = GatewayProcess(config, port, submission)
    gateway.start()
    return gateway


def _mail_from(port: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
        smtp.ehlo("mx.partner.test")
        code, _ = smtp.mail("pat@partner.test")
        return code


def _connect(port: int) -> tuple[socket.socket, bytes]:
    """A connection and its greeting."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    return sock, reply_line(sock)


def _hold(gateway: GatewayProcess, held: list[socket.socket], count: int) -> None:
    """``count`` idle inbound sessions, each greeted, kept open in ``held``."""
    for _ in range(count):
        sock, greeting = _connect(gateway.ports[0])
        held.append(sock)
        assert greeting.startswith(b"220"), gateway.tail()


def test_a_reload_reaches_every_accept_worker(tmp_path, pki, dns_server, internal):
    gateway = _gateway(tmp_path, pki, dns_server, internal)
    try:
        assert [_mail_from(gateway.ports[0]) for _ in range(4)] == [250] * 4
        text = gateway.config.read_text().replace(
            "[inbound]\n", '[inbound]\nrequire_tls_from = ["partner.test"]\n'
        )
        gateway.config.write_text(text)
        assert gateway.proc is not None
        os.kill(gateway.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        # Consecutive connections go to the workers in turn: four reach both.
        while (codes := [_mail_from(gateway.ports[0]) for _ in range(4)]) != [530] * 4:
            assert time.monotonic() < deadline, f"after the reload: {codes}\n{gateway.tail()}"
            time.sleep(0.2)
    finally:
        gateway.stop()


def test_connections_are_counted_once_and_a_killed_workers_are_released(
    tmp_path, pki, dns_server, internal
):
    gateway = _gateway(tmp_path, pki, dns_server, internal, listen="max_connections = 4")
    held: list[socket.socket] = []
    try:
        first = gateway.accept_workers(2)
        _hold(gateway, held, 4)  # spread over both workers: the limit is the gateway's
        over, greeting = _connect(gateway.ports[0])
        with over:
            assert greeting.startswith(b"421 4.7.0 Too many connections")
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        for sock in held:  # their sessions went with them
            assert sock.recv(512) == b""
        deadline = time.monotonic() + 30
        while set(second := gateway.accept_workers(2)) & set(first):
            assert time.monotonic() < deadline, gateway.tail()
            time.sleep(0.1)
        assert "accept worker 0 (pid" in gateway.log.read_text()
        _hold(gateway, held, 4)  # the four no longer count: four new ones are served
        fifth, greeting = _connect(gateway.ports[1])
        with fifth:  # submission, served by the gateway process: the same count
            assert greeting.startswith(b"421 4.7.0 Too many connections")
        for sock in held:
            sock.close()
        held.clear()
        deadline = time.monotonic() + 20
        while True:  # closed sessions are reported back, and the count goes down
            try:
                with smtplib.SMTP("127.0.0.1", gateway.ports[0], timeout=20) as smtp:
                    smtp.ehlo("mx.partner.test")
                    assert smtp.sendmail("pat@partner.test", [f"jo@{ORG_DOMAIN}"], MESSAGE) == {}
                    break
            except smtplib.SMTPConnectError as exc:  # 421 until the closes are counted
                assert exc.smtp_code == 421
            assert time.monotonic() < deadline, gateway.tail()
            time.sleep(0.05)
        assert len(internal.wait(1)) == 1
        assert set(second) == set(gateway.accept_workers(2))
    finally:
        for sock in held:
            sock.close()
        gateway.stop()


def test_the_workers_end_with_the_gateway(tmp_path, pki, dns_server, internal):
    gateway = _gateway(tmp_path, pki, dns_server, internal)
    workers = gateway.accept_workers(2)
    gateway.kill_main()  # asserts they are gone within 60 s
    assert not any(map(alive, workers))
    gateway.start()
    try:
        second = gateway.accept_workers(2)
        assert set(second).isdisjoint(workers)
        assert _mail_from(gateway.ports[0]) == 250
    finally:
        gateway.stop()
    assert gateway.proc is not None and gateway.proc.returncode == 0
    assert not any(map(alive, second))  # a clean stop takes its workers with it


# --- the pieces, in one process ---------------------------------------------------------


def test_the_data_budget_is_one_across_the_processes_sharing_its_page():
    page = BudgetSlots.create(3)
    try:
        gateway, worker = DataBudget(1000), DataBudget(1000)
        gateway.share(page)
        worker.share(BudgetSlots(page.fd, 2, 3))  # as a worker maps it, from the fd
        assert worker.take(600)
        assert not gateway.take(500)  # 600 + 500 > 1000: the worker's bytes count here
        assert gateway.take(400) and gateway.held == worker.held == 1000
        page.set(0, 2)  # the worker was killed: its slot is zeroed before a new one starts
        assert gateway.held == 400 and gateway.take(600)
    finally:
        os.close(page.fd)


def test_the_channel_refuses_what_the_other_end_should_never_send():
    with pytest.raises(handoff.ChannelError):
        handoff.read_id(b"1234")
    with pytest.raises(handoff.ChannelError):
        handoff.read_budget(b"")
    assembly = handoff.ConfigAssembly()
    assembly.add(pickle.dumps({"not": "a Config"}))
    with pytest.raises(handoff.ChannelError, match="a dict where a Config was expected"):
        assembly.finish()
    big = handoff.ConfigAssembly()
    with pytest.raises(handoff.ChannelError):
        for _ in range(handoff.MAX_CONFIG // handoff.CONFIG_CHUNK + 2):
            big.add(b"x" * handoff.CONFIG_CHUNK)
