"""`zguard policy test` and `zguard policy reload`, the latter against a real `zguard serve`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
import yaml

from tests.common.factories import free_port
from tests.common.polling import wait_until
from tests.common.servers import ZguardProcess
from zguard.cli.common import EXIT_FIX, EXIT_OK
from zguard.cli.main import main
from zguard.cli.policy import EXIT_BLOCKED, EXIT_NO_SERVER


def config(tmp_path: Path, lists: list[Path] | None = None, **policy: object) -> str:
    settings: dict[str, object] = {"state_dir": str(tmp_path / "state"), "api_auth": {"enabled": False}}
    settings["policy"] = {**({"banned_terms_files": [str(p) for p in lists]} if lists else {}), **policy}
    path = tmp_path / "zguard.yaml"
    path.write_text(yaml.safe_dump(settings, allow_unicode=True), encoding="utf-8")
    return str(path)


def verdict_of(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_policy_test_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path)
    assert main(["policy", "test", "a lighthouse at dawn", "--config", cfg]) == EXIT_OK
    assert verdict_of(capsys) == {
        "verdict": "allowed",
        "category": None,
        "detector": None,
        "term_id": None,
        "allowed": True,
        "findings": [],
    }
    prompt = "海报：客 戶 名單"
    assert main(["policy", "test", prompt, "--config", cfg]) == EXIT_BLOCKED
    shown = verdict_of(capsys)
    assert shown["verdict"] == "blocked"
    assert shown["category"] == "customer-data"
    (finding,) = shown["findings"]  # type: ignore[misc]
    assert finding["span"] == [3, 9]
    assert prompt[3:9] == "客 戶 名單"
    assert "term" not in finding
    assert main(["policy", "test", "write to ops@bank.cn", "--config", cfg]) == EXIT_OK  # e-mail: flagged
    assert verdict_of(capsys)["verdict"] == "flagged"


def test_policy_test_reads_stdin_roles_and_reveals_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path, per_role={"approver": {"terms": "flag"}})
    monkeypatch.setattr("sys.stdin", io.StringIO("内部 代号\n"))
    assert main(["policy", "test", "-", "--reveal-terms", "--config", cfg]) == EXIT_BLOCKED
    assert verdict_of(capsys)["findings"][0]["term"] == "内部代号"  # type: ignore[index]
    assert main(["policy", "test", "内部代号", "--role", "approver", "--config", cfg]) == EXIT_OK
    assert verdict_of(capsys)["verdict"] == "flagged"
    assert main(["policy", "test", "x", "--negative", "机密", "--config", cfg]) == EXIT_BLOCKED
    assert verdict_of(capsys)["findings"][0]["field"] == "negative_prompt"  # type: ignore[index]
    assert main(["policy", "test", "x", "--role", "nobody", "--config", cfg]) == EXIT_FIX
    assert "unknown role(s) nobody" in capsys.readouterr().err


def test_policy_test_refuses_a_broken_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.txt"
    broken.write_text("@nonsense\n", encoding="utf-8")
    assert main(["policy", "test", "x", "--config", config(tmp_path, [broken])]) == EXIT_FIX
    assert "broken.txt:1: unknown directive" in capsys.readouterr().err


def test_policy_reload_without_a_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.txt"
    good.write_text("北极星\n", encoding="utf-8")
    assert main(["policy", "reload", "--config", config(tmp_path, [good])]) == EXIT_NO_SERVER
    captured = capsys.readouterr()
    assert "policy: 1 terms from 1 list(s)" in captured.out
    assert "no running server found" in captured.err
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "zguard.pid").write_text("999999999\n", encoding="ascii")  # stale
    assert main(["policy", "reload", "--config", config(tmp_path, [good])]) == EXIT_NO_SERVER


@pytest.mark.slow
def test_reload_signals_the_running_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    terms = tmp_path / "terms.txt"
    terms.write_text("code-name: 北极星\n", encoding="utf-8")
    state = tmp_path / "state"
    server = ZguardProcess(state, env={"ZGUARD_POLICY__BANNED_TERMS_FILES": json.dumps([str(terms)])}).start()
    cfg = config(tmp_path, [terms])

    def status(prompt: str) -> int:
        body = {"prompt": prompt, "size": "64x64", "num_inference_steps": 1}
        return httpx.post(f"{server.api}/v1/images/generations", json=body, timeout=60).status_code

    try:
        server.wait_ready()
        assert (state / "zguard.pid").read_text(encoding="ascii").strip() == str(server.proc.pid)  # type: ignore[union-attr]
        # A second server on the same state_dir (other ports) stops before touching anything.
        runtime_dir, record = state / "run", state / "runtime-cleanup.json"
        (runtime_dir / "in-use.tmp").write_bytes(b"the first server's")
        record_before = record.read_bytes()
        second = ZguardProcess(state, env=server.env | {"ZGUARD_API__PORT": str(free_port())})
        second.env["ZGUARD_CONSOLE__PORT"] = str(free_port())
        second.start()
        assert second.proc is not None
        assert second.proc.wait(timeout=60) == EXIT_FIX
        assert f"is in use by another zguard server (pid {server.proc.pid})" in second.log()  # type: ignore[union-attr]
        assert (runtime_dir / "in-use.tmp").exists()
        assert record.read_bytes() == record_before
        assert (state / "zguard.pid").read_text(encoding="ascii").strip() == str(server.proc.pid)  # type: ignore[union-attr]
        assert status("银河计划") == 200
        assert status("北 極 星") == 400
        terms.write_text("code-name: 银河\n", encoding="utf-8")
        assert main(["policy", "reload", "--config", cfg]) == EXIT_OK
        wait_until(
            lambda: status("银河计划") == 400, timeout=20, what=lambda: f"the reloaded policy to block:\n{server.log()}"
        )
        assert status("北极星") == 200
        assert "prompt policy reloaded: 1 terms" in server.log()
        terms.write_text("@broken\n", encoding="utf-8")
        assert main(["policy", "reload", "--config", cfg]) == EXIT_FIX
        assert "the server (pid" in capsys.readouterr().err
        wait_until(
            lambda: "reload failed" in server.log(),
            timeout=20,
            what=lambda: f"'reload failed' in the log:\n{server.log()}",
        )
        assert status("银河计划") == 400  # the previous policy stays in force
    finally:
        assert server.stop() == 0
    assert not (state / "zguard.pid").exists()


@pytest.mark.parametrize("argv", [["policy"], ["policy", "test"], ["policy", "reload"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: zguard policy" in out
    assert "--config FILE" in out
