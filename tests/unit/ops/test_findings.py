"""Who can read what, decided from owners and mode bits as the kernel decides (no I/O: the
stat results are built here)."""

from __future__ import annotations

import os
import stat

import pytest

from zguard.ops.findings import CheckResult, ProcessUser

SERVICE = ProcessUser(uid=4242, gid=4242, gids=frozenset({4242, 50}))


def entry(mode: int, uid: int = 0, gid: int = 4242) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


@pytest.mark.parametrize(
    ("mode", "uid", "gid", "readable"),
    [
        (stat.S_IFREG | 0o640, 0, 4242, True),  # root:service 640, as zguard install lays it out
        (stat.S_IFREG | 0o600, 0, 4242, False),  # the group has no bits
        (stat.S_IFREG | 0o604, 0, 4242, False),  # a group member gets the group's bits, not the others'
        (stat.S_IFREG | 0o604, 0, 99, True),  # a stranger to the group gets the others' bits
        (stat.S_IFREG | 0o040, 4242, 4242, False),  # the owner gets the owner's bits only
        (stat.S_IFREG | 0o640, 0, 50, True),  # a supplementary group counts
        (stat.S_IFDIR | 0o750, 0, 4242, True),
        (stat.S_IFDIR | 0o740, 0, 4242, False),  # a folder needs x to be entered as well as r
        (stat.S_IFDIR | 0o710, 0, 4242, False),  # ... and r to be listed
    ],
)
def test_can_read_follows_the_owner_group_others_classes(mode: int, uid: int, gid: int, readable: bool) -> None:
    assert SERVICE.can_read(entry(mode, uid, gid)) is readable


def test_root_reads_and_enters_everything() -> None:
    root = ProcessUser(0, 0, frozenset({0}))
    assert root.can_read(entry(stat.S_IFREG | 0o000, 4242, 4242))
    assert root.can_enter(entry(stat.S_IFDIR | 0o000, 4242, 4242))


def test_can_enter_needs_only_x() -> None:
    assert SERVICE.can_enter(entry(stat.S_IFDIR | 0o710))
    assert not SERVICE.can_enter(entry(stat.S_IFDIR | 0o701))


def test_a_finding_prints_as_one_line_with_its_fix() -> None:
    assert CheckResult("x", "fail", "/etc/zguard/zguard.yaml: bad", "chmod 640 it").line() == (
        "/etc/zguard/zguard.yaml: bad; fix: chmod 640 it"
    )
    assert CheckResult("x", "pass", "fine").line() == "fine"
