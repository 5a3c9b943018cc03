from __future__ import annotations

import pytest

from zguard.config import GenerationSettings
from zguard.services.images import default_size


@pytest.mark.parametrize(
    ("limits", "demo", "size"),
    [
        ({}, False, (1024, 1024)),
        ({}, True, (256, 256)),
        ({"default_size": "512x768"}, False, (512, 768)),
        ({"max_side": 128}, True, (128, 128)),
        ({"max_side": 512}, False, (512, 512)),
        ({"max_pixels": 600 * 600}, False, (592, 592)),
        ({"min_side": 512, "max_side": 1024}, True, (512, 512)),
    ],
)
def test_default_size_fits_the_limits(limits: dict[str, object], demo: bool, size: tuple[int, int]) -> None:
    assert default_size(GenerationSettings.model_validate(limits), demo=demo) == size
