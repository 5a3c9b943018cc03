"""The outbox forwarder against a fake collector: at-least-once, a cursor that waits for delivery,
backoff, restart, and close. No sockets: `FakeCollector` stands in for the transport."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from tests.common import polling
from tests.common.outbox import MemoryOutbox
from tests.common.rsyslog import parse_line
from zguard.audit.forwarder import (
    BACKOFF_FIRST_S,
    CURSOR_NAME,
    MAX_UNACKED_BATCHES,
    Forwarder,
    backoff_delay,
)
from zguard.audit.syslog_transport import SyslogUnavailable
from zguard.config import SyslogSettings

SETTINGS = SyslogSettings(transport="tcp", batch_size=500, max_backoff_s=0.05, timeout_s=1.0)


class FakeCollector:
    """Records what it receives. `up=False` refuses sends; `acked=False` leaves bytes in flight;
    `crash(n)` forgets the last n messages it had received and breaks the connection."""

    target = "fake://collector"

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.up = True
        self.acked = True
        self.sends = 0
        self._broken = False
        self._lock = threading.Lock()

    def send(self, messages: Sequence[bytes]) -> None:
        with self._lock:
            self.sends += 1
            if not self.up:
                raise SyslogUnavailable(self.target, "Connection refused (ConnectionRefusedError)")
            self._broken = False
            self.received.extend(messages)

    def delivered(self) -> bool:
        with self._lock:
            if self._broken:
                self._broken = False
                raise SyslogUnavailable(self.target, "closed by the collector")
            return self.acked

    def close(self) -> None:
        pass

    def crash(self, lose_last: int) -> None:
        with self._lock:
            del self.received[len(self.received) - lose_last :]
            self._broken = True

    def ids(self) -> list[str]:
        with self._lock:
            return [parse_line(m.decode()).params["id"] for m in self.received]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    polling.wait_until(condition, timeout=timeout, interval=0.01, what="the forwarder to reach the asserted state")


@pytest.fixture
def outbox() -> MemoryOutbox:
    return MemoryOutbox()


@pytest.fixture
def collector() -> FakeCollector:
    return FakeCollector()


@pytest.fixture
def forwarders() -> Iterator[list[Forwarder]]:
    started: list[Forwarder] = []
    yield started
    for forwarder in started:
        forwarder.close(timeout=0.5)


def start(
    outbox: MemoryOutbox,
    collector: FakeCollector,
    forwarders: list[Forwarder],
    *,
    settle_s: float = 0.02,
    settings: SyslogSettings = SETTINGS,
) -> Forwarder:
    forwarder = Forwarder(outbox, settings, transport=collector, hostname="h", procid=1, settle_s=settle_s)
    forwarders.append(forwarder)
    forwarder.start()
    return forwarder


def test_every_event_is_sent_in_order_and_the_cursor_follows(
    outbox: MemoryOutbox, collector: FakeCollector, forwarders: list[Forwarder]
) -> None:
    events = [outbox.append() for _ in range(1200)]
    forwarder = start(outbox, collector, forwarders)
    wait_until(lambda: outbox.cursor(CURSOR_NAME) == 1200)
    assert collector.ids() == [e.event_id for e in events]
    assert collector.sends == 3  # batches of 500
    status = forwarder.status()
    assert (status.cursor, status.head, status.lag, forwarder.lag()) == (1200, 1200, 0, 0)
    assert status.running
    assert status.last_error is None
    assert status.last_success is not None
    assert status.target == "fake://collector"


def test_the_cursor_waits_until_the_collector_acknowledged_and_the_settle_time_passed(
    outbox: MemoryOutbox, collector: FakeCollector, forwarders: list[Forwarder]
) -> None:
    collector.acked = False
    for _ in range(10):
        outbox.append()
    forwarder = start(outbox, collector, forwarders, settle_s=0.3)
    wait_until(lambda: len(collector.received) == 10)
    time.sleep(0.3)
    assert outbox.cursor(CURSOR_NAME) == 0
    assert forwarder.lag() == 10
    acked_at = time.monotonic()
    collector.acked = True
    wait_until(lambda: outbox.cursor(CURSOR_NAME) == 10)
    assert time.monotonic() - acked_at >= 0.3


def test_an_outage_keeps_the_events_and_delivers_them_when_the_collector_is_back(
    outbox: MemoryOutbox, collector: FakeCollector, forwarders: list[Forwarder]
) -> None:
    collector.up = False
    events = [outbox.append() for _ in range(50)]
    forwarder = start(outbox, collector, forwarders)
    wait_until(lambda: forwarder.status().consecutive_failures >= 3)
    status = forwarder.status()
    assert (
        status.last_error
        == "syslog collector fake://collector unavailable: Connection refused (ConnectionRefusedError)"
    )
    assert status.last_error_time is not None
    assert (status.cursor, status.lag) == (0, 50)
    collector.up = True
    wait_until(lambda: outbox.cursor(CURSOR_NAME) == 50)
    assert set(collector.ids()) == {e.event_id for e in events}
    assert forwarder.status().last_error is None
    assert forwarder.status().consecutive_failures == 0


def test_a_restart_resumes_after_what_was_delivered(
    outbox: MemoryOutbox, collector: FakeCollector, forwarders: list[Forwarder]
) -> None:
    first = [outbox.append() for _ in range(100)]
    assert start(outbox, collector, forwarders).close(timeout=5) is True
    assert outbox.cursor(CURSOR_NAME) == 100
    second = [outbox.append() for _ in range(50)]
    start(outbox, collector, forwarders)
    wait_until(lambda: outbox.cursor(CURSOR_NAME) == 150)
    assert collector.ids() == [e.event_id for e in first + second]  # nothing sent twice


def test_a_collector_that_crashes_soon_after_receiving_gets_the_events_again(
    outbox: MemoryOutbox, collector: FakeCollector, forwarders: list[Forwarder]
) -> None:
    events = [outbox.append() for _ in range(20)]
    start(outbox, collector, forwarders, settle_s=1.0)
    wait_until(lambda: len(collector.received) == 20)
    collector.crash(lose_last=20)  # received, acknowledged, then lost with the collector's memory
    wait_until(lambda: outbox.cursor(CURSOR_NAME) == 20)
    assert collector.ids() == [e.event_id for e in events]


def test_without_a_settle_time_the_same_crash_loses_events(
    outbox: MemoryOutbox, collector: FakeCollector, forwarders: list[Forwarder]
) -> None:
    """Why the settle time exists: acknowledged is not written."""
    for _ in range(20):
        outbox.append()
    start(outbox, collector, forwarders, settle_s=0.0)
    wait_until(lambda: outbox.cursor(CURSOR_NAME) == 20)
    collector.crash(lose_last=20)
    time.sleep(0.2)
    assert collector.ids() == []


def test_no_more_than_the_unacknowledged_window_is_in_flight(
    outbox: MemoryOutbox, collector: FakeCollector, forwarders: list[Forwarder]
) -> None:
    collector.acked = False
    for _ in range(100):
        outbox.append()
    start(outbox, collector, forwarders, settings=SETTINGS.model_copy(update={"batch_size": 1}))
    wait_until(lambda: collector.sends == MAX_UNACKED_BATCHES)
    time.sleep(0.2)
    assert collector.sends == MAX_UNACKED_BATCHES
    collector.acked = True
    wait_until(lambda: outbox.cursor(CURSOR_NAME) == 100)


def test_store_failures_are_reported_and_retried(
    outbox: MemoryOutbox, collector: FakeCollector, forwarders: list[Forwarder]
) -> None:
    outbox.append()
    failures = iter([OSError("disk gone"), OSError("disk gone")])
    outbox.fail_reads = lambda: next(failures, None)
    forwarder = start(outbox, collector, forwarders)
    wait_until(lambda: outbox.cursor(CURSOR_NAME) == 1)
    assert forwarder.status().last_error is None
    assert len(collector.received) == 1


def test_store_failure_text_is_zguards_not_the_exceptions(
    outbox: MemoryOutbox, collector: FakeCollector, forwarders: list[Forwarder]
) -> None:
    outbox.fail_reads = lambda: OSError("password=hunter2 in a connection string")
    forwarder = start(outbox, collector, forwarders)
    wait_until(lambda: forwarder.status().last_error is not None)
    assert forwarder.status().last_error == "forwarding failed (OSError)"


def test_close_gives_up_at_its_timeout_while_the_collector_is_down(
    outbox: MemoryOutbox, collector: FakeCollector, forwarders: list[Forwarder]
) -> None:
    collector.up = False
    outbox.append()
    forwarder = start(outbox, collector, forwarders, settings=SETTINGS.model_copy(update={"max_backoff_s": 30.0}))
    wait_until(lambda: forwarder.status().consecutive_failures >= 1)
    began = time.monotonic()
    assert forwarder.close(timeout=0.3) is False
    assert time.monotonic() - began < 1.5
    assert not forwarder.status().running
    assert outbox.cursor(CURSOR_NAME) == 0


def test_close_delivers_what_was_stored_before_it(
    outbox: MemoryOutbox, collector: FakeCollector, forwarders: list[Forwarder]
) -> None:
    forwarder = start(outbox, collector, forwarders, settle_s=0.1)
    events = [outbox.append() for _ in range(30)]
    assert forwarder.close(timeout=5) is True
    assert outbox.cursor(CURSOR_NAME) == 30
    assert collector.ids() == [e.event_id for e in events]


def test_a_forwarder_starts_once(outbox: MemoryOutbox, collector: FakeCollector, forwarders: list[Forwarder]) -> None:
    forwarder = start(outbox, collector, forwarders)
    with pytest.raises(RuntimeError, match="already started"):
        forwarder.start()


@pytest.mark.parametrize("failures", range(1, 12))
def test_backoff_doubles_with_jitter_up_to_the_maximum(failures: int) -> None:
    ceiling = min(5.0, BACKOFF_FIRST_S * 2 ** (failures - 1))
    for _ in range(50):
        assert ceiling / 2 <= backoff_delay(failures, 5.0) <= ceiling
