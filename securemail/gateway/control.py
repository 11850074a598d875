"""Find a running gateway, ask it to reload, and hear back: the pid and state files.

A SIGHUP carries no answer: ``kill -HUP`` returns before the gateway has even read its
configuration, so an operator (or ``systemctl reload``) could not tell a refused
configuration from an applied one without reading the log. So the gateway keeps two
small files (``[service] pid_file`` and the state file beside it):

* the **pid file**, written atomically once the listeners are up and removed at a clean
  stop. A start refuses to run while it names a live securemail process (two gateways
  on one spool and one set of ports), and takes over one that names a dead process (a
  crash, a reboot) or the starting process itself (pid 1 again in a restarted
  container);
* the **state file** (JSON), written after start and after every reload attempt: the
  ``generation`` (+1 per attempt), its result (``ok`` | ``refused``) and message, what
  is in force (accredited list with its SHA-256, certificate, DKIM keys) and which
  changed settings wait for a restart.

``reload_running`` is the one way to ask: send SIGHUP, then poll the state file until
its generation passes the one seen before the signal. ``securemail reload`` and
``securemail accredited import`` both call it, so they report the same answer.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from securemail.config import ServiceConfig
from securemail.errors import InputError, SecuremailError
from securemail.files import write_atomic

OK, REFUSED = "ok", "refused"
MAX_PID_BYTES = 32  # a pid and a newline, with room
MAX_STATE_BYTES = 64 * 1024  # what to_json writes is well under 4 KiB


class NoGateway(SecuremailError):
    """No gateway runs for this configuration: no pid file, or it names a dead process."""


class ReloadTimeout(SecuremailError):
    """The gateway got the signal but wrote no answer in time."""


# --- the state file's contents ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListFacts:
    """The accredited list in force; ``sha256`` of the stored file identifies the very
    bytes loaded, so an import can tell its own list from an older one."""

    path: str
    entries: int
    date: str | None  # the list's own date (ISO), None when undated
    sha256: str


@dataclass(frozen=True, slots=True)
class CertFacts:
    path: str
    subject: str
    serial: str  # hexadecimal, as openssl prints it
    expires: str  # ISO 8601, UTC


@dataclass(frozen=True, slots=True)
class InForce:
    """What a gateway runs with, as far as an operator reloads it."""

    accredited: ListFacts | None = None
    certificate: CertFacts | None = None
    dkim: tuple[str, ...] = ()  # "example.nhs.uk selector s1"

    def summary(self) -> str:
        """One line for the log and for ``securemail reload``."""
        listed = self.accredited
        if listed is None:
            parts = ["no accredited list"]
        else:
            parts = [f"accredited list {listed.entries} entries ({listed.date or 'undated'})"]
        if self.certificate is not None:
            cert = self.certificate
            parts.append(f"certificate {cert.subject} serial {cert.serial} expires {cert.expires}")
        parts.append(f"DKIM keys: {', '.join(self.dkim) or 'none'}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class GatewayState:
    pid: int
    started: str  # ISO 8601
    generation: int  # 0 at start, +1 per reload attempt
    at: str  # when this generation was written
    result: str  # OK | REFUSED
    message: str
    in_force: InForce = field(default_factory=InForce)
    restart_needed: tuple[str, ...] = ()  # settings changed in the file, not yet in force

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        in_force = data.pop("in_force")
        return {**data, **in_force, "restart_needed": list(self.restart_needed)}

    @classmethod
    def from_json(cls, data: object) -> GatewayState:
        """Raises ``ValueError`` for anything but what ``to_json`` writes."""
        if not isinstance(data, dict):
            raise ValueError("not a gateway state: expected a JSON object")
        try:
            listed, cert = data.get("accredited"), data.get("certificate")
            in_force = InForce(
                ListFacts(**listed) if isinstance(listed, dict) else None,
                CertFacts(**cert) if isinstance(cert, dict) else None,
                tuple(str(k) for k in _list(data.get("dkim", []))),
            )
            state = cls(
                pid=int(str(data["pid"])),
                started=str(data["started"]),
                generation=int(str(data["generation"])),
                at=str(data["at"]),
                result=str(data["result"]),
                message=str(data["message"]),
                in_force=in_force,
                restart_needed=tuple(str(k) for k in _list(data.get("restart_needed", []))),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a gateway state: {exc}") from None
        if state.result not in (OK, REFUSED):
            raise ValueError(f"not a gateway state: result {state.result!r}")
        return state


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def read_state(path: Path) -> GatewayState | None:
    """The state file's contents; None when missing or unreadable (not written yet, or
    from another version: the caller only ever waits for a newer one)."""
    try:
        return GatewayState.from_json(json.loads(_head(path, MAX_STATE_BYTES)))
    except (OSError, ValueError):
        return None


# --- the pid file -----------------------------------------------------------------------


def read_pid(pid_file: Path) -> int | None:
    """The pid the file names; None when there is no file or it holds no number."""
    try:
        text = _head(pid_file, MAX_PID_BYTES).decode("ascii", errors="replace").strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def _head(path: Path, limit: int) -> bytes:
    """The file, if it is at most ``limit`` bytes; ``ValueError`` if longer. Both files
    are ours, but they sit in a directory others may write to (a misconfigured data
    dir): a pid file of a million digits or a state file that is /dev/zero must not
    hang or crash ``securemail reload``."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: larger than {limit} bytes")
    return data


