"""Settings `approvals`: model-use approvals (docs/governance.md).

Decisions written here:

- Off by default (`required: false`) so an existing deployment keeps generating after an
  upgrade; a bank turns it on once its approvers exist. Requests, decisions and grants are
  kept either way, so approvals can be collected before they are enforced.
- `quorum` is 1 or 2 distinct approvers; `per_model_quorum` raises or lowers it for one model,
  named by its id or its manifest digest (the digest wins when both are listed).
- The caps (`max_validity_days`, `max_images_per_day`, `max_images_total`) bound what a request
  may ask for; a request over one is refused with its own code, never silently trimmed.
- `recertification_schedule: quarterly` opens the current quarter's campaign at the first check
  on or after the quarter's first day (zguard.services.recertification.RecertificationService.
  run_due), its deadline `recertification_days` later but never past the quarter's end. The
  checks (also closing campaigns past their deadline) run in `serve` every
  `recertification_check_interval_s`, or from cron with `zguard approvals recertify --due`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from zguard.config.sections import Section

MODEL_KEY_MAX = 128
MAX_PER_MODEL_RULES = 64


class ApprovalSettings(Section):
    """Who may generate with which model, for what, until when and how much."""

    required: bool = Field(
        False,
        description="Refuse a generation (403 `approval_required`) unless the caller holds an active grant for the served model. Off: requests and grants are kept but not enforced.",
    )
    max_validity_days: int = Field(
        90, ge=1, le=366, description="The longest validity a request may ask for, in days; a grant expires by itself."
    )
    quorum: Literal[1, 2] = Field(
        1, description="How many distinct approvers (never the requester) must approve before a grant is made."
    )
    per_model_quorum: dict[str, Literal[1, 2]] = Field(
        default_factory=dict,
        description="The quorum for one model, keyed by its id or manifest digest (`sha256:...`); the digest's rule wins.",
    )
    request_ttl_days: int = Field(
        14, ge=1, le=90, description="Days an undecided request stays open; then it expires (`approval.expired`)."
    )
    max_images_per_day: int = Field(
        1000, ge=1, le=1_000_000, description="The largest per-day image quota (UTC days) a request may ask for."
    )
    max_images_total: int = Field(
        100_000, ge=1, le=100_000_000, description="The largest total image quota a request may ask for."
    )
    recertification_schedule: Literal["off", "quarterly"] = Field(
        "off",
        description="`quarterly`: open each quarter's re-certification campaign by itself (the first check on or after the quarter's first day). `off`: campaigns are opened with `zguard approvals recertify --quarter`.",
    )
    recertification_days: int = Field(
        21,
        ge=1,
        le=90,
        description="Days a scheduled campaign gives its approvers, from its opening; capped at the quarter's end.",
    )
    recertification_check_interval_s: int = Field(
        300,
        ge=30,
        le=3600,
        description="How often `serve` closes campaigns past their deadline (revoking unconfirmed grants) and opens the scheduled one.",
    )

    @field_validator("per_model_quorum")
    @classmethod
    def _bounded_rules(cls, rules: dict[str, int]) -> dict[str, int]:
        if len(rules) > MAX_PER_MODEL_RULES:
            raise ValueError(f"at most {MAX_PER_MODEL_RULES} per-model rules")
        for key in rules:
            if not 1 <= len(key) <= MODEL_KEY_MAX or key != key.strip():
                raise ValueError(f"model keys are 1 to {MODEL_KEY_MAX} characters without outer spaces: {key[:40]!r}")
        return rules

    def quorum_for(self, model_id: str, digest: str | None) -> int:
        """The approvals a request for this model needs."""
        if digest is not None and digest in self.per_model_quorum:
            return self.per_model_quorum[digest]
        return self.per_model_quorum.get(model_id, self.quorum)
