"""Who is calling, and may they: API tokens, Basic credentials, roles.

Decisions written here:
- Bearer tokens are checked by format and checksum first (no database work for a typo or junk),
  then by their HMAC digest. Verified tokens are cached, and so are unknown digests for a minute;
  every request compares the store's `auth_version`, which grows with any disable, role change,
  password change or revocation, so such a change made by any process applies at the next request.
- A stranger's failures never lock out a valid credential. Failed logins are counted in the
  shared counter storage (`rate_limits.storage`, under `rate_limits.key_prefix`, through
  `zguard.services.failed_logins`), so every replica sees the same counts, and every limit is
  checked *before* bcrypt runs, so a flood of wrong passwords costs no CPU. For Basic, three
  counters, each against an online guesser of another shape:
  - per username *at one address* (`failed_logins_per_user_address`, tight, 5/minute;20/hour):
    one guesser at one address gets a handful of tries, and only that pair is refused; the same
    user from any other address is not;
  - per address (`failed_logins_per_address`, moderate, 20/minute;200/hour): one address
    spraying many usernames;
  - per username from all addresses (`failed_logins_per_user`, loose, 100/hour): guessing from
    many addresses. Once it is spent the username is refused only from addresses that failed a
    login (any username) within the per-address counter's longest period; a clean address may
    still try, and its first failure closes it. So nobody can lock a user's correct password out
    of an address that has not failed, and a distributed guesser gets the budget plus one try per
    fresh address per period, not an unlimited number.
  A success clears no counter: failures age out of their windows, so a guesser who shares an
  address with the user gains no fresh tries from the user's own logins.
- Tokens cannot be guessed (≈167 secret bits), so their counter protects the database, not the
  tokens, and never refuses a valid one. Unknown, revoked, expired or disabled tokens are
  counted per address (`failed_logins_per_address`'s rates, a counter apart from Basic's, so a
  token flood does not lock out passwords). A cached verified token passes without asking the
  counter; an address over the limit still has an uncached token looked up when its digest is
  among the store's active token digests (read at most every `ACTIVE_DIGESTS_TTL_S`, only while
  some address is over), and any other token from it is refused (429) without a lookup. The
  one gap: a token created since that read, first presented from an address over its limit, is
  refused until the next read (at most `ACTIVE_DIGESTS_TTL_S`).
- Counter storage down: Basic FAILS CLOSED with 503 `rate_limiter_unavailable` and
  `Retry-After`, logged and audited as `rate_limit.unavailable` like request rates, because
  unenforced lockouts hand a guesser an unlimited budget; a Basic success still cached
  (`api_auth.basic_cache_s`) passes, as no password is tried. Bearer FAILS OPEN: the token is
  checked as if under its limit and the failure logged, because the counter only saves database
  lookups and refusing valid tokens while Redis is down would cost availability for no security.
- An unknown or disabled username is verified against a dummy hash costing as much as the
  dearest hash that can be checked: at least `DEFAULT_COST` (what `hash_password` makes), the
  settings users', and the store's highest (`max_password_cost`, read again whenever
  `auth_version` changes); a stored hash found dearer at verification raises it at once. So
  timing does not reveal which names exist. A success is cached under an HMAC of the credential
  for `api_auth.basic_cache_s`, and the cache is dropped on any `auth_version` change.
- Every refusal has the same message whether the name, the token or the password was wrong.
- No password, token or digest is logged or put in an audit event; a token's non-secret display
  prefix is.
- A bearer credential that is not a `zg_` key and is shaped like a compact JWS is, when
  `identity.jwt.enabled`, verified by `zguard.services.jwt_bearer` (keys only from the IdP's
  JWKS; the checks and reasons are listed there): a service identity `jwt:<client>`, method
  `jwt`, with the roles `identity.jwt.role_map` grants, remembered by the verifier until the
  token's `exp` and never beyond. A refused JWT is counted per address like an unknown token
  and answered 401 `invalid_api_key` (429 once the address is over its limit); a valid one is
  never refused by the counter. No key cached and the IdP unreachable: 503
  `identity_provider_unavailable`, audited (fail closed).
- A password for a name no local password user holds (settings file first, then the store) is,
  when `identity.ldap.enabled`, checked by `zguard.services.ldap_auth` (service-account search,
  then a bind as the entry; empty passwords refused before any bind), under the same failed-login
  limits, counted alike, and refused with the same message (`INVALID`); the principal is synced
  (`source: ldap`) with the roles its groups map to. A separation-of-duties conflict, which comes
  after a right password, names the groups. No directory server usable: 503
  `identity_provider_unavailable`, audited; local users are unaffected.
- When `api_auth.enabled` is false (allowed on loopback only) every request is the local
  anonymous identity with the roles in `ANONYMOUS_ROLES`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeVar

from zguard.audit import AuditEvent, AuditSink, RequestRecord, report
from zguard.config import ApiAuthSettings, ConfigUser
from zguard.errors import (
    IdentityProviderUnavailable,
    InvalidApiKey,
    MissingCredentials,
    PermissionDenied,
    RateLimiterUnavailable,
    TooManyFailedLogins,
)
from zguard.security.keys import derive_key
from zguard.security.passwords import DEFAULT_COST, cost_of, dummy_hash, verify_password
from zguard.security.rbac import Permission, RoleRegistry, authorize
from zguard.security.tokens import display_prefix, looks_like_token, token_digest
from zguard.services.counters import CounterStorage
from zguard.services.failed_logins import LoginFailures
from zguard.services.jwt_bearer import JwtVerifier, TokenRefused, looks_like_jws
from zguard.services.ldap_auth import DirectoryRefused, DirectoryUser, LdapDirectory
from zguard.store.errors import PrincipalExists, PrincipalNotFound
from zguard.store.principals import PrincipalRecord, PrincipalStore, TokenRecord

log = logging.getLogger("zguard.auth")

ANONYMOUS_ROLES = frozenset({"generator", "viewer"})
INVALID = "the API key or credentials are not valid (unknown, revoked, expired or disabled)"
TOUCH_EVERY_S = 60.0  # last-used times are recorded at most this often per token
NEGATIVE_TTL_S = 60.0
CACHE_MAX = 10_000
BCRYPT_SLOTS = 2  # concurrent bcrypt verifications; the rest wait (and count against the limits)
ACTIVE_DIGESTS_TTL_S = 60.0  # the store's active token digests are read again at most this often
GROUPS_DETAIL = "directory groups: "  # InvalidApiKey.detail of a right password whose groups are refused
FAILED_LOGINS = "too many failed logins for this user or from this address; retry later"

Method = Literal["bearer", "basic", "none", "session", "jwt"]
V = TypeVar("V")


@dataclass(frozen=True)
class Identity:
    """An authenticated caller. `principal_id` is None for configured users and the anonymous one."""

    name: str
    kind: Literal["user", "service", "anonymous"]
    roles: frozenset[str]
    method: Method
    principal_id: int | None = None
    token_id: int | None = None
    token_prefix: str | None = None
    session_id: int | None = None  # a console session's (zguard.services.sessions)
    session_hash: str | None = field(default=None, repr=False)  # SHA-256 of its cookie: what its CSRF token is bound to


@dataclass(frozen=True)
class RequestInfo:
    """Where a request came from, for limits and audit events."""

    client: str
    request_id: str | None = None
    listener: str | None = None
    record: RequestRecord | None = None  # the request's audit record that decisions are folded into


def _remember(cache: OrderedDict[str, V], key: str, value: V) -> None:
    """Insert into a bounded LRU cache."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > CACHE_MAX:
        cache.popitem(last=False)


