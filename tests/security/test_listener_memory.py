"""Issue item 5: DATA of 4.9 M empty lines cost ~400 MB per connection, never returned.

A real ``securemail serve`` process takes the attack; its peak resident memory
(``VmHWM``) is read from /proc before and after. aiosmtpd kept a Python list of line
buffers (~80 bytes each); the listener now reads DATA into one buffer, so the peak may
grow by the message and its copies (the stored and the delivered one), not by a
multiple of its line count. And DATA held by all connections together has a cap
(``[listen] max_data_in_flight``): past it a client gets ``452 4.3.1`` (try later).
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from pathlib import Path

import pytest
from harness.gatewaykit import ORG_DOMAIN, write_config
from harness.serve import GatewayProcess, free_port

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]  # a 10 MB attack on a serve process

MAX_SIZE = 10 * 1024 * 1024
LINES = 4_900_000  # 9.8 MB of bare CRLF: under the size limit
HEADERS = f"From: a@sender.test\r\nTo: jo@{ORG_DOMAIN}\r\nSubject: lines\r\n".encode()


@pytest.fixture
def serve(tmp_path, pki, dns_server, internal):
    """Start ``securemail serve`` with the given [listen] additions; stopped afterwards."""
    started: list[GatewayProcess] = []

    def start(listen_extra: str = "") -> GatewayProcess:
        inbound, submission = free_port(), free_port()
        path = write_config(
            tmp_path, pki=pki, dns_server=dns_server, delivery_port=25,
            internal_port=internal.port, inbound=f"127.0.0.1:{inbound}",
            submission=f"127.0.0.1:{submission}",
            listen_extra=f"max_message_size = {MAX_SIZE}\n{listen_extra}",
        )  # fmt: skip
        process = GatewayProcess(path, inbound, submission)
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()


def _status(pid: int, field: str) -> int:
    """A /proc/PID/status value in bytes (VmRSS: resident now; VmHWM: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class Client:
    """A raw SMTP client that can stop in the middle of DATA."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=60)
        self.file = self.sock.makefile("rwb")
        self.reply()

    def reply(self) -> bytes:
        line = self.file.readline()
        while line[3:4] == b"-":
            line = self.file.readline()
        return line

    def command(self, line: bytes) -> bytes:
        self.file.write(line + b"\r\n")
        self.file.flush()
        return self.reply()

    def start_data(self) -> None:
        for line in (b"EHLO mx.sender.test", b"MAIL FROM:<a@sender.test>",
                     f"RCPT TO:<jo@{ORG_DOMAIN}>".encode()):  # fmt: skip
            assert self.command(line).startswith(b"250"), line
        assert self.command(b"DATA").startswith(b"354")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _unread_by_server(server_port: int, client: Client) -> int:
    """Bytes the server has not read yet from this connection (its socket's rx_queue)."""
    client_port = client.sock.getsockname()[1]
    local, remote = f":{server_port:04X}", f":{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(local) and fields[2].endswith(remote):
            return int(fields[4].split(":")[1], 16)
    raise AssertionError("the server's end of the connection is not in /proc/net/tcp")


async def test_memory_blowup_empty_lines_data_bounded(serve, internal):
    """The attack may cost what any message of its size costs, not a multiple per line.

    The baseline is the peak after a message of the same size with ordinary lines: a
    10 MB message has a price of its own (the accept pipeline copies it), paid once,
    and this makes the peak before the attack that price rather than start-up's.
    """
    gateway = serve()
    assert gateway.proc is not None
    ordinary = HEADERS + b"\r\n" + (b"x" * 76 + b"\r\n") * (LINES // 39)
    attack = HEADERS + b"\r\n" * LINES
    assert abs(len(ordinary) - len(attack)) < 100_000

    reply = await asyncio.to_thread(_send, gateway.ports[0], ordinary)
    assert reply.startswith(b"250"), reply
    await asyncio.to_thread(internal.wait, 1, 60)
    before = _status(gateway.proc.pid, "VmHWM")

    reply = await asyncio.to_thread(_send, gateway.ports[0], attack)
    assert reply.startswith(b"250"), reply
    received = await asyncio.to_thread(internal.wait, 2, 120)
    assert received[1].data.endswith(b"\r\n" * 1000)
    grown = _status(gateway.proc.pid, "VmHWM") - before
    assert grown < 3 * len(attack), f"peak RSS grew by {grown / 1e6:.1f} MB"


def _send(port: int, content: bytes) -> bytes:
    client = Client(port)
    try:
        client.start_data()
        client.send(content + b".\r\n")
        return client.reply()
    finally:
        client.close()


async def test_data_over_in_flight_cap_gets_452(serve, internal):
    """Two connections in DATA at once: the second to pass the cap is told to try later."""
    cap = 12 * 1024 * 1024
    gateway = serve(f"max_data_in_flight = {cap}")
    first_part = HEADERS + b"\r\n" + b"x" * 998 + b"\r\n"
    first_part += (b"y" * 998 + b"\r\n") * (9_000_000 // 1000)  # 9 MB held, not finished
    second = HEADERS + b"\r\n" + (b"z" * 998 + b"\r\n") * (4_000_000 // 1000)

    def talk() -> tuple[bytes, bytes]:
        first = Client(gateway.ports[0])
        try:
            first.start_data()
            first.send(first_part)
            deadline = time.monotonic() + 30
            while _unread_by_server(gateway.ports[0], first):  # all of it in the budget
                assert time.monotonic() < deadline, "the server did not read the first DATA"
                time.sleep(0.02)
            over = _send(gateway.ports[0], second)
            first.send(b".\r\n")
            return over, first.reply()
        finally:
            first.close()

    over, finished = await asyncio.to_thread(talk)
    assert over.startswith(b"452 4.3.1 "), over
    assert finished.startswith(b"250"), finished
    received = await asyncio.to_thread(internal.wait, 1, 60)
    assert b"y" * 998 in received[0].data
    assert len(internal.messages) == 1


async def test_data_keeps_aiosmtpd_protections(gateway_factory, internal):
    """Read in chunks, DATA still ends only at CRLF.CRLF, loses one transparency dot per
    line, refuses a line over 1000 octets (500, after the end) and then goes on."""
    gateway = await gateway_factory()
    body = HEADERS + b"\r\n..dot\r\n.\nnot the end\r\nbare\rcr\r\n"
    client = await asyncio.to_thread(Client, gateway.addresses["inbound"][1])
    try:
        await asyncio.to_thread(client.start_data)
        for piece in (body[:5], body[5:-9], body[-9:], b".\r", b"\n"):  # ends split up
            await asyncio.to_thread(client.send, piece)
        assert (await asyncio.to_thread(client.reply)).startswith(b"250 2.0.0")
        await asyncio.to_thread(client.start_data)
        await asyncio.to_thread(client.send, HEADERS + b"\r\n" + b"x" * 1000 + b"\r\n.\r\n")
        assert (await asyncio.to_thread(client.reply)).startswith(b"500 5.5.2 ")
        assert (await asyncio.to_thread(client.command, b"NOOP")).startswith(b"250")
    finally:
        client.close()
    received = await asyncio.to_thread(internal.wait, 1)
    # ".\n..." starts a line: its dot is the transparency dot, the bare LF becomes CRLF
    assert received[0].data.endswith(b"\r\n.dot\r\n\r\nnot the end\r\nbare\r\ncr\r\n")
    assert len(internal.messages) == 1


def test_serve_raises_open_files_limit(serve):
    """Each connection is a file descriptor: ``securemail serve`` lifts its soft limit
    (often 1,024, what ~1,020 idle connections exhausted) to the hard one, and says so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(1024, hard)
    if low == hard:
        low = hard - 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # inherited by serve
    try:
        gateway = serve()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert gateway.proc is not None
    limits = Path(f"/proc/{gateway.proc.pid}/limits").read_text()
    row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert row.split()[3:5] == [str(hard), str(hard)], row
    assert f"open files limit raised from {low} to {hard}" in gateway.log.read_text()
