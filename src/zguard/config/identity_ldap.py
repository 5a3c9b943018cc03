"""Settings of the bank's directory: `identity.ldap`, LDAP / Active Directory sign-in for the
console's login form and HTTP Basic on the API (zguard.services.ldap_auth).

Decisions written here:
- TLS only: `ldaps://`, or `ldap://` with `start_tls: true` (StartTLS before any bind). A plain
  `ldap://` URL without StartTLS is refused at start, since the service account's and every
  user's password would cross the network in clear. The server's certificate is always verified
  (against `ca_file`, else the system's CAs) and must name the host in the URL.
- `user_filter` and `group_filter` are templates with `{username}` / `{dn}`, which zguard fills
  with RFC 4515-escaped values; a template without its placeholder is refused at start.
- Pure: no I/O here. `bind_password_file` is read by the service when it is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from zguard.config.sections import Section
from zguard.security.rbac import RoleRegistry

DEFAULT_USER_FILTER: Final = "(&(objectClass=person)(uid={username}))"
DEFAULT_GROUP_FILTER: Final = "(|(member={dn})(uniqueMember={dn}))"
FILTER_MAX: Final = 1024
DN_MAX: Final = 1024
ATTRIBUTE_MAX: Final = 64


def check_ldap_url(value: str, what: str) -> str:
    """`value` when it is an ldap:// or ldaps:// URL with a host and nothing after it; else ValueError."""
    parts = urlsplit(value)
    if parts.scheme not in ("ldaps", "ldap") or not parts.hostname:
        raise ValueError(
            f"{what} must be an ldaps:// URL (or ldap:// with start_tls), e.g. ldaps://dc1.bank.example:636"
        )
    if parts.username or parts.password or parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(
            f"{what} names the server only (scheme, host, port); the base DNs and filter are settings of their own"
        )
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{what} has an invalid port") from None
    return value