def is_securemail(pid: int) -> bool:
    """Does ``pid`` run securemail (other than this very process)?

    A pid outlives its process in the file: after a crash or a reboot the number may
    belong to anything, so a live process counts only if its command line names
    securemail. Without ``/proc`` to look at, a live process is given the benefit of
    the doubt (refusing to start is the safe mistake).
    """
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    try:
        return b"securemail" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # gone meanwhile, or no /proc at all
    except OSError:
        return True


def running_pid(pid_file: Path) -> int | None:
    """The live gateway the pid file names, else None."""
    pid = read_pid(pid_file)
    return pid if pid is not None and is_securemail(pid) else None


class ServiceFiles:
    """The running gateway's side: claim and publish the pid file, record the state."""

    def __init__(self, service: ServiceConfig, *, pid: int | None = None) -> None:
        self.pid_file = service.pid_file
        self.state_file = service.state_file
        self.pid = os.getpid() if pid is None else pid

    def claim(self) -> str | None:
        """Before starting: raise ``InputError`` while another gateway runs; return a
        note when a stale pid file will be taken over, else None."""
        other = read_pid(self.pid_file)
        if other is None or other == self.pid:
            return None
        if is_securemail(other):
            raise InputError(
                f"a gateway is already running: pid {other} (pid file {self.pid_file}); "
                "stop it first, or give this one another [service] pid_file"
            )
        return f"pid file {self.pid_file} named pid {other}, no longer running: taking it over"

    def publish(self) -> None:
        """Once listening: from now on ``securemail reload`` finds this process."""
        try:
            write_atomic(self.pid_file, f"{self.pid}\n".encode(), mode=0o644)
        except OSError as exc:
            raise InputError(f"cannot write the pid file {self.pid_file}: {exc}") from None

    def withdraw(self) -> None:
        """At a clean stop; a pid file another gateway has since written stays."""
        if read_pid(self.pid_file) == self.pid:
            self.pid_file.unlink(missing_ok=True)

    def record(self, state: GatewayState) -> None:
        body = json.dumps(state.to_json(), indent=2, ensure_ascii=False) + "\n"
        write_atomic(self.state_file, body.encode(), mode=0o644)


# --- the operator's side ----------------------------------------------------------------


def reload_running(
    service: ServiceConfig,
    *,
    timeout: float = 10.0,
    poll: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
) -> GatewayState:
    """SIGHUP the gateway ``service`` names and return its answer (``result`` says
    whether the reload was applied or refused).

    Raises ``NoGateway`` when none runs, ``ReloadTimeout`` when it wrote no newer
    state within ``timeout`` seconds, ``InputError`` when it may not be signalled.
    """
    pid = running_pid(service.pid_file)
    if pid is None:
        raise NoGateway(f"no running gateway (pid file {service.pid_file})")
    before = read_state(service.state_file)
    # A state from an earlier process says nothing about this one's generations.
    seen = before.generation if before is not None and before.pid == pid else 0
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise NoGateway(f"no running gateway (pid file {service.pid_file})") from None
    except PermissionError:
        raise InputError(
            f"may not signal the gateway (pid {pid}): run as the user it runs as"
        ) from None
    deadline = clock() + timeout
    while True:
        state = read_state(service.state_file)
        if state is not None and state.pid == pid and state.generation > seen:
            return state
        if clock() >= deadline:
            raise ReloadTimeout(
                f"the gateway (pid {pid}) did not answer within {timeout:g}s; see its log"
            )
        time.sleep(poll)
