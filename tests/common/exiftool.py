"""exiftool (Debian `libimage-exiftool-perl`) as an independent XMP reader, installed if need be."""

from __future__ import annotations

import shutil
from functools import cache

from tests.common.debian import apt_install
from tests.common.unavailable import unavailable

_PACKAGE = "libimage-exiftool-perl"


@cache
def exiftool_unavailable() -> str | None:
    """Why exiftool cannot be had, or None once it is installed (installs at most once per run)."""
    if shutil.which("exiftool") is not None:
        return None
    if (reason := apt_install((_PACKAGE,))) is not None:
        return reason
    return None if shutil.which("exiftool") is not None else f"{_PACKAGE} installed, but no exiftool on PATH"


def require_exiftool() -> str:
    """The path of exiftool, installed if need be; skip (fail under CI=true) when it cannot be."""
    reason = exiftool_unavailable()
    path = shutil.which("exiftool")
    if reason is not None or path is None:
        unavailable(f"no exiftool to read XMP with: {reason}")
    return path
