"""Hosts for the host integrity checks: fake /proc and /sys trees, a service account, a model
directory laid out as `zguard install` leaves it, and `nobody` able to run this Python."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from zguard.ops.host_checks import Host, ProcessUser

SERVICE = ProcessUser(uid=4242, gid=4242, gids=frozenset({4242}))  # zguard's account, as the checks see it
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="builds files owned by other accounts")


def fake_host(tmp_path: Path, mounts: list[tuple[str, str, str, str]]) -> tuple[Path, Path]:
    """A /proc with `mounts` (MAJ:MIN, mount point, fstype, source) and an empty /sys."""
    proc, sys_root = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    lines = [
        f"{i + 20} 1 {dev} / {point} rw,relatime - {fs} {src} rw" for i, (dev, point, fs, src) in enumerate(mounts)
    ]
    (proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n", encoding="ascii")
    (sys_root / "dev" / "block").mkdir(parents=True)
    return proc, sys_root


def block_device(
    sys_root: Path, dev: str, *, uuid: str | None = None, name: str = "", slaves: tuple[str, ...] = ()
) -> Path:
    node = sys_root / "devices" / "virtual" / "block" / (name or dev.replace(":", "_"))
    node.mkdir(parents=True)
    if uuid is not None:
        (node / "dm").mkdir()
        (node / "dm" / "uuid").write_text(uuid + "\n", encoding="ascii")
        (node / "dm" / "name").write_text((name or dev) + "\n", encoding="ascii")
    (node / "slaves").mkdir()
    for slave in slaves:  # as in sysfs: slaves/<name> links to the lower device's directory
        (node / "slaves" / slave).symlink_to(sys_root / "devices" / "virtual" / "block" / slave)
    (sys_root / "dev" / "block" / dev).symlink_to(node)
    return node


def luks_host(tmp_path: Path, who: ProcessUser = SERVICE) -> Host:
    """A host whose every path lies on a LUKS volume, seen by `who`."""
    proc, sys_root = fake_host(tmp_path / "host", [("253:0", "/", "ext4", "/dev/mapper/secure-models")])
    block_device(sys_root, "253:0", uuid="CRYPT-LUKS2-0f1e2d3c4b5a69788796a5b4c3d2e1f0-secure-models", name="dm-0")
    return Host(who, proc, sys_root)


def act_as(monkeypatch: pytest.MonkeyPatch, host: Host) -> None:
    """Every command in this process checks the host as `host` (another account, fake /proc)."""
    monkeypatch.setattr(Host, "current", classmethod(lambda cls: host))


def chown_tree(root: Path, uid: int, gid: int) -> None:
    for path in [root, *root.rglob("*")]:
        os.lchown(path, uid, gid)


def lay_out_as_installed(root: Path, gid: int = SERVICE.gid) -> Path:
    """Owners and modes as `zguard install` leaves a model: root:GROUP, folders 750, files 640."""
    for path in [root, *root.rglob("*")]:
        path.chmod(0o750 if path.is_dir() else 0o640)
    if os.geteuid() == 0:
        chown_tree(root, 0, gid)
    return root


def installed_model(root: Path, gid: int = SERVICE.gid) -> Path:
    """A small model directory (model_index.json and one weight file), laid out as installed."""
    (root / "transformer").mkdir(parents=True)
    (root / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}\n', encoding="utf-8")
    (root / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x01" * 64)
    return lay_out_as_installed(root, gid)


@contextmanager
def python_runnable_by_others() -> Iterator[None]:
    """Let every account enter the folders above this interpreter and its packages (a root-only
    /root holds the pyenv Python here), for as long as the block runs; the modes are put back."""
    changed: dict[Path, int] = {}
    for start in {Path(sys.executable).resolve(), Path(sys.prefix), Path(__file__).resolve()}:
        for folder in reversed(start.parents):
            mode = stat.S_IMODE(folder.stat().st_mode)
            if not mode & stat.S_IXOTH and folder not in changed:
                changed[folder] = mode
                folder.chmod(mode | stat.S_IXOTH)
    try:
        yield
    finally:
        for folder, mode in changed.items():
            folder.chmod(mode)


@contextmanager
def open_tmp() -> Iterator[Path]:
    """A temporary folder (mode 755) every account can reach: pytest's own sit under a 0700
    /tmp/pytest-of-root, which would stop another account's view at the first folder."""
    path = Path(tempfile.mkdtemp(prefix="zguard-host-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
