"""zguard.audit.strangers: a stranger's refusals cost bounded events, bounded memory, and are never lost."""

from __future__ import annotations

import pytest

from zguard.audit.strangers import MAX_CODES, SUMMARY_TYPE, StrangerRefusals, address_key

START = 1_795_000_040.0  # 20 s into a clock minute


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def flood(strangers: StrangerRefusals, count: int, client: str = "198.51.100.7", code: str = "invalid_api_key") -> int:
    """Send `count` refusals; how many were to get their own event."""
    recorded = 0
    for _ in range(count):
        own, ended = strangers.admit("api", client, code)
        assert ended == []
        recorded += own
    return recorded


def test_the_first_n_a_minute_are_recorded_the_rest_summarised_once() -> None:
    clock = Clock()
    strangers = StrangerRefusals(per_address=60, total=600, clock=clock)
    assert flood(strangers, 1_000) == 60
    assert flood(strangers, 5, code="not_found") == 0
    assert strangers.pending == 945
    assert strangers.due() == []  # the minute has not ended
    clock.now += 40
    (summary,) = strangers.due()
    assert summary.type == SUMMARY_TYPE
    assert (summary.listener, summary.client, summary.principal) == ("api", "198.51.100.7", None)
    assert summary.detail == {
        "window_start": "2026-11-18T11:07:00.000Z",
        "window_end": "2026-11-18T11:08:00.000Z",
        "suppressed": 945,
        "recorded": 60,
        "limit": 60,
        "scope": "address",
        "code.invalid_api_key": 940,
        "code.not_found": 5,
    }
    assert strangers.due() == []  # handed back once
    assert strangers.tracked == 0
    assert flood(strangers, 60) == 60  # a new minute, a new allowance


def test_the_summary_comes_back_with_the_next_refusal_after_the_minute() -> None:
    clock = Clock()
    strangers = StrangerRefusals(per_address=2, clock=clock)
    flood(strangers, 3)
    clock.now += 60
    own, ended = strangers.admit("api", "198.51.100.7", "invalid_api_key")
    assert own
    assert [e.detail["suppressed"] for e in ended] == [1]


def test_addresses_and_listeners_are_counted_apart() -> None:
    strangers = StrangerRefusals(per_address=3, clock=Clock())
    assert flood(strangers, 5, client="198.51.100.1") == 3
    assert flood(strangers, 5, client="198.51.100.2") == 3
    own, _ = strangers.admit("console", "198.51.100.1", "invalid_api_key")
    assert own
    summaries = strangers.drain()
    assert sorted((e.listener, e.client, e.detail["suppressed"]) for e in summaries) == [
        ("api", "198.51.100.1", 2),
        ("api", "198.51.100.2", 2),
    ]


def test_many_addresses_cost_bounded_memory_and_fold_into_one_summary() -> None:
    clock = Clock()
    strangers = StrangerRefusals(per_address=60, total=600, clock=clock)
    recorded = sum(flood(strangers, 1, client=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}") for i in range(100_000))
    assert recorded == 600
    assert strangers.tracked == 600  # not 100,000
    clock.now += 60
    (summary,) = strangers.due()
    assert summary.client is None
    assert summary.detail["scope"] == "all_addresses"
    assert summary.detail["suppressed"] == 99_400
    assert summary.detail["limit"] == 600


def test_summaries_a_minute_are_bounded_by_total_over_per_address() -> None:
    clock = Clock()
    strangers = StrangerRefusals(per_address=10, total=100, clock=clock)
    for i in range(50):
        flood(strangers, 50, client=f"192.0.2.{i}")
    clock.now += 60
    summaries = strangers.due()
    assert len(summaries) == 100 // 10 + 1  # ten addresses that used their allowance, one for the rest
    assert sum(int(e.detail["suppressed"] or 0) for e in summaries) == 50 * 50 - 100


def test_an_ipv6_host_counts_per_64() -> None:
    strangers = StrangerRefusals(per_address=5, clock=Clock())
    recorded = sum(flood(strangers, 1, client=f"2001:db8:1:2::{i:x}") for i in range(20))
    assert recorded == 5
    assert address_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("unknown (X-Forwarded-For entry 'junk' ...)") == "unknown"
    assert address_key(None) == "unknown"


def test_codes_are_labels_from_a_closed_shape_and_a_bounded_number() -> None:
    strangers = StrangerRefusals(per_address=1, clock=Clock())
    flood(strangers, 1)
    for i in range(40):
        strangers.admit("api", "198.51.100.7", f"code_{i}")
    strangers.admit("api", "198.51.100.7", "Evil Code=1")
    strangers.admit("api", "198.51.100.7", None)
    (summary,) = strangers.drain()
    codes = {k for k in summary.detail if k.startswith("code.")}
    assert len(codes) <= MAX_CODES
    assert "code.other" in codes
    assert summary.detail["suppressed"] == 42


def test_drain_hands_back_the_current_minute_at_shutdown() -> None:
    strangers = StrangerRefusals(per_address=1, clock=Clock())
    flood(strangers, 4)
    (summary,) = strangers.drain()
    assert summary.detail["suppressed"] == 3
    assert strangers.pending == 0
    assert strangers.drain() == []


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        StrangerRefusals(per_address=0)
