"""`state_dir/zguard.pid`: how `zguard policy reload` finds the running server.

`serve` writes its process id there once its sockets are bound and removes the file when it
stops. A reader checks that the process still exists and, where /proc is available, that it is a
zguard process, so a stale file never sends a signal to some other program that reused the id.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from zguard import state_paths


def write_pid_file(state_dir: Path) -> Path:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_paths.pid_file(state_dir)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(f"{os.getpid()}\n")
    return path


def remove_pid_file(path: Path) -> None:
    """Remove the file if it still names this process (another server may have started since)."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text(encoding="ascii").strip()) == os.getpid():
            path.unlink()


def running_server(state_dir: Path) -> int | None:
    """The pid of the zguard server using `state_dir`, or None when none is running."""
    try:
        pid = int(state_paths.pid_file(state_dir).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # exists, but another user's: not ours to signal
        return None
    if Path("/proc/self").exists():
        try:
            if b"zguard" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return None
        except OSError:
            return None
    return pid
