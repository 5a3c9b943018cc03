"""`zguard.serve.lifecycle`: how `serve` handles stop signals."""

from __future__ import annotations

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
