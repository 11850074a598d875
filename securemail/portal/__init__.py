"""The secure portal: sensitive mail to recipients outside the secure boundary (issue 13).

A message decided ``Action.PORTAL`` is encrypted at the end of DATA, before it touches
disk, and stored here; each recipient gets a link (a random token, only its hash kept)
and opens it with a one-time passcode mailed separately. Every event is written to an
append-only audit table with a SHA-256 hash chain.

Modules, one job each: ``crypto`` (AES-256-GCM per message, keys wrapped by the master
key; passcode HMAC), ``keys`` (which key opens the database; crash-safe rotation),
``store`` (the SQLite file and its thread), ``audit`` (the hash chain), ``notices`` (the
emails), ``digest`` (a sender's notices gathered), ``limits`` (per-client rate limit for
the web), ``records`` (typed answers), ``service`` (``Portal``: the decisions).

The API the web layer and the gateway use (all async unless marked; the clock is
``Portal.open(clock=...)``):

    Portal.open(config: PortalConfig, *, clock=time.time, organisation="Example Trust",
                address="portal@localhost", send: Send | None = None,
                sender_notice_wait=2.0) -> Portal  # sync
    await portal.start(); await portal.close()
    deposit(data, *, sender, sender_name, recipients, queue_id) -> Deposit
        Deposit(message_id, expires, links: {rcpt: token}); committed before returning
    notify(deposit, sender, sender_name) -> None     # recipient notices; sender's gathered
    renotify() -> int                                 # after a crash: new tokens, notices
    link(token) -> str                                # sync: <base_url>/m/<token>
    access(token) -> Access | Gone | None             # Gone -> 410, None -> 404
    send_passcode(token) -> PasscodeSent | Gone | Limited | Locked
    check_passcode(token, code, client) -> Session | Refused | Locked | Gone
    session(session_id) -> Session | None             # expired or unknown -> None
    read(session) -> bytes                            # PortalError if not readable
    record(session, "downloaded" | "replied", detail="") -> None
    reply_message(session, original, text, [(name, type, data)]) -> (rcpt, bytes)  # sync
    conversation(session) -> list[MessageInfo]        # the same two people's messages
    revoke(message_id, by) -> bool; expire() -> int; rotate_key() -> int
    events(message_id) -> list[AuditEvent]; verify_audit() -> AuditCheck
    show(message_id) -> MessageInfo | None; list_messages(limit) -> list[MessageInfo]
    ClientLimiter(limit, window, clock=).allow(client) -> float  # sync; 0.0: go ahead

``send`` is how the portal mails people: ``(recipient, RFC 5322 bytes)``, which the
gateway wires to its accept pipeline, so notices are signed and queued like DSNs.
"""

from __future__ import annotations

from securemail.portal.crypto import DecryptError, KeyFileError, MasterKey
from securemail.portal.keys import ensure_key
from securemail.portal.limits import ClientLimiter
from securemail.portal.records import (
    Access,
    AuditCheck,
    AuditEvent,
    Deposit,
    Event,
    Gone,
    Limited,
    Locked,
    MessageInfo,
    PasscodeSent,
    PortalError,
    Refused,
    Session,
)
from securemail.portal.service import Portal, Send, conversation_id
from securemail.portal.store import StoreError

__all__ = [
    "Access",
    "AuditCheck",
    "AuditEvent",
    "ClientLimiter",
    "DecryptError",
    "Deposit",
    "Event",
    "Gone",
    "KeyFileError",
    "Limited",
    "Locked",
    "MasterKey",
    "MessageInfo",
    "PasscodeSent",
    "Portal",
    "PortalError",
    "Refused",
    "Send",
    "Session",
    "StoreError",
    "conversation_id",
    "ensure_key",
]
