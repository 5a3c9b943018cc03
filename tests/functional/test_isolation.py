"""Zero persistence: a real `zguard serve` leaves neither the prompt nor the images on disk.

Generations run with a distinctive prompt; then every writable place the process could reach
(the state dir with its runtime dir, the system temp dirs, the working directory, HOME) is
scanned, and no file created or changed since the start may hold the prompt's bytes (UTF-8,
UTF-16), the returned image bytes, their decoded pixels, or (in the places private to the
process) anything that begins like an image. Core dumps are off for the served process.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.common.servers import ZguardProcess
from zguard.config import Settings
from zguard.errors import ConfigError
from zguard.ops.persistence import CleanupRecord, files_under
from zguard.serve.isolation import CACHE_ENV, ProcessIsolation

TOKEN = "quokka-lantern-zp7q"
PROMPT = f"a {TOKEN} over a harbour at dusk, 袋鼠灯笼港口黄昏"
SHARED_ROOTS = [Path(tempfile.gettempdir()), Path("/var/tmp"), Path("/dev/shm"), Path.home()]
IMAGE_START = re.compile(rb"\A(\x89PNG\r\n\x1a\n|\xff\xd8\xff|GIF8[79]a|RIFF....WEBP)", re.DOTALL)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_READ = 256 * 1024 * 1024


def changed_since(root: Path, since: float) -> Iterator[Path]:
    """Regular files under `root` created, written or re-permissioned at or after `since`."""
    for base, _dirs, names in os.walk(root):
        for name in names:
            path = Path(base) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            if path.is_file() and not path.is_symlink() and max(st.st_mtime, st.st_ctime) >= since:
                yield path


def read(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_READ)
    except OSError:
        return b""


def needles(images: list[bytes]) -> dict[str, bytes]:
    out = {
        "prompt utf-8": PROMPT.encode("utf-8"),
        "prompt utf-16-le": PROMPT.encode("utf-16-le"),
        "prompt utf-16-be": PROMPT.encode("utf-16-be"),
        "token utf-8": TOKEN.encode("utf-8"),
        "token utf-16-le": TOKEN.encode("utf-16-le"),
    }
    for i, png in enumerate(images):
        middle = len(png) // 2
        out[f"image {i} encoded bytes"] = png[middle : middle + 48]
        pixels = Image.open(io.BytesIO(png)).convert("RGB").tobytes()
        out[f"image {i} pixels"] = pixels[len(pixels) // 2 : len(pixels) // 2 + 48]
    return out


def test_generations_leave_no_prompt_or_image_on_disk(tmp_path: Path) -> None:
    state, cwd = tmp_path / "state", tmp_path / "cwd"
    cwd.mkdir()
    leftover = state / "run" / "tmp" / "from-an-earlier-run.png"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(PNG_SIGNATURE + b"old")
    started = time.time() - 1  # file times have coarse granularity on some filesystems
    server = ZguardProcess(state, env={"ZGUARD_GENERATION__MIN_SIDE": "16"}, cwd=cwd).start()
    images: list[bytes] = []
    try:
        server.wait_ready()
        assert not leftover.exists(), "the runtime directory is emptied at start"
        for seed in range(3):
            body = {"prompt": PROMPT, "size": "64x64", "num_inference_steps": 2, "seed": seed, "n": 2}
            resp = httpx.post(f"{server.api}/v1/images/generations", json=body, timeout=120)
            assert resp.status_code == 200, resp.text
            images += [base64.b64decode(item["b64_json"]) for item in resp.json()["data"]]
        assert server.proc is not None
        limits = Path(f"/proc/{server.proc.pid}/limits").read_text(encoding="ascii")
        core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
        assert core.split()[4:6] == ["0", "0"], core
        planted = state / "run" / "torch" / "kernel-cache.bin"
        planted.write_bytes(b"written by a library while serving")
        assert server.stop() == 0
    finally:
        server.__exit__()
    assert len(images) == 6
    assert all(png.startswith(PNG_SIGNATURE) for png in images)

    assert files_under(state / "run") == [], "the runtime directory is emptied at exit"
    record = CleanupRecord.read(state / "runtime-cleanup.json")
    assert record is not None
    assert record.reason == "stop"
    assert record.runtime_dir == str(state / "run")

    # each sweep that removed something is evidence: an audit event, and the record's history
    def described(relative: str, size: int) -> str:
        return f"{hashlib.sha256(relative.encode()).hexdigest()[:16]}{Path(relative).suffix}:{size}"

    with sqlite3.connect(state / "zguard.db") as db:
        bodies = [json.loads(row[0]) for row in db.execute("SELECT body FROM audit_events ORDER BY seq")]
    swept = {e["detail"]["reason"]: e["detail"] for e in bodies if e["type"] == "runtime.swept"}
    assert swept["start"]["removed"] == 1
    assert swept["start"]["files"] == described("tmp/from-an-earlier-run.png", len(PNG_SIGNATURE) + 3)
    assert swept["stop"]["files"] == described("torch/kernel-cache.bin", 34)
    assert not any("from-an-earlier-run" in json.dumps(e) for e in bodies), "file names are never recorded"
    history = json.loads((state / "runtime-cleanup.json").read_text(encoding="utf-8"))["history"]
    assert [entry["reason"] for entry in history] == ["start", "stop"]

    # private: the state dir (runtime dir inside), the working directory, the server's log
    assert leaks(private=[tmp_path], shared=SHARED_ROOTS, since=started, searched=needles(images)) == []


def leaks(*, private: list[Path], shared: list[Path], since: float, searched: dict[str, bytes]) -> list[str]:
    """Each file changed since `since` that holds a needle, or (in `private` roots) image data."""
    found = []
    for root in [*private, *shared]:
        for path in changed_since(root, since):
            data = read(path)
            found += [f"{path}: {what}" for what, needle in searched.items() if needle in data]
            if root in private and (IMAGE_START.match(data) or PNG_SIGNATURE in data):
                found.append(f"{path}: image data")
    return found


def test_the_scan_finds_a_planted_prompt_and_image(tmp_path: Path) -> None:
    """The scan above is not vacuous: the same function finds each kind of leak."""
    since = time.time() - 1
    png = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 90)).save(png, format="PNG")
    image = png.getvalue()
    (tmp_path / "a.log").write_bytes(b"... " + PROMPT.encode("utf-16-le") + b" ...")
    (tmp_path / "b.bin").write_bytes(b"xx" + image[len(image) // 2 : len(image) // 2 + 64])
    (tmp_path / "c.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    found = leaks(private=[tmp_path], shared=[], since=since, searched=needles([image]))
    assert sorted(line.split(": ")[1] for line in found) == [
        "image 0 encoded bytes",
        "image data",
        "prompt utf-16-le",
        "token utf-16-le",
    ]


def test_isolation_points_temp_and_caches_into_the_runtime_dir_and_restores_them(tmp_path: Path) -> None:
    settings = Settings.model_validate({"state_dir": str(tmp_path / "state"), "isolation": {"cleanup_interval_s": 60}})
    (tmp_path / "state").mkdir(mode=0o700)
    before = {name: os.environ.get(name) for name in CACHE_ENV}
    isolation = ProcessIsolation(settings, environ={}).start()
    try:
        root = tmp_path / "state" / "run"
        assert root.stat().st_mode & 0o777 == 0o700
        for name, sub in CACHE_ENV.items():
            assert os.environ[name] == str(root / sub)
        assert tempfile.gettempdir() == str(root / "tmp")
        with tempfile.NamedTemporaryFile(delete=False) as handle:
            handle.write(b"x")
        assert Path(handle.name).parent == root / "tmp"
        assert isolation.sweep("periodic") == 0  # younger than the interval: left for the next sweep
        os.utime(handle.name, (time.time() - 120, time.time() - 120))
        assert isolation.sweep("periodic") == 1
        (root / "huggingface" / "hub" / "blob").write_bytes(b"y")
    finally:
        isolation.close()
    assert files_under(tmp_path / "state" / "run") == []
    assert {name: os.environ.get(name) for name in CACHE_ENV} == before
    assert tempfile.gettempdir() != str(tmp_path / "state" / "run" / "tmp")


def test_runtime_dir_follows_systemd_then_the_setting(tmp_path: Path) -> None:
    from zguard.state_paths import runtime_dir

    settings = Settings.model_validate({"state_dir": str(tmp_path)})
    assert runtime_dir(settings, {}) == tmp_path / "run"
    assert runtime_dir(settings, {"RUNTIME_DIRECTORY": "/run/zguard:/run/other"}) == Path("/run/zguard")
    chosen = Settings.model_validate({"state_dir": str(tmp_path), "isolation": {"runtime_dir": "/srv/zg-run"}})
    assert runtime_dir(chosen, {"RUNTIME_DIRECTORY": "/run/zguard"}) == Path("/srv/zg-run")


def test_hardening_turns_core_dumps_off_and_the_process_non_dumpable() -> None:
    """In a child process (it cannot be undone), as `serve` does it: RLIMIT_CORE 0, PR_GET_DUMPABLE 0.
    A served process's own limit is read from /proc above; its dumpable flag is not shown in /proc."""
    code = (
        "import ctypes, resource\n"
        "from zguard.serve.isolation import disable_core_dumps\n"
        "assert disable_core_dumps() == []\n"
        "print(resource.getrlimit(resource.RLIMIT_CORE), ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "(0, 0) 0"


def test_a_shared_or_state_holding_runtime_dir_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for runtime, why in ((tmp_path, "contains state_dir"), (state, "contains state_dir")):
        settings = Settings.model_validate({"state_dir": str(state), "isolation": {"runtime_dir": str(runtime)}})
        with pytest.raises(ConfigError, match=why):
            ProcessIsolation(settings).start()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "someone-elses-file").write_bytes(b"x")
    settings = Settings.model_validate({"state_dir": str(state), "isolation": {"runtime_dir": str(shared)}})
    with pytest.raises(ConfigError, match="is shared"):
        ProcessIsolation(settings).start()
    assert (shared / "someone-elses-file").exists()
