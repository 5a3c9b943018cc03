"""Issue 18: the console's audit pages: search, keyset paging, one event's detail and chain
position, the chain's state, and exports; their JSON API twin.

Most tests run on a real hash-chained trail in SQLite (`audited`): every request the console
answers, the sign-ins included, is an event there, with its hash and checkpoint state. One runs
on the suite's `console` fixture (an in-memory sink, which is also a reader) to show the pages
serve whatever reader the services hold.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.common.audit import append_events, audit_trail, sqlite_url
from tests.common.engines import GatedEngine
from tests.common.factories import LOOPBACK_PEER, make_settings, ready_runtime
from tests.functional.test_auth import KEY, backend, database, deploy  # noqa: F401
from tests.functional.test_console_sessions import (  # noqa: F401
    PAGE,
    PASSWORD,
    SAME_ORIGIN,
    Console,
    console,
    csrf_of,
    sign_in,
    signed_in,
)
from zguard.app.console import audit as console_audit
from zguard.app.console import create_console_app
from zguard.app.console.audit import EXPORT_ROWS_MAX, PAGE_ROWS, csv_cell
from zguard.app.console.web import translate
from zguard.audit.setup import AuditHealth
from zguard.audit.trail import AuditTrail
from zguard.config import Settings
from zguard.security.passwords import hash_password
from zguard.serve.wiring import Runtime, build_auth
from zguard.store.principals import PrincipalStore

pytestmark = pytest.mark.anyio

FORMULA = "=cmd|' /C calc'!A0"
MARKUP = "<script>x</script>"
ROW_LINK = re.compile(r'href="/audit/events/([0-9a-f]{32})\?seq=(\d+)"')


@dataclasses.dataclass
class Audited:
    settings: Settings
    runtime: Runtime
    trail: AuditTrail
    store: PrincipalStore

    def user(self, name: str, role: str) -> None:
        self.store.create_principal(name, "user", roles=[role], password_hash=hash_password(PASSWORD, cost=4))

    def client(self, **replace: Any) -> httpx.AsyncClient:
        services = dataclasses.replace(self.runtime.services, audit_health=AuditHealth(self.trail), **replace)
        app = create_console_app(self.settings, services)
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=LOOPBACK_PEER), base_url="http://console.test"
        )

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(e.body) for e in self.trail.store.iter_events()]


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[AuditTrail]:
    with audit_trail(sqlite_url(tmp_path), tmp_path / "keys") as t:
        yield t


@pytest.fixture
def audited(tmp_path: Path, trail: AuditTrail) -> Iterator[Audited]:
    settings = make_settings(
        tmp_path / "state", api_auth={"enabled": True}, generation={"min_side": 16}, console={"totp_required_roles": []}
    )
    store = PrincipalStore(trail.store.engine)
    runtime = ready_runtime(settings, GatedEngine(), build_auth(settings, store, KEY, audit=trail))
    a = Audited(settings, runtime, trail, store)
    a.user("audrey", "auditor")
    a.user("dana", "generator")
    a.user("ada", "admin")
    try:
        yield a
    finally:
        assert runtime.worker.stop(timeout=10)


def links(page: httpx.Response) -> list[tuple[str, int]]:
    return [(event_id, int(seq)) for event_id, seq in ROW_LINK.findall(page.text)]


# --- search ----------------------------------------------------------------------------------


async def test_an_auditor_finds_the_events_of_a_sign_in_by_principal(audited: Audited) -> None:
    async with audited.client() as dana, audited.client() as audrey:
        await signed_in(dana, "dana")
        await signed_in(audrey, "audrey")
        resp = await audrey.get("/audit", params={"principal": "dana"}, headers=PAGE)
    assert resp.status_code == 200, resp.text
    found = links(resp)
    assert found
    wanted = [b for b in audited.bodies() if b["principal"] == "dana"]
    assert [seq for _id, seq in found] == [b["seq"] for b in wanted]
    assert any(b["type"] == "console.login" and b["outcome"] == "allowed" for b in wanted)
    assert "console.login" in resp.text
    assert "audrey" not in resp.text.split('id="events"')[1]  # the auditor's own requests are filtered out
    assert 'id="chain"' in resp.text
    assert 'for="f-principal"' in resp.text
    assert 'id="export-csv"' in resp.text  # auditors hold audit:export


async def test_the_chain_status_shows_the_head_and_checkpoint(audited: Audited) -> None:
    append_events(audited.trail.store, 3)
    audited.trail.store.checkpoint()
    head = audited.trail.store.head()
    async with audited.client() as client:
        await signed_in(client, "audrey")
        resp = await client.get("/audit", headers=PAGE)
    assert resp.status_code == 200
    chain = resp.text.split('id="chain"')[1].split("</table>")[0]
    assert head.checkpoint_seq > 0
    assert f"<td>{head.checkpoint_seq} (" in chain
    shown = re.search(r"Head \(last sequence number\)</th><td>(\d+)</td>", chain)
    assert shown
    assert int(shown.group(1)) == audited.trail.store.head().seq - 1  # all but this page's own event
    assert "Syslog forwarding</th><td>off" in chain


async def test_paging_by_after_returns_the_next_events_and_no_duplicates(audited: Audited) -> None:
    total = PAGE_ROWS * 2 + 7
    append_events(audited.trail.store, total, principal="alice")
    seen: list[int] = []
    async with audited.client() as client:
        await signed_in(client, "audrey")
        url: str | None = "/audit?principal=alice"
        pages = 0
        while url is not None:
            resp = await client.get(url, headers=PAGE)
            assert resp.status_code == 200, resp.text
            seen += [seq for _id, seq in links(resp)]
            found = re.search(r'href="(/audit\?[^"]+)" id="next-page"', resp.text)
            url = found.group(1).replace("&amp;", "&") if found else None
            if url is not None:
                assert f"after={seen[-1]}" in url  # the cursor is the last row shown: keyset, not OFFSET
                assert "principal=alice" in url  # the filters travel with it
            pages += 1
    assert pages == 3
    assert len(seen) == total
    assert seen == sorted(set(seen))


async def test_bad_filters_are_shown_next_to_their_field(audited: Audited) -> None:
    async with audited.client() as client:
        await signed_in(client, "audrey")
        resp = await client.get("/audit", params={"since": "yesterday", "outcome": "maybe"}, headers=PAGE)
        cursor = await client.get("/audit", params={"after": "-1"}, headers=PAGE)
        export = await client.get("/audit/export.csv", params={"until": "soon"})
    assert resp.status_code == 400
    assert re.search(r'role="alert" class="error" id="since-error">ISO 8601', resp.text)
    assert 'id="outcome-error"' in resp.text
    assert 'aria-describedby="time-hint since-error"' in resp.text
    assert 'id="events"' not in resp.text
    assert cursor.status_code == 400
    assert 'id="after-error"' in cursor.text
    assert export.status_code == 400
    assert export.json()["error"]["code"] == "invalid_value"
    assert export.json()["error"]["param"] == "until"


# --- permissions -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dana", "ada"])
async def test_admins_and_generators_may_not_read_or_export_the_trail(audited: Audited, name: str) -> None:
    append_events(audited.trail.store, 1)
    [event] = audited.trail.store.search(limit=1)
    async with audited.client() as client:
        await signed_in(client, name)
        for path in (
            "/audit",
            f"/audit/events/{event.event_id}?seq={event.seq}",
            "/audit/export.csv",
            "/audit/export.jsonl",
        ):
            resp = await client.get(path, headers=PAGE)
            assert resp.status_code == 403, path
            assert "permission_denied" in resp.text
            assert "alice" not in resp.text
        api = await client.get("/console/api/audit/events")
        detail = await client.get(f"/console/api/audit/events/{event.event_id}", params={"seq": event.seq})
        home = await client.get("/", headers=PAGE)
    assert api.status_code == 403
    assert api.json()["error"]["code"] == "permission_denied"
    assert detail.status_code == 403
    assert 'href="/audit"' not in home.text
    assert not [b for b in audited.bodies() if b["type"].startswith("audit.export")]


async def test_the_memory_sink_is_a_reader_too(console: Console) -> None:
    """The suite's `console` fixture: an in-memory sink, read through the same pages."""
    console.d.principal("audrey", "auditor", kind="user", password=PASSWORD)
    async with console.client() as dana, console.client() as audrey:
        await signed_in(dana, "dana")
        await signed_in(audrey, "audrey")
        resp = await audrey.get("/audit", params={"principal": "dana", "type": "console.login"}, headers=PAGE)
        generator = await dana.get("/audit", headers=PAGE)
    assert resp.status_code == 200, resp.text
    assert len(links(resp)) == 1
    assert "console.login" in resp.text
    assert "No hash-chained audit store" in resp.text  # AuditHealth() without a trail
    assert generator.status_code == 403


