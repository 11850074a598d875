"""Crash safety and graceful shutdown of ``securemail serve``, run as a real process.

The promise under test (see securemail/spool/store.py): once a client has heard ``250``
its message is on disk and stays there until every recipient has a final answer,
whatever happens to the process. So the gateway is SIGKILLed at random moments while a
client sends and while the queue manager delivers, restarted on the same configuration
and spool, and every message that got ``250`` must reach its recipients' servers.

Duplicates are measured, not wished away: SMTP cannot rule one out when the process dies
after the next hop said ``250`` to our DATA but before the spool recorded it (RFC 5321
§6.1 prefers a duplicate to a loss). A recipient can only be in that window if it was
``delivering`` in the spool at the moment of the kill, so the test reads the spool
between kill and restart and allows a second copy exactly for those recipients, never
for any other, and none at all when the next hop was refusing mail during the kill.

Randomness comes from one seed (``CRASH_SEED`` to reproduce a run), printed with every
failure. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import smtplib
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness.gatewaykit import ORG_DOMAIN, PASSWORD, add_mx, client_context, write_config
from harness.serve import ENV, SECUREMAIL, GatewayProcess, free_port, refuses
from harness.smtpsink import SinkServer

from securemail.core.levels import TlsLevel
from securemail.gateway.inbound.users import add_user
from securemail.gateway.outbound.deliver import Result
from securemail.gateway.queue.manager import QueueManager, Schedule
from securemail.gateway.spool import NewMessage, NewRecipient, RcptStatus, SqliteSpool

pytestmark = pytest.mark.slow  # real Postfix / SIGKILL trials: CI, not the fast lane

SENDER = f"crash@{ORG_DOMAIN}"  # our own domain: a DSN would show up at the internal sink
INTERNAL_RCPT = f"jo@{ORG_DOMAIN}"  # relayed to [inbound] deliver_to, opportunistic TLS
SECURE_RCPT = "gp@nhs.net"  # MX lookup, verified TLS required
RCPT_CHOICES = ([INTERNAL_RCPT], [SECURE_RCPT], [INTERNAL_RCPT, SECURE_RCPT])
TOKEN = re.compile(rb"^Subject: (?:[^\r\n]* )?(crash-[\w-]+)\r?$", re.MULTILINE)
QUEUED_AS = re.compile(r"queued as ([0-9A-Z]{16})")
SEED = int(os.environ.get("CRASH_SEED") or random.SystemRandom().randrange(2**32))

GROUPS = 10
TRIALS_PER_GROUP = 12
SUMMARY: Counter[str] = Counter()


# --- the gateway as a process -----------------------------------------------------------


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (seed {SEED})")
        time.sleep(0.02)


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SECUREMAIL, *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=config.parent,
        env={**ENV, "COLUMNS": "200"},
    )


# --- the spool, read directly (WAL: a reader never blocks the gateway) -----------------


def spool_rows(db: Path) -> list[tuple[str, str, str, str]]:
    """(token, rcpt, status, queue_id) for every recipient in the spool."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT r.rcpt, r.status, r.queue_id, m.data FROM recipients r"
            " JOIN messages m ON m.id = r.queue_id"
        ).fetchall()
    finally:
        conn.close()
    out = []
    for rcpt, status, queue_id, data in rows:
        found = TOKEN.search(bytes(data))
        out.append((found.group(1).decode() if found else "", rcpt, status, queue_id))
    return out


