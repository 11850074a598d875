"""``[log] syslog``: the target, the datagrams, and a syslog that is full or gone.

A real Unix datagram socket (and a UDP one) bound by the test receives what the
handler sends; nothing is patched but the clock that paces reopening.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.syslogd import Receiver

from securemail.config import load_config
from securemail.errors import ConfigError
from securemail.gateway.events import log_formatter
from securemail.gateway.logs import REOPEN_EVERY, SyslogHandler, parse_syslog_target


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    rx = Receiver(tmp_path / "log.sock")
    yield rx
    rx.close()


def logger_to(handler: logging.Handler) -> logging.Logger:
    """A logger whose records go to ``handler`` only (the handler's notes propagate)."""
    log = logging.getLogger(f"t.syslog.{id(handler)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def handler_for(target: str, kind: str = "text", **kw: object) -> SyslogHandler:
    handler = SyslogHandler(parse_syslog_target(target), **kw)  # type: ignore[arg-type]
    handler.setFormatter(log_formatter(kind, timestamp=False))
    return handler


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("/dev/log", "/dev/log"),
        ("udp:127.0.0.1:514", ("127.0.0.1", 514)),
        ("udp:[::1]:5514", ("::1", 5514)),
        ("udp:logs.example.nhs.uk:514", ("logs.example.nhs.uk", 514)),
    ],
)
def test_targets(text, target):
    assert parse_syslog_target(text) == target


@pytest.mark.parametrize(
    "text", ["dev/log", "tcp:logs:514", "udp:logs", "udp::514", "udp:logs:0", "udp:h:70000"]
)
def test_bad_targets_are_refused_at_load_with_file_line_and_key(tmp_path, text):
    path = tmp_path / "securemail.toml"
    path.write_text(f'[log]\nsyslog = "{text}"\n')
    with pytest.raises(ConfigError, match=r"securemail\.toml:2: log\.syslog: .*udp:HOST:PORT"):
        load_config(path, environ={})


def test_log_keys(tmp_path):
    path = tmp_path / "securemail.toml"
    path.write_text('[log]\nsyslog = "/dev/log"\nsyslog_facility = "local3"\nstderr = false\n')
    log = load_config(path, environ={}).log
    assert (log.syslog, log.syslog_facility, log.stderr) == ("/dev/log", "local3", False)
    path.write_text('[log]\nsyslog_facility = "email"\n')
    with pytest.raises(ConfigError, match=r":2: log\.syslog_facility: expected a syslog facility"):
        load_config(path, environ={})
    path.write_text("[log]\nstderr = false\n")
    with pytest.raises(ConfigError, match=r":2: log\.stderr: .*would log nowhere"):
        load_config(path, environ={})


def test_each_record_is_one_datagram_with_priority_and_tag(receiver):
    log = logger_to(handler_for(str(receiver.path)))
    log.info("accepted id=%s from=<%s>", "01ABC", "a\r\nforged")
    log.warning("deferred id=01ABC")
    tag = f"securemail[{os.getpid()}]: "
    assert receiver.read() == [
        f"<22>{tag}INFO {log.name}: accepted id=01ABC from=<a\\x0d\\x0aforged>".encode(),
        f"<20>{tag}WARNING {log.name}: deferred id=01ABC".encode(),  # mail.warning
    ]


def test_json_records_and_another_facility(receiver):
    log = logger_to(handler_for(str(receiver.path), "json", facility="local3"))
    log.info("accepted id=%s", "01ABC")
    (datagram,) = receiver.read()
    prefix = f"<158>securemail[{os.getpid()}]: ".encode()  # local3 (19) · 8 + info (6)
    assert datagram.startswith(prefix)
    entry = json.loads(datagram.removeprefix(prefix))
    assert (entry["level"], entry["message"]) == ("INFO", "accepted id=01ABC")


def test_a_syslog_that_stops_reading_never_holds_the_caller(receiver, caplog):
    """A Unix socket's queue is short (net.unix.max_dgram_qlen); a blocking send would
    wait on it for ever, and the event loop with it."""
    caplog.set_level(logging.WARNING, logger="securemail.log")
    log = logger_to(handler_for(str(receiver.path)))
    started = time.monotonic()
    for n in range(5000):
        log.info("record %d", n)
    assert time.monotonic() - started < 5
    notes = [r.getMessage() for r in caplog.records]
    assert notes == [
        f"syslog {receiver.path}: Resource temporarily unavailable; records are not sent "
        "there until it can be reached"
    ]
    queued = receiver.read()
    assert 0 < len(queued) < 5000
    log.info("after")
    assert receiver.read()[-1].endswith(b": after")
    lost = re.fullmatch(r".* is reachable again; (\d+) records were not sent", caplog.messages[-1])
    assert lost and int(lost[1]) == 5000 - len(queued)


def test_a_syslog_that_goes_away_and_comes_back(receiver, caplog):
    caplog.set_level(logging.WARNING, logger="securemail.log")
    clock = Clock()
    log = logger_to(handler_for(str(receiver.path), clock=clock))
    log.info("one")
    assert len(receiver.read()) == 1
    receiver.close()  # the daemon stops: closed and unlinked
    log.info("two")  # no exception, nothing blocks
    log.info("three")
    assert caplog.messages == [
        f"syslog {receiver.path}: Connection refused; records are not sent there until it "
        "can be reached"
    ]
    back = Receiver(receiver.path)  # restarted, at the same path
    try:
        log.info("four")  # too soon to reopen: dropped, no second note
        clock.now += REOPEN_EVERY
        log.info("five")
        assert back.read() == [f"<22>securemail[{os.getpid()}]: INFO {log.name}: five".encode()]
    finally:
        back.close()
    assert caplog.messages[1:] == [
        f"syslog {receiver.path} is reachable again; 3 records were not sent"
    ]


def test_a_udp_collector():
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(2)
    try:
        port = collector.getsockname()[1]
        log = logger_to(handler_for(f"udp:127.0.0.1:{port}"))
        log.info("accepted id=01ABC")
        assert collector.recv(65536).startswith(b"<22>securemail[")
    finally:
        collector.close()
