"""zguard.audit.formats: terminal lines, CSV cells and times, without a database."""

from __future__ import annotations

import csv
import io
import json

import pytest

from zguard.audit.archive import ArchivedRow
from zguard.audit.formats import CSV_COLUMNS, csv_cell, csv_row, event_line, parse_moment, printable, write_events
from zguard.audit.store import ROW_COLUMNS, StoredEvent

NOW = 1_795_000_000.0


def stored(seq: int = 7, **fields: object) -> StoredEvent:
    body = {"seq": seq, "time": "2026-11-26T09:30:00.000Z", "type": "auth.denied", "outcome": "denied", **fields}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return StoredEvent(seq, "e" * 32, NOW, "auth.denied", "denied", text, "h" * 64, "p" * 64)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T09:30:00", "2026-11-26T09:30:00+00:00"),
        ("2026-11-26T09:30:00Z", "2026-11-26T09:30:00+00:00"),
        ("2026-11-26T17:30:00+08:00", "2026-11-26T09:30:00+00:00"),
        ("2026-11-26", "2026-11-26T00:00:00+00:00"),
    ],
)
def test_iso_times_are_utc_unless_zoned(text: str, expected: str) -> None:
    from datetime import datetime

    assert parse_moment(text, NOW) == int(datetime.fromisoformat(expected).timestamp() * 1000)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("24h", 86_400), ("7d", 604_800), ("2w", 1_209_600)]
)
def test_relative_times_count_back_from_now(text: str, seconds: int) -> None:
    assert parse_moment(text, NOW) == int((NOW - seconds) * 1000)


@pytest.mark.parametrize("text", ["yesterday", "24", "-1d", "1y", ""])
def test_other_times_are_refused_naming_both_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"neither an ISO 8601 time .* nor a time ago"):
        parse_moment(text, NOW)


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@A1", "\t=1", "\r=1", '=HYPERLINK("http://x")'])
def test_csv_cells_that_could_run_as_formulas_are_defused(cell: str) -> None:
    assert csv_cell(cell) == "'" + cell


def test_csv_cells_otherwise_unchanged() -> None:
    assert csv_cell("alice") == "alice"
    assert csv_cell(None) == ""
    assert csv_cell(-1.5) == "-1.5"  # a number, not a formula
    assert csv_cell(True) == "true"
    assert csv_cell({"a": "=x"}) == '{"a":"=x"}'


def test_csv_row_has_the_fixed_columns_and_joins_roles() -> None:
    row = dict(zip(CSV_COLUMNS, csv_row(stored(roles=["=admin", "auditor"], principal="+bob")), strict=True))
    assert row["roles"] == "'=admin,auditor"
    assert row["principal"] == "'+bob"
    assert row["seq"] == "7"


def test_write_events_csv_and_jsonl() -> None:
    events = [stored(1, principal="@x"), stored(2, principal="ok")]
    out = io.StringIO()
    assert write_events(out, events, "csv") == 2
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == list(CSV_COLUMNS)
    assert [r[CSV_COLUMNS.index("principal")] for r in rows[1:]] == ["'@x", "ok"]
    out = io.StringIO()
    assert write_events(out, events, "jsonl") == 2
    assert out.getvalue().splitlines() == [e.body for e in events]


def test_event_lines_cannot_drive_a_terminal_or_fake_a_line() -> None:
    line = event_line(stored(principal="eve\x1b[2J\nroot", client="10.0.0.1\u2028x", latency_ms=12.5))
    assert "\n" not in line
    assert "\x1b" not in line
    assert "\u2028" not in line
    assert "principal=eve\\x1b[2J\\nroot" in line
    assert "latency_ms=12.5" in line
    assert printable("合同 ok") == "合同 ok"


def test_archive_rows_keep_the_columns_verify_reads() -> None:
    assert ArchivedRow._fields == ROW_COLUMNS
