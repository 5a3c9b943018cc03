"""RFC 5424 formatting of audit events: exact header, escaping, and no way for a client to start a line."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.common.outbox import canonical, make_event
from tests.common.rsyslog import parse_line
from zguard.audit.syslog import (
    BOM,
    SD_BODY_PARAMS,
    SD_EVENT_PARAMS,
    SD_VALUE_MAX_CHARS,
    decode_param_value,
    encode_param_value,
    format_message,
    header_field,
    sd_name,
    timestamp,
)
from zguard.config import SyslogSettings

SETTINGS = SyslogSettings(transport="tcp")
# Everything Python's str.splitlines() (and so most line readers) takes as a line boundary, plus
# other controls a terminal or parser might act on.
LINE_BREAKERS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
NASTY = 'eve\n<13>1 2024-01-01T00:00:00Z forged app - - - fake\r"]\\[x@1 a="b"]\u2028\u2029\x85\x00\x1b[2J\x7f'


def _format(event: object, **kwargs: object) -> bytes:
    return format_message(event, settings=SETTINGS, hostname="host-1", procid=4242, **kwargs)  # type: ignore[arg-type]


def test_the_whole_message_for_an_ordinary_event() -> None:
    event = make_event(7, event_id="4b2c6f0e-0000-4000-8000-000000000007", when=1_714_564_800.123)
    message = _format(event)
    expected_sd = (
        f'[zguard@32473 id="{event.event_id}" seq="7" hash="{event.hash}" type="generation.completed" '
        'outcome="done" principal="alice" client="10.1.2.3" request_id="req-7" listener="api"]'
    )
    assert message == (
        f"<110>1 2024-05-01T12:00:00.123Z host-1 zguard 4242 generation.completed {expected_sd} ".encode()
        + BOM
        + event.body.encode()
    )


@pytest.mark.parametrize(("outcome", "pri"), [("allowed", 110), ("done", 110), ("denied", 109), ("failed", 108)])
def test_severity_follows_the_outcome(outcome: str, pri: int) -> None:
    assert _format(make_event(outcome=outcome)).startswith(f"<{pri}>1 ".encode())


def test_facility_app_name_and_enterprise_number_come_from_settings() -> None:
    custom = SyslogSettings(transport="tcp", facility=4, app_name="zg-prod", enterprise_number=99999)
    message = format_message(make_event(outcome="denied"), settings=custom, hostname="h").decode()
    assert message.startswith("<37>1 ")  # 4 * 8 + notice
    assert " h zg-prod - generation.completed [zguard@99999 " in message  # no procid: NILVALUE


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1_714_564_800.9999, "2024-05-01T12:00:00.999Z"),  # milliseconds cut, never rounded into the next second
        (1_714_564_800.5, "2024-05-01T12:00:00.500Z"),
    ],
)
def test_timestamp_is_utc_with_milliseconds(when: float, text: str) -> None:
    assert timestamp(when) == text


def test_null_fields_are_left_out_of_the_structured_data() -> None:
    message = _format(make_event(code=None, principal=None, client=None)).decode()
    sd = message[message.index("[") : message.index("]") + 1]
    assert " code=" not in sd
    assert " principal=" not in sd
    assert " client=" not in sd
    assert ' listener="api"' in sd


def test_sd_values_escape_quote_backslash_and_bracket() -> None:
    assert encode_param_value('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    message = _format(make_event(principal='a"b\\c]d')).decode()
    assert ' principal="a\\"b\\\\c\\]d" ' in message
    assert parse_line(message).params["principal"] == 'a"b\\c]d'


def test_a_literal_backslash_u_is_not_mistaken_for_an_escape() -> None:
    for value in ["\\u000a", "\\\\u000a", "\n", "\\\n", "x\\"]:
        assert decode_param_value(encode_param_value(value)) == value


@pytest.mark.parametrize("field", ["principal", "client", "request_id", "listener", "code"])
def test_client_text_in_any_field_cannot_start_a_new_line(field: str) -> None:
    event = make_event(type=f"auth.{NASTY}", outcome="denied", **{field: NASTY, "detail": {"note": NASTY}})
    text = _format(event).decode("utf-8")
    assert not any(ch in text for ch in LINE_BREAKERS)
    assert len(text.splitlines()) == 1
    received = parse_line(text)
    assert received.params[field] == NASTY
    assert json.loads(received.msg)[field] == NASTY
    assert canonical(json.loads(received.msg)) == event.body  # the stored body, byte for byte


def test_msgid_hostname_and_procid_keep_printable_ascii_within_their_lengths() -> None:
    event = make_event(type="auth denied\n<14>1 " + "x" * 40)
    text = format_message(event, settings=SETTINGS, hostname="bad host\n名", procid="1 2").decode()
    _, _, hostname, app, procid, msgid, _ = text.split(" ", 6)
    assert hostname == "bad_host__"
    assert procid == "1_2"
    assert msgid == "auth_denied_<14>1_" + "x" * 14
    assert len(msgid) == 32
    assert app == "zguard"
    assert header_field("", 10) == "-"


def test_sd_names_are_valid() -> None:
    for name in [name for name, _ in SD_EVENT_PARAMS] + list(SD_BODY_PARAMS):
        assert sd_name(name) == name
    assert sd_name('a b=c]d"' + "e" * 40) == "a_b_c_d_" + "e" * 24
    with pytest.raises(ValueError, match="empty"):
        sd_name("")


def test_long_values_are_cut_in_the_structured_data_but_whole_in_the_body() -> None:
    event = make_event(principal="p" * 5000)
    received = parse_line(_format(event).decode())
    assert received.params["principal"] == "p" * (SD_VALUE_MAX_CHARS - 1) + "…"
    assert json.loads(received.msg)["principal"] == "p" * 5000


def test_non_string_values_are_written_as_json() -> None:
    received = parse_line(_format(make_event(code=503, principal={"name": "x"})).decode())
    assert received.params["code"] == "503"
    assert received.params["principal"] == '{"name": "x"}'


def test_a_body_that_is_not_a_json_object_is_still_forwarded() -> None:
    event = make_event()
    broken = type(event)(**{**vars(event), "body": "not json\n"})
    text = _format(broken).decode()
    assert len(text.splitlines()) == 1
    received = parse_line(text)
    assert received.params["id"] == event.event_id
    assert "principal" not in received.params
    assert received.msg == "not json\\u000a"


def test_lone_surrogates_are_escaped_not_fatal() -> None:
    event = make_event(principal="a\ud800b")
    text = _format(event).decode("utf-8")  # encodable at all: a raw surrogate would raise
    received = parse_line(text)
    assert received.params["principal"] == "a\ud800b"
    assert json.loads(received.msg)["principal"] == "a\ud800b"


@settings(max_examples=300, deadline=None)
@given(
    fields=st.fixed_dictionaries(
        {name: st.text(max_size=80) for name in ("principal", "client", "request_id", "type", "note")}
    ),
    hostname=st.text(max_size=20),
)
def test_any_text_gives_one_line_that_reads_back(fields: dict[str, str], hostname: str) -> None:
    event = make_event(
        type=fields["type"],
        principal=fields["principal"],
        client=fields["client"],
        request_id=fields["request_id"],
        detail={"note": fields["note"]},
    )
    text = format_message(event, settings=SETTINGS, hostname=hostname, procid=1).decode("utf-8")
    assert len(text.splitlines()) == 1
    assert not any(ch in text for ch in LINE_BREAKERS)
    received = parse_line(text)
    for name in ("principal", "client", "request_id", "type"):
        assert received.params[name] == fields[name]
    assert 1 <= len(received.msgid) <= 32
    assert all("!" <= ch <= "~" for ch in received.msgid + received.hostname)
    assert canonical(json.loads(received.msg)) == event.body
