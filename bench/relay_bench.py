"""Forced, verified TLS relay throughput: securemail vs Postfix, same load, same run.

    sudo .venv/bin/python bench/relay_bench.py [--msgs 2000] [--sessions 20] [--size 10240]
                                               [--runs 2] [--stages [--verbose]]

Topology (the one in shared/tools/postfix_relay_baseline.sh; loopback only):

    smtp-source -s SESSIONS -m MSGS -l SIZE -f a@example.nhs.uk -t b@sink.test
        │ SMTP                                  │ SMTP
        ▼                                       ▼
    securemail serve (inbound,            Postfix relay (relayhost = the sink,
    sink.test in secure_domains ⇒          smtp_tls_security_level = secure,
    forced TLS; MX from a loopback DNS)    match=mx.sink.test, test CA)
        │ STARTTLS, chain + name mx.sink.test verified against the test CA
        ▼
    sink: Postfix smtpd with STARTTLS (cert for mx.sink.test), smtpd_proxy_filter →
    smtp-sink (discards; no queue file, no fsync on the sink side)

For each relay it prints msgs/s accepted (smtp-source done: every message had its 250,
which both give only after fsync), msgs/s delivered (every message logged as sent),
p50/p99 accept→delivered latency (Postfix's ``delay=``, securemail's ``delay=``), and
securemail ÷ Postfix ratios. Cross-checks: the sink's count of accepted messages, and
no deferred/bounced/unverified deliveries on either relay.

For securemail it also prints the CPU its processes used per message (``/proc``: the
serve process and its children, accept and delivery together). ``--stages`` samples them
with py-spy during the securemail runs and prints that CPU split by stage (SMTP and
DATA, headers, scan, policy, …; ``stage_profile.py`` says how), and what the sampling
cost; ``--verbose`` adds the frames behind each stage.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.dnsserver import DnsServer  # noqa: E402
from harness.pki import TestPKI  # noqa: E402
from harness.postfix import PostfixInstance, free_port  # noqa: E402
from stage_profile import Profile, Sampler, find_py_spy, report, tree_cpu  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
SENDER, RCPT = "a@example.nhs.uk", "b@sink.test"


def wait(predicate, timeout: float, what: str) -> float:
    """Poll every 20 ms until predicate() is true; return the time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.02)
    sys.exit(f"timeout after {timeout}s waiting for {what}")


def count(path: Path, pattern: str) -> int:
    try:
        return len(re.findall(pattern, path.read_text(errors="replace")))
    except FileNotFoundError:
        return 0