async def test_without_a_readable_trail_the_pages_say_so(audited: Audited) -> None:
    async with audited.client(audit_reader=None) as client:
        await signed_in(client, "audrey")
        resp = await client.get("/audit", headers=PAGE)
        detail = await client.get(f"/audit/events/{'0' * 32}?seq=1", headers=PAGE)
        api = await client.get("/console/api/audit/events")
        export = await client.get("/audit/export.jsonl")
    assert resp.status_code == 503
    assert 'id="not-readable"' in resp.text
    assert detail.status_code == 503
    assert api.status_code == 503
    assert api.json()["error"]["code"] == "audit_unavailable"
    assert export.status_code == 503


# --- one event -------------------------------------------------------------------------------


async def test_the_event_page_shows_its_fields_escaped_and_its_chain_position(audited: Audited) -> None:
    async with audited.client() as stranger, audited.client() as client:
        refused = await sign_in(stranger, MARKUP, "wrong password")
        assert refused.status_code == 401
        await signed_in(client, "audrey")
        listing = await client.get("/audit", params={"principal": MARKUP}, headers=PAGE)
        [(event_id, seq)] = links(listing)
        resp = await client.get(f"/audit/events/{event_id}", params={"seq": seq}, headers=PAGE)
        wrong_seq = await client.get(f"/audit/events/{event_id}", params={"seq": seq + 1}, headers=PAGE)
        no_seq = await client.get(f"/audit/events/{event_id}", headers=PAGE)
        api = await client.get(f"/console/api/audit/events/{event_id}", params={"seq": seq})
    stored = audited.trail.store.get(event_id)
    assert stored is not None
    for page in (listing, resp):
        assert MARKUP not in page.text
        assert "&lt;script&gt;x&lt;/script&gt;" in page.text
    assert resp.status_code == 200, resp.text
    assert stored.hash in resp.text
    assert stored.prev_hash in resp.text
    assert len(stored.prev_hash) == 64
    assert "<code>principal</code>" in resp.text
    assert "<code>http.path</code></th><td>/login</td>" in resp.text
    assert "<code>code</code></th><td>invalid_api_key</td>" in resp.text
    assert "<code>model</code></th><td>null</td>" in resp.text  # every field, the unknown ones too
    assert "<code>roles</code></th><td>[]</td>" in resp.text
    assert "not yet covered by a checkpoint" in resp.text
    assert wrong_seq.status_code == 404
    assert no_seq.status_code == 404
    assert api.status_code == 200
    body = api.json()
    assert body["event"]["principal"] == MARKUP
    assert body["chain"] == {"seq": seq, "hash": stored.hash, "prev_hash": stored.prev_hash, "checkpointed": False}


