"""bench/stage_profile.py: py-spy's raw stacks to one stage per sample, and the CPU time
of a process tree. The stacks are written by hand in py-spy's format (``--full-filenames
--threads``), with the paths a real profile of the gateway has."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
_spec = importlib.util.spec_from_file_location("stage_profile", BENCH / "stage_profile.py")
assert _spec is not None and _spec.loader is not None
sp = importlib.util.module_from_spec(_spec)
sys.modules["stage_profile"] = sp  # dataclasses look their module up
_spec.loader.exec_module(sp)

SM = "/work/tree/securemail"
SITE = "/venv/lib/python3.11/site-packages"
LIB = "/usr/lib/python3.11"
PROCESS = 'process 4242:"/venv/bin/python -m securemail.cli serve --config /tmp/s.toml"'
MAIN = "thread (4242): MainThread"
WRITER = "thread (4250): securemail-spool-writer"
ROOT = [
    f"serve ({SM}/cli/serve.py:120)",
    f"run_async ({SM}/cli/common.py:186)",
    f"Runner.run ({LIB}/asyncio/runners.py:118)",
]
DATA = [
    *ROOT,
    f"GatewaySMTP._handle_client ({SM}/gateway/inbound/server.py:182)",
    f"SMTP._handle_client ({SITE}/aiosmtpd/smtp.py:756)",
    f"GatewaySMTP.smtp_DATA ({SM}/gateway/inbound/server.py:432)",
    f"SMTP._call_handler_hook ({SITE}/aiosmtpd/smtp.py:470)",
    f"GatewayHandler.handle_DATA ({SM}/gateway/inbound/server.py:540)",
    f"AcceptPipeline.accept ({SM}/gateway/inbound/accept.py:190)",
]
DELIVER = [
    *ROOT,
    f"QueueManager._deliver ({SM}/gateway/queue/manager.py:270)",
    f"Deliverer._send_all ({SM}/gateway/outbound/deliver.py:269)",
    f"SmtpConnection._write ({SM}/gateway/outbound/client.py:324)",
]
THREAD = [
    f"Thread._bootstrap ({LIB}/threading.py:1002)",
    f"Thread.run ({LIB}/threading.py:982)",
    f"SqliteSpool._run ({SM}/gateway/spool/sqlite.py:262)",
    f"SqliteSpool._serve ({SM}/gateway/spool/sqlite.py:298)",
    f"SqliteSpool._execute ({SM}/gateway/spool/sqlite.py:315)",
]


def stage(*frames: str) -> str:
    [(parsed, count)] = list(sp.read_raw(";".join([PROCESS, MAIN, *frames]) + " 1"))
    assert count == 1
    return sp.attribute(parsed)


def test_read_raw_drops_process_and_thread_entries_and_joins_a_split_command_line() -> None:
    raw = (
        f"{PROCESS};{MAIN};{ROOT[0]} 7\n"
        f'{PROCESS};process 4300:"/venv/bin/python -c import time\n'
        f'while True: pass";thread (4300);<module> (<string>:2) 3\n'
        f"{PROCESS};{MAIN} 2\n"
    )
    assert list(sp.read_raw(raw)) == [
        ((sp.Frame("serve", f"{SM}/cli/serve.py", 120),), 7),
        ((sp.Frame("<module>", "<string>", 2),), 3),
        ((), 2),
    ]


def test_a_stage_called_inside_another_keeps_its_own_cost() -> None:
    scan = [f"AcceptPipeline._scan ({SM}/gateway/inbound/accept.py:388)",
            f"scan_message ({SM}/core/sensitivity.py:281)"]  # fmt: skip
    assert stage(*DATA, *scan, f"_sparse_matches ({SM}/core/sensitivity.py:250)") == sp.SCAN
    # the scan reads headers with the one header reader: still the scan's cost
    assert stage(*DATA, *scan, f"read_headers ({SM}/core/message.py:150)") == sp.SCAN
    assert stage(*DATA, f"read_headers ({SM}/core/message.py:150)") == sp.HEADERS
    # DKIM signing finds the From domain with DMARC's reader: signing, not inbound auth
    sign = f"AcceptPipeline._dkim_sign ({SM}/gateway/inbound/accept.py:370)"
    dmarc = f"header_from_domain ({SM}/mech/dmarc.py:120)"
    assert stage(*DATA, sign, dmarc) == sp.DKIM_SIGN
    assert stage(*DATA, f"_authenticate ({SM}/gateway/inbound/auth.py:90)", dmarc) == sp.AUTH


def test_specific_functions_win_over_their_module() -> None:
    received = f"received_header ({SM}/gateway/inbound/server.py:585)"
    assert stage(*DATA, received, f"formatdate ({LIB}/email/utils.py:160)") == sp.RECEIVED
    strip = f"strip_own_headers ({SM}/gateway/inbound/auth.py:191)"
    assert stage(*DATA, strip) == sp.HEADERS
    assert stage(*DATA, f"replace ({LIB}/dataclasses.py:1501)") == sp.POLICY
    assert stage(*DATA, f"Gateway.classify ({SM}/gateway/app.py:150)") == sp.POLICY


def test_the_innermost_container_decides_when_there_is_no_leaf() -> None:
    write = f"StreamWriter.write ({LIB}/asyncio/streams.py:343)"
    assert stage(*DATA[:6], f"SMTP.push ({SITE}/aiosmtpd/smtp.py:597)", write) == sp.SMTP
    assert stage(*DELIVER, write, f"SSLObject.write ({LIB}/ssl.py:930)") == sp.DELIVERY
    lines = f"DataReader._lines ({SM}/gateway/inbound/data.py:127)"
    assert stage(*DATA[:6], lines) == sp.SMTP


def test_the_spool_writer_thread_is_split_between_commit_and_delivery() -> None:
    assert stage(*THREAD) == sp.SPOOL  # the COMMIT of a batch
    assert stage(*THREAD, f"_store ({SM}/gateway/spool/sqlite.py:444)") == sp.SPOOL
    record = f"_record ({SM}/gateway/spool/sqlite.py:510)"
    final = f"remove_if_final ({SM}/gateway/spool/schema.py:166)"
    assert stage(*THREAD, record, final) == sp.DELIVERY
    assert stage(*THREAD[:2], f"SqliteSpool._run ({SM}/gateway/spool/sqlite.py:262)") == sp.SPOOL
    claim = f"SqliteSpool.claim_due ({SM}/gateway/spool/sqlite.py:157)"
    call = f"SqliteSpool._call ({SM}/gateway/spool/sqlite.py:256)"
    assert stage(*ROOT, f"QueueManager._fill ({SM}/gateway/queue/manager.py:200)", claim,
                 call) == sp.DELIVERY  # fmt: skip
    store = f"SqliteSpool.store ({SM}/gateway/spool/sqlite.py:154)"
    assert stage(*DATA, store, call) == sp.SPOOL


def test_logging_is_charged_to_logging_wherever_it_is_called() -> None:
    emit = f"LogSink.emit ({SM}/gateway/events.py:586)"
    handler = f"StreamHandler.emit ({LIB}/logging/__init__.py:1113)"
    assert stage(*DATA, emit, handler) == sp.LOGGING
    assert stage(*DELIVER, emit) == sp.LOGGING
    debug = f"Logger.debug ({LIB}/logging/__init__.py:1465)"
    assert stage(*DATA[:6], debug) == sp.LOGGING


def test_loop_frames_decide_only_alone_and_the_rest_is_other() -> None:
    assert stage(*ROOT) == sp.LOOP
    assert stage(*ROOT, f"SSLObject.do_handshake ({LIB}/ssl.py:979)") == sp.LOOP
    assert stage() == sp.NO_FRAME
    assert stage(f"<module> ({SM}/cli/__main__.py:4)", f"main ({SM}/cli/__init__.py:90)") == (
        sp.OTHER
    )


def test_the_table_splits_the_measured_cpu_by_sample_share() -> None:
    raw = "\n".join([
        ";".join([PROCESS, MAIN, *DATA[:6], f"SMTP.push ({SITE}/aiosmtpd/smtp.py:597)"]) + " 30",
        ";".join([PROCESS, MAIN, *DATA, f"_scan ({SM}/gateway/inbound/accept.py:388)"]) + " 10",
        ";".join([PROCESS, WRITER, *THREAD]) + " 60",
    ])  # fmt: skip
    tally = sp.tally(raw)
    assert tally.total == 100
    assert tally.samples == {sp.SMTP: 30, sp.SCAN: 10, sp.SPOOL: 60}
    lines = sp.table(tally, cpu_seconds=2.0, messages=1000)  # 2 ms per message
    rows = {line[:22].strip(): line[22:].split() for line in lines[1:]}
    assert rows[sp.SMTP] == ["0.600", "30.0%"]
    assert rows[sp.SCAN] == ["0.200", "10.0%"]
    assert rows[sp.SPOOL] == ["1.200", "60.0%"]
    assert rows[sp.HEADERS] == ["0.000", "0.0%"]
    assert rows["total"] == ["2.000", "100.0%"]
    assert sp.OTHER not in rows and sp.NO_FRAME not in rows  # shown only when sampled
    [why] = [line for line in sp.verbose_lines(tally) if "SqliteSpool._execute" in line]
    assert why.split()[0] == "60"


def test_tree_cpu_counts_a_child_that_has_exited_and_been_reaped() -> None:
    before = sp.tree_cpu(os.getpid())
    assert before >= time.process_time() - 0.05
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)  # reaped: our cutime now
    assert sp.tree_cpu(os.getpid()) - before >= 0.25


def test_tree_pids_finds_a_live_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in sp.tree_pids(os.getpid())
    finally:
        child.kill()
        child.wait()
