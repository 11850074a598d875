"""What ``config check`` (and ``serve``, before it starts) finds beyond types and ranges.

Two kinds. Values that load but are dangerous (an open relay, ``nhs.uk`` as a secure
domain, ``nhs.net`` as ours) are refused by ``config._CHECKS`` with these functions, so
they stop every command, not only ``config check``. Files the configuration names
(certificate, key, users, DKIM keys, accredited list) are checked by ``check_files``:
once at ``serve`` start and in ``config check``, never at every load, because most
commands read none of them. Each finding names the key to edit, so ``tls.cert:
var/tls/cert.pem: no such file`` replaces a bare ``tls: None: no such file`` at start.

``check_files`` also checks ``[service] user`` (it exists, is not root) and, as that
user, that it can read and write what the gateway will once ``serve`` has switched to
it: the switch comes after binding, and a file it cannot open would otherwise be a
traceback after the switch instead of one line naming the file and the user.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, cast

from securemail.core.rules import GUIDE, SECURE_SUFFIXES
from securemail.errors import ConfigError, SecuremailError
from securemail.mech.psl import is_public_suffix

if TYPE_CHECKING:
    from securemail.config import Config, ListenConfig, LogConfig, ServiceConfig
    from securemail.privileges import ServiceUser


# --- dangerous values: used by config._CHECKS, each given the cleaned value -----------


def no_public_suffix(value: object) -> object:
    """Secure-domain patterns: ``nhs.uk`` or ``*.co.uk`` would make every organisation
    registered under a public suffix secure, accredited or not."""
    for pattern in cast(tuple[str, ...], value):
        if is_public_suffix(pattern.removeprefix("*.")):
            raise ValueError(
                f"{pattern!r} covers a public suffix: every organisation registered "
                "under it would be secure (list the organisations' own domains)"
            )
    return value


def no_shared_domain(value: object) -> object:
    """Our domains: mail to them is taken as ours and mail from them signed as ours. A
    public suffix, or a whole service the guidance calls secure (``nhs.net``,
    ``secure.nhs.uk``), belongs to no single organisation."""
    for domain in cast(tuple[str, ...], value):
        if domain in SECURE_SUFFIXES:
            raise ValueError(
                f"{domain} is a shared secure service in the guidance ({GUIDE}), not one "
                "organisation's domain: all mail for it would be taken as ours"
            )
        if is_public_suffix(domain):
            raise ValueError(f"{domain} is a public suffix, not one organisation's domain")
    return value


def spool_url(value: object) -> object:
    """A spool URL ``open_spool`` cannot open is found at load, not when mail arrives."""
    # Imported here: config stays importable without the spool behind it.
    from securemail.gateway.spool import spool_path

    try:
        spool_path(cast(str, value))
    except ConfigError as exc:
        raise ValueError(str(exc).removeprefix("spool.url: ")) from None
    return value


def data_fits_a_message(listen: object) -> None:
    """``[listen]``: a DATA budget below one message would refuse every message of the
    maximum size it also allows (0 means derived, so always fits)."""
    section = cast("ListenConfig", listen)
    held, largest = section.max_data_in_flight, section.max_message_size
    if held and held < largest:
        raise ValueError(
            f"{held} is below max_message_size ({largest}): "
            "no message of the maximum size could be received"
        )


def logs_somewhere(log: object) -> None:
    """``[log] stderr = false`` needs a syslog target, or the gateway logs nowhere."""
    section = cast("LogConfig", log)
    if not section.stderr and not section.syslog:
        raise ValueError("false with no [log] syslog target: the gateway would log nowhere")


def group_needs_user(service: object) -> None:
    """``[service] group`` is the group ``serve`` switches to with the user, never alone."""
    section = cast("ServiceConfig", service)
    if section.group and not section.user:
        raise ValueError(f"{section.group!r} without [service] user: nothing switches to it")


# --- the files the configuration names ------------------------------------------------


class Severity(StrEnum):
    ERROR = "error"  # serve would fail, or run other than configured
    WARNING = "warning"  # serve runs, with something missing that is worth knowing


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem with the file a key names: ``tls.cert: var/tls/cert.pem: no such file``."""

    severity: Severity
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def check_files(cfg: Config) -> list[Finding]:
    """Every problem with the files ``cfg`` names, errors and warnings, in key order.

    Each file is read the way the gateway will read it (the same loader), so a file
    that passes here loads at start.
    """
    return [
        *_tls_files(cfg),
        *_recipient_list(cfg),
        *_users_file(cfg),
        *_dkim_keys(cfg),
        *_accredited_list(cfg),
        *_syslog_socket(cfg),
        *_service_user(cfg),
    ]


