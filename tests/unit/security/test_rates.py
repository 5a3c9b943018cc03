from __future__ import annotations

import pytest

from zguard.security.rates import Rate, parse_rate


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10/分钟", Rate(10, 60)),
        ("10 / 分钟", Rate(10, 60)),
        ("10/minute", Rate(10, 60)),
        ("100/hour", Rate(100, 3600)),
        ("5/秒", Rate(5, 1)),
        ("1000/天", Rate(1000, 86400)),
        ("3 per second", Rate(3, 1)),
        ("10每分钟", Rate(10, 60)),
        ("20/5 minutes", Rate(20, 300)),
        ("7/Minute", Rate(7, 60)),
    ],
)
def test_parses_guide_and_english_forms(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "text", ["", "10", "ten/minute", "10/fortnight", "0/分钟", "-1/minute", "10/", "/分钟", "10/0.5m"]
)
def test_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate|unit|nothing"):
        parse_rate(text)
