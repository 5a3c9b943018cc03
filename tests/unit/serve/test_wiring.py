"""`zguard.serve.wiring`: the demo token issued on the demo model's first start."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from zguard.audit.memory import MemoryAuditSink
from zguard.config import Settings
from zguard.serve.wiring import issue_demo_token, retire_demo_account
from zguard.store.database import create_store_engine
from zguard.store.migrate import upgrade
from zguard.store.principals import PrincipalStore


def test_demo_token_printed_on_a_terminal_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import re

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    engine = create_store_engine(f"sqlite:///{tmp_path}/z.db")
    upgrade(engine)
    store = PrincipalStore(engine)
    out = Terminal()
    monkeypatch.setattr("sys.stdout", out)
    issue_demo_token(Settings.model_validate({"state_dir": str(tmp_path / "state")}), store, bytes(32))
    [token] = set(re.findall(r"zg_[0-9A-Za-z]{42}", out.getvalue()))
    assert f"Authorization: Bearer {token}" in out.getvalue()
    assert not (tmp_path / "state" / "demo-token").exists()
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PrincipalStore]:
    engine = create_store_engine(f"sqlite:///{tmp_path}/z.db")
    upgrade(engine)
    yield PrincipalStore(engine)
    engine.dispose()


def test_the_demo_token_expires_like_any_other(tmp_path: Path, store: PrincipalStore) -> None:
    issue_demo_token(Settings.model_validate({"state_dir": str(tmp_path / "state")}), store, bytes(32))
    [token] = store.list_tokens("demo")
    assert token.expires_at is not None
    assert timedelta(days=89) < token.expires_at - datetime.now(UTC) <= timedelta(days=90)


def test_serving_a_real_model_disables_the_demo_account(tmp_path: Path, store: PrincipalStore) -> None:
    # after model.path was set to a real model, the demo's never-expiring token kept generating
    issue_demo_token(Settings.model_validate({"state_dir": str(tmp_path / "state")}), store, bytes(32))
    sink = MemoryAuditSink()
    assert retire_demo_account(store, sink)
    record = store.get_principal("demo")
    assert record is not None
    assert not record.enabled
    [event] = sink.events
    assert (event.type, event.principal, event.detail["target"]) == ("user.disabled", "server", "demo")
    assert not retire_demo_account(store, sink)  # once
    assert len(sink.events) == 1


def test_an_operators_own_demo_account_is_left_alone(store: PrincipalStore) -> None:
    store.create_principal("demo", "service", roles=["generator"])
    store.add_token("demo", token_hash="a" * 64, prefix="zg_abcd", label="showroom")
    assert not retire_demo_account(store, MemoryAuditSink())
    record = store.get_principal("demo")
    assert record is not None
    assert record.enabled
