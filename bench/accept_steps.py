"""CPU per message of accept-path steps, on the message relay_bench.py's load sends.

    .venv/bin/python bench/accept_steps.py [--iterations 3000] [--step NAME ...]

``relay_bench.py --stages`` says which stage costs what in a real run; this measures one
step alone (``time.process_time`` over many iterations, in µs per message), so a change
to it can be measured before and after without the noise of a shared machine's load.
The message is the one ``smtp-source -l 10240`` writes: four header fields (From, To,
Date, Message-Id), then 127 lines of a digit and 77 ``X`` and one of 80 ``X``, arriving
in the 4096-byte writes of Postfix's VSTREAM buffer.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from securemail.core.addresses import parse_address
from securemail.core.classify import Classification, Status
from securemail.core.levels import TlsLevel
from securemail.core.message import read_headers, reparse_input
from securemail.core.sensitivity import scan_message
from securemail.gateway import events as ev
from securemail.gateway.inbound.auth import strip_own_headers
from securemail.gateway.inbound.capacity import DataBudget
from securemail.gateway.inbound.data import DataReader
from securemail.gateway.inbound.networks import Networks
from securemail.gateway.inbound.server import GatewaySMTP, Transaction, received_header
from securemail.gateway.logs import lean_records
from securemail.gateway.spool import (
    NewMessage,
    NewRecipient,
    Outcome,
    RcptStatus,
    SqliteSpool,
    new_queue_id,
)

SENDER, RCPT = "a@example.nhs.uk", "b@sink.test"
HOSTNAME = "relay.example.nhs.uk"


def bench_message() -> bytes:
    """The message smtp-source sends with ``-l 10240`` (as the sink receives it)."""
    headers = (
        f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nDate: Mon, 30 Nov 2026 19:53:23 +0000 (UTC)\r\n"
        "Message-Id: <6f7d.0003.0000@client.bench.test>\r\n\r\n"
    )
    body = "".join(f"{i % 10}{'X' * 77}\r\n" for i in range(1, 128)) + "X" * 80 + "\r\n"
    return (headers + body).encode()


MESSAGE = bench_message()
WIRE = [(MESSAGE + b".\r\n")[i : i + 4096] for i in range(0, len(MESSAGE) + 3, 4096)]
CLASSIFICATION = Classification(RCPT, "sink.test", Status.SECURE, "local", "bench")
TRANSACTION = Transaction(
    role="inbound", peer="127.0.0.1", helo="client.bench.test", auth_user="", tls="",
    sender=SENDER, recipients=[(RCPT, CLASSIFICATION)], data=MESSAGE,
)  # fmt: skip
ACCEPTED = ev.Accepted(
    queue_id="0123456789ABCDEF", sender=SENDER, rcpts=1, held=0, size=len(MESSAGE),
    client="127.0.0.1", tls="", auth_user="", sensitive=False,
    decisions=(ev.RcptDecision(RCPT, "deliver", "required"),),
)  # fmt: skip


PROTOCOL = GatewaySMTP.__new__(GatewaySMTP)  # _getaddr reads only a class attribute


def addresses() -> None:
    """The MAIL FROM and RCPT TO paths, as aiosmtpd's smtp_MAIL and smtp_RCPT parse them."""
    PROTOCOL._getaddr(f"<{SENDER}>")
    PROTOCOL._getaddr(f"<{RCPT}>")


def address_reads() -> None:
    """Each address as the gateway reads it for one message: MAIL FROM and its
    classification, RCPT TO and its classification, the header From and its."""
    for text in (SENDER, SENDER, RCPT, RCPT, f"<{SENDER}>", SENDER):
        parse_address(text)


def _relay_networks() -> Callable[[], None]:
    """The client checked against ``[relay] networks`` as often as for one message
    (MAIL's forced TLS, RCPT's relay permission, inbound verification, forced TLS on
    the header From, the connection limits)."""
    relay = Networks(["127.0.0.0/8"])

    def asks() -> None:
        for _ in range(5):
            assert "127.0.0.1" in relay

    return asks


def data_reader() -> None:
    reader = DataReader(10 * 1024 * 1024, 1001, DataBudget(1 << 30))
    for chunk in WIRE:
        reader.feed(chunk)
    assert reader.done
    reader.content()
    reader.release()


