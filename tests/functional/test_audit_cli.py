"""`zguard audit ...`, run in-process through `zguard.cli.main.main` against real databases.

Each test gets a SQLite file in tmp_path (verify and purge also a PostgreSQL schema), migrated
with `zguard db upgrade`, and writes events through an `AuditStore` opened the way `serve` opens
it. Tampering is done with raw SQL, as someone with database access would.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from tests.common.aged_events import DAY_S, append_aged
from tests.common.cli import ZguardCli
from tests.common.databases import BACKENDS, database_url_for
from zguard.audit.formats import CSV_COLUMNS
from zguard.audit.retention import purge
from zguard.audit.setup import open_audit_store, prompt_capture
from zguard.audit.store import AuditStore
from zguard.cli import audit as audit_cli
from zguard.cli.main import main
from zguard.security.keys import load_public_key
from zguard.state_paths import audit_archive_dir, audit_signing_key_file
from zguard.store.database import create_store_engine, database_url

backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


class Zguard(ZguardCli):
    """Runs `zguard ...` against one settings file; opens its audit store to write and tamper."""

    @contextmanager
    def store(self) -> Iterator[tuple[Engine, AuditStore]]:
        engine = create_store_engine(database_url(self.settings))
        store = open_audit_store(self.settings, engine)
        try:
            yield engine, store
        finally:
            store.close()
            engine.dispose()

    def sql(self, statement: str) -> None:
        with self.store() as (engine, _), engine.begin() as conn:
            conn.execute(text(statement))

    def events(self, kind: str) -> list[dict[str, object]]:
        with self.store() as (_, store):
            return [json.loads(e.body) for e in store.iter_events() if e.type == kind]


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    name: str = getattr(request, "param", "sqlite")
    return name


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[URL]:
    with database_url_for(backend, tmp_path) as url:
        yield url


def write_config(tmp_path: Path, url: URL, extra: str = "") -> Path:
    config = tmp_path / "zguard.yaml"
    body = f"state_dir: {tmp_path / 'state'}\n"
    if url.drivername != "sqlite":
        body += f"database:\n  url: '{url.render_as_string(hide_password=False)}'\n"
    config.write_text(body + extra, encoding="utf-8")
    return config


@pytest.fixture
def zguard(tmp_path: Path, db_url: URL, capsys: pytest.CaptureFixture[str]) -> Zguard:
    runner = Zguard(write_config(tmp_path, db_url), capsys)
    runner.ok("db", "upgrade")
    return runner


@pytest.fixture
def filled(zguard: Zguard) -> Zguard:
    """Six events by alice and bob, signed by a checkpoint (event 7)."""
    with zguard.store() as (_, store):
        append_aged(store, 3, days_ago=2, principal="alice")
        append_aged(store, 3, days_ago=1, principal="bob", type="auth.denied", outcome="denied", code="invalid_api_key")
        store.checkpoint()
    return zguard


# --- verify --------------------------------------------------------------------------------------


@backends
def test_verify_passes_on_an_intact_trail_and_names_an_edited_event(filled: Zguard) -> None:
    out = filled.ok("audit", "verify")
    assert out.startswith("audit trail intact: 7 event(s) (events 1..7), 1 checkpoint(s) checked")

    filled.sql("UPDATE audit_events SET body = replace(body, 'alice', 'mallory') WHERE seq = 2")
    code, out, _ = filled("audit", "verify")

    assert code == 1
    assert "NOT intact: edited at event 2" in out
    with filled.store() as (_, store):
        (second,) = store.iter_events(after=1, until=2)
    assert second.event_id in out
    code, out, _ = filled("audit", "verify", "--json")
    assert code == 1
    assert json.loads(out)["problem"]["kind"] == "edited"
    assert json.loads(out)["problem"]["seq"] == 2


@pytest.mark.parametrize(
    ("statement", "kind", "seq"),
    [
        ("DELETE FROM audit_events WHERE seq = 3", "deleted", 3),
        ("DELETE FROM audit_events WHERE seq >= 6", "truncated", 6),
        ("UPDATE audit_events SET principal = 'mallory' WHERE seq = 4", "edited", 4),
    ],
)
def test_verify_names_each_kind_of_tampering(filled: Zguard, statement: str, kind: str, seq: int) -> None:
    filled.sql(statement)
    code, out, _ = filled("audit", "verify", "--json")
    assert code == 1
    problem = json.loads(out)["problem"]
    assert (problem["kind"], problem["seq"]) == (kind, seq), problem["message"]


def test_verify_with_another_public_key_finds_the_checkpoints_forged(filled: Zguard, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from zguard.security.keys import public_pem

    other = tmp_path / "other.pub.pem"
    other.write_text(public_pem(Ed25519PrivateKey.generate().public_key()))
    code, out, _ = filled("audit", "verify", "--public-key", str(other))
    assert code == 1
    assert "forged_checkpoint at event 7" in out


def test_verify_without_a_signing_key_is_refused(zguard: Zguard) -> None:
    err = zguard.refused("audit", "verify")
    assert "no signing key" in err
    assert "--public-key" in err


def test_public_key_prints_the_signing_keys_public_half(filled: Zguard, tmp_path: Path) -> None:
    pem = filled.ok("audit", "public-key")
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    saved = tmp_path / "offhost.pem"
    saved.write_text(pem)
    assert load_public_key(saved) == load_public_key(audit_signing_key_file(filled.settings))
    assert filled.ok("audit", "verify", "--public-key", str(saved)).startswith("audit trail intact")


def test_a_database_that_is_not_migrated_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runner = Zguard(write_config(tmp_path, URL.create("sqlite")), capsys)
    err = runner.refused("audit", "status")
    assert "run `zguard init`" in err


# --- status, checkpoint, tail, search ---------------------------------------------------------------


def test_status_shows_head_checkpoint_and_cursor_lag(filled: Zguard) -> None:
    with filled.store() as (_, store):
        store.advance_cursor("syslog", 5)
        append_aged(store, 2, days_ago=0)
    status = json.loads(filled.ok("audit", "status", "--json"))
    assert (status["head_seq"], status["events"], status["base_seq"]) == (9, 9, 0)
    assert (status["last_checkpoint_covers"], status["unsigned"]) == (6, 3)
    assert status["cursors"] == {"syslog": {"seq": 5, "lag": 4}}
    human = filled.ok("audit", "status")
    assert "cursor syslog:" in human
    assert "lag 4" in human


def test_checkpoint_signs_the_head_now(filled: Zguard) -> None:
    assert "nothing new since the last checkpoint, which covers event 6" in filled.ok("audit", "checkpoint")
    with filled.store() as (_, store):
        append_aged(store, 1, days_ago=0)
    assert "checkpoint event 9 signs the chain through event 8" in filled.ok("audit", "checkpoint")
    assert filled.ok("audit", "verify").startswith("audit trail intact: 9 event(s)")


def test_tail_prints_the_latest_and_follows(filled: Zguard, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = filled.ok("audit", "tail", "-n", "2").splitlines()
    assert [line.split()[0] for line in lines] == ["6", "7"]

    polls: list[float] = []

    def sleep(seconds: float) -> None:
        if polls:
            raise KeyboardInterrupt
        polls.append(seconds)
        with filled.store() as (_, store):
            append_aged(store, 1, days_ago=0, principal="carol")

    monkeypatch.setattr(audit_cli, "_sleep", sleep)
    out = filled.ok("audit", "tail", "-n", "1", "--follow", "--json")
    bodies = [json.loads(line) for line in out.splitlines()]
    assert [(b["seq"], b["principal"]) for b in bodies] == [(7, "zguard"), (8, "carol")]


def test_search_filters_and_escapes_control_characters(filled: Zguard) -> None:
    out = filled.ok("audit", "search", "--principal", "bob", "--outcome", "denied", "--type", "auth")
    assert [line.split()[0] for line in out.splitlines()] == ["4", "5", "6"]
    assert "code=invalid_api_key" in out
    assert filled.ok("audit", "search", "--since", "36h", "--type", "auth.denied", "--limit", "1").count("\n") == 1
    assert filled.ok("audit", "search", "--until", "36h", "--principal", "bob") == ""

    with filled.store() as (_, store):
        append_aged(store, 1, days_ago=0, principal="eve\x1b[2J\nforged line")
    out = filled.ok("audit", "search", "--since", "1h", "--type", "generation")
    assert out.count("\n") == 1
    assert "\x1b" not in out
    assert "eve\\x1b[2J\\nforged line" in out


def test_tail_escapes_separators_and_bidi_and_quotes_forged_fields(filled: Zguard) -> None:
    """A stranger's username cannot break the line, reverse what is shown, or fake `code=`."""
    with filled.store() as (_, store):
        append_aged(store, 1, days_ago=0, principal="eve\u2028code=ok\u202egnp.exe", code="invalid_api_key")
        append_aged(store, 1, days_ago=0, principal='x code=internal_error client="10.0.0.1"', code="invalid_api_key")
    out = filled.ok("audit", "tail", "-n", "2")
    first, second = out.splitlines()
    for ch in ("\u2028", "\u202e"):
        assert ch not in out
    assert 'principal="eve\\u2028code=ok\\u202egnp.exe" code=invalid_api_key' in first
    assert 'principal="x code=internal_error client=\\"10.0.0.1\\"" code=invalid_api_key' in second
    assert " code=internal_error" not in second.replace('"x code=internal_error', "")
    json_out = filled.ok("audit", "tail", "-n", "2", "--json")
    assert "\u2028" not in json_out
    assert "\u202e" not in json_out
    assert "\\u2028" in json_out
    assert json.loads(json_out.splitlines()[0])["principal"] == "eve\u2028code=ok\u202egnp.exe"


