"""``securemail portal keygen|rotate-key|revoke|show|list`` and ``securemail audit verify``.

They open the portal's database directly (WAL lets them run beside the gateway; a
rotation done here is picked up by the running gateway on its next use of the key,
``portal.keys``). Nothing here prints a key, a token or a message's content.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from securemail.cli.common import ConfigOpt, JsonOpt, fail, plain_line, print_json, run_async, say
from securemail.config import PortalConfig, load_config
from securemail.portal import MessageInfo, Portal

app = typer.Typer(help="The secure portal: its key, its messages.")
audit_app = typer.Typer(help="The portal's audit trail (a SHA-256 hash chain).")
T = TypeVar("T")


def _portal_config(config: Path | None) -> PortalConfig:
    return load_config(config).portal


def _with_portal(config: Path | None, work: Callable[[Portal], Awaitable[T]]) -> T:
    cfg = _portal_config(config)
    result: list[T] = []

    async def run() -> None:
        portal = Portal.open(cfg)
        await portal.start()
        try:
            result.append(await work(portal))
        finally:
            await portal.close()

    run_async(run())
    return result[0]


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def _row(m: MessageInfo) -> str:
    return plain_line(m.message_id, m.state, _when(m.created), _when(m.expires), m.sender,
                      ",".join(m.recipients))  # fmt: skip


@app.command()
def keygen(
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    keep: Annotated[
        bool, typer.Option("--keep", help="An existing key file is fine (make run).")
    ] = False,
) -> None:
    """Create the master key file ([portal] key_file, mode 0600); never replaces one."""
    from securemail.portal import ensure_key

    path = _portal_config(config).key_file
    created = ensure_key(path)
    if not created and not keep:
        fail(f"{path} exists; kept it (securemail portal rotate-key replaces a key)")
    if json_out:
        print_json({"key_file": str(path), "created": created})
    else:
        say(f"{'wrote' if created else 'kept'} {path} (mode 0600)")


@app.command("rotate-key")
def rotate_key(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Re-wrap every message key under a new master key; ciphertexts are not touched."""
    count = _with_portal(config, lambda p: p.rotate_key())
    if json_out:
        print_json({"rewrapped": count})
    else:
        say(f"rotated the portal key: {count} message keys re-wrapped")


@app.command()
def revoke(
    message_id: Annotated[str, typer.Argument(help="The portal message id.")],
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    by: Annotated[str, typer.Option("--by", help="Who revokes (for the audit).")] = "operator",
) -> None:
    """Withdraw a message: its links answer 410 and its key and content are deleted."""
    done = _with_portal(config, lambda p: p.revoke(message_id, by))
    if json_out:
        print_json({"message_id": message_id, "revoked": done})
    if not done:
        fail(f"no active portal message {message_id}")
    if not json_out:
        say(f"revoked {message_id}")


@app.command()
def show(
    message_id: Annotated[str, typer.Argument(help="The portal message id.")],
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A message's metadata and every audit event about it."""

    async def work(p: Portal) -> tuple[MessageInfo | None, list]:
        return await p.show(message_id), await p.events(message_id)

    info, events = _with_portal(config, work)
    if info is None:
        fail(f"no portal message {message_id}")
    if json_out:
        print_json({**info.to_json(), "events": [e.to_json() for e in events]})
        return
    say(_row(info))
    for e in events:
        say(plain_line(e.id, _when(e.at), e.event, e.rcpt or "-", e.detail))


@app.command("list")
def list_messages(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Every portal message (metadata only), oldest first."""
    for m in _with_portal(config, lambda p: p.list_messages()):
        if json_out:
            print_json(m.to_json())
        else:
            say(_row(m))


@audit_app.command()
def verify(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Recompute the audit hash chain; exit 2 naming the first broken row."""
    check = _with_portal(config, lambda p: p.verify_audit())
    if json_out:
        print_json(check.to_json())
    if not check.ok:
        fail(f"audit chain broken at row {check.broken_id}: {check.why}")
    if not json_out:
        say(f"audit chain intact ({check.rows} rows)")
