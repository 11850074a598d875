"""Operator decisions in the spool: hold, release, delete, reveal, and their history.

Each decision changes the queue and writes its history row in one transaction; the
history outlives the message, is logged once, and is pruned by age when the spool opens.
"""

import sqlite3
import time

import pytest

from securemail.core.levels import TlsLevel
from securemail.gateway.spool import (
    MOVES_FROM,
    Action,
    Decision,
    NewMessage,
    NewRecipient,
    Outcome,
    RcptStatus,
    SqliteSpool,
)
from securemail.gateway.spool.store import OPERATOR_MAX, REASON_MAX

Q, D, H = RcptStatus.QUEUED, RcptStatus.DELIVERING, RcptStatus.HELD


def decided(reason="checked with the IG lead", operator="alice", at=None):
    return Decision(operator, reason, time.time() if at is None else at)


def rcpt(address, status=Q, tls=TlsLevel.VERIFIED):
    return NewRecipient(address, address.rpartition("@")[2], status, tls, f"policy: {address}")


def msg(*recipients, received=0.0):
    rcpts = tuple(rcpt(r) if isinstance(r, str) else r for r in recipients)
    return NewMessage("jo@example.nhs.uk", rcpts, b"Subject: hi\r\n\r\nbody\r\n", received=received)


async def states(spool, qid):
    info = await spool.get(qid)
    return {r.rcpt: r.status for r in info.recipients}


async def test_release_keeps_each_level_and_writes_one_row_for_the_message(spool):
    qid = await spool.store(
        msg(rcpt("x@gmail.com", H, TlsLevel.VERIFIED), rcpt("y@gmail.com", H, TlsLevel.DANE),
            "a@nhs.net")
    )  # fmt: skip
    change = await spool.release(qid, None, decided())
    assert (change.action, change.found, change.changed) == (
        Action.RELEASE, True, ("x@gmail.com", "y@gmail.com")
    )  # fmt: skip
    assert change.unmoved == (("a@nhs.net", Q),) and not change.removed
    claimed = {d.rcpt: d.tls for d in await spool.claim_due(time.time(), 10)}
    # The release rule: each keeps the level its decision gave, never weakened.
    assert claimed == {
        "x@gmail.com": TlsLevel.VERIFIED, "y@gmail.com": TlsLevel.DANE,
        "a@nhs.net": TlsLevel.VERIFIED,
    }  # fmt: skip
    [entry] = (await spool.get(qid)).history
    assert (entry.queue_id, entry.rcpt, entry.action, entry.operator, entry.reason) == (
        qid, "", Action.RELEASE, "alice", "checked with the IG lead"
    )  # fmt: skip


async def test_hold_named_recipients_never_a_delivering_one(spool):
    qid = await spool.store(msg("a@nhs.net", "b@nhs.net", "c@nhs.net"))
    [first, *_] = await spool.claim_due(time.time(), 1)
    assert first.rcpt == "a@nhs.net"
    change = await spool.hold(qid, ["a@nhs.net", "b@nhs.net"], decided("recipient query"))
    # a is on the wire: its attempt's result must be recorded, so it is not held.
    assert change.changed == ("b@nhs.net",)
    assert change.unmoved == (("a@nhs.net", D),)
    assert await states(spool, qid) == {"a@nhs.net": D, "b@nhs.net": H, "c@nhs.net": Q}
    refused = await spool.hold(qid, ["a@nhs.net"], decided())
    assert refused.changed == () and refused.unmoved == (("a@nhs.net", D),)
    history = await spool.history(qid)
    assert [(h.rcpt, h.action) for h in history] == [("b@nhs.net", Action.HOLD)]  # no row
    # A held recipient is never claimed; its attempt result for a still goes through.
    await spool.record([Outcome(qid, "a@nhs.net", RcptStatus.DELIVERED, "250 ok")])
    assert [d.rcpt for d in await spool.claim_due(time.time() + 10**6, 10)] == ["c@nhs.net"]


async def test_deferred_can_be_held_and_released(spool):
    qid = await spool.store(msg("a@nhs.net"))
    await spool.claim_due(time.time(), 1)
    later = time.time() + 3600
    await spool.record([Outcome(qid, "a@nhs.net", RcptStatus.DEFERRED, "451 busy", later)])
    assert (await spool.hold(qid, None, decided())).changed == ("a@nhs.net",)
    [state] = (await spool.get(qid)).recipients
    assert (state.status, state.attempts, state.last_error) == (H, 1, "451 busy")
    assert (await spool.release(qid, None, decided())).count == 1
    [delivery] = await spool.claim_due(time.time(), 10)  # due at once, not at `later`
    assert delivery.attempts == 1


