"""The spool: the queue's life cycle, group commit, crashes, and a second process."""

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from securemail.core.levels import TlsLevel
from securemail.errors import ConfigError
from securemail.gateway.spool import (
    Decision,
    NewMessage,
    NewRecipient,
    Outcome,
    RcptStatus,
    SpoolClosedError,
    SpoolError,
    SqliteSpool,
    StsPolicyRecord,
    new_queue_id,
    open_spool,
    spool_path,
)

ROOT = Path(__file__).resolve().parents[2]
Q, D, H = RcptStatus.QUEUED, RcptStatus.DELIVERING, RcptStatus.HELD
BY_ALICE = Decision("alice", "checked with the IG lead", 1_800_000_000.0)


def rcpt(address, status=Q, tls=TlsLevel.VERIFIED):
    return NewRecipient(address, address.rpartition("@")[2], status, tls, f"reason for {address}")


def msg(*recipients, data=b"Subject: hi\r\n\r\nbody\r\n", sender="jo@example.nhs.uk", **kw):
    rcpts = tuple(rcpt(r) if isinstance(r, str) else r for r in recipients)
    return NewMessage(sender, rcpts, data, client="127.0.0.1:5000 helo=pc1", **kw)


def run_child(script, *args):
    """A separate Python process running ``script`` (stdout piped, line by line)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def test_store_claim_deliver_removes_message(spool):
    data = b"Subject: results\r\n\r\n" + bytes(range(256)) * 40
    qid = await spool.store(msg("a@nhs.net", "b@gmail.com", data=data))
    assert await spool.message_data(qid) == data
    claimed = await spool.claim_due(time.time(), 10)
    assert [(d.queue_id, d.rcpt, d.domain, d.attempts, d.size) for d in claimed] == [
        (qid, "a@nhs.net", "nhs.net", 0, len(data)),
        (qid, "b@gmail.com", "gmail.com", 0, len(data)),
    ]
    assert claimed[0].sender == "jo@example.nhs.uk" and claimed[0].tls is TlsLevel.VERIFIED
    assert await spool.claim_due(time.time(), 10) == []  # already claimed
    assert (await spool.counts())[D] == 2

    await spool.record([Outcome(qid, "a@nhs.net", RcptStatus.DELIVERED, "250 2.0.0 Ok")])
    info = await spool.get(qid)
    assert [(r.rcpt, r.status, r.attempts) for r in info.recipients] == [
        ("a@nhs.net", RcptStatus.DELIVERED, 1),
        ("b@gmail.com", D, 0),
    ]
    assert info.recipients[0].last_error == "250 2.0.0 Ok"

    await spool.record([Outcome(qid, "b@gmail.com", RcptStatus.BOUNCED, "550 5.1.1 no user")])
    assert await spool.get(qid) is None
    assert await spool.message_data(qid) is None
    counts = await spool.counts()
    assert counts["messages"] == 0 and counts["done"] == 1
    assert sum(counts[s] for s in RcptStatus) == 0


async def test_a_claimed_recipient_carries_its_policy_reason(spool):
    await spool.store(msg("a@nhs.net"))
    [claimed] = await spool.claim_due(time.time(), 10)
    assert claimed.reason == "reason for a@nhs.net"  # the transport decision's "why"


async def test_mta_sts_policies_are_cached_and_the_newer_fetch_wins(spool, tmp_path):
    assert await spool.sts_get("nhs.net") is None
    first = StsPolicyRecord("nhs.net", "id1", "version: STSv1\r\n", 1000.0, 2000.0)
    await spool.sts_put(first)
    assert await spool.sts_get("nhs.net") == first
    await spool.sts_put(StsPolicyRecord("nhs.net", "id0", "older", 900.0, 1900.0))
    assert await spool.sts_get("nhs.net") == first  # a slower process's older fetch loses
    newer = StsPolicyRecord("nhs.net", "id2", "newer", 1500.0, 2500.0)
    await spool.sts_put(newer)
    await spool.close()
    reopened = SqliteSpool(tmp_path / "spool.db", synchronous="NORMAL")
    await reopened.open()
    try:
        assert await reopened.sts_get("nhs.net") == newer  # across a restart
        assert await reopened.sts_get("other.example") is None
    finally:
        await reopened.close()


async def test_held_never_claimed_until_release(spool):
    """The release rule: held sensitive mail is stored VERIFIED (the gateway maps the
    decision's "no level" so) and a release keeps that level: never sent opportunistically."""
    qid = await spool.store(msg(rcpt("x@gmail.com", H, TlsLevel.VERIFIED), "a@nhs.net"))
    far_future = time.time() + 10**6
    assert [d.rcpt for d in await spool.claim_due(far_future, 10)] == ["a@nhs.net"]
    assert await spool.claim_due(far_future, 10) == []
    assert await spool.next_due() is None
    assert (await spool.release(qid, None, BY_ALICE)).count == 1
    assert (await spool.release(qid, None, BY_ALICE)).count == 0
    assert not (await spool.release("NOSUCHID00000000", None, BY_ALICE)).found
    [delivery] = await spool.claim_due(time.time(), 10)
    assert delivery.rcpt == "x@gmail.com" and delivery.tls is TlsLevel.VERIFIED


async def test_every_level_crosses_the_spool_as_itself(spool):
    levels = [level for level in TlsLevel if level > TlsLevel.NONE]
    qid = await spool.store(msg(*(rcpt(f"r{int(lv)}@nhs.net", tls=lv) for lv in levels)))
    assert [r.tls for r in (await spool.get(qid)).recipients] == levels
    claimed = await spool.claim_due(time.time(), 10)
    assert [d.tls for d in claimed] == levels
    assert all(type(d.tls) is TlsLevel for d in claimed)


@pytest.mark.parametrize("tls", [TlsLevel.NONE, "required", None, 2])
async def test_only_a_sendable_level_is_queued(spool, tls):
    with pytest.raises(ValueError, match="cannot be queued"):
        await spool.store(msg(rcpt("a@nhs.net", tls=tls)))
    assert (await spool.counts())["messages"] == 0


async def test_hand_off_is_final_and_recorded(spool):
    qid = await spool.store(msg(rcpt("x@gmail.com", H), rcpt("y@gmail.com", H), "a@nhs.net"))
    [claimed] = await spool.claim_due(time.time(), 10)
    before = time.time()
    assert await spool.hand_off(qid, ["x@gmail.com", "x@gmail.com"], "portal", "link sent") == 1
    assert await spool.hand_off(qid, ["x@gmail.com"], "portal", "again") == 0  # already final
    assert await spool.hand_off(qid, ["a@nhs.net"], "portal", "in flight") == 0  # DELIVERING
    assert await spool.hand_off(qid, ["nobody@gmail.com"], "portal", "unknown") == 0
    assert await spool.hand_off("NOSUCHID00000000", ["x@gmail.com"], "portal", "gone") == 0
    assert await spool.hand_off(qid, [], "portal", "nothing") == 0
    states = {r.rcpt: r for r in (await spool.get(qid)).recipients}
    x = states["x@gmail.com"]
    assert (x.status, x.last_error) == (RcptStatus.HANDED_OFF, "handed off to portal: link sent")
    assert x.updated >= before
    assert states["y@gmail.com"].status is H and states["a@nhs.net"].status is D
    # y only: a hand-off is never undone by a release
    assert (await spool.release(qid, None, BY_ALICE)).changed == ("y@gmail.com",)
    assert {d.rcpt for d in await spool.claim_due(time.time(), 10)} == {"y@gmail.com"}
    await spool.record(
        [Outcome(qid, r, RcptStatus.DELIVERED, "250 ok") for r in (claimed.rcpt, "y@gmail.com")]
    )
    assert await spool.get(qid) is None  # every recipient final: the message is gone
    counts = await spool.counts()
    assert (counts["messages"], counts["done"], counts[RcptStatus.HANDED_OFF]) == (0, 1, 0)


async def test_hand_off_of_the_last_recipient_removes_the_message(spool):
    qid = await spool.store(msg(rcpt("x@gmail.com", H), rcpt("y@gmail.com", Q)))
    assert await spool.hand_off(qid, ["x@gmail.com", "y@gmail.com"], "portal", "encrypted") == 2
    assert await spool.get(qid) is None and await spool.message_data(qid) is None
    assert (await spool.counts())["done"] == 1
    with pytest.raises(ValueError, match="names the stage"):
        await spool.hand_off(qid, ["x@gmail.com"], " ", "why")
    with pytest.raises(ValueError, match="names the stage"):
        await spool.hand_off(qid, ["x@gmail.com"], "portal", "")


async def test_deferred_due_only_at_next_attempt_and_attempts_counted(spool):
    qid = await spool.store(msg("a@nhs.net"))
    await spool.claim_due(time.time(), 1)
    retry_at = time.time() + 3600
    await spool.record(
        [Outcome(qid, "a@nhs.net", RcptStatus.DEFERRED, "451 4.4.1 timeout", retry_at)]
    )
    assert await spool.claim_due(time.time(), 10) == []
    assert await spool.next_due() == pytest.approx(retry_at)
    assert (await spool.counts())[RcptStatus.DEFERRED] == 1

    [delivery] = await spool.claim_due(retry_at + 1, 10)
    assert delivery.attempts == 1
    # Put back unattempted (shutdown): neither the count nor the last error changes.
    await spool.record([Outcome(qid, "a@nhs.net", Q, count_attempt=False)])
    [state] = (await spool.get(qid)).recipients
    assert (state.status, state.attempts, state.last_error) == (Q, 1, "451 4.4.1 timeout")
    [delivery] = await spool.claim_due(time.time(), 10)
    await spool.record(
        [Outcome(qid, "a@nhs.net", RcptStatus.DEFERRED, "421 busy", time.time() + 60)]
    )
    [state] = (await spool.get(qid)).recipients
    assert (state.status, state.attempts, state.last_error) == (RcptStatus.DEFERRED, 2, "421 busy")


async def test_claim_oldest_first_across_queued_and_deferred(spool):
    old = await spool.store(msg("old@nhs.net"))
    await spool.claim_due(time.time(), 10)
    await spool.record([Outcome(old, "old@nhs.net", RcptStatus.DEFERRED, "451", next_attempt=1.0)])
    ids = [await spool.store(msg(f"r{i}@nhs.net")) for i in range(3)]
    assert ids == sorted(ids)
    claimed = await spool.claim_due(time.time(), 3)
    assert [d.queue_id for d in claimed] == [old, ids[0], ids[1]]
    assert [d.queue_id for d in await spool.claim_due(time.time(), 3)] == [ids[2]]


async def test_flush_makes_deferred_due(spool):
    qid = await spool.store(msg("a@nhs.net", "b@nhs.net"))
    later = time.time() + 7200
    await spool.claim_due(time.time(), 10)
    await spool.record(
        [Outcome(qid, r, RcptStatus.DEFERRED, "451", later) for r in ("a@nhs.net", "b@nhs.net")]
    )
    assert await spool.claim_due(time.time(), 10) == []
    assert await spool.flush() == 2
    assert await spool.flush() == 0
    assert await spool.next_due() <= time.time()
    assert len(await spool.claim_due(time.time(), 10)) == 2


async def test_delete_whatever_the_state(spool):
    held = await spool.store(msg(rcpt("x@gmail.com", H)))
    busy = await spool.store(msg("a@nhs.net"))
    await spool.claim_due(time.time(), 10)
    assert (await spool.delete(held, None, BY_ALICE)).removed
    assert (await spool.delete(busy, None, BY_ALICE)).removed
    assert not (await spool.delete(busy, None, BY_ALICE)).found
    # A late result for a deleted message changes nothing and does not fail.
    await spool.record([Outcome(busy, "a@nhs.net", RcptStatus.DELIVERED)])
    counts = await spool.counts()
    assert counts["messages"] == 0 and counts["done"] == 0 and counts[D] == 0


async def test_list_get_and_counts(spool):
    a = await spool.store(
        msg(
            "a@nhs.net",
            "b@nhs.net",
            sender="",
            auth_user="jo",
            sensitivity="OFFICIAL-SENSITIVE in subject",
            received=1_700_000_000.5,
        )
    )
    b = await spool.store(msg(rcpt("z@gmail.com", H), "c@nhs.net"))
    c = await spool.store(msg("d@nhs.net"))
    assert [m.queue_id for m in await spool.list_messages()] == [a, b, c]
    assert [m.queue_id for m in await spool.list_messages(limit=2)] == [a, b]
    assert [m.queue_id for m in await spool.list_messages(status=H)] == [b]
    assert await spool.list_messages(status=RcptStatus.DEFERRED) == []

    info = await spool.get(a)
    assert (info.sender, info.auth_user, info.client) == ("", "jo", "127.0.0.1:5000 helo=pc1")
    assert (info.received, info.size) == (1_700_000_000.5, len(b"Subject: hi\r\n\r\nbody\r\n"))
    assert info.sensitivity == "OFFICIAL-SENSITIVE in subject"
    assert [(r.rcpt, r.status, r.reason) for r in info.recipients] == [
        ("a@nhs.net", Q, "reason for a@nhs.net"),
        ("b@nhs.net", Q, "reason for b@nhs.net"),
    ]
    assert [r.rcpt for r in (await spool.get(b)).recipients] == ["z@gmail.com", "c@nhs.net"]
    assert await spool.get("0000000000000000") is None

    counts = await spool.counts()
    assert counts == {
        "queued": 4,
        "delivering": 0,
        "delivered": 0,
        "deferred": 0,
        "bounced": 0,
        "held": 1,
        "handed-off": 0,
        "messages": 3,
        "done": 0,
    }


async def test_queue_id_chosen_before_storing(spool):
    qid = new_queue_id()  # e.g. for the Received: header the gateway adds
    assert await spool.store(msg("a@nhs.net", queue_id=qid)) == qid
    assert (await spool.get(qid)).recipients[0].rcpt == "a@nhs.net"
    with pytest.raises(SpoolError, match="UNIQUE"):
        await spool.store(msg("b@nhs.net", queue_id=qid))
    with pytest.raises(ValueError, match="not a queue id"):
        await spool.store(msg("b@nhs.net", queue_id="../../etc/passwd"))
    assert (await spool.counts())["messages"] == 1


def test_queue_ids_sortable_unique_and_readable():
    ids = [new_queue_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(re.fullmatch(r"[0-9A-Z]{16}", i) for i in ids)
    # The time prefix alone orders ids from different milliseconds.
    assert new_queue_id(1_000_000.0)[:10] < new_queue_id(2_000_000_000.0)[:10]


async def test_concurrent_stores_share_commits(spool):
    messages = [msg(f"r{i}@nhs.net", data=f"message {i}\r\n".encode() * 50) for i in range(200)]
    ids = await asyncio.gather(*(spool.store(m) for m in messages))
    assert len(set(ids)) == 200
    assert spool.stats.ops_committed >= 200
    assert spool.stats.commits <= 50, f"{spool.stats.commits} commits for 200 stores"
    datas = await asyncio.gather(*(spool.message_data(i) for i in ids))
    assert datas == [m.data for m in messages]
    assert (await spool.counts())["messages"] == 200


async def test_one_bad_op_in_a_batch_fails_alone(spool, tmp_path):
    # Hold SQLite's write lock from outside so every request below queues up behind it
    # and the writer has to run them as (at most) two batches.
    blocker = sqlite3.connect(tmp_path / "spool.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    commits = spool.stats.commits
    messages = [msg(f"r{i}@nhs.net") for i in range(20)]
    messages[10] = msg("dup@nhs.net", "dup@nhs.net")  # primary key (queue_id, rcpt)
    pending = asyncio.gather(*(spool.store(m) for m in messages), return_exceptions=True)
    await asyncio.sleep(0.2)
    blocker.execute("ROLLBACK")
    blocker.close()
    results = await pending
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and results[10] is errors[0]
    assert isinstance(errors[0], SpoolError)
    assert isinstance(errors[0].__cause__, sqlite3.IntegrityError)
    assert spool.stats.commits - commits <= 2
    assert (await spool.counts())["messages"] == 19
    stored = [await spool.get(r) for i, r in enumerate(results) if i != 10]
    assert [m.recipients[0].rcpt for m in stored] == [f"r{i}@nhs.net" for i in range(20) if i != 10]
    assert not [m for m in await spool.list_messages() if m.recipients[0].rcpt == "dup@nhs.net"]


async def test_invalid_requests_refused_before_queueing(spool):
    with pytest.raises(ValueError, match="at least one recipient"):
        await spool.store(msg())
    with pytest.raises(ValueError, match="not queued/held"):
        await spool.store(msg(rcpt("a@nhs.net", RcptStatus.DELIVERED)))
    with pytest.raises(ValueError, match="not an outcome"):
        await spool.record([Outcome("X", "a@nhs.net", H)])
    assert spool.stats.commits == 0


CHILD_STORES = """
    import asyncio, sys
    from securemail.core.levels import TlsLevel
    from securemail.gateway.spool import NewMessage, NewRecipient, RcptStatus, SqliteSpool

    async def main(path):
        spool = SqliteSpool(path)  # synchronous=FULL
        await spool.open()
        async def worker(w):
            for i in range(10**6):
                rcpts = tuple(NewRecipient(f"w{w}.{i}.{n}@nhs.net", "nhs.net", RcptStatus.QUEUED,
                                           TlsLevel.VERIFIED, "secure") for n in range(2))
                data = f"worker {w} message {i}\\r\\n".encode() * 100
                qid = await spool.store(NewMessage("s@example.nhs.uk", rcpts, data))
                sys.stdout.write(f"{qid} {w} {i}\\n")
                sys.stdout.flush()
        await asyncio.gather(*(worker(w) for w in range(16)))

    asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.timeout(60)
async def test_acknowledged_messages_survive_sigkill(tmp_path):
    path = tmp_path / "spool.db"
    child = run_child(CHILD_STORES, path)
    lines = []
    while len(lines) < 150:
        line = child.stdout.readline()
        assert line, "child died before storing 150 messages"
        lines.append(line)
    child.send_signal(signal.SIGKILL)
    lines += child.stdout.read().splitlines(keepends=True)  # acknowledged before it died
    child.wait()
    assert child.returncode == -signal.SIGKILL
    acked = [line.split() for line in lines if line.endswith(b"\n")]

    spool = SqliteSpool(path)
    await spool.open()
    try:
        for qid, w, i in acked:
            qid, w, i = qid.decode(), w.decode(), i.decode()
            info = await spool.get(qid)
            assert info is not None, f"{qid} was acknowledged but is lost"
            assert [r.rcpt for r in info.recipients] == [f"w{w}.{i}.{n}@nhs.net" for n in range(2)]
            assert await spool.message_data(qid) == f"worker {w} message {i}\r\n".encode() * 100
        assert (await spool.counts())["messages"] >= len(acked)
    finally:
        await spool.close()


CHILD_CLAIMS = """
    import asyncio, os, signal, sys, time
    from securemail.gateway.spool import SqliteSpool

    async def main(path):
        spool = SqliteSpool(path)
        await spool.open()
        claimed = await spool.claim_due(time.time(), 4)
        print(len(claimed), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.timeout(60)
async def test_claims_of_a_killed_process_are_recovered(tmp_path):
    path = tmp_path / "spool.db"
    spool = SqliteSpool(path, synchronous="NORMAL")
    await spool.open()
    for i in range(6):
        await spool.store(msg(f"r{i}@nhs.net"))
    await spool.close()

    child = run_child(CHILD_CLAIMS, path)
    out, _ = child.communicate(timeout=30)
    assert (out, child.returncode) == (b"4\n", -signal.SIGKILL)

    spool = SqliteSpool(path)
    await spool.open()
    try:
        assert spool.recovered == 4
        counts = await spool.counts()
        assert (counts[Q], counts[D]) == (6, 0)
        assert all(r.attempts == 0 for m in await spool.list_messages() for r in m.recipients)
        assert len(await spool.claim_due(time.time(), 10)) == 6
    finally:
        await spool.close()
    assert sorted(p.name for p in tmp_path.iterdir() if "-owner-" in p.name) == []


async def test_second_instance_does_not_steal_live_claims(spool, tmp_path):
    held = await spool.store(msg(rcpt("x@gmail.com", H)))
    busy = [await spool.store(msg(f"r{i}@nhs.net")) for i in range(2)]
    assert len(await spool.claim_due(time.time(), 10)) == 2

    cli = SqliteSpool(tmp_path / "spool.db", synchronous="NORMAL")
    await cli.open()
    try:
        assert cli.recovered == 0  # the gateway is alive: its deliveries stay its own
        assert [m.queue_id for m in await cli.list_messages()] == [held, *busy]
        # Both write at once: WAL and busy_timeout let them take turns.
        results = await asyncio.gather(
            cli.release(held, None, BY_ALICE),
            *(spool.store(msg(f"more{i}@nhs.net")) for i in range(50)),
            *(cli.list_messages(status=D) for _ in range(5)),
        )
        assert results[0].count == 1
        assert all(len(r) == 2 for r in results[51:])
        claimed = await spool.claim_due(time.time(), 100)
        assert {d.queue_id for d in claimed} >= {held}
        assert len(claimed) == 51
        await spool.record([Outcome(busy[0], "r0@nhs.net", RcptStatus.DELIVERED)])
        counts = await cli.counts()
        assert (counts["messages"], counts["done"], counts[D]) == (52, 1, 52)
    finally:
        await cli.close()


CHILD_OPERATOR = """
    import asyncio, json, sys
    from securemail.gateway.spool import Decision, RcptStatus, SqliteSpool

    async def main(path, queue_id):
        spool = SqliteSpool(path)
        await spool.open()
        released = (await spool.release(queue_id, None, Decision("bob", "ok", 1.0))).count
        held = await spool.list_messages(status=RcptStatus.HELD)
        print(json.dumps({"recovered": spool.recovered, "released": released,
                          "held": [m.queue_id for m in held], "counts": await spool.counts()}))
        await spool.close()

    asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.timeout(60)
async def test_operator_process_works_beside_the_gateway(spool, tmp_path):
    held = [await spool.store(msg(rcpt(f"h{i}@gmail.com", H))) for i in range(2)]
    await spool.store(msg("a@nhs.net"))
    await spool.claim_due(time.time(), 10)
    child = run_child(CHILD_OPERATOR, tmp_path / "spool.db", held[0])
    storing = asyncio.gather(*(spool.store(msg(f"m{i}@nhs.net")) for i in range(100)))
    out, _ = await asyncio.to_thread(child.communicate, timeout=30)
    await storing
    report = json.loads(out)
    assert child.returncode == 0
    assert report["recovered"] == 0 and report["released"] == 1
    assert report["held"] == [held[1]]
    assert report["counts"]["delivering"] == 1
    assert {d.queue_id for d in await spool.claim_due(time.time(), 200)} >= {held[0]}
    assert (await spool.counts())[D] == 102


async def test_claims_left_by_a_closed_instance_are_recovered(tmp_path):
    path = tmp_path / "spool.db"
    first = SqliteSpool(path, synchronous="NORMAL")
    await first.open()
    await first.store(msg("a@nhs.net", "b@nhs.net"))
    await first.claim_due(time.time(), 10)
    await first.close()  # without recording: e.g. the queue manager was cancelled
    second = SqliteSpool(path, synchronous="NORMAL")
    await second.open()
    assert second.recovered == 2
    assert (await second.counts())[Q] == 2
    await second.close()


async def test_close_commits_pending_requests_then_refuses(tmp_path):
    path = tmp_path / "spool.db"
    spool = SqliteSpool(path, synchronous="NORMAL")
    with pytest.raises(SpoolClosedError, match="not open"):
        await spool.store(msg("a@nhs.net"))
    await spool.open()
    tasks = [asyncio.create_task(spool.store(msg(f"r{i}@nhs.net"))) for i in range(50)]
    await asyncio.sleep(0)  # each task has queued its request
    await spool.close()
    ids = await asyncio.gather(*tasks)
    with pytest.raises(SpoolClosedError, match="closed"):
        await spool.store(msg("a@nhs.net"))
    with pytest.raises(SpoolClosedError):
        await spool.counts()
    with pytest.raises(RuntimeError, match="already opened"):
        await spool.open()
    await spool.close()  # idempotent
    await SqliteSpool(path).close()  # never opened

    again = SqliteSpool(path, synchronous="NORMAL")
    await again.open()
    assert [m.queue_id for m in await again.list_messages()] == sorted(ids)
    await again.close()


async def test_newer_schema_refused(tmp_path):
    path = tmp_path / "spool.db"
    spool = SqliteSpool(path)
    await spool.open()
    await spool.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SpoolError, match="schema version 99"):
        await SqliteSpool(path).open()
    with sqlite3.connect(path) as db:  # the version is PRAGMA user_version since v2
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
        db.execute("PRAGMA user_version = 5")
    with pytest.raises(SpoolError, match="schema version 5; this securemail reads version 4"):
        await SqliteSpool(path).open()
    with pytest.raises(ValueError, match="synchronous"):
        SqliteSpool(path, synchronous="SOMETIMES")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://mail@db/spool", "postgresql:// is not supported yet"),
        ("postgres://db/spool", "postgresql:// is not supported yet"),
        ("mysql://db/spool", "expected sqlite:///relative/path.db"),
        ("sqlite://host/spool.db", "expected sqlite:///relative/path.db"),
        ("sqlite:///", "does not name a database file"),
        ("sqlite:///:memory:", "does not name a database file"),
        ("var/spool.db", "expected sqlite:///"),
    ],
)
def test_bad_spool_urls(url, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        open_spool(url)
    assert "\n" not in str(err.value) and str(err.value).startswith("spool.url: ")


async def test_spool_urls_resolve_paths(tmp_path, monkeypatch):
    assert spool_path("sqlite:////srv/mail/spool.db") == Path("/srv/mail/spool.db")
    assert spool_path("sqlite:///var/spool.db", base=tmp_path) == tmp_path / "var/spool.db"
    monkeypatch.chdir(tmp_path)
    assert spool_path("sqlite:///q.db") == tmp_path / "q.db"

    spool = open_spool("sqlite:///var/spool.db", base=tmp_path / "etc")
    assert isinstance(spool, SqliteSpool) and spool.synchronous == "FULL"
    await spool.open()
    await spool.store(msg("a@nhs.net"))
    await spool.close()
    db = tmp_path / "etc/var/spool.db"
    assert db.is_file()
    assert db.stat().st_mode & 0o777 == 0o600  # mail is confidential