def test_search_by_prompt_finds_the_generation_in_hmac_mode(filled: Zguard, monkeypatch: pytest.MonkeyPatch) -> None:
    capture = prompt_capture(filled.settings)  # creates the server's prompt key, as serve does
    with filled.store() as (_, store):
        for prompt in ("a red cat on a bank counter", "a blue dog"):
            append_aged(store, 1, days_ago=0, principal="carol", prompt=capture.fields(prompt, None))
    for stored in filled.settings.state_dir.glob("zguard.db*"):  # the WAL too
        assert b"a red cat" not in stored.read_bytes()

    out = filled.ok("audit", "search", "--prompt", "a red cat on a bank counter")
    assert [line.split()[0] for line in out.splitlines()] == ["8"]
    monkeypatch.setattr("sys.stdin", io.StringIO("a blue dog\n"))
    assert filled.ok("audit", "search", "--prompt", "-", "--json").count("\n") == 1
    code, out, err = filled("audit", "search", "--prompt", "a green bird")
    assert (code, out) == (0, "")
    assert "no events match" in err


# --- export --------------------------------------------------------------------------------------


def test_export_csv_neutralises_formula_cells(filled: Zguard, tmp_path: Path) -> None:
    with filled.store() as (_, store):
        append_aged(
            store,
            1,
            days_ago=0,
            principal='=HYPERLINK("http://evil","x")',
            client="+1+cmd|' /C calc'!A0",
            code="@SUM(1)",
            request_id="-2+3",
            listener="\tmain",
        )
    target = tmp_path / "out.csv"
    filled.ok("audit", "export", "--format", "csv", "--since", "1h", "--type", "generation", "--output", str(target))

    assert target.stat().st_mode & 0o777 == 0o600
    with target.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    (row,) = rows
    assert row["principal"] == '\'=HYPERLINK("http://evil","x")'
    assert row["client"] == "'+1+cmd|' /C calc'!A0"
    assert row["code"] == "'@SUM(1)"
    assert row["request_id"] == "'-2+3"
    assert row["listener"] == "'\tmain"
    assert row["type"] == "generation.completed"
    assert row["seq"] == "8"
    assert list(rows[0]) == list(CSV_COLUMNS)
    for cell in row.values():
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))

    assert "exists" in filled.refused("audit", "export", "--format", "csv", "--output", str(target))
    (exported,) = filled.events("audit.exported")
    detail = exported["detail"]
    assert isinstance(detail, dict)
    assert (detail["format"], detail["count"]) == ("csv", 1)