async def test_unknown_recipient_changes_nothing(spool):
    qid = await spool.store(msg(rcpt("x@gmail.com", H), rcpt("y@gmail.com", H)))
    change = await spool.release(qid, ["x@gmail.com", "typo@gmail.com"], decided())
    assert change.unknown == ("typo@gmail.com",) and change.changed == ()
    assert await states(spool, qid) == {"x@gmail.com": H, "y@gmail.com": H}
    assert await spool.history(qid) == []
    missing = await spool.release("0000000000000000", None, decided())
    assert not missing.found and missing.changed == ()


async def test_delete_some_recipients_then_the_last(spool):
    qid = await spool.store(msg("a@nhs.net", "b@nhs.net", rcpt("x@gmail.com", H)))
    first = await spool.delete(qid, ["x@gmail.com"], decided("sent in error"))
    assert (first.changed, first.removed) == (("x@gmail.com",), False)
    assert set(await states(spool, qid)) == {"a@nhs.net", "b@nhs.net"}
    await spool.claim_due(time.time(), 10)
    await spool.record([Outcome(qid, "a@nhs.net", RcptStatus.DELIVERED, "250 ok")])
    # Deleting b leaves only a delivered recipient: the message is done and goes.
    second = await spool.delete(qid, ["b@nhs.net"], decided("sent in error"))
    assert (second.changed, second.removed) == (("b@nhs.net",), True)
    assert await spool.get(qid) is None and await spool.message_data(qid) is None
    assert (await spool.counts())["done"] == 1
    assert [(h.rcpt, h.action) for h in await spool.history(qid)] == [
        ("x@gmail.com", Action.DELETE), ("b@nhs.net", Action.DELETE)
    ]  # fmt: skip


async def test_the_audit_row_survives_the_delete_and_the_delivery(spool):
    deleted = await spool.store(msg(rcpt("x@gmail.com", H)))
    change = await spool.delete(deleted, None, decided("duplicate of an earlier referral"))
    assert change.removed and change.changed == ("x@gmail.com",)
    assert await spool.get(deleted) is None
    [entry] = await spool.history(deleted)
    assert (entry.action, entry.rcpt, entry.reason) == (
        Action.DELETE, "", "duplicate of an earlier referral"
    )  # fmt: skip
    with sqlite3.connect(spool.path) as db:  # no foreign key: nothing can cascade it away
        assert (
            "REFERENCES"
            not in db.execute("SELECT sql FROM sqlite_master WHERE name = 'history'").fetchone()[0]
        )

    delivered = await spool.store(msg(rcpt("y@gmail.com", H)))
    await spool.release(delivered, None, decided())
    [d] = await spool.claim_due(time.time(), 10)
    await spool.record([Outcome(delivered, d.rcpt, RcptStatus.DELIVERED, "250 ok")])
    assert await spool.get(delivered) is None
    assert [h.action for h in await spool.history(delivered)] == [Action.RELEASE]


@pytest.mark.parametrize("action", [Action.HOLD, Action.RELEASE, Action.DELETE])
async def test_each_action_moves_exactly_the_states_it_declares(spool, action):
    """MOVES_FROM is the table the CLI counts with; the spool must change just those."""
    qid = await spool.store(msg(*(rcpt(f"{status.value}@nhs.net") for status in RcptStatus)))
    await spool.claim_due(time.time(), 100)
    # Every recipient into the state it is named after, by the spool's own verbs.
    outcome = {
        "delivered": RcptStatus.DELIVERED,
        "bounced": RcptStatus.BOUNCED,
        "deferred": RcptStatus.DEFERRED,
        "queued": Q,
        "held": Q,
        "handed-off": Q,
    }
    await spool.record(
        [Outcome(qid, f"{name}@nhs.net", status, "x", time.time() + 999, count_attempt=False)
         for name, status in outcome.items()]
    )  # fmt: skip
    await spool.hold(qid, ["held@nhs.net"], decided())  # queued -> held
    await spool.hand_off(qid, ["handed-off@nhs.net"], "portal", "sent")
    before = await states(spool, qid)
    assert before == {f"{s.value}@nhs.net": s for s in RcptStatus}
    change = await {
        Action.HOLD: spool.hold, Action.RELEASE: spool.release, Action.DELETE: spool.delete
    }[action](qid, list(before), decided())  # fmt: skip
    assert {before[r] for r in change.changed} == MOVES_FROM[action]
    assert {s for _, s in change.unmoved} == set(RcptStatus) - MOVES_FROM[action]
    if action is Action.DELETE:
        assert change.removed and await spool.get(qid) is None
    else:
        after = await states(spool, qid)
        target = H if action is Action.HOLD else Q
        assert all(after[r] is target for r in change.changed)
        assert all(after[r] is s for r, s in change.unmoved)


async def test_reveal_returns_the_data_only_with_a_row(spool):
    qid = await spool.store(msg("a@nhs.net"))
    assert await spool.reveal(qid, decided("GP asked")) == b"Subject: hi\r\n\r\nbody\r\n"
    assert [(h.action, h.reason) for h in await spool.history(qid)] == [(Action.REVEAL, "GP asked")]
    assert await spool.reveal("0000000000000000", decided()) is None
    assert await spool.history("0000000000000000") == []


