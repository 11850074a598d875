"""Issue items 10 and 11, through the live submission listener.

10. Parallel AUTH guesses all got verified (the count was checked only after argon2
    finished), and one user's guesses locked every user on that address out. Now a try
    takes its slot before verification, per (client, login) and, looser, per client;
    an operator lifts a lockout with ``securemail user unlock``.
11. A signed-in user sent as anyone (``MAIL FROM:<ceo@nhs.net>``, ``From: ceo@nhs.net``)
    and we delivered it, DKIM-signed. Now both must be an address the user owns.

The verifications are counted from the gateway's own ``SessionAuth`` events: each "ok"
or "failed" is one argon2 check run, each "refused (rate limit)" none.
"""

import asyncio
import base64
import json
import smtplib
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from argon2 import PasswordHasher
from harness.gatewaykit import ORG_DOMAIN, PASSWORD, client_context, eventually, write_config

from securemail.config import load_config
from securemail.gateway.app import Gateway
from securemail.gateway.events import MemorySink, SessionAuth
from securemail.gateway.inbound.users import add_user

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]  # processes: CI lane

SECUREMAIL = [sys.executable, "-m", "securemail.cli"]
JO = f"jo@{ORG_DOMAIN}"  # a local recipient: delivered to the internal sink


class Rig:
    def __init__(self, gateway: Gateway, events: MemorySink, config, pki) -> None:
        self.gateway, self.events, self.config, self.pki = gateway, events, config, pki

    def verifications(self) -> int:
        return sum(e.outcome in ("ok", "failed") for e in self.events.of(SessionAuth))

    def cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SECUREMAIL, "user", *args, "--config", str(self.config)],
            input=stdin, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def session(self) -> smtplib.SMTP:
        """A submission session after STARTTLS, before AUTH."""
        smtp = smtplib.SMTP(*self.gateway.addresses["submission"], timeout=30)
        smtp.ehlo("client.example.nhs.uk")
        smtp.starttls(context=client_context(self.pki))
        smtp.ehlo("client.example.nhs.uk")
        return smtp

    def auth(self, user: str, password: str) -> int:
        with self.session() as smtp:
            return _auth(smtp, user, password)


def _auth(smtp: smtplib.SMTP, user: str, password: str) -> int:
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return smtp.docmd("AUTH", f"PLAIN {token}")[0]


async def _rig(tmp_path, pki, dns_server, internal) -> Rig:
    path = write_config(tmp_path, pki=pki, dns_server=dns_server, delivery_port=25,
                        internal_port=internal.port)  # fmt: skip
    events = MemorySink()
    gateway = Gateway(load_config(path, environ={}), events=events)
    await gateway.start()
    return Rig(gateway, events, path, pki)


@pytest.fixture
async def rig(tmp_path, pki, dns_server, internal):
    add_user(tmp_path / "users.toml", "alice", PASSWORD)
    add_user(tmp_path / "users.toml", "bob", PASSWORD)
    made = await _rig(tmp_path, pki, dns_server, internal)
    yield made
    await made.gateway.stop(grace=5)


def _parallel_auths(rig: Rig, logins: list[str]) -> list[int]:
    """Each login's wrong password on its own connection, all sent at the same moment."""
    ready = threading.Barrier(len(logins), timeout=60)

    def guess(login: str) -> int:
        with rig.session() as smtp:
            ready.wait()
            return _auth(smtp, login, "wrong password guess")

    with ThreadPoolExecutor(len(logins)) as pool:
        return list(pool.map(guess, logins))


# --- item 10: the AUTH limiter ----------------------------------------------------------


async def test_item_10_parallel_guesses_verify_at_most_the_limit_then_unlock(rig):
    codes = await asyncio.to_thread(_parallel_auths, rig, ["alice"] * 40)
    assert rig.verifications() <= 5
    assert sorted(codes) == [454] * (40 - codes.count(535)) + [535] * codes.count(535)
    assert codes.count(535) == rig.verifications() and codes.count(454) >= 35
    # Another user behind the same address is not locked out by alice's guesses...
    assert await asyncio.to_thread(rig.auth, "bob", PASSWORD) == 235
    # ... while alice is, even with the right password.
    assert await asyncio.to_thread(rig.auth, "alice", PASSWORD) == 454

    async def listed_locked():
        proc = await asyncio.to_thread(rig.cli, "list", "--json")
        assert proc.returncode == 0, proc.stderr
        rows = {row.get("user"): row for row in map(json.loads, proc.stdout.splitlines())}
        return [lock["client"] for lock in rows["alice"]["locked"]] == ["127.0.0.1"]

    await eventually(listed_locked, timeout=30)
    unlocked = await asyncio.to_thread(rig.cli, "unlock", "alice")
    assert unlocked.returncode == 0, unlocked.stderr
    assert await asyncio.to_thread(rig.auth, "alice", PASSWORD) == 235


