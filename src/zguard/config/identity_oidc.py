"""Settings of console sign-in through the bank's IdP with OpenID Connect: `identity.oidc`.

Pure: no I/O here. The client secret file is read, and the discovery document fetched, by
`zguard.services.oidc` when `serve` starts. Every refusal names the key and the fix; the checks
that need the role registry (`role_map`, `required_acr`, `required_amr`) are in `check_oidc`,
called from `zguard.config.identity.check_role_map`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from zguard.config.idp import check_algorithms, check_idp_url
from zguard.config.sections import Section
from zguard.security.rbac import RoleRegistry

CALLBACK_PATH: Final = "/login/oidc/callback"  # where the console answers the IdP (zguard.app.console.oidc)
DEFAULT_SCOPES: Final = ("openid", "profile", "email")
DEFAULT_ALGORITHMS: Final = ("RS256", "ES256", "PS256", "EdDSA")
CLAIM_NAME_MAX: Final = 128
VALUE_MAX: Final = 256


class OidcSettings(Section):
    """People sign in to the console through the bank's IdP: authorization code with PKCE, a
    confidential client, the id_token verified, its claims mapped to roles at every login."""

    enabled: bool = Field(
        False,
        description="Show a sign-in button on the console's login page that signs people in through the IdP in `issuer` (OpenID Connect, authorization code with PKCE). Password sign-in of local users (the break-glass admins) keeps working beside it. Needs `api_auth.enabled`.",
    )
    issuer: str | None = Field(
        None,
        description="The IdP's issuer, exactly as its discovery document and its id_tokens' `iss` say it: `https://sso.bank.example/realms/bank` (Keycloak), `https://login.microsoftonline.com/TENANT-ID/v2.0` (Entra ID). zguard reads `{issuer}/.well-known/openid-configuration` at start (its `issuer` must be this one). https only (http only for a loopback host). Required when `enabled`.",
    )
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=VALUE_MAX,
        description="zguard's client id at the IdP (Keycloak: the client's Client ID; Entra ID: the app registration's Application (client) ID). An id_token's `aud` must contain it, and `azp` must equal it when there are several audiences. Required when `enabled`.",
    )
    client_secret: SecretStr | None = Field(
        None,
        description="The client secret zguard authenticates to the IdP's token endpoint with (HTTP Basic, `client_secret_basic`). Prefer `client_secret_file`; give one of the two when `enabled`.",
    )
    client_secret_file: Path | None = Field(
        None,
        description="A file holding the client secret (its first line; kept mode 0600, owned by the service user), read when `serve` starts. Instead of `client_secret`.",
    )
    redirect_uri: str | None = Field(
        None,
        description=f"The console's callback URL as the browser reaches it, registered at the IdP exactly so: `https://console.bank.example{CALLBACK_PATH}`. Its path must be `{CALLBACK_PATH}`. https only (http only for a loopback host). Required when `enabled`.",
    )
    post_logout_redirect_uri: str | None = Field(
        None,
        description="Where the IdP sends the browser after signing out there (RP-initiated logout), registered at the IdP: e.g. `https://console.bank.example/login`. Unset: the IdP shows its own signed-out page. https only (http only for a loopback host).",
    )
    scopes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SCOPES),
        description="Scopes asked for; must include `openid`. Add what makes the IdP put the groups claim into the id_token where it needs a scope for it.",
    )
    username_claim: str = Field(
        "preferred_username",
        min_length=1,
        max_length=CLAIM_NAME_MAX,
        description="The id_token claim that names the person in zguard (what pages, quotas and the audit trail show): `preferred_username` (Keycloak, Entra ID v2), `upn`, `email` or `sub`. The principal itself is keyed by the IdP's (`iss`, `sub`), which never changes; a rename at the IdP renames the principal.",
    )
    roles_claim: str | None = Field(
        "groups",
        min_length=1,
        max_length=CLAIM_NAME_MAX,
        description="The id_token claim holding the person's groups or roles, a string or a list of strings: `groups`, `roles` (Entra ID app roles), or a dotted path such as `realm_access.roles` (Keycloak); a claim whose own name contains dots is found first. Null: people sign in with no roles from the IdP.",
    )
    role_map: dict[str, str] = Field(
        default_factory=dict,
        description="Values of `roles_claim` → the zguard role each grants, e.g. `{zg-designers: generator, zg-auditors: auditor}`, evaluated at every login. Values not listed grant nothing. A person whose values map to roles that combine separated duties (auditor and generator) is refused with the groups named (audited `sod_conflict`).",
    )
    required_acr: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per zguard role, the id_token `acr` values (authentication context) a login must carry to be given that role, e.g. `{admin: [mfa]}` (Keycloak's level of authentication) or `{admin: ['http://schemas.openid.net/pape/policies/2007/06/multi-factor']}`. A login mapped to the role without one of them is refused (`acr_not_met`), not signed in with fewer roles.",
    )
    required_amr: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per zguard role, `amr` values (authentication methods, RFC 8176) of which the id_token must carry at least one, e.g. `{admin: [mfa, otp, hwk]}` (Entra ID sends `mfa` after multi-factor). A login mapped to the role without any of them is refused (`amr_not_met`).",
    )
    require_provisioned: bool = Field(
        False,
        description="Only people SCIM (`identity.scim`) has already provisioned may sign in; unset, a principal is created at their first login (just in time, `source: oidc`).",
    )
    algorithms: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS),
        description="Signature algorithms an id_token's `alg` may name (asymmetric only: `none` and HS* are refused at start). Keys come only from the discovery document's `jwks_uri`.",
    )
    leeway_s: int = Field(
        30,
        ge=0,
        le=300,
        description="Clock skew allowed, in seconds, when an id_token's `exp`, `nbf` and `iat` are compared with this host's clock.",
    )
    login_timeout_s: int = Field(
        600,
        ge=60,
        le=1800,
        description="How long a sign-in may take at the IdP: the login transaction (`state`, `nonce`, PKCE verifier) in its cookie expires after this, and each is accepted once.",
    )
    ca_file: Path | None = Field(
        None,
        description="PEM CA certificate(s) the IdP's TLS certificate must chain to (the bank's internal CA); unset: the system's CAs. Verification is never switched off.",
    )
    timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Seconds to connect to the IdP and read its discovery document, JWKS or token response (each at most 64 KiB, redirects not followed). When the IdP cannot be reached, sign-in through it answers 503 `identity_provider_unavailable` (audited); password sign-in keeps working.",
    )
    label: str = Field(
        "single sign-on",
        min_length=1,
        max_length=64,
        description="What the login page's button says after 'Sign in with', e.g. `Bank SSO`.",
    )

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, value: str | None) -> str | None:
        return check_idp_url(value, "identity.oidc.issuer")

    @field_validator("redirect_uri")
    @classmethod
    def _redirect_uri(cls, value: str | None) -> str | None:
        checked = check_idp_url(value, "identity.oidc.redirect_uri")
        if checked is not None and (urlsplit(checked).path != CALLBACK_PATH or urlsplit(checked).query):
            raise ValueError(
                f"identity.oidc.redirect_uri must be the console's callback, path {CALLBACK_PATH} and no query: "
                f"e.g. https://console.bank.example{CALLBACK_PATH}"
            )
        return checked

    @field_validator("post_logout_redirect_uri")
    @classmethod
    def _post_logout(cls, value: str | None) -> str | None:
        return check_idp_url(value, "identity.oidc.post_logout_redirect_uri")

    @field_validator("scopes", "algorithms", mode="before")
    @classmethod
    def _one_string_is_a_list(cls, value: object) -> object:
        return value.replace(",", " ").split() if isinstance(value, str) else value

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, value: list[str]) -> list[str]:
        if "openid" not in value:
            raise ValueError("identity.oidc.scopes must include openid, e.g. [openid, profile, email]")
        if any(not scope.isascii() or not scope.isprintable() or " " in scope or len(scope) > 64 for scope in value):
            raise ValueError("identity.oidc.scopes: each scope is one printable ASCII word")
        return list(dict.fromkeys(value))

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        return check_algorithms(value, "identity.oidc.algorithms")

    @field_validator("role_map")
    @classmethod
    def _map_keys(cls, value: dict[str, str]) -> dict[str, str]:
        if any(not key.strip() or len(key) > VALUE_MAX for key in value):
            raise ValueError(
                "identity.oidc.role_map: an empty or over-long claim value; write the group name the IdP sends"
            )
        return value

    @field_validator("required_acr", "required_amr")
    @classmethod
    def _requirements(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for role, accepted in value.items():
            if not accepted or any(not item.strip() or len(item) > VALUE_MAX for item in accepted):
                raise ValueError(f"role {role}: list the accepted values, e.g. {{{role}: [mfa]}}")
        return value

    @model_validator(mode="after")
    def _enabled_needs_a_client(self) -> OidcSettings:
        if not self.enabled:
            return self
        missing = [name for name in ("issuer", "client_id", "redirect_uri") if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"identity.oidc.enabled needs {', '.join(missing)}: the IdP's issuer URL, zguard's client id there, "
                f"and the console's callback URL registered with it (…{CALLBACK_PATH})"
            )
        if (self.client_secret is None) == (self.client_secret_file is None):
            raise ValueError(
                "identity.oidc.enabled needs exactly one of client_secret and client_secret_file: "
                "the confidential client's secret from the IdP (a file, mode 0600, is better)"
            )
        if self.client_secret is not None and len(self.client_secret.get_secret_value()) < 16:
            raise ValueError("identity.oidc.client_secret is under 16 characters; use the secret the IdP generated")
        return self


def check_oidc(oidc: OidcSettings, registry: RoleRegistry, *, api_auth_enabled: bool) -> None:
    """ValueError naming the key when `oidc` cannot be used with these roles."""
    if oidc.enabled and not api_auth_enabled:
        raise ValueError("identity.oidc.enabled needs api_auth.enabled: with authentication off nobody signs in")
    named = {
        "identity.oidc.role_map": set(oidc.role_map.values()),
        "identity.oidc.required_acr": set(oidc.required_acr),
        "identity.oidc.required_amr": set(oidc.required_amr),
    }
    for key, roles in named.items():
        if unknown := sorted(role for role in roles if registry.get(role) is None):
            raise ValueError(f"{key}: unknown role(s) {', '.join(unknown)}; known: {', '.join(sorted(registry.roles))}")