def spool_messages(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    finally:
        conn.close()


# --- rig: DNS, two sinks, a config with fixed ports, the gateway process ---------------


@dataclass
class Rig:
    config: Path
    db: Path
    gateway: GatewayProcess
    internal: SinkServer  # [inbound] deliver_to: our own domain's mail server
    mx: SinkServer  # every MX (nhs.net, gmail.test): STARTTLS with a test-CA certificate
    inbound: int
    submission: int

    def sinks_down(self) -> None:
        """Both next hops answer 450 to every DATA: nothing can be delivered."""
        self.internal.reply_code = self.mx.reply_code = 450

    def sinks_up(self) -> None:
        self.internal.reply_code = self.mx.reply_code = None

    def delivered(self) -> Counter[tuple[str, str]]:
        """(token, rcpt) → copies accepted by the sinks."""
        counts: Counter[tuple[str, str]] = Counter()
        for sink in (self.internal, self.mx):
            for m in list(sink.messages):
                found = TOKEN.search(m.data)
                token = found.group(1).decode() if found else ""
                for rcpt in m.rcpt_tos:
                    counts[(token, rcpt)] += 1
        return counts

    def dsns(self) -> list[bytes]:
        return [m.data for m in list(self.internal.messages) if m.mail_from in ("", "<>")]


@pytest.fixture
def rig(tmp_path, pki, dns_server) -> Iterator[Rig]:
    add_mx(dns_server, "nhs.net")
    add_mx(dns_server, "gmail.test")
    mx_ctx = pki.server_context("mx.nhs.net", "mx.gmail.test")
    with (
        SinkServer(hostname="internal.example.nhs.uk") as internal,
        SinkServer(hostname="mx.nhs.net", tls_context=mx_ctx) as mx,
    ):
        inbound, submission = free_port(), free_port()
        while submission == inbound:
            submission = free_port()
        config = write_config(
            tmp_path,
            pki=pki,
            dns_server=dns_server,
            delivery_port=mx.port,
            internal_port=internal.port,
            inbound=f"127.0.0.1:{inbound}",
            submission=f"127.0.0.1:{submission}",
        )
        # Loopback may relay through the inbound listener (as an internal server would),
        # so the crash client reaches nhs.net without paying for TLS + argon2 per message.
        text = config.read_text()
        config.write_text(text.replace("[relay]\n", '[relay]\nnetworks = ["127.0.0.1/32"]\n', 1))
        add_user(tmp_path / "users.toml", "alice", PASSWORD, [SENDER])  # alice sends as it
        gateway = GatewayProcess(config, inbound, submission)
        try:
            yield Rig(config, tmp_path / "spool.db", gateway, internal, mx, inbound, submission)
        finally:
            gateway.stop()


# --- the client ---------------------------------------------------------------------------


def message_for(token: str, rcpts: list[str], lines: int) -> bytes:
    body = "".join(f"{token} line {i:04d} " + "x" * 48 + "\r\n" for i in range(lines))
    return (
        f"From: {SENDER}\r\nTo: {', '.join(rcpts)}\r\nSubject: {token}\r\n"
        f"Message-ID: <{token}@client.crash.test>\r\n\r\n{body}"
    ).encode()


class Client(threading.Thread):
    """Sends its plan message by message and remembers which got 250 to DATA.

    Errors after ``killed`` is set are the kill's doing (the message simply does not
    count); any error before it is a failure of the gateway.
    """

    def __init__(self, port: int, plan: list[tuple[str, list[str], int]], *, reuse: bool):
        super().__init__(name="crash-client", daemon=True)
        self.port = port
        self.plan = plan  # (token, rcpts, body lines)
        self.reuse = reuse  # one connection for many messages, or one per message
        self.killed = threading.Event()
        self.accepted: dict[str, str] = {}  # token → queue id
        self.errors_before_kill: list[str] = []
        self.errors_after_kill = 0
        self.cond = threading.Condition()
        self.finished = False

    def run(self) -> None:
        smtp: smtplib.SMTP | None = None
        try:
            for token, rcpts, lines in self.plan:
                if self.errors_after_kill >= 2:
                    break  # the gateway is gone; the rest would only be refused too
                try:
                    if smtp is None:
                        smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=15)
                        smtp.ehlo("client.crash.test")
                    queue_id = self._send(smtp, token, rcpts, lines)
                except (smtplib.SMTPException, OSError) as exc:
                    if self.killed.is_set():
                        self.errors_after_kill += 1
                    else:
                        self.errors_before_kill.append(f"{token}: {exc!r}")
                    smtp = _drop(smtp)
                    continue
                with self.cond:
                    self.accepted[token] = queue_id
                    self.cond.notify_all()
                if not self.reuse:
                    smtp = _drop(smtp, quit=True)
        finally:
            _drop(smtp, quit=True)
            with self.cond:
                self.finished = True
                self.cond.notify_all()

    @staticmethod
    def _send(smtp: smtplib.SMTP, token: str, rcpts: list[str], lines: int) -> str:
        code, reply = smtp.mail(SENDER)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, SENDER)
        for rcpt in rcpts:
            code, reply = smtp.rcpt(rcpt)
            if code != 250:
                raise smtplib.SMTPRecipientsRefused({rcpt: (code, reply)})
        code, reply = smtp.data(message_for(token, rcpts, lines))
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)
        found = QUEUED_AS.search(reply.decode())
        assert found, reply
        return found.group(1)

    def wait_accepted(self, n: int, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: len(self.accepted) >= n or self.finished, timeout)


