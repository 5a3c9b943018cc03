"""`zguard serve --replica-id`: a bad id is refused before anything starts, naming the flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from zguard.cli.main import main


def test_a_bad_replica_id_on_the_command_line_is_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "zguard.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n", encoding="utf-8")
    code = main(["serve", "--replica-id", "gpu/07", "--config", str(config)])
    _, err = capsys.readouterr()
    assert code == 2
    assert "--replica-id" in err
    assert "A-Z a-z 0-9 . _ -" in err
    assert "Traceback" not in err
