"""An SMTP client connection for delivery: STARTTLS, pipelining, reuse.

Written on asyncio streams rather than a general client library because the delivery
guarantees rest on it: ``open`` stops after EHLO (and STARTTLS, when offered) and reports
what it achieved as ``TlsFacts``; nothing of a message is written until the caller's
policy chain has accepted those facts, whatever the server advertises or a man in the
middle strips. Each protocol stage has its own RFC 5321 §4.5.3.2 timeout and a name, so
every failure reads like Postfix's: "timeout while sending RCPT TO to mx.nhs.net[192.0.2.7]".

One ``SmtpConnection`` carries many transactions (the queue manager reuses it for every
message to the same destination), and uses PIPELINING (RFC 2920) when offered:
MAIL, every RCPT and DATA go in one write.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from securemail.core.levels import TlsFailure
from securemail.tls import peer_dns_names

MAX_LINE = 2048
_T = TypeVar("_T")
MAX_REPLY_LINES = 200


class Stage(Enum):
    """Protocol stage: (description for errors, timeout in seconds, RFC 5321 §4.5.3.2)."""

    CONNECT = ("connecting", 30.0)
    GREETING = ("waiting for the greeting", 300.0)
    EHLO = ("sending EHLO", 300.0)
    STARTTLS = ("sending STARTTLS", 120.0)
    HANDSHAKE = ("in the TLS handshake", 60.0)
    MAIL = ("sending MAIL FROM", 300.0)
    RCPT = ("sending RCPT TO", 300.0)
    DATA = ("sending DATA", 120.0)
    BODY = ("sending the message body", 600.0)
    RSET = ("sending RSET", 60.0)
    QUIT = ("sending QUIT", 10.0)

    @property
    def doing(self) -> str:
        return self.value[0]

    @property
    def timeout(self) -> float:
        return self.value[1]


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class DeliveryError(Exception):
    """A failure talking to one server; ``permanent`` says whether retrying can help.

    ``failure`` is set when the failure is a TLS requirement that could not be met, in
    RFC 8460 terms, so the delay notice and (later) TLS-RPT can say exactly why.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        failure: TlsFailure | None = None,
        check: str = "",
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.failure = failure
        self.check = check  # the policy link that refused the server ("" for any other)


@dataclass(frozen=True, slots=True)
class TlsFacts:
    """What ``SmtpConnection.open`` achieved, for the delivery policy to judge."""

    peer: str  # "host[ip]:port", for messages
    starttls: bool  # the server offered STARTTLS (after any stripping on the way)
    version: str | None = None  # the negotiated protocol, None without TLS
    verified: bool = False  # the chain and the MX host name were verified (PKIX)
    failure: TlsFailure | None = None  # STARTTLS or the handshake failed (connection closed)
    error: str = ""  # that failure as a person reads it
    chain_verified: bool = False  # the chain was verified (with or without the name)
    names: tuple[str, ...] = ()  # the DNS names of a chain-verified certificate
    extensions: frozenset[str] = frozenset()  # EHLO keywords, after STARTTLS when it ran


# OpenSSL's X509_V_ERR_* codes (``SSLCertVerificationError.verify_code``) → RFC 8460 §4.3.
_VERIFY_FAILURES = {
    10: TlsFailure.CERTIFICATE_EXPIRED,  # X509_V_ERR_CERT_HAS_EXPIRED
    62: TlsFailure.CERTIFICATE_HOST_MISMATCH,  # X509_V_ERR_HOSTNAME_MISMATCH
    64: TlsFailure.CERTIFICATE_HOST_MISMATCH,  # X509_V_ERR_IP_ADDRESS_MISMATCH
    2: TlsFailure.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    18: TlsFailure.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19: TlsFailure.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20: TlsFailure.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: TlsFailure.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
    27: TlsFailure.CERTIFICATE_NOT_TRUSTED,  # X509_V_ERR_CERT_UNTRUSTED
}


