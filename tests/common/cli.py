"""Running `zguard ...` in-process against one settings file, as the CLI tests do."""

from __future__ import annotations

from pathlib import Path

import pytest

from zguard.cli.main import main
from zguard.config.loader import load_settings


class ZguardCli:
    """`cli(*argv)` runs `zguard *argv --config FILE` and returns (exit code, stdout, stderr)."""

    def __init__(self, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.config = config
        self.capsys = capsys
        self.settings = load_settings(config, environ={})

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([*argv, "--config", str(self.config)])
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    def ok(self, *argv: str) -> str:
        code, out, err = self(*argv)
        assert code == 0, (out, err)
        return out

    def refused(self, *argv: str) -> str:
        """Exit 2 with one line on stderr, never a traceback."""
        code, out, err = self(*argv)
        assert code == 2, (out, err)
        assert len(err.strip().splitlines()) == 1, err
        return err