def test_export_csv_of_a_strangers_flood_reads_with_the_default_field_limit(filled: Zguard, tmp_path: Path) -> None:
    huge = "u" * 262_144  # a 256 KiB Basic username: 131,072 is Python's csv field limit
    with filled.store() as (_, store):
        append_aged(store, 3, days_ago=0, principal=huge, type="http.request", outcome="denied", detail={"token": huge})
    target = tmp_path / "flood.csv"
    filled.ok("audit", "export", "--format", "csv", "--since", "1h", "--type", "http.request", "--output", str(target))
    assert csv.field_size_limit() == 131_072
    with target.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    assert all(len(row["principal"]) <= 256 and row["principal"].startswith("uuu") for row in rows)
    assert target.stat().st_size < 3 * 4_096


def test_export_jsonl_is_the_stored_events_byte_for_byte(filled: Zguard) -> None:
    out = filled.ok("audit", "export", "--principal", "alice")
    with filled.store() as (_, store):
        expected = [e.body for e in store.iter_events() if e.seq <= 3]
    assert out.splitlines() == expected


# --- reveal and keygen -------------------------------------------------------------------------------


@pytest.fixture
def sealed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Zguard, str, Path]:
    """A trail in `encrypted` capture mode with one generation, its event id, and the auditor's key."""
    plain = Zguard(write_config(tmp_path, URL.create("sqlite")), capsys)
    keys = tmp_path / "auditor"
    out = plain.ok("audit", "keygen", str(keys))
    assert "never on the server" in out
    assert (keys / "auditor-prompt.pem").stat().st_mode & 0o777 == 0o600
    extra = f"audit:\n  prompt_capture: encrypted\n  auditor_public_key_file: {keys / 'auditor-prompt.pub.pem'}\n"
    runner = Zguard(write_config(tmp_path, URL.create("sqlite"), extra), capsys)
    runner.ok("db", "upgrade")
    fields = prompt_capture(runner.settings).fields("合同 秘密 prompt\x1b[31m", "blurry")
    with runner.store() as (_, store):
        (stored,) = append_aged(store, 1, days_ago=0, prompt=fields)
    return runner, stored.event_id, keys / "auditor-prompt.pem"


