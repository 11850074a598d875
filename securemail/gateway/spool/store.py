"""What the rest of the gateway may ask of the spool, independent of where it keeps mail.

The spool is the gateway's promise: once a client has heard ``250`` its message is on disk
and stays there until every recipient has a final answer (delivered, or bounced with a
DSN), whatever happens to the process or the power. Everything above the spool (the
SMTP server, the queue manager, the ``queue`` commands) talks to this protocol only, so
a second backend (PostgreSQL for a clustered gateway) can be added without touching them.

A recipient moves through the states of ``RcptStatus`` like a Postfix queue file moves
between the incoming, active, deferred and hold queues::

    QUEUED ──claim──▶ DELIVERING ──record──▶ DELIVERED | BOUNCED   (final: message removed
      ▲                   │                                          once all are final)
      └──── due ── DEFERRED ◀─┘
    QUEUED | DEFERRED ──hold──▶ HELD ──release──▶ QUEUED            (operator decisions)
    HELD | QUEUED | DEFERRED ──hand_off──▶ HANDED_OFF               (final: a later stage,
                                                                      e.g. the portal, has it)

Every recipient carries the ``TlsLevel`` its delivery must achieve, as an enum, stored
NOT NULL, from acceptance to the wire. The **release rule**: a held recipient keeps the
TLS level its policy decision gave; a sensitive message held for a recipient not known to
be secure (the decision names no level, since nothing is to be sent yet) is stored with at
least ``VERIFIED``. So an operator's release can never send it in plain text or to an
unverified server: it goes out under forced TLS or waits. (When the level was a string,
``None`` for held mail read as "opportunistic" after a release.)

**Operator decisions** (``hold``, ``release``, ``delete``, and ``reveal`` of a message's
text) carry a ``Decision``: who, why, when. Each writes its state change and a
``HistoryEntry`` in one transaction, so the spool never shows a change nobody answers
for. History is kept apart from the message (a deleted or delivered message keeps it,
as ``queue show`` reports) for ``[spool] audit_days``, and the gateway writes one log
line per entry (``claim_unlogged``). Like ``postsuper -h``, a hold never touches a
DELIVERING recipient: an attempt is on the wire and its result must be recorded.

Queue ids sort by arrival time, like Postfix's long queue ids, so listing the queue in id
order lists it oldest first without a separate index.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from securemail.core.levels import TlsLevel
from securemail.errors import SecuremailError


class SpoolError(SecuremailError):
    """The spool's storage refused an operation (locked, full, unreadable, a constraint).

    The backend's own exception is kept as ``__cause__`` for the log; the message is one
    line a person can act on.
    """


class SpoolClosedError(RuntimeError):
    """An operation was attempted on a spool that is not open: a bug in the caller."""


class RcptStatus(StrEnum):
    QUEUED = "queued"  # waiting for its next attempt (next_attempt time)
    DELIVERING = "delivering"  # claimed by the queue manager; on restart back to QUEUED
    DELIVERED = "delivered"
    DEFERRED = "deferred"  # temporary failure; claimable like QUEUED once next_attempt is due
    BOUNCED = "bounced"  # permanent failure; a DSN was (or will be) generated
    HELD = "held"  # policy hold: only an operator's release/delete moves it
    HANDED_OFF = "handed-off"  # a later stage (the portal) took it over; final here


FINAL = frozenset({RcptStatus.DELIVERED, RcptStatus.BOUNCED, RcptStatus.HANDED_OFF})
ACCEPTED = frozenset({RcptStatus.QUEUED, RcptStatus.HELD})
# QUEUED puts a claimed recipient back unattempted (e.g. the gateway is shutting down).
OUTCOMES = frozenset(
    {RcptStatus.DELIVERED, RcptStatus.BOUNCED, RcptStatus.DEFERRED, RcptStatus.QUEUED}
)
# Not DELIVERING: an attempt is on the wire, and its result must not be overwritten.
HANDED_OFF_FROM = frozenset({RcptStatus.QUEUED, RcptStatus.DEFERRED, RcptStatus.HELD})


class Action(StrEnum):
    """What an operator did. The values are stored and logged, so they do not change."""

    HOLD = "hold"
    RELEASE = "release"
    DELETE = "delete"
    REVEAL = "reveal"  # read the message with NHS numbers shown (``queue cat --reveal``)


# The states each state-changing action moves a recipient out of; the one table both the
# spool (what it changes) and ``queue`` (what it counts before asking) read. A delete
# removes a recipient in any state, as ``postsuper -d`` does; a late result for it is
# then ignored (``record`` only changes DELIVERING rows that still exist).
MOVES_FROM: dict[Action, frozenset[RcptStatus]] = {
    Action.HOLD: frozenset({RcptStatus.QUEUED, RcptStatus.DEFERRED}),
    Action.RELEASE: frozenset({RcptStatus.HELD}),
    Action.DELETE: frozenset(RcptStatus),
}
OPERATOR_MAX = 200  # characters
REASON_MAX = 1000


def _check_text(what: str, value: object, limit: int) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters; at most {limit}")
    if not value.isprintable():  # line breaks, ESC, bidi overrides: one plain line only
        raise ValueError(f"{what} must be one line without control characters")


@dataclass(frozen=True, slots=True)
class Decision:
    """Who took an operator action, why, and when (epoch seconds, the caller's clock).

    Checked when made, so the spool, the history and the log line never hold an empty
    reason, an unbounded one, or one that could forge a line in a log or a terminal.
    """

    operator: str
    reason: str
    at: float

    def __post_init__(self) -> None:
        _check_text("operator", self.operator, OPERATOR_MAX)
        _check_text("reason", self.reason, REASON_MAX)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One operator decision as the spool keeps it (``rcpt`` "" = the whole message)."""

    queue_id: str
    rcpt: str
    at: float
    action: Action
    operator: str
    reason: str


@dataclass(frozen=True, slots=True)
class Change:
    """What one ``hold``, ``release`` or ``delete`` did to one message.

    Nothing changes when the message is not in the spool (``found`` false) or when a
    named recipient is not one of its recipients (``unknown``): a typo in one address
    must not half-apply a decision. ``unmoved`` are recipients the action was aimed at
    but leaves alone because of their state (a DELIVERING one for ``hold``).
    """

    queue_id: str
    action: Action
    found: bool
    changed: tuple[str, ...] = ()
    unmoved: tuple[tuple[str, RcptStatus], ...] = ()
    unknown: tuple[str, ...] = ()
    removed: bool = False  # the message left the spool (its last recipients deleted)

    @property
    def count(self) -> int:
        return len(self.changed)


@dataclass(frozen=True, slots=True)
class NewRecipient:
    address: str  # addr-spec as received (RCPT TO)
    domain: str  # normalised destination domain
    status: RcptStatus  # QUEUED or HELD at acceptance
    tls: TlsLevel  # from the policy decision; held sensitive mail: VERIFIED (release rule)
    reason: str  # policy decision reason (logged, shown by `queue show`)


@dataclass(frozen=True, slots=True)
class NewMessage:
    sender: str  # MAIL FROM ("" for the null sender)
    recipients: tuple[NewRecipient, ...]
    data: bytes  # the full message as it will be delivered (CRLF line ends)
    client: str = ""  # e.g. "127.0.0.1:54321 helo=mail.example" for logs
    auth_user: str = ""
    sensitivity: str = ""  # summary sentence
    received: float = 0.0  # epoch seconds; 0 means now
    # "" lets the spool assign one; the gateway assigns it first when the id must appear
    # in the Received: header it adds (as Postfix's does) before the message is stored.
    queue_id: str = ""
    requiretls: bool = False  # MAIL FROM … REQUIRETLS (RFC 8689): verified TLS every hop
    tls_required_no: bool = False  # the header TLS-Required: No (RFC 8689 §5)

    def check(self) -> None:
        """Refuse, before anything is queued, a message no recipient could ever leave."""
        if not self.recipients:
            raise ValueError("a message needs at least one recipient")
        if self.queue_id and not QUEUE_ID.fullmatch(self.queue_id):
            raise ValueError(f"{self.queue_id!r} is not a queue id (see new_queue_id)")
        for rcpt in self.recipients:
            if rcpt.status not in ACCEPTED:
                raise ValueError(f"{rcpt.address}: accepted as {rcpt.status}, not queued/held")
            if not isinstance(rcpt.tls, TlsLevel) or rcpt.tls is TlsLevel.NONE:
                # NONE means "send nothing": such a recipient was refused, never queued.
                raise ValueError(f"{rcpt.address}: TLS level {rcpt.tls!r} cannot be queued")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One claimed recipient: everything the queue manager needs to try it."""

    queue_id: str
    sender: str
    rcpt: str
    domain: str
    tls: TlsLevel
    attempts: int  # attempts before this one
    received: float
    size: int
    notified: bool = False  # the sender has had a delay notice (forced-TLS failures)
    requiretls: bool = False  # the message's REQUIRETLS flag (see NewMessage)
    tls_required_no: bool = False
    reason: str = ""  # the recipient's policy decision, as stored (NewRecipient.reason)


@dataclass(frozen=True, slots=True)
class RcptState:
    rcpt: str
    domain: str
    status: RcptStatus
    tls: TlsLevel
    reason: str
    attempts: int
    next_attempt: float
    last_error: str
    updated: float


@dataclass(frozen=True, slots=True)
class MessageInfo:
    queue_id: str
    sender: str
    received: float
    size: int
    client: str
    auth_user: str
    sensitivity: str
    recipients: tuple[RcptState, ...]  # all of them, or those a listing's filters chose
    history: tuple[HistoryEntry, ...] = ()  # operator decisions, oldest first
    requiretls: bool = False
    tls_required_no: bool = False


@dataclass(frozen=True, slots=True)
class StsPolicyRecord:
    """A destination's MTA-STS policy as fetched (RFC 8461 §5.1's policy cache).

    ``policy`` is the body as served, parsed again when read (``mech.mta_sts``, the one
    parser), so a cache row can never hold a policy the parser would now refuse;
    ``policy_id`` is the ``_mta-sts`` TXT ``id`` it was fetched for; ``expires`` is
    ``fetched`` + its ``max_age``, after which the row is not used.
    """

    domain: str
    policy_id: str
    policy: str
    fetched: float
    expires: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """The queue manager's result for one claimed recipient."""

    queue_id: str
    rcpt: str
    status: RcptStatus  # DELIVERED, DEFERRED, BOUNCED (or QUEUED to put back unattempted)
    error: str = ""  # last error or delivery detail ("250 2.0.0 Ok queued as X")
    next_attempt: float = 0.0  # for DEFERRED (0 means now)
    count_attempt: bool = True  # False when putting back unattempted (e.g. at shutdown)
    notified: bool = False  # a delay notice went to the sender: never send another

    def check(self) -> None:
        if self.status not in OUTCOMES:
            raise ValueError(f"{self.queue_id} {self.rcpt}: {self.status} is not an outcome")


