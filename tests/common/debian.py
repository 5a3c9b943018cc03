"""Debian packages the tests need beyond the venv (rsyslog, exiftool, systemd, fonts): installed
with apt-get on first use (tests run as root; Debian's policy keeps services from auto-starting).
Where they cannot be had a test calls `tests.common.unavailable.unavailable` with the reason: it
skips, except under CI=true, where it fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence


def apt_install(packages: Sequence[str]) -> str | None:
    """`apt-get update` then `apt-get install -y PACKAGES`; None when done, else why not."""
    wanted = " ".join(packages)
    if shutil.which("apt-get") is None:
        return f"no apt-get to install {wanted}"
    if os.geteuid() != 0:
        return f"installing needs root: apt-get install {wanted}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{' '.join(command)}` did not finish: {exc}"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return f"`{' '.join(command)}` failed ({done.returncode}): {last}"
    return None
