"""``securemail queue`` as an operator runs it: real processes on a real spool.

The spool is filled through the spool API the gateway itself uses (``store``, ``claim``,
``record``), then every command runs as ``securemail queue …`` in its own process, as
postqueue/postsuper/postcat would. The gateway's side (the log line per decision) is
tests/gateway/test_operator_log.py.
"""

import asyncio
import getpass
import json
import os
import pty
import subprocess
import time

import pytest
from harness.cli import SECUREMAIL, run_cli

from securemail.core.levels import TlsLevel
from securemail.gateway.spool import (
    NewMessage,
    NewRecipient,
    Outcome,
    RcptStatus,
    SqliteSpool,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]  # many CLI processes: CI lane

Q, H = RcptStatus.QUEUED, RcptStatus.HELD
NHS_NUMBER = "943 476 5919"  # valid (modulus 11)
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\r"  # retitle, clear the screen, overwrite the line
BODY = (
    b"From: alice@example.nhs.uk\r\nSubject: OFFICIAL-SENSITIVE referral\r\n"
    b"X-Note: " + HOSTILE.encode() + b"\r\n\tfolded\r\n\r\n"
    b"Patient NHS number " + NHS_NUMBER.encode() + b", phone 020 7946 0958.\r\n"
)


def rcpt(address, status=H, tls=TlsLevel.VERIFIED):
    return NewRecipient(address, address.rpartition("@")[2], status, tls, f"policy: {address}")


class Rig:
    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.db = tmp_path / "spool.db"
        self.config = tmp_path / "securemail.toml"
        self.config.write_text('[spool]\nurl = "sqlite:///spool.db"\n')
        self.with_spool(lambda spool: spool.counts())  # an empty spool, as the gateway's

    def with_spool(self, action):
        async def go():
            spool = SqliteSpool(self.db, synchronous="NORMAL")
            await spool.open()
            try:
                return await action(spool)
            finally:
                await spool.close()

        return asyncio.run(go())

    def store(self, *rcpts, data=BODY, received=0.0, sender="alice@example.nhs.uk"):
        message = NewMessage(sender, rcpts, data, received=received)
        return self.with_spool(lambda spool: spool.store(message))

    def run(self, *args, columns=200):
        proc = run_cli("queue", *args, "-c", str(self.config), cwd=self.dir, columns=columns)
        return proc.returncode, proc.stdout.decode(), " ".join(proc.stderr.decode().split())

    def json(self, *args):
        status, out, err = self.run(*args, "--json")
        assert status == 0, err
        return [json.loads(line) for line in out.splitlines()]

    def states(self):
        return {
            (m["queue_id"], r["rcpt"]): r["status"]
            for m in self.json("list")
            for r in m["recipients"]
        }


@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path)


def test_release_one_message_on_the_record(rig):
    qid = rig.store(rcpt("carer@gmail.test"), rcpt("gp@nhs.net", Q))
    status, _, err = rig.run("release", qid)
    assert status == 2 and "--reason is required" in err
    status, _, err = rig.run("release", qid, "--reason", "two\nlines")
    assert status == 2 and "one line without control characters" in err
    status, _, err = rig.run("release", qid, "--reason", "ok", "--by", "x" * 201)
    assert status == 2 and "at most 200" in err
    assert rig.states()[(qid, "carer@gmail.test")] == "held"  # nothing changed so far

    status, out, err = rig.run(
        "release", qid, "--reason", "checked with the IG lead", "--by", "alice"
    )
    assert (status, out.strip()) == (0, f"released 1 recipient of {qid}"), err
    status, out, _ = rig.run("show", qid)
    assert status == 0
    assert "<carer@gmail.test> queued tls=verified" in " ".join(out.split())
    [line] = [line for line in out.splitlines() if "release" in line]
    assert line.strip().endswith("Z release by alice: checked with the IG lead")
    [shown] = rig.json("show", qid)
    assert [(h["action"], h["rcpt"], h["operator"]) for h in shown["history"]] == [
        ("release", "", "alice")
    ]
    status, _, err = rig.run("release", qid, "--reason", "again")
    assert status == 2 and "no held recipients" in err


