"""Portal cost: sensitive mail stored through the portal vs the same mail relayed over
forced TLS, same gateway, same run; and page reads of an opened message.

    .venv/bin/python bench/portal_bench.py [--messages 1000] [--sessions 20] [--reads 2000]
                                           [--readers 20] [--runs 2]

Topology (loopback only):

    smtp-source -s SESSIONS -m N -F sensitive.eml -t RCPT   (a relay client, no TLS)
        │ SMTP
        ▼
    securemail serve  (unknown_sensitive_action = "portal", [portal] enabled)
        │ RCPT carer@gmail.test (unknown)       │ RCPT gp@nhs.net (secure)
        │ encrypt + commit in portal.db,         │ spool, then forced verified TLS
        │ 250, notices to recipient + sender     │
        ▼                                        ▼
    sink (aiosmtpd, STARTTLS, test CA): the notices, or the messages themselves

The issue's bar: encryption must cost no more than 30 %, so the portal path must store
at least 0.7× the messages per second of the plain path. Stored = every message had its
250 (smtp-source done); both answer 250 only after their commit. Delivered = the sink
has every notice (portal) or message (plain). Then one message is opened (passcode via
the core, as the recipient's mailbox would give it) and ``GET /read`` with its session
cookie is timed with httpx (HTTP keep-alive, READERS concurrent clients). Figures are
printed; nothing is asserted on wall-clock.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
from harness.dnsserver import DnsServer  # noqa: E402
from harness.gatewaykit import ORG_DOMAIN, add_mx, client_context, write_config  # noqa: E402
from harness.pki import TestPKI  # noqa: E402
from harness.portal_gateway import PORTAL_SECTION, link_tokens  # noqa: E402
from harness.serve import GatewayProcess, free_port  # noqa: E402
from harness.smtpsink import SinkServer  # noqa: E402
from relay_bench import wait  # noqa: E402  (bench/ is on the path: this script's folder)
from stage_profile import tree_cpu  # noqa: E402  (the gateway, its accept and CPU workers)

from securemail.config import load_config  # noqa: E402
from securemail.portal import Portal, Session, ensure_key  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
SENDER = f"alice@{ORG_DOMAIN}"
PATHS = {"portal": "carer@gmail.test", "plain": "gp@nhs.net"}
SESSION_COOKIE = "__Host-sm_session"
LISTENING = re.compile(r"portal listening on https://([\d.]+):(\d+)")


def sensitive_message(path: Path, size: int) -> None:
    """A clinical letter the scanner calls sensitive (smtp-source adds the CRLFs)."""
    lines = [f"From: Dr Alice <{SENDER}>", "To: bench", "Subject: Patient 943 476 5919",
             "", "OFFICIAL-SENSITIVE", "NHS number 943 476 5919, discharge summary."]  # fmt: skip
    filler = "Observations stable, medication reviewed, follow-up in clinic in two weeks."
    while sum(len(x) + 2 for x in lines) < size:
        lines.append(filler)
    path.write_text("\n".join(lines) + "\n")


def source(port: int, rcpt: str, args: argparse.Namespace, eml: Path, log: Path) -> None:
    with log.open("wb") as out:
        subprocess.run(
            [SMTP_SOURCE, "-s", str(args.sessions), "-m", str(args.messages), "-F", str(eml),
             "-f", SENDER, "-t", rcpt, "-M", "client.bench.test", f"127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, check=True, timeout=900,
        )  # fmt: skip


def arrived(sink: SinkServer, rcpt: str) -> list[bytes]:
    return [m.data for m in list(sink.messages) if rcpt in m.rcpt_tos]


def store_run(
    name: str, gateway: GatewayProcess, mx: SinkServer, args: argparse.Namespace, base: Path
) -> dict[str, float]:
    rcpt = PATHS[name]
    before = len(arrived(mx, rcpt))
    cpu0 = tree_cpu(gateway.proc.pid)
    t0 = time.monotonic()
    source(gateway.ports[0], rcpt, args, base / "sensitive.eml", base / f"source-{name}.log")
    t1 = time.monotonic()
    t2 = wait(lambda: len(arrived(mx, rcpt)) - before >= args.messages, 900,
              f"{name}: everything at the sink")  # fmt: skip
    time.sleep(2.5)  # the sender notices gathered in the last seconds (portal.digest)
    cpu = tree_cpu(gateway.proc.pid) - cpu0
    return {"stored": args.messages / (t1 - t0), "delivered": args.messages / (t2 - t0),
            "cpu_ms": cpu * 1000 / args.messages}  # fmt: skip


async def open_session(config: Path, token: str) -> Session:
    """What the recipient does with the link and the passcode email, through the core
    on the gateway's own database (the passcode is taken from the ``send`` hook)."""
    codes: list[bytes] = []

    async def mailbox(rcpt: str, message: bytes) -> None:
        codes.append(message)

    portal = Portal.open(load_config(config, environ={}).portal, send=mailbox)
    await portal.start()
    try:
        await portal.send_passcode(token)
        found = re.search(rb"passcode is (\d{6})", codes[-1])
        assert found, "no passcode in the passcode email"
        session = await portal.check_passcode(token, found.group(1).decode(), "127.0.0.1")
        assert isinstance(session, Session), session
        return session
    finally:
        await portal.close()


