"""The channel between the gateway process and one accept worker.

One Unix ``SOCK_SEQPACKET`` socket pair per worker. Each message arrives whole and alone,
so there is no framing to get wrong, and an accepted connection's file descriptor
travels with the message that hands it over (``SCM_RIGHTS``): the kernel moves the
connection, nothing is copied or proxied. Both ends are our own code, started together;
still, every message is checked for its kind and length, and the one pickle (the
configuration) only ever goes from the gateway to its worker.

What goes over it, one byte of kind first:

* gateway → worker: ``CONNECTION`` (an 8-byte id, the connection's fd attached),
  ``BUDGET`` (first: the worker's slot and the number of slots, the shared page of
  ``capacity.BudgetSlots`` attached), ``CONFIG_PART`` … ``CONFIG`` (the ``Config``
  in force, pickled, in parts: at start and after each reload), ``STOP`` (an 8-byte
  float: seconds of grace);
* worker → gateway: ``READY`` (its spool is open: connections may come), ``STORED``
  (new mail is in the spool: the queue manager should look; at most one per turn of the
  worker's event loop), ``CLOSED`` (an id: the gateway counts that connection no more),
  ``RELOADED`` (UTF-8: what the worker's reload said, for the log).

Sends never block the event loop: a message that does not fit the socket's buffer now
waits in an outbox, sent in order when the socket can take it (``add_writer``); a
``CONNECTION`` is never kept waiting: ``offer`` says no, and the gateway tries another
worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import pickle
import socket
import struct
from collections.abc import Callable

from securemail.config import Config

CONNECTION = b"C"
BUDGET = b"B"
CONFIG_PART = b"P"
CONFIG = b"L"
STOP = b"Q"
READY = b"O"
STORED = b"S"
CLOSED = b"X"
RELOADED = b"R"

MAX_MESSAGE = 64 * 1024  # the largest message either end sends, with room to spare
CONFIG_CHUNK = 32 * 1024
MAX_CONFIG = 64 * 1024 * 1024  # a configuration (lists included) bigger than this is refused
_ID = struct.Struct(">Q")
_GRACE = struct.Struct(">d")
_SLOTS = struct.Struct(">II")

OnMessage = Callable[[bytes, bytes, list[int]], None]
"""(kind, the rest of the message, fds that came with it: the callee owns them)."""


class ChannelError(Exception):
    """A message the other end should never have sent."""


def pair() -> tuple[socket.socket, socket.socket]:
    """(the gateway's end, the worker's end); the worker's is inheritable for its exec."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    return ours, theirs


def connection(conn_id: int) -> bytes:
    return CONNECTION + _ID.pack(conn_id)


def closed(conn_id: int) -> bytes:
    return CLOSED + _ID.pack(conn_id)


def budget(slot: int, count: int) -> bytes:
    return BUDGET + _SLOTS.pack(slot, count)


def read_budget(body: bytes) -> tuple[int, int]:
    if len(body) != _SLOTS.size:
        raise ChannelError(f"budget slots of {len(body)} bytes")
    slot, count = _SLOTS.unpack(body)
    return int(slot), int(count)


def stop(grace: float) -> bytes:
    return STOP + _GRACE.pack(grace)


def read_id(body: bytes) -> int:
    if len(body) != _ID.size:
        raise ChannelError(f"an id of {len(body)} bytes")
    return int(_ID.unpack(body)[0])


def read_grace(body: bytes) -> float:
    if len(body) != _GRACE.size:
        raise ChannelError(f"a grace of {len(body)} bytes")
    return float(_GRACE.unpack(body)[0])


def config_messages(config: Config) -> list[bytes]:
    """``config`` as ``CONFIG_PART`` messages and the closing ``CONFIG``."""
    data = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_CONFIG:
        raise ChannelError(f"the configuration is {len(data)} bytes pickled")
    parts = [CONFIG_PART + data[i : i + CONFIG_CHUNK] for i in range(0, len(data), CONFIG_CHUNK)]
    return [*parts, CONFIG]


class ConfigAssembly:
    """The worker's side of ``config_messages``: parts in, one ``Config`` out."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_CONFIG:
            raise ChannelError(f"a configuration of over {MAX_CONFIG} bytes")
        self._parts.append(body)

    def finish(self) -> Config:
        data, self._parts, self._size = b"".join(self._parts), [], 0
        config = pickle.loads(data)  # noqa: S301 - from our own gateway process only
        if not isinstance(config, Config):
            raise ChannelError(f"a {type(config).__name__} where a Config was expected")
        return config


class Channel:
    """One end of a worker's socket pair, driven by the running event loop."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.closed = False
        self._outbox: collections.deque[bytes] = collections.deque()
        self._writing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def listen(self, on_message: OnMessage, on_eof: Callable[[], None]) -> None:
        """Call ``on_message`` for each message as it arrives, ``on_eof`` once when the
        other end is gone (exited, killed, or closed its end)."""
        loop = self._loop = asyncio.get_running_loop()

        def readable() -> None:
            while not self.closed:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, 4)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    data, fds = b"", []
                if not data:
                    for fd in fds:
                        _close_fd(fd)
                    self.close()
                    on_eof()
                    return
                on_message(data[:1], data[1:], fds)

        loop.add_reader(self.sock.fileno(), readable)

    def send(self, message: bytes) -> None:
        """Send now, or as soon as the socket can take it, in order."""
        if self.closed:
            return
        if not self._outbox:
            try:
                self.sock.send(message)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return  # the other end is gone: its EOF is on its way to ``listen``
        self._outbox.append(message)
        if not self._writing:
            self._writing = True
            loop = self._loop or asyncio.get_running_loop()
            loop.add_writer(self.sock.fileno(), self._flush)

    def offer(self, message: bytes, fd: int) -> bool:
        """Send ``message`` with ``fd`` now, or say no (full, gone, or messages waiting)."""
        if self.closed or self._outbox:
            return False
        try:
            socket.send_fds(self.sock, [message], [fd])
        except OSError:
            return False
        return True

    def _flush(self) -> None:
        while self._outbox and not self.closed:
            try:
                self.sock.send(self._outbox[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._outbox.clear()
                break
            self._outbox.popleft()
        self._stop_writing()

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._outbox.clear()
        self._stop_writing()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        socket.close(fd)
