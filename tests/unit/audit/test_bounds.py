"""zguard.audit.bounds: no string, mapping or event past its bound, whatever a producer hands over."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zguard.audit import AuditEvent
from zguard.audit.bounds import (
    DROPPED_KEY,
    EVENT_MAX_CHARS,
    FIELD_MAX_CHARS,
    EventBounds,
    _cut,
    _within,
    bound_event,
    bound_text,
)
from zguard.audit.chain import canonical, event_body

HUGE = "u" * 262_144  # the red team's Basic username: 256 KiB
MARKER = re.compile(r"…\[\+(\d+) chars sha256:([0-9a-f]{8})\]$")


def body_bytes(event: AuditEvent) -> int:
    return len(canonical(event_body(event, seq=1, event_id="e" * 32, time_ms=0)).encode())


def test_short_text_is_kept_as_it_is() -> None:
    assert bound_text("alice", 256) == "alice"
    assert bound_text("a" * 256, 256) == "a" * 256


@pytest.mark.parametrize("length", [257, 300, 10_000, 262_144])
def test_long_text_keeps_its_head_and_names_the_cut_and_the_hash(length: int) -> None:
    value = "".join(chr(0x4E00 + i % 500) for i in range(length))  # not ASCII: characters, not bytes
    cut = bound_text(value, 256)
    assert len(cut) <= 256
    marker = MARKER.search(cut)
    assert marker is not None, cut
    kept = cut[: marker.start()]
    assert value.startswith(kept)
    assert len(kept) + int(marker.group(1)) == length
    assert marker.group(2) == hashlib.sha256(value.encode()).hexdigest()[:8]


def test_lone_surrogates_are_hashed_not_raised() -> None:
    assert MARKER.search(bound_text("\ud800" * 1000, 64))


def test_a_256_kib_username_is_stored_as_at_most_256_characters() -> None:
    event = AuditEvent(
        type="http.request", outcome="denied", code="invalid_api_key", principal=HUGE, auth_method="basic"
    )
    bounded = bound_event(event)
    assert bounded.principal is not None
    assert len(bounded.principal) == FIELD_MAX_CHARS
    assert body_bytes(bounded) < 2_048


def test_every_client_field_and_every_detail_string_is_bounded() -> None:
    event = AuditEvent(
        type="http.request",
        outcome="denied",
        code="c" * 1000,
        request_id="r" * 1000,
        listener="l" * 1000,
        client="unknown (" + "x" * 100_000 + ")",
        principal=HUGE,
        roles=("r" * 1000, "auditor"),
        auth_method="s" * 1000,
        detail={"token": "t" * 5000, "reason": "why" * 5000, "k" * 500: 1},
        http={"method": "M" * 1000, "path": "/" + "p" * 100_000, "status": 401},
        generation={"size": "64x64"},
        policy={"category": "c" * 1000},
        images=({"sha256": "h" * 1000},),
    )
    bounded = bound_event(event)
    body = event_body(bounded, seq=1, event_id="e" * 32, time_ms=0)

    def strings(value: object) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return [s for k, v in value.items() for s in (*strings(k), *strings(v))]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return []

    assert all(len(s) <= FIELD_MAX_CHARS for s in strings(body))
    assert len(canonical(body)) <= EVENT_MAX_CHARS + 1_024  # the body's own keys and numbers on top
    assert bounded.roles[1] == "auditor"
    assert bounded.http is not None
    assert bounded.http["status"] == 401


def test_the_event_budget_drops_entries_past_it_and_counts_them() -> None:
    detail = {f"key{i:03d}": "v" * 250 for i in range(60)}  # 15,000 characters: past the 8,192 budget
    bounded = bound_event(AuditEvent(type="t", outcome="denied", detail=detail))
    dropped = bounded.detail[DROPPED_KEY]
    assert isinstance(dropped, int)
    assert dropped > 0
    assert len(bounded.detail) - 1 + dropped == 60
    assert len(canonical(dict(bounded.detail))) <= EVENT_MAX_CHARS + 200


def test_mappings_hold_at_most_the_entries_bound() -> None:
    bounds = EventBounds(entries=8)
    bounded = bound_event(AuditEvent(type="t", outcome="denied", detail={str(i): i for i in range(20)}), bounds)
    assert len(bounded.detail) == 8 + 1
    assert bounded.detail[DROPPED_KEY] == 12


def test_the_sealed_prompt_is_kept_whole() -> None:
    sealed = "A" * 20_000  # ciphertext of a long prompt: useless cut
    event = AuditEvent(
        type="generation", outcome="done", principal=HUGE, prompt={"capture": "encrypted", "prompt_sealed": sealed}
    )
    bounded = bound_event(event)
    assert bounded.prompt is not None
    assert bounded.prompt["prompt_sealed"] == sealed
    assert bounded.principal is not None
    assert len(bounded.principal) == FIELD_MAX_CHARS
    # ...only there: a `_sealed` key elsewhere is cut like any other.
    other = bound_event(AuditEvent(type="t", outcome="denied", detail={"x_sealed": sealed}))
    value = other.detail["x_sealed"]
    assert isinstance(value, str)
    assert len(value) == FIELD_MAX_CHARS


def test_an_event_within_the_bounds_is_returned_as_it_is() -> None:
    event = AuditEvent(type="auth.denied", outcome="denied", principal="bob", detail={"token": "zg_abc", "n": 3})
    assert bound_event(event) is event


def test_bounds_below_a_marker_are_refused() -> None:
    with pytest.raises(ValueError, match="field_chars"):
        EventBounds(field_chars=10)


_text = st.text(max_size=300) | st.text(alphabet="ab", min_size=250, max_size=270)
_value = st.none() | st.booleans() | st.integers(-(10**9), 10**9) | _text
_mapping = st.dictionaries(st.text(max_size=70), _value, max_size=70)


@settings(max_examples=200, deadline=None)
@given(
    principal=st.none() | _text,
    client=st.none() | _text,
    roles=st.lists(_text, max_size=70).map(tuple),
    detail=_mapping,
    http=st.none() | _mapping,
    images=st.lists(_mapping, max_size=3).map(tuple),
)
def test_the_fast_path_agrees_with_the_cut(
    *,
    principal: str | None,
    client: str | None,
    roles: tuple[str, ...],
    detail: dict[str, object],
    http: dict[str, object] | None,
    images: tuple[dict[str, object], ...],
) -> None:
    event = AuditEvent(
        type="t",
        outcome="denied",
        principal=principal,
        client=client,
        roles=roles,
        detail=detail,  # type: ignore[arg-type]  # the strategy draws DetailValues only
        http=http,  # type: ignore[arg-type]
        images=images,  # type: ignore[arg-type]
    )
    bounds = EventBounds()
    cut = _cut(event, bounds)
    if _within(event, bounds):  # nothing to cut: the slow path changes nothing either
        assert cut.principal == event.principal
        assert cut.roles == event.roles
        assert dict(cut.detail) == dict(event.detail)
        assert cut.http == (dict(http) if http is not None else None)
        assert [dict(i) for i in cut.images] == [dict(i) for i in event.images]
    body = json.loads(canonical(event_body(bound_event(event), seq=1, event_id="e", time_ms=0)))
    assert len(json.dumps(body, ensure_ascii=False)) < EVENT_MAX_CHARS + 4_096
