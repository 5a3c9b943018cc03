"""The schedule's pure parts (zguard.services.recertification) and its settings (zguard.config.approvals)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from zguard.config import Settings
from zguard.config.approvals import ApprovalSettings
from zguard.services.recertification import quarter_end, quarter_of, scheduled_deadline


@pytest.mark.parametrize(
    ("moment", "quarter"),
    [
        (datetime(2026, 1, 1, tzinfo=UTC), "2026Q1"),
        (datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC), "2026Q1"),
        (datetime(2026, 4, 1, tzinfo=UTC), "2026Q2"),
        (datetime(2026, 9, 30, 12, tzinfo=UTC), "2026Q3"),
        (datetime(2026, 12, 31, 23, 59, tzinfo=UTC), "2026Q4"),
        # UTC decides: 01:00 on 1 January in UTC+2 is still the old year's last quarter.
        (datetime(2027, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=2))), "2026Q4"),
    ],
)
def test_quarter_of(moment: datetime, quarter: str) -> None:
    assert quarter_of(moment) == quarter
    assert quarter_end(quarter) > moment


def test_the_deadline_is_the_days_after_the_opening_unless_the_quarter_ends_first() -> None:
    first_day = datetime(2026, 10, 1, 0, 5, tzinfo=UTC)
    assert scheduled_deadline(first_day, 21) == first_day + timedelta(days=21)
    late = datetime(2026, 12, 25, 8, 0, tzinfo=UTC)
    assert scheduled_deadline(late, 21) == datetime(2027, 1, 1, tzinfo=UTC)
    assert scheduled_deadline(late, 1) == late + timedelta(days=1)


def test_schedule_settings_defaults_keep_it_off() -> None:
    section = Settings().approvals
    assert section.recertification_schedule == "off"
    assert (section.recertification_days, section.recertification_check_interval_s) == (21, 300)
    assert ApprovalSettings.model_validate({"recertification_schedule": "quarterly"}).recertification_schedule == (
        "quarterly"
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"recertification_schedule": "monthly"},
        {"recertification_days": 0},
        {"recertification_days": 91},
        {"recertification_check_interval_s": 29},
        {"recertification_check_interval_s": 3601},
    ],
)
def test_schedule_settings_out_of_bounds_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ApprovalSettings.model_validate(bad)
