"""SCIM 2.0 provisioning (RFC 7643/7644, the subset IdPs use): what `/scim/v2` on the console asks.

Decisions written here:
- One credential: the IdP sends `Authorization: Bearer <secret>`; zguard keeps only its SHA-256
  (`identity.scim.token_sha256`, up to two while rotating) and compares digests in constant time,
  against every configured digest. It is SCIM's own: neither a zguard API key nor a console
  session opens `/scim/v2`, and the SCIM secret opens nothing else.
- Wrong or missing secrets are counted per client address in the shared counter storage
  (`identity.scim.failed_attempts_per_address`); past the limit the address gets 429 until the
  window passes. The right secret is never refused by the counter. Counter storage down: refused
  with 503 `rate_limiter_unavailable` (fail closed: the IdP retries, and an unenforced limit
  would hand a guesser an unlimited budget on a secret whose strength the operator chose).
- A SCIM user is a principal with source `scim`, issuer `scim` and subject = the SCIM id zguard
  assigns (zguard.store.scim); SCIM reads and changes only such principals. A `userName` held by
  any other principal (a local user above all, compared without case) or declared in
  `api_auth.users` is refused 409 `uniqueness`: SCIM never takes over an account it did not make.
- `active: false` (PATCH or PUT) disables the principal and DELETE removes it (its tokens,
  sessions and memberships with it), each bumping the auth version in the same transaction: the
  user's console sessions and API tokens are refused at their next request, on every replica.
  The audit trail keeps the name. Passwords the IdP sends (Okta can) are ignored, never stored.
- Roles: with `group_role_map` set, a provisioned user's roles are recomputed from all its
  groups' displayNames (`rbac.map_roles`) at every membership change, rename or group deletion;
  a change that would give any user separated duties is refused 409 naming the groups, audited
  (`scim.refused`), and nothing is changed (one transaction). With it empty, SCIM leaves roles to
  the administrators. A new user has no roles until a group grants one (every permission 403).
- Every change is an audit event (`scim.user_created`, `scim.user_updated`,
  `scim.user_deactivated`, `scim.user_reactivated`, `scim.user_deleted`, `scim.group_created`,
  `scim.group_changed`, `scim.group_deleted`, `scim.roles_changed`, `scim.refused`) with the
  principal `scim:<client_name>`, written after the commit; the sink failing fails the request
  (503 `audit_unavailable`, the IdP retries). Attributes zguard does not keep (emails, name,
  enterprise extension) are accepted and ignored, so the IdP's updates do not fail on them.
- Filters: only `<attribute> eq "<value>"` on userName / externalId (Users) and displayName /
  externalId (Groups), bounded by `identity.scim.max_filter_chars`; anything else is 400
  `invalidFilter`. userName compares without case (RFC 7643: caseExact false).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from zguard.audit import AuditEvent, AuditSink, DetailValue, report
from zguard.config.identity_scim import ScimSettings
from zguard.errors import (
    RateLimiterUnavailable,
    ScimConflict,
    ScimNotFound,
    ScimRoleConflict,
    ScimUnauthorized,
    TooManyFailedLogins,
)
from zguard.security.rates import parse_rates
from zguard.security.rbac import RoleMappingConflict, RoleRegistry, map_roles
from zguard.services.auth import RequestInfo
from zguard.services.counters import CounterStorage
from zguard.services.failed_logins import FailureCounter
from zguard.services.scim_requests import (
    GroupChange,
    Json,
    Page,
    UserChange,
    invalid,
    parse_filter,
    parse_group,
    parse_group_patch,
    parse_user,
    parse_user_patch,
)
from zguard.store.errors import PrincipalExists
from zguard.store.scim import (
    GroupNameTaken,
    RoleChange,
    ScimGroupRecord,
    ScimNotFoundError,
    ScimStore,
    ScimUserRecord,
    UnknownMembers,
    Unset,
)

AUTH_METHOD: Final = "scim"
WRONG_SECRET: Final = "the SCIM bearer credential is missing or wrong"  # noqa: S105 - a message, not a secret
TOO_MANY: Final = "too many requests with a wrong SCIM credential from this address; retry later"


@dataclass(frozen=True)
class ScimClient:
    """The IdP, authenticated: what its changes are recorded under."""

    principal: str
    info: RequestInfo


# --- the service -------------------------------------------------------------------------------


class ScimService:
    """Authenticate the IdP and carry out its requests; see the module doc for the rules."""

    def __init__(
        self,
        settings: ScimSettings,
        registry: RoleRegistry,
        store: ScimStore,
        *,
        audit: AuditSink,
        counters: CounterStorage,
        reserved_names: Iterable[str] = (),
    ) -> None:
        self.settings = settings
        self._registry = registry
        self._store = store
        self._audit = audit
        self._digests = tuple(settings.token_sha256)
        self._failures = FailureCounter(counters, "scim-address", parse_rates(settings.failed_attempts_per_address))
        self._reserved = frozenset(name.casefold() for name in reserved_names)
        self.principal = f"scim:{settings.client_name}"

    # --- the credential -------------------------------------------------------------------

    async def authenticate(self, authorization: str | None, info: RequestInfo) -> ScimClient:
        scheme, _, credential = (authorization or "").strip().partition(" ")
        credential = credential.strip()
        presented = hashlib.sha256(credential.encode("utf-8", "surrogateescape")).hexdigest()
        matched = False
        for digest in self._digests:  # every digest compared, in constant time each
            matched |= hmac.compare_digest(presented, digest)
        if scheme.lower() == "bearer" and credential and matched:
            if info.record is not None:
                info.record.authenticated = True
            report(self._audit, info.record, self._event("access.allowed", "allowed", info, None, {}))
            return ScimClient(self.principal, info)
        reason = "missing" if not credential else "wrong"
        try:
            retry = await self._failures.retry_after(info.client)
            if retry is None:
                await self._failures.record(info.client)
        except RateLimiterUnavailable as error:
            self._deny(info, error.code, "counter_unavailable")
            raise
        if retry is not None:
            self._deny(info, TooManyFailedLogins.code, reason)
            raise TooManyFailedLogins(TOO_MANY, retry_after=retry)
        self._deny(info, ScimUnauthorized.code, reason)
        raise ScimUnauthorized(WRONG_SECRET)

    # --- users ----------------------------------------------------------------------------

    async def create_user(self, client: ScimClient, body: Json) -> ScimUserRecord:
        name, change = parse_user(body)
        await self._refuse_reserved(client, name)
        active = True if isinstance(change.active, Unset) else change.active
        try:
            record = await asyncio.to_thread(
                self._store.create_user,
                uuid.uuid4().hex,
                name,
                external_id=None if isinstance(change.external_id, Unset) else change.external_id,
                display_name=None if isinstance(change.display_name, Unset) else change.display_name,
                active=active,
                roles_for=self._roles_for,
            )
        except PrincipalExists:
            raise await self._taken(client, "user", name) from None
        except ValueError as exc:  # the store's name check; its message holds no secret
            raise invalid(str(exc)) from None
        await self._record(client, "scim.user_created", _user_detail(record))
        return record

    async def get_user(self, scim_id: str) -> ScimUserRecord:
        record = await asyncio.to_thread(self._store.get_user, scim_id)
        if record is None:
            raise ScimNotFound("no such user")
        return record

    async def list_users(self, filter_text: str | None, page: Page) -> tuple[int, list[ScimUserRecord]]:
        found = parse_filter(filter_text, "Users", self.settings.max_filter_chars)
        by = {} if found is None else {"user_name" if found[0] == "userName" else "external_id": found[1]}
        return await asyncio.to_thread(self._store.find_users, offset=page.start_index - 1, limit=page.count, **by)

    async def replace_user(self, client: ScimClient, scim_id: str, body: Json) -> ScimUserRecord:
        """PUT: userName, externalId, displayName as sent (absent ones cleared), active when sent."""
        _, change = parse_user(body)
        if isinstance(change.external_id, Unset):
            change.external_id = None
        if isinstance(change.display_name, Unset):
            change.display_name = None
        return await self._update_user(client, scim_id, change)

    async def patch_user(self, client: ScimClient, scim_id: str, body: Json) -> ScimUserRecord:
        return await self._update_user(client, scim_id, parse_user_patch(body))

    async def delete_user(self, client: ScimClient, scim_id: str) -> None:
        try:
            record = await asyncio.to_thread(self._store.delete_user, scim_id)
        except ScimNotFoundError:
            raise ScimNotFound("no such user") from None
        await self._record(client, "scim.user_deleted", _user_detail(record))

    async def _update_user(self, client: ScimClient, scim_id: str, change: UserChange) -> ScimUserRecord:
        if isinstance(change.user_name, str):
            await self._refuse_reserved(client, change.user_name)
        try:
            before, after = await asyncio.to_thread(
                self._store.update_user,
                scim_id,
                user_name=change.user_name,
                external_id=change.external_id,
                display_name=change.display_name,
                active=change.active,
            )
        except ScimNotFoundError:
            raise ScimNotFound("no such user") from None
        except PrincipalExists:
            raise await self._taken(client, "user", str(change.user_name)) from None
        except ValueError as exc:
            raise invalid(str(exc)) from None
        if before.active and not after.active:
            await self._record(client, "scim.user_deactivated", _user_detail(after))
        elif after.active and not before.active:
            await self._record(client, "scim.user_reactivated", _user_detail(after))
        changed = {
            "renamed_from": before.user_name if before.user_name != after.user_name else None,
            "external_id": after.external_id if before.external_id != after.external_id else None,
        }
        if any(value is not None for value in changed.values()) or before.display_name != after.display_name:
            await self._record(client, "scim.user_updated", {**_user_detail(after), **changed})
        return after

    # --- groups ---------------------------------------------------------------------------

    async def create_group(self, client: ScimClient, body: Json) -> ScimGroupRecord:
        name, external_id, members = parse_group(body)
        try:
            record, changes = await asyncio.to_thread(
                self._store.create_group,
                uuid.uuid4().hex,
                name,
                external_id=external_id,
                members=members,
                roles_for=self._roles_for,
            )
        except GroupNameTaken:
            raise await self._taken(client, "group", name) from None
        except UnknownMembers as exc:
            raise invalid(f"no provisioned user has the id(s) {', '.join(exc.ids)[:200]}", "invalidValue") from None
        except ScimRoleConflict as error:
            raise await self._conflict(client, name, error) from None
        await self._record(client, "scim.group_created", _group_detail(record, added=len(record.members)))
        await self._roles_moved(client, name, changes)
        return record

    async def get_group(self, scim_id: str) -> ScimGroupRecord:
        record = await asyncio.to_thread(self._store.get_group, scim_id)
        if record is None:
            raise ScimNotFound("no such group")
        return record

    async def list_groups(self, filter_text: str | None, page: Page) -> tuple[int, list[ScimGroupRecord]]:
        found = parse_filter(filter_text, "Groups", self.settings.max_filter_chars)
        by = {} if found is None else {"display_name" if found[0] == "displayName" else "external_id": found[1]}
        return await asyncio.to_thread(self._store.find_groups, offset=page.start_index - 1, limit=page.count, **by)

    async def replace_group(self, client: ScimClient, scim_id: str, body: Json) -> ScimGroupRecord:
        name, external_id, members = parse_group(body)
        change = GroupChange(display_name=name, external_id=external_id, replace=members)
        return await self._update_group(client, scim_id, change)

    async def patch_group(self, client: ScimClient, scim_id: str, body: Json) -> ScimGroupRecord:
        return await self._update_group(client, scim_id, parse_group_patch(body))

    async def delete_group(self, client: ScimClient, scim_id: str) -> None:
        try:
            record, changes = await asyncio.to_thread(self._store.delete_group, scim_id, roles_for=self._roles_for)
        except ScimNotFoundError:
            raise ScimNotFound("no such group") from None
        except ScimRoleConflict as error:  # cannot happen (fewer groups, fewer roles); refused all the same
            raise await self._conflict(client, scim_id, error) from None
        await self._record(client, "scim.group_deleted", _group_detail(record))
        await self._roles_moved(client, record.display_name, changes)

    async def _update_group(self, client: ScimClient, scim_id: str, change: GroupChange) -> ScimGroupRecord:
        try:
            before, after, changes = await asyncio.to_thread(
                self._store.update_group,
                scim_id,
                roles_for=self._roles_for,
                display_name=change.display_name,
                external_id=change.external_id,
                add=change.add,
                remove=change.remove,
                replace_members=change.replace,
            )
        except ScimNotFoundError:
            raise ScimNotFound("no such group") from None
        except GroupNameTaken:
            raise await self._taken(client, "group", str(change.display_name)) from None
        except UnknownMembers as exc:
            raise invalid(f"no provisioned user has the id(s) {', '.join(exc.ids)[:200]}", "invalidValue") from None
        except ScimRoleConflict as error:
            raise await self._conflict(client, scim_id, error) from None
        was, now = {m[0] for m in before.members}, {m[0] for m in after.members}
        if was != now or before.display_name != after.display_name or before.external_id != after.external_id:
            detail = _group_detail(after, added=len(now - was), removed=len(was - now))
            if before.display_name != after.display_name:
                detail["renamed_from"] = before.display_name
            await self._record(client, "scim.group_changed", detail)
        await self._roles_moved(client, after.display_name, changes)
        return after

    # --- roles ----------------------------------------------------------------------------

    def _roles_for(self, groups: Sequence[str]) -> frozenset[str] | None:
        """A user's roles from all its groups (None: `group_role_map` empty, roles left alone)."""
        role_map = self.settings.group_role_map
        if not role_map:
            return None
        try:
            return map_roles(groups, role_map, self._registry)
        except RoleMappingConflict as exc:
            raise ScimRoleConflict(
                f"refused: one user would be in the groups {', '.join(exc.values)}, whose roles "
                "combine separated duties; nothing was changed",
                groups=exc.values,
                detail="; ".join(exc.problems),
            ) from None

    async def _roles_moved(self, client: ScimClient, group: str, changes: list[RoleChange]) -> None:
        for change in changes:
            await self._record(
                client,
                "scim.roles_changed",
                {
                    "target": change.user_name,
                    "group": group,
                    "roles_before": ",".join(change.before),
                    "roles": ",".join(change.after),
                },
            )

    async def _conflict(self, client: ScimClient, target: str, error: ScimRoleConflict) -> ScimRoleConflict:
        await self._record(
            client,
            "scim.refused",
            {"target": target, "groups": ",".join(error.groups), "reason": error.detail},
            outcome="denied",
            code=error.code,
        )
        return error

    # --- names ----------------------------------------------------------------------------

    async def _refuse_reserved(self, client: ScimClient, name: str) -> None:
        if name.casefold() in self._reserved:
            raise await self._taken(client, "user", name)

    async def _taken(self, client: ScimClient, kind: str, name: str) -> ScimConflict:
        await self._record(
            client,
            "scim.refused",
            {"target": name, "kind": kind, "reason": "name taken"},
            outcome="denied",
            code=ScimConflict.code,
        )
        return ScimConflict(f"the {kind} name {name[:128]!r} is already taken", scim_type="uniqueness")

    # --- events ---------------------------------------------------------------------------

    async def _record(
        self,
        client: ScimClient,
        kind: str,
        detail: Mapping[str, DetailValue],
        *,
        outcome: Literal["done", "denied"] = "done",
        code: str | None = None,
    ) -> None:
        event = self._event(kind, outcome, client.info, code, detail)
        await self._audit.record(event)

    def _event(
        self, kind: str, outcome: Any, info: RequestInfo, code: str | None, detail: Mapping[str, DetailValue]
    ) -> AuditEvent:
        return AuditEvent(
            type=kind,
            outcome=outcome,
            code=code,
            request_id=info.request_id,
            listener=info.listener,
            client=info.client,
            principal=self.principal if outcome != "denied" or code != ScimUnauthorized.code else None,
            auth_method=AUTH_METHOD,
            detail=detail,
        )

    def _deny(self, info: RequestInfo, code: str, reason: str) -> None:
        event = AuditEvent(
            type="scim.denied",
            outcome="denied",
            code=code,
            request_id=info.request_id,
            listener=info.listener,
            client=info.client,
            auth_method=AUTH_METHOD,
            detail={"reason": reason},
        )
        report(self._audit, info.record, event)


def _user_detail(record: ScimUserRecord) -> dict[str, DetailValue]:
    return {
        "target": record.user_name,
        "scim_id": record.scim_id,
        "active": record.active,
        "roles": ",".join(record.roles),
    }


def _group_detail(record: ScimGroupRecord, *, added: int = 0, removed: int = 0) -> dict[str, DetailValue]:
    return {
        "target": record.display_name,
        "scim_id": record.scim_id,
        "members": len(record.members),
        "added": added,
        "removed": removed,
    }
