from __future__ import annotations

from itertools import combinations

import pytest

from zguard.security.rbac import (
    BUILTIN_ROLES,
    FORBIDDEN_PAIRS,
    SEPARATED_DUTIES,
    CustomRole,
    Decision,
    Permission,
    Principal,
    RoleError,
    RoleMappingConflict,
    RoleRegistry,
    authorize,
    build_registry,
    check_assignment,
    conflicts,
    map_roles,
    may_decide_approval,
    permissions_of,
)

P = Permission
REGISTRY = build_registry()

# The table in rbac.py's docstring, written out again so a change to either is noticed.
EXPECTED: dict[str, set[Permission]] = {
    "admin": {P.USERS_MANAGE, P.TOKENS_MANAGE, P.POLICY_MANAGE, P.SYSTEM_READ, P.MODELS_READ},
    "auditor": {P.AUDIT_READ, P.AUDIT_EXPORT, P.SYSTEM_READ, P.MODELS_READ},
    "approver": {P.APPROVALS_DECIDE, P.MODELS_READ},
    "generator": {P.IMAGES_GENERATE, P.MODELS_READ},
    "viewer": {P.MODELS_READ, P.SYSTEM_READ},
}
ALL_ROLE_PERMISSION_PAIRS = [(role, permission) for role in EXPECTED for permission in Permission]


def test_permission_names() -> None:
    assert {p.value for p in Permission} == {
        "images:generate",
        "models:read",
        "audit:read",
        "audit:export",
        "users:manage",
        "tokens:manage",
        "policy:manage",
        "approvals:decide",
        "system:read",
    }


def test_no_permission_can_alter_or_delete_audit_records() -> None:
    audit = {p for p in Permission if p.value.startswith("audit:")}
    assert audit == {P.AUDIT_READ, P.AUDIT_EXPORT}
    for p in Permission:
        assert not any(verb in p.value for verb in ("write", "delete", "alter", "purge", "*"))


def test_builtin_roles_match_the_documented_table() -> None:
    assert {name: set(role.permissions) for name, role in BUILTIN_ROLES.items()} == EXPECTED
    assert all(role.builtin for role in BUILTIN_ROLES.values())
    assert set(REGISTRY.roles) == set(EXPECTED)
    assert {role.name for role in REGISTRY} == set(EXPECTED)
    assert RoleRegistry().roles == REGISTRY.roles


@pytest.mark.parametrize(("role", "permission"), ALL_ROLE_PERMISSION_PAIRS)
def test_each_role_gets_exactly_its_permissions_and_is_denied_every_other(role: str, permission: Permission) -> None:
    decision = authorize([role], permission, REGISTRY)
    if permission in EXPECTED[role]:
        assert decision == Decision(True, f"{permission} granted by roles {role}")
        assert decision
    else:
        assert not decision
        assert decision.allowed is False
        assert decision.missing is permission
        assert role in decision.reason


@pytest.mark.parametrize("role", BUILTIN_ROLES)
def test_builtin_roles_respect_separation_of_duties(role: str) -> None:
    assert conflicts(BUILTIN_ROLES[role].permissions) == ()


def test_separation_of_duties_rules() -> None:
    # The rules named in the access-control issue.
    auditor, admin = EXPECTED["auditor"], EXPECTED["admin"]
    assert P.IMAGES_GENERATE not in auditor
    assert P.USERS_MANAGE not in auditor
    assert not admin & {P.AUDIT_READ, P.AUDIT_EXPORT}
    for pair in [
        {P.IMAGES_GENERATE, P.AUDIT_EXPORT},
        {P.IMAGES_GENERATE, P.AUDIT_READ},
        {P.USERS_MANAGE, P.AUDIT_EXPORT},
        {P.USERS_MANAGE, P.AUDIT_READ},
        {P.POLICY_MANAGE, P.AUDIT_READ},
        {P.TOKENS_MANAGE, P.AUDIT_EXPORT},
        {P.APPROVALS_DECIDE, P.AUDIT_READ},
        {P.APPROVALS_DECIDE, P.USERS_MANAGE},
        {P.IMAGES_GENERATE, P.POLICY_MANAGE},
    ]:
        assert frozenset(pair) in FORBIDDEN_PAIRS
    # Generation and approval may be combined (self-approval is refused per request instead), and
    # the read-only permissions belong to no duty.
    assert frozenset({P.IMAGES_GENERATE, P.APPROVALS_DECIDE}) not in FORBIDDEN_PAIRS
    for neutral in (P.MODELS_READ, P.SYSTEM_READ):
        assert not any(neutral in pair for pair in FORBIDDEN_PAIRS)


