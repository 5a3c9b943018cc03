"""Who is calling, and may they: API tokens, Basic credentials, roles.

Decisions written here:
- Bearer tokens are checked by format and checksum first (no database work for a typo or junk),
  then by their HMAC digest. Verified tokens are cached, and so are unknown digests for a minute;
  every request compares the store's `auth_version`, which grows with any disable, role change,
  password change or revocation, so such a change made by any process applies at the next request.
- Basic credentials: failed logins are counted per username and per client address, and a
  request over either limit is refused *before* bcrypt runs, so a flood of wrong passwords costs
  no CPU. An unknown username is verified against a dummy hash of the same cost, so timing does
  not reveal which names exist. A success is cached under an HMAC of the credential for
  `api_auth.basic_cache_s`, and the cache is dropped on any `auth_version` change.
- Every refusal has the same message whether the name, the token or the password was wrong.
- No password, token or digest is logged or put in an audit event; a token's non-secret display
  prefix is.
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
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

from zguard.audit import AuditEvent, AuditSink, RequestRecord, report
from zguard.config import ApiAuthSettings, ConfigUser
from zguard.errors import InvalidApiKey, MissingCredentials, PermissionDenied, TooManyFailedLogins
from zguard.security.passwords import DEFAULT_COST, cost_of, dummy_hash, verify_password
from zguard.security.rates import Rate, parse_rates
from zguard.security.rbac import Permission, RoleRegistry, authorize
from zguard.security.tokens import display_prefix, looks_like_token, token_digest
from zguard.store.principals import PrincipalRecord, PrincipalStore, TokenRecord

log = logging.getLogger("zguard.auth")

ANONYMOUS_ROLES = frozenset({"generator", "viewer"})
INVALID = "the API key or credentials are not valid (unknown, revoked, expired or disabled)"
TOUCH_EVERY_S = 60.0  # last-used times are recorded at most this often per token
NEGATIVE_TTL_S = 60.0
CACHE_MAX = 10_000
BCRYPT_SLOTS = 2  # concurrent bcrypt verifications; the rest wait (and count against the limits)

Method = Literal["bearer", "basic", "none"]
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


class FailureLimiter:
    """Counts failures per key in sliding windows (several rates at once); in-process memory.

    Bounded: at most `max_keys` keys are remembered, the least recently failed forgotten first.
    """

    def __init__(self, rates: tuple[Rate, ...], clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self._rates = rates
        self._clock = clock
        self._horizon = max(rate.period_s for rate in rates)
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._max_keys = max_keys

    def retry_after(self, key: str) -> int | None:
        """Seconds until `key` may try again, or None when it may try now."""
        times = self._failures.get(key)
        if not times:
            return None
        now = self._clock()
        while times and times[0] <= now - self._horizon:
            times.popleft()
        wait = 0.0
        for rate in self._rates:
            recent = [t for t in times if t > now - rate.period_s]
            if len(recent) >= rate.limit:
                wait = max(wait, recent[-rate.limit] + rate.period_s - now)
        return max(1, int(wait) + 1) if wait > 0 else None

    def record(self, key: str) -> None:
        times = self._failures.pop(key, None) or deque()
        times.append(self._clock())
        self._failures[key] = times
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)


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
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._store = store
        self._key = token_key
        self._audit = audit
        self._clock = clock
        self._now = now
        self._config_users: Mapping[str, ConfigUser] = {u.username: u for u in settings.users}
        self._user_failures = FailureLimiter(parse_rates(settings.failed_logins_per_user), clock)
        self._address_failures = FailureLimiter(parse_rates(settings.failed_logins_per_address), clock)
        self._tokens: OrderedDict[str, _CachedToken] = OrderedDict()
        self._unknown_tokens: OrderedDict[str, float] = OrderedDict()
        self._basic: OrderedDict[str, tuple[Identity, float]] = OrderedDict()
        self._version: int | None = None
        self._touched: dict[int, float] = {}
        self._dummy_cost = max((cost_of(u.password.get_secret_value()) for u in settings.users), default=DEFAULT_COST)
        self._dummy: str | None = None
        self._bcrypt = asyncio.Semaphore(BCRYPT_SLOTS)

    @property
    def audit(self) -> AuditSink:
        return self._audit

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
            return self._bearer(credential, info)
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

    def _bearer(self, token: str, info: RequestInfo) -> Identity:
        if not looks_like_token(token):
            self._deny("invalid_api_key", info, method="bearer", reason="malformed")
            raise InvalidApiKey(
                "the API key is malformed: zguard keys start with zg_ and end in a checksum; check it was copied whole"
            )
        prefix = display_prefix(token)
        if (retry := self._address_failures.retry_after(info.client)) is not None:
            self._deny("too_many_failed_logins", info, method="bearer", token=prefix)
            raise TooManyFailedLogins("too many failed attempts from this address; retry later", retry_after=retry)
        self._refresh_caches()  # the first database work, only for a well-formed token
        digest = token_digest(token, self._key)
        cached = self._tokens.get(digest)
        if cached is None and not self._recently_unknown(digest):
            record = self._store.get_token_by_hash(digest) if self._store is not None else None
            if record is None:
                self._remember_unknown(digest)
            else:
                cached = _CachedToken(record, self._token_identity(record))
                _remember(self._tokens, digest, cached)
        problem = "unknown" if cached is None else self._token_problem(cached.record)
        if cached is None or problem:
            self._address_failures.record(info.client)
            self._deny("invalid_api_key", info, method="bearer", token=prefix, reason=problem)
            raise InvalidApiKey(INVALID)
        self._touch(cached.record)
        return cached.identity

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
        user_key = "user:" + username.casefold()
        self._refuse_over_limits(user_key, username, info)
        identity, password_hash = self._basic_candidate(username)
        async with self._bcrypt:
            # Again: the attempts this one queued behind may have used up the limit meanwhile.
            self._refuse_over_limits(user_key, username, info)
            if password_hash is None:
                password_hash = await self._dummy_hash()
            matched = await asyncio.to_thread(verify_password, password, password_hash)
        if identity is None or not matched:
            self._user_failures.record(user_key)
            self._address_failures.record(info.client)
            reason = "unknown or disabled user" if identity is None else "wrong password"
            self._deny("invalid_api_key", info, method="basic", principal=username, reason=reason)
            raise InvalidApiKey(INVALID)
        self._user_failures.clear(user_key)
        if self._settings.basic_cache_s > 0:
            _remember(self._basic, cache_key, (identity, self._clock() + self._settings.basic_cache_s))
        if identity.principal_id is not None and self._store is not None:
            store, principal_id = self._store, identity.principal_id
            _in_background(lambda: store.touch_principal(principal_id), f"the last login of {identity.name}")
        return identity

    def _refuse_over_limits(self, user_key: str, username: str, info: RequestInfo) -> None:
        for limiter, key in ((self._user_failures, user_key), (self._address_failures, info.client)):
            if (retry := limiter.retry_after(key)) is not None:
                self._deny("too_many_failed_logins", info, method="basic", principal=username)
                raise TooManyFailedLogins(
                    "too many failed logins for this user or from this address; retry later", retry_after=retry
                )

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

    async def _dummy_hash(self) -> str:
        if self._dummy is None:
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
                detail={"token": token, "reason": reason},
            ),
        )