def require_files(cfg: Config) -> list[Finding]:
    """For ``serve``: raise ``ConfigError`` on the first error; return the warnings."""
    findings = check_files(cfg)
    errors = [f for f in findings if f.severity is Severity.ERROR]
    if errors:
        more = f" (and {len(errors) - 1} more: securemail config check)" if errors[1:] else ""
        raise ConfigError(f"{errors[0]}{more}")
    return findings


def _error(key: str, message: str) -> Finding:
    return Finding(Severity.ERROR, key, message)


def _warning(key: str, message: str) -> Finding:
    return Finding(Severity.WARNING, key, message)


def _read(key: str, path: Path) -> bytes | Finding:
    """The file's bytes, or the error naming the key and why it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return _error(key, f"{path}: no such file")
    except IsADirectoryError:
        return _error(key, f"{path}: is a directory, not a file")
    except OSError as exc:
        return _error(key, f"{path}: cannot read: {exc.strerror or exc}")


def _tls_files(cfg: Config) -> list[Finding]:
    """Certificate and key readable, PEM, and a pair: a key for another certificate
    fails every STARTTLS handshake, which senders then retry or send in clear."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    hint = " (create a pair: securemail tls selfsigned)"
    cert_pem, key_pem = _read("tls.cert", cfg.tls.cert), _read("tls.key", cfg.tls.key)
    found = [
        Finding(f.severity, f.key, f.message + hint * f.message.endswith("no such file"))
        for f in (cert_pem, key_pem)
        if isinstance(f, Finding)
    ]
    if cfg.tls.ca_file is not None and isinstance(
        ca := _read("tls.ca_file", cfg.tls.ca_file), Finding
    ):
        found.append(ca)
    if found:
        return found
    assert isinstance(cert_pem, bytes) and isinstance(key_pem, bytes)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return [_error("tls.cert", f"{cfg.tls.cert}: not a PEM certificate")]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        why = (
            "encrypted (the gateway cannot ask for a passphrase)"
            if isinstance(exc, TypeError)
            else "not a PEM private key"
        )
        return [_error("tls.key", f"{cfg.tls.key}: {why}")]
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        return [
            _error(
                "tls.key",
                f"{cfg.tls.key}: does not match the certificate in tls.cert ({cfg.tls.cert})",
            )
        ]
    return []


def _recipient_list(cfg: Config) -> list[Finding]:
    """``[inbound] recipients`` naming a file: unreadable, every inbound recipient would
    be deferred (the gateway cannot tell ours from unknown ones), so an error."""
    path = _recipient_file(cfg)
    if path is None:
        return []
    found = _read("inbound.recipients", path)
    if isinstance(found, Finding):
        why = "; every inbound recipient would be deferred"
        return [Finding(found.severity, found.key, found.message + why)]
    return []


def _recipient_file(cfg: Config) -> Path | None:
    """The file ``[inbound] recipients`` names, if it names one (not verify or any)."""
    setting = cfg.inbound.recipients
    if setting in ("any", "verify"):
        return None
    path = Path(setting)  # relative to the config file, as recipient_check reads it
    if not path.is_absolute() and cfg.source is not None:
        path = cfg.source.resolve().parent / path
    return path


