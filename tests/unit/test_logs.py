"""server.logs: JSON lines (one object per record, with exceptions and extra fields) and plain text."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from server.logs import PLAIN_FORMAT, JsonFormatter, configure_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    """Leave the root logger as the test found it (level and handlers)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def _lines(buf: io.StringIO) -> list[str]:
    return [line for line in buf.getvalue().splitlines() if line]


def test_json_lines_carry_time_level_logger_message_and_extra_fields(restore_root: None) -> None:
    buf = io.StringIO()
    configure_logging("info", json=True, stream=buf)
    logging.getLogger("portrait.test").info("flushed %d rows", 12, extra={"rows": 12, "queue": "online",
                                                                          "path": object()})
    logging.getLogger("portrait.test").debug("below the level")
    lines = _lines(buf)
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["level"] == "INFO" and rec["logger"] == "portrait.test" and rec["message"] == "flushed 12 rows"
    assert rec["rows"] == 12 and rec["queue"] == "online"
    assert rec["path"].startswith("<object object at")  # not JSON-serializable: written as str()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["ts"])
    assert "exc_info" not in rec and "args" not in rec and "msg" not in rec and "levelno" not in rec


def test_json_timestamp_is_the_record_time_in_utc() -> None:
    created = datetime(2026, 3, 1, 23, 59, 59, 250_000, tzinfo=UTC).timestamp()
    record = logging.makeLogRecord({"name": "n", "levelname": "INFO", "msg": "m", "created": created})
    assert json.loads(JsonFormatter().format(record))["ts"] == "2026-03-01T23:59:59.250Z"


def test_json_lines_include_the_exception_as_a_string(restore_root: None) -> None:
    buf = io.StringIO()
    configure_logging("INFO", json=True, stream=buf)
    try:
        raise ZeroDivisionError("boom\nsecond line")
    except ZeroDivisionError:
        logging.getLogger("portrait").exception("flush failed")
    lines = _lines(buf)
    assert len(lines) == 1  # a multi-line traceback stays on one line
    rec = json.loads(lines[0])
    assert rec["level"] == "ERROR" and rec["message"] == "flush failed"
    assert rec["exc_info"].startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError: boom\nsecond line" in rec["exc_info"]


def test_extra_fields_cannot_overwrite_the_standard_ones(restore_root: None) -> None:
    buf = io.StringIO()
    configure_logging("INFO", json=True, stream=buf)
    logging.getLogger("x").warning("hi", extra={"level": "spoofed", "ts": "never"})
    rec = json.loads(_lines(buf)[0])
    assert rec["level"] == "WARNING" and rec["ts"] != "never"
    assert rec["extra_level"] == "spoofed" and rec["extra_ts"] == "never"


def test_plain_mode_is_the_classic_text_format(restore_root: None) -> None:
    buf = io.StringIO()
    configure_logging("WARNING", json=False, stream=buf)
    logging.getLogger("portrait.app").warning("serving on %s", "127.0.0.1:1")
    logging.getLogger("portrait.app").info("not shown")
    assert PLAIN_FORMAT == "%(asctime)s %(levelname)s %(name)s: %(message)s"
    lines = _lines(buf)
    assert len(lines) == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING portrait\.app: serving on 127\.0\.0\.1:1",
                        lines[0]), lines[0]


def test_reconfiguring_replaces_only_its_own_handler(restore_root: None) -> None:
    root = logging.getLogger()
    other = logging.StreamHandler(io.StringIO())
    root.addHandler(other)
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", json=False, stream=first)
    configure_logging("INFO", json=True, stream=second)
    logging.getLogger("portrait").info("once")
    assert first.getvalue() == ""  # the first handler is gone: no duplicate lines
    assert json.loads(_lines(second)[0])["message"] == "once"
    assert other in root.handlers
    root.removeHandler(other)
