"""`zguard.serve.lifecycle`: how `serve` handles stop signals."""

from __future__ import annotations

from pathlib import Path

import pytest


class _FakeServer:
    should_exit = False
    force_exit = False


def test_stop_signals_first_drains_second_forces_duplicate_ignored() -> None:
    import signal

    from zguard.serve.lifecycle import StopSignals
    from zguard.services.readiness import ModelState, Readiness

    now = [100.0]
    servers = [_FakeServer(), _FakeServer()]
    readiness = Readiness()
    signals = StopSignals(servers, readiness, grace_s=30, clock=lambda: now[0])  # type: ignore[arg-type]
    assert signals.remaining_s() == 30
    signals(signal.SIGTERM)
    assert all(s.should_exit and not s.force_exit for s in servers)
    assert readiness.state is ModelState.STOPPING
    now[0] += 0.2
    signals(signal.SIGINT)  # the same stop delivered twice (terminal + make): still draining
    assert not any(s.force_exit for s in servers)
    assert signals.remaining_s() == pytest.approx(29.8)
    now[0] += 2
    signals(signal.SIGTERM)  # an operator's second signal: stop now
    assert all(s.force_exit for s in servers)
    assert signals.remaining_s() == 0


def test_the_demo_account_follows_the_settings_not_a_marker_file(tmp_path: Path) -> None:
    # a zguard-demo.json in an operator's model.path made the engine report `demo`, and the
    # demo token was issued for a real model
    from zguard.audit.memory import MemoryAuditSink
    from zguard.config import Settings
    from zguard.serve.lifecycle import settle_demo_account
    from zguard.store.database import create_store_engine
    from zguard.store.migrate import upgrade
    from zguard.store.principals import PrincipalStore

    engine = create_store_engine(f"sqlite:///{tmp_path}/z.db")
    upgrade(engine)
    store = PrincipalStore(engine)
    demo = Settings.model_validate({"state_dir": str(tmp_path / "state")})
    real = Settings.model_validate({"state_dir": str(tmp_path / "state"), "model": {"path": str(tmp_path / "m")}})
    settle_demo_account(real, store, bytes(32), MemoryAuditSink())
    assert store.get_principal("demo") is None  # a real model: no demo account made
    settle_demo_account(demo, store, bytes(32), MemoryAuditSink())
    record = store.get_principal("demo")
    assert record is not None
    assert record.enabled
    settle_demo_account(real, store, bytes(32), MemoryAuditSink())
    record = store.get_principal("demo")
    assert record is not None
    assert not record.enabled
    engine.dispose()
