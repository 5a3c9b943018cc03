"""Sign-in against the bank's LDAP directory or Active Directory (`identity.ldap`).

`LdapDirectory.login(username, password)` returns a `DirectoryUser` (entry DN, principal name,
stable subject, groups, mapped roles) or raises `DirectoryRefused` with a stable `reason`, or
`IdentityProviderUnavailable` (503) when no directory server answers. `AuthService.check_password`
asks it only for names that are no local password user (settings file and store users with a
password are checked first, so the break-glass admins work while the directory is down), under
the same failed-login limits, and turns every refusal into the local wrong-password refusal.

Decisions written here (and in zguard.security.ldap, which escapes and verifies TLS):
- An empty or whitespace-only password is refused before any network work (`empty_password`):
  an LDAP simple bind with a DN and no password is an *unauthenticated* bind (RFC 4513 5.1.2),
  which many servers answer with success. Names that are too long or carry control characters
  are refused before the search (`bad_username`).
- The service account (`bind_dn`) searches `user_base_dn` with `user_filter`, the name
  RFC 4515-escaped, for at most two entries: none (`no_entry`) and several (`several_entries`)
  are refused like a wrong password, so neither reveals which names exist. The password is then
  checked by a simple bind as that entry's DN on a connection of its own to the same server,
  closed right after: the pooled service connections never change identity. A bind refused for
  any reason (wrong password; AD's locked, expired or disabled account) is `wrong_password`, the
  server's diagnostic kept for the audit event only.
- Groups: searched in `group_base_dn` with `group_filter` (`{dn}` = the member), or read from the
  entry's `member_of_attribute`. Nested groups: AD's LDAP_MATCHING_RULE_IN_CHAIN
  (1.2.840.113556.1.4.1941) in one search, or, where the server lacks it (OpenLDAP), a
  breadth-first search level by level, at most `NESTED_MAX_DEPTH` levels and `MAX_GROUPS` groups
  (more are ignored and logged: fewer groups can only grant fewer roles). `auto` picks in-chain
  when the root DSE lists AD's capability 1.2.840.113556.1.4.800, read once.
- Roles: each group's DN and cn (case-insensitive, DNs compared attribute by attribute) through
  `role_map` with `map_roles`; a separation-of-duties conflict is `sod_conflict`, naming the
  groups (as `role_map` spells them).
- Blocking ldap3 calls run in threads (`asyncio.to_thread`), at most `pool_size` logins at once
  (the rest wait); that many service connections are kept and reused, one that fails is dropped
  and the next server in `url` + `failover_urls` tried. Every connect and answer is bounded by
  `timeout_s`. No server answering, a TLS certificate that does not verify, or the service
  account's bind refused: `IdentityProviderUnavailable`, logged; the caller audits it
  (fail closed: nobody signs in through a directory that cannot be trusted or asked).
- No password is logged or put in an event or an exception.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from ldap3 import BASE, SIMPLE, SUBTREE, Connection, Server
from ldap3.core.exceptions import LDAPException
from ldap3.utils.dn import parse_dn

from zguard.config.identity_ldap import LdapSettings
from zguard.errors import IdentityProviderUnavailable
from zguard.security.ldap import close_connection, endpoint, fill_filter, server
from zguard.security.rbac import RoleMappingConflict, RoleRegistry, map_roles

log = logging.getLogger("zguard.ldap")

USERNAME_MAX: Final = 256
PASSWORD_MAX: Final = 1024
NESTED_MAX_DEPTH: Final = 8
MAX_GROUPS: Final = 500
IN_CHAIN_RULE: Final = "1.2.840.113556.1.4.1941"
AD_CAPABILITY: Final = "1.2.840.113556.1.4.800"  # LDAP_CAP_ACTIVE_DIRECTORY_OID in supportedCapabilities
INVALID_CREDENTIALS: Final = 49
SIZE_LIMIT_EXCEEDED: Final = 4
NO_SUCH_OBJECT: Final = 32
RETRY_AFTER_S: Final = 30
UNAVAILABLE_FIX: Final = (
    "check the directory is up and reachable from this host (identity.ldap.url, failover_urls, ca_file, "
    "bind_dn); `zguard doctor` checks the bind; the server log has the error"
)

Reason = Literal[
    "empty_password",
    "bad_username",
    "no_entry",
    "several_entries",
    "wrong_password",
    "sod_conflict",
    "no_name",
    "name_taken",
    "not_provisioned",
    "disabled",
]


class DirectoryRefused(Exception):
    """The directory did not vouch for this login; `reason` is stable, `detail` is for the audit
    event only, `groups` names the groups of a `sod_conflict`."""

    def __init__(self, reason: Reason, detail: str | None = None, groups: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason: Reason = reason
        self.detail = detail
        self.groups = groups


@dataclass(frozen=True)
class DirectoryUser:
    """A user the directory has just vouched for (their password bound)."""

    dn: str
    name: str
    subject: str
    groups: tuple[str, ...]  # the DNs of the groups found
    roles: frozenset[str]
    nested: str | None  # how nested groups were found: "in_chain", "recursive" or None


def normal_dn(dn: str) -> str:
    """`dn` for comparison: attribute types and values case-folded, spaces around separators dropped."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except LDAPException:
        return dn.casefold()
    return ",".join(f"{attr.casefold()}={value.casefold()}" for attr, value, _ in parts)


