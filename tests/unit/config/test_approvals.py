"""Settings `approvals`: defaults, bounds, the per-model quorum, and env/file loading."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from zguard.config import Settings
from zguard.config.approvals import MAX_PER_MODEL_RULES, ApprovalSettings


def test_defaults_keep_existing_deployments_generating() -> None:
    section = Settings().approvals
    assert section.required is False
    assert (section.quorum, section.max_validity_days, section.request_ttl_days) == (1, 90, 14)
    assert section.per_model_quorum == {}


@pytest.mark.parametrize(
    "bad",
    [
        {"quorum": 3},
        {"quorum": 0},
        {"max_validity_days": 0},
        {"max_validity_days": 367},
        {"request_ttl_days": 0},
        {"max_images_per_day": 0},
        {"max_images_total": 0},
        {"per_model_quorum": {"z-image": 3}},
        {"per_model_quorum": {" padded ": 2}},
        {"per_model_quorum": {"": 2}},
        {"unknown_key": True},
    ],
)
def test_out_of_bounds_values_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ApprovalSettings.model_validate(bad)


def test_too_many_per_model_rules_are_refused() -> None:
    rules = {f"model-{i}": 2 for i in range(MAX_PER_MODEL_RULES + 1)}
    with pytest.raises(ValidationError, match="per-model rules"):
        ApprovalSettings.model_validate({"per_model_quorum": rules})


def test_the_digest_rule_wins_over_the_id_rule_and_the_default() -> None:
    section = ApprovalSettings.model_validate({"quorum": 1, "per_model_quorum": {"z-image-turbo": 2, "sha256:abc": 1}})
    assert section.quorum_for("z-image-turbo", None) == 2
    assert section.quorum_for("z-image-turbo", "sha256:abc") == 1
    assert section.quorum_for("other", None) == 1
    assert section.quorum_for("other", "sha256:def") == 1


def test_every_field_has_help_text() -> None:
    for name, field in ApprovalSettings.model_fields.items():
        assert field.description, name


def test_environment_variables_reach_the_section() -> None:
    from zguard.config.loader import load_settings

    settings = load_settings(None, environ={"ZGUARD_APPROVALS__REQUIRED": "true", "ZGUARD_APPROVALS__QUORUM": "2"})
    assert settings.approvals.required is True
    assert settings.approvals.quorum == 2