async def test_item_10_per_client_limit_caps_guesses_across_logins(rig):
    """Spraying many logins from one address: the looser per-client limit (30) holds."""
    codes = await asyncio.to_thread(_parallel_auths, rig, [f"u{i}" for i in range(36)])
    assert rig.verifications() <= 30
    assert codes.count(454) >= 6
    assert await asyncio.to_thread(rig.auth, "alice", PASSWORD) == 454  # the whole client
    unlocked = await asyncio.to_thread(rig.cli, "unlock", "--client", "127.0.0.1")
    assert unlocked.returncode == 0, unlocked.stderr
    assert await asyncio.to_thread(rig.auth, "alice", PASSWORD) == 235


# --- item 11: users send only as their own addresses --------------------------------------


def _mail(rig: Rig, user: str, envelope: str) -> tuple[int, bytes]:
    with rig.session() as smtp:
        assert _auth(smtp, user, PASSWORD) == 235
        return smtp.mail(envelope)


def _send(rig: Rig, user: str, envelope: str, data: bytes) -> tuple[int, bytes]:
    """The reply to DATA, after MAIL and RCPT were accepted."""
    with rig.session() as smtp:
        assert _auth(smtp, user, PASSWORD) == 235
        assert smtp.mail(envelope)[0] == 250
        assert smtp.rcpt(JO)[0] == 250
        return smtp.data(data)


def _message(from_header: str) -> bytes:
    return (
        f"{from_header}To: {JO}\r\nSubject: board minutes\r\n"
        f"Message-ID: <m1@{ORG_DOMAIN}>\r\n\r\nPlease action.\r\n"
    ).encode()


@pytest.mark.parametrize("sender", ["ceo@nhs.net", f"md@{ORG_DOMAIN}", f"alice@evil{ORG_DOMAIN}"])
async def test_item_11_mail_from_not_owned_is_refused(rig, internal, sender):
    code, text = await asyncio.to_thread(_mail, rig, "alice", sender)
    assert (code, text) == (553, b"5.7.1 Sender address not owned by user alice")
    # The user's own address, however it is capitalised, is fine.
    assert (await asyncio.to_thread(_mail, rig, "alice", f"Alice@{ORG_DOMAIN.upper()}"))[0] == 250


@pytest.mark.parametrize(
    "from_header",
    [
        "From: ceo@nhs.net\r\n",
        "From: Alice <ceo@nhs.net>\r\n",
        f"From: md@{ORG_DOMAIN}\r\n",
        f"From: alice@{ORG_DOMAIN}, ceo@nhs.net\r\n",
        f"From: alice@{ORG_DOMAIN}\r\nFrom: ceo@nhs.net\r\n",
        "",  # no From at all
    ],
)
async def test_item_11_header_from_not_owned_is_refused_at_data(rig, internal, from_header):
    code, text = await asyncio.to_thread(
        _send, rig, "alice", f"alice@{ORG_DOMAIN}", _message(from_header)
    )
    assert code == 553 and text.startswith(b"5.7.1 From header refused for user alice"), text
    assert await rig.gateway.spool.list_messages() == []
    assert internal.messages == []


async def test_item_11_owned_addresses_are_delivered_and_extra_address_works(rig, internal):
    added = await asyncio.to_thread(
        rig.cli, "add", "carol", "--address", f"team@{ORG_DOMAIN}", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    team = f"team@{ORG_DOMAIN}"
    code, _ = await asyncio.to_thread(
        _send, rig, "carol", team, _message(f"From: Team <{team}>\r\n")
    )
    assert code == 250
    alice = f"alice@{ORG_DOMAIN}"
    code, _ = await asyncio.to_thread(_send, rig, "alice", alice, _message(f"From: {alice}\r\n"))
    assert code == 250
    got = await asyncio.to_thread(internal.wait, 2)
    assert sorted(m.mail_from for m in got) == [alice, team]
    # Explicit addresses replace the defaults: carol@ is not carol's, nor is team@ alice's.
    assert (await asyncio.to_thread(_mail, rig, "carol", f"carol@{ORG_DOMAIN}"))[0] == 553
    assert (await asyncio.to_thread(_mail, rig, "alice", team))[0] == 553


async def test_item_11_users_file_without_addresses_gets_the_defaults(
    tmp_path, pki, dns_server, internal
):
    """A users file written before addresses existed: NAME@ each of our domains."""
    legacy_hash = PasswordHasher().hash(PASSWORD)
    (tmp_path / "users.toml").write_text(f'[users]\n"alice" = "{legacy_hash}"\n')
    rig = await _rig(tmp_path, pki, dns_server, internal)
    try:
        alice = f"alice@{ORG_DOMAIN}"
        code, _ = await asyncio.to_thread(
            _send, rig, "alice", alice, _message(f"From: {alice}\r\n")
        )
        assert code == 250
        assert (await asyncio.to_thread(_mail, rig, "alice", f"md@{ORG_DOMAIN}"))[0] == 553
    finally:
        await rig.gateway.stop(grace=5)
