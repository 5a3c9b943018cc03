"""The principal repository: users, service accounts, their roles and API tokens.

A small typed API over the state database for the authentication service. It enforces data
integrity (unique names and token hashes, well-formed values, passwords for users only) and
nothing else: who may do what, and whether a token is still usable, are decided by the callers.
Every method runs in its own transaction and returns frozen records, never live ORM objects.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast, overload

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from zguard.store.errors import PrincipalExists, PrincipalNotFound, TokenExists, TokenNotFound
from zguard.store.models import (
    ISSUER_MAX,
    NAME_MAX,
    PRINCIPAL_KINDS,
    PRINCIPAL_SOURCES,
    ROLE_MAX,
    SUBJECT_MAX,
    TOKEN_PREFIX_MAX,
    ApiToken,
    AuthState,
    PrincipalRole,
    PrincipalRow,
)

PrincipalKind = Literal["user", "service"]
_TOKEN_HASH = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


_AUTH_VERSION = select(AuthState.version).where(AuthState.id == 1)
_AUTH_VERSION_SQL = "SELECT version FROM auth_state WHERE id = 1"


class _VersionProbe:
    """A connection kept for the per-request `auth_version` read: no pool checkout, no ORM.

    It reads in autocommit (no transaction is left open between requests, and each read sees the
    latest commit). A broken connection (a database restart) is replaced once per read; a second
    failure propagates, and the caller fails closed.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Any = None

    def read(self) -> int:
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = self._open()
            try:
                cursor = self._connection.cursor()
                try:
                    cursor.execute(_AUTH_VERSION_SQL)
                    row = cursor.fetchone()
                finally:
                    cursor.close()
                return int(row[0])
            except Exception:
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _open(self) -> Any:
        connection = self._engine.raw_connection()
        if self._engine.dialect.name == "postgresql":
            cast(Any, connection.driver_connection).autocommit = True
        # Closed when the store is garbage-collected, so a dropped store leaves no open connection.
        weakref.finalize(self, _close_quietly, connection)
        return connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            _close_quietly(connection)


def _close_quietly(connection: Any) -> None:
    """Close the driver connection itself: a plain close() would hand it back to a pool that
    may already be disposed, leaving it open until the garbage collector finds it."""
    with contextlib.suppress(Exception):
        connection.invalidate()


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PrincipalRecord:
    id: int
    name: str
    kind: PrincipalKind
    roles: tuple[str, ...]
    enabled: bool
    created_at: datetime
    last_used_at: datetime | None
    password_hash: str | None = field(repr=False)  # bcrypt; kept out of logs and reprs
    source: str = "local"  # `local`, or the IdP that vouches for it: `oidc`, `ldap`, `scim`
    issuer: str | None = None  # an external principal's key at its source
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: int
    principal: PrincipalRecord
    prefix: str
    label: str | None
    roles: tuple[str, ...] | None  # None: all of the principal's roles
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    token_hash: str = field(repr=False)


