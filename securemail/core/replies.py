"""Every SMTP reply the gateway gives, typed, in one module (aiosmtpd's ``statuscodes``).

A reply has two audiences, as maddy's ``SMTPError`` keeps apart: the peer gets a short,
generic ``message``; the log gets ``log`` (the detail) and ``check`` (which rule decided).
Listeners send ``str(reply)``; nothing else in the gateway writes reply text by hand, so
the codes, enhanced codes (RFC 3463) and wording stay consistent and greppable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class SmtpReply:
    code: int
    enhanced: str  # RFC 3463 "x.y.z"
    message: str  # for the peer: one line, no detail it should not learn
    log: str = ""  # for the log: the detail behind the decision
    check: str = ""  # the check or rule that produced it

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599 or self.enhanced[:1] != str(self.code)[0]:
            raise ValueError(f"inconsistent SMTP reply {self.code} {self.enhanced}")
        if "\r" in self.message or "\n" in self.message:
            raise ValueError("an SMTP reply message is one line")

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.message}"

    @property
    def ok(self) -> bool:
        return self.code < 400

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def logged(self, log: str, check: str = "") -> SmtpReply:
        """The same reply with the detail for the log (and the deciding check)."""
        return replace(self, log=log, check=check or self.check)


def _one_line(text: str, limit: int = 300) -> str:
    """Peer-visible text from values we did not write: one line, bounded."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- connection and session -----------------------------------------------------------
TOO_MANY_CONNECTIONS = SmtpReply(421, "4.7.0", "Too many connections", check="connections")
IDLE_TIMEOUT = SmtpReply(421, "4.4.2", "Error: timeout exceeded", check="idle-timeout")
PREGREET = SmtpReply(
    554, "5.7.1", "Protocol error: talking before the greeting", check="pregreet"
)  # postscreen's pregreet test: real MTAs wait for our 220
BAD_HELO = SmtpReply(501, "5.5.2", "Invalid domain name", check="helo")

# --- envelope -------------------------------------------------------------------------
MAIL_OK = SmtpReply(250, "2.1.0", "OK")
RCPT_OK = SmtpReply(250, "2.1.5", "OK")
NULL_SENDER_REFUSED = SmtpReply(553, "5.1.7", "The null sender is not accepted from clients")
TOO_MANY_RECIPIENTS = SmtpReply(452, "4.5.3", "Too many recipients")
RCPT_PARAMETERS = SmtpReply(555, "5.5.4", "RCPT TO parameters not supported")
RELAY_DENIED = SmtpReply(554, "5.7.1", "Relay access denied", check="relay")
AUTH_RATE_LIMITED = SmtpReply(
    454, "4.7.0", "Too many failed authentication attempts; try again later", check="auth-limit"
)
SHUTTING_DOWN = SmtpReply(421, "4.3.2", "Service shutting down")
UNKNOWN_RECIPIENT = SmtpReply(
    550, "5.1.1", "Recipient address rejected: user unknown", check="recipients"
)
SENDER_ROUTING = SmtpReply(
    550, "5.7.1", "Sender-specified routing is not allowed", check="routing"
)  # Postfix's allow_untrusted_routing = no: user%remote@us, remote!user@us, "u@remote"@us
RECIPIENT_CHECK_FAILED = SmtpReply(
    450, "4.1.1", "Recipient address rejected: could not verify it now; try again later",
    check="recipients",
)  # fmt: skip


def bad_sender(problem: str) -> SmtpReply:
    return SmtpReply(553, "5.1.7", _one_line(f"Bad sender address syntax: {problem}"))


def sender_not_owned(user: str) -> SmtpReply:
    """MAIL FROM an address the signed-in user does not own (Postfix's
    ``reject_sender_login_mismatch`` reply)."""
    return SmtpReply(553, "5.7.1", _one_line(f"Sender address not owned by user {user}"),
                     check="sender-login")  # fmt: skip


def bad_recipient(problem: str) -> SmtpReply:
    return SmtpReply(550, "5.1.3", _one_line(f"Bad recipient address: {problem}"))


