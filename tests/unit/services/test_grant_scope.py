"""A grant's scope (zguard.services.grant_scope) and the report's day counts (zguard.store.grant_use):
the bounds of what an approver may set, each limit enforced at its edge, and the unused/expiring
rules at theirs."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from zguard.errors import GrantScopeExceeded, InvalidValue
from zguard.services.grant_scope import SCOPE_MAX, Scope, check_within, checked_scope
from zguard.store.approvals import GrantRecord
from zguard.store.grant_use import EXPIRING_DAYS, UNUSED_DAYS, idle_since, is_expiring, is_unused

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
GRANT = GrantRecord(id=7, request_id=1, principal="rita", principal_id=None, model_digest="sha256:ab",
                    max_size=1024, max_steps=8, quota_per_day=5, quota_total=50, used_total=0, not_before=NOW,
                    expires_at=NOW + timedelta(days=30), status="active", revoked_by=None, reason=None)  # fmt: skip


@pytest.mark.parametrize("value", [0, -1, SCOPE_MAX + 1, True])
@pytest.mark.parametrize("name", ["max_size", "max_steps"])
def test_an_approver_limit_out_of_range_is_refused_naming_it(name: str, value: int) -> None:
    with pytest.raises(InvalidValue) as caught:
        checked_scope(**{"max_size": None, "max_steps": None, name: value})
    assert caught.value.param == name
    assert caught.value.code == "invalid_value"


def test_limits_in_range_and_none_pass() -> None:
    assert checked_scope(1, SCOPE_MAX) == Scope(1, SCOPE_MAX)
    assert checked_scope(None, None) == Scope()


def test_within_the_scope_passes_at_the_edge() -> None:
    check_within(GRANT, width=1024, height=1024, steps=8)
    check_within(replace(GRANT, max_size=None, max_steps=None), width=4096, height=4096, steps=200)


@pytest.mark.parametrize(
    ("width", "height", "steps", "words"),
    [(1040, 512, 8, "1024 pixels a side (max_size); this asks for 1040x512"),
     (512, 1040, 8, "this asks for 512x1040"),
     (1024, 1024, 9, "at most 8 steps (max_steps); this asks for 9")],
)  # fmt: skip
def test_over_the_scope_names_the_limit(width: int, height: int, steps: int, words: str) -> None:
    with pytest.raises(GrantScopeExceeded) as caught:
        check_within(GRANT, width=width, height=height, steps=steps)
    assert words in caught.value.message
    assert (caught.value.status, caught.value.code) == (403, "grant_scope_exceeded")


def test_unused_counts_from_the_last_use_or_the_start() -> None:
    edge = NOW - timedelta(days=UNUSED_DAYS)
    assert idle_since(None, edge) == edge
    assert is_unused(None, edge, NOW)
    assert not is_unused(None, edge + timedelta(seconds=1), NOW)
    assert not is_unused(NOW - timedelta(days=1), edge - timedelta(days=100), NOW)  # used yesterday
    assert is_unused(edge, edge - timedelta(days=100), NOW)


def test_expiring_is_within_the_window_and_not_past() -> None:
    assert is_expiring(NOW + timedelta(days=EXPIRING_DAYS), NOW)
    assert not is_expiring(NOW + timedelta(days=EXPIRING_DAYS, seconds=1), NOW)
    assert not is_expiring(NOW, NOW)
