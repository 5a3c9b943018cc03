"""The open files `serve` needs for its connection caps, and the check at start."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from tests.common.factories import make_settings
from zguard.errors import ConfigError
from zguard.serve.listeners import ACCEPT_BATCH
from zguard.serve.open_files import RESERVE, ensure_open_files, open_files_needed


def test_the_need_grows_with_both_listeners_caps(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, api={"transport": {"max_connections": 100}}, console={"transport": {"max_connections": 10}}
    )
    assert open_files_needed(settings) == 100 + 10 + 2 * ACCEPT_BATCH + RESERVE


def test_a_limit_that_is_high_enough_is_left_alone(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, api={"transport": {"max_connections": 1}}, console={"transport": {"max_connections": 1}}
    )
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    if before[0] != resource.RLIM_INFINITY and before[0] < open_files_needed(settings):
        pytest.skip("this process's own open-file limit is below even the smallest caps")
    assert ensure_open_files(settings) == before[0]
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == before


def test_caps_beyond_the_hard_limit_are_refused_naming_the_fix(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard > 60_000:
        pytest.skip("the hard limit is above what the largest caps need")
    settings = make_settings(tmp_path, api={"transport": {"max_connections": 65536}})
    with pytest.raises(ConfigError) as info:
        ensure_open_files(settings)
    [problem] = info.value.problems
    assert problem.startswith("api.transport.max_connections: ")
    assert f"LimitNOFILE={open_files_needed(settings)}" in problem
    assert "ulimit -n" in problem
