"""The explicit (visible) label: text such as "AI生成" boxed in a corner of the image.

The box is dark with white text and a thin light border, so it reads on light and dark images
alike; its height is at least 5% of the shorter side (GB 45438-2025 asks for a prominent label;
5% is this project's floor). The font must draw the text: CJK for the default, so it comes from
`provenance.explicit_label_font` or fontconfig (`fc-match :lang=zh`), checked when the server is
built, not at the first image.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from zguard.errors import OperatorError

if TYPE_CHECKING:
    from zguard.config import ProvenanceSettings

MIN_HEIGHT_FRACTION = 0.05
_MARGIN_FRACTION = 0.02


class FontNotFound(OperatorError):
    """No font that can draw the explicit label: name one in `provenance.explicit_label_font`."""

    code = "label_font_not_found"
    fix = "install a CJK font (apt-get install fonts-noto-cjk) or name one in provenance.explicit_label_font"


def find_cjk_font() -> Path | None:
    """A font fontconfig lists for Chinese (`fc-list :lang=zh`), or None (no fontconfig, or no CJK
    font installed). Sorted, so the choice is stable; Noto CJK first when it is there."""
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return None
    result = subprocess.run(  # noqa: S603 - a fixed argument list, no shell
        [fc_list, "-f", "%{file}\n", ":lang=zh"], capture_output=True, text=True, timeout=10, check=False
    )
    files = sorted(set(result.stdout.split()), key=lambda f: ("Noto" not in f, f)) if result.returncode == 0 else []
    return Path(files[0]) if files else None


@dataclass(frozen=True)
class VisibleLabel:
    text: str
    corner: str
    font_path: Path

    @classmethod
    def from_settings(cls, section: ProvenanceSettings) -> VisibleLabel:
        path = section.explicit_label_font or find_cjk_font()
        if path is None:
            raise FontNotFound(
                "provenance.explicit_label is on but no CJK font was found: install one (Debian: fonts-noto-cjk) or set provenance.explicit_label_font"
            )
        font = ImageFont.truetype(str(path), 32)
        missing = [c for c in section.explicit_label_text if not c.isspace() and not _draws(font, c)]
        if missing:
            raise FontNotFound(f"{path} cannot draw {''.join(missing)!r}; set provenance.explicit_label_font")
        return cls(section.explicit_label_text, section.explicit_label_corner, path)

    def draw(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        w, h = image.size
        box_h = max(8, round(min(w, h) * MIN_HEIGHT_FRACTION) + 1)
        pad = max(1, box_h // 8)
        font = ImageFont.truetype(str(self.font_path), max(4, box_h - 2 * pad))
        left, top, right, bottom = font.getbbox(self.text)
        box_w = right - left + 2 * pad
        margin = round(min(w, h) * _MARGIN_FRACTION)
        x = margin if self.corner.endswith("left") else w - margin - box_w
        y = margin if self.corner.startswith("top") else h - margin - box_h
        draw = ImageDraw.Draw(image)
        draw.rectangle(
            (x, y, x + box_w - 1, y + box_h - 1), fill=(0, 0, 0), outline=(255, 255, 255), width=max(1, pad // 2)
        )
        draw.text((x + pad - left, y + (box_h - (bottom - top)) // 2 - top), self.text, font=font, fill=(255, 255, 255))
        return image


def _draws(font: ImageFont.FreeTypeFont, char: str) -> bool:
    """Whether the font has a glyph for `char` (a missing one renders as .notdef, the same box for all)."""
    notdef = font.getmask("\U0010fffd").getbbox()
    mask = font.getmask(char)
    return mask.getbbox() is not None and (notdef is None or bytes(mask) != bytes(font.getmask("\U0010fffd")))
