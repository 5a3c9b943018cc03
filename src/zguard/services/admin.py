"""Administration of principals, roles and API tokens: the code behind `zguard init|user|token`.

The command line and (later) the console call the same methods, so both check roles the same way
and report the same audit events. Decisions written here:

- Every grant is checked against the role registry (built-in and custom roles) and separation of
  duties (`rbac.check_assignment`) before anything is written; a principal gets at least one role.
  A token may only narrow its owner's roles, never name one the owner lacks.
- Every change emits one `AuditEvent` (outcome ``done``) after it is committed, naming the actor
  and the target. A token appears by id and display prefix only: never its plaintext, its digest,
  or a password or hash. An exception from the sink reaches the caller, which reports the action
  as failed (fail closed: the operator learns the record may be missing).
- A new token's plaintext leaves this module once, in `IssuedApiToken.plaintext`; the store keeps
  only `token_digest(plaintext, key)`.
- `initialize` refuses when an admin already exists or the name is taken, so running it again can
  never create a second admin silently. Other principals (the demo account `serve` creates) do not
  count: they cannot administer anything.
- One namespace of principals, compared without case (`casefold`): a name that equals a user
  declared in `api_auth.users` or a stored principal's, `Bob` beside `bob` included, is refused
  for a new principal. Two principals that authenticate as one name would merge in the audit
  trail and defeat separation of duties (an auditor and a generator both `demo`). `serve`
  refuses to start on collisions made before this rule (`identity_collisions`). Settings-file
  users are changed in the settings file; the CLI says so instead of "no such principal".

Errors (each a `ZguardError` with a stable code; store errors pass through unchanged)::

    AdminError                 admin_refused
    ├── RolesRefused           roles_refused: `roles` and one `problems` line each
    ├── AlreadyInitialized     already_initialized: `admins` already in the store
    ├── NameReserved           name_reserved: `name` is a configured user (or a stored one, but for case)
    ├── DeclaredInSettings     declared_in_settings: a configured user, changed in the settings file
    ├── PrincipalDisabled      principal_disabled: no tokens for a disabled principal
    ├── NotAUser               not_a_user: service accounts have no password
    └── InvalidInput           invalid_input: a password, name, label or duration that cannot be used
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import combinations
from pathlib import Path

from zguard.audit import AuditEvent, AuditSink, DetailValue
from zguard.errors import ZguardError
from zguard.security.keys import load_or_create_key
from zguard.security.password_policy import DEFAULT_MIN_LENGTH, PasswordRejected, check_new_password
from zguard.security.passwords import DEFAULT_COST, hash_password
from zguard.security.rbac import FORBIDDEN_PAIRS, RoleError, RoleRegistry, check_assignment, permissions_of
from zguard.security.tokens import new_token, token_digest
from zguard.store.errors import PrincipalExists, PrincipalNotFound, TokenNotFound
from zguard.store.principals import PrincipalKind, PrincipalRecord, PrincipalStore, TokenRecord, utc_now

ADMIN_ROLE = "admin"
INIT_TOKEN_LABEL = "zguard init"  # noqa: S105 - a label shown in `token list`, not a secret
MAX_TOKEN_LIFETIME = timedelta(days=3650)
_DURATION = re.compile(r"([1-9][0-9]{0,6})([mhd])")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


# --- errors ----------------------------------------------------------------------------------


class AdminError(ZguardError):
    """An admin action refused; the message (written for the operator) says why and what to change."""

    code = "admin_refused"
    status = 400
    type = "invalid_request_error"
    fix = "change what the message names; `zguard user list` and `zguard role list` show what exists"


class RolesRefused(AdminError):
    code = "roles_refused"

    def __init__(self, message: str, *, roles: Sequence[str], problems: Sequence[str]) -> None:
        super().__init__(message)
        self.roles = tuple(roles)
        self.problems = tuple(problems)


class AlreadyInitialized(AdminError):
    code = "already_initialized"

    def __init__(self, admins: Sequence[str], wanted: str) -> None:
        if admins:
            message = (
                f"the state store is already initialized (admin: {', '.join(admins)}); `zguard init` never creates "
                f"a second admin. For a new admin token run `zguard token create --user {admins[0]}`; "
                "for another admin, `zguard user add NAME --role admin`"
            )
        else:
            message = f"a principal named {wanted!r} already exists; choose another admin name with --admin NAME"
        super().__init__(message)
        self.admins = tuple(admins)


class NameReserved(AdminError):
    code = "name_reserved"

    def __init__(self, name: str, stored: str | None = None) -> None:
        if stored is None:
            why = "is a user declared in the configuration (api_auth.users), which would shadow it at login"
        else:
            why = f"differs from the existing principal {stored!r} only in case, and names are compared without case"
        super().__init__(f"{name!r} {why}; choose another name")
        self.name = name


class DeclaredInSettings(AdminError):
    code = "declared_in_settings"
    fix = "change the user in the settings file (api_auth.users), then restart zguard serve"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name!r} is a user declared in the settings file (api_auth.users), not in the state database; "
            "change, disable or remove it there"
        )
        self.name = name


def identity_collisions(configured: Iterable[str], stored: Iterable[str]) -> list[str]:
    """One line per group of names that are one name without case, across the settings file's
    users and the stored principals; empty when every principal has a name of its own."""
    groups: dict[str, list[str]] = {}
    for name in configured:
        groups.setdefault(name.casefold(), []).append(f"{name!r} (api_auth.users)")
    for name in stored:
        groups.setdefault(name.casefold(), []).append(f"{name!r} (state database)")
    return [
        " and ".join(names) + " are one principal to the audit trail and to login: rename or remove all but one "
        "(settings file, or `zguard user disable NAME`)"
        for names in groups.values()
        if len(names) > 1
    ]


class PrincipalDisabled(AdminError):
    code = "principal_disabled"

    def __init__(self, name: str) -> None:
        super().__init__(f"{name!r} is disabled and its tokens would not work; `zguard user enable {name}` first")
        self.name = name


class NotAUser(AdminError):
    code = "not_a_user"

    def __init__(self, name: str) -> None:
        super().__init__(f"{name!r} is a service account; service accounts have no password, they use API tokens")
        self.name = name


class InvalidInput(AdminError):
    code = "invalid_input"


DEFAULT_TOKEN_EXPIRY = timedelta(days=90)  # api_auth.token_expiry_days


# --- values ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """Who acts, for the audit events: ``cli:<os user>`` on the command line, a principal in the console."""

    principal: str
    roles: tuple[str, ...] = ()
    client: str | None = None
    request_id: str | None = None
    listener: str | None = None
    detail: Mapping[str, DetailValue] = field(default_factory=dict)  # e.g. the OS uid of a CLI actor


@dataclass(frozen=True)
class IssuedApiToken:
    """A stored token and, once, its plaintext: show it to its owner and drop it. Not in ``repr``."""

    record: TokenRecord
    plaintext: str = field(repr=False)


def load_token_key(path: Path) -> bytes:
    """The token key in `path`, created (mode 0600, its new directory 0700) when absent."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return load_or_create_key(path)


