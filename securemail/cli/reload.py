"""``securemail reload``: make the running gateway re-read its configuration, and say
what came of it (``kill -HUP`` cannot: it returns before the gateway has read a line).

Exit status: 0 applied (settings that need a restart are named, and still exit 0: the
rest is in force), 1 refused or no answer in time, 2 no running gateway.
"""

from __future__ import annotations

from typing import Annotated

import typer

from securemail.cli.common import ConfigOpt, JsonOpt, fail, print_json, say, tell, warn
from securemail.config import service_config
from securemail.gateway.control import OK, GatewayState, ReloadTimeout, reload_running

TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", min=0.1, help="Seconds to wait for the gateway's answer."),
]


def reload(config: ConfigOpt = None, timeout: TimeoutOpt = 10.0, json_out: JsonOpt = False) -> None:
    """Reload the running gateway: configuration, accredited list, users, certificate,
    DKIM keys, without dropping sessions. A configuration it refuses leaves the running
    one in force; the reason is printed and the exit status is 1.
    """
    service = service_config(config)  # even from a file the gateway will refuse
    try:
        state = reload_running(service, timeout=timeout)
    except ReloadTimeout as exc:
        fail(str(exc), status=1)
    if json_out:
        print_json(state.to_json())
    else:
        show(state)
    if state.result != OK:
        raise typer.Exit(1)


def show(state: GatewayState) -> None:
    """What a reload came to, for a person: what is in force, or why it was refused."""
    if state.result != OK:
        tell(state.message)  # "reload refused: <why>; keeping the running configuration"
        return
    say(f"reloaded: {state.in_force.summary()}")
    for key in state.restart_needed:
        warn(f"{key} changed: needs a restart")
