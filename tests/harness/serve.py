"""``securemail serve`` as a real process, for tests that need one (crash trials, RSS,
log output): start it on fixed ports, wait until both listeners greet, stop or kill it."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

SECUREMAIL = [sys.executable, "-m", "securemail.cli"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SECUREMAIL_")}


def free_port() -> int:
    """A port nobody listens on now, below the ephemeral range.

    The gateway must come back on the same port after each kill; a port from the
    ephemeral range could meanwhile become the local end of some outgoing connection.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(low - 12000, 1024), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_low_port() -> int:
    """A free port below 1024 on 127.0.0.1 (binding it needs root): like 25 and 587."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(600, 1024)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024")


def greets(port: int) -> bool:
    """Does an SMTP server answer 220 on 127.0.0.1:port?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            return s.recv(512).startswith(b"220")
    except OSError:
        return False


def reply_line(sock: socket.socket) -> bytes:
    """One SMTP reply line (a greeting, a one-line reply); b"" once the server closed."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def refuses(port: int) -> bool:
    """Is nothing listening on 127.0.0.1:port any more?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


class GatewayProcess:
    """`securemail serve --config PATH` with its output in serve.log next to the config."""

    def __init__(
        self, config: Path, inbound: int, submission: int, env: Mapping[str, str] | None = None
    ) -> None:
        self.config = config
        self.env = {**ENV, **(env or {})}  # e.g. a SECUREMAIL_* override for one test
        self.ports = (inbound, submission)
        self.log = config.with_name("serve.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 30.0, *, ready: bool = True) -> None:
        """Spawn; with ``ready``, wait (bounded) until both listeners greet."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*SECUREMAIL, "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.config.parent,
                env=self.env,
                start_new_session=True,  # its own process group: ``kill`` takes every process
            )
        if not ready:
            return
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while not greets(port):
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.tail()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"serve not ready in {timeout}s:\n{self.tail()}")
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL every process of the gateway at once (its accept and CPU workers
        too): the power cut, as far as a test can have one."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def kill_main(self) -> None:
        """SIGKILL the gateway process alone; its accept workers see their channel
        close and stop by themselves (finishing the message they are receiving)."""
        assert self.proc is not None
        workers = self.children()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        deadline = time.monotonic() + 60
        while any(map(alive, workers)):
            if time.monotonic() > deadline:
                raise AssertionError(f"workers {workers} outlived the gateway by 60 s")
            time.sleep(0.05)

    def kill_worker(self, pick: Callable[[list[int]], int]) -> int:
        """SIGKILL one accept worker (``pick`` chooses among their pids); its pid.

        Returns once the gateway has said so in its log: a process does not die the
        instant ``kill`` returns, and a connection handed to it meanwhile goes with it
        (before its greeting, so the client tries again), which belongs to this kill,
        not to whatever the caller does next."""
        workers = [pid for pid in self.children() if _is_accept_worker(pid)]
        assert workers, f"no accept worker running:\n{self.tail()}"
        pid = pick(workers)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while f"(pid {pid}) was killed by SIGKILL" not in self.log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway did not notice worker {pid}:\n{self.tail()}")
            time.sleep(0.02)
        return pid

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"serve still running after {timeout}s:\n{self.tail()}") from None

    def children(self) -> list[int]:
        """The pids of the gateway's child processes: its accept workers (``[listen]
        workers``) and any CPU workers, as /proc lists them now."""
        assert self.proc is not None
        try:
            path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            return [int(pid) for pid in path.read_text().split()]
        except (OSError, ValueError):
            return []

    def accept_workers(self, count: int, timeout: float = 30.0) -> list[int]:
        """Wait (bounded) until ``count`` accept workers run; their pids."""
        deadline = time.monotonic() + timeout
        while True:
            found = [pid for pid in self.children() if _is_accept_worker(pid)]
            if len(found) == count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} accept workers, not {count}:\n{self.tail()}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if not self.running:
            return
        self.terminate()
        try:
            self.wait(30)
        finally:
            if self.running:
                self.kill()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _is_accept_worker(pid: int) -> bool:
    try:
        return b"--accept-worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def alive(pid: int) -> bool:
    """Is ``pid`` a running process (not gone, not a zombie waiting to be reaped)?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False