def parse_duration(text: str) -> timedelta:
    """``90m``, ``12h``, ``30d`` → a timedelta; ValueError naming the accepted forms otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write a whole number and m, h or d: 90m, 12h, 30d")
    value = timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})
    if value > MAX_TOKEN_LIFETIME:
        raise ValueError(f"{text!r} is longer than the {MAX_TOKEN_LIFETIME.days}d a token may live")
    return value


def token_status(token: TokenRecord, now: datetime) -> str:
    """Whether `token` would authenticate now, in the words `AuthService` uses for its refusals."""
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    if not token.principal.enabled:
        return "owner disabled"
    return "active"


def check_password(password: str, *, username: str | None = None, min_length: int = DEFAULT_MIN_LENGTH) -> None:
    """Raise InvalidInput for a password the policy refuses (zguard.security.password_policy):
    empty, over bcrypt's 72 bytes, short, common, repetitive, or containing the username."""
    try:
        check_new_password(password, username=username, min_length=min_length)
    except PasswordRejected as exc:
        raise InvalidInput(str(exc)) from None


# --- the service -----------------------------------------------------------------------------


class AdminService:
    """Create and change principals and tokens; every change is checked, then audited.

    `token_key` is called only when a token is made, so commands that make none never touch the
    key file. `reserved_names` are the configured users' names.
    """

    def __init__(
        self,
        store: PrincipalStore,
        registry: RoleRegistry,
        *,
        token_key: Callable[[], bytes],
        audit: AuditSink,
        clock: Callable[[], datetime] = utc_now,
        password_cost: int = DEFAULT_COST,
        password_min_length: int = DEFAULT_MIN_LENGTH,
        token_expiry: timedelta | None = DEFAULT_TOKEN_EXPIRY,
        reserved_names: Iterable[str] = (),
    ) -> None:
        """`token_expiry`: the lifetime of a token made without `expires_in` (None: never expires)."""
        self._store = store
        self._registry = registry
        self._token_key = token_key
        self._audit = audit
        self._clock = clock
        self._password_cost = password_cost
        self.password_min_length = password_min_length
        self._token_expiry = token_expiry
        self.configured_users = tuple(reserved_names)
        self._reserved = frozenset(name.casefold() for name in self.configured_users)

    @property
    def registry(self) -> RoleRegistry:
        return self._registry

    def now(self) -> datetime:
        return self._clock()

    # --- the first admin ----------------------------------------------------------------

    def initialize(self, admin_name: str, *, actor: Actor) -> IssuedApiToken:
        """Create the first admin (a user with role admin) and a token for it; refuse if one exists."""
        admins = [p.name for p in self._store.list_principals() if ADMIN_ROLE in p.roles]
        if admins or self._store.get_principal(admin_name) is not None:
            raise AlreadyInitialized(admins, admin_name)
        self.add_principal(admin_name, kind="user", roles=[ADMIN_ROLE], actor=actor)
        issued = self.create_token(admin_name, label=INIT_TOKEN_LABEL, actor=actor)
        self._emit("store.initialized", actor, {"target": admin_name, "token": issued.record.prefix})
        return issued

    # --- principals ---------------------------------------------------------------------

    def add_principal(self, name: str, *, kind: PrincipalKind, roles: Sequence[str], actor: Actor) -> PrincipalRecord:
        """A new user (no password until `set_password`) or service account with `roles`."""
        granted = self._checked_roles(name, roles)
        if name.casefold() in self._reserved:
            raise NameReserved(name)
        if clash := next((p.name for p in self._store.list_principals() if p.name.casefold() == name.casefold()), None):
            raise PrincipalExists(clash) if clash == name else NameReserved(name, clash)
        try:
            record = self._store.create_principal(name, kind, roles=granted)
        except ValueError as exc:  # the store's own checks of the name; its messages hold no secret
            raise InvalidInput(str(exc)) from None
        self._emit("user.created", actor, {"target": name, "kind": kind, "roles": ",".join(record.roles)})
        return record

    def list_principals(self) -> list[PrincipalRecord]:
        return self._store.list_principals()

    def get_principal(self, name: str) -> PrincipalRecord:
        record = self._store.get_principal(name)
        if record is None:
            if name.casefold() in self._reserved:
                raise DeclaredInSettings(name)
            raise PrincipalNotFound(name)
        return record

    def require_user(self, name: str) -> PrincipalRecord:
        """The user `name`; raise PrincipalNotFound or NotAUser (ask before prompting for a password)."""
        record = self.get_principal(name)
        if record.kind != "user":
            raise NotAUser(name)
        return record

    def set_enabled(self, name: str, enabled: bool, *, actor: Actor) -> PrincipalRecord:
        self.get_principal(name)  # a settings-file user: say where it lives
        change = self._store.enable_principal if enabled else self._store.disable_principal
        record = change(name)
        self._emit("user.enabled" if enabled else "user.disabled", actor, {"target": name})
        return record

    def set_roles(self, name: str, roles: Sequence[str], *, actor: Actor) -> PrincipalRecord:
        """Replace the principal's roles. Tokens narrowed to a role it loses stop carrying that role."""
        self.get_principal(name)
        granted = self._checked_roles(name, roles)
        before = self.get_principal(name)
        record = self._store.set_roles(name, granted)
        self._emit(
            "user.roles_changed",
            actor,
            {"target": name, "roles": ",".join(record.roles), "previous_roles": ",".join(before.roles)},
        )
        return record

    def set_password(self, name: str, password: str, *, actor: Actor) -> PrincipalRecord:
        self.require_user(name)
        check_password(password, username=name, min_length=self.password_min_length)
        record = self._store.set_password_hash(name, hash_password(password, self._password_cost))
        self._emit("user.password_changed", actor, {"target": name})
        return record

    # --- tokens -------------------------------------------------------------------------

    def create_token(
        self,
        owner: str,
        *,
        roles: Sequence[str] | None = None,
        expires_in: timedelta | None = None,
        never_expires: bool = False,
        label: str | None = None,
        actor: Actor,
    ) -> IssuedApiToken:
        """A new token for `owner`, carrying all its roles or, with `roles`, only those; it
        expires after `expires_in`, else the default lifetime, unless `never_expires`."""
        principal = self.get_principal(owner)
        if not principal.enabled:
            raise PrincipalDisabled(owner)
        if never_expires and expires_in is not None:
            raise InvalidInput("give a lifetime or ask for no expiry, not both")
        narrowed = None if roles is None else self._narrowed_roles(principal, roles)
        lifetime = None if never_expires else (expires_in or self._token_expiry)
        expires_at = None if lifetime is None else self._clock() + lifetime
        issued = new_token()
        digest = token_digest(issued.plaintext, self._token_key())
        try:
            record = self._store.add_token(
                owner,
                token_hash=digest,
                prefix=issued.display_prefix,
                roles=narrowed,
                expires_at=expires_at,
                label=label,
            )
        except ValueError as exc:  # a label the store refuses
            raise InvalidInput(str(exc)) from None
        self._emit(
            "token.created",
            actor,
            {
                "target": owner,
                "token": record.prefix,
                "token_id": record.id,
                "roles": None if record.roles is None else ",".join(record.roles),
                "expires_at": None if expires_at is None else expires_at.isoformat(),
                "label": label,
            },
        )
        return IssuedApiToken(record=record, plaintext=issued.plaintext)

    def list_tokens(self, owner: str | None = None) -> list[TokenRecord]:
        if owner is not None:
            self.get_principal(owner)  # an unknown name is an error, not an empty list
        return self._store.list_tokens(owner)

    def revoke_token(self, token_id: int, *, actor: Actor) -> tuple[TokenRecord, bool]:
        """Revoke; (record, False) when it already was, with no second event."""
        token = self._store.get_token(token_id)
        if token is None:
            raise TokenNotFound(token_id)
        if token.revoked_at is not None:
            return token, False
        record = self._store.revoke_token(token_id)
        self._emit(
            "token.revoked", actor, {"target": record.principal.name, "token": record.prefix, "token_id": record.id}
        )
        return record, True

    # --- helpers ------------------------------------------------------------------------

    def _checked_roles(self, target: str, roles: Sequence[str]) -> tuple[str, ...]:
        wanted = tuple(sorted(set(roles)))
        if not wanted:
            raise RolesRefused(f"give {target!r} at least one role (--role)", roles=wanted, problems=["no roles"])
        try:
            check_assignment(wanted, self._registry)
        except RoleError as exc:
            raise RolesRefused(
                f"cannot give {target!r} the roles {', '.join(wanted)}: {self._explain(wanted)}",
                roles=wanted,
                problems=exc.problems,
            ) from None
        return wanted

    def _explain(self, roles: Sequence[str]) -> str:
        """Why `roles` cannot go together, one clause per unknown role or separated duty."""
        unknown = [role for role in roles if self._registry.get(role) is None]
        if unknown:
            known = ", ".join(sorted(self._registry.roles))
            return f"unknown role {', '.join(repr(r) for r in unknown)} (known: {known}; see `zguard role list`)"
        pairs: dict[str, list[str]] = {}
        for a, b in combinations(sorted(permissions_of(roles, self._registry)), 2):
            reason = FORBIDDEN_PAIRS.get(frozenset({a, b}))
            if reason is not None:
                pairs.setdefault(reason, []).append(f"{a} with {b}")
        clauses = [f"{reason} ({'; '.join(held)})" for reason, held in pairs.items()]
        return "separation of duties: " + "; ".join(clauses) + "; give these duties to different principals"

    def _narrowed_roles(self, principal: PrincipalRecord, roles: Sequence[str]) -> tuple[str, ...]:
        wanted = tuple(sorted(set(roles)))
        lacking = [role for role in wanted if role not in principal.roles]
        if lacking:
            held = ", ".join(principal.roles) or "none"
            raise RolesRefused(
                f"{principal.name!r} does not hold the role(s) {', '.join(lacking)} (it holds: {held}); "
                "a token can only narrow its owner's roles",
                roles=wanted,
                problems=[f"owner lacks role {role!r}" for role in lacking],
            )
        return self._checked_roles(principal.name, wanted)

    def record(self, kind: str, actor: Actor, detail: dict[str, DetailValue]) -> None:
        """An admin action done elsewhere (a second factor enrolled), as this service's own are."""
        self._emit(kind, actor, detail)

    def _emit(self, kind: str, actor: Actor, detail: dict[str, DetailValue]) -> None:
        self._audit.emit(
            AuditEvent(
                type=kind,
                outcome="done",
                request_id=actor.request_id,
                listener=actor.listener,
                client=actor.client,
                principal=actor.principal,
                roles=actor.roles,
                detail={**actor.detail, **detail},
            )
        )
