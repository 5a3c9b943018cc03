"""Zero persistence: nothing a generation touches is left on disk or in a core file.

Images are encoded in memory (zguard.services.images) and the audit trail keeps an HMAC of the
prompt at most; what remains is what libraries write on their own: temporary files and the
caches of torch, diffusers, transformers and Hugging Face. `ProcessIsolation` confines those to
one private runtime directory (mode 0700) and empties it at start, at exit (normal, SIGTERM,
SIGINT: `serve`'s `finally`) and periodically, and it switches core dumps off and marks the
process non-dumpable, so prompts and images in memory cannot land in a core file.

The libraries read these variables when first imported, so `ProcessIsolation.start()` must run
before torch, diffusers or transformers is imported; `serve` starts it before building the
engine. The offline variables of zguard.engine.offline are set separately, at load, and are left
alone here.

A sweep that removes something is evidence (the deployment guide's "generated results
unexpectedly retained"): it becomes a `runtime.swept` audit event with the count, the bytes and,
per file, a hash of its name, its suffix and its size — never the name itself, which could
carry a prompt. The start sweep runs before the audit trail is open, so its report waits in
`pending` until `serve` attaches the trail (`attach`). `state_dir/runtime-cleanup.json` keeps
the last sweep for `zguard doctor` and a `history` of the last `HISTORY_MAX` sweeps that removed
files, so the stop sweep no longer overwrites the one that found something.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from zguard import state_paths
from zguard.config import Settings
from zguard.errors import ConfigError

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4  # <linux/prctl.h>
HISTORY_MAX = 50  # sweeps that removed files, kept in the cleanup record
FILES_LISTED = 20  # files described in one audit event (the count and bytes cover all)

# Each variable and the subdirectory of the runtime directory it points at.
CACHE_ENV: Mapping[str, str] = {
    "TMPDIR": "tmp",
    "TEMP": "tmp",
    "TMP": "tmp",
    "HF_HOME": "huggingface",
    "HF_HUB_CACHE": "huggingface/hub",
    "HUGGINGFACE_HUB_CACHE": "huggingface/hub",
    "HF_DATASETS_CACHE": "huggingface/datasets",
    "HF_MODULES_CACHE": "huggingface/modules",
    "HF_ASSETS_CACHE": "huggingface/assets",
    "HF_XET_CACHE": "huggingface/xet",
    "TRANSFORMERS_CACHE": "huggingface/transformers",
    "DIFFUSERS_CACHE": "huggingface/diffusers",
    "TORCH_HOME": "torch",
    "TORCH_EXTENSIONS_DIR": "torch/extensions",
    "PYTORCH_KERNEL_CACHE_PATH": "torch/kernels",
    "TORCHINDUCTOR_CACHE_DIR": "torch/inductor",
    "TRITON_CACHE_DIR": "triton",
    "CUDA_CACHE_PATH": "cuda",
    "XDG_CACHE_HOME": "cache",
    "MPLCONFIGDIR": "matplotlib",
    "NUMBA_CACHE_DIR": "numba",
}


def disable_core_dumps() -> list[str]:
    """Core size 0 and (Linux) not dumpable. Returns what could not be done, one line each."""
    problems = []
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError) as exc:
        problems.append(f"could not set RLIMIT_CORE to 0: {exc}")
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            problems.append(f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(ctypes.get_errno())}")
    return problems


def harden_process() -> None:
    """`disable_core_dumps`, each failure logged (irreversible: `serve` calls it, tests in a child)."""
    for problem in disable_core_dumps():
        log.warning("%s; a crash could write memory (prompts, images) to a core file", problem)


@dataclass(frozen=True)
class RemovedFile:
    """A file a sweep removed, described without its name: a hash of its path, suffix and size."""

    name_sha256: str  # 16 hex digits of SHA-256 over the path relative to the runtime directory
    suffix: str
    size: int

    def describe(self) -> str:
        return f"{self.name_sha256}{self.suffix}:{self.size}"


def _removed(path: str, root: Path, size: int) -> RemovedFile:
    relative = os.path.relpath(path, root)
    digest = hashlib.sha256(relative.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    suffix = Path(relative).suffix.lower()
    return RemovedFile(digest, suffix if len(suffix) <= 12 and suffix[1:].isalnum() else "", size)


def empty_directory(
    root: Path, *, older_than: float | None = None, found: list[RemovedFile] | None = None, base: Path | None = None
) -> int:
    """Remove what is inside `root` (not `root` itself); with `older_than` (a time.time() value),
    only entries last modified before it. Returns the number of files (not folders) removed, and
    describes each in `found`."""
    removed = 0
    base = base or root
    if not root.is_dir():
        return 0
    for entry in list(os.scandir(root)):
        try:
            stat = entry.stat(follow_symlinks=False)
            if entry.is_dir(follow_symlinks=False):
                removed += empty_directory(Path(entry.path), older_than=older_than, found=found, base=base)
                if older_than is None or (stat.st_mtime < older_than and not any(os.scandir(entry.path))):
                    os.rmdir(entry.path)
            elif older_than is None or stat.st_mtime < older_than:
                os.unlink(entry.path)
                removed += 1
                if found is not None:
                    found.append(_removed(entry.path, base, stat.st_size))
        except FileNotFoundError:  # a library removed it itself meanwhile
            continue
    return removed


@dataclass(frozen=True)
class SweepReport:
    """One sweep that removed files."""

    time: float
    reason: str
    files: tuple[RemovedFile, ...]

    @property
    def removed(self) -> int:
        return len(self.files)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def listed(self) -> list[str]:
        """The first `FILES_LISTED` files, described (the count and bytes cover them all)."""
        return [f.describe() for f in self.files[:FILES_LISTED]]

    def as_dict(self) -> dict[str, object]:
        return {
            "time": self.time,
            "reason": self.reason,
            "removed": self.removed,
            "bytes": self.bytes,
            "files": self.listed(),
        }


class ProcessIsolation:
    """The runtime directory of one `serve`: `start()` confines and empties it, `close()` empties
    it and restores the variables (so a test can run it in-process)."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] = os.environ) -> None:
        self.root = state_paths.runtime_dir(settings, environ).absolute()
        self.record_path = state_paths.cleanup_record_file(settings)
        self.state_dir = settings.state_dir
        self.interval_s = settings.isolation.cleanup_interval_s
        self._saved_env: dict[str, str | None] = {}
        self._saved_tempdir: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._on_sweep: Callable[[SweepReport], None] | None = None
        self.pending: list[SweepReport] = []  # reports of sweeps made before `attach`

    def attach(self, on_sweep: Callable[[SweepReport], None]) -> None:
        """Report every sweep that removes files to `on_sweep` (the audit trail), those made so
        far first. A report `on_sweep` cannot take is logged; the cleanup record keeps it."""
        with self._lock:
            self._on_sweep = on_sweep
            pending, self.pending = self.pending, []
        for report in pending:
            self._report(report)

    def _report(self, report: SweepReport) -> None:
        on_sweep = self._on_sweep
        if on_sweep is None:
            self.pending.append(report)
            return
        try:
            on_sweep(report)
        except Exception:  # the sweep itself is done; the record file still has it
            log.exception("could not record the runtime sweep (%d file(s) removed) in the audit trail", report.removed)

    def start(self) -> ProcessIsolation:
        self._refuse_shared()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # an existing directory too: it holds whatever libraries write
        self.sweep("start")
        self._saved_env = {name: os.environ.get(name) for name in CACHE_ENV}
        os.environ.update({name: str(self.root / sub) for name, sub in CACHE_ENV.items()})
        self._saved_tempdir, tempfile.tempdir = tempfile.tempdir, str(self.root / CACHE_ENV["TMPDIR"])
        self._thread = threading.Thread(target=self._run, name="zguard-runtime-cleanup", daemon=True)
        self._thread.start()
        log.info(
            "temporary files and caches confined to %s (mode 0700, emptied every %.0f s)", self.root, self.interval_s
        )
        return self

    def _refuse_shared(self) -> None:
        """Emptying is recursive: never a directory that holds the state or that others use."""
        state = self.state_dir.absolute()
        if state == self.root or self.root in state.parents:
            raise ConfigError(
                [
                    f"isolation.runtime_dir: {self.root} contains state_dir {state}; emptying it would delete the "
                    "state; give the runtime directory a path of its own, e.g. /run/zguard"
                ]
            )
        try:
            st = self.root.stat()
        except FileNotFoundError:
            return
        if st.st_uid != os.geteuid() or st.st_mode & 0o002:
            raise ConfigError(
                [
                    f"isolation.runtime_dir: {self.root} is shared (owner uid {st.st_uid}, mode {st.st_mode & 0o7777:o}); "
                    "zguard empties it, so give it a directory of its own, e.g. /run/zguard (systemd RuntimeDirectory=zguard)"
                ]
            )

    def sweep(self, reason: str) -> int:
        """Empty the runtime directory (periodic sweeps: what is older than the interval), keep
        its subdirectories in place, and record the time for `zguard doctor`."""
        found: list[RemovedFile] = []
        with self._lock:
            older_than = time.time() - self.interval_s if reason == "periodic" else None
            removed = empty_directory(self.root, older_than=older_than, found=found)
            for sub in sorted(set(CACHE_ENV.values())):
                (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            report = SweepReport(time.time(), reason, tuple(found))
            self._write_record(report)
        if removed:
            level = logging.WARNING if reason == "start" else logging.INFO  # left by an earlier run
            log.log(level, "runtime directory %s: %d file(s) removed (%s)", self.root, removed, reason)
            self._report(report)
        return removed

    def _history(self) -> list[dict[str, object]]:
        try:
            history = json.loads(self.record_path.read_text(encoding="utf-8")).get("history", [])
        except (OSError, ValueError, AttributeError):
            return []
        return [entry for entry in history if isinstance(entry, dict)] if isinstance(history, list) else []

    def _write_record(self, report: SweepReport) -> None:
        history = self._history()
        if report.removed:
            history = [*history, report.as_dict()][-HISTORY_MAX:]
        record = {
            "time": report.time,
            "runtime_dir": str(self.root),
            "removed": report.removed,
            "reason": report.reason,
            "history": history,
        }
        try:
            temporary = self.record_path.with_suffix(".tmp")
            temporary.write_text(json.dumps(record), encoding="utf-8")
            temporary.replace(self.record_path)
        except OSError as exc:  # only doctor's report depends on it
            log.warning("could not record the runtime cleanup in %s: %s", self.record_path, exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep("periodic")
            except OSError:
                log.exception("runtime directory sweep failed; trying again in %.0f s", self.interval_s)

    def close(self, reason: str = "stop") -> None:
        """Stop the periodic sweep, empty the directory, restore the variables (for in-process use)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(10)
        try:
            self.sweep(reason)
        except OSError:
            log.exception("could not empty the runtime directory %s at stop", self.root)
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        tempfile.tempdir = self._saved_tempdir