class PrincipalStore:
    """Principals and tokens in the state database. `clock` gives "now" (aware, UTC)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._version_probe = _VersionProbe(engine)
        self._clock = clock

    @property
    def engine(self) -> Engine:
        return self._engine

    # --- principals ---------------------------------------------------------------------

    def create_principal(
        self,
        name: str,
        kind: PrincipalKind,
        *,
        roles: Iterable[str] = (),
        password_hash: str | None = None,
        enabled: bool = True,
        source: str = "local",
        issuer: str | None = None,
        subject: str | None = None,
    ) -> PrincipalRecord:
        """Add a principal; raise `PrincipalExists` when the name (or the external key) is taken.
        An external principal (`source` other than `local`, e.g. provisioned by SCIM) names its
        `issuer` and `subject` and has no password."""
        _check_name(name, "name")
        if kind not in PRINCIPAL_KINDS:
            raise ValueError(f"kind must be one of {PRINCIPAL_KINDS}")
        if source not in PRINCIPAL_SOURCES:
            raise ValueError(f"source must be one of {PRINCIPAL_SOURCES}")
        if (source == "local") != (issuer is None and subject is None) or (source != "local" and password_hash):
            raise ValueError("an external principal has an issuer and a subject and no password; a local one neither")
        _check_password_hash(kind, password_hash)
        principal = PrincipalRow(
            name=name,
            kind=kind,
            enabled=enabled,
            password_hash=password_hash,
            source=source,
            issuer=issuer,
            subject=subject,
            created_at=self._clock(),
            roles=[PrincipalRole(role=role) for role in _roles(roles)],
        )
        try:
            with self._sessions.begin() as session:
                session.add(principal)
                session.flush()
                return _principal_record(principal)
        except IntegrityError:
            if self.get_principal(name) is not None or source != "local":
                raise PrincipalExists(name) from None
            raise

    def sync_external(
        self,
        source: str,
        issuer: str,
        subject: str,
        name: str,
        roles: Iterable[str] | None,
        *,
        create: bool = True,
    ) -> PrincipalRecord:
        """The principal an external identity (`source`, `issuer`, `subject`) signs in as, made to
        match what the source says now: created just in time (when `create`), renamed to `name`,
        and given `roles` (None: keep the stored roles, e.g. when SCIM or an admin assigns them).

        A principal SCIM provisioned under `name` is that person (the IdP provisions and signs in
        the same user), whatever the login source. A name held by any other principal (a local
        user above all) is never taken over: `PrincipalExists`. No principal and `create` False
        (only provisioned users may sign in): `PrincipalNotFound`. The caller refuses a disabled
        one. Any change bumps the auth version, so caches and sessions see it.
        """
        if source not in PRINCIPAL_SOURCES or source == "local":
            raise ValueError(f"source must be one of {', '.join(PRINCIPAL_SOURCES[1:])}")
        _check_name(name, "name")
        if not (1 <= len(issuer) <= ISSUER_MAX and 1 <= len(subject) <= SUBJECT_MAX):
            raise ValueError(f"issuer and subject must be 1 to {ISSUER_MAX} characters")
        wanted = None if roles is None else _roles(roles)
        try:
            with self._sessions.begin() as session:
                principal = session.scalars(
                    select(PrincipalRow).where(
                        PrincipalRow.source == source, PrincipalRow.issuer == issuer, PrincipalRow.subject == subject
                    )
                ).one_or_none()
                if principal is None:
                    named = session.scalars(select(PrincipalRow).where(PrincipalRow.name == name)).one_or_none()
                    if named is not None and named.source == "scim" and named.kind == "user":
                        principal = named
                    elif named is not None:
                        raise PrincipalExists(name)
                    elif not create:
                        raise PrincipalNotFound(name)
                    else:
                        principal = PrincipalRow(
                            name=name,
                            kind="user",
                            enabled=True,
                            created_at=self._clock(),
                            source=source,
                            issuer=issuer,
                            subject=subject,
                            roles=[PrincipalRole(role=role) for role in wanted or ()],
                        )
                        session.add(principal)
                        _bump_auth_version(session)
                        session.flush()
                        return _principal_record(principal)
                changed = False
                if principal.name != name and principal.source == source:
                    taken = session.scalars(select(PrincipalRow.id).where(PrincipalRow.name == name)).one_or_none()
                    if taken is not None:
                        raise PrincipalExists(name)
                    principal.name, changed = name, True
                if wanted is not None and tuple(sorted(r.role for r in principal.roles)) != wanted:
                    for granted in list(principal.roles):
                        if granted.role not in wanted:
                            principal.roles.remove(granted)
                    have = {granted.role for granted in principal.roles}
                    principal.roles.extend(PrincipalRole(role=role) for role in sorted(set(wanted) - have))
                    changed = True
                if changed:
                    _bump_auth_version(session)
                    session.flush()
                return _principal_record(principal)
        except IntegrityError:  # a concurrent first login of the same identity, or the name taken meanwhile
            found = self.get_principal(name)
            if found is not None and (found.source, found.issuer, found.subject) == (source, issuer, subject):
                return found
            raise PrincipalExists(name) from None

    def get_principal(self, name: str) -> PrincipalRecord | None:
        with self._sessions() as session:
            principal = session.scalars(select(PrincipalRow).where(PrincipalRow.name == name)).one_or_none()
            return None if principal is None else _principal_record(principal)

    def get_principal_by_id(self, principal_id: int) -> PrincipalRecord | None:
        with self._sessions() as session:
            principal = session.get(PrincipalRow, principal_id)
            return None if principal is None else _principal_record(principal)

    def list_principals(self, kind: PrincipalKind | None = None) -> list[PrincipalRecord]:
        """Every principal (of `kind`, when given), by name."""
        query = select(PrincipalRow).order_by(PrincipalRow.name)
        if kind is not None:
            query = query.where(PrincipalRow.kind == kind)
        with self._sessions() as session:
            return [_principal_record(p) for p in session.scalars(query)]

    def max_password_cost(self) -> int | None:
        """The highest bcrypt cost among stored password hashes; None when no principal has one.

        Read from the hash text (``$2b$12$...``: characters 5 and 6, zero-padded, so the string
        maximum is the numeric one) in one aggregate query, for the dummy hash of unknown users.
        """
        with self._sessions() as session:
            value = session.scalar(select(func.max(func.substr(PrincipalRow.password_hash, 5, 2))))
        return int(value) if isinstance(value, str) and value.isdigit() else None

    def disable_principal(self, name: str) -> PrincipalRecord:
        return self._change(name, lambda p, _s: setattr(p, "enabled", False))

    def enable_principal(self, name: str) -> PrincipalRecord:
        return self._change(name, lambda p, _s: setattr(p, "enabled", True))

    def set_roles(self, name: str, roles: Iterable[str]) -> PrincipalRecord:
        """Replace the principal's roles with `roles` (duplicates collapse)."""
        wanted = set(_roles(roles))

        def change(principal: PrincipalRow, _session: Session) -> None:
            for granted in list(principal.roles):
                if granted.role not in wanted:
                    principal.roles.remove(granted)
            have = {granted.role for granted in principal.roles}
            principal.roles.extend(PrincipalRole(role=role) for role in sorted(wanted - have))

        return self._change(name, change)

    def set_password_hash(self, name: str, password_hash: str | None) -> PrincipalRecord:
        """Set (or with None, clear) a user's bcrypt hash; service accounts have none."""

        def change(principal: PrincipalRow, _session: Session) -> None:
            _check_password_hash(cast(PrincipalKind, principal.kind), password_hash)
            principal.password_hash = password_hash

        return self._change(name, change)

    def auth_version(self) -> int:
        """The counter `_bump_auth_version` raises; compare it before trusting a cached result.

        Called on every authenticated request, so it reads through a connection of its own
        (about 5 µs on SQLite instead of 30 µs through a pooled SQLAlchemy connection).
        """
        return self._version_probe.read()

    def touch_principal(self, principal_id: int, at: datetime | None = None) -> None:
        """Record a use of the principal (a login, a request); raise `PrincipalNotFound` if absent."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(PrincipalRow).where(PrincipalRow.id == principal_id).values(last_used_at=at or self._clock())
            )
            if not _rowcount(result):
                raise PrincipalNotFound(principal_id=principal_id)

    def _change(self, name: str, change: Callable[[PrincipalRow, Session], None]) -> PrincipalRecord:
        with self._sessions.begin() as session:
            principal = session.scalars(select(PrincipalRow).where(PrincipalRow.name == name)).one_or_none()
            if principal is None:
                raise PrincipalNotFound(name)
            change(principal, session)
            _bump_auth_version(session)
            session.flush()
            return _principal_record(principal)

    # --- API tokens ---------------------------------------------------------------------

    def add_token(
        self,
        principal_name: str,
        *,
        token_hash: str,
        prefix: str,
        roles: Iterable[str] | None = None,
        expires_at: datetime | None = None,
        label: str | None = None,
    ) -> TokenRecord:
        """Store a token by its hex digest; raise `TokenExists` when the digest is already stored."""
        if not _TOKEN_HASH.match(token_hash):
            raise ValueError("token_hash must be 64 lowercase hex characters (a SHA-256 or HMAC-SHA-256 digest)")
        if not 1 <= len(prefix) <= TOKEN_PREFIX_MAX or _CONTROL.search(prefix):
            raise ValueError(f"prefix must be 1 to {TOKEN_PREFIX_MAX} printable characters")
        if label is not None:
            _check_name(label, "label")
        if expires_at is not None and expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        try:
            with self._sessions.begin() as session:
                principal = session.scalars(
                    select(PrincipalRow).where(PrincipalRow.name == principal_name)
                ).one_or_none()
                if principal is None:
                    raise PrincipalNotFound(principal_name)
                token = ApiToken(
                    principal=principal,
                    token_hash=token_hash,
                    prefix=prefix,
                    label=label,
                    roles=None if roles is None else list(_roles(roles)),
                    created_at=self._clock(),
                    expires_at=expires_at,
                )
                session.add(token)
                session.flush()
                return _token_record(token)
        except IntegrityError:
            if self.get_token_by_hash(token_hash) is not None:
                raise TokenExists from None
            raise

    def get_token_by_hash(self, token_hash: str) -> TokenRecord | None:
        """The token with this digest, revoked or expired ones included: the caller decides."""
        with self._sessions() as session:
            token = session.scalars(select(ApiToken).where(ApiToken.token_hash == token_hash)).one_or_none()
            return None if token is None else _token_record(token)

    def active_token_digests(self) -> frozenset[str]:
        """The digest of every token not revoked (expired ones included), in one query."""
        with self._sessions() as session:
            return frozenset(session.scalars(select(ApiToken.token_hash).where(ApiToken.revoked_at.is_(None))))

    def get_token(self, token_id: int) -> TokenRecord | None:
        with self._sessions() as session:
            token = session.get(ApiToken, token_id)
            return None if token is None else _token_record(token)

    def list_tokens(self, principal_name: str | None = None, *, include_revoked: bool = True) -> list[TokenRecord]:
        """Tokens (of one principal, when named), oldest first."""
        query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
        if principal_name is not None:
            query = query.join(ApiToken.principal).where(PrincipalRow.name == principal_name)
        if not include_revoked:
            query = query.where(ApiToken.revoked_at.is_(None))
        with self._sessions() as session:
            return [_token_record(t) for t in session.scalars(query).unique()]

    def revoke_token(self, token_id: int, at: datetime | None = None) -> TokenRecord:
        """Mark a token revoked; revoking again keeps the first revocation time."""
        with self._sessions.begin() as session:
            token = session.get(ApiToken, token_id)
            if token is None:
                raise TokenNotFound(token_id)
            if token.revoked_at is None:
                token.revoked_at = at or self._clock()
                _bump_auth_version(session)
                session.flush()
            return _token_record(token)

    def touch_token(self, token_id: int, at: datetime | None = None) -> None:
        """Record a use of the token and of its principal, in one transaction."""
        when = at or self._clock()
        with self._sessions.begin() as session:
            # No UPDATE ... RETURNING: SQLite has it only from 3.35, older than some enterprise distributions ship.
            principal_id = session.scalar(select(ApiToken.principal_id).where(ApiToken.id == token_id))
            if principal_id is None:
                raise TokenNotFound(token_id)
            session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=when))
            session.execute(update(PrincipalRow).where(PrincipalRow.id == principal_id).values(last_used_at=when))


# --- helpers ---------------------------------------------------------------------------------


def _bump_auth_version(session: Session) -> None:
    """In the caller's transaction: every cached authentication result is stale from its commit."""
    session.execute(update(AuthState).where(AuthState.id == 1).values(version=AuthState.version + 1))


