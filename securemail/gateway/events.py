"""What the gateway did, as typed events, and the sinks that record them.

Every stage reports through one ``EventSink`` instead of formatting log lines itself, so
the record of what happened has one shape: the log sink below writes today's log lines
(``accepted id=… from=<…> …``, ``auth id=…``, ``delivery id=…``), and the audit trail,
metrics and TLS-RPT aggregation become further sinks reading the same events, never a
second reading of the log. Events are plain frozen records; formatting lives in the sink.

Peer-supplied values (addresses, EHLO names, user names, remote replies) are neutralised
in one place, ``OneLineFormatter`` (installed by ``securemail serve``): nobody can write
a fake log line by sending CR/LF in an AUTH name or a reply, whichever code logged it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from securemail.core.levels import TlsFailure


@dataclass(frozen=True, slots=True)
class RcptDecision:
    rcpt: str
    action: str
    tls: str  # the level's label, or "-" when nothing is sent


@dataclass(frozen=True, slots=True)
class Accepted:
    queue_id: str
    sender: str
    rcpts: int
    held: int
    size: int
    client: str
    tls: str
    auth_user: str
    sensitive: bool
    decisions: tuple[RcptDecision, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """A message refused at end of DATA (policy, authentication, a spool failure), or
    at MAIL (a sender the signed-in user does not own)."""

    sender: str
    client: str
    reply: str
    reason: str
    check: str


@dataclass(frozen=True, slots=True)
class ForcedTlsRefused:
    """Mail from a domain that must arrive over TLS (``core.inbound_tls``) in a session
    without it, refused before anything was stored: at MAIL (``identity`` "MAIL FROM")
    or at end of DATA ("header From"). ``rule`` names what forced it
    (``guidance:nhs.net``, ``accredited``, ``local secure_domains``,
    ``require_tls_from:*.partner.org``)."""

    identity: str
    domain: str
    rule: str
    client: str
    sender: str  # the envelope sender ("" for the null sender)
    reply: str
    reason: str


@dataclass(frozen=True, slots=True)
class AuthJudged:
    queue_id: str
    sender: str
    header_from: str | None
    methods: tuple[tuple[str, str], ...]  # (method, result), in header order
    action: str
    trusted: bool
    detail: str


@dataclass(frozen=True, slots=True)
class NoticeQueued:
    """A DSN (failed/delayed) generated for a sender."""

    kind: str
    queue_id: str
    to: str
    reply: str


@dataclass(frozen=True, slots=True)
class NoticeSkipped:
    queue_id: str
    to: str
    reason: str


@dataclass(frozen=True, slots=True)
class SessionAuth:
    """A submission AUTH attempt (``outcome``: ok, failed, rate-limited)."""

    user: str
    client: str
    outcome: str


@dataclass(frozen=True, slots=True)
class RelayDenied:
    client: str
    rcpt: str


@dataclass(frozen=True, slots=True)
class RcptRefused:
    """A recipient refused at RCPT for a reason worth a log line (unknown user, ...)."""

    client: str
    rcpt: str
    reply: str
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionRefused:
    """A connection turned away before the greeting (too many, talked first)."""

    client: str
    reply: str
    reason: str


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One recipient's reply from a remote server."""

    queue_id: str
    rcpt: str
    relay: str
    tls: str  # "TLSv1.3 TLS_AES_256_GCM_SHA384" or "no TLS"
    verified: bool
    delay: float
    result: str  # sent | deferred | bounced
    reply: str
    verified_by: str = ""  # which check verified the peer ("pkix:mx-hostname"), or ""
    transport: str = ""  # the transport decision's label: "tls=required (secure recipient)"


@dataclass(frozen=True, slots=True)
class Deferred:
    queue_id: str
    rcpt: str
    tls_failure: TlsFailure | None
    retry_in: float
    reason: str
    transport: str = ""  # the transport decision's label, as for DeliveryAttempt


@dataclass(frozen=True, slots=True)
class Bounced:
    queue_id: str
    rcpt: str
    reason: str
    transport: str = ""


