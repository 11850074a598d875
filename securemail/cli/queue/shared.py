"""What the ``queue`` commands share: one short visit to the spool, the recipient filters
(``--status``, ``--rcpt-domain``, ``--older-than``), the operator's decision, and the
JSON and text shapes of messages and their history.

What the spool holds came from peers (envelope addresses, EHLO names, remote replies)
and from operators (names, reasons): every human line is built with ``common.text`` or
``common.say``, never printed raw.
"""

from __future__ import annotations

import getpass
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from securemail.config import load_config
from securemail.errors import InputError
from securemail.gateway.events import utc_stamp

if TYPE_CHECKING:
    from securemail.gateway.spool import Decision, HistoryEntry, MessageInfo, RcptStatus, Spool

T = TypeVar("T")

StatusOpt = Annotated[
    str | None, typer.Option("--status", help="Only recipients in this state, exactly.")
]
DomainOpt = Annotated[
    str | None,
    typer.Option("--rcpt-domain", help="Only recipients at this domain (not its subdomains)."),
]
OlderOpt = Annotated[
    str | None,
    typer.Option(
        "--older-than", help="Only messages received longer ago than this: 30m, 2h, 3d, 1w."
    ),
]
ReasonOpt = Annotated[
    str | None,
    typer.Option("--reason", help="Why: kept in the message's history and logged by the gateway."),
]
ByOpt = Annotated[
    str | None, typer.Option("--by", help="Who decided (default: the user running this).")
]

PAGE = 1000  # messages per read of a large queue
_AGE = re.compile(r"([1-9][0-9]{0,5})([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def with_spool(config: Path | None, action: Callable[[Spool], Awaitable[T]]) -> T:
    """Open the configured spool, do one thing, close it: each command is one short visit.

    A spool that does not exist is an error (``InputError``, exit 2), never created."""
    import asyncio

    from securemail.gateway.spool import open_spool, spool_path

    cfg = load_config(config)
    base = cfg.source.resolve().parent if cfg.source else None
    # Opening would create an empty spool: a wrong --config or directory would then
    # show "0 messages" as if the gateway's queue were empty.
    path = spool_path(cfg.spool.url, base=base)
    if not path.exists():
        raise InputError(f"{path}: no spool here (spool.url = {cfg.spool.url}); is this the "
                         "gateway's configuration and directory?")  # fmt: skip

    async def run() -> T:
        spool = open_spool(cfg.spool.url, base=base, audit_days=cfg.spool.audit_days)
        await spool.open()
        try:
            return await action(spool)
        finally:
            await spool.close()

    return asyncio.run(run())


def parse_age(text: str) -> float:
    """``30m`` as 1800.0 seconds. Strict: one positive whole number and one unit, so
    ``2h30m``, ``-1d``, ``1.5h`` or ``3 days`` are refused rather than half read."""
    match = _AGE.fullmatch(text)
    if match is None:
        raise InputError(
            f"--older-than {text!r}: expected a whole number and a unit (s, m, h, d or w), "
            "e.g. 30m, 2h, 3d"
        )
    return float(int(match[1]) * _SECONDS[match[2]])


@dataclass(frozen=True, slots=True)
class Filters:
    """Which recipients a listing or a bulk decision selects (None: no condition)."""

    status: RcptStatus | None = None
    domain: str | None = None
    received_before: float | None = None

    @property
    def any(self) -> bool:
        return (self.status, self.domain, self.received_before) != (None, None, None)


def filters(
    status: str | None, rcpt_domain: str | None, older_than: str | None, now: float
) -> Filters:
    """The options as ``Filters``, each checked (``InputError`` names the option)."""
    from securemail.core.addresses import AddressError, normalise_domain
    from securemail.gateway.spool import RcptStatus

    wanted = None
    if status is not None:
        try:
            wanted = RcptStatus(status)
        except ValueError:
            names = ", ".join(s.value for s in RcptStatus)
            raise InputError(f"--status {status!r}: expected one of {names}") from None
    domain = None
    if rcpt_domain is not None:
        try:  # as the gateway stored it: lower case, A-labels, no final dot
            domain = normalise_domain(rcpt_domain)
        except AddressError as exc:
            raise InputError(f"--rcpt-domain {rcpt_domain!r}: {exc}") from None
    before = None if older_than is None else now - parse_age(older_than)
    return Filters(wanted, domain, before)


async def pages(spool: Spool, selected: Filters) -> AsyncIterator[list[MessageInfo]]:
    """The selected messages, ``PAGE`` at a time, oldest first: memory stays bounded
    however long the queue is."""
    after = ""
    while True:
        page = await spool.list_messages(
            status=selected.status,
            domain=selected.domain,
            received_before=selected.received_before,
            after=after,
            limit=PAGE,
        )
        if not page:
            return
        yield page
        after = page[-1].queue_id


def operator_name() -> str:
    """Who a decision is recorded against unless ``--by`` says: the user running the
    command, or their uid where there is no name (a container's bare uid)."""
    try:
        return getpass.getuser()
    except Exception:  # OSError (3.13+) or KeyError: no name in the environment or passwd
        return str(os.getuid())


def decision(reason: str | None, by: str | None, *, doing: str) -> Decision:
    """The operator's decision from ``--reason`` and ``--by``, checked before the spool
    is opened: a missing, empty, multi-line or oversized value is exit 2 here."""
    from securemail.gateway.spool import Decision

    if reason is None:
        raise InputError(
            f"--reason is required: say why you {doing} (it is kept in the message's "
            "history and logged by the gateway)"
        )
    try:
        return Decision(operator_name() if by is None else by, reason, time.time())
    except ValueError as exc:
        raise InputError(str(exc)) from None


def history_line(entry: HistoryEntry) -> str:
    """``2026-11-30T14:02:11Z release by alice: checked with the IG lead`` (the
    recipient, when the decision was about one, after the action)."""
    whom = f" <{entry.rcpt}>" if entry.rcpt else ""
    return f"{utc_stamp(entry.at)} {entry.action.value}{whom} by {entry.operator}: {entry.reason}"


def history_json(entry: HistoryEntry) -> dict[str, object]:
    return {
        "at": entry.at,
        "action": entry.action.value,
        "rcpt": entry.rcpt,
        "operator": entry.operator,
        "reason": entry.reason,
    }


def message_json(m: MessageInfo) -> dict[str, object]:
    return {
        "queue_id": m.queue_id,
        "in_spool": True,
        "sender": m.sender,
        "received": m.received,
        "size": m.size,
        "client": m.client,
        "auth_user": m.auth_user,
        "sensitivity": m.sensitivity,
        "recipients": [
            {
                "rcpt": r.rcpt,
                "domain": r.domain,
                "status": r.status.value,
                "tls": r.tls.label,
                "reason": r.reason,
                "attempts": r.attempts,
                "next_attempt": r.next_attempt,
                "last_error": r.last_error,
            }
            for r in m.recipients
        ],
        "history": [history_json(h) for h in m.history],
    }
