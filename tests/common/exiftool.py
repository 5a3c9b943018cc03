"""exiftool (Debian `libimage-exiftool-perl`) as an independent XMP reader, installed if need be."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache

import pytest

_PACKAGE = "libimage-exiftool-perl"


@cache
def exiftool_unavailable() -> str | None:
    """Why exiftool cannot be had, or None once it is installed (installs at most once per run)."""
    if shutil.which("exiftool") is not None:
        return None
    if shutil.which("apt-get") is None:
        return f"exiftool is not installed and there is no apt-get to install it ({_PACKAGE})"
    if os.geteuid() != 0:
        return f"exiftool is not installed; installing it needs root: apt-get install {_PACKAGE}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", _PACKAGE]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{' '.join(command)}` did not finish: {exc}"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return f"`{' '.join(command)}` failed ({done.returncode}): {last}"
    return None if shutil.which("exiftool") is not None else f"{_PACKAGE} installed, but no exiftool on PATH"


def require_exiftool() -> str:
    """The path of exiftool, installed if need be; skip (fail under CI=true) when it cannot be."""
    reason = exiftool_unavailable()
    path = shutil.which("exiftool")
    if reason is None and path is not None:
        return path
    message = f"no exiftool to read XMP with: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: every test must run)")
    pytest.skip(message)
