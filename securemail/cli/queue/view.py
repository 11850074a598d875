"""``securemail queue list|show|cat|flush``: what is in the spool, and what was decided.

Works while the gateway runs (the spool takes care of concurrent use). Nothing here
changes a recipient's state except ``flush`` (due now), and nothing here shows an NHS
number unless ``cat --reveal`` is asked for, with a reason, on the record.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from securemail.cli.common import (
    ConfigOpt,
    JsonOpt,
    lines,
    out,
    plain_line,
    plural,
    print_json,
    say,
    text,
)
from securemail.cli.queue.shared import (
    ByOpt,
    DomainOpt,
    OlderOpt,
    ReasonOpt,
    StatusOpt,
    decision,
    filters,
    history_json,
    history_line,
    message_json,
    pages,
    with_spool,
)
from securemail.errors import InputError
from securemail.gateway.events import utc_stamp

if TYPE_CHECKING:
    from securemail.gateway.spool import HistoryEntry, MessageInfo, Spool

QueueIdArg = Annotated[str, typer.Argument(help="Queue ID.")]


def queue_list(
    status: StatusOpt = None,
    rcpt_domain: DomainOpt = None,
    older_than: OlderOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Messages in the spool, one row per recipient (only the recipients the filters
    select: --status held shows held recipients, not their delivered neighbours)."""
    selected = filters(status, rcpt_domain, older_than, time.time())

    async def read(spool: Spool) -> list[MessageInfo]:
        found: list[MessageInfo] = []
        async for page in pages(spool, selected):
            if json_out:  # streamed: a large queue is never held in memory as JSON
                for m in page:
                    print_json(message_json(m))
            else:
                found += page
        return found

    messages = with_spool(config, read)
    if json_out:
        return
    if not messages:
        say("no recipients match" if selected.any else "the spool is empty")
        return
    rcpts = sum(len(m.recipients) for m in messages)
    title = f"{plural(len(messages), 'message')}, {plural(rcpts, 'recipient')}"
    table = Table(title=text(title), expand=True)
    # Fits 80 columns: ids and times never wrap, addresses end in "…" rather than push
    # the table wider, errors are cut short and fold (--json has everything whole).
    table.add_column("queue id / received", no_wrap=True)
    table.add_column("from / to", ratio=1, overflow="ellipsis", no_wrap=True)
    table.add_column("status / tls", min_width=10)
    table.add_column("last error / decision", ratio=1, overflow="fold")
    for m in messages:
        for r in m.recipients:
            table.add_row(
                lines(text(m.queue_id), text(utc_stamp(m.received))),
                lines(text(m.sender or "<>"), text(f"→ {r.rcpt}")),
                lines(text(r.status.value), text(r.tls.label), text(f"{r.attempts} tries")),
                text(_brief(r.last_error or r.reason)),
            )
    out.print(table)


def _brief(detail: str, limit: int = 64) -> str:
    """At most ``limit`` characters (three lines of the last column at 80 columns), cut
    at a word, so one recipient stays a few lines like mailq's; ``queue show`` and
    ``--json`` have it whole."""
    if len(detail) <= limit:
        return detail
    cut = detail.rfind(" ", 0, limit - 1)
    return detail[: cut if cut > limit // 2 else limit - 1].rstrip(" ,;:") + "…"


def queue_show(queue_id: QueueIdArg, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """One message: envelope, sensitivity, each recipient's state and TLS level, and the
    operator decisions about it, which outlive the message itself."""

    async def read(spool: Spool) -> tuple[MessageInfo | None, list[HistoryEntry]]:
        info = await spool.get(queue_id)
        return info, list(info.history) if info else await spool.history(queue_id)

    info, history = with_spool(config, read)
    if info is None:
        if not history:
            raise InputError(f"{queue_id}: no such message in the spool, and no decisions on it")
        if json_out:
            print_json(
                {
                    "queue_id": queue_id,
                    "in_spool": False,
                    "history": [history_json(h) for h in history],
                }
            )
            return
        say(f"{queue_id}: not in the spool (delivered, bounced or deleted)")
    elif json_out:
        print_json(message_json(info))
        return
    else:
        say(f"{info.queue_id}  received {utc_stamp(info.received)}  size {info.size}")
        say(f"from <{info.sender}>  client {info.client}  user {info.auth_user or '-'}")
        say(f"sensitivity: {info.sensitivity or 'none'}")
        for r in info.recipients:
            say(f"  <{r.rcpt}> {r.status.value} tls={r.tls.label} attempts={r.attempts}")
            say(f"      decision: {r.reason}")
            if r.last_error:
                say(f"      last: {r.last_error}")
    if history:
        say("history:")
        for entry in history:
            say(f"  {history_line(entry)}")


def queue_cat(
    queue_id: QueueIdArg,
    reveal: Annotated[
        bool,
        typer.Option(
            "--reveal", help="Show NHS numbers unmasked (needs --reason; recorded and logged)."
        ),
    ] = False,
    reason: ReasonOpt = None,
    by: ByOpt = None,
    headers: Annotated[bool, typer.Option("--headers", help="Only the header section.")] = False,
    body: Annotated[bool, typer.Option("--body", help="Only the body.")] = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The stored message, as postcat shows a queue file: as it will be delivered,
    transfer encodings not undone. NHS numbers are masked (*** *** 5919, as in the log)
    unless --reveal, which is recorded in the message's history with --reason."""
    from securemail.core.message import HeaderLimitError, read_headers
    from securemail.core.sensitivity import mask_nhs_numbers

    if headers and body:
        raise InputError("--headers and --body: choose one (neither shows the whole message)")
    if not reveal and (reason is not None or by is not None):
        raise InputError("--reason and --by record a --reveal; without it nothing is recorded")
    seen = decision(reason, by, doing="reveal NHS numbers") if reveal else None

    async def read(spool: Spool) -> bytes | None:
        if seen is None:
            return await spool.message_data(queue_id)
        return await spool.reveal(queue_id, seen)  # recorded in the same transaction

    data = with_spool(config, read)
    if data is None:
        raise InputError(f"{queue_id}: no such message in the spool")
    part = "message"
    if headers or body:
        try:
            block = read_headers(data)  # the one header reader: the gateway's own split
        except HeaderLimitError as exc:
            raise InputError(f"{queue_id}: cannot find where the body starts: {exc}") from None
        if headers:
            part, data = "headers", data[: block.header_end]
        else:
            part, data = "body", data[block.body_offset :]
    # One reader of NHS numbers: the scanner's own detector decides what is masked.
    shown = data.decode("utf-8", "surrogateescape")
    if not reveal:
        shown = mask_nhs_numbers(shown)
    if json_out:
        print_json({"queue_id": queue_id, "part": part, "revealed": reveal, "text": shown})
        return
    rows = shown.split("\n")
    if rows[-1] == "":
        rows.pop()  # the final line break ends the last line; it does not start another
    for row in rows:
        # plain_line makes each line safe (ESC, CR, bidi controls shown as escapes); a
        # TAB (folded header fields) is spaces first, as a terminal would show it.
        sys.stdout.write(plain_line(row.removesuffix("\r").expandtabs()))


def queue_flush(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Retry every queued and deferred recipient now (held ones stay held)."""
    count = with_spool(config, lambda spool: spool.flush())
    if json_out:
        print_json({"due": count})
    else:
        say(f"{count} recipients due now")
