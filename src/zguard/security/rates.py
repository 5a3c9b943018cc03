"""Rate expressions such as the deployment guide's ``10/分钟`` ("10 per minute").

Parsing is pure and strict: an expression that does not parse is a configuration error, never a
silently unlimited rate. Enforcement belongs to the rate limiter, not to this module.

- `parse_rate` reads one rate: ``10/分钟``, ``10/minute``, ``20/5 minutes``, ``3 per second``.
- `parse_rates` reads several joined with ``;`` (or the full-width ``；`` a Chinese keyboard
  types), e.g. ``10/分钟;100/小时;1000/天``; a request must satisfy every one of them. Empty parts
  and two rates over the same period are refused: both are typos, and silently keeping one of
  two contradicting limits would guess at what the operator meant. Commas are not separators,
  unlike the `limits` library's, so a mistyped ``10,000/day`` fails instead of splitting.
- `limits_notation` writes a `Rate` in the `limits` library's string notation
  (``[count] per [n] [second|minute|hour|day]``, as its ``RateLimitItem`` repr prints), for a
  limiter built on that library; ``limits.parse`` reads it back to the same window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Units in English and Chinese, as people write them in the deployment guide's files.
_UNIT_SECONDS: dict[str, int] = {
    "s": 1, "sec": 1, "second": 1, "seconds": 1, "秒": 1, "秒钟": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60, "分": 60, "分钟": 60,
    "h": 3600, "hour": 3600, "hours": 3600, "时": 3600, "小时": 3600,
    "d": 86400, "day": 86400, "days": 86400, "天": 86400, "日": 86400,
}  # fmt: skip
_RATE = re.compile(r"^\s*(\d{1,9})\s*(?:/|per\s+|每)\s*(\d{0,6})\s*([^\s\d/]+)\s*$", re.IGNORECASE)
_SEPARATOR = re.compile(r"[;；]")
# The `limits` library's fixed-length granularities, longest first; the last divides every period.
# Its month and year are calendar lengths and never needed here.
_LIMITS_GRANULARITIES: tuple[tuple[str, int], ...] = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


@dataclass(frozen=True)
class Rate:
    """`limit` events per `period_s` seconds; both at least 1 (ValueError otherwise)."""

    limit: int
    period_s: int

    def __post_init__(self) -> None:
        if self.limit < 1 or self.period_s < 1:
            raise ValueError(f"a rate needs a count and a period of at least 1, got {self.limit}/{self.period_s}s")

    def __str__(self) -> str:
        return f"{self.limit}/{self.period_s}s"


def parse_rate(text: str) -> Rate:
    """Parse ``N/unit``, ``N/K unit``, ``N per unit`` or ``N每unit``; raise ValueError otherwise."""
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a rate; write it as N/unit, e.g. '10/分钟' or '10/minute'")
    count, multiple, unit = match.groups()
    seconds = _UNIT_SECONDS.get(unit.lower())
    if seconds is None:
        units = "second, minute, hour, day, 秒, 分钟, 小时, 天"
        raise ValueError(f"unknown time unit {unit!r} in {text!r}; use one of: {units}")
    limit = int(count)
    if limit < 1:
        raise ValueError(f"{text!r} allows nothing; the count must be at least 1")
    if multiple and int(multiple) == 0:
        raise ValueError(f"{text!r} has no time in its period; write e.g. '10/5 minutes'")
    return Rate(limit=limit, period_s=seconds * (int(multiple) if multiple else 1))


def parse_rates(text: str) -> tuple[Rate, ...]:
    """Parse rates joined with ``;`` or ``；``, in the order written; raise ValueError otherwise."""
    parts = _SEPARATOR.split(text)
    if any(not part.strip() for part in parts):
        raise ValueError(f"{text!r} has an empty part; write rates as '10/minute; 100/hour'")
    rates = tuple(parse_rate(part) for part in parts)
    written: dict[int, str] = {}
    for part, rate in zip(parts, rates, strict=True):
        if rate.period_s in written:
            raise ValueError(
                f"{text!r} limits one period twice ({written[rate.period_s]!r}, {part.strip()!r}); keep one"
            )
        written[rate.period_s] = part.strip()
    return rates


def limits_notation(rate: Rate) -> str:
    """`rate` in the `limits` library's notation, e.g. ``10 per 1 minute`` or ``20 per 5 minute``.

    Uses the longest granularity that divides the period exactly, so the window is the same length
    and the library's storage keys stay readable.
    """
    name, seconds = next((n, s) for n, s in _LIMITS_GRANULARITIES if rate.period_s % s == 0)
    return f"{rate.limit} per {rate.period_s // seconds} {name}"
