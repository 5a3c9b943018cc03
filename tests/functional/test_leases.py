"""`Lease` on a SQLite state database with clocks the test moves: one holder at a time, renewal,
expiry, release, and a holder that cannot reach the database stopping before a taker may start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.common.audit import sqlite_url
from zguard.store import migrate
from zguard.store.database import create_store_engine
from zguard.store.leases import Lease

LEASE_S = 15.0


class Clocks:
    """Wall and monotonic time, moved together by the test."""

    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def wall(self) -> float:
        return self.t

    def mono(self) -> float:
        return self.t - 1_700_000_000.0

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    (tmp_path / "state").mkdir()
    engine = create_store_engine(sqlite_url(tmp_path / "state"))
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def lease(engine: Engine, holder: str, clocks: Clocks) -> Lease:
    return Lease(engine, "syslog-forwarder", holder, lease_s=LEASE_S, clock=clocks.wall, monotonic=clocks.mono)


def test_one_holder_renews_and_the_other_waits_for_the_whole_lease(engine: Engine) -> None:
    clocks = Clocks()
    a, b = lease(engine, "gpu-a", clocks), lease(engine, "gpu-b", clocks)
    assert a.keep()
    assert not b.keep()
    assert a.holder_now() == ("gpu-a", int((clocks.t + LEASE_S) * 1000))
    for _ in range(6):  # a renews every third of the lease: b never gets it
        clocks.advance(LEASE_S / 3)
        assert a.keep()
        assert not b.keep()
    clocks.advance(LEASE_S / 3)  # a stops renewing (it died) ...
    assert not b.keep()
    clocks.advance(LEASE_S)  # ... and after the whole lease b takes over
    assert b.keep()
    clocks.advance(LEASE_S / 3)
    assert not a.keep()  # a, back, finds it held by b and stops acting on it
    assert not a.valid()


def test_a_release_hands_the_lease_over_at_once(engine: Engine) -> None:
    clocks = Clocks()
    a, b = lease(engine, "gpu-a", clocks), lease(engine, "gpu-b", clocks)
    assert a.keep()
    a.release()
    assert not a.valid()
    assert b.keep()


def test_a_holder_without_the_database_stops_two_thirds_into_the_lease(engine: Engine, tmp_path: Path) -> None:
    clocks = Clocks()
    a = lease(engine, "gpu-a", clocks)
    assert a.keep()
    engine.dispose()
    (tmp_path / "state" / "zguard.db").unlink()  # the database is gone: renewals fail
    (tmp_path / "state").rmdir()
    clocks.advance(LEASE_S / 3)
    assert a.keep()  # still within two thirds of the lease since the last renewal
    assert a.last_error is not None
    clocks.advance(LEASE_S / 3)
    assert not a.keep()  # a taker may start once the whole lease has passed: a stops before
