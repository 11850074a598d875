"""Load ``securemail.toml`` once, validate every value, and freeze it.

Like Postfix's parameter tables, each setting is declared once with its type, default
and allowed range (the section dataclasses below plus ``_CHECKS``); loading walks that
declaration, so an unknown key, a wrong type or an out-of-range value is reported with
the file, line and key before anything starts: ``securemail.toml:14: delivery.port:
must be between 1 and 65535``. Nothing else in securemail reads TOML or the environment.

Environment variables ``SECUREMAIL_<SECTION>_<KEY>`` override the file (lists are
comma-separated), so a container or a test can move one port without a new file; one
that overrides nothing (a misspelling) is kept in ``Config.warnings``. Values that load
but are dangerous (an open relay, a public suffix as a secure domain) are refused here
too, by checks in ``config_checks``, which also checks the files the values name.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from securemail.config_checks import (
    data_fits_a_message,
    group_needs_user,
    logs_somewhere,
    no_public_suffix,
    no_shared_domain,
    spool_url,
)
from securemail.config_values import (
    _OTHER_VARIABLES,
    _account_name,
    _base_url,
    _between,
    _domain_patterns,
    _domains,
    _EntryError,
    _host_port,
    _host_ports,
    _listen_address,
    _networks,
    _one_of,
    _optional_address,
    _recipients,
    _require_tls_from,
    _selectors,
    _syslog_facility,
    _syslog_target,
    _then,
    _tls_policy,
    _zero_or_between,
)
from securemail.core.rules import Audience
from securemail.errors import ConfigError

DEFAULT_CONFIG_NAME = "securemail.toml"
ENV_CONFIG = "SECUREMAIL_CONFIG"
ENV_PREFIX = "SECUREMAIL_"


@dataclass(frozen=True, slots=True)
class OrganisationConfig:
    name: str = "Example Trust"
    audience: Audience = Audience.HEALTH_AND_CARE
    domains: tuple[str, ...] = ("example.nhs.uk",)
    hostname: str = "mail.example.nhs.uk"


@dataclass(frozen=True, slots=True)
class ListenConfig:
    inbound: str = "127.0.0.1:2525"
    submission: str = "127.0.0.1:5870"
    max_message_size: int = 10 * 1024 * 1024  # NHSmail's attachment limit
    max_recipients: int = 100
    timeout: float = 300.0  # idle seconds per SMTP command (RFC 5321 §4.5.3.2)
    max_connections: int = 1000  # open at once, both listeners together
    max_connections_per_ip: int = 50  # open at once from one client address
    max_data_in_flight: int = 0  # DATA bytes held by all connections; 0: 4 × max_message_size
    greet_pause: float = 0.3  # seconds before the 220; a client talking first is refused

    cpu_budget: float = 20.0  # seconds of checking per message, off the event loop
    workers: int = 0  # inbound accept processes under ``serve``; 0: one per CPU core

    @property
    def data_in_flight(self) -> int:
        """``max_data_in_flight`` as used: 0 means room for four maximum-size messages."""
        return self.max_data_in_flight or 4 * self.max_message_size

    @property
    def accept_workers(self) -> int:
        """``workers`` as used: 0 means one per CPU core (``os.cpu_count``)."""
        return self.workers or os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path = Path("var/tls/cert.pem")
    key: Path = Path("var/tls/key.pem")
    ca_file: Path | None = None
    min_version: str = "1.2"


@dataclass(frozen=True, slots=True)
class DnsConfig:
    nameservers: tuple[str, ...] = ()
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    url: str = "sqlite:///var/spool.db"
    # Operator decisions (hold, release, delete, reveal) are kept this long, then pruned
    # when the spool opens, so the history outlives the mail it is about but stays bounded.
    audit_days: int = 400


@dataclass(frozen=True, slots=True)
class InboundConfig:
    deliver_to: str = "127.0.0.1:2526"
    # How we know our users (refused at RCPT, never bounced): "verify" asks deliver_to,
    # "any" accepts every local part, anything else is a file listing them.
    recipients: str = "verify"
    # Forced TLS inbound (SCCI1596, core/inbound_tls.py): "secure" refuses plain-text
    # mail from every domain classified secure, "none" from none, and a list of domain
    # patterns from those domains as well as from every secure one.
    require_tls_from: str | tuple[str, ...] = "secure"


@dataclass(frozen=True, slots=True)
class RelayConfig:
    networks: tuple[str, ...] = ()
    users_file: Path = Path("var/users.toml")
    # Failed submission AUTH per window (gateway/inbound/limits.py): per (client, login),
    # and per client address (looser, so one user behind a NAT locks out only itself).
    auth_failures_per_login: int = 5
    auth_failures_per_client: int = 30
    auth_failure_window: float = 300.0


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    port: int = 25
    tls_failure_notify_after: int = 900
    retry_base: float = 60.0
    retry_max: float = 3600.0
    max_lifetime: float = 5 * 86400.0
    concurrency: int = 100
    per_destination: int = 20
    # destination → Postfix-style policy string ("secure match=nexthop:dot-nexthop"),
    # checked at load; gateway/outbound/tls_policy.py parses and applies it.
    tls_policy: Mapping[str, str] = field(default_factory=dict)
    # where MTA-STS policies are fetched (https://mta-sts.DOMAIN:PORT/.well-known/...);
    # only tests point it elsewhere (gateway/outbound/mta_sts.py)
    https_port: int = 443


@dataclass(frozen=True, slots=True)
class DkimConfig:
    key_dir: Path = Path("var/dkim")
    selector: str = "s1"
    sign: bool = True  # sign outbound mail from our domains when a key exists


@dataclass(frozen=True, slots=True)
class AuthConfig:
    verify: bool = True  # SPF, DKIM, DMARC and ARC on inbound mail
    enforce_dmarc: bool = True  # p=reject refused, p=quarantine marked/diverted
    secure_senders_must_pass: bool = True  # From: a secure domain must pass DMARC
    quarantine_to: str = ""  # deliver quarantined mail here instead (an address)
    arc_seal: bool = True  # ARC-seal what we forward to the internal server


@dataclass(frozen=True, slots=True)
class CheckConfig:
    smtp_port: int = 25
    https_port: int = 443
    selectors: tuple[str, ...] = ()
    concurrency: int = 50
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    accredited_list: Path | None = None
    secure_domains: tuple[str, ...] = ()
    deny_domains: tuple[str, ...] = ()
    unknown_sensitive_action: str = "hold"
    unscannable: str = "sensitive"


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "text"  # "text" (one line per event) or "json" (one object per line)
    stderr: bool = True  # false: syslog only (under systemd both reach the journal)
    syslog: str = ""  # "": off; a Unix socket ("/dev/log") or "udp:HOST:PORT"
    syslog_facility: str = "mail"


@dataclass(frozen=True, slots=True)
class PortalConfig:
    """The secure portal (``securemail/portal``): where its keys and messages live and
    how long links, passcodes and sessions last."""

    enabled: bool = False
    key_file: Path = Path("var/portal.key")  # 32 random bytes, 0600 (portal keygen)
    database: Path = Path("var/portal.db")
    retention_days: int = 30  # then the wrapped key and ciphertext are deleted
    base_url: str = "https://localhost:8443"  # links are <base_url>/m/<token>
    listen: str = "127.0.0.1:8443"  # the web listener (HTTPS)
    passcode_minutes: int = 10
    max_tries: int = 5  # wrong passcodes, then the message locks
    session_minutes: int = 15


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Who the gateway runs as, and how ``securemail reload`` and ``accredited import``
    find the running one."""

    group: str = ""  # the primary group after the switch ("": the user's own)
    user: str = ""  # started as root, serve binds its ports, then runs as this user
    pid_file: Path = Path("var/securemail.pid")  # written once listening, removed at stop

    @property
    def state_file(self) -> Path:
        """Beside the pid file: what the gateway runs with and its last reload's result
        (``gateway.control``); derived, so the two cannot be configured apart."""
        return self.pid_file.with_name(f"{self.pid_file.stem}.state.json")


