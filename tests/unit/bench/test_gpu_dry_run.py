"""bench/gpu/zimage_full_size.py: the full-size configs checked on the meta device, the GPU run's
refusal without CUDA, and (slow) the measured code path at demo sizes on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "gpu" / "zimage_full_size.py"
GIB = 1024**3


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("zimage_full_size", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return _load()


@pytest.fixture(scope="module")
def dry(script: ModuleType) -> dict[str, Any]:
    result: dict[str, Any] = script.dry_run()
    return result


def test_dry_run_counts_match_the_published_sizes(dry: dict[str, Any]) -> None:
    counts = dry["parameters"]
    # Counted here on diffusers 0.42.1 / transformers 5: 6,154,908,736 / 4,022,468,096 / 83,819,683.
    assert 6.10e9 <= counts["transformer"] <= 6.20e9
    assert 3.98e9 <= counts["text_encoder"] <= 4.06e9  # Qwen3-4B: 4.02 B with tied embeddings
    assert 83.0e6 <= counts["vae"] <= 84.5e6  # the FLUX.1 autoencoder
    assert dry["parameters_total"] == sum(counts.values())


def test_dry_run_dimension_checks_all_pass(dry: dict[str, Any]) -> None:
    assert dry["checks"]
    assert all(dry["checks"].values()), dry["checks"]
    assert dry["ok"] is True


def test_dry_run_footprint_is_two_bytes_per_parameter(dry: dict[str, Any]) -> None:
    for name, n in dry["parameters"].items():
        assert dry["bf16_gib"][name] == pytest.approx(n * 2 / GIB, abs=1e-3)
    assert dry["bf16_gib_total"] == pytest.approx(dry["parameters_total"] * 2 / GIB, abs=1e-3)
    assert 18.5 < dry["bf16_gib_total"] < 19.5
    estimate = dry["activation_estimate"]
    assert estimate["image_tokens"] == 4096  # (1024 / 8 / 2)²
    assert dry["expected_peak_gib"] == pytest.approx(
        dry["bf16_gib_total"] + estimate["peak_over_weights_gib"], abs=2e-3
    )


def test_dry_run_uses_the_real_dimensions(dry: dict[str, Any]) -> None:
    tr, te = dry["configs"]["transformer"], dry["configs"]["text_encoder"]
    assert (tr["dim"], tr["n_layers"], tr["n_refiner_layers"], tr["n_heads"]) == (3840, 30, 2, 30)
    assert (tr["cap_feat_dim"], tr["axes_dims"]) == (2560, [32, 48, 48])
    assert (te["hidden_size"], te["num_hidden_layers"]) == (2560, 36)


def test_a_broken_config_fails_its_check(script: ModuleType) -> None:
    configs = script.full_size_configs()
    configs["transformer"] = {**configs["transformer"], "cap_feat_dim": 4096}
    checks = script.dimension_checks(configs)
    assert checks["cap_feat_dim_equals_text_hidden"] is False


def test_main_dry_run_prints_one_json_object(
    script: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "dry.json"
    assert script.main(["--dry-run", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ok"] is True
    assert json.loads(out.read_text(encoding="utf-8")) == printed


def test_the_gpu_run_refuses_cleanly_without_cuda(script: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the run would start")
    assert script.main(["--sections", "raw"]) == script.EXIT_REFUSED
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no CUDA device" in captured.err
    assert "--dry-run" in captured.err
    assert "Traceback" not in captured.err


def test_unknown_section_is_a_usage_error(script: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        script.main(["--sections", "raw,warp"])
    assert exc.value.code == 2
    assert "unknown sections ['warp']" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_run_exercises_every_cheap_section(
    script: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The GPU script's code path at demo sizes on the CPU, so API drift shows up without a GPU.
    (compile is left out: inductor on a small CPU takes a minute.)"""
    sections = "raw,watermark,e2e,concurrency,attention,ready"
    argv = ["--smoke", "--runs", "1", "--warmup", "0", "--sections", sections, "--work-dir", str(tmp_path)]
    code = script.main(argv)
    result = json.loads(capsys.readouterr().out)
    assert result["skipped"] == []
    errors = {name: s["error"] for name, s in result["sections"].items() if "error" in s}
    assert errors == {}
    assert code == 0
    assert result["sections"]["ready"]["bytes_read"] == result["sections"]["ready"]["bytes"]
    assert result["sections"]["concurrency"]["clients"]["4"]["errors"] == []