def test_named_recipients_and_unknown_ones(rig):
    qid = rig.store(rcpt("a@gmail.test"), rcpt("b@gmail.test"), rcpt("c@gmail.test"))
    status, _, err = rig.run("release", qid, "a@gmail.test", "typo@gmail.test", "--reason", "x")
    assert status == 2 and "not recipients of this message: typo@gmail.test" in err
    assert set(rig.states().values()) == {"held"}  # nothing changed, not even a@
    [result] = rig.json(
        "release", qid, "a@gmail.test", "b@gmail.test", "--reason", "ok", "--by", "bo"
    )
    assert (result["action"], result["operator"], result["recipients"]) == ("release", "bo", 2)
    assert result["changes"] == [
        {"queue_id": qid, "changed": ["a@gmail.test", "b@gmail.test"], "removed": False,
         "unmoved": []}
    ]  # fmt: skip
    [shown] = rig.json("show", qid)
    assert [h["rcpt"] for h in shown["history"]] == ["a@gmail.test", "b@gmail.test"]
    assert {r["rcpt"]: r["status"] for r in shown["recipients"]} == {
        "a@gmail.test": "queued", "b@gmail.test": "queued", "c@gmail.test": "held"
    }  # fmt: skip
    status, _, err = rig.run("release", "ALL", "a@gmail.test", "--reason", "x")
    assert status == 2 and "with ALL" in err
    status, _, err = rig.run("release", qid, "--status", "held", "--reason", "x")
    assert status == 2 and "for ALL" in err


def test_the_audit_row_survives_delete(rig):
    qid = rig.store(rcpt("x@gmail.test"), rcpt("gp@nhs.net", Q))
    status, out, err = rig.run("delete", qid, "--reason", "sent to the wrong trust", "--by", "cy")
    assert (status, out.strip()) == (0, f"deleted {qid}"), err
    assert rig.json("list") == []
    status, out, err = rig.run("show", qid)
    assert status == 0, err
    assert f"{qid}: not in the spool" in out
    assert "delete by cy: sent to the wrong trust" in out
    [gone] = rig.json("show", qid)
    assert (gone["in_spool"], [h["action"] for h in gone["history"]]) == (False, ["delete"])
    status, _, err = rig.run("show", "0000000000000000")
    assert status == 2 and "0000000000000000: no such message" in err
    status, _, err = rig.run("delete", qid, "--reason", "again")
    assert status == 2 and "no such message" in err


def test_delete_some_recipients_then_the_message_goes(rig):
    qid = rig.store(rcpt("a@gmail.test"), rcpt("b@gmail.test"))
    status, out, _ = rig.run("delete", qid, "a@gmail.test", "--reason", "left the practice")
    assert status == 0 and f"deleted 1 recipient of {qid}" in out
    status, out, _ = rig.run("delete", qid, "b@gmail.test", "--reason", "left too")
    assert status == 0 and "the message is gone" in out
    [gone] = rig.json("show", qid)
    assert [h["rcpt"] for h in gone["history"]] == ["a@gmail.test", "b@gmail.test"]


async def test_hold_refuses_a_delivering_recipient(rig):
    """A recipient claimed by a live gateway (this process holds the spool open) is on
    the wire: a hold must leave it, say so, and hold the rest."""
    qid = await asyncio.to_thread(rig.store, rcpt("gp@nhs.net", Q), rcpt("pal@gmail.test", Q))
    gateway = SqliteSpool(rig.db, synchronous="NORMAL")
    await gateway.open()
    try:
        [claimed] = await gateway.claim_due(time.time(), 1)
        assert claimed.rcpt == "gp@nhs.net"
        status, _, err = await asyncio.to_thread(
            rig.run, "hold", qid, "gp@nhs.net", "--reason", "q"
        )
        assert status == 2
        assert "not held: gp@nhs.net being delivered (an attempt is on the wire" in err
        status, out, err = await asyncio.to_thread(rig.run, "hold", qid, "--reason", "query")
        assert status == 0 and f"held 1 recipient of {qid}" in out
        assert f"{qid} <gp@nhs.net>: being delivered, not held" in err
        states = await asyncio.to_thread(rig.states)
        assert states == {(qid, "gp@nhs.net"): "delivering", (qid, "pal@gmail.test"): "held"}
        # The attempt's result is still recorded as it happened.
        await gateway.record([Outcome(qid, "gp@nhs.net", RcptStatus.DELIVERED, "250 ok")])
    finally:
        await gateway.close()
    states = await asyncio.to_thread(rig.states)
    assert states == {(qid, "gp@nhs.net"): "delivered", (qid, "pal@gmail.test"): "held"}