async def test_unlogged_entries_are_handed_over_once(spool, tmp_path):
    qid = await spool.store(msg(rcpt("x@gmail.com", H), rcpt("y@gmail.com", H)))
    await spool.release(qid, ["x@gmail.com"], decided("one"))
    await spool.release(qid, ["y@gmail.com"], decided("two"))
    other = SqliteSpool(tmp_path / "spool.db", synchronous="NORMAL")  # e.g. a second gateway
    await other.open()
    try:
        first = await spool.claim_unlogged(1)
        assert [e.reason for e in first] == ["one"]
        assert [e.reason for e in await other.claim_unlogged(10)] == ["two"]
        assert await spool.claim_unlogged(10) == [] and await other.claim_unlogged(10) == []
        await other.delete(qid, None, decided("three"))
        assert [e.reason for e in await spool.claim_unlogged(10)] == ["three"]
    finally:
        await other.close()


async def test_old_decisions_are_pruned_when_the_spool_opens(tmp_path):
    path = tmp_path / "spool.db"
    spool = SqliteSpool(path, synchronous="NORMAL")
    await spool.open()
    qid = await spool.store(msg(rcpt("x@gmail.com", H), rcpt("y@gmail.com", H)))
    await spool.release(qid, ["x@gmail.com"], decided("long ago", at=time.time() - 31 * 86400))
    await spool.release(qid, ["y@gmail.com"], decided("last week", at=time.time() - 7 * 86400))
    await spool.close()
    kept = SqliteSpool(path, synchronous="NORMAL")  # no audit_days: nothing pruned
    await kept.open()
    assert len(await kept.history(qid)) == 2
    await kept.close()
    pruned = SqliteSpool(path, synchronous="NORMAL", audit_days=30)
    await pruned.open()
    try:
        assert [h.reason for h in await pruned.history(qid)] == ["last week"]
    finally:
        await pruned.close()
    with pytest.raises(ValueError, match="audit_days"):
        SqliteSpool(path, audit_days=0)


@pytest.mark.parametrize(
    ("operator", "reason", "message"),
    [
        ("", "why", "operator must not be empty"),
        ("alice", "  ", "reason must not be empty"),
        ("alice", "line one\nforged line", "one line without control characters"),
        ("alice", "\x1b[2Jclear", "one line without control characters"),
        ("al\u202eice", "why", "one line without control characters"),
        ("a" * (OPERATOR_MAX + 1), "why", f"at most {OPERATOR_MAX}"),
        ("alice", "r" * (REASON_MAX + 1), f"at most {REASON_MAX}"),
    ],
)
def test_a_decision_is_checked_when_made(operator, reason, message):
    with pytest.raises(ValueError, match=message):
        Decision(operator, reason, 1.0)
    assert Decision("a" * OPERATOR_MAX, "r" * REASON_MAX, 1.0).operator == "a" * OPERATOR_MAX


async def test_list_filters_are_exact_per_recipient(spool):
    now = time.time()
    old = await spool.store(
        msg(rcpt("x@gmail.com", H), "a@nhs.net", rcpt("z@sub.gmail.com", H), received=now - 7200)
    )
    new = await spool.store(msg(rcpt("w@gmail.com", H), received=now))
    [claimed] = await spool.claim_due(time.time(), 1)
    await spool.record([Outcome(old, claimed.rcpt, RcptStatus.DELIVERED, "250 ok")])

    def shown(found):
        return {m.queue_id: [r.rcpt for r in m.recipients] for m in found}

    # Only the held recipients, not their delivered neighbour (it was shown before).
    assert shown(await spool.list_messages(status=H)) == {
        old: ["x@gmail.com", "z@sub.gmail.com"], new: ["w@gmail.com"]
    }  # fmt: skip
    assert shown(await spool.list_messages(status=RcptStatus.DELIVERED)) == {old: ["a@nhs.net"]}
    assert shown(await spool.list_messages(domain="gmail.com")) == {
        old: ["x@gmail.com"], new: ["w@gmail.com"]
    }  # fmt: skip
    assert shown(await spool.list_messages(received_before=now - 3600)) == {
        old: ["x@gmail.com", "a@nhs.net", "z@sub.gmail.com"]
    }  # fmt: skip
    assert shown(
        await spool.list_messages(status=H, domain="gmail.com", received_before=now - 3600)
    ) == {old: ["x@gmail.com"]}
    assert await spool.list_messages(domain="nowhere.test") == []
    assert shown(await spool.list_messages(after=old)) == {new: ["w@gmail.com"]}
    assert shown(await spool.list_messages(limit=1)) == {
        old: ["x@gmail.com", "a@nhs.net", "z@sub.gmail.com"]
    }  # fmt: skip