# --- exports ---------------------------------------------------------------------------------


async def test_csv_export_has_its_header_quotes_formulas_and_is_audited(audited: Audited) -> None:
    async with audited.client() as stranger, audited.client() as client:
        assert (await sign_in(stranger, FORMULA, "wrong password")).status_code == 401
        await signed_in(client, "audrey")
        resp = await client.get("/audit/export.csv", params={"principal": FORMULA})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/csv")
    assert resp.headers["x-export-row-limit"] == str(EXPORT_ROWS_MAX)
    assert "attachment" in resp.headers["content-disposition"]
    lines = resp.text.splitlines()
    assert lines[0].startswith("seq,event_id,time,type,outcome,code,principal,")
    assert len(lines) == 2
    assert "'" + FORMULA in lines[1]
    assert f",{FORMULA}" not in lines[1]
    [exported] = [b for b in audited.bodies() if b["type"] == "audit.exported"]
    assert exported["principal"] == "audrey"
    assert exported["detail"]["rows"] == 1
    assert exported["detail"]["principal"] == FORMULA
    assert exported["detail"]["format"] == "csv"
    assert exported["detail"]["truncated"] is False
    [started] = [b for b in audited.bodies() if b["type"] == "audit.export"]
    assert started["http"]["path"] == "/audit/export.csv"
    assert started["detail"]["row_limit"] == EXPORT_ROWS_MAX


