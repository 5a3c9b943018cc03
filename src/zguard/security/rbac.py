"""Roles, permissions and separation of duties: who may do what.

Deny by default. A permission is granted only by a role in the registry that holds it; unknown
role names, empty role lists and principals whose roles combine separated duties get nothing.

Built-in roles (a role name is what the state database and identity providers hand us)::

    role       images:  models:  audit:  audit:   users:  tokens:  policy:  approvals:  system:
               generate read     read    export   manage  manage   manage   decide      read
    admin         .       x        .       .        x       x        x         .          x
    auditor       .       x        x       x        .       .        .         .          x
    approver      .       x        .       .        .       .        .         x          .
    generator     x       x        .       .        .       .        .         .          .
    viewer        .       x        .       .        .       .        .         .          x

Decisions:

- **Nobody may alter or delete audit records.** There is no permission for it, so no role, built-in
  or custom, can be given it; retention is the only thing that removes audit events.
- **Separation of duties** (`SEPARATED_DUTIES`): permissions fall into four duties: generation,
  approval, administration and audit. Audit is independent of every duty it reviews, and the duties
  that act on access (administration) stay apart from the ones that use it (generation, approval).
  Only generation and approval may be combined: each approval is still made by a second person,
  because `may_decide_approval` refuses self-approval. The same rule applies to a custom role and
  to the *set* of roles one principal holds; since an admin could otherwise assign themselves the
  auditor or approver role, `check_assignment` must be run on every role change, and `authorize`
  fails closed if a conflicting set reaches it anyway.
- **Custom roles** are built from permission names and built-in roles only: no wildcards, no
  inheritance from other custom roles (so no cycles), no names that shadow a built-in.
- `models:read` and `system:read` belong to no duty: listing models or reading health is harmless.

Everything here is pure: plain values in, plain values out, no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import combinations
from types import MappingProxyType
from typing import Final


class Permission(StrEnum):
    """Everything a role can grant. There is deliberately no permission to change audit records."""

    IMAGES_GENERATE = "images:generate"
    MODELS_READ = "models:read"
    AUDIT_READ = "audit:read"
    AUDIT_EXPORT = "audit:export"
    USERS_MANAGE = "users:manage"
    TOKENS_MANAGE = "tokens:manage"
    POLICY_MANAGE = "policy:manage"
    APPROVALS_DECIDE = "approvals:decide"
    SYSTEM_READ = "system:read"


_P = Permission

GENERATION: Final = frozenset({_P.IMAGES_GENERATE})
APPROVAL: Final = frozenset({_P.APPROVALS_DECIDE})
ADMINISTRATION: Final = frozenset({_P.USERS_MANAGE, _P.TOKENS_MANAGE, _P.POLICY_MANAGE})
AUDIT: Final = frozenset({_P.AUDIT_READ, _P.AUDIT_EXPORT})


@dataclass(frozen=True)
class SeparatedDuty:
    """No one role or principal may hold a permission from `first` and one from `second`."""

    first: frozenset[Permission]
    second: frozenset[Permission]
    reason: str


SEPARATED_DUTIES: Final[tuple[SeparatedDuty, ...]] = (
    SeparatedDuty(AUDIT, GENERATION, "whoever generates images must not review the record of it"),
    SeparatedDuty(AUDIT, ADMINISTRATION, "whoever grants access or sets policy must not review the record of it"),
    SeparatedDuty(AUDIT, APPROVAL, "whoever approves requests must not review the record of approvals"),
    SeparatedDuty(ADMINISTRATION, GENERATION, "whoever grants access or sets policy must not use it to generate"),
    SeparatedDuty(ADMINISTRATION, APPROVAL, "whoever creates accounts must not approve, or they could approve for a made-up requester"),
)  # fmt: skip

FORBIDDEN_PAIRS: Final[Mapping[frozenset[Permission], str]] = MappingProxyType(
    {frozenset({a, b}): duty.reason for duty in SEPARATED_DUTIES for a in duty.first for b in duty.second}
)
"""Every pair of permissions no single role or principal may hold together, with the reason."""


@dataclass(frozen=True)
class Role:
    name: str
    permissions: frozenset[Permission]
    builtin: bool = False


BUILTIN_ROLES: Final[Mapping[str, Role]] = MappingProxyType(
    {
        role.name: role
        for role in (
            Role("admin", frozenset({_P.USERS_MANAGE, _P.TOKENS_MANAGE, _P.POLICY_MANAGE, _P.SYSTEM_READ, _P.MODELS_READ}), True),
            Role("auditor", frozenset({_P.AUDIT_READ, _P.AUDIT_EXPORT, _P.SYSTEM_READ, _P.MODELS_READ}), True),
            Role("approver", frozenset({_P.APPROVALS_DECIDE, _P.MODELS_READ}), True),
            Role("generator", frozenset({_P.IMAGES_GENERATE, _P.MODELS_READ}), True),
            Role("viewer", frozenset({_P.MODELS_READ, _P.SYSTEM_READ}), True),
        )
    }
)  # fmt: skip

ROLE_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,63}")


class RoleError(ValueError):
    """Role definitions or a role assignment that cannot be used; `problems` has one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class CustomRole:
    """A role defined in configuration: permission names plus built-in roles it includes."""

    name: str
    permissions: Sequence[str] = ()
    inherits: Sequence[str] = ()