def test_bulk_with_filters_asks_and_needs_yes_without_a_terminal(rig):
    old = time.time() - 3 * 3600
    a = rig.store(rcpt("a@gmail.test"), rcpt("gp@nhs.net", Q), received=old)
    b = rig.store(rcpt("b@gmail.test"), rcpt("c@other.test"), received=old)
    c = rig.store(rcpt("new@gmail.test"))  # received now
    before = rig.states()
    status, out, err = rig.run("release", "ALL", "--rcpt-domain", "GMAIL.test.", "--reason", "ok")
    assert (status, out) == (2, "")
    assert "release 3 recipients of 3 messages: not confirmed; pass --yes" in err
    assert rig.states() == before

    args = ("--rcpt-domain", "gmail.test", "--older-than", "2h", "--reason", "IG lead agreed")
    status, out, err = rig.run("release", "ALL", *args, "--yes")
    assert (status, out.strip()) == (0, "released 2 recipients of 2 messages"), err
    after = rig.states()
    assert {k for k in after if after[k] != before[k]} == {(a, "a@gmail.test"), (b, "b@gmail.test")}
    for qid, whom in ((a, "a@gmail.test"), (b, "b@gmail.test")):
        [shown] = rig.json("show", qid)
        assert [(h["rcpt"], h["reason"]) for h in shown["history"]] == [(whom, "IG lead agreed")]
    [result] = rig.json("release", "ALL", *args, "--yes")
    assert (result["messages"], result["recipients"], result["changes"]) == (0, 0, [])

    # Without filters, ALL is every message; each gets one row for the whole message.
    [held] = rig.json("hold", "ALL", "--reason", "incident 42", "--yes")
    assert (held["messages"], held["recipients"]) == (2, 3)  # a's gp, a@ and b@ ...
    assert {c["queue_id"] for c in held["changes"]} == {a, b}
    [shown] = rig.json("show", a)
    assert [(h["action"], h["rcpt"]) for h in shown["history"]][-1] == ("hold", "")
    assert rig.states()[(c, "new@gmail.test")] == "held"  # was held; untouched

    for bad in ("2h30m", "-1d", "1.5h", "3 days", "0m", "h"):
        status, _, err = rig.run("hold", "ALL", "--older-than", bad, "--reason", "x", "--yes")
        assert status == 2 and "--older-than" in err, bad
    status, _, err = rig.run("list", "--rcpt-domain", "a@b")
    assert status == 2 and "--rcpt-domain" in err