def _cost(password_hash: str) -> int:
    """The bcrypt cost of `password_hash`; 0 for anything else (it is checked against nothing dearer)."""
    try:
        return cost_of(password_hash)
    except ValueError:
        return 0


def _in_background(work: Callable[[], None], what: str) -> None:
    """Run bookkeeping I/O off the event loop; a failure is logged, never the request's."""

    def guarded() -> None:
        try:
            work()
        except Exception:  # bookkeeping must not fail the request
            log.warning("could not record %s", what, exc_info=True)

    try:
        asyncio.get_running_loop().run_in_executor(None, guarded)
    except RuntimeError:  # no running loop: a synchronous caller
        guarded()


@dataclass
class _CachedToken:
    record: TokenRecord
    identity: Identity


class AuthService:
    """Authenticate an `Authorization` header and authorize a permission; see the module doc."""

    def __init__(
        self,
        settings: ApiAuthSettings,
        registry: RoleRegistry,
        *,
        store: PrincipalStore | None,
        token_key: bytes,
        audit: AuditSink,
        counters: CounterStorage,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        jwt: JwtVerifier | None = None,
        directory: LdapDirectory | None = None,
    ) -> None:
        """`counters` is where failed logins are counted (the request rates' storage in `serve`);
        `clock` (monotonic) times the caches, `now` (aware UTC) token expiry; `jwt` verifies the
        IdP's bearer JWTs (None: `identity.jwt` is off and a JWT is a malformed key)."""
        self._settings = settings
        self._registry = registry
        self._store = store
        self._key = token_key
        self._audit = audit
        self._clock = clock
        self._now = now
        self._config_users: Mapping[str, ConfigUser] = {u.username: u for u in settings.users}
        self._failures = LoginFailures.build(settings, counters)
        self._tokens: OrderedDict[str, _CachedToken] = OrderedDict()
        self._unknown_tokens: OrderedDict[str, float] = OrderedDict()
        self._active_digests: frozenset[str] | None = None
        self._active_digests_at = float("-inf")
        self._basic: OrderedDict[str, tuple[Identity, float]] = OrderedDict()
        self._version: int | None = None
        self._touched: dict[int, float] = {}
        self._dummy_floor = max([DEFAULT_COST, *(_cost(u.password.get_secret_value()) for u in settings.users)])
        self._dummy_cost = self._dummy_floor
        self._dummy_stale = store is not None  # the store's highest cost is still to be read
        self._dummy: str | None = None
        self._bcrypt = asyncio.Semaphore(BCRYPT_SLOTS)
        self._jwt = jwt
        self._directory = directory  # identity.ldap: names no local password user holds (needs `store`)

    @property
    def audit(self) -> AuditSink:
        return self._audit

    @property
    def store(self) -> PrincipalStore | None:
        return self._store

    @property
    def token_key(self) -> bytes:
        """The server key tokens are hashed under (for `AdminService`, which issues them)."""
        return self._key

    def derived_key(self, purpose: bytes) -> bytes:
        """A key for `purpose` derived from the server key tokens are hashed under (one secret to keep)."""
        return derive_key(self._key, purpose)

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    @property
    def registry(self) -> RoleRegistry:
        return self._registry

    # --- authentication -------------------------------------------------------------------

    async def authenticate(self, authorization: str | None, info: RequestInfo) -> Identity:
        """The caller's identity; raise MissingCredentials, InvalidApiKey or TooManyFailedLogins."""
        if not self._settings.enabled:
            return Identity(name="local", kind="anonymous", roles=ANONYMOUS_ROLES, method="none")
        scheme, _, credential = (authorization or "").strip().partition(" ")
        scheme = scheme.lower()
        credential = credential.strip()
        if not scheme or not credential:
            self._deny("missing_credentials", info, method=None)
            raise MissingCredentials(
                "send credentials: 'Authorization: Bearer <zguard API key>'"
                + (" or HTTP Basic with a username and password" if self._settings.basic_enabled else "")
            )
        if scheme == "bearer":
            return await self._bearer(credential, info)
        if scheme == "basic" and self._settings.basic_enabled:
            self._refresh_caches()
            return await self._basic_auth(credential, info)
        self._deny("invalid_api_key", info, method=scheme[:16])
        accepted = "Bearer or Basic" if self._settings.basic_enabled else "Bearer"
        raise InvalidApiKey(f"unsupported authorization scheme; use {accepted}")

    def authorize(self, identity: Identity, permission: Permission, info: RequestInfo) -> None:
        """Raise PermissionDenied unless one of the identity's roles grants `permission`."""
        decision = authorize(identity.roles, permission, self._registry)
        event = AuditEvent(
            type="access.allowed" if decision else "access.denied",
            outcome="allowed" if decision else "denied",
            code=None if decision else "permission_denied",
            request_id=info.request_id,
            listener=info.listener,
            client=info.client,
            principal=identity.name,
            roles=tuple(sorted(identity.roles)),
            auth_method=identity.method,
            detail={"permission": str(permission), "reason": decision.reason, "token": identity.token_prefix},
        )
        report(self._audit, info.record, event)
        if not decision:
            raise PermissionDenied(
                f"this request needs the permission {permission}, which none of your roles grants; "
                "ask an administrator for a role that has it",
                permission=str(permission),
                detail=decision.reason,
            )

    # --- bearer ---------------------------------------------------------------------------

    async def _bearer(self, token: str, info: RequestInfo) -> Identity:
        if self._jwt is not None and looks_like_jws(token):
            return await self._jwt_bearer(self._jwt, token, info)
        if not looks_like_token(token):
            self._deny("invalid_api_key", info, method="bearer", reason="malformed")
            raise InvalidApiKey(
                "the API key is malformed: zguard keys start with zg_ and end in a checksum; check it was copied whole"
            )
        prefix = display_prefix(token)
        digest = token_digest(token, self._key)
        if digest not in self._tokens:
            if self._recently_unknown(digest):  # costs no database work, so nothing to count
                self._deny("invalid_api_key", info, method="bearer", token=prefix, reason="unknown")
                raise InvalidApiKey(INVALID)
            retry = await self._failures.token_retry_after(info.client)
            if retry is not None and not self._maybe_active(digest):
                self._deny("too_many_failed_logins", info, method="bearer", token=prefix)
                raise TooManyFailedLogins("too many failed attempts from this address; retry later", retry_after=retry)
        self._refresh_caches()  # the first database work, only for a well-formed token
        cached = self._tokens.get(digest)
        if cached is None:
            record = self._store.get_token_by_hash(digest) if self._store is not None else None
            if record is None:
                self._remember_unknown(digest)
            else:
                cached = _CachedToken(record, self._token_identity(record))
                _remember(self._tokens, digest, cached)
        problem = "unknown" if cached is None else self._token_problem(cached.record)
        if cached is None or problem:
            await self._failures.record_token(info.client)
            self._deny("invalid_api_key", info, method="bearer", token=prefix, reason=problem)
            raise InvalidApiKey(INVALID)
        self._touch(cached.record)
        return cached.identity

    async def _jwt_bearer(self, verifier: JwtVerifier, token: str, info: RequestInfo) -> Identity:
        try:
            verified = await verifier.verify(token)
        except TokenRefused as refusal:
            retry = await self._failures.token_retry_after(info.client)
            await self._failures.record_token(info.client)
            extra = {"jwt": refusal.detail}
            if retry is not None:
                self._deny("too_many_failed_logins", info, method="jwt", reason=refusal.reason, extra=extra)
                raise TooManyFailedLogins(
                    "too many failed attempts from this address; retry later", retry_after=retry
                ) from None
            self._deny("invalid_api_key", info, method="jwt", reason=refusal.reason, extra=extra)
            raise InvalidApiKey(refusal.message) from None
        except IdentityProviderUnavailable as error:
            log.error(
                "refusing an IdP bearer token: no signing key cached and the IdP cannot be asked (%s)", error.detail
            )
            self._deny(error.code, info, method="jwt", reason="idp_unavailable", extra={"jwt": error.detail})
            raise
        return Identity(
            name=f"jwt:{verified.principal}",
            kind="service",
            roles=verified.roles,
            method="jwt",
            token_prefix=f"jti:{verified.jti[:64]}" if verified.jti else None,
        )

    def _maybe_active(self, digest: str) -> bool:
        """Whether `digest` is among the store's active token digests (read again, at most every
        `ACTIVE_DIGESTS_TTL_S`, when it is not)."""
        if self._store is None:
            return False
        now = self._clock()
        stale = now - self._active_digests_at >= ACTIVE_DIGESTS_TTL_S
        if self._active_digests is None or (digest not in self._active_digests and stale):
            self._active_digests = self._store.active_token_digests()
            self._active_digests_at = now
        return digest in self._active_digests

    def _token_identity(self, record: TokenRecord) -> Identity:
        principal = record.principal
        roles = frozenset(principal.roles)
        if record.roles is not None:  # a token may narrow its principal's roles, never widen them
            roles &= frozenset(record.roles)
        return Identity(
            name=principal.name,
            kind=principal.kind,
            roles=roles,
            method="bearer",
            principal_id=principal.id,
            token_id=record.id,
            token_prefix=record.prefix,
        )

    def _token_problem(self, record: TokenRecord) -> str | None:
        if record.revoked_at is not None:
            return "revoked"
        if record.expires_at is not None and record.expires_at <= self._now():
            return "expired"
        if not record.principal.enabled:
            return "principal disabled"
        return None

    def _recently_unknown(self, digest: str) -> bool:
        seen = self._unknown_tokens.get(digest)
        return seen is not None and self._clock() - seen < NEGATIVE_TTL_S

    def _remember_unknown(self, digest: str) -> None:
        _remember(self._unknown_tokens, digest, self._clock())

    def _touch(self, record: TokenRecord) -> None:
        """Record last use at most every TOUCH_EVERY_S per token, off the request's path."""
        now = self._clock()
        if self._store is None or now - self._touched.get(record.id, -TOUCH_EVERY_S) < TOUCH_EVERY_S:
            return
        self._touched[record.id] = now
        store = self._store
        _in_background(lambda: store.touch_token(record.id), f"the last use of token {record.prefix}")

    # --- basic ----------------------------------------------------------------------------

    async def _basic_auth(self, credential: str, info: RequestInfo) -> Identity:
        try:
            decoded = base64.b64decode(credential, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            self._deny("invalid_api_key", info, method="basic", reason="malformed")
            raise InvalidApiKey("malformed Basic credentials: send base64 of username:password") from None
        username, sep, password = decoded.partition(":")
        if not sep or not username:
            self._deny("invalid_api_key", info, method="basic", reason="malformed")
            raise InvalidApiKey("malformed Basic credentials: send base64 of username:password")
        cache_key = hmac.new(self._key, b"basic\0" + decoded.encode("utf-8"), hashlib.sha256).hexdigest()
        cached = self._basic.get(cache_key)
        if cached is not None and self._clock() < cached[1]:
            return cached[0]
        identity = await self.check_password(username, password, info, method="basic")
        if self._settings.basic_cache_s > 0:
            _remember(self._basic, cache_key, (identity, self._clock() + self._settings.basic_cache_s))
        return identity

    async def check_password(self, username: str, password: str, info: RequestInfo, *, method: str) -> Identity:
        """A user's password under the failed-login limits and at constant cost, whatever the name
        (Basic, and the console's login form, `method` "console"): the identity, or InvalidApiKey /
        TooManyFailedLogins / RateLimiterUnavailable, each audited. Never cached here."""
        self._refresh_caches()
        user = username.casefold()
        await self._refuse_over_limits(user, username, info, method)
        identity, password_hash = self._basic_candidate(username)
        if identity is None and self._directory is not None and username not in self._config_users:
            return await self._directory_login(self._directory, user, username, password, info, method=method)
        waited = self._bcrypt.locked()
        async with self._bcrypt:
            if waited:  # the attempts this one queued behind may have used up a limit meanwhile
                await self._refuse_over_limits(user, username, info, method)
            password_hash = await self._hash_to_check(password_hash)
            matched = await asyncio.to_thread(verify_password, password, password_hash)
            failed = identity is None or not matched
            if failed:  # counted before the slot is freed, so the next attempt in line sees it
                await self._count_basic_failure(user, username, info, method)
        if identity is None or failed:
            reason = "unknown or disabled user" if identity is None else "wrong password"
            self._deny("invalid_api_key", info, method=method, principal=username, reason=reason)
            raise InvalidApiKey(INVALID)
        if identity.principal_id is not None and self._store is not None:
            store, principal_id = self._store, identity.principal_id
            _in_background(lambda: store.touch_principal(principal_id), f"the last login of {identity.name}")
        return identity

    async def _directory_login(
        self, directory: LdapDirectory, user: str, username: str, password: str, info: RequestInfo, *, method: str
    ) -> Identity:
        """`username`'s password checked by the directory (zguard.services.ldap_auth), the principal
        synced: any refusal is the local one (counted alike), but a separation-of-duties conflict,
        which comes after a right password, names the groups; no directory: 503, audited."""
        try:
            found = await directory.login(username, password)
            record = await asyncio.to_thread(self._sync_directory_user, directory, found)
        except DirectoryRefused as refusal:
            if refusal.reason != "sod_conflict":
                await self._count_basic_failure(user, username, info, method)
            groups = ", ".join(refusal.groups) or None
            extra = {"source": "ldap", "ldap": refusal.detail, "groups": groups}
            self._deny("invalid_api_key", info, method=method, principal=username, reason=refusal.reason, extra=extra)
            if refusal.reason == "sod_conflict":
                raise InvalidApiKey(
                    f"your directory groups {groups} grant roles one person may not hold together "
                    "(separation of duties); ask the directory's administrators to remove one",
                    detail=f"{GROUPS_DETAIL}{groups}",
                ) from None
            raise InvalidApiKey(INVALID) from None
        except IdentityProviderUnavailable as error:
            extra = {"source": "ldap", "ldap": error.detail}
            self._deny(error.code, info, method=method, principal=username, reason="idp_unavailable", extra=extra)
            raise
        self._refresh_caches()  # a first sign-in or a role change moved auth_version: not a reason to bind again
        report(
            self._audit,
            info.record,
            AuditEvent(
                type="auth.directory_login",
                outcome="allowed",
                request_id=info.request_id,
                listener=info.listener,
                client=info.client,
                principal=record.name,
                roles=tuple(sorted(record.roles)),
                auth_method=method,
                detail={"source": "ldap", "dn": found.dn[:1024], "groups": len(found.groups), "nested": found.nested},
            ),
        )
        return Identity(
            name=record.name, kind="user", roles=frozenset(record.roles), method="basic", principal_id=record.id
        )

    def _sync_directory_user(self, directory: LdapDirectory, found: DirectoryUser) -> PrincipalRecord:
        """The principal `found` signs in as, its roles made the directory's (DirectoryRefused if none may be)."""
        if self._store is None:
            raise DirectoryRefused("not_provisioned", "no state database")
        try:
            record = self._store.sync_external(
                "ldap",
                directory.issuer,
                found.subject,
                found.name,
                found.roles,
                create=not directory.require_provisioned,
            )
        except PrincipalExists:
            raise DirectoryRefused("name_taken", f"another principal is named {found.name}") from None
        except PrincipalNotFound:
            raise DirectoryRefused("not_provisioned", "identity.ldap.require_provisioned: not provisioned") from None
        if not record.enabled or record.kind != "user":
            raise DirectoryRefused("disabled", f"principal {record.name} is disabled")
        return record

    async def count_failed_login(self, username: str, info: RequestInfo, *, method: str, reason: str) -> None:
        """Count a failure that came after the password (a wrong second factor) like a wrong password."""
        await self._count_basic_failure(username.casefold(), username, info, method)
        self._deny("second_factor_required", info, method=method, principal=username, reason=reason)

    async def unlock(self, username: str, client: str | None = None) -> None:
        """Clear `username`'s failed logins (from every address; at `client` too when given), so a
        user an attacker locked out can sign in again now. RateLimiterUnavailable when the counters
        cannot be reached. The caller audits it (an admin action)."""
        await self._failures.clear_user(username.casefold(), client)

    def password_user(self, username: str) -> tuple[Identity, str] | None:
        """The user `username` names (settings file first, then the store) and their bcrypt hash,
        as a password login would find them now; None when there is none, it is disabled or a
        service account. What a console session re-checks itself against."""
        identity, password_hash = self._basic_candidate(username)
        return None if identity is None or password_hash is None else (identity, password_hash)

    def close(self) -> None:
        """Close what this service holds open: the directory's pooled connections (identity.ldap)."""
        if self._directory is not None:
            self._directory.close()

    def session_user(self, username: str) -> tuple[Identity, str] | None:
        """The user a console session of `username` stands for now, and what the session was granted
        on besides name, id and roles: the bcrypt hash of a password user, the source and key of a
        principal the IdP vouches for (OIDC, LDAP, SCIM). None when there is none, it is disabled
        or a service account."""
        found = self.password_user(username)
        if found is not None or self._store is None or username in self._config_users:
            return found
        record = self._store.get_principal(username)
        if record is None or record.kind != "user" or not record.enabled or record.source == "local":
            return None
        identity = Identity(
            name=record.name, kind="user", roles=frozenset(record.roles), method="session", principal_id=record.id
        )
        return identity, f"{record.source}\0{record.issuer}\0{record.subject}"

    async def _refuse_over_limits(self, user: str, username: str, info: RequestInfo, method: str) -> None:
        """Raise TooManyFailedLogins when a limit refuses this (user, address); see the module doc."""
        try:
            retry = await self._failures.basic_retry_after(user, info.client)
        except RateLimiterUnavailable as error:
            raise self._counters_unavailable(error, username, info, method) from None
        if retry is not None:
            self._deny("too_many_failed_logins", info, method=method, principal=username)
            raise TooManyFailedLogins(FAILED_LOGINS, retry_after=retry)

    async def _count_basic_failure(self, user: str, username: str, info: RequestInfo, method: str) -> None:
        try:
            await self._failures.record_basic(user, info.client)
        except RateLimiterUnavailable as error:
            raise self._counters_unavailable(error, username, info, method) from None

    def _counters_unavailable(
        self, error: RateLimiterUnavailable, username: str, info: RequestInfo, method: str
    ) -> RateLimiterUnavailable:
        """Basic fails closed when failed logins cannot be counted: log and audit it, like request rates."""
        log.error(
            "failed-login counter unavailable; refusing password logins until it answers (fail closed): %s",
            error.detail,
        )
        report(
            self._audit,
            info.record,
            AuditEvent(
                type="rate_limit.unavailable",
                outcome="failed",
                code=error.code,
                request_id=info.request_id,
                listener=info.listener,
                client=info.client,
                principal=username,
                auth_method=method,
                detail={"error": error.detail, "counter": "failed_logins"},
            ),
        )
        return error

    def _basic_candidate(self, username: str) -> tuple[Identity | None, str | None]:
        """The identity and hash to check for `username`; (None, None) when there is none."""
        user = self._config_users.get(username)
        if user is not None:
            identity = Identity(name=username, kind="user", roles=frozenset(user.roles), method="basic")
            return identity, user.password.get_secret_value()
        record: PrincipalRecord | None = self._store.get_principal(username) if self._store is not None else None
        if record is None or record.kind != "user" or not record.enabled or record.password_hash is None:
            return None, None
        identity = Identity(
            name=record.name, kind="user", roles=frozenset(record.roles), method="basic", principal_id=record.id
        )
        return identity, record.password_hash

    async def _hash_to_check(self, password_hash: str | None) -> str:
        """`password_hash`, or for no candidate the dummy at the dearest cost that can be checked."""
        if password_hash is not None:
            # A stored hash dearer than the dummy (one made after the last read): the next dummy matches it.
            self._dummy_cost = max(self._dummy_cost, _cost(password_hash))
            return password_hash
        if self._dummy_stale and self._store is not None:
            self._dummy_cost = max(self._dummy_floor, self._store.max_password_cost() or 0)
            self._dummy_stale = False
        if self._dummy is None or _cost(self._dummy) != self._dummy_cost:
            self._dummy = await asyncio.to_thread(dummy_hash, self._dummy_cost)
        return self._dummy

    # --- caches and events ----------------------------------------------------------------

    def _refresh_caches(self) -> None:
        """Drop every cached result when the store says something changed since they were made."""
        if self._store is None:
            return
        version = self._store.auth_version()
        if version != self._version:
            self._tokens.clear()
            self._basic.clear()
            self._dummy_stale = True  # a password may have changed, and with it the dearest cost
            self._version = version

    def _deny(
        self,
        code: str,
        info: RequestInfo,
        *,
        method: str | None,
        principal: str | None = None,
        token: str | None = None,
        reason: str | None = None,
        extra: Mapping[str, str | None] | None = None,
    ) -> None:
        report(
            self._audit,
            info.record,
            AuditEvent(
                type="auth.denied",
                outcome="denied",
                code=code,
                request_id=info.request_id,
                listener=info.listener,
                client=info.client,
                principal=principal,
                auth_method=method,
                detail={"token": token, "reason": reason, **(extra or {})},
            ),
        )
