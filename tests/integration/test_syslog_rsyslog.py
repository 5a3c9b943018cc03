"""Forwarding to a real rsyslog on loopback: TCP, TLS (with and without a client certificate), UDP,
log injection, and a collector outage across a zguard restart.

Marked `integration`: rsyslog is installed when missing; where it cannot be, the tests skip, and
under CI=true they fail. See `tests/common/rsyslog.py` for the collector's configuration.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.common.outbox import MemoryOutbox, StoredEvent, canonical
from tests.common.pki import Pki
from tests.common.polling import wait_until
from tests.common.rsyslog import Input, Rsyslog, parse_line
from zguard.audit.forwarder import CURSOR_NAME, Forwarder
from zguard.audit.syslog_transport import UDP_MAX_BYTES, SyslogUnavailable, open_transport

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NASTY = (
    'mallory\n<13>1 2024-01-01T00:00:00Z forged zguard - - - [zguard@32473 id="x"] {}\r\n"]\\\u2028\u2029\x85\x00\x1b'
)
SETTLE_S = 0.2


def received_ids(rsyslog: Rsyslog, name: Input) -> list[str]:
    return [parse_line(line).params["id"] for line in rsyslog.lines(name)]


def wait_for_ids(rsyslog: Rsyslog, name: Input, ids: set[str], timeout: float = 30.0) -> list[str]:
    wait_until(
        lambda: ids <= set(received_ids(rsyslog, name)),
        timeout=timeout,
        interval=0.1,
        what=lambda: f"{len(ids)} events on {name}, {len(ids - set(received_ids(rsyslog, name)))} never arrived",
    )
    return received_ids(rsyslog, name)


def forward(rsyslog: Rsyslog, name: Input, events: list[StoredEvent], outbox: MemoryOutbox) -> list[str]:
    forwarder = Forwarder(outbox, rsyslog.settings(name), settle_s=SETTLE_S)
    forwarder.start()
    try:
        lines = rsyslog.wait_for_lines(name, len(events))
    finally:
        assert forwarder.close(timeout=10) is True, forwarder.status()
    assert outbox.cursor(CURSOR_NAME) == len(events)
    return lines


@pytest.mark.parametrize("name", ["tcp", "tls", "mtls", "udp"])
def test_events_arrive_whole_one_line_each(rsyslog: Rsyslog, name: Input) -> None:
    outbox = MemoryOutbox()
    events = [outbox.append(principal=f"user{i}") for i in range(200)]
    lines = forward(rsyslog, name, events, outbox)
    assert len(lines) == len(events), rsyslog.diagnostics()
    for event, line in zip(events, lines, strict=True):
        received = parse_line(line)
        assert received.params["id"] == event.event_id
        assert received.params["seq"] == str(event.seq)
        assert received.params["hash"] == event.hash
        assert received.sd_id == "zguard@32473"
        assert received.msgid == "generation.completed"
        assert canonical(json.loads(received.msg)) == event.body


@pytest.mark.parametrize("name", ["tcp", "tls", "udp"])
def test_client_text_cannot_start_a_line_at_the_collector(rsyslog: Rsyslog, name: Input) -> None:
    """rsyslog here writes control characters raw, so only zguard's escaping keeps records whole."""
    outbox = MemoryOutbox()
    events = [
        outbox.append(type="auth.denied\nforged", outcome="denied", principal=NASTY),
        outbox.append(client=NASTY, request_id=NASTY, detail={"note": NASTY}),
        outbox.append(listener=NASTY, code=NASTY),
    ]
    forward(rsyslog, name, events, outbox)
    time.sleep(0.3)  # anything split off would be a line of its own by now
    text = rsyslog.text(name)
    assert text.count("\n") == len(events)  # one LF each: the one rsyslog's template adds
    lines = text.splitlines()  # splits at CR, VT, FF, FS/GS/RS, NEL, U+2028, U+2029 too
    assert len(lines) == len(events), lines
    first, second, third = (parse_line(line) for line in lines)
    assert first.params["principal"] == NASTY
    assert first.params["type"] == "auth.denied\nforged"
    assert first.msgid == "auth.denied_forged"
    assert (second.params["client"], second.params["request_id"]) == (NASTY, NASTY)
    assert json.loads(second.msg)["detail"] == {"note": NASTY}
    assert (third.params["listener"], third.params["code"]) == (NASTY, NASTY)
    for event, received in zip(events, (first, second, third), strict=True):
        assert canonical(json.loads(received.msg)) == event.body


