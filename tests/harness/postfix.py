"""Real, private Postfix instances for tests (loopback only, OS-chosen ports, bounded waits).

Each instance lives under its own directory (``BASE/NAME``) with its own config dir
(``etc``), ``queue_directory``, ``data_directory`` and ``maillog`` (written by
``postlogd``; there is no syslog). It is controlled with ``postfix -c DIR/etc ...`` run
under ``script -qec`` because Postfix reports fatal errors only to a tty, and it is
stopped by signalling the PID in its own ``queue/pid/master.pid`` (never by name).

Requirements: run as root, Debian packages ``postfix`` (plus ``swaks`` for the tests
that inject mail with it). ``BASE`` must be world-traversable (pipe(8) runs as
``nobody``) and short (unix socket paths under the queue directory are limited to 107
bytes); the ``postfix_tmp`` fixture provides one.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

_T = TypeVar("_T")

if TYPE_CHECKING:
    from harness.pki import TestPKI

POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"
QUEUE_DIRS = ("maildrop", "incoming", "active", "deferred", "hold")
_MAX_SOCKET_PATH = 107  # sizeof(sun_path) - 1 on Linux
_PORT_RETRIES = 5
_CMD_TIMEOUT = 60.0

_live: weakref.WeakSet[PostfixInstance] = weakref.WeakSet()


def require_tools(*tools: str) -> None:
    """Fail (never skip) with an actionable message if a needed program is missing."""
    missing = [t for t in tools if shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if missing:
        pytest.fail(
            f"missing program(s) {', '.join(missing)}: install the Debian packages the tests need "
            "with `make system-deps` (scripts/apt-install postfix swaks ...)",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("private Postfix instances need root (postfix -c DIR start)", pytrace=False)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considered free a moment ago (bind port 0, close). Racy: retry on use."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (pid 1 here may never reap re-parented daemons)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # "pid (comm) S ..." - comm may contain spaces/parens, the state follows the last ")".
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


class PostfixError(RuntimeError):
    pass


class PostfixInstance:
    """A private Postfix under ``base/name``, its smtpd listening on 127.0.0.1:<port>.

    Use as a context manager (starts on enter, stops on exit) or call start()/stop().
    ``main_cf`` overrides/extends the generated main.cf; ``master_services`` is appended
    verbatim to master.cf (extra services such as a pipe(8) transport).
    """

    def __init__(
        self,
        base: Path,
        name: str,
        *,
        port: int | None = None,
        myhostname: str = "mx.test",
        main_cf: Mapping[str, str] | None = None,
        master_services: str | None = None,
    ) -> None:
        self.base = Path(base)
        self.name = name
        self.dir = self.base / name
        self.etc = self.dir / "etc"
        self.queue = self.dir / "queue"
        self.data = self.dir / "data"
        self.maillog = self.dir / "maillog"
        self.myhostname = myhostname
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self._main_overrides: dict[str, str] = dict(main_cf or {})
        self.master_services = master_services or ""
        self._running = False
        longest = len(str(self.queue / "private" / "proxywrite"))
        if longest > _MAX_SOCKET_PATH - 8:
            raise PostfixError(
                f"instance path {self.dir} is too long for Postfix's unix sockets "
                f"({longest} bytes); use a short base such as the postfix_tmp fixture"
            )

    # ------------------------------------------------------------------ config
    @property
    def address(self) -> str:
        """``[127.0.0.1]:port``: the form Postfix uses for relayhost/nexthop."""
        return f"[127.0.0.1]:{self.port}"

    def main_cf(self) -> dict[str, str]:
        """The effective main.cf settings (defaults, then overrides)."""
        d = str(self.dir)
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": f"postfix-{self.name}",
            "myhostname": self.myhostname,
            "mydomain": "test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "smtp_bind_address": "127.0.0.1",
            "mynetworks": "127.0.0.0/8",
            "mynetworks_style": "host",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 local delivery disabled in this test instance",
            "biff": "no",
            "maillog_file_prefixes": f"/var, /dev/stdout, {d}",
            "maillog_file": str(self.maillog),
            "smtpd_peername_lookup": "no",
            "smtpd_banner": "$myhostname ESMTP",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            # Fast retries, so tests about deferral finish in seconds, not minutes.
            "queue_run_delay": "2s",
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "10s",
            "smtp_connect_timeout": "10s",
            "delay_warning_time": "0h",
        }
        settings.update(self._main_overrides)
        return settings

    def _master_cf(self) -> str:
        return (
            f"127.0.0.1:{self.port} inet n - n - - smtpd\n"
            "pickup    unix  n - n 60    1 pickup\n"
            "cleanup   unix  n - n -     0 cleanup\n"
            "qmgr      unix  n - n 300   1 qmgr\n"
            "tlsmgr    unix  - - n 1000? 1 tlsmgr\n"
            "rewrite   unix  - - n -     - trivial-rewrite\n"
            "bounce    unix  - - n -     0 bounce\n"
            "defer     unix  - - n -     0 bounce\n"
            "trace     unix  - - n -     0 bounce\n"
            "verify    unix  - - n -     1 verify\n"
            "flush     unix  n - n 1000? 0 flush\n"
            "proxymap  unix  - - n -     - proxymap\n"
            "proxywrite unix - - n -     1 proxymap\n"
            "smtp      unix  - - n -     - smtp\n"
            "relay     unix  - - n -     - smtp\n"
            "showq     unix  n - n -     - showq\n"
            "error     unix  - - n -     - error\n"
            "retry     unix  - - n -     - error\n"
            "discard   unix  - - n -     - discard\n"
            "anvil     unix  - - n -     1 anvil\n"
            "scache    unix  - - n -     1 scache\n"
            "tlsproxy  unix  - - n -     0 tlsproxy\n"
            "postlog   unix-dgram n - n - 1 postlogd\n" + self.master_services
        )

    def _write_config(self) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        lines = [f"{k} = {v}" for k, v in self.main_cf().items()]
        (self.etc / "main.cf").write_text("\n".join(lines) + "\n")
        (self.etc / "master.cf").write_text(self._master_cf())
        # Postfix re-reads a table file every 300 ms until its mtime is > 1 s in the
        # past (dict_load_file guards against files changing while read): back-date
        # the config, or every postfix/postconf command costs up to 2 s.
        old = time.time() - 60
        for f in ("main.cf", "master.cf"):
            os.utime(self.etc / f, (old, old))

    def postconf(self, **settings: str) -> None:
        """Set main.cf parameters (``postconf(smtp_tls_security_level="encrypt")``).

        Reloads the instance if it is running.
        """
        self._main_overrides.update(settings)
        self._write_config()
        if self._running:
            self.reload()

    # ------------------------------------------------------------------ commands
    def _postfix(self, *args: str, timeout: float = _CMD_TIMEOUT) -> str:
        """Run ``postfix -c ETC ARGS`` under a pty so fatal errors are visible; return output."""
        cmd = shlex.join([POSTFIX, "-c", str(self.etc), *args])
        try:
            proc = subprocess.run(
                ["script", "-qec", cmd, "/dev/null"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise PostfixError(f"{cmd} timed out after {timeout}s\n{self._tail()}") from e
        out = (proc.stdout + proc.stderr).decode(errors="replace").replace("\r\n", "\n")
        if proc.returncode != 0:
            raise PostfixError(f"{cmd} failed (exit {proc.returncode}):\n{out}\n{self._tail()}")
        return out

    def start(self) -> PostfixInstance:
        """Write the config, start the master (listeners bound when this returns)."""
        if self._running:
            return self
        require_tools(POSTFIX, "script")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        for p in (self.queue, self.data):
            p.mkdir(exist_ok=True)
        shutil.chown(self.data, "postfix")
        starts = len(self._grep(r"daemon started -- version"))
        for attempt in range(_PORT_RETRIES):
            self._write_config()
            log_mark = self._log_size()
            try:
                self._postfix("start")
            except PostfixError as e:
                in_use = "Address already in use" in str(e) or "Address already in use" in (
                    self._log_since(log_mark)
                )
                if in_use and not self._fixed_port and attempt < _PORT_RETRIES - 1:
                    self._kill_master()  # in case it half-started
                    self.port = free_port()
                    continue
                raise
            break
        self._running = True
        _live.add(self)
        try:
            # `postfix start` runs `master -w`, which returns once the listeners are bound;
            # wait for the master's own log line too (no probe connection: it would
            # show up as an extra smtpd session in the log).
            self.wait_for_log(r"daemon started -- version", count=starts + 1, timeout=15)
        except BaseException:
            self.stop()
            raise
        return self

    def reload(self, timeout: float = 15) -> None:
        """``postfix reload`` and wait until the master logged that it re-read its config."""
        before = len(self._grep(r"reload -- version"))
        self._postfix("reload")
        self.wait_for_log(r"reload -- version", count=before + 1, timeout=timeout)

    def flush(self) -> None:
        """Attempt delivery of all queued mail now (``postqueue -f``)."""
        subprocess.run(
            [POSTQUEUE, "-c", str(self.etc), "-f"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_CMD_TIMEOUT,
            check=True,
        )

    def master_pid(self) -> int | None:
        try:
            text = (self.queue / "pid" / "master.pid").read_text()
        except FileNotFoundError:
            return None
        digits = "".join(c for c in text if c.isdigit())
        return int(digits) if digits else None

    def _is_our_master(self, pid: int) -> bool:
        """Guard against a stale pid file naming an unrelated process."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False
        return b"master" in cmdline and f"MAIL_CONFIG={self.etc}".encode() in environ

    def _kill_master(self) -> None:
        pid = self.master_pid()
        if pid is None or not _pid_alive(pid) or not self._is_our_master(pid):
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _pid_alive(pid):
                    return
                time.sleep(0.05)

    def stop(self) -> None:
        """TERM the instance's own master (from its pid file), wait ≤10 s, then KILL."""
        self._kill_master()
        self._running = False
        _live.discard(self)

    @property
    def running(self) -> bool:
        return self._running

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ observation
    def log(self) -> str:
        """The instance's maillog so far."""
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_size(self) -> int:
        try:
            return self.maillog.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with self.maillog.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _tail(self, n: int = 40) -> str:
        lines = self.log().splitlines()[-n:]
        return f"--- last {len(lines)} lines of {self.maillog} ---\n" + "\n".join(lines)

    def _grep(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        return [line for line in self.log().splitlines() if rx.search(line)]

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 30) -> list[str]:
        """Wait until ≥ `count` maillog lines match regex `pattern`; return all matching lines."""
        return self._poll(
            lambda: self._grep(pattern), count, timeout, f"log lines matching {pattern!r}"
        )

    def _poll(self, get: Callable[[], list[_T]], count: int, timeout: float, what: str) -> list[_T]:
        """Every 0.1 s until ``get()`` has ``count`` items; AssertionError with the log tail."""
        deadline = time.monotonic() + timeout
        while True:
            found = get()
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"postfix {self.name}: {len(found)}/{count} {what} after {timeout}s\n"
                    f"{self._tail()}"
                )
            time.sleep(0.1)

    def queue_count(self) -> int:
        """Number of queue files in maildrop/incoming/active/deferred/hold."""
        n = 0
        for sub in QUEUE_DIRS:
            for _root, _dirs, files in os.walk(self.queue / sub):
                n += len(files)
        return n

    def wait_queue_empty(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.queue_count():
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"postfix {self.name}: {self.queue_count()} messages still queued after "
                    f"{timeout}s\n{self._tail()}"
                )
            time.sleep(0.1)

    def __repr__(self) -> str:
        return f"<PostfixInstance {self.name} 127.0.0.1:{self.port} {self.dir}>"


