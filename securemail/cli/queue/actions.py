"""``securemail queue hold|release|delete TARGET [RCPT…] --reason TEXT``: operator decisions.

TARGET is a queue id (without RCPT: every recipient of that message) or ``ALL``, whose
recipients ``--status``, ``--rcpt-domain`` and ``--older-than`` select. Like postsuper,
and unlike it in two ways: every decision names who and why (``--by``, ``--reason``),
kept in the spool's history with the change itself and logged by the gateway; and
``ALL`` first says how many recipients it would change and asks (``--yes`` answers for
a script, and without a terminal nothing is changed unless it is given).

Which states an action moves is the spool's table (``store.MOVES_FROM``), read here to
count and there to change, so the question asked is about what will be done.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from securemail.cli.common import ConfigOpt, JsonOpt, err, plural, print_json, say, text, warn
from securemail.cli.queue.shared import (
    ByOpt,
    DomainOpt,
    Filters,
    OlderOpt,
    ReasonOpt,
    StatusOpt,
    decision,
    filters,
    pages,
    with_spool,
)
from securemail.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from securemail.gateway.spool import Action, Change, Decision, Spool

    Apply = Callable[[str, Sequence[str] | None, Decision], Awaitable[Change]]

ALL = "ALL"
TargetArg = Annotated[
    str,
    typer.Argument(
        metavar="TARGET",
        help="A queue ID, or ALL (then --status, --rcpt-domain, --older-than select).",
    ),
]
RcptArgs = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="RCPT",
        help="Only these recipients of the message (default: all of them).",
        show_default=False,
    ),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Act on ALL without asking.")]
_PAST = {"hold": "held", "release": "released", "delete": "deleted"}


def queue_hold(
    target: TargetArg,
    rcpts: RcptArgs = None,
    reason: ReasonOpt = None,
    by: ByOpt = None,
    yes: YesOpt = False,
    status: StatusOpt = None,
    rcpt_domain: DomainOpt = None,
    older_than: OlderOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Hold queued and deferred recipients (postsuper -h) until an operator releases
    them. A recipient being delivered is left alone: its attempt is on the wire."""
    _decide(
        "hold", target, rcpts, reason, by, yes, (status, rcpt_domain, older_than), config, json_out
    )


