"""``securemail user add``: who may send through the submission listener."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from securemail.cli.common import ConfigOpt, safe, say
from securemail.config import load_config
from securemail.errors import InputError

app = typer.Typer(help="Submission users (argon2id password hashes).")


@app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="User name (the AUTH login).")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Add or replace a user allowed to send through the submission listener."""
    import getpass

    from securemail.gateway.inbound.users import add_user

    cfg = load_config(config)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {safe(name)}: ")
        if getpass.getpass("again: ") != password:
            raise InputError("the passwords differ")
    existed = add_user(cfg.relay.users_file, name, password)
    say(f"{'replaced' if existed else 'added'} {name} in {cfg.relay.users_file}")