class Spool(Protocol):
    """The durable queue. Every method is safe to call concurrently from one event loop.

    ``store``, ``record``, ``hand_off`` and the operator decisions (``hold``,
    ``release``, ``delete``, ``reveal``: each with its history row) return only after
    their change is durable; callers never need a separate commit or sync. Statistics a
    backend keeps about itself (e.g. ``SqliteSpool.stats``) are not part of the protocol.
    """

    recovered: int  # recipients put back from DELIVERING to QUEUED by the last open()

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def store(self, message: NewMessage) -> str: ...
    async def claim_due(self, now: float, limit: int) -> list[Delivery]: ...
    async def message_data(self, queue_id: str) -> bytes | None: ...
    async def record(self, outcomes: Sequence[Outcome]) -> None: ...
    async def list_messages(
        self,
        *,
        status: RcptStatus | None = None,
        domain: str | None = None,
        received_before: float | None = None,
        after: str = "",
        limit: int = 1000,
    ) -> list[MessageInfo]:
        """Up to ``limit`` messages with ids above ``after`` (so a caller pages through
        a large queue), oldest first, each with the recipients the filters select (all
        of them without filters): ``status`` exactly, destination ``domain`` exactly,
        and messages received before an epoch time. A message with no selected
        recipient is left out."""

    async def get(self, queue_id: str) -> MessageInfo | None: ...
    async def history(self, queue_id: str) -> list[HistoryEntry]:
        """Every decision kept for ``queue_id``, whether or not it is still in the spool."""

    async def hold(self, queue_id: str, rcpts: Sequence[str] | None, decision: Decision) -> Change:
        """QUEUED | DEFERRED → HELD; a DELIVERING recipient is left alone (``unmoved``).
        Named ``rcpts`` that are not the message's change nothing (``unknown``)."""

    async def release(
        self, queue_id: str, rcpts: Sequence[str] | None, decision: Decision
    ) -> Change:
        """HELD → QUEUED, due now, each keeping its ``TlsLevel`` (the release rule).
        ``rcpts`` None: every recipient of the message (and one history entry for it)."""

    async def delete(
        self, queue_id: str, rcpts: Sequence[str] | None, decision: Decision
    ) -> Change:
        """Remove the recipients (no DSN), and the message once none remain."""

    async def reveal(self, queue_id: str, decision: Decision) -> bytes | None:
        """The message's data, recorded in its history as read unmasked."""

    async def claim_unlogged(self, limit: int) -> list[HistoryEntry]:
        """History entries not yet logged, oldest first, marked logged in the same
        transaction, so two readers never both log one."""

    async def hand_off(self, queue_id: str, rcpts: Sequence[str], stage: str, reason: str) -> int:
        """Give ``rcpts`` of ``queue_id`` to a later ``stage`` (the portal): they become
        ``HANDED_OFF``, final, with "handed off to STAGE: REASON" and the time recorded,
        and the message goes once every recipient is final. Only waiting recipients
        (``HANDED_OFF_FROM``) move; returns how many did."""

    async def sts_get(self, domain: str) -> StsPolicyRecord | None:
        """The cached MTA-STS policy of ``domain``, expired or not (the caller's clock
        decides), or None."""

    async def sts_put(self, record: StsPolicyRecord) -> None:
        """Cache a fetched policy, replacing the domain's row unless that one was
        fetched later (another process sharing the spool refreshed it meanwhile)."""

    async def flush(self) -> int: ...
    async def next_due(self) -> float | None: ...
    async def counts(self) -> dict[str, int]: ...