def handshake_failure(exc: BaseException) -> TlsFailure:
    """The RFC 8460 result type for a failed handshake; anything that is not a named
    certificate problem (protocol or cipher mismatch, a reset) is a validation failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_FAILURES.get(exc.verify_code, TlsFailure.VALIDATION_FAILURE)
    return TlsFailure.VALIDATION_FAILURE


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """Per-recipient replies of one transaction; ``data`` is None if DATA never ran."""

    rcpts: dict[str, Reply]
    data: Reply | None


class SmtpConnection:
    """One SMTP session to one server address."""

    def __init__(self, host: str, ip: str, port: int, *, helo: str,
                 timeouts: dict[Stage, float] | None = None) -> None:  # fmt: skip
        self.host, self.ip, self.port, self.helo = host, ip, port, helo
        self.timeouts = timeouts or {}
        self.extensions: dict[str, str] = {}
        self.tls_version: str | None = None
        self.cipher: str | None = None
        self.verified = False
        self.verified_by = ""  # set by whoever accepted the facts: the check that verified
        self.transactions = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._dirty = False  # a failed transaction left state: RSET before the next

    @property
    def peer(self) -> str:
        return f"{self.host}[{self.ip}]:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def open(self, context: ssl.SSLContext | None) -> TlsFacts:
        """Connect, EHLO, and STARTTLS with ``context`` if the server offers it.

        ``context`` None means no STARTTLS at all (a destination the operator set to
        plain text). Whether the result is good enough is not decided here: the caller
        asks its policy before sending anything. A refused STARTTLS or a failed handshake
        closes the connection and is reported in the facts, typed: it is a failure of
        this server, for the policy to judge, never of the recipient. Only failures
        before TLS (connect, greeting, EHLO) raise ``DeliveryError``, and one after it
        (the second EHLO) raises a temporary one.
        """
        try:
            self._reader, self._writer = await self._timed(
                Stage.CONNECT,
                asyncio.open_connection(self.ip, self.port, limit=MAX_LINE * 4),
            )
        except OSError as exc:
            raise DeliveryError(f"cannot connect to {self.peer}: {exc.strerror or exc}") from None
        await self._expect(Stage.GREETING, 220)
        await self._ehlo()
        offered = "STARTTLS" in self.extensions
        if not offered or context is None:
            return TlsFacts(self.peer, starttls=offered, extensions=frozenset(self.extensions))
        reply = await self._command(Stage.STARTTLS, b"STARTTLS\r\n")
        if reply.code != 220:
            await self.close()
            last = reply.text.splitlines()[-1] if reply.text else ""
            return TlsFacts(
                self.peer,
                starttls=True,
                failure=TlsFailure.STARTTLS_NOT_SUPPORTED,
                error=f"{self.peer} answered STARTTLS with {reply.code} {last}".rstrip(),
            )
        try:
            assert self._writer is not None
            await self._timed(
                Stage.HANDSHAKE, self._writer.start_tls(context, server_hostname=self.host)
            )
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            await self.close()
            reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
            return TlsFacts(
                self.peer,
                starttls=True,
                failure=handshake_failure(exc),
                error=f"TLS handshake with {self.peer} failed: {reason}",
            )
        ssl_object = self._writer.get_extra_info("ssl_object")
        self.tls_version = ssl_object.version() if ssl_object else None
        self.cipher = ssl_object.cipher()[0] if ssl_object else None
        chain_verified = context.verify_mode == ssl.CERT_REQUIRED and ssl_object is not None
        self.verified = chain_verified and context.check_hostname
        names = peer_dns_names(ssl_object.getpeercert()) if chain_verified else ()
        try:
            await self._ehlo()
        except DeliveryError as exc:  # refused inside TLS: this server's fault, not the rcpt's
            raise DeliveryError(str(exc), permanent=False) from None
        return TlsFacts(
            self.peer,
            True,
            self.tls_version,
            self.verified,
            chain_verified=chain_verified,
            names=names,
            extensions=frozenset(self.extensions),
        )

    async def send(
        self, sender: str, rcpts: Sequence[str], data: bytes, *, requiretls: bool = False
    ) -> TransactionResult:
        """One mail transaction. Replies are returned, not raised: the caller decides
        per recipient. Raises ``DeliveryError`` only when the connection itself fails.

        ``requiretls``: the message carries RFC 8689's flag, passed on as ``MAIL FROM
        ... REQUIRETLS`` when the server offers it inside TLS (whether it must offer it
        is the caller's policy, judged before anything is sent)."""
        if self._dirty:
            await self._command(Stage.RSET, b"RSET\r\n", expect=250)
            self._dirty = False
        self._dirty = True
        params = self._mail_params(sender, rcpts, data)
        if requiretls and self.tls_version and "REQUIRETLS" in self.extensions:
            params += " REQUIRETLS"
        mail = f"MAIL FROM:<{sender}>{params}\r\n".encode()
        rcpt_lines = [f"RCPT TO:<{r}>\r\n".encode() for r in rcpts]
        replies: dict[str, Reply] = {}
        if "PIPELINING" in self.extensions:
            self._write(mail + b"".join(rcpt_lines) + b"DATA\r\n")
            mail_reply = await self._read(Stage.MAIL)
            for rcpt in rcpts:
                replies[rcpt] = await self._read(Stage.RCPT)
            data_reply = await self._read(Stage.DATA)
        else:
            mail_reply = await self._command(Stage.MAIL, mail)
            if mail_reply.ok:
                for rcpt, line in zip(rcpts, rcpt_lines, strict=True):
                    replies[rcpt] = await self._command(Stage.RCPT, line)
            accepted = any(r.ok for r in replies.values())
            data_reply = await self._command(Stage.DATA, b"DATA\r\n") if accepted else None
        if not mail_reply.ok:
            return TransactionResult(dict.fromkeys(rcpts, mail_reply), None)
        if data_reply is None or data_reply.code != 354:
            if data_reply is not None and data_reply.ok:  # a broken server: never send now
                await self.close()
                raise DeliveryError(f"{self.peer} answered DATA with {data_reply}")
            return TransactionResult(replies, data_reply)
        if not any(r.ok for r in replies.values()):
            # Pipelined DATA was accepted although every RCPT failed: end it empty.
            self._write(b".\r\n")
            await self._read(Stage.BODY)
            return TransactionResult(replies, None)
        self._write(dot_stuff(data))
        final = await self._read(Stage.BODY)
        self._dirty = not final.ok
        self.transactions += 1
        return TransactionResult(replies, final)

    async def close(self) -> None:
        """QUIT politely if possible; never raises."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            if not writer.is_closing():
                writer.write(b"QUIT\r\n")
                await asyncio.wait_for(writer.drain(), Stage.QUIT.timeout)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), Stage.QUIT.timeout)
        except (OSError, TimeoutError, ssl.SSLError):
            writer.transport.abort()

    # --- protocol plumbing ------------------------------------------------------------

    def _mail_params(self, sender: str, rcpts: Sequence[str], data: bytes) -> str:
        params = ""
        if "SIZE" in self.extensions:
            params += f" SIZE={len(data)}"
        if "8BITMIME" in self.extensions and not data.isascii():
            params += " BODY=8BITMIME"
        if "SMTPUTF8" in self.extensions and not all(a.isascii() for a in (sender, *rcpts)):
            params += " SMTPUTF8"
        return params

    async def _ehlo(self) -> None:
        reply = await self._command(Stage.EHLO, f"EHLO {self.helo}\r\n".encode(), expect=250)
        self.extensions = {}
        for line in reply.text.split("\n")[1:]:
            keyword, _, value = line.strip().partition(" ")
            self.extensions[keyword.upper()] = value

    async def _command(self, stage: Stage, line: bytes, expect: int | None = None) -> Reply:
        self._write(line)
        return await self._read(stage, expect)

    async def _expect(self, stage: Stage, code: int) -> Reply:
        return await self._read(stage, code)

    def _write(self, data: bytes) -> None:
        if self._writer is None:
            raise DeliveryError(f"connection to {self.peer} is closed")
        self._writer.write(data)

    async def _read(self, stage: Stage, expect: int | None = None) -> Reply:
        assert self._reader is not None and self._writer is not None
        lines: list[str] = []
        try:
            await self._timed(stage, self._writer.drain())
            while True:
                raw = await self._timed(stage, self._reader.readline())
                if not raw.endswith(b"\n"):
                    raise DeliveryError(f"lost connection with {self.peer} while {stage.doing}")
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if len(line) < 3 or not line[:3].isdigit() or len(lines) > MAX_REPLY_LINES:
                    raise DeliveryError(f"malformed reply from {self.peer} while {stage.doing}: "
                                        f"{line[:80]!r}")  # fmt: skip
                lines.append(line[4:])
                if len(line) == 3 or line[3] != "-":
                    break
        except (ConnectionError, ValueError, asyncio.LimitOverrunError) as exc:
            await self.close()
            raise DeliveryError(
                f"lost connection with {self.peer} while {stage.doing}: {exc}"
            ) from None
        except DeliveryError:
            await self.close()
            raise
        reply = Reply(int(line[:3]), "\n".join(lines))
        if expect is not None and reply.code != expect:
            await self.close()
            raise DeliveryError(
                f"{self.peer} said {reply.code} {lines[-1] if lines else ''} while {stage.doing}",
                permanent=reply.code >= 500,
            )
        return reply

    async def _timed(self, stage: Stage, awaitable: Awaitable[_T]) -> _T:
        timeout = self.timeouts.get(stage, stage.timeout)
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except TimeoutError:
            if self._writer is not None:
                self._writer.transport.abort()
                self._writer = None
            raise DeliveryError(f"timeout while {stage.doing} to {self.peer}") from None


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 §4.5.2 transparency, plus the terminating ``.CRLF``.

    ``data`` has CRLF line ends (the server normalised them at acceptance), so every
    line that starts with "." gets a second one, and no "\\r\\n.\\r\\n" can occur inside.
    """
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"
