"""Which settings a reload applies and which wait for a restart; in-process reloads;
the small mechanisms a swap relies on (a retired connection pool, a forced users read).

The real-process reloads (SIGHUP, ``securemail reload``) are in ``test_reload.py``.
"""

import asyncio
import dataclasses
import os
import smtplib

import pytest
from harness.gatewaykit import ORG_DOMAIN, PASSWORD, message, submit

from securemail.config import Config, load_config
from securemail.core.levels import TlsLevel
from securemail.gateway.control import OK, REFUSED
from securemail.gateway.inbound.offload import Offload
from securemail.gateway.inbound.users import UserStore, add_user, read_users_file
from securemail.gateway.outbound.pool import ConnectionPool
from securemail.gateway.reload import LIVE, RESTART_ONLY, keep_running, restart_needed

ALICE = f"alice@{ORG_DOMAIN}"


def test_every_setting_is_either_live_or_restart_only():
    """A new key must be decided: a reload that silently ignored it would report "ok"."""
    defaults = Config()
    keys = {
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(Config)
        if section.name not in ("source", "warnings")
        for f in dataclasses.fields(getattr(defaults, section.name))
    }
    assert not LIVE & RESTART_ONLY.keys()
    assert keys == LIVE | RESTART_ONLY.keys()
    assert all(reason and not reason.endswith(".") for reason in RESTART_ONLY.values())


def _write(tmp_path, text):
    path = tmp_path / "securemail.toml"
    path.write_text(text)
    return load_config(path, environ={})


def test_restart_only_settings_keep_their_running_values(tmp_path):
    running = _write(tmp_path, '[listen]\ninbound = "127.0.0.1:2525"\n')
    new = _write(
        tmp_path,
        '[listen]\ninbound = "127.0.0.1:2600"\ntimeout = 60\n'
        '[spool]\nurl = "sqlite:///other.db"\n[policy]\nunknown_sensitive_action = "reject"\n',
    )
    changed = restart_needed(running, new)
    assert changed == ("listen.inbound", "spool.url")
    effective = keep_running(new, running, changed)
    assert effective.listen.inbound == "127.0.0.1:2525"
    assert effective.spool == running.spool
    assert effective.listen.timeout == 60.0  # live: the new value
    assert effective.policy.unknown_sensitive_action == "reject"
    assert restart_needed(running, effective) == ()


async def test_an_in_process_reload_applies_policy_and_refuses_a_broken_file(gateway_factory, pki):
    gateway = await gateway_factory(extra='[policy]\nunknown_sensitive_action = "hold"\n')
    assert gateway.generation == 0
    sensitive = message("OFFICIAL-SENSITIVE", to="someone@gmail.test")
    await asyncio.to_thread(submit, gateway, pki, ALICE, ["someone@gmail.test"], sensitive)
    source = gateway.config.source
    text = source.read_text()
    source.write_text(text.replace('"hold"', '"reject"'))
    state = await gateway.reload()
    assert state is not None and (state.result, state.generation) == (OK, 1)
    assert gateway.pipeline.rules.policy.unknown_sensitive.value == "reject"
    with pytest.raises(smtplib.SMTPDataError, match="refused by policy"):
        await asyncio.to_thread(submit, gateway, pki, ALICE, ["someone@gmail.test"], sensitive)
    source.write_text(text + "\n[listen\n")
    state = await gateway.reload()
    assert state is not None and (state.result, state.generation) == (REFUSED, 2)
    assert state.message.startswith("reload refused: ")
    assert state.message.endswith("; keeping the running configuration")
    assert gateway.config.policy.unknown_sensitive_action == "reject"  # still in force
    with pytest.raises(smtplib.SMTPDataError, match="refused by policy"):
        await asyncio.to_thread(submit, gateway, pki, ALICE, ["someone@gmail.test"], sensitive)


class Gate(Offload):
    """Runs every step inline, but holds the sensitivity scan until ``opened``."""

    def __init__(self) -> None:
        super().__init__(budget=30)
        self.reached, self.opened = asyncio.Event(), asyncio.Event()

    def runner(self, data, block):
        async def run(what, fn):
            if what == "sensitivity scan":
                self.reached.set()
                await self.opened.wait()
            return fn()

        return run


async def test_a_message_being_received_finishes_under_the_rules_it_started_with(
    gateway_factory, pki
):
    gateway = await gateway_factory(extra='[policy]\nunknown_sensitive_action = "hold"\n')
    gate = gateway.pipeline.offload = Gate()
    sensitive = message("OFFICIAL-SENSITIVE", to="someone@gmail.test")
    sending = asyncio.ensure_future(
        asyncio.to_thread(submit, gateway, pki, ALICE, ["someone@gmail.test"], sensitive)
    )
    await asyncio.wait_for(gate.reached.wait(), 20)  # signed under the old rules, not decided
    source = gateway.config.source
    source.write_text(source.read_text().replace('"hold"', '"reject"'))
    state = await gateway.reload()
    assert state is not None and state.result == OK
    gate.opened.set()
    assert await sending == {}  # held, as when it started: not half old, half new
    with pytest.raises(smtplib.SMTPDataError, match="refused by policy"):
        await asyncio.to_thread(submit, gateway, pki, ALICE, ["someone@gmail.test"], sensitive)


async def test_a_retired_pool_closes_what_is_parked_after_it():
    """A delivery still running on a deliverer a reload replaced parks its connection
    in a pool nobody will look at again: it is closed instead of left open."""

    class Connection:
        is_open, closed = True, False

        async def close(self):
            self.closed = True

    pool = ConnectionPool()
    before, after = Connection(), Connection()
    key = ("nhs.net", "mx.nhs.net", "127.0.0.1", 25, TlsLevel.VERIFIED)
    pool.park(key, before)
    await pool.close()
    pool.park(key, after)
    await asyncio.sleep(0)  # the close is scheduled, not awaited, by park
    assert before.closed and after.closed
    assert pool.take(key) is None


async def test_a_reload_rereads_the_users_file_whatever_its_mtime(tmp_path):
    path = tmp_path / "users.toml"
    add_user(path, "alice", PASSWORD)
    store = UserStore(path, [ORG_DOMAIN])
    assert await store.verify("alice", PASSWORD)
    stamp = path.stat().st_mtime_ns
    add_user(path, "bob", PASSWORD)
    os.utime(path, ns=(stamp, stamp))  # an edit the mtime does not show
    assert not await store.verify("bob", PASSWORD)
    store.adopt(read_users_file(path))
    assert await store.verify("bob", PASSWORD)
