"""Console sessions: sign in with a password, a server-side session behind a cookie, sign out.

Decisions written here (ASVS 5.0 V7):
- The cookie value is 32 random bytes (256 bits, `secrets.token_urlsafe`); the state database
  keeps only its SHA-256, so revocation is a row update every process sees, and a database copy
  opens nothing. A login always creates a new session (no fixation: nothing the browser sent
  before is kept).
- A password login goes through `AuthService.check_password`: the same failed-login counters as
  Basic (per user and address, per address, per user), checked before bcrypt; the same dummy hash
  for unknown names; the same message for every failure. Service accounts have no password, so
  they cannot sign in.
- A session ends after `console.session_idle_s` without a request and `console.session_max_s`
  after login, whatever the activity; at logout; at "sign out everywhere"; when an admin revokes
  it; and as soon as the user is disabled or deleted, or their password or roles change: each
  session carries a fingerprint (SHA-256 of the principal's id, name, password hash and roles)
  compared whenever `auth_state.version` moves (any such change bumps it, in any process).
  A session that ended is revoked in the store with the reason, and the request is refused
  with 401 `session_expired`; each ending is an audit event (`console.session_ended`).
- Activity is written at most every `TOUCH_EVERY_S` (one small update, off the event loop), so
  the idle clock is that coarse; before ending a session as idle the store is read again, since
  another replica may have seen it since.
- The CSRF token of a session is HMAC-SHA-256(server key, "csrf" ‖ hash of the cookie): bound
  to the session, never stored, compared in constant time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from zguard.audit import AuditEvent, AuditSink, DetailValue, Outcome, report
from zguard.config.settings import ConsoleSettings
from zguard.errors import SecondFactorNotEnrolled, SecondFactorRequired, ServiceUnavailable, SessionExpired
from zguard.services.auth import AuthService, Identity, RequestInfo
from zguard.services.totp import TOTP_KEY_PURPOSE, SecondFactor
from zguard.store.principals import PrincipalStore, utc_now
from zguard.store.sessions import SessionRecord, SessionStore, TotpStore

log = logging.getLogger(__name__)

TOUCH_EVERY_S = 30.0  # how coarse the idle clock is: one store write per session per this many seconds
_CACHE_MAX = 4096
ENDED = "your console session has ended; sign in again"
CODE_NEEDED = "enter the one-time code of your authenticator app"
CODE_WRONG = "the one-time code is wrong or was used already"
NOT_ENROLLED = "your role needs a second factor and you have none; ask an operator to enrol one (zguard user totp)"


@dataclass(frozen=True)
class SignedIn:
    """A session just created: the cookie value (shown to the browser once), its record, who."""

    cookie: str
    record: SessionRecord
    identity: Identity


@dataclass(frozen=True)
class _Cached:
    record: SessionRecord
    identity: Identity
    version: int
    touched: datetime
    current: bool  # the principal is as the session was granted on (its fingerprint matches)


def token_hash(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8", "surrogatepass")).hexdigest()


def fingerprint(identity: Identity, password_hash: str) -> str:
    """What a session was granted on; any change to it ends the session."""
    parts = [str(identity.principal_id or ""), identity.name, password_hash, ",".join(sorted(identity.roles))]
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


class SessionService:
    def __init__(
        self,
        settings: ConsoleSettings,
        auth: AuthService,
        principals: PrincipalStore,
        key: bytes,
        *,
        audit: AuditSink,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._settings = settings
        self._auth = auth
        self._principals = principals
        self._store = SessionStore(principals.engine, clock)
        self._key = key
        self._factor = SecondFactor(
            TotpStore(principals.engine, clock),
            auth.derived_key(TOTP_KEY_PURPOSE),
            settings.totp_required_roles,
            clock=lambda: clock().timestamp(),
        )
        self._audit = audit
        self._clock = clock
        self._cache: OrderedDict[str, _Cached] = OrderedDict()

    @classmethod
    def for_auth(cls, settings: ConsoleSettings, auth: AuthService, audit: AuditSink) -> SessionService | None:
        """Sessions next to `auth`'s principals; None when there is no state database."""
        if auth.store is None:
            return None
        return cls(settings, auth, auth.store, auth.derived_key(b"console sessions"), audit=audit)

    @property
    def store(self) -> SessionStore:
        return self._store

    @property
    def factor(self) -> SecondFactor:
        return self._factor

    # --- sign in and out -------------------------------------------------------------------

    async def login(self, username: str, password: str, info: RequestInfo, code: str = "") -> SignedIn:
        """A new session for a right password, and a right one-time code where the user has a
        second factor (zguard.services.totp); each refusal raised as its error, and audited."""
        identity = await self._auth.check_password(username, password, info, method="console")
        if await self._factor.enrolled(identity.name):
            if not code:
                raise SecondFactorRequired(CODE_NEEDED)
            if not await self._factor.verify(identity.name, code.strip()):
                await self._auth.count_failed_login(identity.name, info, method="console", reason="wrong second factor")
                raise SecondFactorRequired(CODE_WRONG)
        elif self._factor.required_for(identity.roles):
            raise SecondFactorNotEnrolled(NOT_ENROLLED)
        return await self._create(identity.name, info, "console")

    async def login_verified(
        self, name: str, info: RequestInfo, *, method: str, detail: dict[str, DetailValue]
    ) -> SignedIn:
        """A new session for a principal the bank's IdP has just vouched for (an OIDC login, an LDAP
        bind), synced into the store by the caller; the IdP's own factors (its `acr`/`amr`) stand in
        for zguard's TOTP. `method` and `detail` go into the `console.login` event."""
        return await self._create(name, info, method, detail)

    async def _create(
        self, name: str, info: RequestInfo, method: str, detail: dict[str, DetailValue] | None = None
    ) -> SignedIn:
        found = self._auth.session_user(name)
        if found is None:  # disabled between the check and now
            raise SessionExpired(ENDED)
        current, password_hash = found
        cookie = secrets.token_urlsafe(32)
        record = await asyncio.to_thread(
            self._store.create,
            token_hash(cookie),
            principal=current.name,
            principal_id=current.principal_id,
            fingerprint=fingerprint(current, password_hash),
            client=info.client,
            lifetime=timedelta(seconds=self._settings.session_max_s),
        )
        session_identity = replace(current, method="session", session_id=record.id)
        extra: dict[str, DetailValue] = {} if method == "console" else {"via": method, **(detail or {})}
        self._event("console.login", "allowed", info, session_identity, {"session": record.id, **extra})
        return SignedIn(cookie=cookie, record=record, identity=session_identity)

    async def logout(self, identity: Identity, info: RequestInfo) -> None:
        if identity.session_id is None:
            return
        await asyncio.to_thread(self._store.revoke, identity.session_id, "logout")
        self._forget(identity.session_id)
        self._event("console.logout", "done", info, identity, {"session": identity.session_id})

    async def revoke_all(self, identity: Identity, info: RequestInfo, *, keep_current: bool = False) -> int:
        """Sign `identity` out everywhere (keeping this session if asked); how many sessions ended."""
        keep = identity.session_id if keep_current else None
        count = await asyncio.to_thread(self._store.revoke_all, identity.name, "signed_out_everywhere", keep=keep)
        self._cache.clear()
        self._event("console.sessions_revoked", "done", info, identity, {"sessions": count, "kept": keep})
        return count

    async def revoke(self, identity: Identity, session_id: int, info: RequestInfo) -> bool:
        """End one of `identity`'s own sessions; False when it is not theirs or already ended."""
        record = await asyncio.to_thread(self._store.get, session_id)
        if record is None or record.principal != identity.name:
            return False
        done = await asyncio.to_thread(self._store.revoke, session_id, "revoked")
        self._forget(session_id)
        if done:
            self._event("console.session_revoked", "done", info, identity, {"session": session_id})
        return done

    async def sessions_of(self, identity: Identity) -> list[SessionRecord]:
        return await asyncio.to_thread(self._store.list_for, identity.name)

    def csrf_token(self, identity: Identity) -> str:
        """The token every change from this session must carry (bound to it, never stored)."""
        if identity.session_hash is None:
            raise ValueError("only a console session has a CSRF token")
        return hmac.new(self._key, b"csrf\0" + identity.session_hash.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, identity: Identity, token: str | None) -> bool:
        if token is None or identity.session_hash is None:
            return False
        return hmac.compare_digest(self.csrf_token(identity).encode(), token.encode("utf-8", "replace"))

    # --- each request ----------------------------------------------------------------------

    async def authenticate(self, cookie: str, info: RequestInfo) -> Identity:
        """The identity behind a session cookie, or SessionExpired (audited with the reason)."""
        digest = token_hash(cookie)
        version = self._principals.auth_version()  # its own connection, ~5 µs: as AuthService reads it, no thread hop
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is None or cached.version != version:
            cached = await asyncio.to_thread(self._load, digest, version, now)
            if cached is None:
                self._deny(info, None, "unknown")
                raise SessionExpired(ENDED)
        record = cached.record
        reason = self._ended(record, now) if cached.current else "credentials_changed"
        if reason == "idle_timeout":  # another replica may have seen it since: ask the store
            fresh = await asyncio.to_thread(self._store.get, record.id)
            if fresh is not None:
                record = fresh
                reason = self._ended(record, now)
        if reason is not None:
            await self._end(record, reason, cached.identity, info)
            raise SessionExpired(ENDED)
        if (now - cached.touched).total_seconds() >= TOUCH_EVERY_S:
            await asyncio.to_thread(self._store.touch, record.id, now)
            record = replace(record, last_seen_at=now)
            cached = replace(cached, record=record, touched=now)
        self._cache[digest] = cached
        self._cache.move_to_end(digest)
        while len(self._cache) > _CACHE_MAX:
            self._cache.popitem(last=False)
        return cached.identity

    def _load(self, digest: str, version: int, now: datetime) -> _Cached | None:
        record = self._store.get_by_hash(digest)
        if record is None:
            return None
        identity = Identity(
            name=record.principal,
            kind="user",
            roles=frozenset(),
            method="session",
            principal_id=record.principal_id,
            session_id=record.id,
            session_hash=digest,
        )
        found = self._auth.session_user(record.principal)
        current = False
        if found is not None and found[0].principal_id == record.principal_id:
            user, password_hash = found
            if fingerprint(user, password_hash) == record.fingerprint:
                identity = replace(user, method="session", session_id=record.id, session_hash=digest)
                current = True
        return _Cached(record=record, identity=identity, version=version, touched=record.last_seen_at, current=current)

    def _ended(self, record: SessionRecord, now: datetime) -> str | None:
        if record.revoked_at is not None:
            return record.revoked_reason or "revoked"
        if now >= record.expires_at:
            return "max_age"
        if (now - record.last_seen_at).total_seconds() >= self._settings.session_idle_s:
            return "idle_timeout"
        return None

    async def _end(self, record: SessionRecord, reason: str, identity: Identity, info: RequestInfo) -> None:
        """Revoke a session found ended (a timeout, a changed user) and refuse the request: its
        audit event (`console.session_ended`, denied, with the reason) is the ending's record."""
        ending = record.revoked_at is None  # else it ended before (signed out, revoked): a plain refusal
        if ending:
            await asyncio.to_thread(self._store.revoke, record.id, reason)
        self._forget(record.id)
        self._deny(info, identity, reason, record.id if ending else None)

    def _forget(self, session_id: int) -> None:
        for digest in [d for d, c in self._cache.items() if c.record.id == session_id]:
            del self._cache[digest]

    # --- audit -----------------------------------------------------------------------------

    def _event(
        self, kind: str, outcome: Outcome, info: RequestInfo, identity: Identity, detail: dict[str, DetailValue]
    ) -> None:
        """A console action, folded into its request's one audit event (which it names)."""
        event = AuditEvent(
            type=kind,
            outcome=outcome,
            request_id=info.request_id,
            listener=info.listener,
            client=info.client,
            principal=identity.name,
            roles=tuple(sorted(identity.roles)),
            auth_method="session",
            detail=detail,
        )
        report(self._audit, info.record, event)
        if info.record is not None:
            info.record.type = kind

    def _deny(self, info: RequestInfo, identity: Identity | None, reason: str, session_id: int | None = None) -> None:
        event = AuditEvent(
            type="console.session_ended" if session_id is not None else "auth.denied",
            outcome="denied",
            code="session_expired",
            request_id=info.request_id,
            listener=info.listener,
            client=info.client,
            principal=identity.name if identity else None,
            auth_method="session",
            detail={"reason": reason, "session": session_id},
        )
        report(self._audit, info.record, event)
        if info.record is not None:
            info.record.type = event.type


class NoSessions:
    """Console sessions where there is no state database (tests, `zguard docs`): nobody can sign
    in (503); every other method finds nothing to do."""

    async def login(self, username: str, password: str, info: RequestInfo, code: str = "") -> SignedIn:
        raise ServiceUnavailable("console sign-in needs the state database", retry_after=60)

    async def login_verified(
        self, name: str, info: RequestInfo, *, method: str, detail: dict[str, DetailValue]
    ) -> SignedIn:
        raise ServiceUnavailable("console sign-in needs the state database", retry_after=60)

    async def logout(self, identity: Identity, info: RequestInfo) -> None:
        return None

    async def revoke_all(self, identity: Identity, info: RequestInfo, *, keep_current: bool = False) -> int:
        return 0

    async def revoke(self, identity: Identity, session_id: int, info: RequestInfo) -> bool:
        return False

    async def sessions_of(self, identity: Identity) -> list[SessionRecord]:
        return []

    def csrf_token(self, identity: Identity) -> str:
        raise ValueError("only a console session has a CSRF token")
