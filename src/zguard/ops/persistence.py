"""What zero persistence leaves to check: the runtime directory's last sweep and the files in it.

`serve` (zguard.serve.isolation) writes the `CleanupRecord` after each sweep; `zguard doctor`
(zguard.ops.doctor) reads it and looks for files left behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def files_under(root: Path) -> list[Path]:
    """Every file (anything but a directory) below `root`; [] when it does not exist."""
    if not root.is_dir():
        return []
    return [Path(base) / name for base, _dirs, names in os.walk(root) for name in names]


@dataclass(frozen=True)
class CleanupRecord:
    """The last sweep, as `zguard doctor` reads it from `state_dir/runtime-cleanup.json`."""

    time: float
    runtime_dir: str
    removed: int
    reason: str

    @classmethod
    def read(cls, path: Path) -> CleanupRecord | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                time=float(data["time"]),
                runtime_dir=str(data["runtime_dir"]),
                removed=int(data["removed"]),
                reason=str(data["reason"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
