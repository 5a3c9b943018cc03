"""Requests and grants for a group: a SCIM group asks, its grant covers its members.

Decisions written here:

- Only SCIM groups hold grants: their membership is stored and kept current by the IdP's
  provisioning (zguard.store.grant_groups). LDAP and OIDC groups are read at sign-in and mapped
  to roles (rbac.map_roles); zguard keeps no membership for them, so it could not tell at a
  generation whether someone still belongs, and it refuses to guess (docs/governance.md).
- Who asks: a member of the group who may generate (`images:generate`, checked by the service
  first). Nobody else, not an admin either: admins cannot hold `images:generate` (separated
  duties), and a request is a statement by someone who will use the grant. A non-member is
  `not_group_member`; a name no SCIM group has is `unknown_group`.
- Who decides: an approver who is not a member of the group when deciding (four eyes: a member
  would use the grant), besides the service's rule against the requester themselves;
  otherwise `group_member_approval`.
- The grant is one quota shared by every member, charged on the grant's counters (the grant's
  id keys them), and covers a member only while they are one.
"""

from __future__ import annotations

from sqlalchemy import Engine

from zguard.errors import GroupMemberApproval, NotGroupMember, UnknownGroup
from zguard.store.approvals import RequestRecord
from zguard.store.grant_groups import GroupRef, group_named, is_member

GROUP_NAME_MAX = 256


def group_for_request(engine: Engine, requester: str, name: str) -> GroupRef:
    """The SCIM group `requester` asks for; UnknownGroup or NotGroupMember."""
    wanted = name.strip()
    group = group_named(engine, wanted) if 0 < len(wanted) <= GROUP_NAME_MAX else None
    if group is None:
        raise UnknownGroup(f"no SCIM group is named {wanted[:80]!r}")
    if not is_member(engine, requester, group.scim_id):
        raise NotGroupMember(f"{requester} is not a member of the group {group.name!r}; a member asks for it")
    return group


def refuse_member_decider(engine: Engine, decider: str, request: RequestRecord) -> None:
    """GroupMemberApproval when `decider` belongs to the group `request` was made for."""
    if request.group_scim_id is not None and is_member(engine, decider, request.group_scim_id):
        raise GroupMemberApproval(
            f"{decider} is a member of {request.group_name!r}, which asked in approval request {request.id}; "
            "an approver outside the group decides"
        )
