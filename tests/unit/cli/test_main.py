"""The `zguard` parser: help is cheap, every command in the table registers, one exit-code table."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from zguard import errors
from zguard.cli import common
from zguard.cli.main import COMMANDS, _chosen, build_parser

HEAVY = ("sqlalchemy", "alembic", "bcrypt", "cryptography", "torch", "diffusers", "numpy", "PIL")


def test_help_imports_no_database_bcrypt_or_crypto_module() -> None:
    probe = (
        "import sys\nfrom zguard.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert "usage: zguard" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_help_lists_every_command_in_the_table() -> None:
    text = build_parser([]).format_help()
    for name, (_, help_text) in COMMANDS.items():
        assert name in text
        assert help_text.split()[0] in text


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_is_registered_by_its_module(name: str) -> None:
    parser = build_parser([name])
    commands = next(a for a in parser._actions if a.dest == "command")
    sub = commands.choices[name]  # type: ignore[index]
    assert sub.description, f"{name} got only its placeholder: {COMMANDS[name][0]}.register did not add it"
    module = importlib.import_module(f"zguard.cli.{COMMANDS[name][0]}")
    assert callable(module.register)


@pytest.mark.parametrize(
    ("argv", "chosen"),
    [
        (["user", "list"], "user"),
        (["--config", "user", "token", "list"], "token"),  # --config's value is not the command
        (["--config=x.yaml", "audit", "verify"], "audit"),
        (["-h"], None),
        (["nonsense"], None),
        ([], None),
    ],
)
def test_the_chosen_command(argv: list[str], chosen: str | None) -> None:
    assert _chosen(argv) == chosen


def test_one_exit_code_table() -> None:
    codes = {errors.EXIT_OK, errors.EXIT_NO, errors.EXIT_FIX, errors.EXIT_UNAVAILABLE}
    assert codes == {0, 1, 2, 3}
    assert (common.EXIT_OK, common.EXIT_NO, common.EXIT_FIX, common.EXIT_UNAVAILABLE) == (0, 1, 2, 3)


def test_an_unknown_command_is_a_usage_error() -> None:
    from zguard.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["nonsense"])
    assert exc.value.code == 2


def test_an_operator_error_prints_its_fix_and_exits_with_its_code(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from pathlib import Path

    from zguard.cli.main import main

    config = Path(str(tmp_path)) / "zguard.yaml"
    config.write_text("api:\n  port: not-a-port\n")
    assert main(["config", "check", "--config", str(config)]) == errors.ConfigError.exit_code == 2
    err = capsys.readouterr().err
    assert "api.port" in err
    assert f"fix: {errors.ConfigError.fix}" in err


def test_a_reader_closing_the_pipe_ends_the_command_quietly() -> None:
    """`zguard role list | head -1` must not print a BrokenPipeError traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    done = subprocess.run(
        [sys.executable, "-m", "zguard", "role", "list"],
        check=False,
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    os.close(write)
    assert done.returncode == errors.EXIT_PIPE_CLOSED == 141
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
