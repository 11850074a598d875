"""End to end with real Postfix on both sides, and testssl.sh against our STARTTLS.

* swaks → Postfix (sending MTA) → securemail inbound → internal server.
* securemail → Postfix (receiving MTA for nhs.net) with verified TLS.
* securemail → Postfix receiver without STARTTLS: a secure recipient is deferred.
* testssl.sh on the inbound listener: no SSLv2/3, TLS 1.0/1.1, no weak ciphers.
"""

import asyncio
import json
import shutil
import subprocess

import pytest
from harness.gatewaykit import (
    ORG_DOMAIN,
    PASSWORD,
    add_mx,
    eventually,
    message,
    rcpt_states,
    start_gateway,
    submit,
    write_config,
)
from harness.postfix import postfix_receiver, postfix_sender, require_tools

from securemail.gateway.inbound.users import add_user

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


async def _gateway(tmp_path, pki, dns_server, delivery_port, internal_port):
    path = write_config(
        tmp_path,
        pki=pki,
        dns_server=dns_server,
        delivery_port=delivery_port,
        internal_port=internal_port,
    )
    add_user(tmp_path / "users.toml", "alice", PASSWORD)
    return await start_gateway(path)


async def _swaks(port: int, to: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    """swaks (a real SMTP client) → the Postfix sender on ``port``."""
    return await asyncio.to_thread(
        subprocess.run,
        ["swaks", "--silent", "2", "--server", "127.0.0.1", "--port", str(port),
         "--from", "someone@sender.test", "--to", to, *extra],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip


async def test_postfix_sends_to_securemail_inbound(
    tmp_path, postfix_tmp, pki, dns_server, internal
):
    require_tools("postfix", "swaks")
    gateway = await _gateway(tmp_path, pki, dns_server, 25, internal.port)
    try:
        host, port = gateway.addresses["inbound"]
        with postfix_sender(postfix_tmp, f"[{host}]:{port}") as sender:
            proc = await _swaks(
                sender.port, f"jo@{ORG_DOMAIN}",
                "--header", "Subject: via real postfix", "--body", "hello from postfix",
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            received = await asyncio.to_thread(internal.wait, 1, 60)
            # Postfix used STARTTLS towards us (level "may") and logged our reply.
            lines = await asyncio.to_thread(sender.wait_for_log, r"status=sent", 1, 60)
        assert "queued as" in lines[0]
        assert await asyncio.to_thread(lambda: "TLS connection established to" in sender.log())
        assert received[0].rcpt_tos == [f"jo@{ORG_DOMAIN}"]
        assert b"hello from postfix" in received[0].data
        assert b"with ESMTPS" in received[0].data  # our Received header: TLS from Postfix
    finally:
        await gateway.stop(grace=5)


async def test_postfix_relay_attempt_refused(tmp_path, postfix_tmp, pki, dns_server, internal):
    require_tools("postfix", "swaks")
    gateway = await _gateway(tmp_path, pki, dns_server, 25, internal.port)
    try:
        host, port = gateway.addresses["inbound"]
        with postfix_sender(postfix_tmp, f"[{host}]:{port}") as sender:
            proc = await _swaks(sender.port, "victim@gmail.test")
            assert proc.returncode == 0  # Postfix accepted it for relaying to us ...
            lines = await asyncio.to_thread(sender.wait_for_log, r"status=bounced", 1, 60)
        assert "554 5.7.1" in lines[0] and "Relay access denied" in lines[0]  # ... we refused
        assert internal.messages == []
    finally:
        await gateway.stop(grace=5)


async def test_securemail_delivers_to_postfix_with_verified_tls(
    tmp_path, postfix_tmp, pki, dns_server, internal
):
    require_tools("postfix")
    add_mx(dns_server, "trust.nhs.net", host="mx.nhs.net")
    with postfix_receiver(postfix_tmp, pki, postfix_tmp / "mailbox", hostname="mx.nhs.net") as mx:
        gateway = await _gateway(tmp_path, pki, dns_server, mx.port, internal.port)
        try:
            await asyncio.to_thread(
                submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["gp@trust.nhs.net"],
                message(subject="OFFICIAL-SENSITIVE discharge", body="to a secure recipient"),
            )  # fmt: skip
            stored = await asyncio.to_thread(mx.wait_received, 1, 60)
            log = await asyncio.to_thread(
                mx.wait_for_log, r"TLS connection established from", 1, 30
            )
        finally:
            await gateway.stop(grace=5)
    assert b"to a secure recipient" in stored[0]
    assert "TLSv1.3" in log[0] or "TLSv1.2" in log[0]
    # Postfix's own Received header records that our hop was encrypted.
    assert b"(using TLSv1." in stored[0]


async def test_postfix_without_starttls_gets_nothing_for_secure_recipient(
    tmp_path, postfix_tmp, pki, dns_server, internal
):
    require_tools("postfix")
    add_mx(dns_server, "trust.nhs.net", host="mx.nhs.net")
    with postfix_receiver(
        postfix_tmp, pki, postfix_tmp / "mailbox", hostname="mx.nhs.net", tls=False
    ) as mx:
        gateway = await _gateway(tmp_path, pki, dns_server, mx.port, internal.port)
        try:
            await asyncio.to_thread(
                submit, gateway, pki, f"alice@{ORG_DOMAIN}", ["gp@trust.nhs.net"], message()
            )

            async def deferred():
                return (await rcpt_states(gateway)).get("gp@trust.nhs.net", ("",))[0] == "deferred"

            await eventually(deferred, 30)
            await asyncio.sleep(1.0)
            states = await rcpt_states(gateway)
        finally:
            await gateway.stop(grace=5)
        assert mx.received() == []
        assert "MAIL FROM" not in mx.log() or "from=<alice@" not in mx.log()
    assert "did not offer STARTTLS" in states["gp@trust.nhs.net"][1]


async def test_testssl_finds_no_weak_protocols_or_ciphers(tmp_path, pki, dns_server, internal):
    """testssl.sh (Debian package) against the inbound STARTTLS listener."""
    testssl = shutil.which("testssl") or shutil.which("testssl.sh")
    assert testssl, "testssl.sh is not installed: run 'make test' (it installs it)"
    gateway = await _gateway(tmp_path, pki, dns_server, 25, internal.port)
    report = tmp_path / "testssl.json"
    try:
        host, port = gateway.addresses["inbound"]
        proc = await asyncio.to_thread(
            subprocess.run,
            [testssl, "--quiet", "--warnings", "off", "--color", "0", "--starttls", "smtp",
             "--protocols", "--std", "--fs", "--jsonfile", str(report), f"{host}:{port}"],
            capture_output=True, timeout=230, check=False,
        )  # fmt: skip
    finally:
        await gateway.stop(grace=5)
    assert report.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    findings = {f["id"]: f for f in json.loads(report.read_text())}
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert findings[old]["finding"].startswith("not offered"), findings[old]
    assert findings["TLS1_2"]["finding"].startswith("offered"), findings["TLS1_2"]
    # testssl 3.0 names: cipherlist_AVERAGE / PFS; 3.2 names: cipherlist_OBSOLETED / FS.
    weak = ["cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
            "cipherlist_3DES_IDEA", "cipherlist_AVERAGE", "cipherlist_OBSOLETED"]  # fmt: skip
    checked = [w for w in weak if w in findings]
    assert len(checked) >= 6, sorted(findings)
    for name in checked:
        assert findings[name]["finding"].startswith("not offered"), findings[name]
    fs = findings.get("PFS") or findings["FS"]
    assert fs["finding"].startswith("offered") and fs["severity"] == "OK", fs
    fs_ciphers = (findings.get("PFS_ciphers") or findings["FS_ciphers"])["finding"].split()
    assert fs_ciphers and all(c.startswith(("TLS_", "ECDHE-")) for c in fs_ciphers), fs_ciphers
