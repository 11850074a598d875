"""``Portal``: the portal's decisions over its database, for the gateway, web and CLI.

Every operation runs on the store's thread in one transaction with the audit row that
records it, so an event and its effect commit together or not at all. Tokens, passcodes
and session ids exist in the clear only in the answer that hands them out; the database
keeps SHA-256 hashes of tokens and session ids and keyed HMACs of passcodes
(``crypto``). Every check on a session re-reads its row, so a ``Session`` value the web
forged or kept for another message opens nothing (IDOR).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from securemail.config import PortalConfig
from securemail.portal import audit, digest, keys, notices
from securemail.portal.crypto import MasterKey, Sealed, seal, unseal
from securemail.portal.records import (
    RECORDABLE,
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
from securemail.portal.store import Store, checkpoint

log = logging.getLogger("securemail.portal")

Send = Callable[[str, bytes], Awaitable[object]]
"""How the portal mails someone: (recipient, RFC 5322 bytes) into the gateway pipeline."""

TOKEN_BYTES = 24  # 192 bits: unguessable (issue 13 asks for at least 128)
RESEND_AFTER = 30.0  # seconds between two passcodes for one link
SENDS_PER_HOUR = 5  # passcodes per link per hour

_LINK = (
    "SELECT l.message_id, l.rcpt, l.token_hash, l.passcode_hash, l.passcode_expires, l.used,"
    " l.tries, l.sends_since, l.sends, l.last_send, m.sender, m.sender_name, m.organisation,"
    " m.expires, m.revoked, m.locked, m.expired"
    " FROM links l JOIN messages m ON m.id = l.message_id WHERE l.token_hash = ?"
)


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def conversation_id(sender: str, rcpt: str) -> str:
    """The same two people, the same conversation, whatever the message."""
    return hashlib.sha256(f"{sender.lower()}\0{rcpt.lower()}".encode()).hexdigest()[:32]


def _gone(row: Any, now: float) -> Gone | None:
    """``Gone`` for a message revoked or past its expiry (expired even before ``expire``
    has run: the clock decides, not the timer)."""
    if row["revoked"] is not None:
        return Gone("revoked")
    if row["expired"] or row["expires"] <= now:
        return Gone("expired")
    return None


class Portal:
    def __init__(
        self, config: PortalConfig, *, clock: Callable[[], float], organisation: str,
        address: str, send: Send | None, sender_notice_wait: float = digest.WAIT,
    ) -> None:  # fmt: skip
        self.config = config
        self.clock = clock
        self.organisation = organisation
        self.address = address  # our portal address: From of notices, Sender of replies
        self.send = send  # set by the gateway; None: nobody can be mailed (tests, CLI)
        self.store = Store(config.database)
        self._key: MasterKey | None = None
        self._digest = digest.SenderDigest(self._sender_notice, wait=sender_notice_wait)

    @classmethod
    def open(
        cls, config: PortalConfig, *, clock: Callable[[], float] = time.time,
        organisation: str = "Example Trust", address: str = "portal@localhost",
        send: Send | None = None, sender_notice_wait: float = digest.WAIT,
    ) -> Portal:  # fmt: skip
        """The portal ``config`` describes; nothing is opened until ``await start()``.
        ``sender_notice_wait``: seconds a sender's notices gather (``digest``; 0: none)."""
        return cls(
            config, clock=clock, organisation=organisation, address=address, send=send,
            sender_notice_wait=sender_notice_wait,
        )  # fmt: skip

    async def start(self) -> None:
        """Open the database and settle the master key (finishing an interrupted
        rotation); ``KeyFileError`` for a missing, exposed or wrong key file."""
        await self.store.open()
        try:
            await self.store.call(self._master)
        except BaseException:
            await self.store.close()
            raise

    async def close(self) -> None:
        await self._digest.close()
        await self.store.close()

    def _master(self, conn: sqlite3.Connection) -> MasterKey:
        """The key the database is under now: another process (``portal rotate-key``)
        may have rotated it since we last looked."""
        wanted = conn.execute("SELECT value FROM meta WHERE key = ?", (keys.META_KEY_ID,))
        row = wanted.fetchone()
        if self._key is None or row is None or row[0] != self._key.key_id:
            self._key = keys.settle(conn, self.config.key_file)
        return self._key

    # --- deposit and notices ---------------------------------------------------------

    async def deposit(
        self, data: bytes, *, sender: str, sender_name: str, recipients: Sequence[str],
        queue_id: str,
    ) -> Deposit:  # fmt: skip
        """Encrypt and commit ``data`` for ``recipients``; the links' tokens are in the
        answer only. Nothing of ``data`` is written in the clear."""
        if not recipients:
            raise ValueError("a deposit needs at least one recipient")
        now = self.clock()
        expires = now + self.config.retention_days * 86400
        message_id = secrets.token_hex(10)
        links = {rcpt: secrets.token_urlsafe(TOKEN_BYTES) for rcpt in dict.fromkeys(recipients)}

        def run(conn: sqlite3.Connection) -> None:
            sealed = seal(self._master(conn), message_id, data)
            conn.execute(
                "INSERT INTO messages (id, queue_id, created, expires, sender, sender_name,"
                " organisation, wrapped_key, nonce, ciphertext) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (message_id, queue_id, now, expires, sender, sender_name, self.organisation,
                 sealed.wrapped_key, sealed.nonce, sealed.ciphertext),
            )  # fmt: skip
            for rcpt, token in links.items():
                conn.execute(
                    "INSERT INTO links (message_id, rcpt, token_hash, conversation_id)"
                    " VALUES (?, ?, ?, ?)",
                    (message_id, rcpt, _hash(token), conversation_id(sender, rcpt)),
                )
                audit.append(conn, now, message_id, rcpt, Event.DEPOSITED, f"queue {queue_id}")

        await self.store.call(run)
        return Deposit(message_id, expires, links)

    async def notify(self, deposit: Deposit, sender: str, sender_name: str) -> None:
        """Mail each recipient their link, mark the links notified once their notices are
        queued (``renotify`` covers a crash before), and tell the sender where the message
        went (gathered with the sender's others: ``digest``)."""
        now = self.clock()
        for rcpt, token in deposit.links.items():
            await self._send(rcpt, notices.recipient_notice(
                portal=self.address, to=rcpt, sender_name=sender_name,
                organisation=self.organisation, expires=deposit.expires,
                link=self.link(token), now=now,
            ))  # fmt: skip
        await self.store.call(_notified, deposit.message_id, list(deposit.links), now)
        if sender:
            await self._digest.add(sender, deposit)

    async def _sender_notice(self, sender: str, deposits: list[Deposit]) -> None:
        await self._send(sender, notices.sender_notice(
            portal=self.address, to=sender, organisation=self.organisation,
            deposits=deposits, now=self.clock(),
        ))  # fmt: skip

    async def renotify(self) -> int:
        """Links whose notice was never queued (a crash between deposit and notice) get
        a new token and their notice now; returns how many. Run at start."""
        now = self.clock()

        def run(conn: sqlite3.Connection) -> list[tuple[Deposit, str, str]]:
            rows = conn.execute(
                "SELECT l.message_id, l.rcpt, m.expires, m.sender, m.sender_name FROM links l"
                " JOIN messages m ON m.id = l.message_id WHERE l.notified = 0"
                " AND m.revoked IS NULL AND m.expired = 0 AND m.expires > ?",
                (now,),
            ).fetchall()
            found = []
            for message_id, rcpt, expires, sender, name in rows:
                token = secrets.token_urlsafe(TOKEN_BYTES)
                conn.execute(
                    "UPDATE links SET token_hash = ? WHERE message_id = ? AND rcpt = ?",
                    (_hash(token), message_id, rcpt),
                )
                found.append((Deposit(message_id, expires, {rcpt: token}), sender, name))
            return found

        pending = await self.store.call(run)
        for deposit, sender, name in pending:
            await self.notify(deposit, sender, name)
        return len(pending)

    def link(self, token: str) -> str:
        return f"{self.config.base_url.rstrip('/')}/m/{token}"

    async def _send(self, rcpt: str, message: bytes) -> None:
        if self.send is None:
            raise PortalError("the portal has no way to send mail (no gateway attached)")
        await self.send(rcpt, message)

    # --- the recipient's way in --------------------------------------------------------

    async def access(self, token: str) -> Access | Gone | None:
        row = await self.store.call(_link, _hash(token))
        if row is None:
            return None
        if gone := _gone(row, self.clock()):
            return gone
        return Access(
            row["message_id"], row["rcpt"], notices.neutral_subject(row["organisation"]),
            row["sender"], row["sender_name"], row["organisation"], row["expires"],
            row["locked"] is not None,
        )  # fmt: skip

    async def send_passcode(self, token: str) -> PasscodeSent | Gone | Limited | Locked:
        """A new 6-digit code for the link, mailed to its recipient; ``Limited`` when the
        link asked less than ``RESEND_AFTER`` seconds ago or ``SENDS_PER_HOUR`` times."""
        now = self.clock()
        code = f"{secrets.randbelow(10**6):06d}"
        expires = now + self.config.passcode_minutes * 60

        def run(conn: sqlite3.Connection) -> PasscodeSent | Gone | Limited | Locked | None:
            row = _link(conn, _hash(token))
            if row is None:
                return None
            if gone := _gone(row, now):
                return gone
            if row["locked"] is not None:
                return Locked(row["message_id"])
            if now - row["last_send"] < RESEND_AFTER:
                return Limited(RESEND_AFTER - (now - row["last_send"]))
            since, sends = row["sends_since"], row["sends"]
            if now - since >= 3600:
                since, sends = now, 0
            if sends >= SENDS_PER_HOUR:
                return Limited(since + 3600 - now)
            conn.execute(
                "UPDATE links SET passcode_hash = ?, passcode_expires = ?, used = 0,"
                " sends_since = ?, sends = ?, last_send = ? WHERE token_hash = ?",
                (self._master(conn).passcode_hash(row["token_hash"], code), expires, since,
                 sends + 1, now, row["token_hash"]),
            )  # fmt: skip
            audit.append(conn, now, row["message_id"], row["rcpt"], Event.PASSCODE_SENT)
            return PasscodeSent(row["rcpt"], expires)

        answer = await self.store.call(run)
        if answer is None:
            return Gone("expired")  # an unknown token: nothing to send, and nothing said
        if isinstance(answer, PasscodeSent):
            await self._send(answer.rcpt, notices.passcode_notice(
                portal=self.address, to=answer.rcpt, organisation=self.organisation,
                code=code, expires=expires, now=now,
            ))  # fmt: skip
        return answer

    async def check_passcode(
        self, token: str, code: str, client: str
    ) -> Session | Refused | Locked | Gone:
        """One try: a session on success (the code is then used up); a refusal counts a
        try, whatever its reason (wrong, expired, used, none asked for), and the
        ``max_tries``-th locks the message and tells its sender."""
        now = self.clock()
        session_id = secrets.token_urlsafe(TOKEN_BYTES)
        max_tries = self.config.max_tries

        def run(conn: sqlite3.Connection) -> tuple[Session | Refused | Locked | Gone, Any]:
            row = _link(conn, _hash(token))
            if row is None:
                return Gone("expired"), None
            if gone := _gone(row, now):
                return gone, None
            message_id, rcpt = row["message_id"], row["rcpt"]
            if row["locked"] is not None:
                return Locked(message_id), None
            given = self._master(conn).passcode_hash(row["token_hash"], code.strip())
            stored = row["passcode_hash"]
            if stored is not None and hmac.compare_digest(given, stored):
                why = "used" if row["used"] else "expired" if row["passcode_expires"] <= now else ""
            else:
                why = "wrong" if stored is not None else "none"
            if not why:
                conn.execute(
                    "UPDATE links SET used = 1, tries = 0 WHERE token_hash = ?",
                    (row["token_hash"],),
                )
                expires = now + self.config.session_minutes * 60
                conn.execute(
                    "INSERT INTO sessions (id_hash, message_id, rcpt, expires) VALUES (?,?,?,?)",
                    (_hash(session_id), message_id, rcpt, expires),
                )
                audit.append(conn, now, message_id, rcpt, Event.SESSION, f"client {client}")
                return Session(session_id, message_id, rcpt, expires), None
            tries = row["tries"] + 1
            conn.execute(
                "UPDATE links SET tries = ? WHERE token_hash = ?", (tries, row["token_hash"])
            )
            event = Event.PASSCODE_REPLAYED if why == "used" else Event.PASSCODE_FAILED
            audit.append(conn, now, message_id, rcpt, event, f"{why}; try {tries}; client {client}")
            if tries < max_tries:
                return Refused(why, max_tries - tries), None
            conn.execute("UPDATE messages SET locked = ? WHERE id = ?", (now, message_id))
            conn.execute("DELETE FROM sessions WHERE message_id = ?", (message_id,))
            audit.append(conn, now, message_id, rcpt, Event.LOCKED, f"{tries} wrong passcodes")
            return Locked(message_id), (row["sender"], message_id, rcpt)

        answer, tell = await self.store.call(run)
        if tell is not None and tell[0]:
            sender, message_id, rcpt = tell
            await self._send(sender, notices.locked_notice(
                portal=self.address, to=sender, organisation=self.organisation,
                message_id=message_id, rcpt=rcpt, now=now,
            ))  # fmt: skip
        return answer

    async def session(self, session_id: str) -> Session | None:
        row = await self.store.call(_session_row, _hash(session_id), self.clock())
        return None if row is None else Session(session_id, *row)

    async def read(self, session: Session) -> bytes:
        """The decrypted message; audits "opened". ``PortalError`` when the session is
        not a live one for that message, or the message is revoked, expired or locked."""
        now = self.clock()

        def run(conn: sqlite3.Connection) -> bytes:
            row = _checked(conn, session, now)
            audit.append(conn, now, session.message_id, session.rcpt, Event.OPENED)
            sealed = Sealed(row["wrapped_key"], row["nonce"], row["ciphertext"])
            return unseal(self._master(conn), session.message_id, sealed)

        return await self.store.call(run)

    async def record(self, session: Session, event: str, detail: str = "") -> None:
        """An event the web saw ("downloaded" with the attachment name, "replied")."""
        kind = Event(event)
        if kind not in RECORDABLE:
            raise ValueError(f"the web may record only {', '.join(sorted(RECORDABLE))}")
        now = self.clock()

        def run(conn: sqlite3.Connection) -> None:
            _checked(conn, session, now)
            audit.append(conn, now, session.message_id, session.rcpt, kind, detail)

        await self.store.call(run)

    def reply_message(
        self, session: Session, original: bytes, text: str,
        attachments: Sequence[tuple[str, str, bytes]],
    ) -> tuple[str, bytes]:  # fmt: skip
        """(the original sender, the reply as RFC 5322 bytes): ``notices.reply_message``."""
        return notices.reply_message(
            portal=self.address, rcpt=session.rcpt, original=original, text=text,
            attachments=attachments, now=self.clock(),
        )  # fmt: skip

    async def conversation(self, session: Session) -> list[MessageInfo]:
        """The messages between this session's two people, oldest first (metadata)."""

        def run(conn: sqlite3.Connection) -> list[MessageInfo]:
            _checked(conn, session, self.clock(), content=False)
            ids = conn.execute(
                "SELECT message_id FROM links WHERE conversation_id = (SELECT conversation_id"
                " FROM links WHERE message_id = ? AND rcpt = ?)",
                (session.message_id, session.rcpt),
            ).fetchall()
            return _infos(conn, [i for (i,) in ids], self.clock())

        return await self.store.call(run)

    # --- operators -------------------------------------------------------------------

    async def revoke(self, message_id: str, by: str) -> bool:
        """Withdraw a message: its links answer Gone("revoked") and its key and content
        are deleted at once (no reason to keep what nobody may read); False when it was
        not active."""
        now = self.clock()

        def run(conn: sqlite3.Connection) -> bool:
            done = conn.execute(
                "UPDATE messages SET revoked = ?, wrapped_key = NULL, nonce = NULL,"
                " ciphertext = NULL WHERE id = ? AND revoked IS NULL AND expired = 0",
                (now, message_id),
            ).rowcount
            if done:
                conn.execute("DELETE FROM sessions WHERE message_id = ?", (message_id,))
                audit.append(conn, now, message_id, "", Event.REVOKED, f"by {by}")
            return bool(done)

        revoked = await self.store.call(run)
        if revoked:
            await self.store.read(checkpoint)
        return revoked

    async def expire(self) -> int:
        """Delete the wrapped key and ciphertext of every message past its expiry (the
        audit rows and metadata stay); returns how many."""
        now = self.clock()

        def run(conn: sqlite3.Connection) -> int:
            ids = [i for (i,) in conn.execute(
                "SELECT id FROM messages WHERE expired = 0 AND expires <= ?", (now,)
            )]  # fmt: skip
            for message_id in ids:
                conn.execute(
                    "UPDATE messages SET expired = 1, wrapped_key = NULL, nonce = NULL,"
                    " ciphertext = NULL WHERE id = ?",
                    (message_id,),
                )
                conn.execute("DELETE FROM sessions WHERE message_id = ?", (message_id,))
                audit.append(conn, now, message_id, "", Event.EXPIRED)
            conn.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            return len(ids)

        count = await self.store.call(run)
        if count:
            await self.store.read(checkpoint)
        return count

    async def rotate_key(self) -> int:
        """Re-wrap every data key under a new master key (``keys``: crash-safe); returns
        how many messages were re-wrapped."""
        old = await self.store.call(self._master)
        path = self.config.key_file
        new = keys.prepare_rotation(path, old)
        count = await self.store.call(keys.rewrap, old, new, self.clock())
        self._key = new
        keys.finish_rotation(path, new)
        return count

    async def events(self, message_id: str) -> list[AuditEvent]:
        return await self.store.call(audit.events, message_id)

    async def verify_audit(self) -> AuditCheck:
        return await self.store.call(audit.verify)

    async def show(self, message_id: str) -> MessageInfo | None:
        found = await self.store.call(_infos, [message_id], self.clock())
        return found[0] if found else None

    async def list_messages(self, limit: int = 1000) -> list[MessageInfo]:
        def run(conn: sqlite3.Connection) -> list[MessageInfo]:
            ids = conn.execute("SELECT id FROM messages ORDER BY created, id LIMIT ?", (limit,))
            return _infos(conn, [i for (i,) in ids], self.clock())

        return await self.store.call(run)