def delays(path: Path, pattern: str, skip: int) -> list[float]:
    found = re.findall(pattern, path.read_text(errors="replace"))
    return [float(d) for d in found[skip:]]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Sink:
    """TLS-terminating Postfix smtpd in front of smtp-sink."""

    def __init__(self, base: Path, pki: TestPKI) -> None:
        cert, key = pki.server_cert("mx.sink.test")
        chain = base / "sink-chain.pem"
        chain.write_bytes(key.read_bytes() + cert.read_bytes())
        chain.chmod(0o600)
        self.sink_port = free_port()
        self.postfix = PostfixInstance(
            base,
            "sink",
            myhostname="mx.sink.test",
            main_cf={
                "smtpd_tls_security_level": "may",
                "smtpd_tls_chain_files": str(chain),
                "smtpd_tls_loglevel": "1",
                "smtpd_proxy_filter": f"127.0.0.1:{self.sink_port}",
                "smtpd_proxy_ehlo": "mx.sink.test",
                "smtpd_proxy_timeout": "60s",
                "smtpd_client_connection_count_limit": "0",
                "smtpd_client_connection_rate_limit": "0",
            },
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.start_sink()
        self.postfix.start()

    def start_sink(self, dump: Path | None = None) -> None:
        """smtp-sink discards mail; with ``dump`` it appends every message to that file."""
        self.stop_sink()
        extra = ["-D", str(dump)] if dump else []
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", "-c", *extra, f"127.0.0.1:{self.sink_port}", "256"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait(lambda: _listening(self.sink_port), 10, "smtp-sink to listen")

    def stop_sink(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def accepted(self) -> int:
        return count(self.postfix.maillog, r"proxy-accept: END-OF-MESSAGE")

    def stop(self) -> None:
        self.postfix.stop()
        self.stop_sink()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class OpenDkim:
    """OpenDKIM as a signing milter for the Postfix relay (as in the baseline script)."""

    def __init__(self, base: Path, pem: bytes) -> None:
        self.dir = base / "opendkim"
        self.dir.mkdir()
        self.port = free_port()
        key = self.dir / "s1.private"
        key.write_bytes(pem)
        shutil.chown(self.dir, "opendkim", "opendkim")
        shutil.chown(key, "opendkim", "opendkim")
        self.dir.chmod(0o700)
        key.chmod(0o600)
        self.conf = self.dir / "opendkim.conf"
        self.conf.write_text(
            "Syslog no\nBackground no\nMode s\nDomain example.nhs.uk\nSelector s1\n"
            f"KeyFile {key}\nSocket inet:{self.port}@127.0.0.1\nUserID opendkim:opendkim\n"
            "Canonicalization relaxed/relaxed\nSignatureAlgorithm rsa-sha256\n"
            "InternalHosts 127.0.0.0/8\nRequireSafeKeys no\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["opendkim", "-x", str(self.conf), "-f"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait(lambda: _listening(self.port), 10, "opendkim to listen")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def smoke_dkim(sink: Sink, ports: dict[str, int], resolver_ns: str, base: Path) -> None:
    """One message through each relay into a dumping smtp-sink; both must carry a DKIM
    signature by example.nhs.uk that verifies (with securemail's verifier, from DNS)."""
    import asyncio
    import smtplib

    from securemail.dns import Resolver
    from securemail.mech.dkim import verify_dkim
    from securemail.mech.results import Result

    dump_dir = base / "smoke"  # smtp-sink (as nobody) creates the dump file itself
    dump_dir.mkdir()
    shutil.chown(dump_dir, "nobody")
    dump = dump_dir / "msgs"
    sink.start_sink(dump)
    for name, port in ports.items():
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail(
                SENDER,
                [RCPT],
                f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: smoke {name}\r\n\r\nbody\r\n".encode(),
            )
    wait(
        lambda: dump.exists() and dump.read_bytes().count(b"Subject: smoke") >= 2,
        60,
        "smoke messages at the sink",
    )
    time.sleep(0.3)
    sink.start_sink()
    messages = [b"X-Client-Addr:" + m for m in dump.read_bytes().split(b"X-Client-Addr:")[1:]]
    resolver = Resolver([resolver_ns], timeout=2)
    for message in messages:
        data = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        verdicts = asyncio.run(verify_dkim(data, resolver))
        subject = re.search(rb"Subject: (smoke \w+)", data)
        ok = [v for v in verdicts if v.result is Result.PASS and v.domain == "example.nhs.uk"]
        if not ok:
            sys.exit(f"smoke: {subject and subject.group(1)!r} not DKIM-signed: {verdicts}")
        print(
            f"smoke: {subject.group(1).decode() if subject else '?'} DKIM-signed, verifies",
            flush=True,
        )


def source(port: int, msgs: int, sessions: int, size: int, log: Path) -> None:
    with log.open("wb") as out:
        subprocess.run(
            [SMTP_SOURCE, "-s", str(sessions), "-m", str(msgs), "-l", str(size),
             "-f", SENDER, "-t", RCPT, "-M", "client.bench.test", f"127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, check=True, timeout=600,
        )  # fmt: skip


def run_postfix(relay: PostfixInstance, args: argparse.Namespace, log: Path) -> dict:
    before = count(relay.maillog, r"status=sent")
    t0 = time.monotonic()
    source(relay.port, args.msgs, args.sessions, args.size, log)
    t1 = time.monotonic()
    t2 = wait(
        lambda: (
            relay.queue_count() == 0 and count(relay.maillog, r"status=sent") - before >= args.msgs
        ),
        600,
        "Postfix to deliver everything",
    )
    time.sleep(0.3)
    bad = count(relay.maillog, r"Untrusted TLS|Anonymous TLS|status=(deferred|bounced)")
    return {
        "accepted": args.msgs / (t1 - t0),
        "delivered": args.msgs / (t2 - t0),
        "bad": bad,
    }


class Gateway:
    """One ``securemail serve`` of the bench, with its own directory, port and spool."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    @classmethod
    def start(
        cls, directory: Path, workers: int, cert: Path, key: Path, ca_file: Path,
        nameserver: str, sink_port: int, dkim_toml: str,
    ) -> Gateway:  # fmt: skip
        directory.mkdir()
        port = free_port()
        config = directory / "securemail.toml"
        config.write_text(
            f"""
[organisation]
domains = ["example.nhs.uk"]
hostname = "relay.example.nhs.uk"
[listen]
inbound = "127.0.0.1:{port}"
submission = "127.0.0.1:0"
workers = {workers}
[tls]
cert = "{cert}"
key = "{key}"
ca_file = "{ca_file}"
[dns]
nameservers = ["{nameserver}"]
[spool]
url = "sqlite:///spool.db"
[relay]
networks = ["127.0.0.0/8"]
[delivery]
port = {sink_port}
[policy]
secure_domains = ["sink.test"]
{dkim_toml}"""
        )
        log = directory / "gateway.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "securemail.cli", "serve", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=directory,  # its own var/ (pid file) beside its config
            )
        wait(lambda: count(log, r"ready: inbound") > 0, 60, "securemail to start")
        return cls(proc, port, log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msgs", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument(
        "--postfix-reuse",
        action="store_true",
        help="give Postfix TLS connection reuse too (smtp_tls_connection_reuse = yes)",
    )
    parser.add_argument(
        "--dkim",
        action="store_true",
        help="both relays DKIM-sign (securemail natively, Postfix through the OpenDKIM milter)",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="sample securemail with py-spy and print its CPU per message by stage",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="with --stages: the frames behind each stage"
    )
    parser.add_argument(
        "--workers",
        default="0",
        help="[listen] workers for securemail; a list (1,2) runs one gateway per value, "
        "each against the same Postfix in the same run (default 0: one per CPU core)",
    )
    args = parser.parse_args()
    try:
        counts = [int(n) for n in args.workers.split(",")]
    except ValueError:
        sys.exit(f"--workers {args.workers!r}: expected numbers like 1,2")
    py_spy = find_py_spy() if args.stages else None
    if args.stages and py_spy is None:
        print("--stages: py-spy is not installed (pip install py-spy): no per-stage table")
    if os.geteuid() != 0:
        sys.exit(
            "run as root (Postfix instances need it): sudo .venv/bin/python bench/relay_bench.py"
        )
    tools = [SMTP_SOURCE, SMTP_SINK, "/usr/sbin/postfix"] + (
        ["/usr/sbin/opendkim"] if args.dkim else []
    )
    for tool in tools:
        if not Path(tool).exists():
            sys.exit(f"{tool} missing: run 'make bench' (it installs postfix)")

    base = Path(tempfile.mkdtemp(prefix="sm-bench-", dir="/tmp"))
    base.chmod(0o755)
    pki = TestPKI()
    sink = Sink(base, pki)
    dns = DnsServer(
        {"sink.test": {"MX": ["10 mx.sink.test."]}, "mx.sink.test": {"A": ["127.0.0.1"]}}
    )
    milter: OpenDkim | None = None
    dkim_toml = ""
    if args.dkim:
        from securemail.mech.dkim import generate_key, write_key

        pem, record = generate_key("rsa", 2048)  # the same key for both relays
        dns.add("s1._domainkey.example.nhs.uk", "TXT", record)
        milter = OpenDkim(base, pem)
        write_key(base / "securemail-dkim", "example.nhs.uk", "s1", pem)
        dkim_toml = f'[dkim]\nkey_dir = "{base / "securemail-dkim"}"\nselector = "s1"\n'
    milter_cf = (
        {
            "smtpd_milters": f"inet:127.0.0.1:{milter.port}",
            "non_smtpd_milters": "$smtpd_milters",
            "milter_default_action": "tempfail",
            "milter_protocol": "6",
        }
        if milter
        else {}
    )
    relay = PostfixInstance(
        base,
        "relay",
        myhostname="relay.bench.test",
        main_cf={
            "relayhost": sink.postfix.address,
            "smtp_tls_security_level": "secure",
            "smtp_tls_policy_maps": f"texthash:{base}/relay/etc/tls_policy",
            "smtp_tls_CAfile": str(pki.ca_file),
            "smtp_tls_loglevel": "1",
            "smtp_tls_session_cache_database": "btree:${data_directory}/smtp_scache",
            "smtp_tls_connection_reuse": "yes" if args.postfix_reuse else "no",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            **milter_cf,
        },
    )
    (base / "relay" / "etc").mkdir(parents=True, exist_ok=True)
    (base / "relay" / "etc" / "tls_policy").write_text(
        f"{sink.postfix.address} secure match=mx.sink.test\n"
    )
    gateways: dict[str, Gateway] = {}
    results: dict[str, list[dict[str, float]]] = {"postfix": []}
    profiles: list[Profile] = []
    try:
        dns.start()
        sink.start()
        if milter:
            milter.start()
        relay.start()
        cert, key = pki.server_cert("relay.example.nhs.uk")
        for n in counts:
            name = "securemail" if len(counts) == 1 else f"securemail/w{n}"
            gateways[name] = Gateway.start(
                base / name.replace("/", "-"), n, cert, key, pki.ca_file, dns.nameserver,
                sink.postfix.port, dkim_toml,
            )  # fmt: skip
            results[name] = []
        if args.dkim:
            ports = {name: gw.port for name, gw in gateways.items()}
            smoke_dkim(sink, {**ports, "postfix": relay.port}, dns.nameserver, base)
        print(
            f"load: smtp-source -s {args.sessions} -m {args.msgs} -l {args.size}; "
            f"forced verified TLS to mx.sink.test; DKIM signing {'on' if args.dkim else 'off'}; "
            f"Postfix TLS connection reuse "
            f"{'on' if args.postfix_reuse else 'off'}; securemail [listen] workers "
            f"{args.workers} (0: one per core); {args.runs} runs each, alternating",
            flush=True,
        )
        for run in range(1, args.runs + 1):
            for name in [*gateways, "postfix"]:
                sink_before = sink.accepted()
                log = base / f"source-{name.replace('/', '-')}-{run}.log"
                if name == "postfix":
                    r = run_postfix(relay, args, log)
                    lat = delays(relay.maillog, r"delay=([\d.]+),[^\n]*status=sent", 0)
                    r["lat"] = lat[-args.msgs :]
                else:
                    gw = gateways[name]
                    before = count(gw.log, r"result=sent")
                    sampler = None
                    if py_spy is not None:
                        try:
                            raw = base / f"stages-{name.replace('/', '-')}-{run}.raw"
                            sampler = Sampler(py_spy, gw.proc.pid, raw)
                        except RuntimeError as exc:
                            print(f"--stages: {exc}; run {run} not sampled", flush=True)
                    cpu0 = tree_cpu(gw.proc.pid)
                    t0 = time.monotonic()
                    source(gw.port, args.msgs, args.sessions, args.size, log)
                    t1 = time.monotonic()
                    t2 = wait(
                        lambda before=before, gw=gw: (
                            count(gw.log, r"result=sent") - before >= args.msgs
                        ),
                        600,
                        "securemail to deliver everything",
                    )
                    cpu = tree_cpu(gw.proc.pid) - cpu0
                    if sampler is not None:
                        profiles.append(sampler.stop())
                    lat = delays(gw.log, r"delay=([\d.]+) result=sent", before)
                    r = {
                        "accepted": args.msgs / (t1 - t0),
                        "delivered": args.msgs / (t2 - t0),
                        "lat": lat,
                        "bad": count(gw.log, r"result=(deferred|bounced)|\(unverified\)"),
                        "cpu": cpu,
                    }
                time.sleep(0.5)
                r["sink"] = sink.accepted() - sink_before
                results[name].append(r)
                p50, p99 = percentile(r["lat"], 50), percentile(r["lat"], 99)
                cpu_note = f"  cpu {r['cpu'] * 1000 / args.msgs:.2f} ms/msg" if "cpu" in r else ""
                print(
                    f"{name:10} run {run}: accepted {r['accepted']:7.1f} msg/s  delivered "
                    f"{r['delivered']:7.1f} msg/s  latency p50 {p50 * 1000:6.0f} ms  p99 "
                    f"{p99 * 1000:6.0f} ms  [sink got {r['sink']}, deferred/bounced/"
                    f"unverified {r['bad']}]{cpu_note}",
                    flush=True,
                )
        pf = results["postfix"]

        def mean(rows: list[dict[str, float]], key: str) -> float:
            return statistics.mean(row[key] for row in rows)

        pf_lat = [x for row in pf for x in row["lat"]]
        for name in gateways:
            sm = results[name]
            print()
            for key in ("delivered", "accepted"):
                a, b = mean(sm, key), mean(pf, key)
                print(f"mean {key}: {name} {a:.1f} msg/s, Postfix {b:.1f} msg/s, ratio {a / b:.2f}")
            sm_lat = [x for row in sm for x in row["lat"]]
            print(
                f"latency p50/p99: {name} {percentile(sm_lat, 50) * 1000:.0f}/"
                f"{percentile(sm_lat, 99) * 1000:.0f} ms, Postfix "
                f"{percentile(pf_lat, 50) * 1000:.0f}/{percentile(pf_lat, 99) * 1000:.0f} ms "
                f"(p99 ratio {percentile(sm_lat, 99) / percentile(pf_lat, 99):.2f}); CPU "
                f"{mean(sm, 'cpu') * 1000 / args.msgs:.2f} ms/msg"
            )
        if profiles:
            sampled_cpu = sum(row["cpu"] for name in gateways for row in results[name])
            print()
            print("\n".join(report(profiles, sampled_cpu, args.msgs * len(profiles),
                                   verbose=args.verbose)))  # fmt: skip
    finally:
        for gw in gateways.values():
            gw.proc.terminate()
            gw.proc.wait(30)
        relay.stop()
        if milter:
            milter.stop()
        sink.stop()
        dns.stop()
        pki.close()


if __name__ == "__main__":
    main()
