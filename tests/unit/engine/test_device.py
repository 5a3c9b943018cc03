from __future__ import annotations

import pytest
import torch

from zguard.engine.pipeline import choose_device


@pytest.mark.parametrize(
    ("requested", "cuda", "expected"),
    [
        ("auto", False, ("cpu", "float32")),
        ("auto", True, ("cuda", "bfloat16")),
        ("cpu", True, ("cpu", "float32")),
        ("cuda", True, ("cuda", "bfloat16")),
    ],
)
def test_auto_prefers_cuda_with_bfloat16(
    monkeypatch: pytest.MonkeyPatch, requested: str, cuda: bool, expected: tuple[str, str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert choose_device(requested) == expected


def test_cuda_without_gpu_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"model\.device"):
        choose_device("cuda")
