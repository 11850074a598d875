"""``securemail queue list|show|flush|release|delete``: the spool, from outside the gateway.

Works while the gateway runs (the spool takes care of concurrent use). What the spool
holds came from peers: envelope addresses, the client's EHLO name, remote servers'
replies as the last error. All of it is shown through ``common.text``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.table import Table

from securemail.cli.common import ConfigOpt, JsonOpt, lines, out, print_json, say, text
from securemail.config import load_config
from securemail.errors import InputError

if TYPE_CHECKING:
    from securemail.gateway.spool import MessageInfo, Spool

T = TypeVar("T")

app = typer.Typer(
    rich_markup_mode=None, help="Inspect and manage the spool (works while the gateway runs)."
)


def _with_spool(config: Path | None, action: Callable[[Spool], Awaitable[T]]) -> T:
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
        spool = open_spool(cfg.spool.url, base=base)
        await spool.open()
        try:
            return await action(spool)
        finally:
            await spool.close()

    return asyncio.run(run())


@app.command("list")
def queue_list(
    status: Annotated[
        str | None, typer.Option("--status", help="Only recipients in this state.")
    ] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Messages in the spool, one row per recipient."""
    from securemail.gateway.spool import RcptStatus

    wanted = None
    if status is not None:
        try:
            wanted = RcptStatus(status)
        except ValueError:
            names = ", ".join(s.value for s in RcptStatus)
            raise InputError(f"--status {status!r}: expected one of {names}") from None
    messages = _with_spool(config, lambda spool: spool.list_messages(status=wanted))
    if json_out:
        for m in messages:
            print_json(_message_json(m))
        return
    table = Table(title=text(f"{len(messages)} messages"), expand=True)
    table.add_column("queue id / received", no_wrap=True)
    table.add_column("envelope", ratio=1, overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("last error / decision", ratio=2, overflow="fold")
    for m in messages:
        for r in m.recipients:
            table.add_row(
                lines(text(m.queue_id), text(_when(m.received))),
                lines(text(m.sender or "<>"), text(f"→ {r.rcpt}")),
                lines(text(r.status.value), text(f"{r.tls.label}, {r.attempts} tries")),
                text(r.last_error or r.reason),
            )
    out.print(table)


@app.command("show")
def queue_show(
    queue_id: Annotated[str, typer.Argument(help="Queue ID.")],
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One message: envelope, sensitivity and each recipient's state."""
    info = _with_spool(config, lambda spool: spool.get(queue_id))
    if info is None:
        raise InputError(f"{queue_id}: no such message in the spool")
    if json_out:
        print_json(_message_json(info))
        return
    say(f"{info.queue_id}  received {_when(info.received)}  size {info.size}")
    say(f"from <{info.sender}>  client {info.client}  user {info.auth_user or '-'}")
    say(f"sensitivity: {info.sensitivity or 'none'}")
    for r in info.recipients:
        say(f"  <{r.rcpt}> {r.status.value} tls={r.tls.label} attempts={r.attempts}")
        say(f"      decision: {r.reason}")
        if r.last_error:
            say(f"      last: {r.last_error}")


@app.command("flush")
def queue_flush(config: ConfigOpt = None) -> None:
    """Retry every deferred recipient now."""
    count = _with_spool(config, lambda spool: spool.flush())
    say(f"{count} recipients due now")


@app.command("release")
def queue_release(
    queue_id: Annotated[str, typer.Argument(help="Queue ID of a held message.")],
    config: ConfigOpt = None,
) -> None:
    """Release a held message for delivery (an operator's decision, logged)."""
    count = _with_spool(config, lambda spool: spool.release(queue_id))
    if not count:
        raise InputError(f"{queue_id}: no held recipients (see 'securemail queue show')")
    say(f"released {count} recipients of {queue_id}")


@app.command("delete")
def queue_delete(
    queue_id: Annotated[str, typer.Argument(help="Queue ID.")],
    config: ConfigOpt = None,
) -> None:
    """Delete a message from the spool, whatever its state."""
    if not _with_spool(config, lambda spool: spool.delete(queue_id)):
        raise InputError(f"{queue_id}: no such message in the spool")
    say(f"deleted {queue_id}")


def _message_json(m: MessageInfo) -> dict[str, object]:
    return {
        "queue_id": m.queue_id,
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
    }


def _when(epoch: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