class LdapSettings(Section):
    """Sign-in against the bank's LDAP directory or Active Directory: a service account finds the
    user's entry, a bind as that entry checks the password, group membership maps to roles."""

    enabled: bool = Field(
        False,
        description="Check console and HTTP Basic passwords of users zguard does not know locally against the directory. Local users (the settings file's, and the store's with a password) are checked first and keep working while the directory is down. Needs `api_auth.enabled` and a state database (directory users become principals with `source: ldap`).",
    )
    url: str | None = Field(
        None,
        description="The directory server: `ldaps://dc1.bank.example:636`, or `ldap://host:389` with `start_tls: true`. Plain LDAP without StartTLS is refused. Required when `enabled`.",
    )
    failover_urls: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Further servers (e.g. the other domain controllers), tried in order when `url` does not answer within `timeout_s`; same TLS rules.",
    )
    start_tls: bool = Field(
        False,
        description="Send StartTLS before anything else on an `ldap://` connection (required for `ldap://`; not allowed with `ldaps://`, which is TLS from the first byte).",
    )
    ca_file: Path | None = Field(
        None,
        description="PEM CA certificate(s) the directory's TLS certificate must chain to (the bank's internal CA); unset: the system's CAs. The certificate must also name the host in the URL. Verification is never switched off.",
    )
    issuer_name: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="What the principals' `issuer` says, e.g. `ad:bank.example`; unset: `url`. Keep it stable: a directory user is one principal per (issuer, subject), so changing it makes every directory user a new principal.",
    )
    bind_dn: str | None = Field(
        None,
        min_length=1,
        max_length=DN_MAX,
        description="DN of the service account that searches for users and groups, e.g. `CN=svc-zguard,OU=Service Accounts,DC=bank,DC=example`; it needs read access only. Required when `enabled`.",
    )
    bind_password: SecretStr | None = Field(
        None,
        description="The service account's password. Prefer `bind_password_file` (or the `ZGUARD_IDENTITY__LDAP__BIND_PASSWORD` environment variable) to keep it out of the settings file.",
    )
    bind_password_file: Path | None = Field(
        None,
        description="File holding the service account's password (one line; a final newline is dropped), read at start. Only one of `bind_password` and `bind_password_file`.",
    )
    user_base_dn: str | None = Field(
        None,
        min_length=1,
        max_length=DN_MAX,
        description="Where users are searched (whole subtree), e.g. `OU=Staff,DC=bank,DC=example`. Required when `enabled`.",
    )
    user_filter: str = Field(
        DEFAULT_USER_FILTER,
        min_length=3,
        max_length=FILTER_MAX,
        description="Filter that finds exactly one user; `{username}` is replaced by the typed name, RFC 4515-escaped. Active Directory: `(&(objectCategory=person)(objectClass=user)(sAMAccountName={username})(!(userAccountControl:1.2.840.113556.1.4.803:=2)))` (the last part skips disabled accounts). Zero or several entries: refused like a wrong password.",
    )
    username_attribute: str = Field(
        "uid",
        min_length=1,
        max_length=ATTRIBUTE_MAX,
        description="Attribute whose value names the zguard principal (as the directory spells it): `uid` (OpenLDAP), `sAMAccountName` (Active Directory).",
    )
    subject_attribute: str | None = Field(
        None,
        min_length=1,
        max_length=ATTRIBUTE_MAX,
        description="Attribute that identifies the entry for good, so a renamed or moved user stays one principal: unset picks `objectGUID` (Active Directory) or `entryUUID` (OpenLDAP), whichever the entry has, else its DN.",
    )
    group_membership: Literal["search", "member_of"] = Field(
        "search",
        description="How the user's groups are found: `search` looks in `group_base_dn` with `group_filter`; `member_of` reads the user entry's `member_of_attribute` (AD's `memberOf`, OpenLDAP's memberof overlay). With `nested_groups`, groups are always searched.",
    )
    group_base_dn: str | None = Field(
        None,
        min_length=1,
        max_length=DN_MAX,
        description="Where groups are searched (whole subtree), e.g. `OU=Groups,DC=bank,DC=example`. Required for `group_membership: search` and `nested_groups`.",
    )
    group_filter: str = Field(
        DEFAULT_GROUP_FILTER,
        min_length=3,
        max_length=FILTER_MAX,
        description="Filter for the groups that have a member; `{dn}` is replaced by the member's DN, RFC 4515-escaped. Active Directory: `(&(objectClass=group)(member={dn}))`.",
    )
    member_of_attribute: str = Field(
        "memberOf",
        min_length=1,
        max_length=ATTRIBUTE_MAX,
        description="Attribute of the user entry listing its groups' DNs, for `group_membership: member_of`.",
    )
    nested_groups: bool = Field(
        False,
        description="Count groups a user is in through other groups (zg-auditors ∋ team-audit ∋ alice). How: see `nested_groups_method`.",
    )
    nested_groups_method: Literal["auto", "in_chain", "recursive"] = Field(
        "auto",
        description="`in_chain`: one search with AD's LDAP_MATCHING_RULE_IN_CHAIN (`member:1.2.840.113556.1.4.1941:=`), evaluated by the domain controller. `recursive`: zguard searches `group_filter` level by level, at most 8 levels and 500 groups (for directories without that rule, e.g. OpenLDAP). `auto`: `in_chain` when the server's root DSE says it is Active Directory, else `recursive`.",
    )
    role_map: dict[str, str] = Field(
        default_factory=dict,
        description="Group → zguard role, the group named by its DN (`CN=zg-auditors,OU=Groups,DC=bank,DC=example`) or its `cn` (`zg-auditors`), compared case-insensitively. Groups not listed grant nothing; a user with none of them signs in with no roles. Groups mapping to roles that combine separated duties refuse the login (audited `sod_conflict`, the groups named).",
    )
    require_provisioned: bool = Field(
        False,
        description="Only directory users already provisioned (by SCIM, `identity.scim`) may sign in; others are refused like a wrong password. Off: a principal is created at the first sign-in.",
    )
    pool_size: int = Field(
        4,
        ge=1,
        le=64,
        description="Service-account connections kept open (and the most directory logins at once; further ones wait). Each login also opens one short connection to bind as the user.",
    )
    timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Seconds to connect to a server and for each answer. A directory that does not answer in time is down: the login is refused with 503 `identity_provider_unavailable` (audited) and local users still sign in.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_ldap_url(value, "identity.ldap.url")

    @field_validator("failover_urls", mode="before")
    @classmethod
    def _one_string_is_a_list(cls, value: object) -> object:
        return value.replace(",", " ").split() if isinstance(value, str) else value

    @field_validator("failover_urls")
    @classmethod
    def _failover_urls(cls, value: list[str]) -> list[str]:
        return [check_ldap_url(url, "identity.ldap.failover_urls") for url in value]

    @field_validator("user_filter")
    @classmethod
    def _user_filter(cls, value: str) -> str:
        return _template(value, "{username}", "identity.ldap.user_filter")

    @field_validator("group_filter")
    @classmethod
    def _group_filter(cls, value: str) -> str:
        return _template(value, "{dn}", "identity.ldap.group_filter")

    @field_validator("role_map")
    @classmethod
    def _map_keys(cls, value: dict[str, str]) -> dict[str, str]:
        if any(not key.strip() or len(key) > DN_MAX for key in value):
            raise ValueError("identity.ldap.role_map: write each group as its DN or its cn")
        return value

    @model_validator(mode="after")
    def _usable(self) -> LdapSettings:
        for url in ([self.url] if self.url else []) + self.failover_urls:
            scheme = urlsplit(url).scheme
            if scheme == "ldap" and not self.start_tls:
                raise ValueError(
                    f"identity.ldap: {url} is plain LDAP: passwords would cross the network in clear; "
                    "use ldaps:// or set identity.ldap.start_tls: true"
                )
            if scheme == "ldaps" and self.start_tls:
                raise ValueError(
                    f"identity.ldap.start_tls is for ldap:// URLs; {url} is TLS already: drop start_tls or use ldap://"
                )
        if self.bind_password is not None and self.bind_password_file is not None:
            raise ValueError("identity.ldap: set bind_password or bind_password_file, not both")
        if not self.enabled:
            return self
        missing = [name for name in ("url", "bind_dn", "user_base_dn") if getattr(self, name) is None]
        if self.bind_password is None and self.bind_password_file is None:
            missing.append("bind_password or bind_password_file")
        if self.group_base_dn is None and (self.group_membership == "search" or self.nested_groups):
            missing.append("group_base_dn (or group_membership: member_of without nested_groups)")
        if missing:
            raise ValueError(f"identity.ldap.enabled needs {', '.join(missing)}")
        return self


def _template(value: str, placeholder: str, what: str) -> str:
    if placeholder not in value:
        raise ValueError(f"{what} must contain {placeholder}, where zguard puts the escaped value")
    if not (value.startswith("(") and value.endswith(")")) or value.count("(") != value.count(")"):
        raise ValueError(f"{what} must be one LDAP filter in parentheses, e.g. {DEFAULT_USER_FILTER}")
    try:
        value.format_map({placeholder[1:-1]: "x"})
    except (KeyError, ValueError, IndexError):
        raise ValueError(f"{what} may hold only the placeholder {placeholder} in braces") from None
    return value


def check_ldap_roles(ldap: LdapSettings, registry: RoleRegistry, *, api_auth_enabled: bool) -> None:
    """ValueError naming the key when `ldap` cannot be used with these roles (like `identity.jwt`'s)."""
    if ldap.enabled and not api_auth_enabled:
        raise ValueError("identity.ldap.enabled needs api_auth.enabled: with authentication off no password is read")
    unknown = sorted({role for role in ldap.role_map.values() if registry.get(role) is None})
    if unknown:
        raise ValueError(
            f"identity.ldap.role_map: unknown role(s) {', '.join(unknown)}; known: {', '.join(sorted(registry.roles))}"
        )
