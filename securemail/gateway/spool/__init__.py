"""The durable mail queue: ``open_spool(config.spool.url)`` and the records it keeps.

Only this module knows which backends exist, so the rest of the gateway names a spool by
URL, as it is written in ``securemail.toml``, and never imports a backend.
"""

from __future__ import annotations

from pathlib import Path

from securemail.errors import ConfigError
from securemail.gateway.spool.sqlite import SpoolStats, SqliteSpool
from securemail.gateway.spool.store import (
    MOVES_FROM,
    Action,
    Change,
    Decision,
    Delivery,
    HistoryEntry,
    MessageInfo,
    NewMessage,
    NewRecipient,
    Outcome,
    RcptState,
    RcptStatus,
    Spool,
    SpoolClosedError,
    SpoolError,
    StsPolicyRecord,
    new_queue_id,
)

__all__ = [
    "MOVES_FROM",
    "Action",
    "Change",
    "Decision",
    "Delivery",
    "HistoryEntry",
    "MessageInfo",
    "NewMessage",
    "NewRecipient",
    "Outcome",
    "RcptState",
    "RcptStatus",
    "Spool",
    "SpoolClosedError",
    "SpoolError",
    "SpoolStats",
    "SqliteSpool",
    "StsPolicyRecord",
    "new_queue_id",
    "open_spool",
    "spool_path",
]

_SQLITE = "sqlite:///"
_EXPECTED = "expected sqlite:///relative/path.db or sqlite:////absolute/path.db"


def spool_path(url: str, *, base: Path | None = None) -> Path:
    """The database file a ``sqlite:`` URL names; relative paths are relative to ``base``
    (the configuration file's directory, or the current directory)."""
    scheme = url.partition(":")[0].lower()
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        raise ConfigError(f"spool.url: postgresql:// is not supported yet ({_EXPECTED})")
    if not url.startswith(_SQLITE):
        raise ConfigError(f"spool.url: {url!r}: {_EXPECTED}")
    rest = url.removeprefix(_SQLITE)
    if not rest.strip("/") or "?" in rest or "#" in rest or rest == ":memory:":
        raise ConfigError(f"spool.url: {url!r} does not name a database file ({_EXPECTED})")
    path = Path(rest)
    return path if path.is_absolute() else (base or Path.cwd()) / path


def open_spool(
    url: str, *, base: Path | None = None, audit_days: float | None = None, linger: float = 0.0
) -> Spool:
    """The spool ``url`` names, not yet opened (``await spool.open()``); operator
    decisions older than ``audit_days`` are forgotten when it opens (``[spool]
    audit_days``; None keeps them); ``linger``: seconds a commit waits for company
    (``SqliteSpool._take``)."""
    return SqliteSpool(spool_path(url, base=base), audit_days=audit_days, linger=linger)