def _users_file(cfg: Config) -> list[Finding]:
    """Missing: nobody can submit (the gateway runs). Unreadable or malformed: error."""
    from securemail.gateway.inbound.users import load_users

    path = cfg.relay.users_file
    if not path.exists():
        return [_warning("relay.users_file", f"{path}: no such file; no one can log in to "
                         "submission (securemail user add)")]  # fmt: skip
    try:
        load_users(path)
    except SecuremailError as exc:
        return [_error("relay.users_file", str(exc))]
    return []


def _dkim_keys(cfg: Config) -> list[Finding]:
    """Every key file present must load (as at start); none at all is worth a warning
    when signing is on, since our mail then goes out unsigned."""
    from securemail.mech.dkim.keys import DkimError, load_keys

    if not cfg.dkim.sign:
        return []
    key_dir = cfg.dkim.key_dir
    if not key_dir.is_dir():
        return [_warning("dkim.key_dir", f"{key_dir}: no such directory; outbound mail "
                         "goes unsigned (securemail dkim keygen)")]  # fmt: skip
    try:
        keys = load_keys(key_dir, cfg.dkim.selector, cfg.organisation.domains)
    except DkimError as exc:
        return [_error("dkim.key_dir", str(exc).removeprefix("dkim: "))]
    unsigned = [d for d in cfg.organisation.domains if d.lower().rstrip(".") not in keys]
    if unsigned:
        names = ", ".join(unsigned)
        return [_warning("dkim.key_dir", f"{key_dir}: no {cfg.dkim.selector}.pem key for "
                         f"{names}; their mail goes unsigned")]  # fmt: skip
    return []


def _accredited_list(cfg: Config) -> list[Finding]:
    """Missing: a warning, as every command gives (nothing is accredited yet). Present
    but unreadable or not a list: an error, or serve would stop at start."""
    from datetime import UTC, datetime

    from securemail.accredited_store import load_accredited

    path = cfg.policy.accredited_list
    if path is None:
        return []
    if not path.exists():
        return [_warning("policy.accredited_list", f"{path}: no such file; nothing is "
                         "accredited (securemail accredited import)")]  # fmt: skip
    try:
        load_accredited(path, today=datetime.now(UTC).date())
    except (SecuremailError, OSError) as exc:
        return [_error("policy.accredited_list", str(exc))]
    return []


def _syslog_socket(cfg: Config) -> list[Finding]:
    """A Unix socket target that is not there (yet): a warning, never an error, because
    logging must not stop mail; the gateway keeps trying it (``gateway/logs.py``)."""
    from securemail.gateway.logs import parse_syslog_target

    if not cfg.log.syslog:
        return []
    target = parse_syslog_target(cfg.log.syslog)
    if isinstance(target, tuple):
        return []  # a UDP collector cannot be asked whether it listens
    path = Path(target)
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = None
    if mode is None or not stat.S_ISSOCK(mode):
        state = "no such socket" if mode is None else "not a socket"
        return [_warning("log.syslog", f"{path}: {state}; syslog records are dropped until "
                         "it is there")]  # fmt: skip
    return []


# --- the service user -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Need:
    """A file the gateway opens after the switch, and how."""

    key: str
    path: Path
    mode: int  # os.R_OK / os.W_OK / os.X_OK, as os.access takes them
    severity: Severity
    why: str = ""


