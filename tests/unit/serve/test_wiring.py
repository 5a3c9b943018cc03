"""`zguard.serve.wiring`: the demo token issued on the demo model's first start."""

from __future__ import annotations

from pathlib import Path

import pytest

from zguard.config import Settings


def test_demo_token_printed_on_a_terminal_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import re

    from zguard.serve.wiring import issue_demo_token
    from zguard.store.database import create_store_engine
    from zguard.store.migrate import upgrade
    from zguard.store.principals import PrincipalStore

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