@dataclass(frozen=True)
class RoleRegistry:
    """The roles a deployment knows, by name. Build one with `build_registry`."""

    roles: Mapping[str, Role] = field(default_factory=lambda: BUILTIN_ROLES)

    def get(self, name: str) -> Role | None:
        return self.roles.get(name)

    def __iter__(self) -> Iterator[Role]:
        return iter(self.roles.values())


@dataclass(frozen=True)
class Decision:
    """The answer to "may these roles do this?".

    ``bool(decision)`` is `allowed`, so ``if authorize(...):`` cannot be fooled by a truthy object.
    `missing` names the permission that was lacking; `reason` is for the audit event, not the client.
    """

    allowed: bool
    reason: str
    missing: Permission | None = None

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class Principal:
    """Whoever asks: a stable subject id (user or token owner) and the role names it holds."""

    subject: str
    roles: frozenset[str]


def conflicts(permissions: Iterable[Permission]) -> tuple[str, ...]:
    """One line per forbidden pair within `permissions`, in a stable order; empty if none."""
    held = sorted(set(permissions))
    return tuple(
        f"{a} with {b}: {FORBIDDEN_PAIRS[frozenset({a, b})]}"
        for a, b in combinations(held, 2)
        if frozenset({a, b}) in FORBIDDEN_PAIRS
    )


def build_registry(custom: Iterable[CustomRole] = ()) -> RoleRegistry:
    """The built-in roles plus `custom` ones; raise RoleError listing every problem found.

    Refused: malformed or duplicate names, names of built-in roles, unknown permissions,
    inheriting anything but a built-in role, a role that grants nothing, and a role whose
    permissions combine separated duties.
    """
    roles = dict(BUILTIN_ROLES)
    problems: list[str] = []
    seen: set[str] = set()
    for spec in custom:
        role_problems, role = _custom_role(spec, seen=seen)
        seen.add(spec.name)
        problems += role_problems
        if role is not None:
            roles[role.name] = role
    if problems:
        raise RoleError(problems)
    return RoleRegistry(MappingProxyType(roles))


def permissions_of(roles: Iterable[str], registry: RoleRegistry) -> frozenset[Permission]:
    """Everything the named roles grant together; unknown names add nothing."""
    _refuse_bare_string(roles)
    granted: set[Permission] = set()
    for name in roles:
        role = registry.get(name)
        if role is not None:
            granted |= role.permissions
    return frozenset(granted)


def check_assignment(roles: Iterable[str], registry: RoleRegistry) -> None:
    """Raise RoleError unless one principal may hold all of `roles`: known, and no separated duties."""
    _refuse_bare_string(roles)
    names = sorted(set(roles))
    problems = [f"unknown role {name!r}" for name in names if registry.get(name) is None]
    problems += [f"roles {', '.join(names)} combine {line}" for line in conflicts(permissions_of(names, registry))]
    if problems:
        raise RoleError(problems)


class RoleMappingConflict(RoleError):
    """Values from an IdP (groups, claim values) that map to roles one principal may not hold;
    `values` names the groups responsible, for the message the user and the audit see."""

    def __init__(self, values: Sequence[str], problems: Sequence[str]) -> None:
        super().__init__(problems)
        self.values = tuple(values)