def test_reveal_opens_the_sealed_prompt_and_is_recorded(sealed: tuple[Zguard, str, Path]) -> None:
    zguard, event_id, key = sealed
    out = zguard.ok("audit", "reveal", event_id, "--key", str(key))
    assert out.splitlines() == ["prompt: 合同 秘密 prompt\\x1b[31m", "negative_prompt: blurry"]
    opened = json.loads(zguard.ok("audit", "reveal", event_id, "--key", str(key), "--json"))
    assert opened["prompt"] == "合同 秘密 prompt\x1b[31m"

    revealed = zguard.events("audit.prompt_revealed")
    assert len(revealed) == 2
    detail = revealed[0]["detail"]
    assert isinstance(detail, dict)
    assert (detail["event_id"], detail["fields"]) == (event_id, "prompt,negative_prompt")
    assert "秘密" not in json.dumps(revealed, ensure_ascii=False)


def test_reveal_shows_nothing_when_its_event_cannot_be_recorded(
    sealed: tuple[Zguard, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the prompt was printed even when its audit.prompt_revealed event could not be written
    from sqlalchemy.exc import OperationalError

    from zguard.audit.store import AuditStore

    zguard, event_id, key = sealed

    def refuse(self: AuditStore, events: object) -> None:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(AuditStore, "append", refuse)
    code, out, err = zguard("audit", "reveal", event_id, "--key", str(key))
    assert code == 3
    assert out == ""
    assert "秘密" not in err
    assert "audit.prompt_revealed could not be recorded" in err
    assert "nothing was shown" in err


def test_reveal_with_the_wrong_key_fails_cleanly(sealed: tuple[Zguard, str, Path], tmp_path: Path) -> None:
    zguard, event_id, _ = sealed
    zguard.ok("audit", "keygen", str(tmp_path / "other"))
    err = zguard.refused("audit", "reveal", event_id, "--key", str(tmp_path / "other" / "auditor-prompt.pem"))
    assert "does not open" in err
    assert "秘密" not in err
    assert zguard.events("audit.prompt_revealed") == []
    assert "not a usable X25519 private key" in zguard.refused(
        "audit", "reveal", event_id, "--key", str(audit_signing_key_file(zguard.settings))
    )
    assert "no audit event" in zguard.refused(
        "audit", "reveal", "0" * 32, "--key", str(tmp_path / "other" / "auditor-prompt.pem")
    )


def test_reveal_of_an_hmac_event_says_there_is_nothing_sealed(filled: Zguard, tmp_path: Path) -> None:
    filled.ok("audit", "keygen", str(tmp_path / "keys"))
    with filled.store() as (_, store):
        event = next(store.iter_events())
    err = filled.refused("audit", "reveal", event.event_id, "--key", str(tmp_path / "keys" / "auditor-prompt.pem"))
    assert "holds no sealed prompt" in err


def test_keygen_never_overwrites_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runner = Zguard(write_config(tmp_path, URL.create("sqlite")), capsys)
    runner.ok("audit", "keygen", str(tmp_path / "keys"))
    before = (tmp_path / "keys" / "auditor-prompt.pem").read_bytes()
    assert "already holds" in runner.refused("audit", "keygen", str(tmp_path / "keys"))
    assert (tmp_path / "keys" / "auditor-prompt.pem").read_bytes() == before


# --- purge and archives ----------------------------------------------------------------------------


@backends
def test_purge_then_verify_and_verify_archive(zguard: Zguard) -> None:
    with zguard.store() as (_, store):
        append_aged(store, 5, days_ago=200)
        append_aged(store, 2, days_ago=1)
    assert "would archive and delete events 1..5 (5)" in zguard.ok("audit", "purge", "--dry-run")

    out = zguard.ok("audit", "purge")
    assert "archived 5 event(s) (1..5)" in out
    (archive,) = audit_archive_dir(zguard.settings).glob("*.jsonl")
    assert str(archive) in out
    assert "purged through event 5" in zguard.ok("audit", "verify")
    assert ": intact: 5 event(s) 1..5" in zguard.ok("audit", "verify-archive", str(archive))
    (purged,) = zguard.events("audit.purged")
    assert str(purged["principal"]).startswith("cli:")
    assert "nothing to purge" in zguard.ok("audit", "purge")

    lines = archive.read_text().splitlines()
    lines[1] = lines[1].replace('"alice"', '"mallory"')
    archive.write_text("\n".join(lines) + "\n")
    code, out, _ = zguard("audit", "verify-archive", str(archive))
    assert code == 1
    assert "NOT intact: edited at event 2" in out


def test_verify_archive_checks_that_archives_link_up(zguard: Zguard) -> None:
    with zguard.store() as (_, store):
        append_aged(store, 3, days_ago=400)
        store.checkpoint()
        append_aged(store, 3, days_ago=300)
        store.checkpoint()
        append_aged(store, 1, days_ago=1)
    with zguard.store() as (_, store):
        first = purge(store, zguard.settings, now=time.time() - 150 * DAY_S)  # events 1..3 only
        second = purge(store, zguard.settings, now=time.time() + 200 * DAY_S)  # the rest
    assert first.archive is not None
    assert second.archive is not None
    paths = [str(first.archive.path), str(second.archive.path)]
    assert zguard.ok("audit", "verify-archive", *paths).count(": intact:") == 2
    report = json.loads(zguard("audit", "verify-archive", paths[1], "--json")[1])
    assert report[0]["ok"]

    # An intact archive that does not continue the one before it: events between were lost.
    with zguard.store() as (_, store):
        append_aged(store, 2, days_ago=1)
        third = purge(store, zguard.settings, now=time.time() + 400 * DAY_S)
    assert third.archive is not None
    code, out, _ = zguard("audit", "verify-archive", paths[0], str(third.archive.path))
    assert code == 1
    assert "does not continue" in out


def test_purge_held_back_by_the_syslog_cursor_exits_2(zguard: Zguard) -> None:
    with zguard.store() as (_, store):
        append_aged(store, 4, days_ago=200)
        store.advance_cursor("syslog", 0)
    code, out, err = zguard("audit", "purge")
    assert code == 2
    assert "nothing to purge" in out
    assert "syslog forwarder has delivered only through event 0" in err
    assert list(audit_archive_dir(zguard.settings).glob("*.jsonl")) == []


# --- settings and parsing -------------------------------------------------------------------------


def test_config_check_refuses_a_retention_below_the_floor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, URL.create("sqlite"), "audit:\n  retention_days: 30\n")
    code = main(["config", "check", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2
    assert "audit.retention_days" in err
    assert "180-day floor" in err
