"""The SCIM repository: users the IdP provisioned, its groups and their members.

A provisioned user is a principal (source `scim`, issuer `scim`, subject = the SCIM id zguard
assigned: 32 hex characters of a uuid4, opaque, never reused), with a `scim_users` row for what
the IdP says of it (`externalId`, `displayName`). The SCIM id is not the principal's row id, so
ids do not reveal how many principals exist or collide with another source's subjects.

Every change runs in one transaction. Membership changes recompute the roles of every user
they touch through the caller's `RolesFor` (the group → role mapping, `zguard.services.scim`);
when it raises (separated duties) the transaction rolls back and nothing is changed. The users
a change touches are row-locked first (`_lock_principals`), so two changes on two replicas
cannot together give one user separated duties (a test races them). Whatever
can change an authentication result (a user disabled, renamed, deleted, its roles moved) bumps
`auth_state.version` in the same transaction, so sessions and token caches of every process see
it at their next request. Like `PrincipalStore`, methods return frozen records, never ORM rows.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from zguard.store.errors import PrincipalExists
from zguard.store.models import PrincipalRole, PrincipalRow, ScimGroup, ScimGroupMember, ScimUser
from zguard.store.principals import _bump_auth_version, _check_name, utc_now

SOURCE: Final = "scim"
ISSUER: Final = "scim"

RolesFor = Callable[[Sequence[str]], frozenset[str] | None]
"""A user's roles from the names of all its groups; None: leave its roles alone. May raise
(separated duties): the change that asked is rolled back."""


class Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset()


class ScimNotFoundError(LookupError):
    """No SCIM user or group with this id."""


class GroupNameTaken(LookupError):
    """Another SCIM group has this displayName."""


class UnknownMembers(LookupError):
    """Member ids that name no provisioned user; `ids` lists them."""

    def __init__(self, ids: Sequence[str]) -> None:
        super().__init__(", ".join(ids))
        self.ids = tuple(ids)


@dataclass(frozen=True, slots=True)
class ScimUserRecord:
    scim_id: str
    principal_id: int
    user_name: str
    active: bool
    external_id: str | None
    display_name: str | None
    roles: tuple[str, ...]
    groups: tuple[tuple[str, str], ...]  # (SCIM id, displayName) of each group, by name
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ScimGroupRecord:
    scim_id: str
    display_name: str
    external_id: str | None
    members: tuple[tuple[str, str], ...]  # (SCIM id, userName) of each member, by name
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RoleChange:
    """A user whose roles a membership change moved."""

    user_name: str
    before: tuple[str, ...]
    after: tuple[str, ...]


class ScimStore:
    """SCIM users and groups in the state database. `clock` gives "now" (aware, UTC)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._clock = clock

    # --- users ----------------------------------------------------------------------------

    def create_user(
        self,
        scim_id: str,
        user_name: str,
        *,
        external_id: str | None,
        display_name: str | None,
        active: bool,
        roles_for: RolesFor,
    ) -> ScimUserRecord:
        """A new provisioned user; `PrincipalExists` when any principal has the name (without case)."""
        _check_name(user_name, "userName")
        now = self._clock()
        try:
            with self._sessions.begin() as session:
                self._refuse_taken_name(session, user_name, None)
                roles = roles_for(()) or frozenset()
                principal = PrincipalRow(
                    name=user_name,
                    kind="user",
                    enabled=active,
                    created_at=now,
                    source=SOURCE,
                    issuer=ISSUER,
                    subject=scim_id,
                    roles=[PrincipalRole(role=role) for role in sorted(roles)],
                )
                session.add(principal)
                session.flush()
                session.add(
                    ScimUser(
                        principal_id=principal.id, external_id=external_id, display_name=display_name, updated_at=now
                    )
                )
                _bump_auth_version(session)
                session.flush()
                return self._user(session, principal)
        except IntegrityError:  # the name taken meanwhile
            raise PrincipalExists(user_name) from None

    def get_user(self, scim_id: str) -> ScimUserRecord | None:
        with self._sessions() as session:
            principal = _principal(session, scim_id)
            return None if principal is None else self._user(session, principal)

    def find_users(
        self, *, user_name: str | None = None, external_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[int, list[ScimUserRecord]]:
        """(how many match, up to `limit` of them from `offset`), oldest first."""
        query = select(PrincipalRow).where(PrincipalRow.source == SOURCE, PrincipalRow.issuer == ISSUER)
        if user_name is not None:
            query = query.where(func.lower(PrincipalRow.name) == user_name.lower())  # userName is caseExact false
        if external_id is not None:
            query = query.join(ScimUser, ScimUser.principal_id == PrincipalRow.id).where(
                ScimUser.external_id == external_id
            )
        with self._sessions() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(query.order_by(PrincipalRow.id).offset(offset).limit(limit)).all()
            return total, [self._user(session, row) for row in rows]

    def update_user(
        self,
        scim_id: str,
        *,
        user_name: str | Unset = UNSET,
        external_id: str | Unset | None = UNSET,
        display_name: str | Unset | None = UNSET,
        active: bool | Unset = UNSET,
    ) -> tuple[ScimUserRecord, ScimUserRecord]:
        """Change what is given; (before, after). ScimNotFoundError, PrincipalExists (the new name taken)."""
        try:
            with self._sessions.begin() as session:
                principal = _principal(session, scim_id)
                if principal is None:
                    raise ScimNotFoundError(scim_id)
                before = self._user(session, principal)
                extra = session.get(ScimUser, principal.id) or ScimUser(principal_id=principal.id)
                session.add(extra)
                bump = False
                if isinstance(user_name, str) and user_name != principal.name:
                    _check_name(user_name, "userName")
                    self._refuse_taken_name(session, user_name, principal.id)
                    principal.name, bump = user_name, True
                if isinstance(active, bool) and active != principal.enabled:
                    principal.enabled, bump = active, True
                if not isinstance(external_id, Unset):
                    extra.external_id = external_id
                if not isinstance(display_name, Unset):
                    extra.display_name = display_name
                extra.updated_at = self._clock()
                if bump:
                    _bump_auth_version(session)
                session.flush()
                return before, self._user(session, principal)
        except IntegrityError:
            raise PrincipalExists(str(user_name)) from None

    def delete_user(self, scim_id: str) -> ScimUserRecord:
        """Remove the principal (its roles, tokens, sessions and memberships go with it); the record
        it had. The audit trail keeps its name. ScimNotFoundError when there is none."""
        with self._sessions.begin() as session:
            principal = _principal(session, scim_id)
            if principal is None:
                raise ScimNotFoundError(scim_id)
            record = self._user(session, principal)
            # Explicit deletes, not only ON DELETE CASCADE: the ORM's view of the rows stays right.
            session.execute(delete(ScimGroupMember).where(ScimGroupMember.principal_id == principal.id))
            session.execute(delete(ScimUser).where(ScimUser.principal_id == principal.id))
            session.delete(principal)
            _bump_auth_version(session)
            return record

    # --- groups ---------------------------------------------------------------------------

    def create_group(
        self,
        scim_id: str,
        display_name: str,
        *,
        external_id: str | None,
        members: Collection[str],
        roles_for: RolesFor,
    ) -> tuple[ScimGroupRecord, list[RoleChange]]:
        """A new group with `members` (SCIM user ids). GroupNameTaken, UnknownMembers, or what
        `roles_for` raises (nothing is then stored)."""
        now = self._clock()
        try:
            with self._sessions.begin() as session:
                if session.scalar(select(ScimGroup.id).where(ScimGroup.display_name == display_name)) is not None:
                    raise GroupNameTaken(display_name)
                group = ScimGroup(
                    scim_id=scim_id, display_name=display_name, external_id=external_id, created_at=now, updated_at=now
                )
                session.add(group)
                session.flush()
                ids = _member_ids(session, members)
                _lock_principals(session, ids)
                session.add_all(ScimGroupMember(group_id=group.id, principal_id=pid) for pid in ids)
                session.flush()
                changes = _recompute(session, ids, roles_for)
                return _group(session, group), changes
        except IntegrityError:
            raise GroupNameTaken(display_name) from None

    def get_group(self, scim_id: str) -> ScimGroupRecord | None:
        with self._sessions() as session:
            group = session.scalars(select(ScimGroup).where(ScimGroup.scim_id == scim_id)).one_or_none()
            return None if group is None else _group(session, group)

    def find_groups(
        self, *, display_name: str | None = None, external_id: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[int, list[ScimGroupRecord]]:
        query = select(ScimGroup)
        if display_name is not None:
            query = query.where(ScimGroup.display_name == display_name)
        if external_id is not None:
            query = query.where(ScimGroup.external_id == external_id)
        with self._sessions() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(query.order_by(ScimGroup.id).offset(offset).limit(limit)).all()
            return total, [_group(session, row) for row in rows]

    def update_group(
        self,
        scim_id: str,
        *,
        roles_for: RolesFor,
        display_name: str | Unset = UNSET,
        external_id: str | Unset | None = UNSET,
        add: Iterable[str] = (),
        remove: Iterable[str] = (),
        replace_members: Collection[str] | None = None,
    ) -> tuple[ScimGroupRecord, ScimGroupRecord, list[RoleChange]]:
        """Rename the group and move members (replace first, then add, then remove); (before,
        after, the users whose roles moved). ScimNotFoundError, GroupNameTaken, UnknownMembers
        (for added ones; removing a user that is not a member does nothing), or what `roles_for`
        raises: then nothing is changed."""
        try:
            with self._sessions.begin() as session:
                group = session.scalars(
                    select(ScimGroup).where(ScimGroup.scim_id == scim_id).with_for_update()
                ).one_or_none()
                if group is None:
                    raise ScimNotFoundError(scim_id)
                before = _group(session, group)
                current = set(
                    session.scalars(select(ScimGroupMember.principal_id).where(ScimGroupMember.group_id == group.id))
                )
                wanted = set(current)
                if replace_members is not None:
                    wanted = set(_member_ids(session, replace_members))
                wanted |= set(_member_ids(session, add))
                wanted -= set(_member_ids(session, remove, known_only=True))
                touched = set(current ^ wanted)
                if isinstance(display_name, str) and display_name != group.display_name:
                    taken = session.scalar(
                        select(ScimGroup.id).where(ScimGroup.display_name == display_name, ScimGroup.id != group.id)
                    )
                    if taken is not None:
                        raise GroupNameTaken(display_name)
                    group.display_name = display_name
                    touched |= wanted  # the name is what maps to a role
                if not isinstance(external_id, Unset):
                    group.external_id = external_id
                _lock_principals(session, touched)
                if wanted - current:
                    session.add_all(ScimGroupMember(group_id=group.id, principal_id=pid) for pid in wanted - current)
                if current - wanted:
                    session.execute(
                        delete(ScimGroupMember).where(
                            ScimGroupMember.group_id == group.id, ScimGroupMember.principal_id.in_(current - wanted)
                        )
                    )
                group.updated_at = self._clock()
                session.flush()
                changes = _recompute(session, touched, roles_for)
                return before, _group(session, group), changes
        except IntegrityError:
            raise GroupNameTaken(str(display_name)) from None

    def delete_group(self, scim_id: str, *, roles_for: RolesFor) -> tuple[ScimGroupRecord, list[RoleChange]]:
        with self._sessions.begin() as session:
            group = session.scalars(
                select(ScimGroup).where(ScimGroup.scim_id == scim_id).with_for_update()
            ).one_or_none()
            if group is None:
                raise ScimNotFoundError(scim_id)
            record = _group(session, group)
            members = set(
                session.scalars(select(ScimGroupMember.principal_id).where(ScimGroupMember.group_id == group.id))
            )
            _lock_principals(session, members)
            session.execute(delete(ScimGroupMember).where(ScimGroupMember.group_id == group.id))
            session.delete(group)
            session.flush()
            return record, _recompute(session, members, roles_for)

    # --- helpers --------------------------------------------------------------------------

    def _refuse_taken_name(self, session: Session, name: str, own_id: int | None) -> None:
        """Any principal holding `name` without regard to case (one namespace, as AdminService keeps it)."""
        query = select(PrincipalRow.name).where(func.lower(PrincipalRow.name) == name.lower())
        if own_id is not None:
            query = query.where(PrincipalRow.id != own_id)
        if session.scalars(query).first() is not None:
            raise PrincipalExists(name)

    def _user(self, session: Session, principal: PrincipalRow) -> ScimUserRecord:
        extra = session.get(ScimUser, principal.id)
        groups = session.execute(
            select(ScimGroup.scim_id, ScimGroup.display_name)
            .join(ScimGroupMember, ScimGroupMember.group_id == ScimGroup.id)
            .where(ScimGroupMember.principal_id == principal.id)
            .order_by(ScimGroup.display_name)
        ).all()
        return ScimUserRecord(
            scim_id=principal.subject or "",
            principal_id=principal.id,
            user_name=principal.name,
            active=principal.enabled,
            external_id=None if extra is None else extra.external_id,
            display_name=None if extra is None else extra.display_name,
            roles=tuple(sorted(granted.role for granted in principal.roles)),
            groups=tuple((row[0], row[1]) for row in groups),
            created_at=principal.created_at,
            updated_at=principal.created_at if extra is None else extra.updated_at,
        )


def _principal(session: Session, scim_id: str) -> PrincipalRow | None:
    return session.scalars(
        select(PrincipalRow).where(
            PrincipalRow.source == SOURCE, PrincipalRow.issuer == ISSUER, PrincipalRow.subject == scim_id
        )
    ).one_or_none()


def _member_ids(session: Session, scim_ids: Iterable[str], *, known_only: bool = False) -> list[int]:
    """Principal ids of the provisioned users `scim_ids` names; UnknownMembers unless `known_only`."""
    wanted = list(dict.fromkeys(scim_ids))
    if not wanted:
        return []
    rows = session.execute(
        select(PrincipalRow.subject, PrincipalRow.id).where(
            PrincipalRow.source == SOURCE, PrincipalRow.issuer == ISSUER, PrincipalRow.subject.in_(wanted)
        )
    ).all()
    found = {row[0]: row[1] for row in rows}
    missing = [scim_id for scim_id in wanted if scim_id not in found]
    if missing and not known_only:
        raise UnknownMembers(missing)
    return [pid for scim_id, pid in found.items() if pid is not None and scim_id is not None]


def _lock_principals(session: Session, principal_ids: Iterable[int]) -> None:
    """Row-lock the users a membership change touches (PostgreSQL; SQLite has one writer at a
    time), in id order, before any membership row is written: a concurrent change to the same
    users waits here for this one to commit, then reads the groups as committed, so two changes
    cannot together grant separated duties. Taken before the writes, not after, because writing a
    membership row takes a key-share lock on the user that a later FOR UPDATE would deadlock on."""
    ids = sorted(set(principal_ids))
    if ids:
        session.execute(
            select(PrincipalRow.id).where(PrincipalRow.id.in_(ids)).order_by(PrincipalRow.id).with_for_update()
        )


def _recompute(session: Session, principal_ids: Iterable[int], roles_for: RolesFor) -> list[RoleChange]:
    """Set each user's roles from all its groups' names, in the caller's transaction."""
    changes: list[RoleChange] = []
    touched = sorted(set(principal_ids))
    for pid in touched:  # locked by the caller (_lock_principals)
        principal = session.get(PrincipalRow, pid)
        if principal is None:
            continue
        names = list(
            session.scalars(
                select(ScimGroup.display_name)
                .join(ScimGroupMember, ScimGroupMember.group_id == ScimGroup.id)
                .where(ScimGroupMember.principal_id == pid)
                .order_by(ScimGroup.display_name)
            )
        )
        wanted = roles_for(names)
        if wanted is None:
            continue
        before = tuple(sorted(granted.role for granted in principal.roles))
        after = tuple(sorted(wanted))
        if before == after:
            continue
        for granted in list(principal.roles):
            if granted.role not in wanted:
                principal.roles.remove(granted)
        have = {granted.role for granted in principal.roles}
        principal.roles.extend(PrincipalRole(role=role) for role in after if role not in have)
        changes.append(RoleChange(principal.name, before, after))
    # Membership alone is authorization too: a group's approval grant covers its members
    # (zguard.store.grant_groups), so caches of grants drop theirs when it moves.
    if changes or touched:
        _bump_auth_version(session)
        session.flush()
    return changes


def _group(session: Session, group: ScimGroup) -> ScimGroupRecord:
    members = session.execute(
        select(PrincipalRow.subject, PrincipalRow.name)
        .join(ScimGroupMember, ScimGroupMember.principal_id == PrincipalRow.id)
        .where(ScimGroupMember.group_id == group.id)
        .order_by(PrincipalRow.name)
    ).all()
    return ScimGroupRecord(
        scim_id=group.scim_id,
        display_name=group.display_name,
        external_id=group.external_id,
        members=tuple((row[0] or "", row[1]) for row in members),
        created_at=group.created_at,
        updated_at=group.updated_at,
    )
