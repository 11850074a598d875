"""A syslog daemon's end of a Unix datagram socket, for tests of ``[log] syslog``."""

from __future__ import annotations

import socket
import threading
from pathlib import Path


class Receiver:
    """A syslog daemon's socket: bound at ``path``, read only when asked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def read(self, timeout: float = 2.0) -> list[bytes]:
        """Everything queued, waiting up to ``timeout`` for the first datagram."""
        got = []
        self.sock.settimeout(timeout)
        try:
            while True:
                got.append(self.sock.recv(65536))
                self.sock.settimeout(0.05)
        except TimeoutError:
            return got

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


class Daemon(Receiver):
    """A receiver that reads as a syslog daemon does, all the time, into ``got``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.got: list[bytes] = []
        self.sock.settimeout(0.1)
        self._reader = threading.Thread(target=self._read_all, daemon=True)
        self._reader.start()

    def _read_all(self) -> None:
        while self.sock.fileno() != -1:
            try:
                self.got.append(self.sock.recv(65536))
            except TimeoutError:
                continue
            except OSError:
                return  # closed

    def close(self) -> None:
        super().close()
        self._reader.join(5)
