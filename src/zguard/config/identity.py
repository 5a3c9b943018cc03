"""Settings of the bank's identity provider: `identity.jwt`, the IdP's bearer tokens on the API.

Declared apart from `zguard.config.settings` (which embeds `IdentitySettings` as `identity`) so the
OIDC, LDAP and SCIM sections can join it without growing that module. Pure: no I/O here; the keys
are fetched by `zguard.services.jwt_bearer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from pydantic import Field, field_validator, model_validator

from zguard.config.identity_ldap import LdapSettings, check_ldap_roles
from zguard.config.identity_oidc import OidcSettings, check_oidc
from zguard.config.identity_scim import ScimSettings, check_scim_roles
from zguard.config.idp import SIGNATURE_ALGORITHMS, check_algorithms, check_idp_url
from zguard.config.sections import Section
from zguard.security.rbac import RoleRegistry

DEFAULT_ALGORITHMS: Final = ("RS256", "ES256", "EdDSA")
DEFAULT_PRINCIPAL_CLAIMS: Final = ("azp", "client_id", "sub")
CLAIM_NAME_MAX: Final = 128


class JwtSettings(Section):
    """Bearer JWTs issued by the bank's IdP (client-credentials tokens of business systems),
    accepted on the API beside zguard's own `zg_` keys (zguard.services.jwt_bearer)."""

    enabled: bool = Field(
        False,
        description="Accept `Authorization: Bearer <JWT>` signed by the IdP in `issuer`, beside zguard's own `zg_` API keys. Needs `api_auth.enabled`.",
    )
    issuer: str | None = Field(
        None,
        description="The IdP's issuer, exactly as its tokens' `iss` claim and its discovery document say it, e.g. `https://sso.bank.example/realms/bank` (Keycloak) or `https://login.microsoftonline.com/TENANT-ID/v2.0` (Entra ID). https only (http only for a loopback host). Required when `enabled`.",
    )
    audience: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="What a token's `aud` must contain for zguard to accept it: the identifier the IdP gives zguard as a resource (an audience mapper's value in Keycloak, the application ID URI `api://...` in Entra ID). A token with several audiences must also carry `azp` (OpenID Connect Core 2). Required when `enabled`.",
    )
    jwks_url: str | None = Field(
        None,
        description="Where the IdP publishes its signing keys (JWKS). Unset: the `jwks_uri` of `{issuer}/.well-known/openid-configuration`, read on first use (its `issuer` must equal `issuer`). Keys come only from here: a token's `jku`, `x5u`, `x5c` or embedded `jwk` header is refused, never followed.",
    )
    ca_file: Path | None = Field(
        None,
        description="PEM CA certificate(s) the IdP's TLS certificate must chain to (the bank's internal CA); unset: the system's CAs. Verification is never switched off.",
    )
    algorithms: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS),
        description=f"Signature algorithms a token's `alg` may name; a JWKS key is used only for its own key type (and its `alg`, when it states one). Known: {', '.join(SIGNATURE_ALGORITHMS)}. `none` and the HMAC algorithms (HS256, HS384, HS512) are refused at start.",
    )
    leeway_s: int = Field(
        30,
        ge=0,
        le=300,
        description="Clock skew allowed, in seconds, when `exp`, `nbf` and `iat` are compared with this host's clock.",
    )
    principal_claims: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PRINCIPAL_CLAIMS),
        description="Claims that name the calling system, in order: the first one the token carries as a non-empty string names the service principal `jwt:<value>` (what rate limits, quotas and the audit trail see). Default `azp`, then `client_id`, then `sub`: the client id in Keycloak (`azp`), Entra ID v2 (`azp`) and RFC 9068 tokens (`client_id`). Name one claim only (e.g. `[azp]`) where another client could hold a `sub` equal to a client id.",
    )
    roles_claim: str | None = Field(
        "roles",
        min_length=1,
        max_length=CLAIM_NAME_MAX,
        description="Claim holding the token's role or group names, a string or a list of strings: `roles` (Entra ID app roles), `groups`, or a dotted path into nested claims such as `realm_access.roles` or `resource_access.zguard.roles` (Keycloak); a claim whose own name contains dots is found first. Null: tokens get no roles from claims.",
    )
    role_map: dict[str, str] = Field(
        default_factory=dict,
        description="Values of `roles_claim` → the zguard role each grants, e.g. `{zg-generators: generator, zg-auditors: auditor}`. Values not listed grant nothing; a token with none of them authenticates with no roles (every permission 403). A token whose values map to roles that combine separated duties is refused (401 `invalid_api_key`, audited `sod_conflict`) with the values named.",
    )
    jwks_refresh_cooldown_s: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="Least time between two fetches of the JWKS. A token with an unknown `kid` fetches it again (the IdP may have rotated its keys) at most this often, one fetch for all requests waiting on it; within the cooldown such tokens are refused (`unknown_kid`).",
    )
    jwks_cache_s: float = Field(
        3600.0,
        ge=60,
        le=86_400,
        description="Longest the fetched keys are used without asking the IdP again, so a key it withdrew stops verifying within this time. While the refresh runs, or if it fails, tokens whose key is cached keep verifying (the failure is logged).",
    )
    jwks_max_keys: int = Field(
        20,
        ge=1,
        le=100,
        description="Most signing keys taken from the JWKS (keys with `use: sig` or no `use`, of a type `algorithms` allows); a set with more is refused as a whole.",
    )
    timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Seconds to connect to the IdP and read its JWKS or discovery document (each at most 64 KiB, redirects not followed). With no key cached, a token that needs the IdP then gets 503 `identity_provider_unavailable`.",
    )

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, value: str | None) -> str | None:
        return check_idp_url(value, "issuer")

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        return check_idp_url(value, "jwks_url")

    @field_validator("algorithms", "principal_claims", mode="before")
    @classmethod
    def _one_string_is_a_list(cls, value: object) -> object:
        return value.replace(",", " ").split() if isinstance(value, str) else value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        return check_algorithms(value, "identity.jwt.algorithms")

    @field_validator("principal_claims")
    @classmethod
    def _claim_names(cls, value: list[str]) -> list[str]:
        if not value or any(not name.strip() or len(name) > CLAIM_NAME_MAX for name in value):
            raise ValueError("name one or more claims, e.g. [azp, client_id, sub]")
        return value

    @field_validator("role_map")
    @classmethod
    def _map_keys(cls, value: dict[str, str]) -> dict[str, str]:
        if any(not key.strip() for key in value):
            raise ValueError("an empty claim value; write the group or role name the IdP sends")
        return value

    @model_validator(mode="after")
    def _enabled_needs_issuer_and_audience(self) -> JwtSettings:
        if self.enabled:
            missing = [name for name in ("issuer", "audience") if getattr(self, name) is None]
            if missing:
                raise ValueError(
                    f"identity.jwt.enabled needs {' and '.join(missing)}: the IdP's issuer URL (its tokens' `iss`) "
                    "and the audience its tokens for zguard carry (`aud`)"
                )
        return self