# --- operations on the store's thread ------------------------------------------------


def _link(conn: sqlite3.Connection, token_hash: bytes) -> sqlite3.Row | None:
    cursor = conn.execute(_LINK, (token_hash,))
    cursor.row_factory = sqlite3.Row
    return cursor.fetchone()


def _notified(conn: sqlite3.Connection, message_id: str, rcpts: list[str], now: float) -> None:
    for rcpt in rcpts:
        conn.execute(
            "UPDATE links SET notified = 1 WHERE message_id = ? AND rcpt = ?", (message_id, rcpt)
        )
        audit.append(conn, now, message_id, rcpt, Event.NOTIFIED)


def _session_row(conn: sqlite3.Connection, id_hash: bytes, now: float) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT message_id, rcpt, expires FROM sessions WHERE id_hash = ? AND expires > ?",
        (id_hash, now),
    ).fetchone()


def _checked(
    conn: sqlite3.Connection, session: Session, now: float, *, content: bool = True
) -> sqlite3.Row:
    """The message row, if ``session`` is a live session for exactly that message and
    recipient and the message may be read; else ``PortalError``."""
    row = _session_row(conn, _hash(session.id), now)
    if row is None or (row[0], row[1]) != (session.message_id, session.rcpt):
        raise PortalError("no such session for this message")
    cursor = conn.execute("SELECT * FROM messages WHERE id = ?", (session.message_id,))
    cursor.row_factory = sqlite3.Row
    message = cursor.fetchone()
    if content and (_gone(message, now) or message["locked"] is not None):
        raise PortalError(f"message {session.message_id} is revoked, expired or locked")
    return message


def _infos(conn: sqlite3.Connection, ids: list[str], now: float) -> list[MessageInfo]:
    found = []
    for message_id in ids:
        row = conn.execute(
            "SELECT id, created, expires, sender, sender_name, organisation, revoked, locked,"
            " expired FROM messages WHERE id = ?",
            (message_id,),
        ).fetchone()
        if row is None:
            continue
        rcpts = conn.execute(
            "SELECT rcpt FROM links WHERE message_id = ? ORDER BY rowid", (message_id,)
        ).fetchall()
        state = (
            "revoked" if row[6] is not None else "expired" if row[8] or row[2] <= now
            else "locked" if row[7] is not None else "active"
        )  # fmt: skip
        found.append(MessageInfo(*row[:6], tuple(r for (r,) in rcpts), state))
    found.sort(key=lambda m: (m.created, m.message_id))
    return found
