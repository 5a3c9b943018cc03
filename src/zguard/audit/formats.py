"""How audit events are shown and exported: pure functions, no I/O beyond the handle given.

- `event_line`: one line per event for a terminal, every unprintable character escaped (C0 and
  C1 controls, U+2028/U+2029, the bidi controls U+202A–U+202E, U+2066–U+2069, U+200E/F, U+061C:
  everything `str.isprintable` refuses), so a client-chosen principal or client address cannot
  clear the screen, fake a second line or reorder what is shown. A value holding a space, `=`,
  `"` or a backslash is quoted (`principal="x code=y"`, a quote or backslash inside escaped by
  a backslash), so no value can forge another field; outside quotes a backslash is always an
  escape.
- `json_line`: a stored body with the same characters written as `\\uXXXX` escapes: the same
  JSON value (`canonical(json.loads(line))` is byte for byte what was hashed), safe to print.
- `write_events`: JSON Lines (each line `json_line` of the stored body) or CSV with a fixed column
  set, where any cell that a spreadsheet would run as a formula (a leading `=`, `+`, `-`, `@`,
  tab or carriage return: OWASP's list) is prefixed with `'`, and unprintable characters other
  than tab, CR and LF (which CSV quoting carries) are escaped. Since the store bounds every event
  (`zguard.audit.bounds`), every cell fits Python's `csv` default field limit (131072).
- `parse_moment`: `--since` / `--until` values, ISO 8601 (UTC when no zone) or a time ago.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from zguard.audit.store import StoredEvent

ExportFormat = Literal["jsonl", "csv"]
CSV_COLUMNS = (
    "seq",
    "time",
    "event_id",
    "type",
    "outcome",
    "code",
    "principal",
    "roles",
    "auth_method",
    "listener",
    "client",
    "request_id",
    "model",
    "manifest",
    "latency_ms",
    "generation",
    "prompt",
    "policy",
    "images",
    "http",
    "detail",
)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
LINE_FIELDS = ("principal", "code", "client", "listener", "request_id", "latency_ms")
_QUOTE_WHEN = re.compile(r'[ ="\\]')
_AGO = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def printable(text: str) -> str:
    """`text` with control and other unprintable characters escaped (\\x1b, \\n, \\u2028, ...)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def json_line(body: str) -> str:
    """`body` (JSON) with every unprintable character as a `\\uXXXX` escape: the same value."""
    if body.isprintable():
        return body
    return "".join(ch if ch.isprintable() else _json_escape(ch) for ch in body)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code > 0xFFFF:  # JSON escapes only UTF-16 code units: a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def line_value(value: object) -> str:
    """One `key=value` value of `event_line`: escaped, and quoted when it holds ` `, `=`, `"` or `\\`."""
    text = value if isinstance(value, str) else str(value)
    if text and not _QUOTE_WHEN.search(text):
        return printable(text)
    return '"' + printable(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _cell_text(text: str) -> str:
    """A CSV cell's text with unprintable characters escaped, tab, CR and LF kept (CSV quotes them)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in "\t\r\n" else printable(ch) for ch in text)


def body_of(event: StoredEvent) -> dict[str, Any]:
    body = json.loads(event.body)
    return body if isinstance(body, dict) else {}


def event_line(event: StoredEvent) -> str:
    """`     seq  time  type  outcome  key=value ...`, the fields that are set, safe for a terminal."""
    body = body_of(event)
    parts = [f"{event.seq:>8}", str(body.get("time", "")), f"{event.type:<24}", f"{event.outcome:<7}"]
    parts.extend(f"{key}={line_value(body[key])}" for key in LINE_FIELDS if body.get(key) is not None)
    return printable(" ".join(parts))


def parse_moment(text: str, now: float) -> int:
    """ISO 8601 (UTC when no zone is given) or a time before `now` (`90s`, `30m`, `24h`, `7d`, `2w`)
    → UNIX milliseconds; ValueError naming both forms otherwise."""
    ago = _AGO.fullmatch(text.strip())
    if ago is not None:
        delta = timedelta(**{_UNITS[ago.group(2)]: int(ago.group(1))})
        return int((now - delta.total_seconds()) * 1000)
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2026-11-26T09:30, UTC unless a zone is given) "
            "nor a time ago (90s, 30m, 24h, 7d, 2w)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def csv_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: nested values as compact JSON, formula starts defused."""
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # a number stays a number (a negative one is not a formula)
    if isinstance(value, str):
        text = _cell_text(value)
    else:
        text = json_line(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_row(event: StoredEvent) -> list[str]:
    body = body_of(event)
    roles = body.get("roles")
    if isinstance(roles, list):
        body["roles"] = ",".join(str(role) for role in roles)
    return [csv_cell(body.get(column)) for column in CSV_COLUMNS]


def write_events(handle: IO[str], events: Iterable[StoredEvent], form: ExportFormat) -> int:
    """Write `events` to `handle` as `form`; return how many."""
    count = 0
    if form == "csv":
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        for event in events:
            writer.writerow(csv_row(event))
            count += 1
        return count
    for event in events:
        handle.write(json_line(event.body) + "\n")
        count += 1
    return count
