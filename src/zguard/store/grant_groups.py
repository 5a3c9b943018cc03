"""SCIM group membership as the approvals read it (zguard.services.grant_groups decides).

A grant can be held by a SCIM group (`approval_grants.group_scim_id`); it covers whoever is a
member of that group when a generation is charged. SCIM is the one identity source whose group
membership zguard stores (`scim_group_members`, kept by the IdP's provisioning): LDAP and OIDC
groups are seen only at sign-in, as roles, so they cannot hold a grant (docs/governance.md).

Principals are matched by name case-insensitively, as `ApprovalStore.grants_for` matches them.
Every SCIM membership change bumps `auth_state.version` (zguard.store.scim), so the service's
grant cache drops a member's coverage at the next request after they leave the group.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, Select, func, select
from sqlalchemy.orm import sessionmaker

from zguard.store.models import PrincipalRow, ScimGroup, ScimGroupMember


@dataclass(frozen=True, slots=True)
class GroupRef:
    """A SCIM group as a grant names it: its opaque id (never reused) and its displayName."""

    scim_id: str
    name: str


def group_named(engine: Engine, name: str) -> GroupRef | None:
    """The SCIM group whose displayName is `name` (exactly, as SCIM compares it), or None."""
    with sessionmaker(engine)() as session:
        row = session.execute(
            select(ScimGroup.scim_id, ScimGroup.display_name).where(ScimGroup.display_name == name)
        ).one_or_none()
        return None if row is None else GroupRef(row[0], row[1])


def member_group_ids(name: str) -> Select[str]:
    """The SCIM ids of the groups `name` is a member of, as a subquery for other statements."""
    return (
        select(ScimGroup.scim_id)
        .join(ScimGroupMember, ScimGroupMember.group_id == ScimGroup.id)
        .join(PrincipalRow, PrincipalRow.id == ScimGroupMember.principal_id)
        .where(func.lower(PrincipalRow.name) == name.lower())
    )


def is_member(engine: Engine, name: str, group_scim_id: str) -> bool:
    """Whether the principal `name` is a member of the group `group_scim_id` now."""
    with sessionmaker(engine)() as session:
        found = session.scalar(member_group_ids(name).where(ScimGroup.scim_id == group_scim_id).limit(1))
        return found is not None