@atexit.register
def _stop_leftovers() -> None:  # safety net; fixtures stop instances themselves
    for inst in list(_live):
        with contextlib.suppress(Exception):
            inst.stop()


# ---------------------------------------------------------------------- roles
def postfix_sender(
    base: Path,
    relayhost: str,
    *,
    name: str = "sender",
    myhostname: str = "sender.test",
    port: int | None = None,
    main_cf: Mapping[str, str] | None = None,
) -> PostfixInstance:
    """A Postfix that accepts mail from 127.0.0.0/8 and relays everything to `relayhost`.

    Outbound TLS is opportunistic (``smtp_tls_security_level = may``), so a gateway with
    a self-signed certificate is fine; TLS is logged (``smtp_tls_loglevel = 1``).
    Not started: use ``with postfix_sender(...) as sender:`` or ``.start()``.
    """
    settings = {
        "relayhost": relayhost,
        "smtp_tls_security_level": "may",
        "smtp_tls_loglevel": "1",
        "smtpd_tls_security_level": "none",
    }
    settings.update(main_cf or {})
    return PostfixInstance(base, name, port=port, myhostname=myhostname, main_cf=settings)


@dataclass(frozen=True)
class Delivery:
    """One message as stored by a receiver: envelope plus the bytes (LF line endings)."""

    path: Path
    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    data: bytes


