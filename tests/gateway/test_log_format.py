"""The gateway's log formats: ISO 8601 times with an offset, and ``[log] format``."""

from __future__ import annotations

import json
import logging
import re
import sys
import typing
from datetime import datetime
from pathlib import Path

import pytest

from securemail.config import load_config
from securemail.errors import ConfigError
from securemail.gateway import events
from securemail.gateway.events import (
    Accepted,
    Event,
    JsonLineFormatter,
    Lifecycle,
    LogSink,
    OneLineFormatter,
    OperatorDecision,
    RcptDecision,
    SessionAuth,
    log_formatter,
)

ISO_WITH_OFFSET = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    return logging.LogRecord(
        "securemail.gateway", logging.WARNING, __file__, 1, message, args, exc_info
    )


def test_text_lines_carry_an_iso_time_with_offset() -> None:
    rec = record("accepted id=%s", "abc")
    line = log_formatter("text").format(rec)
    assert re.fullmatch(rf"{ISO_WITH_OFFSET} WARNING securemail.gateway: accepted id=abc", line)
    stamp = datetime.fromisoformat(line.split(" ", 1)[0])
    assert stamp.utcoffset() is not None
    assert abs(stamp.timestamp() - rec.created) < 0.001


def test_text_lines_still_escape_controls() -> None:
    line = OneLineFormatter("%(message)s").format(record("auth user=%s", "x\r\nforged"))
    assert line == "auth user=x\\x0d\\x0aforged"


def test_json_lines_are_one_object_each() -> None:
    rec = record("auth user=%s", "x\r\nforged\u2028")
    line = log_formatter("json").format(rec)
    assert "\n" not in line and "\u2028" not in line
    entry = json.loads(line)
    assert set(entry) == {"time", "level", "logger", "message"}
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "securemail.gateway"
    assert entry["message"] == "auth user=x\r\nforged\u2028"
    assert re.fullmatch(ISO_WITH_OFFSET, entry["time"])


def test_json_lines_carry_a_traceback_as_a_field() -> None:
    line = JsonLineFormatter().format(record("failed", exc=True))
    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exception"]


def test_log_section(tmp_path: Path) -> None:
    assert load_config(None, environ={}).log.format == "text"
    path = tmp_path / "securemail.toml"
    path.write_text('[log]\nformat = "json"\n')
    assert load_config(path, environ={}).log.format == "json"
    path.write_text('[log]\nformat = "xml"\n')
    with pytest.raises(ConfigError, match=r"securemail.toml:2: log.format"):
        load_config(path, environ={})


@pytest.mark.parametrize("kind", ["text", "json"])
def test_operator_decision_is_one_line_in_either_format(kind: str) -> None:
    """The spool's history is read back by the gateway: whatever a row holds (a newer
    tool, a hand edit), its line stays one line with its fields where they belong."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.setFormatter(log_formatter(kind))
    handler.emit = lambda rec: lines.append(handler.format(rec))  # type: ignore[method-assign]
    logger = logging.getLogger("securemail.queue")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not .level =: it clears the level cache
    try:
        LogSink().emit(
            OperatorDecision("01M8PCH772DZ9QJB", "", "release", "alice x", "ok\r\nforged", 0.0)
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    [line] = lines
    assert "\n" not in line and "\r" not in line
    message = json.loads(line)["message"] if kind == "json" else line.split(": ", 1)[1]
    assert message == (
        "operator decision queue_id=01M8PCH772DZ9QJB rcpt=* action=release by='alice x' "
        "reason='ok\\r\\nforged' at=1970-01-01T00:00:00Z"
    )


def test_every_kind_of_event_has_a_level_and_a_logger() -> None:
    """``LogSink`` asks ``_route`` before it formats: a kind of event without one would
    raise where it is emitted (the SMTP session, the queue), not just lose a line."""
    by_content = {SessionAuth, Lifecycle}  # their level depends on what happened
    assert {kind for kind in typing.get_args(Event) if kind not in events._ROUTES} == by_content
    assert events._route(SessionAuth("u", "192.0.2.1", "ok")) == (logging.INFO, "securemail.smtp")
    assert events._route(SessionAuth("u", "192.0.2.1", "failed"))[0] == logging.WARNING
    assert events._route(Lifecycle("stopping", warning=True)) == (
        logging.WARNING,
        "securemail.gateway",
    )


def test_an_event_its_logger_would_drop_is_not_formatted(monkeypatch) -> None:
    """Logging costs nothing when the level is off: not even the line's arguments."""
    formatted: list[object] = []
    line = events._line
    monkeypatch.setattr(events, "_line", lambda event: formatted.append(event) or line(event))
    accepted = Accepted("01M8PCH772DZ9QJB", "a@example.nhs.uk", 1, 0, 10240, "192.0.2.1", "",
                        "", False, (RcptDecision("b@nhs.net", "deliver", "required"),))  # fmt: skip
    logger = logging.getLogger("securemail.gateway")
    old_level = logger.level
    try:
        logger.setLevel(logging.WARNING)
        LogSink().emit(accepted)
        assert formatted == []
        logger.setLevel(logging.INFO)
        LogSink().emit(accepted)
        assert formatted == [accepted]
    finally:
        logger.setLevel(old_level)