def test_forbidden_pairs_are_exactly_the_cross_products_of_separated_duties() -> None:
    expected = {frozenset({a, b}) for d in SEPARATED_DUTIES for a in d.first for b in d.second}
    assert set(FORBIDDEN_PAIRS) == expected
    assert all(len(pair) == 2 for pair in FORBIDDEN_PAIRS)
    assert all(reason for reason in FORBIDDEN_PAIRS.values())
    assert len(FORBIDDEN_PAIRS) == 2 * 1 + 2 * 3 + 2 * 1 + 3 * 1 + 3 * 1


def test_conflicts_lists_every_forbidden_pair_once() -> None:
    assert conflicts([]) == ()
    assert conflicts([P.MODELS_READ, P.SYSTEM_READ]) == ()
    lines = conflicts([P.IMAGES_GENERATE, P.AUDIT_READ, P.AUDIT_EXPORT, P.IMAGES_GENERATE])
    assert len(lines) == 2
    assert all("images:generate" in line for line in lines)
    assert len(conflicts(list(Permission))) == len(FORBIDDEN_PAIRS)


# --- authorize: deny by default -------------------------------------------------------------------


@pytest.mark.parametrize("permission", list(Permission))
def test_empty_roles_get_nothing(permission: Permission) -> None:
    decision = authorize([], permission, REGISTRY)
    assert decision == Decision(False, "no roles", missing=permission)
    assert not decision


@pytest.mark.parametrize("permission", list(Permission))
@pytest.mark.parametrize("role", ["root", "Admin", "ADMIN", " admin", "admin ", "", "*", "superuser"])
def test_unknown_roles_grant_nothing(role: str, permission: Permission) -> None:
    assert not authorize([role], permission, REGISTRY)


def test_unknown_roles_alongside_known_ones_add_nothing() -> None:
    assert authorize(["nobody", "generator"], P.IMAGES_GENERATE, REGISTRY)
    assert not authorize(["nobody", "generator"], P.SYSTEM_READ, REGISTRY)
    assert permissions_of(["nobody", "generator"], REGISTRY) == EXPECTED["generator"]
    assert permissions_of([], REGISTRY) == frozenset()


def test_roles_combine_when_they_do_not_conflict() -> None:
    roles = ["generator", "approver", "viewer"]
    for permission in Permission:
        expected = permission in EXPECTED["generator"] | EXPECTED["approver"] | EXPECTED["viewer"]
        assert bool(authorize(roles, permission, REGISTRY)) is expected


@pytest.mark.parametrize(
    "roles",
    [
        ("admin", "auditor"),
        ("generator", "auditor"),
        ("approver", "auditor"),
        ("admin", "approver"),
        ("admin", "generator"),
    ],
)
def test_a_principal_whose_roles_combine_separated_duties_is_denied_everything(roles: tuple[str, str]) -> None:
    for permission in Permission:
        decision = authorize(roles, permission, REGISTRY)
        assert not decision
        assert "separated duties" in decision.reason
    with pytest.raises(RoleError, match="combine"):
        check_assignment(roles, REGISTRY)


@pytest.mark.parametrize(("a", "b"), list(combinations(BUILTIN_ROLES, 2)))
def test_check_assignment_agrees_with_forbidden_pairs(a: str, b: str) -> None:
    clash = bool(conflicts(BUILTIN_ROLES[a].permissions | BUILTIN_ROLES[b].permissions))
    if clash:
        with pytest.raises(RoleError):
            check_assignment([a, b], REGISTRY)
    else:
        check_assignment([a, b], REGISTRY)


def test_check_assignment_refuses_unknown_roles_and_allows_none() -> None:
    check_assignment([], REGISTRY)
    check_assignment(["viewer"], REGISTRY)
    with pytest.raises(RoleError) as caught:
        check_assignment(["viewer", "root"], REGISTRY)
    assert caught.value.problems == ("unknown role 'root'",)


def test_a_bare_string_of_roles_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="not one string"):
        authorize("admin", P.USERS_MANAGE, REGISTRY)
    with pytest.raises(TypeError):
        permissions_of("admin", REGISTRY)
    with pytest.raises(TypeError):
        check_assignment("admin", REGISTRY)


