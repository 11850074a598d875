"""``securemail policy explain``: the gateway's per-recipient decision, for a message on disk.

The decision itself is ``core.policy.Policy.decide`` with the policy
``loaders.policy_from_config`` builds, the same object and call the gateway uses; this
module only reads the message and shows the result.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from securemail.cli.classify import AccreditedOpt, AudienceOpt, build_classifier, status_text
from securemail.cli.common import ConfigOpt, JsonOpt, out, print_json, say, text
from securemail.config import load_config
from securemail.core.addresses import split_address_list
from securemail.core.message import HeaderLimitError, read_headers
from securemail.core.policy import Action, Decision
from securemail.core.sensitivity import scan_message
from securemail.errors import InputError
from securemail.loaders import policy_from_config

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

app = typer.Typer(
    rich_markup_mode=None,  # "[section] key" in help texts is text, not markup
    help="Decide what happens to a message, per recipient.",
)


@app.command("explain")
def policy_explain(
    message: Annotated[Path, typer.Argument(help="The message (.eml, RFC 5322); '-' for stdin.")],
    rcpt: Annotated[
        list[str] | None,
        typer.Option(
            "--rcpt", "-r", help="Recipient (repeatable); default: To, Cc and Bcc headers."
        ),
    ] = None,
    audience: AudienceOpt = None,
    accredited: AccreditedOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the sensitivity found in a message and the decision for each recipient."""
    cfg = load_config(config)
    raw = _read_message(message)
    recipients = rcpt or _header_recipients(raw)
    if not recipients:
        raise InputError(f"{message}: no recipients in To, Cc or Bcc; give --rcpt ADDRESS")
    classifier = build_classifier(cfg, audience, accredited)
    sensitivity = scan_message(raw)
    policy = policy_from_config(cfg)
    decisions = [policy.decide(classifier.classify(r), sensitivity) for r in recipients]
    if json_out:
        print_json(
            {
                "message": str(message),
                "sensitivity": sensitivity.to_json(),
                "decisions": [d.to_json() for d in decisions],
            }
        )
        return
    label = ("not sensitive", "green")
    if sensitivity.sensitive:
        label = ("sensitive", "bold red")
    elif sensitivity.unscannable:  # what that means is policy's call: see the decisions
        label = ("not fully scanned", "bold yellow")
    say(message, ": ", label, ": ", sensitivity.summary())
    _print_decisions(decisions)


def _read_message(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read(MAX_MESSAGE_BYTES + 1)[:MAX_MESSAGE_BYTES]
    try:
        if path.stat().st_size > MAX_MESSAGE_BYTES:
            raise InputError(f"{path}: larger than {MAX_MESSAGE_BYTES // 2**20} MiB")
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a message file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None


def _header_recipients(raw: bytes) -> list[str]:
    """To, Cc and Bcc as the gateway's one header reader sees them."""
    try:
        block = read_headers(raw)
    except HeaderLimitError as exc:
        raise InputError(f"cannot read the message's header section: {exc}") from None
    found: list[str] = []
    for name in ("to", "cc", "bcc"):
        for field in block.get_all(name):
            found.extend(split_address_list(field.text))
    return found


def _print_decisions(decisions: list[Decision]) -> None:
    table = Table()
    for column in ("recipient", "status", "action", "tls", "reason"):
        table.add_column(column, overflow="fold", ratio=1 if column == "reason" else None)
    for d in decisions:
        table.add_row(
            text(d.recipient),
            status_text(d.status),
            text(d.action.value),
            text(d.tls.label if d.action is not Action.REJECT else "-"),
            text(d.reason),
        )
    out.print(table)
