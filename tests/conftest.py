"""Shared fixtures."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.dnsserver import DnsServer
from harness.pki import TestPKI


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A started loopback DNS server with no records; tests add what they need."""
    with DnsServer() as server:
        yield server


@pytest.fixture(scope="session")
def pki() -> Iterator[TestPKI]:
    """The test CA (trustme) for the whole session: `pki.ca_file`, `pki.server_cert(...)`."""
    p = TestPKI()
    yield p
    p.close()


@pytest.fixture
def postfix_tmp() -> Iterator[Path]:
    """A short, world-traversable (0755) base directory for Postfix instances.

    Not pytest's tmp_path: /tmp/pytest-of-root is 0700 (Postfix's pipe(8) and the
    unprivileged daemons need to traverse it) and its long paths overflow the 107-byte
    unix-socket limit under queue_directory. Removed afterwards unless
    SECUREMAIL_KEEP_TMP is set. Stop instances before this fixture is torn down
    (fixtures that depend on it are).
    """
    base = Path(tempfile.mkdtemp(prefix="sm-pf-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    if not os.environ.get("SECUREMAIL_KEEP_TMP"):
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def internal():
    """The organisation's internal mail server (where inbound mail for our domains goes)."""
    from harness.smtpsink import SinkServer

    with SinkServer(hostname="internal.example.nhs.uk") as sink:
        yield sink


@pytest.fixture
async def gateway_factory(tmp_path, pki, dns_server, internal):
    """Start in-process gateways configured for the loopback DNS, sinks and test CA:
    ``await gateway_factory(delivery_port=..., extra="[section]\\n...", delivery_extra=...,
    listen_extra="key = value", inbound_extra="key = value")``.
    Every gateway started is stopped afterwards."""
    from harness.gatewaykit import PASSWORD, start_gateway, write_config

    from securemail.gateway.inbound.users import add_user

    started = []

    async def make(
        delivery_port=25, extra="", delivery_extra="", listen_extra="", inbound_extra=""
    ):
        path = write_config(
            tmp_path,
            pki=pki,
            dns_server=dns_server,
            delivery_port=delivery_port,
            internal_port=internal.port,
            extra=extra,
            delivery_extra=delivery_extra,
            listen_extra=listen_extra,
            inbound_extra=inbound_extra,
        )
        add_user(tmp_path / "users.toml", "alice", PASSWORD)
        gateway = await start_gateway(path)
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        await gateway.stop(grace=5)
