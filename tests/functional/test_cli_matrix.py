"""Issue 15: every read-only `zguard` command, run the three ways an operator names the settings
(`--config FILE`, `$ZGUARD_CONFIG`, the default `config/zguard.yaml` in the working directory)
and piped into a reader that stops early (`| head`): an answer or a refusal with its exit code,
never a traceback (`trace` and `provenance verify` crashed without `--config`, `scan | head`
with a BrokenPipeError)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from zguard import errors
from zguard.cli.main import main

pytestmark = pytest.mark.slow

EXITS = {errors.EXIT_OK, errors.EXIT_NO, errors.EXIT_FIX, errors.EXIT_UNAVAILABLE}
COMMANDS = [
    ["config", "check"],
    ["role", "list"],
    ["user", "list"],
    ["token", "list"],
    ["db", "current"],
    ["audit", "status"],
    ["audit", "tail", "-n", "3"],
    ["audit", "search", "--since", "1h"],
    ["audit", "verify"],
    ["audit", "public-key"],
    ["policy", "test", "a lighthouse at dawn"],
    ["doctor"],
    ["scan"],
    ["trace", "{image}"],
    ["provenance", "verify", "{image}"],
    ["provenance", "public-key"],
    ["model", "verify", "{model}"],
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[Path]:
    """A working directory with `config/zguard.yaml` (mode 600), an initialised state and an image."""
    root = tmp_path_factory.mktemp("cli-matrix")
    (root / "config").mkdir()
    config = root / "config" / "zguard.yaml"
    config.write_text(f"state_dir: {root / 'state'}\nintegrity:\n  allow_root: true\n", encoding="utf-8")
    config.chmod(0o600)
    Image.new("RGB", (64, 64), (40, 80, 120)).save(root / "image.png")
    saved = {name: os.environ.pop(name) for name in [n for n in os.environ if n.startswith("ZGUARD_")]}
    assert main(["init", "--config", str(config)]) == errors.EXIT_OK
    yield root
    os.environ.update(saved)


def argv_for(command: list[str], home: Path, demo_model_dir: Path) -> list[str]:
    return [word.format(image=home / "image.png", model=demo_model_dir) for word in command]


@pytest.mark.parametrize(
    ("how", "command"),
    [(how, command) for how in ("--config", "ZGUARD_CONFIG", "default path") for command in COMMANDS],
    ids=lambda value: value if isinstance(value, str) else " ".join(value),
)
def test_every_command_answers_however_the_settings_are_named(
    home: Path, demo_model_dir: Path, how: str, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = home / "config" / "zguard.yaml"
    argv = argv_for(command, home, demo_model_dir)
    monkeypatch.chdir(home)
    for name in [n for n in os.environ if n.startswith("ZGUARD_")]:
        monkeypatch.delenv(name)
    if how == "--config":
        argv += ["--config", str(config)]
    elif how == "ZGUARD_CONFIG":
        monkeypatch.setenv("ZGUARD_CONFIG", str(config))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    assert code in EXITS, (code, err.getvalue())
    assert "Traceback" not in err.getvalue()


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_piped_into_head_stops_quietly(home: Path, demo_model_dir: Path, command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZGUARD_")}
    with subprocess.Popen(
        [sys.executable, "-m", "zguard", *argv_for(command, home, demo_model_dir)],
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.read(1)  # `| head -c 1`: the reader goes away after the first byte
        proc.stdout.close()
        err = proc.stderr.read().decode("utf-8", "replace")
        code = proc.wait(timeout=120)
    assert code in EXITS | {errors.EXIT_PIPE_CLOSED}, (code, err)
    assert "Traceback" not in err, err
