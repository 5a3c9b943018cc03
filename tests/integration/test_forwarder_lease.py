"""Exactly one syslog forwarder active among replicas on one PostgreSQL store: a lease in the
state database; when its holder dies another takes over from the durable cursor, with no event
lost and duplicates only within the at-least-once window.

Two `Forwarder` instances, each on its own engine and `Lease`, are two replicas; a recording
transport stands in for the collector (the wire is tests/integration/test_syslog_rsyslog.py's).
Marked `integration`: skips when PostgreSQL is unreachable, fails under CI=true.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.common.audit import append_events, audit_store
from tests.common.databases import postgres_schema_url
from tests.common.polling import wait_until
from tests.common.rsyslog import parse_line
from zguard.audit.forwarder import CURSOR_NAME, Forwarder
from zguard.audit.store import AuditStore
from zguard.config import SyslogSettings
from zguard.store.database import create_store_engine
from zguard.store.leases import Lease

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SETTINGS = SyslogSettings.model_validate(
    {"transport": "tcp", "batch_size": 50, "max_backoff_s": 0.05, "timeout_s": 1.0}
)
LEASE_S = 3.0
NAME = "syslog-forwarder"


class Collector:
    """One collector both replicas send to: every message, in arrival order."""

    target = "fake://collector"

    def __init__(self) -> None:
        self.received: list[str] = []
        self.lock = threading.Lock()

    def send(self, messages: Sequence[bytes]) -> None:
        with self.lock:
            self.received.extend(parse_line(m.decode()).params["id"] for m in messages)

    def delivered(self) -> bool:
        return True

    def close(self) -> None:
        pass


class Transport:
    """A replica's connection to the collector; with `dead` set its next send freezes the
    forwarder thread for good, as a `kill -9` would: no renewal, no release, nothing sent."""

    target = "fake://collector"

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.dead = False
        self.thaw = threading.Event()  # set at the end of the test, so the thread can end
        self.sent = 0

    def send(self, messages: Sequence[bytes]) -> None:
        if self.dead:
            self.thaw.wait()
            return  # the test is over: what it sends is not delivered
        self.sent += len(messages)
        self.collector.send(messages)

    def delivered(self) -> bool:
        return True

    def close(self) -> None:
        pass


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[tuple[AuditStore, Engine, Engine]]:
    with postgres_schema_url() as url, audit_store(url, tmp_path / "keys") as (store, _):
        engines = [create_store_engine(url), create_store_engine(url)]
        try:
            yield store, engines[0], engines[1]
        finally:
            for engine in engines:
                engine.dispose()


def replica(store: AuditStore, engine: Engine, name: str, transport: Transport) -> Forwarder:
    outbox = AuditStore(engine)
    lease = Lease(engine, NAME, name, lease_s=LEASE_S)
    return Forwarder(outbox, SETTINGS, transport=transport, hostname=name, procid=1, settle_s=0.01, lease=lease)


def test_one_forwarder_at_a_time_and_a_takeover_loses_nothing(shared: tuple[AuditStore, Engine, Engine]) -> None:
    store, engine_a, engine_b = shared
    collector = Collector()
    wire_a, wire_b = Transport(collector), Transport(collector)
    a = replica(store, engine_a, "gpu-a", wire_a)
    a.start()
    wait_until(lambda: a.status().active, timeout=10, what="replica a to take the lease")
    b = replica(store, engine_b, "gpu-b", wire_b)
    b.start()
    append_events(store, 200)
    wait_until(lambda: store.cursor(CURSOR_NAME) == 200, timeout=10, what="a to forward the first events")
    status_b = b.status()
    assert (status_b.active, status_b.holder, status_b.cursor) == (False, "gpu-a", 200)  # b stands by
    assert a.status().holder == "gpu-a"
    assert wire_b.sent == 0
    wire_a.dead = True  # a dies at its next send: it neither renews nor releases its lease
    try:
        append_events(store, 300)
        wait_until(lambda: b.status().active, timeout=LEASE_S * 3, what="b to take the lease over")
        wait_until(lambda: store.cursor(CURSOR_NAME) == 500, timeout=10, what="b to forward the rest")
        assert b.status().holder == "gpu-b"
    finally:
        wire_a.thaw.set()
        a.close(timeout=0.5)
    ids = collector.received
    counts = Counter(ids)
    assert len(counts) == 500  # none lost
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= SETTINGS.batch_size  # at most what a had in flight
    assert b.close(timeout=2)


def test_a_clean_stop_hands_the_lease_over_at_once(shared: tuple[AuditStore, Engine, Engine]) -> None:
    store, engine_a, engine_b = shared
    collector = Collector()
    a = replica(store, engine_a, "gpu-a", Transport(collector))
    b = replica(store, engine_b, "gpu-b", Transport(collector))
    a.start()
    wait_until(lambda: a.status().active, timeout=10, what="replica a to take the lease")
    b.start()
    append_events(store, 20)
    wait_until(lambda: store.cursor(CURSOR_NAME) == 20, timeout=10, what="a to forward")
    assert a.close(timeout=2)
    append_events(store, 20)
    wait_until(lambda: store.cursor(CURSOR_NAME) == 40, timeout=LEASE_S, what="b to take over before the lease ran out")
    assert Counter(collector.received).most_common(1)[0][1] == 1  # a clean handover sends nothing twice
    assert b.close(timeout=2)


def test_two_leases_never_both_hold(shared: tuple[AuditStore, Engine, Engine]) -> None:
    _, engine_a, engine_b = shared
    a = Lease(engine_a, NAME, "gpu-a", lease_s=LEASE_S)
    b = Lease(engine_b, NAME, "gpu-b", lease_s=LEASE_S)
    results: list[tuple[bool, bool]] = []
    for _ in range(5):
        barrier = threading.Barrier(2)
        got: dict[str, bool] = {}

        def take(lease: Lease, got: dict[str, bool] = got, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            got[lease.holder] = lease._take()

        threads = [threading.Thread(target=take, args=(lease,)) for lease in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results.append((got["gpu-a"], got["gpu-b"]))
    assert all(sum(pair) <= 1 for pair in results)  # a racing take never makes two holders
    assert any(sum(pair) == 1 for pair in results)