async def test_jsonl_export_streams_every_page_with_the_filters(audited: Audited) -> None:
    append_events(audited.trail.store, 1500, principal="alice")  # more than one reader page (1000)
    append_events(audited.trail.store, 3, principal="bob")
    async with audited.client() as client:
        await signed_in(client, "audrey")
        resp = await client.get("/audit/export.jsonl", params={"principal": "alice", "after": "5"})
    assert resp.status_code == 200
    rows = [json.loads(line) for line in resp.text.splitlines()]
    wanted = [b["seq"] for b in audited.bodies() if b["principal"] == "alice" and b["seq"] > 5]
    assert len(wanted) > 1000
    assert {r["principal"] for r in rows} == {"alice"}
    seqs = [r["seq"] for r in rows]
    assert seqs == wanted
    assert all(len(r["hash"]) == 64 for r in rows)
    [exported] = [b for b in audited.bodies() if b["type"] == "audit.exported"]
    assert exported["detail"]["rows"] == len(rows)
    assert exported["detail"]["after"] == 5


async def test_an_export_stops_at_its_row_limit_and_says_so(audited: Audited, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_audit, "EXPORT_ROWS_MAX", 3)
    append_events(audited.trail.store, 5, principal="alice")
    async with audited.client() as client:
        await signed_in(client, "audrey")
        resp = await client.get("/audit/export.jsonl", params={"principal": "alice"})
        rest = await client.get("/audit/export.jsonl", params={"principal": "alice", "after": "3"})
    assert resp.headers["x-export-row-limit"] == "3"
    assert [json.loads(line)["seq"] for line in resp.text.splitlines()] == [1, 2, 3]
    assert [json.loads(line)["seq"] for line in rest.text.splitlines()] == [4, 5]
    first, second = [b["detail"] for b in audited.bodies() if b["type"] == "audit.exported"]
    assert (first["rows"], first["truncated"]) == (3, True)
    assert (second["rows"], second["truncated"]) == (2, False)


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted() -> None:
    for start in ("=", "+", "-", "@", "\t", "\r"):
        assert csv_cell(start + "1+1") == "'" + start + "1+1"
    assert csv_cell("plain") == "plain"
    assert csv_cell(None) == ""
    assert csv_cell(["admin"]) == '["admin"]'
    assert csv_cell(-3) == "'-3"


# --- API twin and languages ------------------------------------------------------------------


async def test_the_console_api_serves_the_same_pages_as_v1(audited: Audited) -> None:
    append_events(audited.trail.store, 5, principal="alice")
    async with audited.client() as client:
        await signed_in(client, "audrey")
        first = await client.get("/console/api/audit/events", params={"principal": "alice", "limit": 2})
        v1 = await client.get("/v1/audit/events", params={"principal": "alice", "limit": 2})
        second = await client.get(
            "/console/api/audit/events", params={"principal": "alice", "limit": 2, "after": first.json()["next_after"]}
        )
        too_big = await client.get("/console/api/audit/events", params={"limit": 1001})
        bad_time = await client.get("/console/api/audit/events", params={"since": "yesterday"})
    assert first.status_code == 200, first.text
    assert first.json() == v1.json()
    assert [e["seq"] for e in first.json()["data"]] == [1, 2]
    assert [e["seq"] for e in second.json()["data"]] == [3, 4]
    assert too_big.status_code == 400
    assert bad_time.status_code == 400
    assert bad_time.json()["error"]["param"] == "since"


async def test_the_audit_pages_speak_chinese(audited: Audited) -> None:
    append_events(audited.trail.store, 1)
    zh = {**PAGE, "accept-language": "zh-CN"}
    async with audited.client() as client:
        await signed_in(client, "audrey")
        resp = await client.get("/audit", headers=zh)
        [(event_id, seq)] = links(resp)[:1]
        detail = await client.get(f"/audit/events/{event_id}", params={"seq": seq}, headers=zh)
        bad = await client.get("/audit", params={"since": "yesterday"}, headers=zh)
    assert resp.status_code == 200
    assert translate("zh-CN", "Audit trail") in resp.text
    assert translate("zh-CN", "Chain status") in resp.text
    assert "Audit trail" not in resp.text
    assert translate("zh-CN", "Position in the chain") in detail.text
    assert translate("zh-CN", "Recorded fields") in detail.text
    assert translate("zh-CN", "Position in the chain") != "Position in the chain"
    assert bad.status_code == 400
    assert translate("zh-CN", "ISO 8601 (2026-11-26T09:00:00Z, UTC when no zone is given) or UNIX milliseconds.") in (
        bad.text
    )
