"""``securemail user add|list|show|passwd|remove|unlock``: who may send through the
submission listener, as which addresses, and who is locked out.

All of it works while the gateway runs: the gateway re-reads the users file when it
changes, and reads unlocks from a small file beside it (``gateway/inbound/limits.py``),
so no command needs a restart. Passwords are prompted for (twice) or read from stdin
with ``--password-stdin``; they are never arguments, which ``ps`` would show.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from securemail.cli.common import (
    ConfigOpt,
    JsonOpt,
    Part,
    lines,
    out,
    print_json,
    safe,
    say,
    text,
    warn,
)
from securemail.config import Config, load_config
from securemail.errors import InputError

if TYPE_CHECKING:
    from rich.text import Text

    from securemail.gateway.inbound.limits import Lockout
    from securemail.gateway.inbound.users import User

app = typer.Typer(
    rich_markup_mode=None,
    help="Submission users: passwords (argon2id), sender addresses, lockouts.",
)

NameArg = Annotated[str, typer.Argument(help="User name (the AUTH login).")]
PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from stdin (one line).")
]


@app.command("add")
def user_add(
    name: NameArg,
    address: Annotated[
        list[str] | None,
        typer.Option(
            "--address",
            help="An address this user may send as (repeatable). "
            "Default: NAME@ each of [organisation] domains.",
            show_default=False,
        ),
    ] = None,
    password_stdin: PasswordStdinOpt = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Add or replace a user allowed to send through the submission listener.

    MAIL FROM and the From header of everything the user sends must be one of the user's
    addresses (553 5.7.1 otherwise).
    """
    from securemail.core.senders import default_addresses
    from securemail.gateway.inbound.users import add_user, check_address, check_name

    cfg = load_config(config)
    check_name(name)
    owned = [check_address(a) for a in address or ()]
    if not owned:
        owned = list(default_addresses(name, cfg.organisation.domains))
        if not owned:
            raise InputError(f"user {name!r}: no default address can be made; give --address")
    for item in owned:
        if item.rpartition("@")[2] not in cfg.organisation.domains:
            warn(f"{item} is not in [organisation] domains; mail from it is not DKIM-signed")
    password = _password(name, password_stdin)
    existed = add_user(cfg.relay.users_file, name, password, owned)
    action = "replaced" if existed else "added"
    if json_out:
        print_json({"user": name, "action": action, "addresses": owned,
                    "file": str(cfg.relay.users_file)})  # fmt: skip
        return
    say(f"{action} {name} in {cfg.relay.users_file}; may send as {', '.join(owned)}")


