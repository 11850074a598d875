"""``securemail serve``: run the gateway in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

from typing import Annotated

import typer

from securemail import __version__
from securemail.cli.common import ConfigOpt, run_async
from securemail.config import Config, load_config
from securemail.config_checks import require_files
from securemail.cpu import tune_gc
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
    accept_worker: Annotated[
        int | None, typer.Option("--accept-worker", hidden=True, help="Internal: channel fd.")
    ] = None,
) -> None:
    """Run the gateway: inbound and submission listeners, spool and delivery.

    Started as root with [service] user set, it binds its ports, then runs as that
    user. The inbound listener's sessions run in [listen] workers processes (default:
    one per CPU core), which this one starts and restarts; delivery stays in this one.
    Stops gracefully on SIGTERM or Ctrl-C: no new connections, sessions in a
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
    from securemail.gateway.inbound.pool import worker_command
    from securemail.gateway.logs import configure_logging
    from securemail.web.serve import bind_portal, portal_listen

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise InputError(f"--log-level {log_level!r}: expected debug, info, warning or error")
    if accept_worker is not None:
        run_accept_worker(accept_worker, level)
        return
    cfg = load_config(config)
    # Errors stop here, before anything is bound: who to run as, then what it opens.
    user = privileges.lookup_service_user(cfg.service.user, cfg.service.group)
    switch = privileges.plan_switch(user, os.geteuid(), os.getegid())
    warnings = [*cfg.warnings, *map(str, require_files(cfg))]
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
            workers=cfg.listen.accept_workers,
            worker_command=worker_command(log_level),
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
        tune_gc()  # what start-up built stays; each message's garbage goes in bulk
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


def run_accept_worker(fd: int, level: int) -> None:
    """``serve --accept-worker FD``: one of the gateway's accept workers
    (``gateway/inbound/pool.py``), started by it with one end of a socket pair.

    It reads the configuration the gateway runs from the channel, builds a ``Gateway``
    for inbound sessions only and serves what is handed over, until the gateway says
    stop, the channel closes (the gateway died, however), or SIGTERM/SIGINT; then its
    sessions get their grace, and the spool is closed. SIGHUP is the gateway's (it
    reloads, then sends each worker what is in force), so a worker ignores it.
    """
    import asyncio
    import logging
    import signal
    import socket

    from securemail.gateway.app import Gateway
    from securemail.gateway.inbound import handoff
    from securemail.gateway.inbound.capacity import BudgetSlots
    from securemail.gateway.logs import configure_logging

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    message, fds, _flags, _addr = socket.recv_fds(sock, handoff.MAX_MESSAGE, 1)
    if message[:1] != handoff.BUDGET or len(fds) != 1:
        return  # the gateway went away before we started: nothing to do
    slots = BudgetSlots(fds[0], *handoff.read_budget(message[1:]))
    assembly = handoff.ConfigAssembly()
    while (message := sock.recv(handoff.MAX_MESSAGE))[:1] == handoff.CONFIG_PART:
        assembly.add(message[1:])
    if message != handoff.CONFIG:
        return
    config = assembly.finish()
    configure_logging(config.log, level)
    log = logging.getLogger("securemail.gateway")

    async def run() -> None:
        channel = handoff.Channel(sock)
        gateway = Gateway(config, channel=channel)
        gateway.listeners.budget.share(slots)
        stop = asyncio.Event()
        grace = 30.0  # the gateway's STOP says how long
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[None]] = set()

        async def adopt(new: Config) -> None:
            channel.send(handoff.RELOADED + (await gateway.adopt(new)).encode())

        def received(kind: bytes, body: bytes, fds: list[int]) -> None:
            nonlocal grace
            try:
                if kind == handoff.CONNECTION and len(fds) == 1:
                    gateway.take(socket.socket(fileno=fds.pop()), handoff.read_id(body))
                elif kind == handoff.CONFIG_PART:
                    assembly.add(body)
                elif kind == handoff.CONFIG:
                    task = asyncio.ensure_future(adopt(assembly.finish()))
                    reloads.add(task)
                    task.add_done_callback(reloads.discard)
                elif kind == handoff.STOP:
                    grace = handoff.read_grace(body)
                    stop.set()
                else:
                    raise handoff.ChannelError(f"a message of kind {kind!r}")
            except handoff.ChannelError as exc:
                log.error("accept worker: %s from the gateway; stopping", exc)
                stop.set()
            finally:
                for extra in fds:
                    socket.close(extra)

        channel.listen(received, stop.set)
        await gateway.start_worker()
        tune_gc()
        await stop.wait()
        await gateway.stop(grace)
        channel.close()

    run_async(run())
