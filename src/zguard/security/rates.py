"""Rate expressions such as the deployment guide's ``10/分钟`` ("10 per minute").

Parsing is pure and strict: an expression that does not parse is a configuration error, never a
silently unlimited rate. Enforcement belongs to the rate limiter, not to this module.
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


@dataclass(frozen=True)
class Rate:
    """`limit` events per `period_s` seconds."""

    limit: int
    period_s: int

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
    return Rate(limit=limit, period_s=seconds * (int(multiple) if multiple else 1))
