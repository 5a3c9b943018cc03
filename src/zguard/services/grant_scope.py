"""A grant's scope: the largest image side and the most steps its approvers allow.

Decisions written here:

- An approver may set `max_size` (the longest side, in pixels) and `max_steps` when approving
  (`zguard approvals approve --max-size 1024 --max-steps 8`, the console API's body, the
  inbox's form). With a quorum of two each approver's limits are kept with their decision and
  the grant gets the tightest of them (zguard.store.approvals.decide): a second approver can
  narrow a grant, never widen it. A limit is a whole number from 1 to `SCOPE_MAX`; none set
  means the settings' own bounds apply (`generation.max_side`, `generation.max_steps`).
- Enforced when a generation is charged (zguard.services.approvals.charge), after the plan,
  when size and steps are known: over a limit is `grant_scope_exceeded` (403), whose message
  names the limit and the value asked; nothing is charged and the request's audit event carries
  the code, like the other grant refusals.
"""

from __future__ import annotations

from dataclasses import dataclass

from zguard.errors import GrantScopeExceeded, InvalidValue
from zguard.store.approvals import GrantRecord

SCOPE_MAX = 65_536  # beyond any image side or step count a model draws


@dataclass(frozen=True, slots=True)
class Scope:
    """What an approver allows beyond the quota; None: no limit of their own."""

    max_size: int | None = None
    max_steps: int | None = None


def checked_scope(max_size: int | None, max_steps: int | None) -> Scope:
    """The limits an approver gave, or InvalidValue naming the one out of range."""
    for name, value in (("max_size", max_size), ("max_steps", max_steps)):
        if value is not None and (isinstance(value, bool) or not 1 <= value <= SCOPE_MAX):
            raise InvalidValue(f"{name} must be a whole number from 1 to {SCOPE_MAX}", param=name)
    return Scope(max_size, max_steps)


def check_within(grant: GrantRecord, *, width: int, height: int, steps: int) -> None:
    """Refuse a generation over the grant's scope (GrantScopeExceeded); do nothing within it."""
    side = max(width, height)
    if grant.max_size is not None and side > grant.max_size:
        raise GrantScopeExceeded(
            f"your grant {grant.id} allows images of at most {grant.max_size} pixels a side (max_size); "
            f"this asks for {width}x{height}"
        )
    if grant.max_steps is not None and steps > grant.max_steps:
        raise GrantScopeExceeded(
            f"your grant {grant.id} allows at most {grant.max_steps} steps (max_steps); this asks for {steps}"
        )