def _service_user(cfg: Config) -> list[Finding]:
    """``[service] user`` exists, is not root, and can open what the gateway will.

    Access is checked as the user (``privileges.acting_as``) when we are root, as
    ourselves when we are that user; as anyone else it cannot be (serve would refuse
    to switch anyway: ``privileges.plan_switch``).
    """
    from securemail import privileges

    try:
        user = privileges.lookup_service_user(cfg.service.user, cfg.service.group)
    except ConfigError as exc:
        key, _, message = str(exc).partition(": ")
        return [_error(key, message)]
    if user is None:
        return []
    needs = _needs(cfg)  # which files exist is decided with our own eyes
    euid = os.geteuid()
    if euid == user.uid:
        denied = _denied(needs)
    elif euid == 0:
        try:
            with privileges.acting_as(user):
                denied = _denied(needs)
        except OSError as exc:
            why = exc.strerror or str(exc)
            return [_error("service.user", f"cannot act as {user} to check its access: {why}")]
    else:
        return []
    found, blockers = [], set()
    for need, blocker in denied:
        where = "" if blocker == need.path else f": it cannot enter {blocker}"
        if where and (need.key, blocker) in blockers:
            continue  # one line per directory in the way (sys.path has many below /root)
        blockers.add((need.key, blocker))
        message = f"{need.path}: not {_verb(need)} by {user}{where}{_owner(blocker)}{need.why}"
        found.append(Finding(need.severity, need.key, message))
    return found


def _denied(needs: list[_Need]) -> list[tuple[_Need, Path]]:
    """The needs the kernel refuses the effective user (ACLs and groups included), each
    with what to fix: the first directory on the way it cannot enter, else the file."""
    denied = []
    for need in needs:
        if not os.access(need.path, need.mode, effective_ids=True):
            parents = reversed(Path(os.path.realpath(need.path)).parents)  # "/" first
            closed = (d for d in parents if not os.access(d, os.X_OK, effective_ids=True))
            denied.append((need, next(closed, need.path)))
    return denied


def _needs(cfg: Config) -> list[_Need]:
    """Every file and directory the gateway reads or writes after the switch."""
    from securemail.gateway.logs import parse_syslog_target
    from securemail.gateway.spool import spool_path

    read, write, search, error = os.R_OK, os.W_OK, os.X_OK, Severity.ERROR
    users = cfg.relay.users_file
    needs = [
        _Need("tls.cert", cfg.tls.cert, read, error),
        _Need("tls.key", cfg.tls.key, read, error),
        _Need("relay.users_file", users, read, error),
        _Need("relay.users_file", users.parent, write | search, Severity.WARNING,
              "; AUTH lockouts are not kept across restarts"),
    ]  # fmt: skip
    if cfg.source is not None:
        why = "; a reload (SIGHUP) cannot re-read it"
        needs.append(_Need("config", cfg.source, read, Severity.WARNING, why))
    if cfg.tls.ca_file is not None:
        needs.append(_Need("tls.ca_file", cfg.tls.ca_file, read, error))
    if (recipients := _recipient_file(cfg)) is not None:
        needs.append(_Need("inbound.recipients", recipients, read, error))
    if cfg.policy.accredited_list is not None:
        needs.append(_Need("policy.accredited_list", cfg.policy.accredited_list, read, error))
    keys, pem = cfg.dkim.key_dir, f"{cfg.dkim.selector}.pem"  # loaded if present, sign or not
    needs.append(_Need("dkim.key_dir", keys, read | search, error))
    for domain in cfg.organisation.domains:
        needs.append(_Need("dkim.key_dir", keys / domain / pem, read, error))
    spool = spool_path(cfg.spool.url, base=cfg.source.resolve().parent if cfg.source else None)
    # The spool creates missing directories, in the nearest one that exists.
    needs.append(_Need("spool.url", _nearest_existing(spool.parent), write | search, error))
    for path in (spool, *spool.parent.glob(f"{spool.name}-*")):  # -wal, -shm, -owner-…
        needs.append(_Need("spool.url", path, read | write, error))
    # The pid and state files are written after the switch (and at every reload).
    pid_dir = _nearest_existing(cfg.service.pid_file.absolute().parent)
    needs.append(_Need("service.pid_file", pid_dir, write | search, error))
    if cfg.log.syslog and isinstance(target := parse_syslog_target(cfg.log.syslog), str):
        why = "; syslog cannot be reconnected after it restarts"
        needs.append(_Need("log.syslog", Path(target), write, Severity.WARNING, why))
    # The code itself: the CPU workers start the interpreter, and modules are imported
    # as they are first needed (a Python under /root is out of a service user's reach).
    needs.append(_Need("service.user", Path(sys.executable), search, error,
                       "; the CPU workers run it"))  # fmt: skip
    code = "; Python code is loaded from it after the switch"
    needs += [_Need("service.user", entry, read | search, error, code) for entry in _code_dirs()]
    return [need for need in needs if _exists(need.path)]