@dataclass(frozen=True, slots=True)
class MtaStsFetched:
    """A destination's MTA-STS policy fetched and put in force (RFC 8461 §3.3)."""

    domain: str
    policy_id: str
    mode: str
    max_age: int
    mx: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MtaStsFailure:
    """What an MTA-STS policy would have refused, or a policy that could not be had.

    Two kinds, both in RFC 8460 §4.3 terms for the TLS-RPT reports to come: a failed
    fetch or refresh (``sts-policy-fetch-error``, ``sts-webpki-invalid``,
    ``sts-policy-invalid``; ``mx`` empty, ``kept`` the id of the cached policy still in
    force, if any), and a delivery under a ``testing`` policy that ``enforce`` would
    have refused (``mx`` the host; the mail went as before). Refusals under ``enforce``
    are ``Deferred`` events, whose label names the policy.
    """

    domain: str
    failure: TlsFailure
    detail: str
    policy_id: str = ""
    mode: str = ""
    mx: str = ""
    kept: str = ""


@dataclass(frozen=True, slots=True)
class TlsAlert:
    """Forced TLS has kept failing: the sender is told the message has not arrived."""

    queue_id: str
    rcpt: str
    failure: TlsFailure | None
    waited: str
    sender: str
    reason: str


@dataclass(frozen=True, slots=True)
class OperatorDecision:
    """An operator's hold, release, delete or reveal, as the spool's history holds it.

    Logged by the gateway (the queue manager reads the history), not by the ``queue``
    command that made it: the command runs as whoever typed it, possibly with no access
    to the gateway's log, and the decision may be made while the gateway is down.
    """

    queue_id: str
    rcpt: str  # "" when the decision covered the whole message
    action: str
    operator: str
    reason: str
    at: float  # when it was made (the line is written when the gateway sees it)


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """Start, listen, recovery, stop: operator-facing facts about the gateway itself."""

    message: str
    warning: bool = False


Event = (
    Accepted
    | Refused
    | ForcedTlsRefused
    | AuthJudged
    | NoticeQueued
    | NoticeSkipped
    | SessionAuth
    | RelayDenied
    | RcptRefused
    | ConnectionRefused
    | DeliveryAttempt
    | Deferred
    | Bounced
    | TlsAlert
    | OperatorDecision
    | MtaStsFetched
    | MtaStsFailure
    | Lifecycle
)


class EventSink(Protocol):
    def emit(self, event: Event) -> None: ...


class Fanout:
    """Several sinks as one; a failing sink never stops the others (or the mail)."""

    def __init__(self, sinks: Iterable[EventSink]) -> None:
        self.sinks = tuple(sinks)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # a broken audit/metrics sink must not lose mail
                logging.getLogger("securemail.events").exception("event sink failed")


class MemorySink:
    """Keeps events in order (tests, and ``securemail`` tools that want a summary)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """One log line stays one line: control characters become ``\\xNN``."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The gateway's log line (``securemail serve``, its CPU workers' records included)."""
SYSLOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
"""The same line for syslog, which adds its own time (and ``securemail[PID]:``)."""


def iso_time(record: logging.LogRecord) -> str:
    """When a record was made, in ISO 8601 with the local offset, to the millisecond
    (``2026-01-31T09:00:00.123+00:00``): a log read in another time zone, or across a
    clock change, still says when something happened."""
    return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


def utc_stamp(epoch: float) -> str:
    """An epoch time as ``2026-11-30T14:02:11Z``: how operator decisions are dated in the
    log and by ``securemail queue``, so the two can be matched by eye."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class OneLineFormatter(logging.Formatter):
    """The one place log text is made safe: every record's message (whatever wrote it:
    the log sink, a library, an exception text quoting a peer) has its control
    characters escaped, so a CR/LF in an AUTH name, an address or a remote reply cannot
    forge a log line. Tracebacks, which we write, keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record)


