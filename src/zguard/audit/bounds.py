"""How much an audit event may hold: every event is cut to these bounds before it is hashed and stored.

Usernames, paths, addresses, token prefixes and scheme names reach events from clients, and a
stranger chooses their length: a 256 KiB Basic username was once stored whole, 180 days
unpurgeable. `AuditStore.append` passes every event through `bound_event`, the one choke point,
so no producer can store more than this, whatever it was handed:

- every string (each field, each role, each key and value of `detail`, `http`, `generation`,
  `policy`, `prompt` and the images) is at most `field_chars` long. A longer one keeps its head
  and ends in a marker naming how much was cut and a hash of the whole, so an investigator can
  still match it against a suspect value: `abc…[+261888 chars sha256:1a2b3c4d]`;
- roles, images and each mapping hold at most `entries` items;
- the event's text together (as JSON writes it: a control character counts six) is at most
  `event_chars`: the fields come first and are always kept (each within `field_chars`), then
  roles and the mappings in body order; entries past the budget are left out and counted in
  `detail["bounded_dropped"]`.

The sealed prompt (`prompt.*_sealed`) is exempt from the per-field cut: it is server-made
ciphertext whose size `generation.max_prompt_chars` bounds, and it is useless cut.

Pure: plain inputs, plain outputs, no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from zguard.audit import AuditEvent, DetailValue

FIELD_MAX_CHARS = 256
EVENT_MAX_CHARS = 8_192
ENTRIES_MAX = 64
KEY_MAX_CHARS = 64
DROPPED_KEY = "bounded_dropped"
SEALED_SUFFIX = "_sealed"
_TOP_LEVEL = ("type", "code", "request_id", "listener", "client", "principal", "auth_method", "model", "manifest")
_MAPPINGS = ("http", "generation", "prompt", "policy")


@dataclass(frozen=True)
class EventBounds:
    """The bounds `bound_event` applies (defaults: the module's constants)."""

    field_chars: int = FIELD_MAX_CHARS
    event_chars: int = EVENT_MAX_CHARS
    entries: int = ENTRIES_MAX

    def __post_init__(self) -> None:
        if self.field_chars < 64 or self.event_chars < self.field_chars or self.entries < 1:
            raise ValueError(f"unusable audit event bounds {self}: field_chars ≥ 64, event_chars ≥ field_chars")


def bound_text(value: str, limit: int) -> str:
    """`value` when at most `limit` characters, else its head and `…[+N chars sha256:xxxxxxxx]`
    (N the characters cut, the hash over all of `value`), `limit` characters in all."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    # The marker with the whole length has at least as many digits as the one with the cut length.
    keep = max(0, limit - len(_marker(len(value), digest)))
    return value[:keep] + _marker(len(value) - keep, digest)


def _marker(cut: int, digest: str) -> str:
    return f"…[+{cut} chars sha256:{digest}]"


def _cost(value: object) -> int:
    """What `value` adds to the event's text: its length as JSON writes it (a control character
    takes six), quotes aside."""
    if isinstance(value, str):
        return len(value) if value.isprintable() else len(json.dumps(value, ensure_ascii=False)) - 2
    return len(str(value))


class _Budget:
    __slots__ = ("bounds", "dropped", "left")

    def __init__(self, bounds: EventBounds) -> None:
        self.bounds = bounds
        self.left = bounds.event_chars
        self.dropped = 0

    def text(self, value: str) -> str:
        """A field's string: always kept (cut to the field bound) and charged."""
        value = bound_text(value, self.bounds.field_chars)
        self.left -= _cost(value)
        return value

    def entry(self, key: str, value: DetailValue, *, whole: bool = False) -> tuple[str, DetailValue] | None:
        """A mapping's entry cut to the bounds, or None (and counted) once the budget is spent."""
        key = bound_text(key, KEY_MAX_CHARS)
        if isinstance(value, str) and not whole:
            value = bound_text(value, self.bounds.field_chars)
        if whole:  # the sealed prompt: kept whole, not charged (see the module docstring)
            return key, value
        cost = _cost(key) + _cost(value)
        if cost > self.left:
            self.dropped += 1
            return None
        self.left -= cost
        return key, value

    def mapping(self, items: Mapping[str, DetailValue], *, sealed: bool = False) -> dict[str, DetailValue]:
        out: dict[str, DetailValue] = {}
        for index, (key, value) in enumerate(items.items()):
            if index >= self.bounds.entries:
                self.dropped += len(items) - index
                break
            whole = sealed and isinstance(value, str) and key.endswith(SEALED_SUFFIX)
            kept = self.entry(str(key), value, whole=whole)
            if kept is not None:
                out[kept[0]] = kept[1]
        return out


def _within(event: AuditEvent, bounds: EventBounds) -> bool:
    """The fast path: nothing in `event` near a bound (most events: short server text)."""
    field_chars, total = bounds.field_chars, 0
    for name in _TOP_LEVEL:
        value = getattr(event, name)
        if value is not None:
            if len(value) > field_chars:
                return False
            total += _cost(value)
    if len(event.roles) > bounds.entries or len(event.images) > bounds.entries:
        return False
    mappings = [(event.detail, False), *((m, n == "prompt") for n in _MAPPINGS if (m := getattr(event, n)) is not None)]
    mappings += [(image, False) for image in event.images]
    for mapping, sealed in mappings:
        if len(mapping) > bounds.entries:
            return False
        for key, value in mapping.items():
            if sealed and key.endswith(SEALED_SUFFIX):
                continue  # kept whole, not charged
            if len(key) > KEY_MAX_CHARS or (isinstance(value, str) and len(value) > field_chars):
                return False
            total += _cost(key) + _cost(value)
    if any(len(role) > field_chars for role in event.roles):
        return False
    return total + sum(_cost(role) for role in event.roles) <= bounds.event_chars


def bound_event(event: AuditEvent, bounds: EventBounds | None = None) -> AuditEvent:
    """`event` cut to `bounds` (see the module docstring); `event` itself when already within them."""
    bounds = bounds or EventBounds()
    return event if _within(event, bounds) else _cut(event, bounds)


def _cut(event: AuditEvent, bounds: EventBounds) -> AuditEvent:
    budget = _Budget(bounds)
    fields: dict[str, object] = {
        name: budget.text(value) for name in _TOP_LEVEL if (value := getattr(event, name)) is not None
    }
    roles = []
    for given in event.roles[: bounds.entries]:
        role = bound_text(given, bounds.field_chars)
        if _cost(role) > budget.left:
            budget.dropped += 1
            continue
        budget.left -= _cost(role)
        roles.append(role)
    budget.dropped += max(0, len(event.roles) - bounds.entries)
    fields["roles"] = tuple(roles)
    for name in _MAPPINGS:
        mapping = getattr(event, name)
        if mapping is not None:
            fields[name] = budget.mapping(mapping, sealed=name == "prompt")
    fields["images"] = tuple(budget.mapping(image) for image in event.images[: bounds.entries])
    budget.dropped += max(0, len(event.images) - bounds.entries)
    detail = budget.mapping(event.detail)
    if budget.dropped:
        detail[DROPPED_KEY] = budget.dropped
    fields["detail"] = detail
    return dataclasses.replace(event, **fields)  # type: ignore[arg-type]  # the names are AuditEvent's own
