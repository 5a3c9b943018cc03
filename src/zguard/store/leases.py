"""Leases in the state database: one replica at a time runs a job (the syslog forwarder).

Decisions written here:
- A lease is a row (`leases`: name, holder, expires_ms). Taking or renewing it is one
  conditional UPDATE (`WHERE name = :name AND (holder = :me OR expires_ms < :now)`), atomic on
  PostgreSQL and SQLite alike, so two replicas cannot both hold it; the first take of a name
  inserts the row, and a replica that loses that race finds the row and tries the UPDATE.
- Times are each replica's wall clock (epoch ms): run the hosts on NTP. A skew of a second or two
  only moves a takeover by as much; it cannot make two holders, because the holder stops
  acting on its lease two thirds of the way through it (`Lease.valid`) while a taker waits for
  the whole of it.
- Renewed every third of the lease. A holder that cannot reach the database keeps acting only
  until two thirds of the lease have passed since its last renewal, then stops: another replica
  may take over once the whole lease has passed. Releasing at a clean stop (expires now) lets
  another take over at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

from sqlalchemy import Engine, Table, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from zguard.store.models import Lease as LeaseRow

log = logging.getLogger("zguard.store.leases")
LEASES = cast(Table, LeaseRow.__table__)
RENEW_FRACTION = 1 / 3  # renewed this far into the lease
VALID_FRACTION = 2 / 3  # acted on only this far into the lease since the last renewal


class Lease:
    """One named lease held for `holder`; `keep()` takes or renews it when due."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        holder: str,
        *,
        lease_s: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self.name = name
        self.holder = holder
        self.lease_s = lease_s
        self._clock = clock
        self._monotonic = monotonic
        self._renewed_at: float | None = None  # monotonic time of the last successful take or renewal
        self._asked_at: float | None = None
        self.last_error: str | None = None

    @property
    def poll_s(self) -> float:
        """How often a replica that does not hold the lease asks again."""
        return self.lease_s * RENEW_FRACTION

    def valid(self) -> bool:
        """Whether this replica may act on the lease now (no database work)."""
        if self._renewed_at is None:
            return False
        return self._monotonic() - self._renewed_at < self.lease_s * VALID_FRACTION

    def keep(self) -> bool:
        """Take or renew the lease when due (at most every `poll_s`); whether this replica holds it."""
        now = self._monotonic()
        if self._asked_at is not None and now - self._asked_at < self.poll_s:
            return self.valid()
        self._asked_at = now
        try:
            taken = self._take()
        except SQLAlchemyError as exc:
            self.last_error = f"{type(exc).__name__}"
            log.warning("could not renew the %s lease (%s); acting on it until it runs out", self.name, self.last_error)
            return self.valid()
        self.last_error = None
        if taken:
            self._renewed_at = now
        else:
            self._renewed_at = None
        return taken

    def _take(self) -> bool:
        now_ms = int(self._clock() * 1000)
        expires = now_ms + int(self.lease_s * 1000)
        with self._engine.begin() as conn:
            held_before = self._renewed_at is not None
            result = conn.execute(
                update(LEASES)
                .where(LEASES.c.name == self.name, or_(LEASES.c.holder == self.holder, LEASES.c.expires_ms < now_ms))
                .values(holder=self.holder, expires_ms=expires)
            )
            if result.rowcount:
                if not held_before:
                    conn.execute(update(LEASES).where(LEASES.c.name == self.name).values(acquired_ms=now_ms))
                return True
            if conn.execute(select(LEASES.c.name).where(LEASES.c.name == self.name)).first() is not None:
                return False
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    insert(LEASES).values(name=self.name, holder=self.holder, expires_ms=expires, acquired_ms=now_ms)
                )
        except IntegrityError:  # another replica inserted it first: it holds the lease
            return False
        return True

    def holder_now(self) -> tuple[str, int] | None:
        """(holder, expires_ms) as the database has it; None when never taken."""
        with self._engine.connect() as conn:
            row = conn.execute(select(LEASES.c.holder, LEASES.c.expires_ms).where(LEASES.c.name == self.name)).first()
        return None if row is None else (str(row.holder), int(row.expires_ms))

    def release(self) -> None:
        """Give the lease up now (a clean stop), so another replica takes over at once."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    update(LEASES)
                    .where(LEASES.c.name == self.name, LEASES.c.holder == self.holder)
                    .values(expires_ms=0)
                )
        except SQLAlchemyError as exc:  # it runs out by itself
            log.warning("could not release the %s lease (%s)", self.name, type(exc).__name__)
