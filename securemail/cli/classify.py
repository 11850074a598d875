"""``securemail classify``: is email to these addresses inside the secure boundary?

Also the pieces ``policy explain`` shares with it: the classifier built from config and
options, and how a status looks.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.table import Table
from rich.text import Text

from securemail.cli.common import (
    ConfigOpt,
    JsonOpt,
    err,
    json_line,
    lines,
    out,
    plain_line,
    print_json,
    stdin_lines,
    tell,
    text,
    warn,
)
from securemail.config import Config, load_config
from securemail.core.classify import Classification, Classifier
from securemail.core.rules import Audience, Status
from securemail.errors import InputError
from securemail.loaders import classifier_from_config

STATUS_STYLE = {Status.SECURE: "bold green", Status.UNKNOWN: "yellow", Status.INVALID: "bold red"}

AudienceOpt = Annotated[
    Audience | None,
    typer.Option(
        "--audience",
        "-a",
        help="Whose guidance table applies: the sender's kind of organisation "
        "(default: [organisation] audience, else health-and-care).",
        show_default=False,
    ),
]
AccreditedOpt = Annotated[
    Path | None,
    typer.Option(
        "--accredited",
        help="Accredited-organisations CSV to use instead of [policy] accredited_list.",
        show_default=False,
    ),
]


def build_classifier(
    config: Config, audience: Audience | None, accredited: Path | None
) -> Classifier:
    """The classifier for this run: config, overridden by command-line options."""

    def missing(path: Path) -> None:
        warn(f"accredited list {path} not found; run 'securemail accredited import CSV' to use one")

    return classifier_from_config(
        config, audience=audience, accredited=accredited, on_missing=missing
    )


def classify(
    addresses: Annotated[
        list[str],
        typer.Argument(
            help="Addresses to classify; '-' reads one per line from stdin (streamed).",
            show_default=False,
        ),
    ],
    audience: AudienceOpt = None,
    accredited: AccreditedOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Say whether email to each address is inside the secure boundary.

    Status is 'secure', 'unknown' or 'invalid', with the rule that decided and the
    reason. Exit status is 0 whatever the statuses are; 2 for bad usage or input.
    """
    classifier = build_classifier(load_config(config), audience, accredited)
    if "-" in addresses:
        if addresses != ["-"]:
            raise InputError("'-' (read stdin) cannot be combined with addresses")
        _classify_stream(classifier, stdin_lines(), sys.stdout, json_out)
    elif json_out:
        for address in addresses:
            print_json(classifier.classify(address).to_json())
    else:
        _print_classifications([classifier.classify(address) for address in addresses])


def _classify_stream(
    classifier: Classifier, source: Iterable[str], sink: TextIO, json_out: bool
) -> None:
    """Constant memory whatever the input size: one line in, one line out, batched writes."""
    counts = dict.fromkeys(Status, 0)
    batch: list[str] = []
    progress = _Progress() if err.is_terminal else None
    for n, line in enumerate(source, 1):
        c = classifier.classify(line)
        counts[c.status] += 1
        if json_out:
            batch.append(json_line(c.to_json()))
        else:
            batch.append(plain_line(c.status.value, c.address, c.rule, c.reason))
        if len(batch) >= 4096:
            sink.write("".join(batch))
            batch.clear()
            if progress:
                progress.update(n)
    sink.write("".join(batch))
    sink.flush()
    if progress:
        progress.done(counts)


class _Progress:
    """A one-line counter on stderr for long runs at a terminal."""

    def __init__(self) -> None:
        self.status = err.status("classifying…")
        self.status.start()

    def update(self, n: int) -> None:
        self.status.update(f"classified {n:,} addresses…")

    def done(self, counts: dict[Status, int]) -> None:
        self.status.stop()
        total = sum(counts.values())
        parts = ", ".join(f"{v:,} {k.value}" for k, v in counts.items())
        tell(f"classified {total:,} addresses: {parts}")


def status_text(status: Status) -> Text:
    return text((status.value, STATUS_STYLE[status]))


def _print_classifications(results: list[Classification]) -> None:
    table = Table(show_lines=False, expand=False)
    table.add_column("status")
    table.add_column("address", overflow="fold")
    table.add_column("rule")
    table.add_column("reason", overflow="fold", ratio=1)
    for c in results:
        notes = (text((f"note: {note}", "dim")) for note in c.notes)
        reason = lines(text(c.reason), *notes)
        table.add_row(status_text(c.status), text(c.address), text(c.rule), reason)
    out.print(table)
