"""Fonts for the explicit-label tests: a CJK font found through fontconfig and a Latin-only one,
installed from Debian packages when missing (as root), like exiftool and rsyslog."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

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
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return f"fonts missing; install them as root: apt-get install {' '.join(PACKAGES)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{' '.join(command)}` did not finish: {exc}"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return f"`{' '.join(command)}` failed ({done.returncode}): {last}"
    return None if _present() else f"{' '.join(PACKAGES)} installed, but fontconfig lists no CJK font"


def require_fonts() -> str:
    """The path of a CJK font; skip (fail under CI=true) when none can be installed."""
    reason = fonts_unavailable()
    font = find_cjk_font()
    if reason is None and font is not None:
        return str(font)
    message = f"no CJK font to draw the label with: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: every test must run)")
    pytest.skip(message)
