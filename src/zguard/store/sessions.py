"""The console session repository: server-side sessions, known by the hash of their cookie.

Only `token_hash` (SHA-256 of the cookie value) is stored, so a copy of the database opens no
session. Whether a session is still good (timeouts, the principal's state) is the caller's
decision (zguard.services.sessions); this stores, finds, touches and revokes. Every revocation
bumps `auth_state.version` in the same transaction, so each process drops its cached copy of the
session at its next request. Every method runs in its own transaction and returns frozen records.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import sessionmaker

from zguard.store.models import CLIENT_MAX, SESSION_REASON_MAX, ConsoleSession, TotpSecret
from zguard.store.principals import _bump_auth_version, _check_name, _rowcount, _utc, utc_now

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: int
    principal: str
    principal_id: int | None
    client: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None
    fingerprint: str = field(repr=False)
    token_hash: str = field(repr=False)


class SessionStore:
    """Console sessions in the state database. `clock` gives "now" (aware, UTC)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._clock = clock

    def create(
        self,
        token_hash: str,
        *,
        principal: str,
        principal_id: int | None,
        fingerprint: str,
        client: str,
        lifetime: timedelta,
    ) -> SessionRecord:
        if not _HEX64.match(token_hash) or not _HEX64.match(fingerprint):
            raise ValueError("token_hash and fingerprint must be 64 lowercase hex digits")
        _check_name(principal, "principal")
        now = self._clock()
        row = ConsoleSession(
            token_hash=token_hash,
            principal=principal,
            principal_id=principal_id,
            fingerprint=fingerprint,
            client=client[:CLIENT_MAX],
            created_at=now,
            last_seen_at=now,
            expires_at=now + lifetime,
        )
        with self._sessions.begin() as session:
            session.add(row)
            session.flush()
            return _record(row)

    def get_by_hash(self, token_hash: str) -> SessionRecord | None:
        with self._sessions() as session:
            row = session.scalars(select(ConsoleSession).where(ConsoleSession.token_hash == token_hash)).one_or_none()
            return None if row is None else _record(row)

    def get(self, session_id: int) -> SessionRecord | None:
        with self._sessions() as session:
            row = session.get(ConsoleSession, session_id)
            return None if row is None else _record(row)

    def list_for(self, principal: str, *, active_only: bool = True) -> list[SessionRecord]:
        """`principal`'s sessions, newest first; with `active_only`, those not revoked nor past expiry."""
        query = select(ConsoleSession).where(ConsoleSession.principal == principal)
        if active_only:
            query = query.where(ConsoleSession.revoked_at.is_(None), ConsoleSession.expires_at > self._clock())
        with self._sessions() as session:
            return [_record(row) for row in session.scalars(query.order_by(ConsoleSession.id.desc()))]

    def touch(self, session_id: int, at: datetime | None = None) -> None:
        """Record activity (the idle timeout counts from here); a revoked session stays revoked."""
        with self._sessions.begin() as session:
            session.execute(
                update(ConsoleSession)
                .where(ConsoleSession.id == session_id, ConsoleSession.revoked_at.is_(None))
                .values(last_seen_at=at or self._clock())
            )

    def revoke(self, session_id: int, reason: str) -> bool:
        """Revoke one session; False when it was already revoked (the first reason is kept) or absent."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(ConsoleSession)
                .where(ConsoleSession.id == session_id, ConsoleSession.revoked_at.is_(None))
                .values(revoked_at=self._clock(), revoked_reason=reason[:SESSION_REASON_MAX])
            )
            if not _rowcount(result):
                return False
            _bump_auth_version(session)
            return True

    def revoke_all(self, principal: str, reason: str, *, keep: int | None = None) -> int:
        """Revoke every open session of `principal` (but `keep`); how many were revoked."""
        query = update(ConsoleSession).where(ConsoleSession.principal == principal, ConsoleSession.revoked_at.is_(None))
        if keep is not None:
            query = query.where(ConsoleSession.id != keep)
        with self._sessions.begin() as session:
            count = _rowcount(
                session.execute(query.values(revoked_at=self._clock(), revoked_reason=reason[:SESSION_REASON_MAX]))
            )
            if count:
                _bump_auth_version(session)
            return count

    def purge(self, older_than: datetime) -> int:
        """Delete sessions that ended (revoked or expired) before `older_than`; how many."""
        ended = (ConsoleSession.expires_at < older_than) | (ConsoleSession.revoked_at < older_than)
        with self._sessions.begin() as session:
            return _rowcount(session.execute(delete(ConsoleSession).where(ended)))


def _record(row: ConsoleSession) -> SessionRecord:
    return SessionRecord(
        id=row.id,
        principal=row.principal,
        principal_id=row.principal_id,
        client=row.client,
        created_at=_utc(row.created_at),
        last_seen_at=_utc(row.last_seen_at),
        expires_at=_utc(row.expires_at),
        revoked_at=_utc(row.revoked_at),
        revoked_reason=row.revoked_reason,
        fingerprint=row.fingerprint,
        token_hash=row.token_hash,
    )


class TotpStore:
    """Users' sealed TOTP secrets and the last step each accepted."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utc_now) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._clock = clock

    def get(self, principal: str) -> tuple[str, int] | None:
        """(sealed secret, last accepted step) of `principal`, or None when not enrolled."""
        with self._sessions() as session:
            row = session.get(TotpSecret, principal)
            return None if row is None else (row.sealed, row.last_step)

    def put(self, principal: str, sealed: str, step: int) -> None:
        """Enrol (or re-enrol) `principal`; `step` is the one the confirming code used."""
        _check_name(principal, "principal")
        with self._sessions.begin() as session:
            row = session.get(TotpSecret, principal)
            if row is None:
                session.add(TotpSecret(principal=principal, sealed=sealed, created_at=self._clock(), last_step=step))
            else:
                row.sealed, row.last_step, row.created_at = sealed, step, self._clock()
            _bump_auth_version(session)

    def accept_step(self, principal: str, step: int) -> bool:
        """Record `step` as used, atomically; False when it (or a later one) was used already: a
        code works once, across every process."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(TotpSecret)
                .where(TotpSecret.principal == principal, TotpSecret.last_step < step)
                .values(last_step=step)
            )
            return bool(_rowcount(result))

    def remove(self, principal: str) -> bool:
        with self._sessions.begin() as session:
            done = bool(_rowcount(session.execute(delete(TotpSecret).where(TotpSecret.principal == principal))))
            if done:
                _bump_auth_version(session)
            return done