def _drop(smtp: smtplib.SMTP | None, *, quit: bool = False) -> None:
    if smtp is None:
        return None
    try:
        if quit:
            smtp.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        smtp.close()
    return None


# --- crash trials -------------------------------------------------------------------------


@dataclass
class Trial:
    """One client run, one or two SIGKILLs, a restart, and the accounting."""

    rig: Rig
    rng: random.Random
    name: str
    # "live": the next hops accept; "down": they answer 450 until the restart;
    # "double": killed a second time while starting up or redelivering. Each of these
    # kills every process at once. "worker": one accept worker is killed (the writer of
    # the spool for its sessions) and the gateway replaces it; "main": the gateway
    # process alone is killed, and its workers stop by themselves.
    mode: str
    window: Counter[tuple[str, str]] = field(default_factory=Counter)
    kills: int = 0

    def kill(self) -> None:
        """SIGKILL; then note which recipients were mid-delivery (the duplicate window).

        A killed accept worker delivers nothing, so it opens no window: the gateway
        process goes on delivering, and a duplicate there is a failure."""
        self.kills += 1
        if self.mode == "worker":
            self.rig.gateway.kill_worker(self.rng.choice)
            return
        if self.mode == "main":
            self.rig.gateway.kill_main()
        else:
            self.rig.gateway.kill()
        for token, rcpt, status, _ in spool_rows(self.rig.db):
            if status == "delivering":
                self.window[(token, rcpt)] += 1

    def run(self) -> None:
        rig, rng = self.rig, self.rng
        n = rng.randint(5, 30)
        plan = [
            (f"{self.name}-{i}", list(rng.choice(RCPT_CHOICES)), rng.choice((1, 5, 50, 300)))
            for i in range(n)
        ]
        rcpts_of = {token: rcpts for token, rcpts, _ in plan}
        client = Client(rig.inbound, plan, reuse=rng.random() < 0.5)
        kill_after = rng.randint(0, n)  # kill once this many messages got 250 …
        extra = rng.uniform(0, 0.05)  # … plus up to 50 ms: mid-dialogue, mid-delivery
        if self.mode == "down":
            rig.sinks_down()
        if not rig.gateway.running:
            rig.gateway.start()
        client.start()
        client.wait_accepted(kill_after, timeout=60)
        time.sleep(extra)
        client.killed.set()
        self.kill()
        client.join(30)
        assert not client.is_alive(), f"{self.name}: client stuck (seed {SEED})"
        if self.mode == "double":
            # Killed again while starting (opening the spool, putting back the first
            # kill's claims) or just after, while redelivering them.
            if rng.random() < 0.5:
                rig.gateway.start(ready=False)
                time.sleep(rng.uniform(0, 0.6))
            else:
                rig.gateway.start()
                time.sleep(rng.uniform(0, 0.3))
            self.kill()
        rig.sinks_up()
        if not rig.gateway.running:  # a killed worker's gateway still runs
            rig.gateway.start()
        self.settle(rcpts_of, client)

    def settle(self, rcpts_of: dict[str, list[str]], client: Client) -> None:
        rig = self.rig
        context = f"{self.name} mode={self.mode} seed={SEED}"
        assert client.errors_before_kill == [], f"{context}: {client.errors_before_kill}"
        wanted = [(token, r) for token in client.accepted for r in rcpts_of[token]]

        def drained() -> bool:
            if not rig.gateway.running:
                raise AssertionError(f"{context}: gateway died:\n{rig.gateway.tail()}")
            got = rig.delivered()
            return spool_messages(rig.db) == 0 and all(got[k] for k in wanted)

        try:
            wait_for(drained, 60, f"{context}: spool drained, all accepted mail delivered")
        except AssertionError:
            rows = spool_rows(rig.db)
            raise AssertionError(f"{context}: left in spool {rows}\n{rig.gateway.tail()}") from None
        got = rig.delivered()
        mine = {k: c for k, c in got.items() if k[0] in rcpts_of}
        lost = [k for k in wanted if not got[k]]
        assert not lost, f"{context}: LOST {lost}"
        stray = [k for k in mine if k[1] not in rcpts_of[k[0]]]
        assert not stray, f"{context}: delivered to recipients never asked for: {stray}"
        dups = {k: c for k, c in mine.items() if c > 1}
        # A second copy only where the kill caught the recipient mid-delivery, and at
        # most one extra per such kill.
        beyond = {k: c for k, c in dups.items() if c > 1 + self.window[k]}
        assert not beyond, f"{context}: duplicates outside the window {beyond}; {self.window}"
        if self.mode == "down":
            assert not dups, f"{context}: duplicates though the next hops refused: {dups}"
        assert rig.dsns() == [], f"{context}: unexpected bounce"
        SUMMARY.update(
            trials=1,
            kills=self.kills,
            **{f"mode_{self.mode}": 1},
            messages_sent=len(rcpts_of),
            messages_250=len(client.accepted),
            rcpt_deliveries_owed=len(wanted),
            lost=len(lost),
            duplicated=sum(c - 1 for c in dups.values()),
            in_window_at_kill=sum(self.window.values()),
            delivered_without_250=len(
                {t for (t, _), c in mine.items() if t not in client.accepted}
            ),
        )


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not SUMMARY["trials"] and not SUMMARY["sigterm_trials"]:
        return
    s = SUMMARY
    line = (
        f"crash summary (seed {SEED}): {s['trials']} trials "
        f"(live {s['mode_live']}, down {s['mode_down']}, double {s['mode_double']}, "
        f"accept worker {s['mode_worker']}, gateway process alone {s['mode_main']}), "
        f"{s['kills']} SIGKILLs; {s['messages_sent']} messages offered, {s['messages_250']} "
        f"got 250 → {s['rcpt_deliveries_owed']} deliveries owed; lost {s['lost']}, "
        f"duplicated {s['duplicated']} (recipients mid-delivery at a kill: "
        f"{s['in_window_at_kill']}); delivered though the client saw no 250: "
        f"{s['delivered_without_250']}; SIGTERM under load: {s['sigterm_trials']} trials "
        f"passed ({s['sigterm_250']} messages got 250; no loss, no duplicate allowed)"
    )
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{line}")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("group", range(GROUPS))
def test_sigkill_never_loses_accepted_mail(rig, group):
    rng = random.Random(f"{SEED}-{group}")
    modes = ["live"] * 4 + ["down"] * 2 + ["double"] * 2 + ["worker"] * 2 + ["main"] * 2
    rng.shuffle(modes)
    assert len(modes) == TRIALS_PER_GROUP
    for number, mode in enumerate(modes):
        Trial(rig, rng, f"crash-{group}-{number}", mode).run()
    rig.gateway.stop()
    assert rig.gateway.proc is not None and rig.gateway.proc.returncode == 0, rig.gateway.tail()


