"""The explicit (visible) label: boxed, in the chosen corner, at least 5% of the shorter side high,
drawn with a CJK font found through fontconfig (Debian: fonts-noto-cjk or fonts-wqy-microhei)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.common.engines import encode_png
from tests.common.fonts import LATIN_ONLY, require_fonts
from zguard.config import ProvenanceSettings
from zguard.provenance.marking import ProvenanceMarker
from zguard.provenance.visible import FontNotFound, VisibleLabel


@pytest.fixture(scope="module")
def cjk_font() -> str:
    return require_fonts()


@pytest.mark.parametrize("background", [(250, 250, 250), (5, 5, 5)])
@pytest.mark.parametrize("corner", ["top-left", "bottom-right"])
def test_label_is_a_readable_box_in_its_corner(cjk_font: str, background: tuple[int, int, int], corner: str) -> None:
    label = VisibleLabel.from_settings(ProvenanceSettings(explicit_label=True, explicit_label_corner=corner))
    drawn = np.asarray(label.draw(Image.new("RGB", (640, 400), background)), np.int16)
    changed = np.argwhere(np.abs(drawn - np.array(background)).sum(axis=-1) > 0)
    (top, left), (bottom, right) = changed.min(axis=0), changed.max(axis=0)
    assert bottom - top + 1 >= 0.05 * 400
    if corner == "top-left":
        assert top < 40
        assert left < 40
    else:
        assert bottom > 360
        assert right > 600
    box = drawn[top : bottom + 1, left : right + 1]
    # White text on black, inside a light border: both extremes present whatever the background.
    assert (box.sum(axis=-1) == 0).mean() > 0.3
    assert (box.sum(axis=-1) == 765).mean() > 0.05


def test_marker_draws_the_label_before_the_watermark(cjk_font: str) -> None:
    section = ProvenanceSettings(explicit_label=True, explicit_label_font=cjk_font)
    marker = ProvenanceMarker.ephemeral(section)
    [marked] = marker.mark([Image.new("RGB", (256, 256), (128, 128, 128))], "png", 90, "req-1", encode_png)
    image = Image.open(io.BytesIO(marked.blob)).convert("RGB")
    corner = np.asarray(image, np.int16)[-30:, -60:]
    assert (corner.sum(axis=-1) < 20).sum() > 100  # the dark box is there, under the watermark


def test_a_font_without_the_glyphs_is_refused(cjk_font: str) -> None:
    with pytest.raises(FontNotFound, match="cannot draw"):
        VisibleLabel.from_settings(ProvenanceSettings(explicit_label=True, explicit_label_font=str(LATIN_ONLY)))
