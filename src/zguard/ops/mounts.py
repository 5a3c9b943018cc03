"""Which mount a path lies on and whether its block device is dm-crypt, from the kernel's views.

The mount holding a path is found in `<proc>/self/mountinfo` (longest mount point, the later of
two equal ones: over-mounts); its device `MAJ:MIN` is looked up in `<sys>/dev/block/MAJ:MIN`; a
device-mapper target whose `dm/uuid` begins with `CRYPT-` is dm-crypt (LUKS or plain). Stacks
are followed through `slaves/`, so an LVM volume or RAID on top of a LUKS container counts as
encrypted. The roots are parameters, so tests show an encrypted and an unencrypted device with
fake trees. The verdict with its fix is zguard.ops.host_checks.storage_encryption.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
SYS = Path("/sys")
MAX_DM_DEPTH = 16


@dataclass(frozen=True)
class Mount:
    major: int
    minor: int
    mount_point: str
    fstype: str
    source: str

    @property
    def device(self) -> str:
        return f"{self.major}:{self.minor}"


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as `\\ooo`."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 4].isdigit() and len(text[i + 1 : i + 4]) == 3:
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not sep or len(fields) < 5 or len(tail) < 2 or ":" not in fields[2]:
            continue
        major, minor = fields[2].split(":", 1)
        mounts.append(Mount(int(major), int(minor), _unescape(fields[4]), tail[0], _unescape(tail[1])))
    return mounts


def mount_of(path: Path, proc_root: Path = PROC) -> Mount | None:
    """The mount `path` (resolved) lies on: the longest matching mount point, the last listed."""
    try:
        mounts = parse_mountinfo((proc_root / "self" / "mountinfo").read_text(encoding="utf-8"))
    except OSError:
        return None
    target = os.path.realpath(path)
    best: Mount | None = None
    for mount in mounts:
        point = mount.mount_point.rstrip("/") or "/"
        inside = target == point or target.startswith(point + "/") or point == "/"
        if inside and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = mount
    return best


def encryption_layers(device: str, sys_root: Path = SYS) -> tuple[bool, list[str]]:
    """(encrypted, the device-mapper layers seen as `name uuid`) for block device `MAJ:MIN`."""
    layers: list[str] = []

    def visit(node: Path, depth: int) -> bool:
        if depth > MAX_DM_DEPTH:
            return False
        try:
            uuid = (node / "dm" / "uuid").read_text(encoding="utf-8").strip()
        except OSError:
            uuid = ""
        if uuid:
            try:
                name = (node / "dm" / "name").read_text(encoding="utf-8").strip()
            except OSError:
                name = node.name
            layers.append(f"{name} {uuid}")
            if uuid.startswith("CRYPT-"):
                return True
        slaves = node / "slaves"
        try:
            children = sorted(slaves.iterdir()) if slaves.is_dir() else []
        except OSError:
            children = []
        return bool(children) and all(visit(child, depth + 1) for child in children)

    node = sys_root / "dev" / "block" / device
    try:
        present = node.exists()
    except OSError:
        present = False
    if not present:
        return False, layers
    return visit(node, 0), layers