async def read_pages(url: str, session: Session, args: argparse.Namespace, pki) -> float:
    """GET /read ``args.reads`` times from ``args.readers`` keep-alive clients; reads/s."""
    per_reader = args.reads // args.readers
    headers = {"Cookie": f"{SESSION_COOKIE}={session.id}"}

    async def reader() -> None:
        async with httpx.AsyncClient(base_url=url, verify=client_context(pki)) as http:
            for _ in range(per_reader):
                page = await http.get("/read", headers=headers)
                if page.status_code != 200 or b"943 476 5919" not in page.content:
                    sys.exit(f"GET /read answered {page.status_code}")

    t0 = time.perf_counter()
    await asyncio.gather(*(reader() for _ in range(args.readers)))
    return per_reader * args.readers / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--readers", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if not Path(SMTP_SOURCE).exists():
        sys.exit(f"{SMTP_SOURCE} missing: run 'make bench' (it installs postfix)")

    base = Path(tempfile.mkdtemp(prefix="sm-portal-bench-", dir="/tmp"))
    sensitive_message(base / "sensitive.eml", args.size)
    ensure_key(base / "portal.key")
    pki = TestPKI()
    dns = DnsServer()
    mx_ctx = pki.server_context("mx.gmail.test", "mx.nhs.net")
    with (
        dns,
        SinkServer(hostname="internal.example.nhs.uk") as internal,
        SinkServer(hostname="mx.gmail.test", tls_context=mx_ctx) as mx,
    ):
        for domain in ("nhs.net", "gmail.test"):
            add_mx(dns, domain)
        inbound, submission = free_port(), free_port()
        config = write_config(
            base, pki=pki, dns_server=dns, delivery_port=mx.port, internal_port=internal.port,
            inbound=f"127.0.0.1:{inbound}", submission=f"127.0.0.1:{submission}",
            extra=PORTAL_SECTION, listen_extra="max_message_size = 10000000",
        )  # fmt: skip
        text = config.read_text()
        config.write_text(text.replace("[relay]\n", '[relay]\nnetworks = ["127.0.0.1/32"]\n', 1))
        gateway = GatewayProcess(config, inbound, submission)
        gateway.start()
        try:
            bench(gateway, mx, args, base, pki)
        finally:
            gateway.stop()
            pki.close()


def bench(
    gateway: GatewayProcess, mx: SinkServer, args: argparse.Namespace, base: Path, pki
) -> None:
    print(
        f"load: smtp-source -s {args.sessions} -m {args.messages} of a {args.size}-byte "
        f"sensitive letter; {args.runs} runs each, alternating",
        flush=True,
    )
    results: dict[str, list[dict[str, float]]] = {name: [] for name in PATHS}
    for run in range(1, args.runs + 1):
        for name in PATHS:
            r = store_run(name, gateway, mx, args, base)
            results[name].append(r)
            print(
                f"{name:6} run {run}: stored {r['stored']:7.1f} msg/s  "
                f"delivered (notice or message at the sink) {r['delivered']:7.1f} msg/s  "
                f"gateway CPU {r['cpu_ms']:5.2f} ms/msg",
                flush=True,
            )

    def mean(name: str, key: str) -> float:
        return statistics.mean(row[key] for row in results[name])

    print()
    for key in ("stored", "delivered"):
        a, b = mean("portal", key), mean("plain", key)
        print(f"mean {key}: portal {a:.1f} msg/s, plain forced TLS {b:.1f} msg/s, "
              f"ratio {a / b:.2f}")  # fmt: skip
    a, b = mean("portal", "cpu_ms"), mean("plain", "cpu_ms")
    print(f"gateway CPU per message: portal {a:.2f} ms, plain {b:.2f} ms, ratio {a / b:.2f}"
          " (the portal's includes its notices)")  # fmt: skip

    found = LISTENING.search(gateway.log.read_text(errors="replace"))
    assert found, "the portal listener's address is not in the log"
    url = f"https://{found.group(1)}:{found.group(2)}"
    [token] = link_tokens(arrived(mx, PATHS["portal"])[-1])
    session = asyncio.run(open_session(gateway.config, token))
    rates = []
    for run in range(1, args.runs + 1):
        rate = asyncio.run(read_pages(url, session, args, pki))
        rates.append(rate)
        print(f"reads  run {run}: GET /read {rate:7.1f} pages/s "
              f"({args.readers} keep-alive clients)")  # fmt: skip
    print(f"mean page reads: {statistics.mean(rates):.1f} pages/s")


if __name__ == "__main__":
    main()