def headers() -> None:
    """As ``AcceptPipeline.accept`` reads and cleans the header section."""
    block = read_headers(MESSAGE)
    data = reparse_input(MESSAGE, block)
    strip_own_headers(data, HOSTNAME, block if data is MESSAGE else None)


def scan() -> None:
    scan_message(MESSAGE)


def received() -> None:
    received_header(TRANSACTION, HOSTNAME, "0123456789ABCDEF", 1_800_000_000.0)


def queue_id() -> None:
    new_queue_id()


def _log_sink(level: int) -> Callable[[], None]:
    """LogSink.emit of an Accepted event with the gateway's formatter and record
    settings (``logs.lean_records``), at ``level``."""
    lean_records()
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(ev.log_formatter("text"))
    logger = logging.getLogger("securemail.gateway")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(level)
    sink = ev.LogSink()

    def emit() -> None:
        sink.emit(ACCEPTED)
        stream = handler.stream
        stream.seek(0)
        stream.truncate()

    return emit


SPOOL_BATCH = 20  # messages per spool cycle: stored together, as group commit does


def _spool_cycle(sensitivity: str) -> Callable[[], None]:
    """``SPOOL_BATCH`` messages through a real SQLite spool (fsync on) as the gateway
    takes them: stored concurrently, claimed, read, recorded as sent, so removed. With
    a ``sensitivity`` summary each is erased: secure_delete, then a WAL checkpoint."""
    spool = SqliteSpool(Path(tempfile.mkdtemp(prefix="accept-steps-")) / "spool.db")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(spool.open())
    rcpt = NewRecipient(RCPT, "sink.test", RcptStatus.QUEUED, TlsLevel.VERIFIED, "bench")
    message = NewMessage(SENDER, (rcpt,), MESSAGE, sensitivity=sensitivity)

    async def cycle() -> None:
        await asyncio.gather(*(spool.store(message) for _ in range(SPOOL_BATCH)))
        claimed = await spool.claim_due(time.time() + 1, SPOOL_BATCH)
        for delivery in claimed:
            await spool.message_data(delivery.queue_id)
        sent = [Outcome(d.queue_id, d.rcpt, RcptStatus.DELIVERED) for d in claimed]
        await asyncio.gather(*(spool.record([outcome]) for outcome in sent))

    return lambda: loop.run_until_complete(cycle())


STEPS: dict[str, Callable[[], Callable[[], None]]] = {
    "MAIL and RCPT paths": lambda: addresses,
    "address reads": lambda: address_reads,
    "relay networks": _relay_networks,
    "DATA reader": lambda: data_reader,
    "headers": lambda: headers,
    "scan": lambda: scan,
    "Received": lambda: received,
    "queue id": lambda: queue_id,
    "log line (INFO on)": lambda: _log_sink(logging.INFO),
    "log line (level off)": lambda: _log_sink(logging.WARNING),
    "spool cycle, clean": lambda: _spool_cycle(""),
    "spool cycle, flagged": lambda: _spool_cycle("OFFICIAL-SENSITIVE marking in subject"),
}
PER_CALL = {"spool cycle, clean": SPOOL_BATCH, "spool cycle, flagged": SPOOL_BATCH}
"""Messages per call, where it is not one; such a step runs that many times fewer."""


def per_message(fn: Callable[[], None], iterations: int, messages: int = 1) -> float:
    """CPU µs per message, every thread of this process counted (the spool's writer):
    the best of five rounds (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(iterations):
            fn()
        best = min(best, time.process_time() - start)
    return best / (iterations * messages) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--step", action="append", choices=sorted(STEPS), default=[])
    args = parser.parse_args()
    print(f"message: {len(MESSAGE)} bytes, DATA in {len(WIRE)} chunks; CPU µs per message")
    for name in args.step or STEPS:
        fn = STEPS[name]()
        fn()  # warm up: imports, caches
        batch = PER_CALL.get(name, 1)
        cost = per_message(fn, max(1, args.iterations // batch), batch)
        print(f"{name:<22} {cost:9.1f}", flush=True)


if __name__ == "__main__":
    main()
