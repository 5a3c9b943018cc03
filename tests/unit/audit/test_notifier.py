"""The notifier against an in-memory outbox and a fake channel: selection, a store outage, a
failure record that cannot be written (fail closed), and a stop in the middle of a retry wait.
No sockets; the HTTP and SMTP channels are tests/functional/test_notifications.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.common.outbox import MemoryOutbox
from tests.common.polling import wait_until
from zguard.audit import AuditEvent
from zguard.audit.memory import MemoryAuditSink
from zguard.audit.notifications.channels import Undelivered
from zguard.audit.notifications.message import Notice
from zguard.audit.notifications.outbox import FAILED_EVENT, Notifier
from zguard.errors import AuditUnavailable


class Outbox(MemoryOutbox):
    """MemoryOutbox plus the cursor listing a notifier reads at its first start."""

    def cursors(self) -> dict[str, int]:
        with self._changed:
            return dict(self._cursors)


class FakeChannel:
    """Keeps what it is sent; `failures` answers the first calls with these Undelivered."""

    name = "fake"
    target = "fake://receiver"

    def __init__(self, *failures: Undelivered) -> None:
        self.failures = list(failures)
        self.calls: list[int] = []
        self.sent: list[Notice] = []
        self.lock = threading.Lock()

    def send(self, notice: Notice) -> None:
        with self.lock:
            self.calls.append(notice.seq)
            if self.failures:
                raise self.failures.pop(0)
            self.sent.append(notice)


class FlakySink(MemoryAuditSink):
    """An audit sink that refuses its first `down` events, as a trail that lost its database does."""

    def __init__(self, down: int) -> None:
        super().__init__()
        self.down = down

    def emit(self, event: AuditEvent) -> None:
        if self.down:
            self.down -= 1
            raise AuditUnavailable("the audit store is unreachable")
        super().emit(event)


@pytest.fixture
def outbox() -> Outbox:
    box = Outbox()
    box.advance_cursor("notify-fake", 0)  # not a first start: the history counts
    return box


@pytest.fixture
def started() -> Iterator[list[Notifier]]:
    notifiers: list[Notifier] = []
    yield notifiers
    for notifier in notifiers:
        notifier.close()


def start(notifiers: list[Notifier], outbox: Outbox, channel: FakeChannel, audit: MemoryAuditSink) -> Notifier:
    notifier = Notifier(outbox, channel, audit, events=["approval.*"], max_attempts=3, max_backoff_s=0.01)
    notifier.start()
    notifiers.append(notifier)
    return notifier


def test_only_selected_events_are_sent_and_the_cursor_passes_the_rest(outbox: Outbox, started: list[Notifier]) -> None:
    for kind in ("http.request", "approval.requested", "generation.completed", "approval.granted", "auth.denied"):
        outbox.append(type=kind)
    channel = FakeChannel()
    start(started, outbox, channel, MemoryAuditSink())
    wait_until(lambda: outbox.cursor("notify-fake") == 5, timeout=10, what="the cursor past every event")
    assert [n.type for n in channel.sent] == ["approval.requested", "approval.granted"]


def test_a_store_outage_pauses_and_loses_nothing(outbox: Outbox, started: list[Notifier]) -> None:
    outages = [OSError("database gone")] * 3
    outbox.fail_reads = lambda: outages.pop() if outages else None
    outbox.append(type="approval.requested")
    channel = FakeChannel()
    notifier = start(started, outbox, channel, MemoryAuditSink())
    wait_until(lambda: len(channel.sent) == 1, timeout=10, what="the event once the store is back")
    outbox.append(type="approval.granted")
    wait_until(lambda: len(channel.sent) == 2, timeout=10, what="the next event")
    assert channel.calls == [1, 2]
    assert notifier.status().last_error is None


def test_a_failure_that_cannot_be_recorded_is_tried_again_not_passed_over(
    outbox: Outbox, started: list[Notifier]
) -> None:
    outbox.append(type="approval.requested")
    outbox.append(type="approval.granted")
    final = Undelivered("fake://receiver: HTTP 400", retry=False)
    channel = FakeChannel(final, final)  # the first event is refused twice
    audit = FlakySink(down=1)  # and the first failure record cannot be written
    start(started, outbox, channel, audit)
    wait_until(lambda: len(channel.sent) == 1, timeout=10, what="the second event")
    assert channel.calls == [1, 1, 2]  # event 1 again after its record failed, then event 2
    (failed,) = audit.events
    assert failed.type == FAILED_EVENT
    assert (failed.detail["event_seq"], failed.detail["attempts"], failed.detail["reason"]) == (
        1,
        1,
        "fake://receiver: HTTP 400",
    )


def test_a_stop_during_a_retry_wait_keeps_the_event_for_the_next_start(outbox: Outbox, started: list[Notifier]) -> None:
    outbox.append(type="approval.requested")
    channel = FakeChannel(Undelivered("down", retry=True))
    notifier = Notifier(outbox, channel, MemoryAuditSink(), events=["approval.*"], max_attempts=5, max_backoff_s=60)
    notifier.start()
    wait_until(lambda: channel.calls == [1], timeout=10, what="the first try")
    notifier.close(timeout=5)  # cuts the (up to 60 s) wait short
    assert outbox.cursor("notify-fake") == 0
    assert channel.sent == []
    again = start(started, outbox, channel, MemoryAuditSink())
    wait_until(lambda: len(channel.sent) == 1, timeout=10, what="the event after the restart")
    assert again.status().cursor == 1
