"""Where the gateway's log goes: stderr, syslog, or both, in one format.

``securemail serve`` calls ``configure_logging`` once. Every record (ours, aiosmtpd's,
a library's, a Python warning's, a CPU worker's, which ``inbound/offload.py`` hands back
to this process) then reaches the same handlers through the same formatter
(``events.log_formatter``): with ``[log] format = "json"`` every line is JSON, wherever
it is written.

**syslog** (``[log] syslog``): a Unix datagram socket (``/dev/log``) or ``udp:HOST:PORT``,
with facility ``[log] syslog_facility`` (``mail``). Each record is one datagram,
``<PRI>securemail[PID]: TEXT`` (RFC 3164's tag; the daemon adds time and host), TEXT
being the stderr line without its time, or the JSON object.

Logging must never cost mail, so ``SyslogHandler`` never blocks and never raises. Its
socket is non-blocking: a daemon that stops reading fills a Unix socket's queue, and a
blocking send would then stop the event loop and every session with it. A record that
cannot be sent is dropped and counted; a Unix socket that went away (the daemon
restarted) is reopened at most once a second; one warning says syslog is unreachable and
one that it is back, with the number of records lost, through the other handlers.

**stderr** stays on by default (``[log] stderr = true``): it is what a foreground run
shows and what systemd puts in the journal. ``stderr = false`` is for a unit that sends
to ``/dev/log``, which under systemd is the journal as well: every line would be there
twice. (Refused without a syslog target, by the config: the gateway would log nowhere.)
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import socket
import sys
import time
from collections.abc import Callable

from securemail.config import LogConfig
from securemail.gateway.events import log_formatter

SyslogAddress = str | tuple[str, int]
"""A Unix socket path, or a UDP (host, port): what ``SysLogHandler`` takes."""

REOPEN_EVERY = 1.0  # seconds between attempts to reopen a Unix socket that went away
_ONE_RECORD = (errno.EAGAIN, errno.ENOBUFS, errno.EMSGSIZE)  # the socket itself is fine

log = logging.getLogger("securemail.log")


def parse_syslog_target(text: str) -> SyslogAddress:
    """``/dev/log`` → the path; ``udp:HOST:PORT`` (``udp:[::1]:514``) → (host, port).

    Raises ``ValueError`` saying what is expected (the config adds file, line and key).
    """
    expected = 'expected "" (off), a Unix socket path like "/dev/log", or "udp:HOST:PORT"'
    if text.startswith("/"):
        if "\0" in text:
            raise ValueError(f"{text!r}: {expected}")
        return text
    scheme, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if scheme != "udp" or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: {expected}")
    return host, int(port)


class SyslogHandler(logging.handlers.SysLogHandler):
    """``SysLogHandler`` on a non-blocking datagram socket that drops rather than waits.

    The stdlib's priority names and encoding are kept; sending is ours, because its
    ``emit`` blocks on a full Unix socket and reports every failed record with a
    traceback on stderr.
    """

    append_nul = False  # as glibc's syslog(3) on a datagram socket; journald, rsyslog agree

    def __init__(
        self,
        address: SyslogAddress,
        facility: str = "mail",
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._reopen_at = 0.0  # first record: open now
        self._failing = ""  # why records are being dropped, while they are
        self._dropped = 0
        self._noting = False
        self._family, self._proto = socket.AF_UNSPEC, 0
        self._sockaddr: tuple[str, int] | tuple[str, int, int, int] | None = None
        self._opening = False  # SysLogHandler.__init__ opens; we wait for the handlers
        self._tried = False  # a first attempt to open was made
        super().__init__(address, self.facility_names[facility], socket.SOCK_DGRAM)
        self._opening = True
        self.ident = f"securemail[{os.getpid()}]: "

    @property
    def target(self) -> str:
        """The target as written in the config."""
        address = self.address
        return address if isinstance(address, str) else f"udp:{address[0]}:{address[1]}"

    def createSocket(self) -> None:  # SysLogHandler's name
        """Open the non-blocking socket (``self.socket`` stays None if it cannot be).

        Called by ``configure_logging`` once every handler is installed, so a target
        that cannot be opened is reported on stderr (else by the first record). A UDP
        host is resolved then only, at start: never again on the event loop.
        """
        self.socket = None
        self.unixsocket = isinstance(self.address, str)
        if not self._opening:
            return
        self._tried = True
        self._reopen_at = self._clock() + REOPEN_EVERY
        try:
            if isinstance(self.address, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                try:
                    sock.connect(self.address)
                except OSError:
                    sock.close()
                    raise
            else:
                if self._sockaddr is None:
                    host, port = self.address
                    family, _, proto, _, sockaddr = socket.getaddrinfo(
                        host, port, 0, socket.SOCK_DGRAM
                    )[0]
                    self._family, self._proto, self._sockaddr = family, proto, sockaddr
                sock = socket.socket(self._family, socket.SOCK_DGRAM, self._proto)
                sock.setblocking(False)
        except OSError as exc:
            again = "" if self.unixsocket else " (a UDP target is not retried until restart)"
            self._fail(f"cannot open it: {exc.strerror or exc}{again}")
            return
        self.socket = sock

    def emit(self, record: logging.LogRecord) -> None:
        if self._noting:
            return  # our own note about syslog: for the other handlers
        try:
            text = self.ident + self.format(record)
            priority = self.encodePriority(self.facility, self.mapPriority(record.levelname))
            datagram = f"<{priority}>{text}".encode("utf-8", "backslashreplace")
        except Exception:  # a record that cannot be formatted: as logging does
            self.handleError(record)
            return
        if self.socket is None and self._may_open():
            self.createSocket()
        if self.socket is None:
            self._dropped += 1
            return
        try:
            if self.unixsocket:
                self.socket.send(datagram)
            else:
                self.socket.sendto(datagram, self._sockaddr)
        except OSError as exc:
            self._dropped += 1
            if exc.errno not in _ONE_RECORD and self.unixsocket:
                self.socket.close()
                self.socket = None
                self._reopen_at = self._clock() + REOPEN_EVERY
            self._fail(os.strerror(exc.errno) if exc.errno else str(exc))
            return
        if self._failing:
            self._failing, lost, self._dropped = "", self._dropped, 0
            self._note(f"syslog {self.target} is reachable again; {lost} records were not sent")

    def _may_open(self) -> bool:
        """Once at first, then a Unix socket at most every ``REOPEN_EVERY`` seconds."""
        if not self._tried:
            return True
        return self.unixsocket and self._clock() >= self._reopen_at

    def handleError(self, record: logging.LogRecord) -> None:  # logging's name
        """One line, not a traceback per record (``logging.Handler``'s default)."""
        self._dropped += 1
        self._fail("a record could not be formatted")

    def _fail(self, why: str) -> None:
        if not self._failing:
            self._failing = why
            self._note(
                f"syslog {self.target}: {why}; records are not sent there until it can be reached"
            )

    def _note(self, text: str) -> None:
        """Tell the other handlers (stderr); never this one, which is what failed."""
        self._noting = True
        try:
            log.warning("%s", text)
        finally:
            self._noting = False


def lean_records() -> None:
    """Stop collecting what no format of ours prints: a record's caller, thread and
    process (syslog's ident carries the pid). Finding the caller walks the stack for
    every record: 7 of the 21 µs of CPU a log line cost (``bench/accept_steps.py``).
    These are the logging HOWTO's "Optimization" switches, for the whole process."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def configure_logging(config: LogConfig, level: int) -> None:
    """Install the handlers ``[log]`` asks for on the root logger, at ``level``."""
    handlers: list[logging.Handler] = []
    if config.stderr:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(log_formatter(config.format))
        handlers.append(stderr)
    if config.syslog:
        syslog = SyslogHandler(parse_syslog_target(config.syslog), config.syslog_facility)
        syslog.setFormatter(log_formatter(config.format, timestamp=False))
        handlers.append(syslog)
    logging.basicConfig(level=level, handlers=handlers, force=True)
    lean_records()
    for handler in handlers:
        if isinstance(handler, SyslogHandler):
            handler.createSocket()
    logging.captureWarnings(True)  # a library's warnings.warn, formatted like the rest
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter
