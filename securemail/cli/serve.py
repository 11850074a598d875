"""``securemail serve``: run the gateway in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from securemail import __version__
from securemail.cli.common import ConfigOpt, run_async, tell
from securemail.config import load_config
from securemail.errors import InputError


def serve(
    config: ConfigOpt = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Run the gateway: inbound and submission listeners, spool and delivery.

    Stops gracefully on SIGTERM or Ctrl-C: no new connections, sessions in a
    transaction finish, deliveries in flight finish or are retried on the next start.
    """
    import asyncio
    import logging
    import signal

    from securemail.gateway.app import Gateway

    cfg = load_config(config)
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise InputError(f"--log-level {log_level!r}: expected debug, info, warning or error")
    from securemail.gateway.events import LOG_FORMAT, OneLineFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter

    async def run() -> None:
        gateway = Gateway(cfg)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await gateway.start()
        except OSError as exc:
            await gateway.stop(grace=0)
            raise InputError(f"cannot listen: {exc.strerror or exc}") from None
        inbound = cfg.listen.inbound
        tell(
            f"securemail {__version__} ready: inbound {inbound}, submission "
            f"{cfg.listen.submission}; e.g. swaks --server {inbound} --to someone@"
            f"{cfg.organisation.domains[0] if cfg.organisation.domains else 'example.org'}"
        )
        await stop.wait()
        tell("stopping…")
        await gateway.stop()

    run_async(run())