@app.command("passwd")
def user_passwd(
    name: NameArg,
    password_stdin: PasswordStdinOpt = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Set a new password for an existing user (the addresses stay)."""
    from securemail.gateway.inbound.users import find_user, set_password

    cfg = load_config(config)
    find_user(cfg.relay.users_file, name)  # before asking for a password
    set_password(cfg.relay.users_file, name, _password(name, password_stdin))
    if json_out:
        print_json({"user": name, "action": "password changed"})
        return
    say(f"password changed for {name}")


@app.command("remove")
def user_remove(name: NameArg, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Remove a user: the next AUTH (and the next MAIL of a session already open) fails."""
    from securemail.gateway.inbound.users import remove_user

    cfg = load_config(config)
    remove_user(cfg.relay.users_file, name)
    if json_out:
        print_json({"user": name, "action": "removed", "file": str(cfg.relay.users_file)})
        return
    say(f"removed {name} from {cfg.relay.users_file}")


@app.command("list")
def user_list(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Every user, the addresses each may send as, and current lockouts.

    With --json: one object per user, then one per client address locked out as a whole.
    """
    from securemail.gateway.inbound.users import load_users

    cfg = load_config(config)
    users = load_users(cfg.relay.users_file)
    locks = _lockouts(cfg)
    clients = [lock for lock in locks if lock.login is None]
    if json_out:
        for user in users.values():
            print_json(_user_json(cfg, user, locks))
        for lock in clients:
            print_json({"client": lock.client, "failures": lock.failures, "until": lock.until})
        return
    from rich.table import Table

    table = Table(title=text(f"{len(users)} users in {cfg.relay.users_file}"), expand=True)
    table.add_column("user", no_wrap=True)
    table.add_column("may send as", ratio=1, overflow="fold")
    table.add_column("locked out", ratio=1, overflow="fold")
    for user in users.values():
        row = _user_json(cfg, user, locks)
        table.add_row(
            text(user.name),
            lines(*_addresses_text(row)),
            lines(*(text(*_lock_parts(lock)) for lock in locks if lock.login == user.name)),
        )
    out.print(table)
    for lock in clients:
        say(*_lock_parts(lock), f" for every login: securemail user unlock --client {lock.client}")


@app.command("show")
def user_show(name: NameArg, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """One user: the addresses the user may send as, and any lockout."""
    from securemail.gateway.inbound.users import find_user

    cfg = load_config(config)
    locks = _lockouts(cfg)
    row = _user_json(cfg, find_user(cfg.relay.users_file, name), locks)
    if json_out:
        print_json(row)
        return
    say(f"user {name}")
    for line in _addresses_text(row):
        out.print(text("  may send as ") + line)
    locked = [lock for lock in locks if lock.login == name]
    for lock in locked:
        say("  locked out from ", *_lock_parts(lock))
    if locked:
        say(f"  (securemail user unlock {name})")


@app.command("unlock")
def user_unlock(
    name: Annotated[
        str | None, typer.Argument(help="The login to unlock (from every client).")
    ] = None,
    client: Annotated[
        str | None,
        typer.Option(
            "--client",
            help="The client address to unlock (its own count, and with NAME only that "
            "login from it).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Lift a failed-AUTH lockout now, instead of waiting for the window to pass.

    The running gateway applies it at the next AUTH attempt (it watches a small file
    beside the users file); failures after this moment count again.
    """
    import ipaddress
    import time

    from securemail.gateway.inbound.limits import LockoutFiles, Unlock, client_key
    from securemail.gateway.inbound.users import find_user

    if name is None and client is None:
        raise InputError("say whom to unlock: NAME, --client IP, or both")
    cfg = load_config(config)
    if name is not None:
        find_user(cfg.relay.users_file, name)
    key = None
    if client is not None:
        try:
            key = client_key(str(ipaddress.ip_address(client)))
        except ValueError:
            raise InputError(f"--client {client!r}: not an IP address") from None
    unlock = Unlock(name, key, time.time())
    cleared = [lock for lock in _lockouts(cfg) if unlock.matches(lock.client, lock.login)]
    files = LockoutFiles(cfg.relay.users_file)
    try:
        files.add_unlock(unlock, cfg.relay.auth_failure_window)
    except OSError as exc:
        raise InputError(f"{files.unlocks}: cannot write: {exc.strerror or exc}") from None
    who = " from ".join(part for part in (name, key) if part is not None)
    if json_out:
        print_json({"user": name, "client": key, "at": unlock.at,
                    "cleared": [_lock_json(lock) for lock in cleared]})  # fmt: skip
        return
    say(f"unlocked {who}" + (f" ({len(cleared)} lockouts cleared)" if cleared else ""))


# --- helpers ------------------------------------------------------------------------------


def _password(name: str, from_stdin: bool) -> str:
    import getpass

    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass(f"password for {safe(name)}: ")
    if getpass.getpass("again: ") != password:
        raise InputError("the passwords differ")
    return password


def _lockouts(cfg: Config) -> list[Lockout]:
    """The gateway's current lockouts (none recorded: none), with a warning if unreadable."""
    import time

    from securemail.gateway.inbound.limits import LockoutFiles

    try:
        return LockoutFiles(cfg.relay.users_file).read_lockouts(time.time())
    except InputError as exc:
        warn(f"{exc}; lockouts not shown")
        return []


def _user_json(cfg: Config, user: User, locks: list[Lockout]) -> dict[str, object]:
    return {
        "user": user.name,
        "addresses": list(user.owned(cfg.organisation.domains)),
        "default_addresses": not user.addresses,
        "locked": [_lock_json(lock) for lock in locks if lock.login == user.name],
    }


def _lock_json(lock: Lockout) -> dict[str, object]:
    return {"client": lock.client, "login": lock.login, "failures": lock.failures,
            "until": lock.until}  # fmt: skip


def _addresses_text(row: dict[str, object]) -> list[Text]:
    addresses = row["addresses"]
    assert isinstance(addresses, list)
    shown = [text(a, " (default)" if row["default_addresses"] else "") for a in addresses]
    return shown or [text(("none: may not send", "red"))]


def _lock_parts(lock: Lockout) -> tuple[Part, ...]:
    import datetime as dt

    until = dt.datetime.fromtimestamp(lock.until, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return (lock.client, "red"), f" until {until} UTC ({lock.failures} failures)"
