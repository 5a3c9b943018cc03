"""`zguard serve` forwarding its real audit trail to a real rsyslog: every event arrives, the
prompt never does, and a collector outage across a zguard restart loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.common.polling import wait_until
from tests.common.rsyslog import Input, Rsyslog, parse_line
from tests.common.servers import ZguardProcess
from zguard.audit.store import AuditStore
from zguard.store.database import create_store_engine

PROMPT = "violet submarine over 翡翠港口 canary-91c2"
GENERATE = {"prompt": PROMPT, "size": "64x64", "num_inference_steps": 1, "seed": 3}


def _env(rsyslog: Rsyslog, name: Input, capture: str = "hmac") -> dict[str, str]:
    settings = rsyslog.settings(name)
    env = {
        "ZGUARD_GENERATION__MIN_SIDE": "16",
        "ZGUARD_AUDIT__PROMPT_CAPTURE": capture,
        "ZGUARD_AUDIT__SYSLOG__TRANSPORT": settings.transport,
        "ZGUARD_AUDIT__SYSLOG__HOST": settings.host,
        "ZGUARD_AUDIT__SYSLOG__PORT": str(settings.port),
        "ZGUARD_AUDIT__SYSLOG__MAX_BACKOFF_S": "0.5",
        "ZGUARD_AUDIT__SYSLOG__TIMEOUT_S": "2",
    }
    if settings.ca_file is not None:
        env |= {
            "ZGUARD_AUDIT__SYSLOG__CA_FILE": str(settings.ca_file),
            "ZGUARD_AUDIT__SYSLOG__SERVER_NAME": str(settings.server_name),
        }
    return env


def _stored_ids(state: Path) -> set[str]:
    engine = create_store_engine(f"sqlite:///{state / 'zguard.db'}")
    try:
        return {e.event_id for e in AuditStore(engine).iter_events()}
    finally:
        engine.dispose()


def _received(rsyslog: Rsyslog, name: Input) -> list[str]:
    return [parse_line(line).params["id"] for line in rsyslog.lines(name)]


def _wait_for(rsyslog: Rsyslog, name: Input, ids: set[str], timeout: float = 30) -> set[str]:
    wait_until(
        lambda: ids <= set(_received(rsyslog, name)),
        timeout=timeout,
        interval=0.1,
        what=lambda: (
            f"{len(ids)} stored events on {name}, {len(ids - set(_received(rsyslog, name)))} never reached syslog"
        ),
    )
    return set(_received(rsyslog, name))


@pytest.mark.parametrize(("name", "capture"), [("tcp", "hmac"), ("tls", "none")])
def test_served_events_reach_the_collector_without_the_prompt(
    tmp_path: Path, rsyslog: Rsyslog, name: Input, capture: str
) -> None:
    state = tmp_path / "state"
    server = ZguardProcess(state, env=_env(rsyslog, name, capture)).start()
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.api, timeout=30) as client:
            assert client.post("/v1/images/generations", json=GENERATE).status_code == 200
            assert client.get("/healthz").status_code == 200
        assert server.stop() == 0
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
    stored = _stored_ids(state)
    got = _wait_for(rsyslog, name, stored)
    assert stored <= got, f"{len(stored - got)} stored event(s) never reached syslog"
    raw = rsyslog.output(name).read_bytes()
    types = {json.loads(parse_line(line).msg)["type"] for line in rsyslog.lines(name)}
    assert {"server.started", "model.loaded", "generation.accepted", "generation.completed", "server.stopped"} <= types
    assert "audit.checkpoint" in types  # the closing checkpoint anchors the head off-host
    for needle in (PROMPT, "violet submarine", "翡翠港口", "canary-91c2"):
        assert needle.encode() not in raw
        assert json.dumps(needle).encode() not in raw


def test_collector_outage_across_a_zguard_restart_loses_nothing(tmp_path: Path, rsyslog: Rsyslog) -> None:
    state = tmp_path / "state"
    env = _env(rsyslog, "tcp")
    first = ZguardProcess(state, env=env).start()
    try:
        first.wait_ready()
        with httpx.Client(base_url=first.api, timeout=10) as client:
            for _ in range(50):
                client.get("/healthz")
            rsyslog.stop()  # the collector goes down under load
            for _ in range(200):
                client.get("/healthz")
        assert first.stop() == 0  # zguard restarts while it is down
        second = ZguardProcess(state, env=env).start()
        try:
            second.wait_ready()
            with httpx.Client(base_url=second.api, timeout=10) as client:
                for _ in range(100):
                    client.get("/healthz")
            rsyslog.start()  # ...and comes back
            with httpx.Client(base_url=second.api, timeout=10) as client:
                for _ in range(20):
                    client.get("/healthz")
            stored = _stored_ids(state)
            got = _wait_for(rsyslog, "tcp", stored, timeout=60)
        finally:
            second.stop()
    finally:
        if first.proc is not None and first.proc.poll() is None:
            first.proc.kill()
    missing = stored - got
    assert not missing, f"{len(missing)} of {len(stored)} events never reached syslog"
    assert len(stored) > 370