class JsonLineFormatter(logging.Formatter):
    """``[log] format = "json"``: one JSON object per record (``time``, ``level``,
    ``logger``, ``message``, and ``exception`` when there is a traceback). JSON escapes
    every control character, so a peer's CR/LF cannot forge a record here either."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": iso_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # a CPU worker's record carries only the text
            entry["exception"] = record.exc_text
        return json.dumps(entry)


def log_formatter(kind: str, *, timestamp: bool = True) -> logging.Formatter:
    """The formatter for ``[log] format`` (``text`` or ``json``, checked by the config).

    ``timestamp=False`` drops the text line's leading time (syslog stamps each record
    itself); a JSON object keeps its ``time`` field, which a shipper reads.
    """
    if kind == "json":
        return JsonLineFormatter()
    return OneLineFormatter(LOG_FORMAT if timestamp else SYSLOG_FORMAT)


def _decisions(decisions: Sequence[RcptDecision]) -> str:
    return str([(d.rcpt, d.action, d.tls) for d in decisions])


_GW, _SMTP, _QUEUE = "securemail.gateway", "securemail.smtp", "securemail.queue"
_DELIVERY = "securemail.delivery"
_INFO, _WARNING = logging.INFO, logging.WARNING
_ROUTES: dict[type, tuple[int, str]] = {
    Accepted: (_INFO, _GW),
    Refused: (_WARNING, _GW),
    ForcedTlsRefused: (_WARNING, _SMTP),
    AuthJudged: (_INFO, _GW),
    NoticeQueued: (_INFO, _GW),
    NoticeSkipped: (_WARNING, _GW),
    RelayDenied: (_WARNING, _SMTP),
    RcptRefused: (_WARNING, _SMTP),
    ConnectionRefused: (_WARNING, _SMTP),
    DeliveryAttempt: (_INFO, _DELIVERY),
    Deferred: (_INFO, _QUEUE),
    Bounced: (_WARNING, _QUEUE),
    TlsAlert: (_WARNING, _QUEUE),
    OperatorDecision: (_INFO, _QUEUE),
    MtaStsFetched: (_INFO, _DELIVERY),
    MtaStsFailure: (_WARNING, _DELIVERY),
}


def _route(event: Event) -> tuple[int, str]:
    """The level and logger of an event's line: known before its text is made, so an
    event whose logger would drop it costs a dict lookup, not a formatted line."""
    match event:
        case SessionAuth():
            return (_INFO if event.outcome == "ok" else _WARNING), _SMTP
        case Lifecycle():
            return (_WARNING if event.warning else _INFO), _GW
    return _ROUTES[type(event)]


def _line(event: Event) -> tuple[str, tuple[object, ...]]:
    """The log line for an event, as format and arguments: the one place log text is
    written (``_route`` says at which level, to which logger)."""
    match event:
        case Accepted():
            e = event
            return (
                (
                    "accepted id=%s from=<%s> rcpts=%d held=%d size=%d client=%s tls=%s auth=%s "
                    "sensitive=%s decisions=%s"
                ),
                (
                    e.queue_id,
                    e.sender,
                    e.rcpts,
                    e.held,
                    e.size,
                    e.client,
                    e.tls or "none",
                    e.auth_user or "-",
                    "yes" if e.sensitive else "no",
                    _decisions(e.decisions),
                ),
            )
        case Refused():
            e = event
            return (
                "refused from=<%s> client=%s check=%s reply=%r reason=%r",
                (e.sender, e.client, e.check or "-", e.reply, e.reason),
            )
        case ForcedTlsRefused():
            e = event
            return (
                "forced TLS inbound: refused %s domain=%s rule=%s client=%s from=<%s> "
                "reply=%r reason=%r",
                (e.identity, e.domain, e.rule, e.client, e.sender, e.reply, e.reason),
            )
        case AuthJudged():
            e = event
            methods = " ".join(f"{m}={r}" for m, r in e.methods)
            return (
                ("auth id=%s from=<%s> header_from=%s %s action=%s trust=%s detail=%r"),
                (
                    e.queue_id,
                    e.sender,
                    e.header_from,
                    methods,
                    e.action,
                    "secure" if e.trusted else "external",
                    e.detail,
                ),
            )
        case NoticeQueued():
            e = event
            return (
                "dsn (%s) for id=%s to=<%s>: %s",
                (e.kind, e.queue_id, e.to, e.reply),
            )
        case NoticeSkipped():
            e = event
            return (
                "no DSN for id=%s to=<%s>: %s",
                (e.queue_id, e.to, e.reason),
            )
        case SessionAuth():
            e = event
            return "auth %s user=%s client=%s", (e.outcome, e.user, e.client)
        case RelayDenied():
            e = event
            return (
                "relay denied client=%s rcpt=<%s>",
                (e.client, e.rcpt),
            )
        case RcptRefused():
            e = event
            return (
                "rcpt refused client=%s rcpt=<%s> reply=%r reason=%r",
                (e.client, e.rcpt, e.reply, e.reason),
            )
        case ConnectionRefused():
            e = event
            return (
                "connection refused client=%s reply=%r reason=%r",
                (e.client, e.reply, e.reason),
            )
        case DeliveryAttempt():
            e = event
            return (
                "delivery id=%s rcpt=<%s> relay=%s tls=%s (%s) delay=%.3f result=%s reply=%r"
                " transport=%r",
                (
                    e.queue_id,
                    e.rcpt,
                    e.relay,
                    e.tls,
                    f"verified by {e.verified_by}"
                    if e.verified and e.verified_by
                    else "verified"
                    if e.verified
                    else "unverified",
                    e.delay,
                    e.result,
                    e.reply[:200],
                    e.transport or "-",
                ),
            )
        case Deferred():
            e = event
            failure = e.tls_failure.value if e.tls_failure else "-"
            return (
                "deferred id=%s rcpt=<%s> tls_failure=%s failure=%s retry_in=%.0fs reason=%r"
                " transport=%r",
                (
                    e.queue_id,
                    e.rcpt,
                    "yes" if e.tls_failure else "no",
                    failure,
                    e.retry_in,
                    e.reason,
                    e.transport or "-",
                ),
            )
        case Bounced():
            e = event
            return (
                "bounced id=%s rcpt=<%s> reason=%r transport=%r",
                (e.queue_id, e.rcpt, e.reason, e.transport or "-"),
            )
        case TlsAlert():
            e = event
            return (
                "ALERT forced TLS failing id=%s rcpt=<%s> failure=%s for %s; "
                "sender <%s> notified: %s",
                (
                    e.queue_id,
                    e.rcpt,
                    e.failure.value if e.failure else "-",
                    e.waited,
                    e.sender,
                    e.reason,
                ),
            )
        case OperatorDecision():
            e = event
            return (
                "operator decision queue_id=%s rcpt=%s action=%s by=%r reason=%r at=%s",
                (e.queue_id, f"<{e.rcpt}>" if e.rcpt else "*", e.action, e.operator, e.reason,
                 utc_stamp(e.at)),
            )  # fmt: skip
        case MtaStsFetched():
            e = event
            return (
                "mta-sts policy domain=%s id=%s mode=%s max_age=%d mx=%s",
                (e.domain, e.policy_id, e.mode, e.max_age, ",".join(e.mx) or "-"),
            )
        case MtaStsFailure():
            e = event
            return (
                "mta-sts failure domain=%s failure=%s mode=%s id=%s mx=%s kept=%s detail=%r",
                (e.domain, e.failure.value, e.mode or "-", e.policy_id or "-", e.mx or "-",
                 e.kept or "-", e.detail),
            )  # fmt: skip
        case Lifecycle():
            return "%s", (event.message,)


class LogSink:
    """Today's log lines, from events (the logger's level still filters them)."""

    def __init__(self) -> None:
        self._loggers: dict[str, logging.Logger] = {}

    def emit(self, event: Event) -> None:
        level, name = _route(event)
        logger = self._loggers.get(name)
        if logger is None:
            logger = self._loggers[name] = logging.getLogger(name)
        if logger.isEnabledFor(level):  # else nothing is formatted, not even the arguments
            fmt, args = _line(event)
            logger.log(level, fmt, *args)