def test_decision_truthiness_is_allowed() -> None:
    assert not Decision(False, "x")
    assert Decision(True, "y")


def test_a_plain_string_permission_is_never_more_than_its_enum() -> None:
    assert not authorize(["generator"], "images:generate ", REGISTRY)  # type: ignore[arg-type]
    assert not authorize(["generator"], "IMAGES:GENERATE", REGISTRY)  # type: ignore[arg-type]


# --- approvals -----------------------------------------------------------------------------------


def _approver(subject: str = "bob", roles: frozenset[str] = frozenset({"approver"})) -> Principal:
    return Principal(subject=subject, roles=roles)


def test_an_approver_may_decide_someone_elses_request() -> None:
    decision = may_decide_approval(_approver("bob"), "alice", REGISTRY)
    assert decision
    assert decision.missing is None


@pytest.mark.parametrize("requester", ["bob", "Bob", "BOB", "ｂｏｂ", "ＢＯＢ", " bob", "bob\t"])
def test_nobody_decides_their_own_request(requester: str) -> None:
    decision = may_decide_approval(_approver("bob"), requester, REGISTRY)
    assert not decision
    assert decision.reason == "nobody may decide on their own request"


def test_generator_approver_still_cannot_approve_own_request() -> None:
    both = _approver("carol", frozenset({"generator", "approver"}))
    assert may_decide_approval(both, "dave", REGISTRY)
    assert not may_decide_approval(both, "carol", REGISTRY)


@pytest.mark.parametrize(("decider", "requester"), [("", "alice"), ("  ", "alice"), ("bob", ""), ("bob", " ")])
def test_unidentified_parties_are_refused(decider: str, requester: str) -> None:
    assert not may_decide_approval(_approver(decider), requester, REGISTRY)


@pytest.mark.parametrize("role", sorted(set(BUILTIN_ROLES) - {"approver"}))
def test_only_holders_of_approvals_decide_may_decide(role: str) -> None:
    decision = may_decide_approval(_approver("bob", frozenset({role})), "alice", REGISTRY)
    assert not decision
    assert decision.missing is P.APPROVALS_DECIDE


def test_approver_with_conflicting_roles_may_not_decide() -> None:
    assert not may_decide_approval(_approver("bob", frozenset({"approver", "auditor"})), "alice", REGISTRY)


# --- custom roles --------------------------------------------------------------------------------


def test_custom_roles_are_added_to_the_builtins() -> None:
    registry = build_registry(
        [
            CustomRole("ops", permissions=["system:read"]),
            CustomRole("studio", permissions=["approvals:decide"], inherits=["generator"]),
            CustomRole("reviewer", inherits=["auditor"]),
        ]
    )
    assert set(registry.roles) == set(EXPECTED) | {"ops", "studio", "reviewer"}
    assert registry.roles["ops"].permissions == {P.SYSTEM_READ}
    assert registry.roles["studio"].permissions == {P.APPROVALS_DECIDE, P.IMAGES_GENERATE, P.MODELS_READ}
    assert registry.roles["reviewer"].permissions == EXPECTED["auditor"]
    assert not registry.roles["ops"].builtin
    assert authorize(["studio"], P.IMAGES_GENERATE, registry)
    assert not authorize(["ops"], P.IMAGES_GENERATE, registry)
    # Registries are independent: the default one still does not know "ops".
    assert not authorize(["ops"], P.SYSTEM_READ, REGISTRY)


