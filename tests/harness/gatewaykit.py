"""Run a real gateway for tests: config file, DNS records, TLS, sinks, SMTP clients.

Nothing is patched: the gateway reads a securemail.toml that points its resolver at
the loopback DNS server, its delivery port at a loopback sink and its trust store at
the test CA, exactly as an operator would configure it.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from securemail.config import load_config
from securemail.gateway.app import Gateway

ORG_DOMAIN = "example.nhs.uk"
HOSTNAME = "mail.example.nhs.uk"
PASSWORD = "correct horse battery staple"


def write_config(
    tmp_path: Path,
    *,
    pki,
    dns_server,
    delivery_port: int,
    internal_port: int,
    inbound: str = "127.0.0.1:0",
    submission: str = "127.0.0.1:0",
    extra: str = "",
    delivery_extra: str = "",
    listen_extra: str = "",
    inbound_extra: str = "",
) -> Path:
    cert, key = pki.server_cert(HOSTNAME)
    # No greeting pause: it would add 0.3 s to every connection of every test; the
    # pregreet test (tests/security/test_listener_sessions.py) sets its own.
    # Two accept workers, whatever the machine's cores: a `securemail serve` of the tests
    # always runs the multi-process gateway (an embedded ``Gateway`` runs in one).
    listen = {
        "max_message_size": "200000", "timeout": "30", "greet_pause": "0", "workers": "2"
    }  # fmt: skip
    for line in listen_extra.splitlines():  # "key = value" lines; they win over these
        name, _, value = line.partition("=")
        if value.strip():
            listen[name.strip()] = value.strip()
    listen_keys = "\n".join(f"{name} = {value}" for name, value in listen.items())
    path = tmp_path / "securemail.toml"
    path.write_text(
        f"""
[organisation]
name = "Test Trust"
audience = "health-and-care"
domains = ["{ORG_DOMAIN}"]
hostname = "{HOSTNAME}"

[listen]
inbound = "{inbound}"
submission = "{submission}"
{listen_keys}

[tls]
cert = "{cert}"
key = "{key}"
ca_file = "{pki.ca_file}"

[dns]
nameservers = ["{dns_server.nameserver}"]
timeout = 2.0

[spool]
url = "sqlite:///spool.db"

[inbound]
deliver_to = "127.0.0.1:{internal_port}"
{inbound_extra}

[relay]
users_file = "users.toml"

[delivery]
port = {delivery_port}
retry_base = 0.2
retry_max = 1.0
{delivery_extra}

{extra}
"""
    )
    return path


def add_mx(dns_server, domain: str, host: str | None = None, ip: str = "127.0.0.1") -> None:
    host = host or f"mx.{domain}"
    dns_server.add(domain, "MX", f"10 {host}.")
    dns_server.add(host, "A", ip)


async def start_gateway(config_path: Path) -> Gateway:
    gateway = Gateway(load_config(config_path, environ={}))
    await gateway.start()
    return gateway


def client_context(pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.check_hostname = False  # we connect to 127.0.0.1; the name is tested elsewhere
    return ctx


def submit(
    gateway: Gateway,
    pki,
    sender: str,
    rcpts: list[str],
    message: bytes,
    *,
    user: str | None = "alice",
    password: str = PASSWORD,
    mail_options: tuple[str, ...] = (),
) -> dict:
    """Blocking: STARTTLS + AUTH on the submission port, send; returns refused rcpts."""
    host, port = gateway.addresses["submission"]
    with smtplib.SMTP(host, port, timeout=30) as smtp:
        smtp.ehlo("client.example.nhs.uk")
        smtp.starttls(context=client_context(pki))
        smtp.ehlo("client.example.nhs.uk")
        if user:
            smtp.login(user, password)
        return smtp.sendmail(sender, rcpts, message, list(mail_options))


def send_inbound(gateway: Gateway, sender: str, rcpts: list[str], message: bytes) -> dict:
    host, port = gateway.addresses["inbound"]
    with smtplib.SMTP(host, port, timeout=30) as smtp:
        smtp.ehlo("mx.sender.test")
        return smtp.sendmail(sender, rcpts, message)


def message(subject: str = "hello", body: str = "Just a note.", to: str = "x@nhs.net") -> bytes:
    return (
        f"From: alice@{ORG_DOMAIN}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{time.time_ns()}@{ORG_DOMAIN}>\r\n\r\n{body}\r\n"
    ).encode()


async def eventually(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    """Poll (bounded) until predicate() is truthy, on the running loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


async def rcpt_states(gateway: Gateway) -> dict[str, tuple[str, str]]:
    """rcpt → (status, last_error) for everything in the spool."""
    out = {}
    for m in await gateway.spool.list_messages():
        for r in m.recipients:
            out[r.rcpt] = (r.status.value, r.last_error)
    return out