def test_udp_cuts_a_message_over_its_limit_at_a_character_boundary(rsyslog: Rsyslog) -> None:
    outbox = MemoryOutbox()
    events = [outbox.append(detail={"note": "界" * 5000}), outbox.append()]
    lines = forward(rsyslog, "udp", events, outbox)
    assert len(lines) == 2
    assert UDP_MAX_BYTES - 3 < len(lines[0].encode()) <= UDP_MAX_BYTES  # whole characters: it decoded
    assert lines[0].endswith("界")
    assert parse_line(lines[0]).params["id"] == events[0].event_id
    assert parse_line(lines[1]).params["id"] == events[1].event_id


def test_tls_refuses_a_collector_whose_certificate_does_not_chain_to_ca_file(rsyslog: Rsyslog, pki: Pki) -> None:
    transport = open_transport(rsyslog.settings("tls", ca_file=pki.other_ca))
    with pytest.raises(SyslogUnavailable, match=r"certificate rejected \(unable to get local issuer certificate\)"):
        transport.send([b"<110>1 - - - - - - never sent"])
    assert rsyslog.lines("tls") == []


def test_tls_refuses_a_collector_certificate_for_another_name(rsyslog: Rsyslog) -> None:
    transport = open_transport(rsyslog.settings("tls", server_name="collector.example"))
    with pytest.raises(SyslogUnavailable, match=r"certificate rejected .*Hostname mismatch"):
        transport.send([b"<110>1 - - - - - - never sent"])


def test_tls_checks_the_address_when_no_server_name_is_set(rsyslog: Rsyslog) -> None:
    outbox = MemoryOutbox()
    events = [outbox.append()]
    forwarder = Forwarder(outbox, rsyslog.settings("tls", server_name=None), settle_s=SETTLE_S)
    forwarder.start()
    assert forwarder.close(timeout=10) is True  # 127.0.0.1 is in the certificate's names
    assert received_ids(rsyslog, "tls") == [events[0].event_id]


def test_a_collector_that_demands_a_client_certificate_gets_nothing_without_one(rsyslog: Rsyslog) -> None:
    outbox = MemoryOutbox()
    outbox.append()
    settings = rsyslog.settings("mtls", cert_file=None, key_file=None)
    forwarder = Forwarder(outbox, settings, settle_s=SETTLE_S)
    forwarder.start()
    wait_until(lambda: forwarder.status().last_error is not None, timeout=15, what="the forwarder to report an error")
    assert forwarder.close(timeout=0.5) is False
    assert forwarder.status().last_error is not None
    assert outbox.cursor(CURSOR_NAME) == 0
    assert rsyslog.lines("mtls") == []


@pytest.mark.parametrize(("name", "kill"), [("tcp", False), ("tls", True)], ids=["tcp-sigterm", "tls-sigkill"])
def test_an_outage_across_a_zguard_restart_loses_nothing(rsyslog: Rsyslog, name: Input, kill: bool) -> None:
    """Stop the collector while events keep coming, restart zguard while it is down, bring the
    collector back: every event arrives (duplicates allowed)."""
    outbox = MemoryOutbox()
    total, rate = 1500, 500.0  # events, events per second
    appended = threading.Event()

    def append_steadily() -> None:
        began = time.monotonic()
        for i in range(total):
            outbox.append(principal=f"user{i % 7}")
            time.sleep(max(0.0, began + (i + 1) / rate - time.monotonic()))
        appended.set()

    settings = rsyslog.settings(name)
    writer = threading.Thread(target=append_steadily, name="appender")
    first = Forwarder(outbox, settings, settle_s=SETTLE_S)
    first.start()
    writer.start()
    try:
        wait_until(lambda: outbox.head_seq() >= total // 3, timeout=30, interval=0.01, what="a third of the events")
        rsyslog.stop(kill=kill)  # mid-stream: batches are in flight
        stopped_at = outbox.head_seq()
        assert first.close(timeout=1.0) is False  # zguard stops while the collector is down...
        second = Forwarder(outbox, settings, settle_s=SETTLE_S)  # ...and starts again
        second.start()
        wait_until(  # more events while the collector is down
            lambda: outbox.head_seq() >= stopped_at + 200, timeout=30, interval=0.01, what="200 more events"
        )
        assert second.lag() >= 200
        rsyslog.start()
        assert appended.wait(30)
        expected = {event.event_id for event in outbox.all()}
        got = wait_for_ids(rsyslog, name, expected)
        assert second.close(timeout=10) is True, second.status()
    finally:
        writer.join(30)
    missing = expected - set(got)
    assert not missing, f"{len(missing)} of {total} events never arrived"
    assert outbox.cursor(CURSOR_NAME) == total
    assert rsyslog.starts == 2