def _on_a_terminal(rig, answer, *args):
    """The command with a terminal on stdin (a pty), answering the question with ``answer``."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*SECUREMAIL, "queue", *args, "-c", str(rig.config)],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=rig.dir,
        )
        os.write(master, answer)
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    return proc.returncode, out.decode(), err.decode()


def test_bulk_asks_on_a_terminal(rig):
    a = rig.store(rcpt("a@gmail.test"))
    b = rig.store(rcpt("b@gmail.test"), rcpt("c@gmail.test"))
    status, out, err = _on_a_terminal(rig, b"n\n", "release", "ALL", "--reason", "ok")
    assert "release 3 recipients of 2 messages? [y/N]" in err
    assert status == 1 and "nothing changed" in err and out == ""
    assert set(rig.states().values()) == {"held"}
    status, out, err = _on_a_terminal(rig, b"y\n", "release", "ALL", "--reason", "ok")
    assert (status, out.strip()) == (0, "released 3 recipients of 2 messages"), err
    assert set(rig.states().values()) == {"queued"}
    assert {m: len(rig.json("show", m)[0]["history"]) for m in (a, b)} == {a: 1, b: 1}


def test_list_status_is_exact_and_the_table_fits_80_columns(rig):
    status, out, _ = rig.run("list")
    assert (status, out.strip()) == (0, "the spool is empty")
    assert rig.json("list") == []
    long = "a.very.long.local.part.for.a.recipient.who.must.not.widen.the.table@" + (
        "a-very-long-subdomain-of-a-council.example.gov.uk"
    )
    mixed = rig.store(rcpt(long), rcpt("gp@nhs.net", Q), sender="x" * 60 + "@example.nhs.uk")
    other = rig.store(rcpt("b@gmail.test", Q))

    async def deliver_gp(spool):
        claimed = await spool.claim_due(time.time(), 10)
        await spool.record(
            [Outcome(d.queue_id, d.rcpt, RcptStatus.DELIVERED, "250 2.0.0 Ok " + "x" * 120)
             for d in claimed if d.rcpt == "gp@nhs.net"]
            + [Outcome(d.queue_id, d.rcpt, Q, count_attempt=False)
               for d in claimed if d.rcpt != "gp@nhs.net"]
        )  # fmt: skip

    rig.with_spool(deliver_gp)
    # --status held: the held recipient only, not its delivered neighbour.
    [held] = rig.json("list", "--status", "held")
    assert held["queue_id"] == mixed and [r["rcpt"] for r in held["recipients"]] == [long]
    [done] = rig.json("list", "--status", "delivered")
    assert [r["rcpt"] for r in done["recipients"]] == ["gp@nhs.net"]
    assert [m["queue_id"] for m in rig.json("list", "--status", "queued")] == [other]
    status, out, _ = rig.run("list", "--status", "deferred")
    assert (status, out.strip()) == (0, "no recipients match")

    status, out, err = rig.run("list", columns=80)
    assert status == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    assert mixed in out and other in out and "…" in out  # the long address cut short
    assert long not in out.replace("\n", "")
    status, out, _ = rig.run("list", "--status", "held", columns=80)
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "gp@nhs.net" not in out
    [whole] = [m for m in rig.json("list") if m["queue_id"] == mixed]
    assert whole["recipients"][0]["rcpt"] == long  # nothing lost in --json
    assert whole["sender"] == "x" * 60 + "@example.nhs.uk"


def test_cat_masks_nhs_numbers_and_a_reveal_is_recorded(rig):
    qid = rig.store(rcpt("carer@gmail.test"))
    status, out, err = rig.run("cat", qid)
    assert status == 0, err
    assert "Patient NHS number *** *** 5919, phone 020 7946 0958." in out
    assert NHS_NUMBER not in out and "9434765919" not in out
    # Terminal-safe: the hostile header is shown as escapes, never sent raw.
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "X-Note: \\x1b]0;pwned\\x07\\x1b[2J\\x0d" in out
    assert "        folded" in out  # a folded header's TAB, as spaces
    [masked] = rig.json("cat", qid)
    assert (masked["revealed"], masked["part"]) == (False, "message")
    assert "*** *** 5919" in masked["text"] and NHS_NUMBER not in masked["text"]
    assert HOSTILE in masked["text"]  # exact in JSON (escaped on the wire)
    assert rig.json("show", qid)[0]["history"] == []  # reading masked is not recorded

    status, out, _ = rig.run("cat", qid, "--headers")
    assert out.startswith("From: alice@example.nhs.uk") and "Patient" not in out
    status, out, _ = rig.run("cat", qid, "--body")
    assert out == "Patient NHS number *** *** 5919, phone 020 7946 0958.\n"

    status, _, err = rig.run("cat", qid, "--reveal")
    assert status == 2 and "--reason is required" in err
    status, _, err = rig.run("cat", qid, "--reason", "why")
    assert status == 2 and "--reveal" in err
    status, _, err = rig.run("cat", qid, "--headers", "--body")
    assert status == 2
    status, out, err = rig.run(
        "cat", qid, "--body", "--reveal", "--reason", "GP called", "--by", "di"
    )
    assert status == 0, err
    assert out == f"Patient NHS number {NHS_NUMBER}, phone 020 7946 0958.\n"
    [shown] = rig.json("show", qid)
    assert [(h["action"], h["operator"], h["reason"]) for h in shown["history"]] == [
        ("reveal", "di", "GP called")
    ]
    status, _, err = rig.run("cat", "0000000000000000", "--reveal", "--reason", "x")
    assert status == 2 and "no such message" in err


def test_by_defaults_to_the_user_and_flush_has_json(rig):
    qid = rig.store(rcpt("a@gmail.test"))
    [result] = rig.json("release", qid, "--reason", "ok")
    assert result["operator"] == getpass.getuser()
    assert rig.json("flush") == [{"due": 0}]
    status, out, _ = rig.run("flush")
    assert (status, out.strip()) == (0, "0 recipients due now")
