"""``securemail serve``: run the gateway in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

from typing import Annotated

import typer

from securemail import __version__
from securemail.cli.common import ConfigOpt, run_async
from securemail.config import load_config
from securemail.config_checks import require_files
from securemail.errors import InputError, SecuremailError
from securemail.gateway.control import ServiceFiles


def raise_open_files_limit() -> str:
    """Raise the soft limit on open files to the hard one; say what happened.

    Each SMTP connection is a file descriptor, and the usual soft limit (1,024) is what
    ~1,020 idle connections from one host used to exhaust. ``[listen] max_connections``
    is the bound we choose; this makes sure the operating system's is not lower.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return f"open files limit {soft}"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit above nr_open
        return f"open files limit {soft} (could not raise it to {hard}: {exc})"
    return f"open files limit raised from {soft} to {hard}"


def serve(
    config: ConfigOpt = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Run the gateway: inbound and submission listeners, spool and delivery.

    Started as root with [service] user set, it binds its ports, then runs as that
    user. Stops gracefully on SIGTERM or Ctrl-C: no new connections, sessions in a
    transaction finish, deliveries in flight finish or are retried on the next start.
    SIGHUP (or 'securemail reload') re-reads the configuration and the files it names
    without dropping sessions. Writes [service] pid_file once listening, and refuses to
    start while it names another running gateway.
    """
    import asyncio
    import logging
    import os
    import signal

    from securemail import privileges
    from securemail.gateway.app import Gateway, bind_listeners
    from securemail.gateway.logs import configure_logging
    from securemail.web.serve import bind_portal, portal_listen

    cfg = load_config(config)
    # Errors stop here, before anything is bound: who to run as, then what it opens.
    user = privileges.lookup_service_user(cfg.service.user, cfg.service.group)
    switch = privileges.plan_switch(user, os.geteuid(), os.getegid())
    warnings = [*cfg.warnings, *map(str, require_files(cfg))]
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise InputError(f"--log-level {log_level!r}: expected debug, info, warning or error")
    configure_logging(cfg.log, level)
    log = logging.getLogger("securemail.gateway")
    log.info("%s", raise_open_files_limit())
    for warning in warnings:
        log.warning("config: %s", warning)
    if switch is privileges.Switch.KEEP_ROOT:
        log.warning("running as root; set [service] user to bind as root and run as that user")

    async def run() -> None:
        try:
            listeners = await bind_listeners(cfg)
            portal_socket = None
            if cfg.portal.enabled:  # bound now: its port may need root too
                portal_socket = bind_portal(portal_listen(cfg.portal.listen, cfg.portal.base_url))
        except OSError as exc:
            raise InputError(f"cannot listen: {exc.strerror or exc}") from None
        if switch is privileges.Switch.DROP:
            assert user is not None
            privileges.drop_privileges(user)  # before any key, list, spool or worker
        gateway = Gateway(
            cfg,
            service=ServiceFiles(cfg.service),
            listeners=listeners,
            portal_socket=portal_socket,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[object]] = set()

        def reload() -> None:  # SIGHUP: the reload runs as a task; the handler returns
            task = asyncio.ensure_future(gateway.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
        try:
            await gateway.start()
        except OSError as exc:
            await gateway.stop(grace=0)
            raise InputError(f"cannot start: {exc.strerror or exc}") from None
        except SecuremailError:  # another gateway runs; the pid file cannot be written
            await gateway.stop(grace=0)
            raise
        inbound = cfg.listen.inbound
        log.info(
            "securemail %s ready: inbound %s, submission %s; e.g. swaks --server %s --to "
            "someone@%s",
            __version__,
            inbound,
            cfg.listen.submission,
            inbound,
            cfg.organisation.domains[0] if cfg.organisation.domains else "example.org",
        )
        await stop.wait()
        log.info("stopping…")
        await gateway.stop()

    run_async(run())
