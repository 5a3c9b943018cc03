"""One server per state directory: the lock on `zguard.pid`, and readers that trust it only while held."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zguard.errors import EXIT_FIX
from zguard.serve.pidfile import StateDirInUse, StateLock, running_server


def test_the_holder_writes_its_pid_and_removes_the_file_on_release(tmp_path: Path) -> None:
    lock = StateLock.acquire(tmp_path / "state")
    path = tmp_path / "state" / "zguard.pid"
    assert path.read_text(encoding="ascii") == f"{os.getpid()}\n"
    assert (path.stat().st_mode & 0o777) == 0o600
    lock.release()
    assert not path.exists()
    lock.release()  # twice is harmless


def test_a_second_holder_is_refused_naming_the_first_and_changes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = StateLock.acquire(state)
    try:
        with pytest.raises(StateDirInUse) as caught:
            StateLock.acquire(state)
        assert f"(pid {os.getpid()})" in caught.value.message
        assert caught.value.exit_code == EXIT_FIX
        assert (state / "zguard.pid").read_text(encoding="ascii") == f"{os.getpid()}\n"
    finally:
        first.release()
    StateLock.acquire(state).release()  # free again once released


def test_a_lock_held_by_another_process_is_seen(tmp_path: Path) -> None:
    state = tmp_path / "state"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from zguard.serve.pidfile import StateLock;"
            f"StateLock.acquire(Path({str(state)!r})); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StateDirInUse) as caught:
            StateLock.acquire(state)
        assert f"(pid {holder.pid})" in caught.value.message
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    StateLock.acquire(state).release()  # the kernel dropped the dead holder's lock: no stale lock


def test_a_pid_file_nobody_holds_names_no_server(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "zguard.pid").write_text(f"{os.getpid()}\n", encoding="ascii")  # a live pid, but unlocked
    assert running_server(state) is None