def queue_release(
    target: TargetArg,
    rcpts: RcptArgs = None,
    reason: ReasonOpt = None,
    by: ByOpt = None,
    yes: YesOpt = False,
    status: StatusOpt = None,
    rcpt_domain: DomainOpt = None,
    older_than: OlderOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Release held recipients for delivery (postsuper -H). Each keeps the TLS level its
    policy decision gave: held sensitive mail goes out verified, or waits."""
    _decide(
        "release",
        target,
        rcpts,
        reason,
        by,
        yes,
        (status, rcpt_domain, older_than),
        config,
        json_out,
    )


def queue_delete(
    target: TargetArg,
    rcpts: RcptArgs = None,
    reason: ReasonOpt = None,
    by: ByOpt = None,
    yes: YesOpt = False,
    status: StatusOpt = None,
    rcpt_domain: DomainOpt = None,
    older_than: OlderOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete recipients whatever their state, without a DSN (postsuper -d); the message
    goes with its last recipient. Its history stays (queue show ID)."""
    _decide(
        "delete",
        target,
        rcpts,
        reason,
        by,
        yes,
        (status, rcpt_domain, older_than),
        config,
        json_out,
    )


def _decide(
    name: str,
    target: str,
    rcpts: list[str] | None,
    reason: str | None,
    by: str | None,
    yes: bool,
    options: tuple[str | None, str | None, str | None],
    config: Path | None,
    json_out: bool,
) -> None:
    from securemail.gateway.spool import Action

    action = Action(name)
    made = decision(reason, by, doing=f"{name} mail")
    if target == ALL:
        if rcpts:
            raise InputError(f"RCPT arguments name recipients of one message; with {ALL}, "
                             "choose with --status, --rcpt-domain, --older-than")  # fmt: skip
        selected = filters(*options, time.time())
        changes = _bulk(action, made, selected, yes, config)
        # With filters the recipients are named to the spool (those counted), so one
        # left unmoved changed state meanwhile and is worth a word; without, it is
        # simply a recipient the action does not apply to.
        named = selected.any
    else:
        if any(option is not None for option in options):
            raise InputError(f"--status, --rcpt-domain and --older-than select recipients "
                             f"for {ALL}; after a queue ID, name the recipients")  # fmt: skip
        change = with_spool(
            config, lambda spool: _apply(spool, action)(target, rcpts or None, made)
        )
        named = bool(rcpts)
        _check(change, named=named)
        changes = [change]
    _report(action, made, changes, json_out, single=target != ALL, named=named)


def _apply(spool: Spool, action: Action) -> Apply:
    from securemail.gateway.spool import Action

    methods: dict[Action, Apply] = {
        Action.HOLD: spool.hold,
        Action.RELEASE: spool.release,
        Action.DELETE: spool.delete,
    }
    return methods[action]


def _check(change: Change, *, named: bool) -> None:
    """A decision about one message that changed nothing is a mistake to report (exit 2)."""
    from securemail.gateway.spool import MOVES_FROM, Action, RcptStatus

    qid = change.queue_id
    if not change.found:
        raise InputError(f"{qid}: no such message in the spool")
    if change.unknown:
        raise InputError(f"{qid}: not recipients of this message: "
                         f"{', '.join(change.unknown)}; nothing changed")  # fmt: skip
    if change.changed or change.removed:
        return
    busy = [rcpt for rcpt, status in change.unmoved if status is RcptStatus.DELIVERING]
    if busy and change.action is Action.HOLD:
        raise InputError(f"{qid}: not held: {', '.join(busy)} being delivered (an attempt is "
                         "on the wire; hold it once its result is recorded)")  # fmt: skip
    states = " or ".join(sorted(s.value for s in MOVES_FROM[change.action]))
    whom = f"those recipients are not {states}" if named else f"no {states} recipients"
    raise InputError(f"{qid}: {whom}: nothing to {change.action.value} "
                     f"(see 'securemail queue show {qid}')")  # fmt: skip


def _bulk(
    action: Action, made: Decision, selected: Filters, yes: bool, config: Path | None
) -> list[Change]:
    """Count what ``action`` would change among the selected recipients, ask, then
    change exactly those (never mail that arrived while the question was asked)."""
    from securemail.gateway.spool import MOVES_FROM

    moves = MOVES_FROM[action]

    async def plan(spool: Spool) -> list[tuple[str, tuple[str, ...]]]:
        chosen = []
        async for page in pages(spool, selected):
            for m in page:
                if movable := tuple(r.rcpt for r in m.recipients if r.status in moves):
                    chosen.append((m.queue_id, movable))
        return chosen

    chosen = with_spool(config, plan)
    if not chosen:
        return []
    count = sum(len(rcpts) for _, rcpts in chosen)
    if not yes:
        messages = plural(len(chosen), "message")
        _confirm(f"{action.value} {plural(count, 'recipient')} of {messages}?")

    async def act(spool: Spool) -> list[Change]:
        apply, changes = _apply(spool, action), []
        for start in range(0, len(chosen), 500):  # concurrent: group commit shares fsyncs
            changes += await asyncio.gather(
                *(apply(qid, rcpts if selected.any else None, made)
                  for qid, rcpts in chosen[start : start + 500])
            )  # fmt: skip
        return changes

    return with_spool(config, act)


def _confirm(question: str) -> None:
    if not sys.stdin.isatty():
        raise InputError(f"{question.rstrip('?')}: not confirmed; pass --yes to do it "
                         "without a terminal to ask on")  # fmt: skip
    err.print(text(f"{question} [y/N] "), end="")
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        err.print(text("nothing changed"))
        raise typer.Exit(1)


def _report(
    action: Action,
    made: Decision,
    changes: list[Change],
    json_out: bool,
    *,
    single: bool,
    named: bool,
) -> None:
    from securemail.gateway.spool import Action, RcptStatus

    count = sum(c.count for c in changes)
    messages = sum(1 for c in changes if c.changed or c.removed)
    if json_out:
        print_json(
            {
                "action": action.value,
                "operator": made.operator,
                "reason": made.reason,
                "at": made.at,
                "messages": messages,
                "recipients": count,
                "changes": [
                    {
                        "queue_id": c.queue_id,
                        "changed": list(c.changed),
                        "removed": c.removed,
                        "unmoved": [{"rcpt": r, "status": s.value} for r, s in c.unmoved],
                    }
                    for c in changes
                ],
            }
        )
        return
    past = _PAST[action.value]
    if single and not named and action is Action.DELETE:
        say(f"deleted {changes[0].queue_id}")
    elif single:
        say(f"{past} {plural(count, 'recipient')} of {changes[0].queue_id}")
        if changes[0].removed:
            say(f"{changes[0].queue_id}: no recipients left; the message is gone")
    elif count:
        say(f"{past} {plural(count, 'recipient')} of {plural(messages, 'message')}")
    else:
        say(f"no recipients to {action.value}")
    for c in changes:  # what changed since ALL counted (one message: refused in _check)
        if not c.found:
            warn(f"{c.queue_id}: left the spool meanwhile; nothing {past}")
        elif c.unknown:
            warn(f"{c.queue_id}: {', '.join(c.unknown)} left the spool meanwhile; "
                 f"nothing {past} in this message")  # fmt: skip
        for rcpt, status in c.unmoved:
            if status is RcptStatus.DELIVERING and action is Action.HOLD:
                warn(f"{c.queue_id} <{rcpt}>: being delivered, not held (an attempt is on "
                     "the wire; hold it once its result is recorded)")  # fmt: skip
            elif named:
                warn(f"{c.queue_id} <{rcpt}>: {status.value}, not {past}")