def test_registry_cannot_be_changed_after_it_is_built() -> None:
    registry = build_registry([CustomRole("ops", permissions=["system:read"])])
    with pytest.raises(TypeError):
        registry.roles["root"] = BUILTIN_ROLES["admin"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (CustomRole("admin", permissions=["models:read"]), "name of a built-in role"),
        (CustomRole("viewer", inherits=["viewer"]), "name of a built-in role"),
        (CustomRole("Ops", permissions=["models:read"]), "names are 1-64"),
        (CustomRole("", permissions=["models:read"]), "names are 1-64"),
        (CustomRole("ops team", permissions=["models:read"]), "names are 1-64"),
        (CustomRole("o" * 65, permissions=["models:read"]), "names are 1-64"),
        (CustomRole("ops", permissions=["images:delete"]), "unknown permission 'images:delete'"),
        (CustomRole("ops", permissions=["*"]), "unknown permission '\\*'"),
        (CustomRole("ops", permissions=["Models:Read"]), "unknown permission"),
        (CustomRole("ops", permissions=["audit:write"]), "unknown permission 'audit:write'"),
        (CustomRole("ops", permissions=["models:read "]), "unknown permission"),
        (CustomRole("ops", inherits=["superuser"]), "not a built-in role"),
        (CustomRole("ops"), "grants nothing"),
        (CustomRole("ops", permissions="models:read"), "must be a list"),
        (CustomRole("ops", inherits="viewer"), "must be a list"),
        (
            CustomRole("ops", permissions=["images:generate", "audit:export"]),
            "combines audit:export with images:generate",
        ),
        (CustomRole("ops", permissions=["users:manage", "audit:export"]), "combines audit:export with users:manage"),
        (CustomRole("ops", permissions=["audit:read"], inherits=["generator"]), "combines"),
        (CustomRole("ops", inherits=["admin", "auditor"]), "combines"),
        (CustomRole("ops", inherits=["admin", "approver"]), "combines approvals:decide with users:manage"),
    ],
)
def test_custom_role_validation(spec: CustomRole, problem: str) -> None:
    with pytest.raises(RoleError, match=problem):
        build_registry([spec])


def test_custom_role_may_not_inherit_another_custom_role() -> None:
    with pytest.raises(RoleError, match="'ops', which is not a built-in role"):
        build_registry([CustomRole("ops", permissions=["system:read"]), CustomRole("ops2", inherits=["ops"])])


def test_duplicate_custom_roles_are_refused_even_when_the_first_is_invalid() -> None:
    with pytest.raises(RoleError, match="defined twice"):
        build_registry([CustomRole("ops", permissions=["system:read"]), CustomRole("ops", permissions=["models:read"])])
    with pytest.raises(RoleError, match="defined twice"):
        build_registry([CustomRole("ops", permissions=["nope"]), CustomRole("ops", permissions=["models:read"])])


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(RoleError) as caught:
        build_registry(
            [
                CustomRole("admin", permissions=["models:read"]),
                CustomRole("a", permissions=["x", "y"], inherits=["z"]),
                CustomRole("b", permissions=["images:generate", "audit:read", "audit:export"]),
                CustomRole("fine", permissions=["models:read"]),
            ]
        )
    problems = caught.value.problems
    assert len(problems) == 1 + 3 + 2
    assert str(caught.value) == "; ".join(problems)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("pair", sorted(tuple(sorted(pair)) for pair in FORBIDDEN_PAIRS))
def test_every_forbidden_pair_is_refused_in_a_custom_role(pair: tuple[str, str]) -> None:
    with pytest.raises(RoleError, match="combines"):
        build_registry([CustomRole("mixed", permissions=list(pair))])


ALLOWED_PAIRS = [(a, b) for a, b in combinations(sorted(Permission), 2) if frozenset({a, b}) not in FORBIDDEN_PAIRS]


@pytest.mark.parametrize(("a", "b"), ALLOWED_PAIRS)
def test_every_allowed_pair_is_accepted_in_a_custom_role(a: Permission, b: Permission) -> None:
    registry = build_registry([CustomRole("mixed", permissions=[a.value, b.value])])
    assert registry.roles["mixed"].permissions == {a, b}


GROUPS = {"cn=zg-auditors": "auditor", "cn=zg-designers": "generator", "cn=zg-viewers": "viewer"}


def test_idp_groups_map_to_roles_and_unlisted_ones_grant_nothing() -> None:
    registry = build_registry()
    assert map_roles(["cn=zg-designers", "cn=staff", 7, None], GROUPS, registry) == {"generator"}
    assert map_roles(["cn=zg-viewers", "cn=zg-designers"], GROUPS, registry) == {"generator", "viewer"}
    assert map_roles([], GROUPS, registry) == frozenset()


def test_idp_groups_that_combine_separated_duties_are_refused_naming_the_groups() -> None:
    with pytest.raises(RoleMappingConflict) as refused:
        map_roles(["cn=zg-designers", "cn=zg-auditors", "cn=staff"], GROUPS, build_registry())
    assert refused.value.values == ("cn=zg-auditors", "cn=zg-designers")
    assert "separated" in str(refused.value) or "audit" in str(refused.value)
    with pytest.raises(RoleMappingConflict) as unknown:
        map_roles(["g"], {"g": "superuser"}, build_registry())
    assert unknown.value.values == ("g",)
