"""Issue 10, item 7: a full disk under the spool must not silently kill delivery.

The spool lives on a small tmpfs made for the test. While it is full the listeners must
answer 4xx (never 250); once space is back, mail accepted before, during (deferred) and
after is delivered, and no recipient stays ``delivering``. Needs root (mount), as CI has.
"""

import asyncio
import contextlib
import subprocess
import threading

import pytest
from harness.gatewaykit import ORG_DOMAIN, PASSWORD, add_mx, eventually, message, submit
from harness.smtpsink import SinkServer

from securemail.config import load_config
from securemail.gateway.app import Gateway
from securemail.gateway.inbound.users import add_user
from securemail.gateway.spool import RcptStatus

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]  # a tmpfs filled and freed


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk):
    """Fill the file system; return the filler so the test can free the space again."""
    filler = disk / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


async def _states(gateway):
    return {r.rcpt: r.status for m in await gateway.spool.list_messages() for r in m.recipients}


async def test_spool_full_then_space_back_loses_nothing(tmp_path, small_disk, pki, dns_server):
    from harness.gatewaykit import write_config

    ctx = pki.server_context("mx.nhs.net")
    with SinkServer(hostname="mx.nhs.net", tls_context=ctx, reply_code=451) as mx, \
            SinkServer(hostname="internal.example.nhs.uk") as internal:  # fmt: skip
        add_mx(dns_server, "nhs.net")
        path = write_config(tmp_path, pki=pki, dns_server=dns_server, delivery_port=mx.port,
                            internal_port=internal.port)  # fmt: skip
        text = path.read_text().replace(
            'url = "sqlite:///spool.db"', f'url = "sqlite:///{small_disk}/spool.db"'
        )
        path.write_text(text)
        add_user(tmp_path / "users.toml", "alice", PASSWORD)
        gateway = Gateway(load_config(path, environ={}))
        await gateway.start()
        try:
            send = lambda rcpt: asyncio.to_thread(  # noqa: E731
                submit, gateway, pki, f"alice@{ORG_DOMAIN}", [rcpt], message(to=rcpt)
            )
            # 1. Accepted while the disk has room; the remote defers it (451), so the queue
            #    manager keeps claiming it every retry (0.2 s in the test config).
            assert await send("before@nhs.net") == {}
            await eventually(lambda: mx.rejected)
            # 2. A delivery in flight when the disk fills: its outcome cannot be written.
            mx.hold = threading.Event()
            mx.reply_code = None
            await asyncio.sleep(1.5)  # the next retry reaches DATA and waits there
            filler = _fill(small_disk)
            mx.hold.set()
            # 3. While the spool cannot be written: 4xx, never 250.
            with pytest.raises(Exception) as refused:  # smtplib.SMTPDataError
                await send("during@nhs.net")
            assert getattr(refused.value, "smtp_code", 0) // 100 == 4, refused.value
            await asyncio.sleep(1.5)  # several claim attempts fail while the disk is full
            # 4. Space comes back: new mail is accepted and everything is delivered.
            filler.unlink()
            assert await send("after@nhs.net") == {}

            async def all_delivered():
                got = {r for m in mx.messages for r in m.rcpt_tos}
                return {"before@nhs.net", "after@nhs.net"} <= got and not await _states(gateway)

            await eventually(all_delivered, timeout=40)
            assert RcptStatus.DELIVERING not in (await _states(gateway)).values()
        finally:
            await gateway.stop(grace=5)
