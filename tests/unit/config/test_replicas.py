"""Settings `serve`: the replica id's rule and its derived default."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from zguard.config.replicas import REPLICA_ID_MAX, ServeSettings, check_replica_id, derived_replica_id


@pytest.mark.parametrize("good", ["a", "gpu-07", "gpu_07.dc1", "7", "A" * REPLICA_ID_MAX])
def test_valid_replica_ids_are_kept(good: str) -> None:
    assert check_replica_id(good) == good
    assert ServeSettings(replica_id=good).resolved_replica_id(5000) == good


@pytest.mark.parametrize(
    "bad", ["", "-gpu", ".gpu", "gpu 07", "gpu/07", "gpu:07", "机器", "A" * (REPLICA_ID_MAX + 1), "a\n"]
)
def test_invalid_replica_ids_are_refused_naming_the_rule(bad: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ServeSettings(replica_id=bad)
    assert "A-Z a-z 0-9 . _ -" in str(refused.value)


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("gpu-07.bank.example", "gpu-07-5000"),
        ("GPU_07", "GPU_07-5000"),
        ("ünïcode host", "n-code-host-5000"),
        ("---", "replica-5000"),
        ("h" * 100, "h" * (REPLICA_ID_MAX - 5) + "-5000"),
    ],
)
def test_the_derived_id_is_the_host_name_and_the_port_and_always_valid(hostname: str, expected: str) -> None:
    derived = derived_replica_id(hostname, 5000)
    assert derived == expected
    assert check_replica_id(derived) == derived


def test_unset_the_id_is_derived_from_this_host() -> None:
    resolved = ServeSettings().resolved_replica_id(15000)
    assert resolved.endswith("-15000")
    assert check_replica_id(resolved) == resolved


def test_the_command_lines_replica_id_overrides_the_setting_and_is_checked_alike() -> None:
    from zguard.cli.serve import with_replica_id
    from zguard.config import Settings
    from zguard.errors import ConfigError

    settings = Settings.model_validate({"serve": {"replica_id": "from-file"}})
    assert with_replica_id(settings, None).serve.replica_id == "from-file"
    assert with_replica_id(settings, "gpu-09").serve.replica_id == "gpu-09"
    with pytest.raises(ConfigError) as refused:
        with_replica_id(settings, "gpu 09")
    assert refused.value.problems[0].startswith("--replica-id: ")