_SINK_SCRIPT = """#!/bin/sh
# Postfix pipe(8) sink: store one delivered message and its envelope. Runs as nobody.
# argv: QUEUE_ID SENDER RECIPIENT...
set -eu
dir={mailbox}
name="$(date +%s%N).$1.$$"
printf '%s\\n' "$@" > "$dir/.tmp.$name.env"
cat > "$dir/.tmp.$name.eml"
mv "$dir/.tmp.$name.env" "$dir/$name.env"
mv "$dir/.tmp.$name.eml" "$dir/$name.eml"
"""


class PostfixReceiver(PostfixInstance):
    """A recipient domain's MX that stores each received message as a file in `mailbox_dir`.

    All mail (any domain) goes to the ``sink`` pipe(8) transport with one fixed nexthop,
    so one accepted SMTP message = one ``.eml`` file (plus an ``.env`` envelope file),
    however many recipients it had.
    """

    def __init__(self, *args: object, mailbox_dir: Path, **kw: object) -> None:
        self.mailbox_dir = Path(mailbox_dir)
        super().__init__(*args, **kw)  # type: ignore[arg-type]

    def start(self) -> PostfixReceiver:
        self.mailbox_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.mailbox_dir, "nobody")
        self.mailbox_dir.chmod(0o755)
        script = self.dir / "sink.sh"
        self.dir.mkdir(parents=True, exist_ok=True)
        script.write_text(_SINK_SCRIPT.format(mailbox=shlex.quote(str(self.mailbox_dir))))
        script.chmod(0o755)
        super().start()
        return self

    def deliveries(self) -> list[Delivery]:
        """Stored messages, oldest first."""
        out = []
        for eml in sorted(
            self.mailbox_dir.glob("[!.]*.eml"), key=lambda p: (p.stat().st_mtime_ns, p.name)
        ):
            env = eml.with_suffix(".env").read_text().split("\n")[:-1]
            out.append(
                Delivery(
                    path=eml,
                    queue_id=env[0],
                    sender=env[1],
                    recipients=tuple(env[2:]),
                    data=eml.read_bytes(),
                )
            )
        return out

    def received(self) -> list[bytes]:
        """Contents of the stored messages, oldest first."""
        return [d.data for d in self.deliveries()]

    def wait_received(self, n: int = 1, timeout: float = 30) -> list[bytes]:
        """Wait until at least `n` messages were stored; return all of them."""
        return self._poll(self.received, n, timeout, f"messages in {self.mailbox_dir}")


