"""The Prometheus exposition of zguard.services.metrics (pure)."""

from __future__ import annotations

from zguard.services.metrics import RequestMetrics, label_code, service_gauges


def test_label_values_come_from_closed_sets() -> None:
    assert label_code(None) == "ok"
    assert label_code("ip_not_allowed") == "ip_not_allowed"
    assert label_code('x"}\nzguard_fake 1') == "other"
    assert label_code("Alice") == "other"
    metrics = RequestMetrics()
    metrics.record_request("sneaky", None, "ok")
    assert 'zguard_requests_total{listener="other",status="none",code="ok"} 1' in metrics.render()


def test_histogram_is_cumulative() -> None:
    metrics = RequestMetrics(buckets=(1.0, 5.0))
    for seconds in (0.5, 1.0, 3.0, 9.0):
        metrics.observe_generation(seconds)
    lines = metrics.render().splitlines()
    assert 'zguard_generation_duration_seconds_bucket{le="1"} 2' in lines
    assert 'zguard_generation_duration_seconds_bucket{le="5"} 3' in lines
    assert 'zguard_generation_duration_seconds_bucket{le="+Inf"} 4' in lines
    assert "zguard_generation_duration_seconds_sum 13.5" in lines
    assert "zguard_generation_duration_seconds_count 4" in lines


def test_gauges_from_the_audit_snapshot() -> None:
    audit = {"write_failures": 0, "forwarding": {"lag": 17, "target": "udp://10.0.0.1:514"}}
    gauges = service_gauges(
        waiting=2, running=1, model_verified=True, model_ready=False, policy_reloads={"ok": 3, "failed": 1}, audit=audit
    )
    text = RequestMetrics().render(gauges)
    assert "zguard_audit_forwarding_lag_events 17" in text
    assert 'zguard_policy_reloads_total{result="failed"} 1' in text
    assert text.count("# TYPE zguard_policy_reloads_total counter") == 1
    assert "zguard_queue_waiting 2" in text
    assert "zguard_model_verified 1" in text
    assert "10.0.0.1" not in text
    no_forwarding = service_gauges(
        waiting=0, running=0, model_verified=False, model_ready=True, policy_reloads={}, audit={"store": "none"}
    )
    off = RequestMetrics().render(no_forwarding)
    assert "forwarding_lag" not in off
