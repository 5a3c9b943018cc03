"""zguard.audit.formats: terminal lines, CSV cells and times, without a database."""

from __future__ import annotations

import csv
import io
import json

import pytest

from zguard.audit import AuditEvent
from zguard.audit.archive import ArchivedRow
from zguard.audit.bounds import bound_event
from zguard.audit.chain import canonical, event_body
from zguard.audit.formats import (
    CSV_COLUMNS,
    csv_cell,
    csv_row,
    event_line,
    json_line,
    line_value,
    parse_moment,
    printable,
    write_events,
)
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


# Characters that reorder, break or hide what a reader sees: line/paragraph separators, C1, bidi.
INVISIBLE = ["\u2028", "\u2029", "\x85", "\x9b", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e"]
INVISIBLE += ["\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f", "\u061c", "\x7f", "\x00"]


@pytest.mark.parametrize("ch", INVISIBLE)
def test_lines_json_and_csv_escape_separators_c1_and_bidi(ch: str) -> None:
    event = stored(principal=f"adm{ch}in", client=f"10.0.0.1{ch}")
    line = event_line(event)
    assert ch not in line
    assert line.isprintable()
    assert f"principal=adm{printable(ch)}in" in line
    assert ch not in json_line(event.body)
    assert json.loads(json_line(event.body)) == json.loads(event.body)  # the same JSON value
    out = io.StringIO()
    write_events(out, [event], "csv")
    assert ch not in out.getvalue()
    out = io.StringIO()
    write_events(out, [event], "jsonl")
    assert ch not in out.getvalue()


def test_json_line_gives_back_the_hashed_body_when_parsed() -> None:
    body = canonical(
        event_body(
            AuditEvent(type="t", outcome="denied", principal="a\u202eb\U000e0041c\u2028"),
            seq=1,
            event_id="e",
            time_ms=0,
        )
    )
    line = json_line(body)
    assert line.isascii() or line.isprintable()
    assert "\\udb40\\udc41" in line  # beyond the BMP: a surrogate pair, as JSON spells it
    assert canonical(json.loads(line)) == body


@pytest.mark.parametrize(
    ("principal", "forged"),
    [
        ("x code=internal_error", "code=internal_error"),
        ('x" code="y', 'code="y"'),
        ("x\\", None),
        ('x\\" code=y', "code=y"),
        ("", None),
    ],
)
def test_a_value_cannot_forge_another_field_of_the_line(principal: str, forged: str | None) -> None:
    line = event_line(stored(principal=principal, code="invalid_api_key"))
    fields = _fields(line)
    assert fields["principal"] == principal
    assert fields["code"] == "invalid_api_key"
    if forged is not None:
        assert f" {forged}" not in line.replace(line_value(principal), "")


def _fields(line: str) -> dict[str, str]:
    """Read `key=value` fields back the way a careful reader would: quotes group, `\\` escapes."""
    out: dict[str, str] = {}
    i = 0
    while i < len(line):
        while i < len(line) and line[i] == " ":
            i += 1
        start = i
        while i < len(line) and line[i] not in " =":
            i += 1
        if i >= len(line) or line[i] != "=":
            continue
        key = line[start:i]
        i += 1
        if i < len(line) and line[i] == '"':
            i += 1
            value = []
            while line[i] != '"':
                if line[i] == "\\":
                    i += 1
                value.append(line[i])
                i += 1
            i += 1
            out[key] = "".join(value)
        else:
            start = i
            while i < len(line) and line[i] != " ":
                i += 1
            out[key] = line[start:i]
    return out


def test_csv_of_bounded_events_reads_with_the_default_field_limit() -> None:
    huge = "\U000e0041" * 262_144  # each an invisible tag character: escaped, 10 characters each
    event = bound_event(
        AuditEvent(
            type="http.request",
            outcome="denied",
            principal=huge,
            client=huge,
            detail={f"k{i}": huge for i in range(64)},
            http={"method": "GET", "path": huge, "status": 401},
        )
    )
    body = canonical(event_body(event, seq=1, event_id="e" * 32, time_ms=0))
    out = io.StringIO()
    write_events(out, [StoredEvent(1, "e" * 32, NOW, event.type, event.outcome, body, "h" * 64)], "csv")
    assert csv.field_size_limit() == 131_072
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert len(rows) == 2
    assert max(len(cell) for cell in rows[1]) < 131_072