class IdentitySettings(Section):
    """The bank's identity provider."""

    jwt: JwtSettings = Field(
        default_factory=JwtSettings,
        description="API bearer tokens (JWTs) from the IdP: keys from its JWKS, `iss` and `aud` pinned, claims mapped to roles.",
    )
    oidc: OidcSettings = Field(
        default_factory=OidcSettings,
        description="Console sign-in through the IdP with OpenID Connect: authorization code with PKCE, the id_token verified, groups mapped to roles at every login, RP-initiated logout.",
    )
    ldap: LdapSettings = Field(
        default_factory=LdapSettings,
        description="Console and HTTP Basic sign-in against LDAP / Active Directory: LDAPS or StartTLS, a service-account search, a bind as the user, groups mapped to roles.",
    )
    scim: ScimSettings = Field(
        default_factory=ScimSettings,
        description="SCIM 2.0 provisioning at `/scim/v2` on the console listener: the IdP creates users, disables leavers at once and moves group memberships, which map to roles.",
    )


def check_role_map(identity: IdentitySettings, registry: RoleRegistry, *, api_auth_enabled: bool) -> None:
    """ValueError naming the key when `identity` cannot be used with these roles: every role
    `role_map` grants must exist, and tokens need authentication to be on."""
    jwt = identity.jwt
    check_ldap_roles(identity.ldap, registry, api_auth_enabled=api_auth_enabled)
    check_scim_roles(identity.scim, registry)
    check_oidc(identity.oidc, registry, api_auth_enabled=api_auth_enabled)
    if jwt.enabled and not api_auth_enabled:
        raise ValueError("identity.jwt.enabled needs api_auth.enabled: with authentication off no token is read")
    unknown = sorted({role for role in jwt.role_map.values() if registry.get(role) is None})
    if unknown:
        raise ValueError(
            f"identity.jwt.role_map: unknown role(s) {', '.join(unknown)}; known: {', '.join(sorted(registry.roles))}"
        )
