"""RFC 5424 syslog messages for audit events: pure formatting, no I/O.

A message is built so that nothing a client typed can forge or split a record at the collector:

- header fields (HOSTNAME, APP-NAME, PROCID, MSGID) keep printable US-ASCII only, anything else
  becomes `_`, and each is cut to its RFC length;
- structured-data values escape `"`, `\\` and `]` as RFC 5424 says, and write every control
  character (C0, DEL, C1 including NEL U+0085), U+2028, U+2029 and lone surrogates as `\\uXXXX`.
  Since a literal backslash is always written `\\\\`, `\\u` never comes from the value itself:
  `decode_param_value` reverses it exactly, and a reader that knows only RFC 5424 sees harmless text;
- MSG is the event's canonical JSON body with the same characters written as JSON `\\uXXXX`
  escapes, which JSON reads back as the same string: `json.loads(MSG)` re-serialised canonically
  gives the stored body byte for byte, so the chain hash can be checked from the collector's copy.

So a message never contains CR, LF or any other character that a line reader (Python's
`str.splitlines` included) takes as a line break.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from zguard.config import SyslogSettings

NILVALUE: Final = "-"
BOM: Final = b"\xef\xbb\xbf"  # RFC 5424 6.4: a UTF-8 MSG starts with the byte order mark
VERSION: Final = 1

SEVERITY_WARNING: Final = 4
SEVERITY_NOTICE: Final = 5
SEVERITY_INFORMATIONAL: Final = 6
# A refusal (`denied`) is the policy working as meant, but an auditor filters on it: notice.
# A failure is something that went wrong while serving: warning. Everything else: informational.
_SEVERITY_BY_OUTCOME: Final = {"denied": SEVERITY_NOTICE, "failed": SEVERITY_WARNING}

SD_VALUE_MAX_CHARS: Final = 256  # per structured-data value; the full value is in the JSON body
# Structured-data parameters: (PARAM-NAME, attribute of the stored event), then keys of its body.
SD_EVENT_PARAMS: Final = (
    ("id", "event_id"),
    ("seq", "seq"),
    ("hash", "hash"),
    ("type", "type"),
    ("outcome", "outcome"),
)
SD_BODY_PARAMS: Final = ("code", "principal", "client", "request_id", "listener")
_MAX_LEN = {"hostname": 255, "app_name": 48, "procid": 128, "msgid": 32, "sd_name": 32}

# What must never appear raw: C0 controls, DEL, C1 controls (NEL among them), the Unicode line and
# paragraph separators, and lone surrogates (which cannot be encoded as UTF-8 at all).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NOT_PRINTABLE_ASCII = re.compile("[^!-~]")
_NOT_SD_NAME = re.compile('[^!-~]|[= \\]"]')
_SD_ESCAPE = re.compile(r'\\(["\\\]]|u[0-9a-f]{4})')


class SyslogEvent(Protocol):
    """What the formatter reads of a stored audit event (`zguard.audit.store.StoredEvent`)."""

    @property
    def seq(self) -> int: ...
    @property
    def event_id(self) -> str: ...
    @property
    def time(self) -> float: ...
    @property
    def type(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def body(self) -> str: ...
    @property
    def hash(self) -> str: ...


def _unicode_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def header_field(value: str, max_len: int) -> str:
    """A header field: printable US-ASCII only (others become `_`), cut to `max_len`; empty: `-`."""
    return _NOT_PRINTABLE_ASCII.sub("_", value)[:max_len] or NILVALUE


def sd_name(value: str) -> str:
    """An SD-NAME (PARAM-NAME or the name part of an SD-ID): 1-32 printable ASCII, no `= ] "` or space."""
    cleaned = _NOT_SD_NAME.sub("_", value)[: _MAX_LEN["sd_name"]]
    if not cleaned:
        raise ValueError("an SD-NAME cannot be empty")
    return cleaned


def _plain(text: str) -> bool:
    """Printable ASCII only: nothing to escape (checked at C speed; most values are like this)."""
    return text.isascii() and text.isprintable()


def encode_param_value(value: str) -> str:
    """PARAM-VALUE: `"`, `\\` and `]` escaped with a backslash, unsafe characters as `\\uXXXX`."""
    if '"' in value or "\\" in value or "]" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
    return value if _plain(value) else _UNSAFE.sub(_unicode_escape, value)


def decode_param_value(text: str) -> str:
    """The value `encode_param_value` encoded (what an investigator's tooling reads back)."""

    def one(match: re.Match[str]) -> str:
        escaped = match.group(1)
        return chr(int(escaped[1:], 16)) if escaped[0] == "u" else escaped

    return _SD_ESCAPE.sub(one, text)


def safe_json(body: str) -> str:
    """The JSON text with every unsafe character written as a JSON `\\uXXXX` escape.

    Canonical JSON carries control characters only inside strings, where json.dumps already
    escapes C0; this escapes what it leaves raw (DEL, C1, U+2028/U+2029, lone surrogates).
    """
    return body if _plain(body) else _UNSAFE.sub(_unicode_escape, body)


def severity_for(outcome: str) -> int:
    return _SEVERITY_BY_OUTCOME.get(outcome, SEVERITY_INFORMATIONAL)


def timestamp(unix_seconds: float) -> str:
    """RFC 5424 TIMESTAMP in UTC with milliseconds: `2024-05-01T12:00:00.123Z`."""
    millis = int(unix_seconds * 1000)
    seconds, ms = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


def _param_text(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    if len(text) > SD_VALUE_MAX_CHARS:
        text = text[: SD_VALUE_MAX_CHARS - 1] + "…"
    return text


def structured_data(event: SyslogEvent, body: dict[str, object], enterprise_number: int) -> str:
    """One SD-ELEMENT `[zguard@N id="…" seq="…" …]`; parameters whose value is null are left out."""
    values = [(name, getattr(event, attribute)) for name, attribute in SD_EVENT_PARAMS]
    values += [(name, body.get(name)) for name in SD_BODY_PARAMS]
    parts = [f"zguard@{enterprise_number}"]
    for name, value in values:  # constant names, valid SD-NAMEs (a unit test checks)
        text = _param_text(value)
        if text is not None:
            parts.append(f'{name}="{encode_param_value(text)}"')
    return "[" + " ".join(parts) + "]"


def format_message(
    event: SyslogEvent, *, settings: SyslogSettings, hostname: str, procid: int | str | None = None
) -> bytes:
    """The whole RFC 5424 message for `event` (no framing; the transport adds that).

    `procid` is usually the process id of the forwarder; None writes the NILVALUE.
    """
    try:
        parsed = json.loads(event.body)
    except ValueError:
        parsed = None
    # A body that is not a JSON object is still forwarded; the key fields come from the event itself.
    body: dict[str, object] = parsed if isinstance(parsed, dict) else {}
    pri = settings.facility * 8 + severity_for(event.outcome)
    header = " ".join(
        (
            f"<{pri}>{VERSION}",
            timestamp(event.time),
            header_field(hostname, _MAX_LEN["hostname"]),
            header_field(settings.app_name, _MAX_LEN["app_name"]),
            NILVALUE if procid is None else header_field(str(procid), _MAX_LEN["procid"]),
            header_field(event.type, _MAX_LEN["msgid"]),
        )
    )
    sd = structured_data(event, body, settings.enterprise_number)
    return f"{header} {sd} ".encode() + BOM + safe_json(event.body).encode("utf-8")