def _check_name(value: str, what: str) -> None:
    if not 1 <= len(value) <= NAME_MAX or _CONTROL.search(value) or value != value.strip():
        raise ValueError(f"{what} must be 1 to {NAME_MAX} characters, without control characters or outer spaces")


def _roles(roles: Iterable[str]) -> tuple[str, ...]:
    if isinstance(roles, str):  # a lone "admin" would otherwise become five one-letter roles
        raise TypeError("roles must be an iterable of role names, not a string")
    unique = sorted(set(roles))
    for role in unique:
        if not 1 <= len(role) <= ROLE_MAX or _CONTROL.search(role) or role != role.strip():
            raise ValueError(
                f"role names must be 1 to {ROLE_MAX} characters, without control characters or spaces around"
            )
    return tuple(unique)


def _check_password_hash(kind: PrincipalKind, password_hash: str | None) -> None:
    if password_hash is None:
        return
    if kind != "user":
        raise ValueError("only users have passwords; service accounts authenticate with API tokens")
    if not password_hash.startswith(("$2a$", "$2b$", "$2y$")) or len(password_hash) != 60:
        raise ValueError("password_hash must be a bcrypt hash ($2a$/$2b$/$2y$, 60 characters)")


def _rowcount(result: object) -> int:
    count: int = getattr(result, "rowcount", 0)
    return count


