"""systemd-analyze for the unit tests, and the root that `useradd --root` needs.

`require_systemd_analyze()` installs Debian's `systemd` package when `systemd-analyze` is missing
(`apt-get update`, then `apt-get install -y`; tests run as root, and nothing is started: the unit
checks work offline, without systemd running). When that is impossible the test is skipped with
the reason, except under CI=true, where every test must run and it fails. `require_root()` does
the same for the install tests, which create accounts (inside a staging root) and chown files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tests.common.debian import apt_install
from tests.common.unavailable import unavailable

EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?) (\w+)")


@cache
def systemd_analyze_unavailable() -> str | None:
    """Why systemd-analyze cannot be had, or None once it is installed (installs at most once per run)."""
    if shutil.which("systemd-analyze") is not None:
        return None
    if (reason := apt_install(("systemd",))) is not None:
        return reason
    return None if shutil.which("systemd-analyze") else "systemd installed, but systemd-analyze is missing"


def require_systemd_analyze() -> str:
    reason = systemd_analyze_unavailable()
    path = shutil.which("systemd-analyze")
    if reason is not None or path is None:
        unavailable(f"no systemd-analyze to check the units with: {reason}")
    assert path is not None
    return path


def require_root() -> None:
    missing = [tool for tool in ("useradd", "groupadd") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        unavailable("zguard install creates accounts and sets owners: the test needs root")
    if missing:
        unavailable(f"{', '.join(missing)} not installed (Debian: apt-get install passwd)")


@dataclass(frozen=True)
class Security:
    """`systemd-analyze security --offline=true UNIT`: the overall exposure and its verdict."""

    exposure: float
    verdict: str
    output: str


def security(unit: Path) -> Security:
    done = subprocess.run(
        [require_systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = EXPOSURE.search(done.stdout)
    assert match, f"no exposure line in systemd-analyze output:\n{done.stdout}\n{done.stderr}"
    return Security(float(match.group(2)), match.group(3), done.stdout)


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` (no man page lookups: the Documentation= links are files on the target)."""
    return subprocess.run(
        [require_systemd_analyze(), "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