def map_roles(values: Iterable[object], role_map: Mapping[str, str], registry: RoleRegistry) -> frozenset[str]:
    """The roles the IdP's `values` (its group names or role claim values) grant through
    `role_map`, evaluated afresh at every login or token; values not listed grant nothing, and
    non-strings are ignored. RoleMappingConflict naming the values when the mapped roles combine
    separated duties (or name a role the registry does not know)."""
    mapped = sorted({value for value in values if isinstance(value, str) and value in role_map})
    roles = frozenset(role_map[value] for value in mapped)
    try:
        check_assignment(roles, registry)
    except RoleError as exc:
        culprits = [value for value in mapped if len(roles) > 1 or registry.get(role_map[value]) is None]
        raise RoleMappingConflict(culprits, exc.problems) from None
    return roles


def authorize(roles: Iterable[str], permission: Permission, registry: RoleRegistry) -> Decision:
    """May a principal holding `roles` use `permission`? Deny unless a known role grants it.

    Fails closed when the roles combine separated duties: `check_assignment` should have refused
    that set, so meeting it here means validation was bypassed or the store was altered.
    """
    _refuse_bare_string(roles)
    names = sorted(set(roles))
    if not names:
        return Decision(False, "no roles", missing=permission)
    granted = permissions_of(names, registry)
    clashes = conflicts(granted)
    if clashes:
        return Decision(False, f"roles {', '.join(names)} combine separated duties: {clashes[0]}", missing=permission)
    if permission in granted:
        return Decision(True, f"{permission} granted by roles {', '.join(names)}")
    return Decision(False, f"no role among {', '.join(names)} grants {permission}", missing=permission)


def may_decide_approval(decider: Principal, requester_id: str, registry: RoleRegistry) -> Decision:
    """May `decider` approve or reject the request made by `requester_id`?

    Needs `approvals:decide`, and the decider must not be the requester. Subjects are compared
    after NFKC normalisation, trimming and case folding, so ``Alice`` cannot approve ``alice``'s request;
    an empty subject on either side is refused, since it cannot prove the two differ.
    """
    decision = authorize(decider.roles, _P.APPROVALS_DECIDE, registry)
    if not decision:
        return decision
    if not decider.subject.strip() or not requester_id.strip():
        return Decision(False, "the decider or the requester is unidentified")
    if _same_subject(decider.subject, requester_id):
        return Decision(False, "nobody may decide on their own request")
    return decision


def _custom_role(spec: CustomRole, *, seen: set[str]) -> tuple[list[str], Role | None]:
    where = f"custom role {spec.name!r}"
    problems: list[str] = []
    if spec.name in BUILTIN_ROLES:
        problems.append(f"{where} has the name of a built-in role; choose another name")
    elif spec.name in seen:
        problems.append(f"{where} is defined twice")
    elif ROLE_NAME.fullmatch(spec.name) is None:
        problems.append(f"{where}: names are 1-64 of a-z, 0-9, '_' and '-', starting with a letter")
    for field_name in ("permissions", "inherits"):
        if isinstance(getattr(spec, field_name), str):
            problems.append(f"{where}: {field_name} must be a list, not one string")
    if problems:
        return problems, None

    granted: set[Permission] = set()
    for name in spec.permissions:
        try:
            granted.add(Permission(name))
        except ValueError:
            known = ", ".join(p.value for p in Permission)
            problems.append(f"{where} names unknown permission {name!r}; known: {known}")
    for parent in spec.inherits:
        builtin = BUILTIN_ROLES.get(parent)
        if builtin is None:
            problems.append(f"{where} inherits {parent!r}, which is not a built-in role")
        else:
            granted |= builtin.permissions
    if not problems and not granted:
        problems.append(f"{where} grants nothing; give it permissions or remove it")
    problems += [f"{where} combines {line}" for line in conflicts(granted)]
    if problems:
        return problems, None
    return [], Role(spec.name, frozenset(granted))


def _refuse_bare_string(roles: Iterable[str]) -> None:
    # A str is an Iterable[str] to the type checker; iterating "admin" would ask about roles "a", "d", ...
    if isinstance(roles, str):
        raise TypeError("roles must be a collection of role names, not one string")


def _same_subject(a: str, b: str) -> bool:
    return unicodedata.normalize("NFKC", a).strip().casefold() == unicodedata.normalize("NFKC", b).strip().casefold()