def in_chain_filter(dn: str) -> str:
    """The groups `dn` is a member of, directly or through other groups, as AD evaluates them."""
    return f"(member:{IN_CHAIN_RULE}:={fill_filter('{dn}', 'dn', dn)})"


def _role_key(key: str) -> str:
    return normal_dn(key) if "=" in key else key.casefold()


def _first(attributes: Mapping[str, Any], name: str) -> Any:
    for key, value in attributes.items():
        if key.casefold() == name.casefold():
            if isinstance(value, list):
                return value[0] if value else None
            return value
    return None


def _values(attributes: Mapping[str, Any], name: str) -> list[str]:
    for key, value in attributes.items():
        if key.casefold() == name.casefold():
            return [str(v) for v in (value if isinstance(value, list) else [value]) if v is not None]
    return []


def read_password_file(path: Path) -> str:
    """The service account's password from `path` (one line; a final newline dropped)."""
    text = path.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


class _Unavailable(Exception):
    pass


class LdapDirectory:
    """The bank's directory, as `identity.ldap` describes it; see the module doc."""

    def __init__(self, settings: LdapSettings, registry: RoleRegistry, *, bind_password: str) -> None:
        if settings.url is None or settings.bind_dn is None or settings.user_base_dn is None:
            raise ValueError("identity.ldap needs url, bind_dn and user_base_dn")
        self._settings = settings
        self._registry = registry
        self._bind_password = bind_password
        self._endpoints = [endpoint(url) for url in (settings.url, *settings.failover_urls)]
        self._servers: list[Server] = [server(p, settings.ca_file, settings.timeout_s) for p in self._endpoints]
        self._role_map = {_role_key(key): role for key, role in settings.role_map.items()}
        self._role_names = {_role_key(key): key for key in settings.role_map}
        self._slots = asyncio.Semaphore(settings.pool_size)
        self._idle: list[tuple[int, Connection]] = []
        self._lock = threading.Lock()
        self._is_ad: bool | None = None
        self.binds = 0  # user binds attempted (what the tests count)

    @classmethod
    def from_settings(cls, settings: LdapSettings, registry: RoleRegistry) -> LdapDirectory:
        if settings.bind_password_file is not None:
            password = read_password_file(settings.bind_password_file)
        elif settings.bind_password is not None:
            password = settings.bind_password.get_secret_value()
        else:
            raise ValueError("identity.ldap needs bind_password or bind_password_file")
        return cls(settings, registry, bind_password=password)

    @property
    def issuer(self) -> str:
        """What the principals' `issuer` says: `issuer_name`, else the first URL."""
        return self._settings.issuer_name or self._endpoints[0].url

    @property
    def require_provisioned(self) -> bool:
        return self._settings.require_provisioned

    async def login(self, username: str, password: str) -> DirectoryUser:
        """The user `username` names, once `password` bound as their entry; see the module doc."""
        if not password.strip():
            raise DirectoryRefused("empty_password")  # before any network work: an unauthenticated bind
        if len(password) > PASSWORD_MAX:
            raise DirectoryRefused("wrong_password", "password too long")
        if not username or len(username) > USERNAME_MAX or any(ord(c) < 0x20 or ord(c) == 0x7F for c in username):
            raise DirectoryRefused("bad_username")
        async with self._slots:
            return await asyncio.to_thread(self._login, username, password)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, connection in idle:
            close_connection(connection)

    # --- blocking work (threads) -------------------------------------------------------------

    def _login(self, username: str, password: str) -> DirectoryUser:
        """A pooled service connection if there is one; when it fails (the server closed an idle
        connection, or went away), every pooled one is dropped as likely as old, and each server
        is tried in order on a fresh connection."""
        errors: list[str] = []
        with self._lock:
            pooled = self._idle.pop() if self._idle else None
        if pooled is not None:
            try:
                return self._attempt(*pooled, username, password)
            except _Unavailable as error:
                log.info("identity.ldap: a pooled connection failed (%s); opening new ones", error)
                self.close()
        for index, target in enumerate(self._servers):
            try:
                service = self._open(target, self._settings.bind_dn or "", self._bind_password, service=True)
                return self._attempt(index, service, username, password)
            except _Unavailable as error:
                errors.append(f"{self._endpoints[index].url}: {error}")
        raise self._down(errors)

    def _attempt(self, index: int, service: Connection, username: str, password: str) -> DirectoryUser:
        """One login on the service connection `service` to server `index`, which goes back to the
        pool unless it failed."""
        try:
            entry = self._find_user(service, username)
            self._bind_as(index, str(entry["dn"]), password)
            groups, nested = self._groups(service, entry)
        except _Unavailable:
            close_connection(service)
            raise
        except DirectoryRefused:
            self._release(index, service)
            raise
        self._release(index, service)
        return self._user(entry, groups, nested)

    def _release(self, index: int, connection: Connection) -> None:
        with self._lock:
            if len(self._idle) < self._settings.pool_size:
                self._idle.append((index, connection))
                return
        close_connection(connection)

    def _open(self, target: Server, dn: str, password: str, *, service: bool) -> Connection:
        """A connection bound as `dn`; _Unavailable when the server cannot be used (for a user
        bind, a refused bind raises DirectoryRefused instead)."""
        connection = Connection(
            target,
            user=dn,
            password=password,
            authentication=SIMPLE,
            read_only=True,
            auto_referrals=False,
            receive_timeout=math.ceil(self._settings.timeout_s),  # ldap3 packs it into a C long
            raise_exceptions=False,
        )
        try:
            connection.open()
            if self._settings.start_tls and not connection.start_tls():
                raise _Unavailable(f"StartTLS refused: {connection.result.get('description')}")
            bound = connection.bind()
        except (LDAPException, OSError) as error:
            close_connection(connection)
            raise _Unavailable(f"{type(error).__name__}: {error}") from None
        if bound:
            return connection
        result = connection.result or {}
        close_connection(connection)
        what = f"{result.get('description')} {str(result.get('message') or '')[:200]}".strip()
        if service:
            raise _Unavailable(f"the service account's bind was refused ({what}): check identity.ldap.bind_dn")
        if result.get("result") == INVALID_CREDENTIALS or result.get("description") in ("invalidCredentials",):
            raise DirectoryRefused("wrong_password", what)
        raise DirectoryRefused("wrong_password", f"bind refused: {what}")

    def _bind_as(self, index: int, dn: str, password: str) -> None:
        self.binds += 1
        connection = self._open(self._servers[index], dn, password, service=False)
        close_connection(connection)

    def _search(
        self, connection: Connection, base: str, query: str, attributes: list[str], *, limit: int, scope: Any = SUBTREE
    ) -> list[dict[str, Any]]:
        try:
            connection.search(base, query, search_scope=scope, attributes=attributes, size_limit=limit)
        except LDAPException as error:
            raise _Unavailable(f"{type(error).__name__}: {error}") from None
        result = connection.result or {}
        code = result.get("result", 0)
        if code not in (0, SIZE_LIMIT_EXCEEDED, NO_SUCH_OBJECT):
            raise _Unavailable(f"search refused: {result.get('description')} {result.get('message') or ''}".strip())
        return [item for item in (connection.response or []) if item.get("type") == "searchResEntry"]

    def _find_user(self, connection: Connection, username: str) -> dict[str, Any]:
        settings = self._settings
        wanted = [settings.username_attribute, "objectGUID", "entryUUID"]
        if settings.subject_attribute:
            wanted.append(settings.subject_attribute)
        if settings.group_membership == "member_of":
            wanted.append(settings.member_of_attribute)
        query = fill_filter(settings.user_filter, "username", username)
        entries = self._search(connection, settings.user_base_dn or "", query, wanted, limit=2)
        if not entries:
            raise DirectoryRefused("no_entry")
        if len(entries) > 1:
            raise DirectoryRefused("several_entries", f"{len(entries)} or more entries match the filter")
        return entries[0]

    def _groups(self, connection: Connection, entry: dict[str, Any]) -> tuple[dict[str, str], str | None]:
        """{normalised group DN: cn} of the user's groups, and the nested method used."""
        settings = self._settings
        dn = str(entry["dn"])
        if settings.nested_groups:
            method = settings.nested_groups_method
            if method == "auto":
                method = "in_chain" if self._active_directory(connection) else "recursive"
            if method == "in_chain":
                return self._group_search(connection, in_chain_filter(dn)), "in_chain"
            return self._recursive_groups(connection, dn), "recursive"
        if settings.group_membership == "member_of":
            return {
                normal_dn(g): _cn(g) for g in _values(entry.get("attributes", {}), settings.member_of_attribute)
            }, None
        return self._group_search(connection, fill_filter(settings.group_filter, "dn", dn)), None

    def _group_search(self, connection: Connection, query: str) -> dict[str, str]:
        found = self._search(connection, self._settings.group_base_dn or "", query, ["cn"], limit=MAX_GROUPS)
        return {normal_dn(str(item["dn"])): str(_first(item.get("attributes", {}), "cn") or "") for item in found}

    def _recursive_groups(self, connection: Connection, dn: str) -> dict[str, str]:
        groups: dict[str, str] = {}
        level = [dn]
        for _ in range(NESTED_MAX_DEPTH):
            following: list[str] = []
            for member in level:
                query = fill_filter(self._settings.group_filter, "dn", member)
                found = self._search(connection, self._settings.group_base_dn or "", query, ["cn"], limit=MAX_GROUPS)
                for item in found:
                    key = normal_dn(str(item["dn"]))
                    if key not in groups and len(groups) < MAX_GROUPS:
                        groups[key] = str(_first(item.get("attributes", {}), "cn") or "")
                        following.append(str(item["dn"]))
            if not following:
                return groups
            level = following
        log.warning(
            "identity.ldap: nested groups of %s go deeper than %d levels; deeper ones ignored", dn, NESTED_MAX_DEPTH
        )
        return groups

    def _active_directory(self, connection: Connection) -> bool:
        if self._is_ad is None:
            found = self._search(connection, "", "(objectClass=*)", ["supportedCapabilities"], limit=1, scope=BASE)
            capabilities = _values(found[0].get("attributes", {}), "supportedCapabilities") if found else []
            self._is_ad = AD_CAPABILITY in capabilities
        return self._is_ad

    def _user(self, entry: dict[str, Any], groups: dict[str, str], nested: str | None) -> DirectoryUser:
        settings = self._settings
        attributes: Mapping[str, Any] = entry.get("attributes", {})
        name = _first(attributes, settings.username_attribute)
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise DirectoryRefused("no_name", f"the entry has no usable {settings.username_attribute}")
        values = [*groups, *(cn.casefold() for cn in groups.values() if cn)]
        try:
            roles = map_roles(values, self._role_map, self._registry)
        except RoleMappingConflict as conflict:
            named = tuple(self._role_names.get(value, value) for value in conflict.values)
            raise DirectoryRefused("sod_conflict", "; ".join(conflict.problems), named) from None
        return DirectoryUser(
            dn=str(entry["dn"]),
            name=name,
            subject=self._subject(entry),
            groups=tuple(sorted(groups)),
            roles=roles,
            nested=nested,
        )

    def _subject(self, entry: dict[str, Any]) -> str:
        raw: Mapping[str, Any] = entry.get("raw_attributes", {})
        attributes: Mapping[str, Any] = entry.get("attributes", {})
        chosen = self._settings.subject_attribute
        for name in [chosen] if chosen else ["objectGUID", "entryUUID"]:
            value = _first(raw, name)
            if isinstance(value, bytes) and name.casefold() == "objectguid" and len(value) == 16:
                return str(uuid.UUID(bytes_le=value))
            text = _first(attributes, name)
            if text:
                return str(text)[:256]
        return str(entry["dn"])[:256]

    def _down(self, errors: Iterable[str]) -> IdentityProviderUnavailable:
        detail = "; ".join(errors) or "no directory server answered"
        log.error("identity.ldap: the directory cannot be used, directory logins refused (fail closed): %s", detail)
        error = IdentityProviderUnavailable(
            "the directory (LDAP) cannot be reached; sign in again later, or with a local account",
            retry_after=RETRY_AFTER_S,
            detail=detail[:1000],
        )
        error.fix = UNAVAILABLE_FIX  # the class's fix names identity.jwt's settings
        return error


def _cn(dn: str) -> str:
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except LDAPException:
        return ""
    return parts[0][1] if parts and parts[0][0].casefold() == "cn" else ""
