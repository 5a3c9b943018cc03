"""Fonts for the explicit-label tests: a CJK font found through fontconfig and a Latin-only one,
installed from Debian packages when missing (as root), like exiftool and rsyslog."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from tests.common.debian import apt_install
from tests.common.unavailable import unavailable
from zguard.provenance.visible import find_cjk_font

PACKAGES = ("fontconfig", "fonts-wqy-microhei", "fonts-dejavu-core")
LATIN_ONLY = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def _present() -> bool:
    return find_cjk_font() is not None and LATIN_ONLY.exists()


@cache
def fonts_unavailable() -> str | None:
    """Why the fonts cannot be had, or None once they are installed (installs at most once per run)."""
    if _present():
        return None
    if (reason := apt_install(PACKAGES)) is not None:
        return reason
    return None if _present() else f"{' '.join(PACKAGES)} installed, but fontconfig lists no CJK font"


def require_fonts() -> str:
    """The path of a CJK font; skip (fail under CI=true) when none can be installed."""
    reason = fonts_unavailable()
    font = find_cjk_font()
    if reason is not None or font is None:
        unavailable(f"no CJK font to draw the label with: {reason}")
    return str(font)
