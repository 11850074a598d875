"""Connection exhaustion (issue item 9) and early talkers, through the real listener.

~1,020 idle connections from one host used to exhaust the file descriptors and shut
everyone out, and NOOP kept each of them open for ever. Now connections are counted
per client address and in total (``421 4.7.0`` past either), only commands that move a
transaction forward keep the idle timer from running out, and the timeout ends with a
``421``. A client that talks before our greeting is refused (postscreen's pregreet).
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from harness.gatewaykit import start_gateway, write_config
from harness.serve import reply_line

pytestmark = pytest.mark.timeout(60)


def _connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=10)


_line = reply_line  # one reply line (the greeting, or a one-line reply); b"" once closed


async def test_connection_exhaustion_per_ip_limit_gets_421(gateway_factory):
    gateway = await gateway_factory(listen_extra="max_connections_per_ip = 5")
    address = gateway.addresses["inbound"]

    def talk() -> tuple[list[bytes], bytes, bytes, bytes]:
        held = [_connect(address) for _ in range(5)]
        try:
            greetings = [_line(s) for s in held]
            with _connect(address) as extra:
                refused, after = _line(extra), extra.recv(100)  # then closed at once
            held.pop().close()  # one leaves: room for one more
            deadline = time.monotonic() + 10
            while True:
                with _connect(address) as again:
                    line = _line(again)
                if line.startswith(b"220") or time.monotonic() > deadline:
                    return greetings, refused, after, line
                time.sleep(0.02)  # the server has not seen the close yet
        finally:
            for s in held:
                s.close()

    greetings, refused, after, again = await asyncio.to_thread(talk)
    assert all(g.startswith(b"220 ") for g in greetings), greetings
    assert refused == b"421 4.7.0 Too many connections\r\n"
    assert after == b""
    assert again.startswith(b"220 ")


async def test_relay_networks_have_no_per_ip_limit(tmp_path, pki, dns_server, internal):
    """Our own servers ([relay] networks) may hold many connections; the total still holds."""
    path = write_config(
        tmp_path, pki=pki, dns_server=dns_server, delivery_port=25,
        internal_port=internal.port, listen_extra="max_connections_per_ip = 2\nmax_connections = 4",
    )  # fmt: skip
    path.write_text(path.read_text().replace("[relay]\n", '[relay]\nnetworks = ["127.0.0.0/8"]\n'))
    gateway = await start_gateway(path)

    def talk() -> list[bytes]:
        held = [_connect(gateway.addresses["inbound"]) for _ in range(5)]
        try:
            return [_line(s)[:4] for s in held]
        finally:
            for s in held:
                s.close()

    try:
        assert await asyncio.to_thread(talk) == [b"220 "] * 4 + [b"421 "]
    finally:
        await gateway.stop(grace=1)


async def test_connection_exhaustion_total_limit_gets_421(gateway_factory):
    gateway = await gateway_factory(listen_extra="max_connections = 3")

    def talk() -> bytes:
        held = [_connect(gateway.addresses[role]) for role in ("inbound", "submission", "inbound")]
        try:
            assert all(_line(s).startswith(b"220 ") for s in held)
            with _connect(gateway.addresses["submission"]) as extra:
                return _line(extra)
        finally:
            for s in held:
                s.close()

    assert (await asyncio.to_thread(talk)).startswith(b"421 4.7.0 ")


async def test_noop_keepalive_does_not_hold_a_connection(gateway_factory):
    """NOOP (or RSET, HELP, VRFY) every 0.2 s: cut after the 1 s idle timeout, with 421."""
    gateway = await gateway_factory(listen_extra="timeout = 1")
    host, port = gateway.addresses["inbound"]

    def talk() -> tuple[list[bytes], float]:
        with _connect((host, port)) as s:
            assert _line(s).startswith(b"220")
            start = time.monotonic()
            replies = []
            commands = [b"NOOP", b"RSET", b"HELP NOOP", b"VRFY <jo@example.nhs.uk>"]
            while time.monotonic() - start < 5:
                s.sendall(commands[len(replies) % len(commands)] + b"\r\n")
                reply = _line(s)
                replies.append(reply)
                if reply[:1] != b"2":
                    break
                time.sleep(0.2)
            return replies, time.monotonic() - start

    replies, elapsed = await asyncio.to_thread(talk)
    assert replies[-1].startswith(b"421 4.4.2 "), replies
    assert elapsed < 3, elapsed


async def test_pregreet_early_talker_refused(gateway_factory):
    gateway = await gateway_factory(listen_extra="greet_pause = 0.2")
    address = gateway.addresses["inbound"]

    def talk(early: bool) -> bytes:
        with _connect(address) as s:
            if early:
                s.sendall(b"EHLO spam.example\r\n")
            first = _line(s)
            return first + s.recv(100) if early else first  # refused: closed after it

    assert await asyncio.to_thread(talk, True) == (
        b"554 5.7.1 Protocol error: talking before the greeting\r\n"
    )
    assert (await asyncio.to_thread(talk, False)).startswith(b"220 ")
