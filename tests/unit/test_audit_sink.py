"""The JSON log sink: one line per event, in order, nothing lost on close."""

from __future__ import annotations

import io
import json
import logging

import pytest

from zguard.audit import AuditEvent, LogAuditSink


@pytest.fixture
def logger() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    log = logging.getLogger("test.audit.sink")
    log.handlers = [logging.StreamHandler(stream)]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log, stream


@pytest.mark.parametrize("background", [False, True])
def test_events_written_in_order_and_drained_on_close(
    logger: tuple[logging.Logger, io.StringIO], background: bool
) -> None:
    log, stream = logger
    sink = LogAuditSink(log, background=background)
    for i in range(500):
        sink.emit(AuditEvent(type="access.allowed", outcome="allowed", principal=f"p{i}", detail={"n": i}))
    sink.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["principal"] for line in lines] == [f"p{i}" for i in range(500)]
    assert lines[7]["detail"] == {"n": 7}
    assert lines[0]["type"] == "access.allowed"


def test_nothing_is_formatted_when_info_is_off(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    log.setLevel(logging.WARNING)
    sink = LogAuditSink(log, background=True)
    sink.emit(AuditEvent(type="x", outcome="done"))
    sink.close()
    assert stream.getvalue() == ""


def test_foreground_write_failure_reaches_the_caller(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, _ = logger

    class Boom(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise OSError("disk full")

    log.handlers = [Boom()]
    with pytest.raises(OSError, match="disk full"):
        LogAuditSink(log).emit(AuditEvent(type="user.created", outcome="done"))