def postfix_receiver(
    base: Path,
    pki: TestPKI,
    mailbox_dir: Path,
    *,
    hostname: str = "mx.nhs.net",
    tls: bool = True,
    name: str = "receiver",
    port: int | None = None,
    main_cf: Mapping[str, str] | None = None,
) -> PostfixReceiver:
    """A Postfix acting as `hostname`, the MX of any recipient domain, on loopback.

    With `tls`, it offers STARTTLS (``smtpd_tls_security_level = may``) with a certificate
    for `hostname` from `pki` (verifies against ``pki.ca_file``), logs TLS sessions
    (``smtpd_tls_loglevel = 1``: "... TLS connection established from ...") and records
    the TLS protocol/cipher in its Received header. It accepts mail for any domain from
    127.0.0.0/8 and stores every message in `mailbox_dir` (see `PostfixReceiver`).
    Not started: use ``with postfix_receiver(...) as mx:`` or ``.start()``.
    """
    settings = {
        "default_transport": "sink:mailbox",
        "relay_transport": "sink:mailbox",
        "local_transport": "sink:mailbox",
        "sink_destination_recipient_limit": "1000",
        # Store exactly what arrived: no header rewriting or added headers for loopback.
        "local_header_rewrite_clients": "",
        "smtpd_tls_security_level": "may" if tls else "none",
        "smtpd_tls_loglevel": "1",
        "smtpd_tls_received_header": "yes",
    }
    if tls:
        chain, key = pki.server_cert(hostname)
        settings["smtpd_tls_chain_files"] = f"{key}, {chain}"
    settings.update(main_cf or {})
    inst_dir = Path(base) / name
    master = (
        "sink      unix  - n n - - pipe flags=X user=nobody null_sender= "
        f"argv={inst_dir / 'sink.sh'} ${{queue_id}} ${{sender}} ${{recipient}}\n"
    )
    return PostfixReceiver(
        base,
        name,
        mailbox_dir=mailbox_dir,
        port=port,
        myhostname=hostname,
        main_cf=settings,
        master_services=master,
    )


__all__ = [
    "Delivery",
    "PostfixError",
    "PostfixInstance",
    "PostfixReceiver",
    "free_port",
    "postfix_receiver",
    "postfix_sender",
    "require_tools",
]
