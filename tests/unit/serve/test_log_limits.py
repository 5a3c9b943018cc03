"""The repeated-log filter: a flood of one message is cut to a burst and a count."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from zguard.serve.log_limits import RepeatedLogFilter, limit_repeated_logs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def flood() -> Iterator[tuple[logging.Logger, Lines, Clock]]:
    clock = Clock()
    lines = Lines()
    lines.addFilter(RepeatedLogFilter(burst=3, interval_s=60, clock=clock))
    logger = logging.getLogger("tests.flood")
    logger.propagate = False
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    yield logger, lines, clock
    logger.removeHandler(lines)
    logger.propagate = True


def test_a_flood_of_one_template_is_cut_to_the_burst(flood: tuple[logging.Logger, Lines, Clock]) -> None:
    logger, lines, clock = flood
    for n in range(1000):
        logger.warning("accept failed on socket %d", n)
    assert lines.lines == [
        "accept failed on socket 0",
        "accept failed on socket 1",
        "accept failed on socket 2 [similar messages are suppressed for up to 60 s]",
    ]
    logger.warning("something else")  # another template is not held back
    assert lines.lines[-1] == "something else"
    clock.now += 61
    logger.warning("accept failed on socket %d", 1000)
    # The count comes once: on the template's next line, not also as a line of its own.
    assert lines.lines[4:] == ["accept failed on socket 1000 [997 similar messages were suppressed before this one]"]


def test_the_count_is_reported_when_another_message_comes_after_the_interval(
    flood: tuple[logging.Logger, Lines, Clock],
) -> None:
    logger, lines, clock = flood
    for _ in range(10):
        logger.error("too many open files")
    clock.now += 61
    logger.info("ready")
    assert lines.lines[-2:] == ["suppressed 7 similar messages in 60 s: too many open files", "ready"]
    clock.now += 61
    logger.info("later")
    assert lines.lines[-1] == "later"  # reported once


def test_levels_and_loggers_are_counted_apart(flood: tuple[logging.Logger, Lines, Clock]) -> None:
    logger, lines, _ = flood
    for _ in range(5):
        logger.info("x")
        logger.warning("x")
    assert len(lines.lines) == 6


def test_the_table_of_templates_is_bounded() -> None:
    clock = Clock()
    limit = RepeatedLogFilter(burst=1, interval_s=60, max_templates=10, clock=clock)
    for n in range(100):
        limit.filter(logging.LogRecord("t", logging.INFO, __file__, 1, f"message {n}", None, None))
    assert len(limit._windows) == 10


def test_limit_repeated_logs_adds_one_filter_per_handler() -> None:
    logger = logging.getLogger("tests.handlers")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        limit_repeated_logs(logger)
        limit_repeated_logs(logger)
        assert sum(isinstance(f, RepeatedLogFilter) for f in handler.filters) == 1
    finally:
        logger.removeHandler(handler)