@dataclass(frozen=True, slots=True)
class Config:
    organisation: OrganisationConfig = field(default_factory=OrganisationConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    log: LogConfig = field(default_factory=LogConfig)
    portal: PortalConfig = field(default_factory=PortalConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    source: Path | None = None
    """The file this was loaded from (None: built-in defaults)."""
    warnings: tuple[str, ...] = ()
    """Loadable but probably not meant (a misspelt variable): shown, never fatal."""


# --- value checks: each returns the cleaned value or raises ValueError(message) -------


_PORT = _between(1, 65535)
_CHECKS: Mapping[tuple[str, str], Callable[[object], object]] = {
    ("organisation", "domains"): _then(_domains, no_shared_domain),
    ("listen", "inbound"): _listen_address,
    ("listen", "submission"): _listen_address,
    ("tls", "min_version"): _one_of("1.2", "1.3"),
    ("dns", "nameservers"): _host_ports,
    ("dns", "timeout"): _between(0.1, 120),
    ("spool", "url"): spool_url,
    ("spool", "audit_days"): _between(1, 36500),
    ("inbound", "deliver_to"): _host_port,
    ("inbound", "recipients"): _recipients,
    ("inbound", "require_tls_from"): _require_tls_from,
    ("relay", "networks"): _networks,
    ("relay", "auth_failures_per_login"): _between(1, 1000),
    ("relay", "auth_failures_per_client"): _between(1, 100_000),
    ("relay", "auth_failure_window"): _between(1, 86400),
    ("listen", "max_message_size"): _between(1024, 1024**3),
    ("listen", "max_recipients"): _between(1, 10000),
    ("listen", "timeout"): _between(1, 3600),
    ("listen", "max_connections"): _between(1, 1_000_000),
    ("listen", "max_connections_per_ip"): _between(1, 1_000_000),
    ("listen", "max_data_in_flight"): _zero_or_between(1024, 1024**4),
    ("listen", "greet_pause"): _between(0, 60),
    ("listen", "cpu_budget"): _between(1, 3600),
    ("listen", "workers"): _between(0, 64),
    ("delivery", "port"): _PORT,
    ("delivery", "retry_base"): _between(0.01, 86400),
    ("delivery", "retry_max"): _between(0.01, 7 * 86400),
    ("delivery", "max_lifetime"): _between(1, 30 * 86400),
    ("delivery", "concurrency"): _between(1, 10000),
    ("delivery", "per_destination"): _between(1, 1000),
    ("delivery", "tls_failure_notify_after"): _between(0, 5 * 86400),
    ("delivery", "tls_policy"): _tls_policy,
    ("delivery", "https_port"): _PORT,
    ("dkim", "selector"): _selectors,
    ("check", "smtp_port"): _PORT,
    ("check", "https_port"): _PORT,
    ("check", "selectors"): _selectors,
    ("check", "concurrency"): _between(1, 10000),
    ("check", "timeout"): _between(0.1, 300),
    ("auth", "quarantine_to"): _optional_address,
    ("policy", "secure_domains"): _then(_domain_patterns, no_public_suffix),
    ("policy", "deny_domains"): _domain_patterns,
    ("policy", "unknown_sensitive_action"): _one_of("hold", "reject", "portal"),
    ("policy", "unscannable"): _one_of("sensitive", "ignore"),
    ("log", "format"): _one_of("text", "json"),
    ("log", "syslog"): _syslog_target,
    ("log", "syslog_facility"): _syslog_facility,
    ("service", "group"): _account_name,
    ("service", "user"): _account_name,
    ("portal", "retention_days"): _between(1, 3650),
    ("portal", "base_url"): _base_url,
    ("portal", "listen"): _listen_address,
    ("portal", "passcode_minutes"): _between(1, 60),
    ("portal", "max_tries"): _between(1, 20),
    ("portal", "session_minutes"): _between(1, 24 * 60),
}

# Checks across the keys of one section, run once it is built; each raises
# ValueError(message) about the key it is listed under.
_RELATIONS: Mapping[tuple[str, str], Callable[[object], None]] = {
    ("listen", "max_data_in_flight"): data_fits_a_message,
    ("log", "stderr"): logs_somewhere,
    ("service", "group"): group_needs_user,
}


# --- loading -------------------------------------------------------------------------


def find_config(path: Path | None) -> Path | None:
    """The file to load: ``--config``, else ``$SECUREMAIL_CONFIG``, else ./securemail.toml."""
    if path is not None:
        return path
    if env := os.environ.get(ENV_CONFIG):
        return Path(env)
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.is_file() else None


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load, override from the environment, validate. Raises ``ConfigError`` (one line)."""
    environ = os.environ if environ is None else environ
    source = find_config(path)
    text = ""
    data: dict[str, object] = {}
    if source is not None:
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such config file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    base = source.resolve().parent if source is not None else Path.cwd()
    where = _Locator(source, text)
    sections: dict[str, object] = {}
    for name, value in data.items():
        if name not in _SECTIONS:
            raise ConfigError(f"{where(name, None)}: unknown section [{name}]")
        if not isinstance(value, dict):
            raise ConfigError(f"{where(name, None)}: [{name}] must be a table")
    for name, cls in _SECTIONS.items():
        raw = dict(typing.cast(dict[str, object], data.get(name, {})))
        sections[name] = _build_section(name, cls, raw, environ, base, where)
    for (name, key), relation in _RELATIONS.items():
        try:
            relation(sections[name])
        except ValueError as exc:
            raise ConfigError(f"{where(name, key)}: {name}.{key}: {exc}") from None
    policy, portal = sections["policy"], sections["portal"]
    if policy.unknown_sensitive_action == "portal" and not portal.enabled:  # type: ignore[attr-defined]
        raise ConfigError(
            f"{where('policy', 'unknown_sensitive_action')}: policy.unknown_sensitive_action:"
            ' "portal" needs the portal: [portal] enabled = true'
        )
    warnings = tuple(_unknown_variables(environ))
    return Config(**sections, source=source, warnings=warnings)  # type: ignore[arg-type]


def service_config(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> ServiceConfig:
    """``[service]`` of the configuration, even when the file as a whole does not load.

    ``securemail reload`` is how an operator learns that a just-edited file is refused
    (the running gateway reads it, logs why and answers), so it must find the gateway
    through a file with a syntax error in another section: then the one key is read
    line by line, as ``pid_file = "PATH"`` under ``[service]``, else its default.
    """
    environ = os.environ if environ is None else environ
    try:
        return load_config(path, environ).service
    except ConfigError:
        pass
    source = find_config(path)
    name = f"{ENV_PREFIX}SERVICE_PID_FILE"
    found: str | None = environ.get(name)
    if found is None and source is not None:
        try:
            lines = source.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        section = ""
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("["):
                section = stripped.split("]")[0].strip("[ ")
            elif section == "service" and (
                match := re.fullmatch(r"""pid_file\s*=\s*(["'])([^"']+)\1\s*(#.*)?""", stripped)
            ):
                found = match.group(2)
    if not found:
        return ServiceConfig()
    pid_file = Path(found).expanduser()
    if not pid_file.is_absolute() and source is not None:
        pid_file = source.resolve().parent / pid_file
    return ServiceConfig(pid_file=pid_file)


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``SECUREMAIL_*`` variables that override nothing: a misspelling would otherwise
    leave the file's value in force without a word."""
    known = {ENV_CONFIG, *_OTHER_VARIABLES}
    for section, cls in _SECTIONS.items():
        known |= {f"{ENV_PREFIX}{section}_{f.name}".upper() for f in dataclasses.fields(cls)}
    return [
        f"${name}: not a securemail setting, ignored{_close_match(name, known)}"
        for name in sorted(environ)
        if name.startswith(ENV_PREFIX) and name not in known
    ]


def _build_section(
    section: str,
    cls: type,
    raw: dict[str, object],
    environ: Mapping[str, str],
    base: Path,
    where: _Locator,
) -> object:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            hint = _close_match(key, names)
            raise ConfigError(f"{where(section, key)}: {section}.{key}: unknown key{hint}")
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        env_name = f"{ENV_PREFIX}{section}_{f.name}".upper()
        origin = where(section, f.name)
        if env_name in environ:
            raw[f.name] = _from_env(environ[env_name], hints[f.name])
            origin = f"${env_name}"
        if f.name not in raw:
            continue
        try:
            value = _coerce(raw[f.name], hints[f.name], base)
            check = _CHECKS.get((section, f.name))
            values[f.name] = check(value) if check else value
        except _EntryError as exc:
            at = origin if origin.startswith("$") else where.entry(section, f.name, exc.entry)
            key = f"{section}.{f.name}.{_quoted(exc.entry)}"
            raise ConfigError(f"{at}: {key}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"{origin}: {section}.{f.name}: {exc}") from None
    return cls(**values)


def _coerce(value: object, hint: object, base: Path) -> object:
    """Check a TOML value against the declared type, converting where the type says."""
    args = typing.get_args(hint)
    if args and type(None) in args:  # Path | None: "" means "not set"
        if value in ("", None):
            return None
        hint = next(a for a in args if a is not type(None))
    if set(args) == {str, tuple[str, ...]}:  # a word or a list ([inbound] require_tls_from)
        if isinstance(value, str):
            return value
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError(f"expected a string or a list of strings, got {_tname(value)}")
    if hint is Path:
        if not isinstance(value, str):
            raise ValueError(f"expected a path string, got {_tname(value)}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {_tname(value)}")
        return tuple(value)
    if typing.get_origin(hint) is Mapping:  # a table of strings (read-only by its type)
        if not isinstance(value, dict):
            raise ValueError(f"expected a table of strings, got {_tname(value)}")
        for entry, item in value.items():
            if not isinstance(item, str):
                dots = ' (quote a key with dots: "nhs.net")' if isinstance(item, dict) else ""
                raise _EntryError(entry, f"expected a string, got {_tname(item)}{dots}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_tname(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {_tname(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_tname(value)}")
        return float(value)
    if isinstance(hint, type) and issubclass(hint, str):  # str and StrEnum
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_tname(value)}")
        if hint is not str:
            allowed = [m.value for m in typing.cast(type[Audience], hint)]
            if value not in allowed:
                raise ValueError(f"expected one of {', '.join(allowed)}")
            return hint(value)
        return value
    raise TypeError(f"unsupported config type {hint!r}")  # a bug in the schema, not input


def _from_env(text: str, hint: object) -> object:
    """Environment values are strings; read them as the declared type would be in TOML.
    Where a key takes a word or a list, a comma makes it a list (``partner.org,``)."""
    if str in typing.get_args(hint) and "," in text:
        return [item.strip() for item in text.split(",") if item.strip()]
    if typing.get_origin(hint) is tuple:
        return [item.strip() for item in text.split(",") if item.strip()]
    if hint is int and re.fullmatch(r"-?\d+", text.strip()):
        return int(text)
    if hint is float and re.fullmatch(r"-?\d+(\.\d*)?", text.strip()):
        return float(text)
    if hint is bool and text.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return text.strip().lower() in ("true", "1", "yes")
    return text


def _tname(value: object) -> str:
    names = {
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        dict: "a table",
    }
    return names.get(type(value), type(value).__name__)


def _quoted(key: str) -> str:
    """A TOML key as written in an error: always quoted, so dots read as part of it."""
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _close_match(key: str, names: set[str]) -> str:
    import difflib

    match = difflib.get_close_matches(key, sorted(names), n=1)
    return f" (did you mean {match[0]}?)" if match else ""


class _Locator:
    """Find ``file:line`` for a section or key, so errors point where to edit."""

    def __init__(self, source: Path | None, text: str) -> None:
        self.source = source
        self.lines = text.splitlines()

    def __call__(self, section: str, key: str | None) -> str:
        name = str(self.source) if self.source else "<defaults>"
        in_section = False
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            if stripped.startswith("["):
                in_section = stripped.strip("[] ") == section
                if in_section and key is None:
                    return f"{name}:{number}"
            elif in_section and key and re.match(rf"{re.escape(key)}\s*=", stripped):
                return f"{name}:{number}"
        return name

    def entry(self, section: str, key: str, entry: str) -> str:
        """``file:line`` of one entry of a table: under ``[section.key]``, or written
        inline (``key = {...}``, ``key."x" = ...``) in ``[section]``; else the key's."""
        name = str(self.source) if self.source else "<defaults>"
        quoted = rf"(?:\"{re.escape(entry)}\"|'{re.escape(entry)}'|{re.escape(entry)})"
        table = inline = False
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            if stripped.startswith("["):
                header = stripped.split("]")[0].strip("[ ")
                table, inline = header == f"{section}.{key}", header == section
                continue
            under_table = table and re.match(rf"{quoted}\s*=", stripped)
            written_inline = inline and re.match(
                rf"{re.escape(key)}\s*(?=[.=]).*?[{{.,]\s*{quoted}\s*=", stripped
            )
            if under_table or written_inline:
                return f"{name}:{number}"
        return self(section, key)


_SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if f.name not in ("source", "warnings")
}


def default_config_text() -> str:
    """The commented configuration ``securemail config init`` writes."""
    return resources.files("securemail").joinpath("default_config.toml").read_text("utf-8")