@overload
def _utc(value: datetime) -> datetime: ...
@overload
def _utc(value: None) -> None: ...
def _utc(value: datetime | None) -> datetime | None:
    # Records always carry UTC, also for values just written in another zone and not yet read back.
    return None if value is None else value.astimezone(UTC)


def _principal_record(principal: PrincipalRow) -> PrincipalRecord:
    return PrincipalRecord(
        id=principal.id,
        name=principal.name,
        kind=cast(PrincipalKind, principal.kind),
        roles=tuple(sorted(granted.role for granted in principal.roles)),
        enabled=principal.enabled,
        created_at=_utc(principal.created_at),
        last_used_at=_utc(principal.last_used_at),
        password_hash=principal.password_hash,
        source=principal.source or "local",
        issuer=principal.issuer,
        subject=principal.subject,
    )


def _token_record(token: ApiToken) -> TokenRecord:
    return TokenRecord(
        id=token.id,
        principal=_principal_record(token.principal),
        prefix=token.prefix,
        label=token.label,
        roles=None if token.roles is None else tuple(token.roles),
        created_at=_utc(token.created_at),
        expires_at=_utc(token.expires_at),
        revoked_at=_utc(token.revoked_at),
        last_used_at=_utc(token.last_used_at),
        token_hash=token.token_hash,
    )