# --- graceful shutdown (SIGTERM) ----------------------------------------------------------


class RawSession:
    """A hand-driven SMTP connection, to stop half-way through DATA."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.file = self.sock.makefile("rwb")
        self.greeting = self.reply()

    def reply(self) -> bytes:
        """The last line of the next reply; b"" if the server closed the connection."""
        try:
            line = self.file.readline()
            while line[3:4] == b"-":
                line = self.file.readline()
        except ConnectionError:
            return b""
        return line

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()

    def command(self, line: bytes) -> bytes:
        self.write(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def transact(smtp: smtplib.SMTP, rcpts: list[str], data: bytes) -> str:
    """MAIL, RCPT (each must get 250), DATA; returns the queue id from the 250 reply."""
    smtp.mail(SENDER)
    for rcpt in rcpts:
        assert smtp.rcpt(rcpt)[0] == 250
    code, reply = smtp.data(data)
    assert code == 250, reply
    found = QUEUED_AS.search(reply.decode())
    assert found, reply
    return found.group(1)


def send_one(port: int, token: str, rcpts: list[str]) -> str:
    """One message through the inbound listener; returns its queue id."""
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
        smtp.ehlo("client.crash.test")
        data = message_for(token, rcpts, 5)
        return transact(smtp, rcpts, data)


def drain(rig: Rig, wanted: list[tuple[str, str]], what: str) -> Counter[tuple[str, str]]:
    """Wait until the spool is empty and every wanted (token, rcpt) reached its sink."""

    def done() -> bool:
        assert rig.gateway.running, rig.gateway.tail()
        got = rig.delivered()
        return spool_messages(rig.db) == 0 and all(got[k] for k in wanted)

    try:
        wait_for(done, 60, what)
    except AssertionError:
        raise AssertionError(
            f"{what}: left {spool_rows(rig.db)}\n{rig.gateway.tail()} (seed {SEED})"
        ) from None
    return rig.delivered()


@pytest.mark.timeout(120)
def test_sigterm_finishes_the_transaction_in_flight_and_keeps_the_queue(rig):
    gw = rig.gateway
    gw.start()
    rig.sinks_down()  # nothing can leave: what was accepted must survive the shutdown
    rcpts_of = {f"crash-term-q{i}": list(RCPT_CHOICES[i % 3]) for i in range(6)}
    ids = {token: send_one(rig.inbound, token, rcpts) for token, rcpts in rcpts_of.items()}

    busy = RawSession(rig.inbound)
    assert busy.command(b"EHLO busy.crash.test").startswith(b"250")
    assert busy.command(f"MAIL FROM:<{SENDER}>".encode()).startswith(b"250")
    for rcpt in (INTERNAL_RCPT, SECURE_RCPT):
        assert busy.command(f"RCPT TO:<{rcpt}>".encode()).startswith(b"250")
    assert busy.command(b"DATA").startswith(b"354")
    token = "crash-term-inflight"
    rcpts_of[token] = [INTERNAL_RCPT, SECURE_RCPT]
    data = message_for(token, rcpts_of[token], 200)
    busy.write(data[: len(data) // 2])
    idle = RawSession(rig.inbound)
    assert idle.command(b"EHLO idle.crash.test").startswith(b"250")

    gw.terminate()
    wait_for(
        lambda: refuses(rig.inbound) and refuses(rig.submission),
        15,
        "both listeners closed after SIGTERM",
    )
    assert idle.reply().startswith(b"421"), "an idle client is told we are going away"
    assert gw.running, "the gateway waits for the transaction in flight"
    busy.write(data[len(data) // 2 :] + b".\r\n")
    final = busy.reply()
    assert final.startswith(b"250"), final
    found = QUEUED_AS.search(final.decode())
    assert found, final
    ids[token] = found.group(1)
    assert busy.reply() in (b"", b"421 4.3.2 Service shutting down\r\n")
    busy.close()
    idle.close()
    assert gw.wait(40) == 0, gw.tail()
    assert "stopping" in gw.tail(200)  # the accept workers' lines come after it too

    # Nothing lost, nothing left half-claimed: every message accepted is in the spool.
    rows = spool_rows(rig.db)
    assert {(tok, rcpt) for tok, rcpt, _, _ in rows} == {
        (tok, rcpt) for tok, rcpts in rcpts_of.items() for rcpt in rcpts
    }
    assert {status for _, _, status, _ in rows} <= {"queued", "deferred"}, rows
    listed = run_cli(rig.config, "queue", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {json.loads(line)["queue_id"] for line in listed.stdout.splitlines()} == set(
        ids.values()
    )
    assert not any(tok.startswith("crash-term") for tok, _ in rig.delivered())

    rig.sinks_up()
    gw.start()
    wanted = [(tok, rcpt) for tok, rcpts in rcpts_of.items() for rcpt in rcpts]
    got = drain(rig, wanted, "the queue kept over the restart delivered")
    assert {k: got[k] for k in wanted} == dict.fromkeys(wanted, 1)
    gw.terminate()
    assert gw.wait(30) == 0, gw.tail()


@pytest.mark.timeout(60)
def test_sigterm_when_idle_exits_zero(rig):
    gw = rig.gateway
    gw.start()
    idle = RawSession(rig.submission)
    gw.terminate()
    assert idle.reply().startswith(b"421")
    idle.close()
    assert gw.wait(20) == 0, gw.tail()
    assert refuses(rig.inbound) and refuses(rig.submission)
    gw.start()  # and it comes back on the same ports
    gw.terminate()
    assert gw.wait(20) == 0, gw.tail()


@pytest.mark.timeout(180)
def test_sigterm_under_load_loses_and_duplicates_nothing(rig):
    """A graceful stop while mail flows in and out: no loss, and (unlike SIGKILL) no
    second copies, because every delivery in flight finishes and is recorded."""
    rng = random.Random(f"{SEED}-sigterm")
    gw = rig.gateway
    for trial in range(8):
        context = f"sigterm trial {trial} seed {SEED}"
        n = rng.randint(10, 30)
        plan = [
            (f"crash-term-{trial}-{i}", list(rng.choice(RCPT_CHOICES)), rng.choice((1, 50, 300)))
            for i in range(n)
        ]
        rcpts_of = {token: rcpts for token, rcpts, _ in plan}
        client = Client(rig.inbound, plan, reuse=rng.random() < 0.5)
        gw.start()
        client.start()
        client.wait_accepted(rng.randint(1, n), timeout=60)
        time.sleep(rng.uniform(0, 0.05))
        client.killed.set()
        gw.terminate()
        client.join(60)
        assert not client.is_alive(), context
        assert client.errors_before_kill == [], f"{context}: {client.errors_before_kill}"
        assert gw.wait(40) == 0, f"{context}\n{gw.tail()}"
        left = [row for row in spool_rows(rig.db) if row[2] == "delivering"]
        assert left == [], f"{context}: claims left after a graceful stop: {left}"
        gw.start()
        wanted = [(token, r) for token in client.accepted for r in rcpts_of[token]]
        got = drain(rig, wanted, context)
        mine = {k: c for k, c in got.items() if k[0] in rcpts_of}
        assert [k for k in wanted if not got[k]] == [], f"{context}: lost"
        assert {k: c for k, c in mine.items() if c > 1} == {}, f"{context}: duplicated"
        gw.terminate()
        assert gw.wait(30) == 0, f"{context}\n{gw.tail()}"
        SUMMARY.update(sigterm_trials=1, sigterm_250=len(client.accepted))


class _StallingSpool:
    """A spool whose claim commits, then keeps its caller waiting until released."""

    def __init__(self, spool: SqliteSpool) -> None:
        self.spool = spool
        self.claimed = asyncio.Event()
        self.proceed = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.spool, name)

    async def claim_due(self, now: float, limit: int) -> list:
        claimed = await self.spool.claim_due(now, limit)
        if claimed:
            self.claimed.set()
            await self.proceed.wait()
        return claimed


class _AcceptingDeliverer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def deliver(self, domain, tls, items, *, report=None) -> list[Result]:
        self.sent += [(i.queue_id, r) for i in items for r in i.rcpts]
        return [Result(i.queue_id, r, True, False, "250 2.0.0 Ok") for i in items for r in i.rcpts]

    async def close(self) -> None:
        pass

    async def expire_idle(self) -> None:
        pass


async def test_stop_waits_for_a_claim_already_under_way(tmp_path):
    """SIGTERM just as the queue manager claims: what it claimed is delivered and
    recorded before stop() returns, not left `delivering` (to be sent again next start
    although it may already have been sent)."""
    spool = SqliteSpool(tmp_path / "spool.db", synchronous="NORMAL")
    await spool.open()
    try:
        rcpt = NewRecipient(SECURE_RCPT, "nhs.net", RcptStatus.QUEUED, TlsLevel.VERIFIED, "test")
        data = message_for("crash-stop-claim", [SECURE_RCPT], 1)
        queue_id = await spool.store(NewMessage(sender=SENDER, recipients=(rcpt,), data=data))
        stalling, deliverer = _StallingSpool(spool), _AcceptingDeliverer()
        manager = QueueManager(stalling, deliverer, bounce=None, schedule=Schedule())
        runner = asyncio.ensure_future(manager.run())
        await asyncio.wait_for(stalling.claimed.wait(), 10)
        stopping = asyncio.ensure_future(manager.stop(grace=10))
        await asyncio.sleep(0.05)
        stalling.proceed.set()
        await asyncio.wait_for(stopping, 20)
        runner.cancel()  # as Gateway.stop does next
        await asyncio.gather(runner, return_exceptions=True)
        assert deliverer.sent == [(queue_id, SECURE_RCPT)]
        assert await spool.list_messages() == []  # delivered and recorded
    finally:
        await spool.close()


# --- the queue commands against a running gateway -----------------------------------------


def submit_one(rig: Rig, pki, token: str, rcpts: list[str], subject_prefix: str) -> str:
    """STARTTLS + AUTH on the submission listener; returns the queue id."""
    data = message_for(token, rcpts, 5).replace(
        b"Subject: ", f"Subject: {subject_prefix} ".encode(), 1
    )
    with smtplib.SMTP("127.0.0.1", rig.submission, timeout=15) as smtp:
        smtp.ehlo("client.crash.test")
        smtp.starttls(context=client_context(pki))
        smtp.ehlo("client.crash.test")
        smtp.login("alice", PASSWORD)
        return transact(smtp, rcpts, data)


def queue_json(rig: Rig, *args: str) -> dict[str, dict]:
    proc = run_cli(rig.config, "queue", "list", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return {row["queue_id"]: row for row in rows}


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("securemail: error: "), proc.stderr
    return lines[0]


@pytest.mark.timeout(120)
def test_queue_commands_while_the_gateway_runs(rig, pki):
    gw = rig.gateway
    gw.start()
    rig.internal.reply_code = 450  # our own mail server is down: mail for it waits
    held = submit_one(rig, pki, "crash-queue-held", ["x@gmail.test"], "OFFICIAL-SENSITIVE")
    waiting = send_one(rig.inbound, "crash-queue-waiting", [INTERNAL_RCPT])

    def deferred() -> bool:
        row = queue_json(rig).get(waiting)
        return row is not None and row["recipients"][0]["status"] == "deferred"

    wait_for(deferred, 30, "the waiting message deferred")
    rows = queue_json(rig)
    # The sender of the held message was told at once (a notice from <>, queued for our
    # own server, which is down): that is the third entry.
    notices = {q for q, row in rows.items() if row["sender"] == ""}
    assert len(notices) == 1
    assert set(rows) - notices == {held, waiting}
    (h,) = rows[held]["recipients"]
    assert (h["rcpt"], h["status"]) == ("x@gmail.test", "held")
    assert h["reason"] and rows[held]["sensitivity"] and rows[held]["auth_user"] == "alice"
    (w,) = rows[waiting]["recipients"]
    assert w["rcpt"] == INTERNAL_RCPT and w["attempts"] >= 1 and "450" in w["last_error"]
    assert set(queue_json(rig, "--status", "held")) == {held}

    shown = run_cli(rig.config, "queue", "show", held, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["recipients"][0]["status"] == "held"
    human = run_cli(rig.config, "queue", "show", held)
    assert human.returncode == 0 and held in human.stdout and "held" in human.stdout

    assert rig.mx.messages == []  # held means never sent
    released = run_cli(rig.config, "queue", "release", held, "--reason", "checked")
    assert released.returncode == 0 and "released 1" in released.stdout, released.stderr
    rig.mx.wait(1, timeout=30)  # the running gateway notices and delivers it
    assert [m.rcpt_tos for m in rig.mx.messages] == [["x@gmail.test"]]
    again = run_cli(rig.config, "queue", "release", held, "--reason", "checked")
    assert "no such message in the spool" in one_line_error(again)  # delivered: gone

    flushed = run_cli(rig.config, "queue", "flush")
    assert flushed.returncode == 0 and "recipients due now" in flushed.stdout, flushed.stderr
    deleted = run_cli(rig.config, "queue", "delete", waiting, "--reason", "not needed")
    assert deleted.returncode == 0 and f"deleted {waiting}" in deleted.stdout, deleted.stderr
    assert waiting not in queue_json(rig)

    rig.internal.reply_code = None  # back up: the deleted message must never arrive
    marker = send_one(rig.inbound, "crash-queue-after", [INTERNAL_RCPT])
    got = drain(rig, [("crash-queue-after", INTERNAL_RCPT)], "marker delivered")
    assert got[("crash-queue-waiting", INTERNAL_RCPT)] == 0
    assert got[("crash-queue-held", "x@gmail.test")] == 1
    assert marker not in queue_json(rig)

    for args in (("show", "NOSUCHQUEUEID0000"), ("release", "NOSUCHQUEUEID0000", "--reason", "x"),
                 ("delete", "NOSUCHQUEUEID0000", "--reason", "x")):  # fmt: skip
        assert "NOSUCHQUEUEID0000" in one_line_error(run_cli(rig.config, "queue", *args))
    assert "--status" in one_line_error(run_cli(rig.config, "queue", "list", "--status", "x"))
    assert gw.running
    gw.terminate()
    assert gw.wait(30) == 0, gw.tail()