# Crockford's base32: digits and upper-case letters without I, L, O, U, so an id read
# aloud or copied from a log cannot be mistyped into another valid id.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 30  # 6 characters
QUEUE_ID = re.compile(f"[{_ALPHABET}]{{16}}")
_id_lock = threading.Lock()
_last_ms = 0
_last_random = 0


def _base32(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_queue_id(now: float | None = None) -> str:
    """A 16-character id: 10 characters of milliseconds, then 6 random ones.

    Within one process ids are strictly increasing (two in the same millisecond, or a
    clock stepping back, count on from the last one, as ULIDs do), so they never collide;
    across processes 30 random bits per millisecond make a collision negligible, and the
    database's primary key would refuse one rather than overwrite.
    """
    global _last_ms, _last_random
    ms = int((time.time() if now is None else now) * 1000)
    with _id_lock:
        if ms <= _last_ms:
            ms, rand = _last_ms, _last_random + 1
            if rand >> _RANDOM_BITS:
                ms, rand = ms + 1, secrets.randbits(_RANDOM_BITS - 1)
        else:
            # Half the range, so the increments above have room before they carry.
            rand = secrets.randbits(_RANDOM_BITS - 1)
        _last_ms, _last_random = ms, rand
    return _base32(ms, 10) + _base32(rand, 6)
