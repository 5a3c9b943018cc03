"""The vocabulary of the host checks (zguard.ops.host_checks): a finding, the account the checks
are made for, the host they read, and what that account can reach.

Access is decided from owners and mode bits as the kernel does (the owner's bits for the owner,
the group's for a member, the others' for the rest; root reads everything); POSIX ACLs and
read-only mounts are not consulted, so a check may fail a file an ACL would have allowed.
"""

from __future__ import annotations

import grp
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from zguard.ops.mounts import PROC, SYS

Severity = Literal["pass", "warn", "fail"]
SEVERITY_ORDER: Mapping[Severity, int] = {"pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict. `fix` is the command (or setting) that makes it pass."""

    check: str
    severity: Severity
    message: str
    fix: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "severity": self.severity,
            "message": self.message,
            "fix": self.fix,
            "detail": dict(self.detail),
        }

    def line(self) -> str:
        """The finding as `serve` and `config check` print it: the problem, then `; fix: ...`."""
        return f"{self.message}; fix: {self.fix}" if self.fix else self.message


def worst(findings: Iterable[CheckResult]) -> Severity:
    return max((f.severity for f in findings), key=SEVERITY_ORDER.__getitem__, default="pass")


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


@dataclass(frozen=True)
class ProcessUser:
    """Who zguard runs as: the effective uid, its primary group and every group it holds."""

    uid: int
    gid: int
    gids: frozenset[int]

    @classmethod
    def current(cls) -> ProcessUser:
        return cls(os.geteuid(), os.getegid(), frozenset({os.getegid(), *os.getgroups()}))

    def group_name(self) -> str:
        return group_name(self.gid)

    def _bits(self, st: os.stat_result) -> int:
        """The rwx bits that apply to this account: the owner's, else the group's, else the others'."""
        mode = st.st_mode
        if st.st_uid == self.uid:
            return (mode >> 6) & 7
        if st.st_gid in self.gids:
            return (mode >> 3) & 7
        return mode & 7

    def can_read(self, st: os.stat_result) -> bool:
        """Read a file; list and enter a folder (r and x)."""
        need = 5 if stat.S_ISDIR(st.st_mode) else 4
        return self.uid == 0 or self._bits(st) & need == need

    def can_enter(self, st: os.stat_result) -> bool:
        return self.uid == 0 or bool(self._bits(st) & 1)


@dataclass(frozen=True)
class Host:
    """What the checks read beyond the settings; tests give fake roots and another identity."""

    who: ProcessUser
    proc_root: Path = PROC
    sys_root: Path = SYS
    now: Callable[[], float] = time.time

    @classmethod
    def current(cls) -> Host:
        return cls(ProcessUser.current())


def describe(st: os.stat_result) -> str:
    return f"{st.st_uid}:{st.st_gid} mode {stat.S_IMODE(st.st_mode):o}"


def blocking_folder(path: Path, who: ProcessUser) -> tuple[Path, os.stat_result] | None:
    """The first folder above `path` that zguard's account cannot enter, if any."""
    if who.uid == 0:
        return None
    for folder in reversed(Path(os.path.realpath(path)).parents):
        try:
            st = folder.stat()
        except OSError:
            return None  # below a missing folder there is nothing to reach
        if not who.can_enter(st):
            return folder, st
    return None


def unreachable(check: str, what: str, path: Path, who: ProcessUser, group: str) -> CheckResult:
    blocked = blocking_folder(path, who)
    where = f"{blocked[0]} ({describe(blocked[1])})" if blocked else "a folder above it"
    return CheckResult(
        check,
        "fail",
        f"{path} ({what}): the account zguard runs as (uid {who.uid}) cannot reach it: {where} refuses it",
        f"namei -l {path}  (then give the service group r-x on that folder: chgrp {group} FOLDER && chmod g+rx FOLDER)",
        {"path": str(path)},
    )
