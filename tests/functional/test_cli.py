"""The `zguard` command: help everywhere, config check, demo model builds."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from zguard.cli.main import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["serve"],
        ["config"],
        ["config", "check"],
        ["model"],
        ["model", "demo"],
        ["db"],
        ["db", "upgrade"],
        ["db", "current"],
    ],
)
def test_help_on_every_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: zguard" in out
    assert "--config FILE" in out


def test_config_check_prints_effective_settings_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # git keeps config/security.yaml at 0644: installed as the README says, mode 0600
    installed = tmp_path / "security.yaml"
    subprocess.run(["install", "-m", "600", str(REPO / "config" / "security.yaml"), str(installed)], check=True)
    assert main(["config", "check", "--config", str(installed)]) == 0
    out = capsys.readouterr().out
    assert "designer01" in out
    assert "'**********'" in out
    assert "$2b$" not in out
    assert "port: 5000" in out


def test_config_check_refuses_what_serve_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # it passed both of these, which serve refused
    readable = tmp_path / "security.yaml"
    shutil.copyfile(REPO / "config" / "security.yaml", readable)  # bcrypt hashes are secrets, as in /etc/shadow
    readable.chmod(0o644)
    assert main(["config", "check", "--config", str(readable)]) == 2
    err = capsys.readouterr().err
    assert f"{readable} (settings file (api_auth.users.0.password)) is readable by every account on this host" in err
    assert f"fix: chmod o-rwx {readable}" in err
    missing = tmp_path / "absent-terms.txt"
    config = tmp_path / "zguard.yaml"
    config.write_text(f"policy:\n  banned_terms_files: [builtin:guide, {missing}]\n", encoding="utf-8")
    assert main(["config", "check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"policy.banned_terms_files: {missing}: cannot read it (No such file or directory)" in err
    assert "Traceback" not in err


def test_config_before_or_after_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "z.yaml"
    path.write_text("api:\n  port: 15000\n", encoding="utf-8")
    assert main(["--config", str(path), "config", "check"]) == 0
    assert "port: 15000" in capsys.readouterr().out
    assert main(["config", "check", "--config", str(path)]) == 0
    assert "port: 15000" in capsys.readouterr().out


def test_config_from_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "z.yaml"
    path.write_text("console:\n  port: 17860\n", encoding="utf-8")
    monkeypatch.setenv("ZGUARD_CONFIG", str(path))
    monkeypatch.setenv("ZGUARD_API__PORT", "15001")
    assert main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert "port: 17860" in out
    assert "port: 15001" in out


def test_config_check_fails_with_key_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ZGUARD_MODEL__DEVICE", "gpu")
    assert main(["config", "check"]) == 2
    err = capsys.readouterr().err
    assert "model.device" in err
    assert "ZGUARD_MODEL__DEVICE" in err


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_model_demo_is_byte_identical_and_safetensors_only(
    tmp_path: Path, demo_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", "demo", str(tmp_path / "a")]) == 0
    assert "images are noise" in capsys.readouterr().out
    built = _digests(tmp_path / "a")
    assert built == _digests(demo_model_dir)
    weights = [name for name in built if name.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    assert weights
    assert all(name.endswith(".safetensors") for name in weights)
    assert not list(tmp_path.glob(".zguard-demo-*"))  # no staging directory left behind


def test_model_demo_refuses_non_empty_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("mine", encoding="utf-8")
    assert main(["model", "demo", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text(encoding="utf-8") == "mine"


def test_demo_model_has_the_real_z_image_architecture(demo_model_dir: Path) -> None:
    index = json.loads((demo_model_dir / "model_index.json").read_text(encoding="utf-8"))
    assert index["_class_name"] == "ZImagePipeline"
    assert index["transformer"] == ["diffusers", "ZImageTransformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "Qwen3Model"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    transformer = json.loads((demo_model_dir / "transformer" / "config.json").read_text(encoding="utf-8"))
    text = json.loads((demo_model_dir / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    vae = json.loads((demo_model_dir / "vae" / "config.json").read_text(encoding="utf-8"))
    assert transformer["dim"] // transformer["n_heads"] == sum(transformer["axes_dims"])
    assert all(d % 2 == 0 for d in transformer["axes_dims"])
    assert transformer["cap_feat_dim"] == text["hidden_size"]
    assert transformer["axes_lens"][0] > 512
    assert vae["latent_channels"] == 16
    assert vae["shift_factor"] is not None
    assert 2 ** (len(vae["block_out_channels"]) - 1) * 2 == 16  # sizes in multiples of 16, like the real model
