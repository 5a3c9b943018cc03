"""The PNG writer's files pass `pngcheck` (Debian's, an independent checker of every chunk, CRC
and the zlib stream), installed if need be, at the sizes and with the strips the server writes."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from tests.common.debian import apt_install
from tests.common.pictures import noise, photo_like
from tests.common.unavailable import unavailable
from zguard.services.encoding import encode_png


@cache
def _pngcheck_unavailable() -> str | None:
    if shutil.which("pngcheck") is None and (reason := apt_install(("pngcheck",))) is not None:
        return reason
    return None if shutil.which("pngcheck") else "pngcheck installed, but not on PATH"


def pngcheck() -> str:
    reason = _pngcheck_unavailable()
    path = shutil.which("pngcheck")
    if reason is not None or path is None:
        unavailable(f"no pngcheck: {reason}")
    return path


@pytest.mark.parametrize(
    ("h", "w", "threads"), [(1, 1, 1), (64, 64, 1), (333, 517, 2), (1024, 1024, 4), (1024, 768, 8)]
)
@pytest.mark.parametrize("make", [noise, photo_like], ids=["noise", "photo"])
def test_pngcheck_finds_nothing_wrong(tmp_path: Path, h: int, w: int, threads: int, make: object) -> None:
    checker = pngcheck()
    pixels: np.ndarray = make(h, w)  # type: ignore[operator]
    path = tmp_path / "image.png"
    path.write_bytes(encode_png(pixels, threads=threads))
    done = subprocess.run([checker, "-v", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No errors detected" in done.stdout
