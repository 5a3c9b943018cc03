"""Settings of SCIM 2.0 provisioning, `identity.scim`: the bank's IdP creates and removes users.

Declared apart from `zguard.config.identity` (which embeds `ScimSettings` as `identity.scim`).
Pure: no I/O. The IdP's bearer credential is never in the settings: only its SHA-256, so a
settings file that leaks (a backup, a support bundle) does not let anyone provision users. Two
digests may be listed, so the secret can be rotated in the IdP without a gap.
"""

from __future__ import annotations

import re
from typing import Final

from pydantic import Field, field_validator, model_validator

from zguard.config.sections import Section
from zguard.security.rates import parse_rates
from zguard.security.rbac import RoleRegistry

SCIM_BODY_MAX: Final = 16 * 1024  # the console listener's body cap (zguard.app.console.CONSOLE_MAX_BODY)
SCIM_NAME_MAX: Final = 256
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_CLIENT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")


class ScimSettings(Section):
    """SCIM 2.0 (RFC 7643/7644) under `/scim/v2` on the console listener (zguard.services.scim)."""

    enabled: bool = Field(
        False,
        description="Serve SCIM 2.0 provisioning at `/scim/v2` on the console listener, so the IdP (Entra ID, Okta, Keycloak with a SCIM plugin) creates users, deactivates leavers and moves group memberships. Needs a state database and `token_sha256`.",
    )
    token_sha256: list[str] = Field(
        default_factory=list,
        max_length=2,
        description="SHA-256 (64 lowercase hex characters) of the bearer secret the IdP sends as `Authorization: Bearer <secret>`; the secret itself is kept only in the IdP. Make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'` and digest it with `printf %s SECRET | sha256sum`. Two digests may be listed while the secret is rotated. Required when `enabled`.",
    )
    client_name: str = Field(
        "idp",
        min_length=1,
        max_length=48,
        description="What the audit trail calls the SCIM client: every SCIM change is recorded with the principal `scim:<client_name>`, e.g. `scim:entra`. Lowercase letters, digits, `.`, `_`, `-`.",
    )
    group_role_map: dict[str, str] = Field(
        default_factory=dict,
        description="SCIM group `displayName` → the zguard role its members get, e.g. `{zg-generators: generator, zg-auditors: auditor}`. A provisioned user's roles are recomputed from all its groups at every membership change; groups not listed grant nothing. A change that would give one user roles combining separated duties is refused (409, audited, nothing changed) with the groups named. Empty: SCIM stores groups but leaves roles to the administrators (`zguard user roles`).",
    )
    max_page_size: int = Field(
        100,
        ge=1,
        le=1000,
        description="Most resources one list request (`GET /scim/v2/Users`, `/Groups`) returns; a larger `count` is cut to this, as RFC 7644 3.4.2.4 allows.",
    )
    max_body_bytes: int = Field(
        SCIM_BODY_MAX,
        ge=1024,
        le=SCIM_BODY_MAX,
        description=f"Largest SCIM request body, in bytes (at most the console listener's cap, {SCIM_BODY_MAX}); larger is refused with 413 before it is parsed. Group memberships arrive in batches well below it.",
    )
    max_filter_chars: int = Field(
        512,
        ge=64,
        le=2048,
        description='Longest `filter` query parameter; longer is refused with 400 `invalidFilter`. Only `userName eq "…"`, `externalId eq "…"` (Users) and `displayName eq "…"`, `externalId eq "…"` (Groups) are understood.',
    )
    failed_attempts_per_address: str = Field(
        "10/minute;100/hour",
        description="Requests with a missing or wrong SCIM bearer allowed from one client address; past it the address gets 429 (in the SCIM error shape) until the window passes, so the secret cannot be guessed online. A right secret is never refused by it.",
    )

    @field_validator("token_sha256", mode="before")
    @classmethod
    def _one_string_is_a_list(cls, value: object) -> object:
        return value.replace(",", " ").split() if isinstance(value, str) else value

    @field_validator("token_sha256")
    @classmethod
    def _digests(cls, value: list[str]) -> list[str]:
        if any(not _DIGEST.match(digest) for digest in value):
            raise ValueError(
                "each entry must be the SHA-256 of the secret as 64 lowercase hex characters (`printf %s SECRET | sha256sum`), never the secret itself"
            )
        return value

    @field_validator("client_name")
    @classmethod
    def _client(cls, value: str) -> str:
        if not _CLIENT.match(value):
            raise ValueError("use lowercase letters, digits, `.`, `_` and `-`, e.g. entra or okta")
        return value

    @field_validator("group_role_map")
    @classmethod
    def _group_names(cls, value: dict[str, str]) -> dict[str, str]:
        if any(not key.strip() or len(key) > SCIM_NAME_MAX for key in value):
            raise ValueError(f"group names must be 1 to {SCIM_NAME_MAX} characters: the group's SCIM displayName")
        return value

    @field_validator("failed_attempts_per_address")
    @classmethod
    def _rates(cls, value: str) -> str:
        parse_rates(value)
        return value

    @model_validator(mode="after")
    def _enabled_needs_a_credential(self) -> ScimSettings:
        if self.enabled and not self.token_sha256:
            raise ValueError(
                "identity.scim.enabled needs token_sha256: the SHA-256 of the bearer secret the IdP will send "
                "(`printf %s SECRET | sha256sum`)"
            )
        return self


def check_scim_roles(scim: ScimSettings, registry: RoleRegistry) -> None:
    """ValueError naming the key when `group_role_map` grants a role the registry does not know."""
    unknown = sorted({role for role in scim.group_role_map.values() if registry.get(role) is None})
    if unknown:
        raise ValueError(
            f"identity.scim.group_role_map: unknown role(s) {', '.join(unknown)}; known: {', '.join(sorted(registry.roles))}"
        )