def _code_dirs() -> list[Path]:
    """The ``sys.path`` entries code has been loaded from: the standard library, the
    site-packages, ours (not every entry: an unreadable one, such as the directory
    serve was started in, is skipped by imports without harm)."""
    entries = [Path(e) for e in dict.fromkeys(sys.path) if e and Path(e).is_absolute()]
    used: dict[Path, None] = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str):
            used.update(dict.fromkeys(e for e in entries if Path(file).is_relative_to(e)))
    return list(used)


def _nearest_existing(directory: Path) -> Path:
    """``directory``, or its nearest ancestor that exists (where it would be created)."""
    while not _exists(directory) and directory != directory.parent:
        directory = directory.parent
    return directory


def _exists(path: Path) -> bool:
    """Like ``Path.exists``, but False (not PermissionError) for what we cannot see."""
    try:
        path.stat()
    except OSError:
        return False
    return True


def _verb(need: _Need) -> str:
    if need.mode & os.W_OK:
        return "writable"
    return "readable" if need.mode & os.R_OK else "executable"


def _owner(path: Path) -> str:
    """`` (owned by root:root, mode 0600)``: usually all it takes to see the fix."""
    try:
        info = path.stat()
    except OSError:
        return ""
    try:
        user = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        user = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return f" (owned by {user}:{group}, mode {info.st_mode & 0o7777:04o})"


@dataclass(frozen=True, slots=True)
class ServiceReport:
    """What ``config check`` says about who ``serve`` will run as."""

    user: ServiceUser | None
    configured: str  # [service] user as written ("": not set)
    problem: str  # why it cannot be used ("": it can, or none is set)
    root_needed: tuple[str, ...]  # why serve must be started as root, if it must

    def __str__(self) -> str:
        if self.user is not None:
            who = f"user {self.user.name} (uid {self.user.uid}, gid {self.user.gid}) exists"
        elif self.configured:
            who = f"user {self.configured}: {self.problem}"
        else:
            who = "no [service] user: serve runs as whoever starts it (root stays root)"
        needed = "; ".join(self.root_needed) if self.root_needed else "no"
        return f"{who}; root needed: {needed}"


def describe_service(cfg: Config) -> ServiceReport:
    """The service user and why ``serve`` needs root, if it does: to bind a port below
    the kernel's unprivileged start (1024 unless changed) without CAP_NET_BIND_SERVICE,
    and to switch to the user unless it is started as that user."""
    from securemail import privileges

    user, problem = None, ""
    try:
        user = privileges.lookup_service_user(cfg.service.user, cfg.service.group)
    except ConfigError as exc:
        problem = str(exc).partition(": ")[2]
    low = privileges.first_unprivileged_port()
    listeners = {"listen.inbound": cfg.listen.inbound, "listen.submission": cfg.listen.submission}
    needed = [
        f"to bind {key} port {port} (below {low}; or CAP_NET_BIND_SERVICE)"
        for key, address in listeners.items()
        if 0 < (port := int(address.rpartition(":")[2])) < low
    ]
    if user is not None:
        needed.append(f"to switch to {user.name} (none if started as {user.name})")
    return ServiceReport(user, cfg.service.user, problem, tuple(needed))
