"""The ``securemail`` command line: the only package that prints or parses arguments.

One module per sub-command; what they share (options, consoles, terminal-safe text,
JSON lines, the error path) is ``common``. This module only assembles the typer app.
Errors a user can fix end as one line on stderr and exit status 2 (``common.invoke``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from securemail import __version__
from securemail.cli import (
    accredited,
    check,
    classify,
    config,
    dkim,
    policy,
    portal,
    queue,
    reload,
    serve,
    spool,
    tls,
    user,
)
from securemail.cli.common import invoke, say

app = typer.Typer(
    rich_markup_mode=None,  # help texts name config sections: "[tls] cert", not markup
    name="securemail",
    help="Secure email gateway and assurance toolkit for the NHS secure email standard (DCB1596).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def version() -> None:
    """Print the version."""
    say(f"securemail {__version__}")


def _print_version(value: bool) -> None:
    if value:
        version()
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Root options only (``--version``); the app's help text is ``Typer(help=…)`` above."""


# Help lists commands in the order they are registered.
app.command()(classify.classify)
app.command()(serve.serve)
app.command()(reload.reload)
app.command()(check.check)
app.command()(version)
for name, group in (
    ("policy", policy.app),
    ("accredited", accredited.app),
    ("config", config.app),
    ("queue", queue.app),
    ("spool", spool.app),
    ("user", user.app),
    ("dkim", dkim.app),
    ("tls", tls.app),
    ("portal", portal.app),
    ("audit", portal.audit_app),
):
    app.add_typer(group, name=name, no_args_is_help=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI (the ``securemail`` console script and ``python -m securemail.cli``)."""
    return invoke(app, argv)