# --- TLS in a session (RFC 3207 §4, RFC 8689) ------------------------------------------
def starttls_required(domain: str) -> SmtpReply:
    """Mail from a domain that must arrive over TLS (``core.inbound_tls``), in a session
    without it: at MAIL for the envelope sender, at end of DATA for the header From.
    RFC 3207 §4's reply; permanent, so the sending MTA bounces at once and its sender
    learns now that the message did not arrive. ``domain`` is a normalised (ASCII,
    validated) domain, never the client's text as sent."""
    return SmtpReply(
        530,
        "5.7.0",
        _one_line(
            f"Must issue a STARTTLS command first (mail from {domain} must arrive over TLS: "
            "SCCI1596 forced TLS)"
        ),
        check="forced-tls",
    )


REQUIRETLS_WITHOUT_TLS = SmtpReply(
    530,
    "5.7.0",
    "Must issue a STARTTLS command first (REQUIRETLS is only accepted over TLS: RFC 8689)",
    check="requiretls",
)
"""``MAIL FROM:<…> REQUIRETLS`` outside TLS. RFC 8689 §2: the option may only be given
in a session that uses TLS (and we advertise it only there); the RFC names no reply
for a server that receives it anyway (its 5.7.30 is for a message that could not be
relayed onwards), so this is RFC 3207's 530."""


# --- DATA ---------------------------------------------------------------------------
START_DATA = "354 End data with <CR><LF>.<CR><LF>"  # 3xx: RFC 3463 has no enhanced code
NEED_RCPT = SmtpReply(503, "5.5.1", "Error: need RCPT command")
DATA_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: DATA")
LINE_TOO_LONG = SmtpReply(500, "5.5.2", "Line too long (RFC 5321 4.5.3.1.6)", check="data")
MESSAGE_TOO_BIG = SmtpReply(552, "5.3.4", "Message size exceeds fixed limit", check="data")
INSUFFICIENT_STORAGE = SmtpReply(
    452, "4.3.1", "Insufficient system storage", check="data-in-flight"
)  # max_data_in_flight reached: try later, when other transfers have finished

# --- end of DATA ----------------------------------------------------------------------
STORE_FAILED = SmtpReply(
    451, "4.3.0", "Temporary failure storing the message; try again later", check="spool"
)
AUTH_TEMPFAIL = SmtpReply(
    451,
    "4.7.0",
    "Temporary failure checking sender authentication (DNS); try again later",
    check="auth",
)
CPU_BUDGET = SmtpReply(
    451,
    "4.3.0",
    "Message could not be checked in time; try again later",
    check="cpu-budget",
)
"""A message whose checks (authentication, sealing, signing, the sensitivity scan) did
not finish within ``[listen] cpu_budget``: unchecked mail is neither delivered nor marked
safe, so it stays with the sender (``gateway.inbound.offload``)."""


def header_too_large(reason: str) -> SmtpReply:
    """RFC 5322 sets no limit on header fields, and allows a receiver to refuse what it
    cannot process; ours are in ``core.message`` (count and bytes)."""
    return SmtpReply(552, "5.3.4", _one_line(f"Message header section refused: {reason}"),
                     check="header-limit")  # fmt: skip


def header_from_refused(user: str, problem: str) -> SmtpReply:
    """Submitted mail whose From is not one address the signed-in user owns."""
    return SmtpReply(553, "5.7.1", _one_line(f"From header refused for user {user}: {problem}"),
                     check="sender-login")  # fmt: skip


def queued(queue_id: str) -> SmtpReply:
    return SmtpReply(250, "2.0.0", f"Ok: queued as {queue_id}")


def policy_refused(recipients: str) -> SmtpReply:
    return SmtpReply(
        550,
        "5.7.1",
        _one_line(
            "Message refused by policy: sensitive content to a recipient not known to be "
            f"secure ({recipients}); remove them or use a secure route"
        ),
        check="policy",
    )


def auth_refused(reason: str, check: str) -> SmtpReply:
    """A sender-authentication refusal (DMARC, From); ``reason`` is ours, not the peer's."""
    return SmtpReply(550, "5.7.1", _one_line(f"Message refused: {reason}"), check=check)
