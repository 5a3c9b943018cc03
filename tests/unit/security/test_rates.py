from __future__ import annotations

import re

import pytest

from zguard.security.rates import Rate, limits_notation, parse_rate, parse_rates


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
    "text",
    [
        "",
        "10",
        "ten/minute",
        "10/fortnight",
        "0/分钟",
        "-1/minute",
        "10/",
        "/分钟",
        "10/0.5m",
        "10/minute;",
    ],
)
def test_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate|unit|nothing"):
        parse_rate(text)


@pytest.mark.parametrize("text", ["10/0 minutes", "10/00s", "10/000秒"])
def test_refuses_a_period_of_no_time(text: str) -> None:
    with pytest.raises(ValueError, match="no time"):
        parse_rate(text)


def test_str_shows_count_and_seconds() -> None:
    assert str(parse_rate("20/5 minutes")) == "20/300s"


@pytest.mark.parametrize(("limit", "period_s"), [(0, 60), (-1, 60), (10, 0), (10, -60)])
def test_rate_refuses_nothing_and_no_time(limit: int, period_s: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Rate(limit, period_s)


@pytest.mark.parametrize(
    ("text", "rates"),
    [
        ("10/minute", (Rate(10, 60),)),
        ("10/minute; 100/hour", (Rate(10, 60), Rate(100, 3600))),
        ("10/分钟;100/小时;1000/天", (Rate(10, 60), Rate(100, 3600), Rate(1000, 86400))),
        ("10/分钟；100/小时", (Rate(10, 60), Rate(100, 3600))),
        ("  100/hour ;10/minute  ", (Rate(100, 3600), Rate(10, 60))),
        ("1/second; 20/5 minutes; 30/10 minutes", (Rate(1, 1), Rate(20, 300), Rate(30, 600))),
    ],
)
def test_parses_several_rates_in_the_order_written(text: str, rates: tuple[Rate, ...]) -> None:
    assert parse_rates(text) == rates


@pytest.mark.parametrize(
    "text", ["", " ", ";", "10/minute;", ";10/minute", "10/minute;;100/hour", "10/minute; ;100/hour", "10/minute；"]
)
def test_parse_rates_refuses_empty_parts(text: str) -> None:
    with pytest.raises(ValueError, match="empty part"):
        parse_rates(text)


@pytest.mark.parametrize(
    "text",
    [
        "10/minute; 20/minute",
        "10/minute;10/minute",
        "10/分钟; 10/minute",
        "60/minute; 60/60 seconds",
        "1/hour;2/60 minutes",
    ],
)
def test_parse_rates_refuses_two_rates_for_one_period(text: str) -> None:
    with pytest.raises(ValueError, match="twice"):
        parse_rates(text)


@pytest.mark.parametrize(
    "text", ["10/minute, 100/hour", "10/minute|100/hour", "10/minute; 100/fortnight", "10/minute; 0/hour"]
)
def test_parse_rates_refuses_bad_parts_and_other_separators(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate|unit|nothing"):
        parse_rates(text)


# The `limits` library's documented notation: "[count] [per|/] [n (optional)] [second|minute|hour|day|month|year]".
LIMITS_NOTATION = re.compile(r"(\d+) per (\d+) (second|minute|hour|day)")
LIMITS_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@pytest.mark.parametrize(
    ("rate", "notation"),
    [
        (Rate(10, 60), "10 per 1 minute"),
        (Rate(10, 1), "10 per 1 second"),
        (Rate(100, 3600), "100 per 1 hour"),
        (Rate(1000, 86400), "1000 per 1 day"),
        (Rate(20, 300), "20 per 5 minute"),
        (Rate(3, 90), "3 per 90 second"),
        (Rate(5, 7200), "5 per 2 hour"),
        (Rate(5, 5400), "5 per 90 minute"),
        (Rate(7, 172800), "7 per 2 day"),
        (Rate(7, 90000), "7 per 25 hour"),
    ],
)
def test_limits_notation(rate: Rate, notation: str) -> None:
    assert limits_notation(rate) == notation


@pytest.mark.parametrize("text", ["10/分钟", "20/5 minutes", "3 per second", "1000/天", "7/90 s", "1/36 hours"])
def test_limits_notation_keeps_the_same_window(text: str) -> None:
    rate = parse_rate(text)
    match = LIMITS_NOTATION.fullmatch(limits_notation(rate))
    assert match is not None
    count, multiples, granularity = match.groups()
    assert int(count) == rate.limit
    assert int(multiples) * LIMITS_SECONDS[granularity] == rate.period_s
    # It reads back through our own parser too.
    assert parse_rate(limits_notation(rate).replace(" per ", "/")) == rate


@pytest.mark.parametrize(
    ("unit", "seconds"),
    [
        ("s", 1), ("sec", 1), ("second", 1), ("seconds", 1), ("秒", 1), ("秒钟", 1),
        ("m", 60), ("min", 60), ("minute", 60), ("minutes", 60), ("分", 60), ("分钟", 60),
        ("h", 3600), ("hour", 3600), ("hours", 3600), ("时", 3600), ("小时", 3600),
        ("d", 86400), ("day", 86400), ("days", 86400), ("天", 86400), ("日", 86400),
    ],
)  # fmt: skip
def test_every_unit_people_write(unit: str, seconds: int) -> None:
    """Each unit of the table, written independently here, so a changed length or a dropped unit fails."""
    assert parse_rate(f"3/{unit}") == Rate(3, seconds)
    assert parse_rate(f"3/2 {unit}") == Rate(3, 2 * seconds)
