"""`state_dir/zguard.pid`: one server per state directory, and how `zguard policy reload` finds it.

Decisions written here:
- `serve` takes an exclusive `flock` on the file before it touches anything in `state_dir` (the
  runtime directory it empties, the cleanup record, the audit chain) and holds it for the
  process's life; the file then holds its pid. A second `serve` on the same directory finds the
  lock taken and stops with exit 2 naming the pid that holds it, having changed nothing — two
  servers on one audit chain and one runtime directory would each undo the other's work.
- The lock dies with the process (the kernel drops it), so a crash leaves no stale lock; a
  stale file is just a number. Only the holder rewrites or removes the file.
- A reader trusts the pid only while the lock is held (it tries a shared lock: if that
  succeeds nobody holds the exclusive one) and, where /proc is available, the process is a
  zguard process, so a stale file never sends a signal to some other program that reused the id.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from zguard import state_paths
from zguard.errors import OperatorError


class StateDirInUse(OperatorError):
    """Another `zguard serve` holds the state directory's lock."""

    code = "state_dir_in_use"
    fix = "stop the other server first (systemctl stop zguard), or give this one its own state_dir"


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    return None


class StateLock:
    """The exclusive lock on `state_dir/zguard.pid`, held until `release()`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Take the lock and write this process's pid; StateDirInUse when another server has it."""
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = state_paths.pid_file(state_dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StateDirInUse(
                f"state_dir {state_dir} is in use by another zguard server"
                + (f" (pid {holder})" if holder is not None else "")
                + f"; its lock is {path}"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Remove the file, then let the lock go (a new server then starts on a fresh file)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def _locked(path: Path) -> bool:
    """Whether some process holds the exclusive lock on `path`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the shared lock if it was granted
    return False


def running_server(state_dir: Path) -> int | None:
    """The pid of the zguard server using `state_dir`, or None when none is running."""
    path = state_paths.pid_file(state_dir)
    try:
        pid = int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
    if pid <= 0 or not _locked(path):
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
