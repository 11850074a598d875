"""What ``config check`` (and ``serve``, before it starts) finds beyond types and ranges.

Two kinds. Values that load but are dangerous (an open relay, ``nhs.uk`` as a secure
domain, ``nhs.net`` as ours) are refused by ``config._CHECKS`` with these functions, so
they stop every command, not only ``config check``. Files the configuration names
(certificate, key, users, DKIM keys, accredited list) are checked by ``check_files``:
once at ``serve`` start and in ``config check``, never at every load, because most
commands read none of them. Each finding names the key to edit, so ``tls.cert:
var/tls/cert.pem: no such file`` replaces a bare ``tls: None: no such file`` at start.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, cast

from securemail.core.rules import GUIDE, SECURE_SUFFIXES
from securemail.errors import ConfigError, SecuremailError
from securemail.mech.psl import is_public_suffix

if TYPE_CHECKING:
    from securemail.config import Config, ListenConfig, LogConfig


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
    setting = cfg.inbound.recipients
    if setting in ("any", "verify"):
        return []
    path = Path(setting)  # relative to the config file, as recipient_check reads it
    if not path.is_absolute() and cfg.source is not None:
        path = cfg.source.resolve().parent / path
    found = _read("inbound.recipients", path)
    if isinstance(found, Finding):
        why = "; every inbound recipient would be deferred"
        return [Finding(found.severity, found.key, found.message + why)]
    return []


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
