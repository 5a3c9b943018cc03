"""The audit store: hash-chained events in the state database (SQLite or PostgreSQL).

`append` is the only way events get in. Each event is first cut to the store's bounds
(`zguard.audit.bounds`: client text at most `audit.field_max_chars` a string), so nothing a
stranger sends is stored unbounded. It runs one transaction per batch that first *updates*
the head row, which takes SQLite's write lock or PostgreSQL's row lock before anything is read,
so threads, processes and replicas writing at once still build one chain in one order. A
checkpoint, when due, is appended in the same transaction as the events it covers.

Reads serve verification, the syslog outbox (`events_after`, cursors), retention and searches.
An event whose images carry watermark ids also gets rows in `audit_watermarks`, in the same
transaction, so `find_watermark` (`zguard trace`) is an index lookup rather than a scan; the
index is outside the chain (nothing hashed refers to it) and is purged with the events. So is
`audit_time_blocks` (the earliest and latest time per 4,096 positions), which lets a search by
time range scan only the positions where its events can be.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Engine, Table, and_, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from zguard.audit import AuditEvent
from zguard.audit.bounds import EventBounds, bound_event
from zguard.audit.chain import CHECKPOINT_TYPE, CheckpointSigner, canonical, chain_hash, column_text, event_body
from zguard.store.models import (
    AUDIT_TIME_BLOCK,
    AuditCursor,
    AuditEventRow,
    AuditHead,
    AuditTimeBlock,
    AuditWatermark,
)

if TYPE_CHECKING:
    from zguard.audit.checkpoint_keys import CheckpointKeys

EVENTS = cast(Table, AuditEventRow.__table__)
HEAD = cast(Table, AuditHead.__table__)
CURSORS = cast(Table, AuditCursor.__table__)
WATERMARKS = cast(Table, AuditWatermark.__table__)
TIME_BLOCKS = cast(Table, AuditTimeBlock.__table__)
HEAD_ID = 1
# The append path's statements, built once: constructing SQLAlchemy statements per call cost
# more than the SQLite commit itself (~0.8 ms against ~0.15 ms).
_LOCK_HEAD = update(HEAD).where(HEAD.c.id == HEAD_ID).values(seq=HEAD.c.seq).returning(*HEAD.c)
_READ_HEAD = select(HEAD).where(HEAD.c.id == HEAD_ID)


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    event_id: str
    time: float  # UNIX seconds
    type: str
    outcome: str
    body: str  # canonical JSON: exactly what was hashed
    hash: str
    prev_hash: str = ""


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    base_seq: int
    base_hash: str
    checkpoint_seq: int
    checkpoint_ms: int


def events_since_checkpoint(seq: int, head: Head) -> bool:
    """Whether events up to `seq` include any the last checkpoint does not cover. The checkpoint
    is itself the event right after the one it covers, so it does not count as new."""
    if head.checkpoint_seq == 0:  # never checkpointed: a checkpoint covers at least one event
        return seq > 0
    return seq > head.checkpoint_seq + 1


@dataclass(frozen=True)
class CheckpointPolicy:
    every: int
    interval_ms: int


@dataclass(frozen=True)
class Pending:
    event: AuditEvent
    event_id: str
    time_ms: int


def new_event_id() -> str:
    return uuid.uuid4().hex


def pending(event: AuditEvent) -> Pending:
    return Pending(event, new_event_id(), int(event.time * 1000))


_WATERMARK_ID = re.compile(r"[0-9a-f]{16}")


def watermark_ids(images: Iterable[Mapping[str, Any]]) -> list[str]:
    """The watermark ids an event's images carry, each once: what `audit_watermarks` indexes.

    Only the form the marker writes (16 lowercase hex digits, `WatermarkFound.hex_id`): anything
    else is no id zguard issued, and must not fail the append on the column's length."""
    found: list[str] = []
    for image in images:
        value = image.get("watermark_id")
        if isinstance(value, str) and _WATERMARK_ID.fullmatch(value) and value not in found:
            found.append(value)
    return found


def _stored(row: Any) -> StoredEvent:
    return StoredEvent(
        seq=row.seq,
        event_id=row.event_id,
        time=row.time_ms / 1000,
        type=row.type,
        outcome=row.outcome,
        body=row.body,
        hash=row.hash,
        prev_hash=row.prev_hash,
    )


class AuditStore:
    """The audit tables of one database. Thread-safe; `append` may be called from any process."""

    def __init__(
        self,
        engine: Engine,
        *,
        signer: CheckpointSigner | None = None,
        checkpoints: CheckpointPolicy | None = None,
        clock: Any = time.time,
        bounds: EventBounds | None = None,
        trusted_keys: CheckpointKeys | None = None,
    ) -> None:
        """`trusted_keys`: the checkpoint keys of every writer (`audit.checkpoint_keys`), which
        the server's own verifications accept; None: only `signer`'s."""
        self.engine = engine
        self.bounds = bounds or EventBounds()
        self.signer = signer
        self.trusted_keys = trusted_keys or None
        self.checkpoints = checkpoints
        self._clock = clock
        self._appended = threading.Condition()
        self._last_seq = 0
        self._write_lock = threading.Lock()
        self._write_conn: Connection | None = None  # kept open: a pool checkout per append costs ~10%

    def close(self) -> None:
        with self._write_lock:
            if self._write_conn is not None:
                self._write_conn.close()
                self._write_conn = None

    # --- writing --------------------------------------------------------------------------

    def append(self, batch: Sequence[Pending], *, force_checkpoint: bool = False) -> list[StoredEvent]:
        """Chain and commit `batch` (and a checkpoint when due) in one transaction; return the stored events."""
        with self._write_lock:
            return self._append_locked(batch, force_checkpoint)

    def try_append(self, batch: Sequence[Pending]) -> list[StoredEvent] | None:
        """`append`, or None at once when another append holds this store's writer."""
        if not self._write_lock.acquire(blocking=False):
            return None
        try:
            return self._append_locked(batch, False)
        finally:
            self._write_lock.release()

    def _append_locked(self, batch: Sequence[Pending], force_checkpoint: bool) -> list[StoredEvent]:
        try:
            rows, seq = self._append(batch, force_checkpoint)
        except Exception:
            if self._write_conn is not None:  # start the next batch on a fresh connection
                self._write_conn.invalidate()
                self._write_conn.close()
                self._write_conn = None
            raise
        with self._appended:
            self._last_seq = max(self._last_seq, seq)
            self._appended.notify_all()
        return [
            StoredEvent(
                r["seq"],
                r["event_id"],
                r["time_ms"] / 1000,
                r["type"],
                r["outcome"],
                r["body"],
                r["hash"],
                r["prev_hash"],
            )
            for r in rows
        ]

    def _append(self, batch: Sequence[Pending], force_checkpoint: bool) -> tuple[list[dict[str, Any]], int]:
        if self._write_conn is None:
            self._write_conn = self.engine.connect()
        conn = self._write_conn
        with conn.begin():
            head = _lock_head(conn)
            seq, prev = head.seq, head.hash
            rows: list[dict[str, Any]] = []
            marks: list[dict[str, Any]] = []
            for item in batch:
                seq += 1
                event = bound_event(item.event, self.bounds)  # the one choke point: nothing stored unbounded
                if event.images:
                    marks.extend({"watermark_id": w, "seq": seq} for w in watermark_ids(event.images))
                body = canonical(event_body(event, seq=seq, event_id=item.event_id, time_ms=item.time_ms))
                digest = chain_hash(prev, body)
                rows.append(
                    _row(
                        event,
                        seq=seq,
                        event_id=item.event_id,
                        time_ms=item.time_ms,
                        body=body,
                        prev=prev,
                        digest=digest,
                    )
                )
                prev = digest
            now_ms = int(self._clock() * 1000)
            checkpoint_seq = head.checkpoint_seq
            checkpoint_ms = head.checkpoint_ms or now_ms  # the first events start the interval's clock
            if self.signer is not None and self._checkpoint_due(seq, now_ms, head, force=force_checkpoint):
                seq += 1
                checkpoint_seq, checkpoint_ms = seq - 1, now_ms
                event = AuditEvent(
                    type=CHECKPOINT_TYPE,
                    outcome="done",
                    principal="zguard",
                    detail=self.signer.detail(seq - 1, prev, now_ms),
                    time=now_ms / 1000,
                )
                event_id = new_event_id()
                body = canonical(event_body(event, seq=seq, event_id=event_id, time_ms=now_ms))
                digest = chain_hash(prev, body)
                rows.append(
                    _row(event, seq=seq, event_id=event_id, time_ms=now_ms, body=body, prev=prev, digest=digest)
                )
                prev = digest
            if rows:
                sql = _driver_sql(conn)
                conn.exec_driver_sql(sql.insert_events, rows)
                if marks:  # only generations carry images: no round trip for the other events
                    conn.exec_driver_sql(sql.insert_watermarks, marks)
                conn.exec_driver_sql(sql.widen_time_blocks, _time_blocks(rows))
                conn.exec_driver_sql(
                    sql.move_head,
                    {
                        "new_seq": seq,
                        "new_hash": prev,
                        "new_checkpoint_seq": checkpoint_seq,
                        "new_checkpoint_ms": checkpoint_ms,
                    },
                )
        return rows, seq

    def _checkpoint_due(self, seq: int, now_ms: int, head: Head, *, force: bool) -> bool:
        if self.signer is None or not events_since_checkpoint(seq, head):
            return False
        if force:
            return True
        policy = self.checkpoints
        if policy is None:
            return False
        timed = head.checkpoint_ms > 0 and now_ms - head.checkpoint_ms >= policy.interval_ms
        return timed or seq - head.checkpoint_seq >= policy.every

    def checkpoint(self) -> StoredEvent | None:
        """Write a checkpoint now if any event came after the last one (timer, shutdown, purge)."""
        stored = self.append([], force_checkpoint=True)
        return stored[-1] if stored else None

    # --- the head and the outbox ----------------------------------------------------------

    def head(self) -> Head:
        with self.engine.connect() as conn:
            return _read_head(conn)

    def head_seq(self) -> int:
        return self.head().seq

    def events_after(self, seq: int, limit: int) -> list[StoredEvent]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(EVENTS).where(EVENTS.c.seq > seq).order_by(EVENTS.c.seq).limit(limit))
            return [_stored(row) for row in rows]

    def cursor(self, name: str) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(select(CURSORS.c.seq).where(CURSORS.c.name == name)).scalar()
            return int(value) if value is not None else 0

    def cursors(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {row.name: row.seq for row in conn.execute(select(CURSORS.c.name, CURSORS.c.seq))}

    def advance_cursor(self, name: str, seq: int) -> None:
        now_ms = int(self._clock() * 1000)
        with self.engine.begin() as conn:
            done = conn.execute(
                update(CURSORS).where(CURSORS.c.name == name).values(seq=seq, updated_ms=now_ms)
            ).rowcount
            if not done:
                conn.execute(insert(CURSORS).values(name=name, seq=seq, updated_ms=now_ms))

    def wait_for_events(self, after_seq: int, timeout: float) -> None:
        """Return when an event after `after_seq` was appended by this process, or after `timeout`
        (events appended by other processes are seen at the next call)."""
        with self._appended:
            self._appended.wait_for(lambda: self._last_seq > after_seq, timeout)

    # --- reading --------------------------------------------------------------------------

    def iter_events(self, *, after: int = 0, until: int | None = None, batch: int = 5_000) -> Iterator[StoredEvent]:
        """Every event with `after` < seq (≤ `until`), in sequence order, read in batches."""
        position = after
        while True:
            query = select(EVENTS).where(EVENTS.c.seq > position)
            if until is not None:
                query = query.where(EVENTS.c.seq <= until)
            with self.engine.connect() as conn:
                rows = [_stored(row) for row in conn.execute(query.order_by(EVENTS.c.seq).limit(batch))]
            yield from rows
            if len(rows) < batch:
                return
            position = rows[-1].seq

    def iter_rows(self, *, batch: int = 5_000) -> Iterator[tuple[Any, ...]]:
        """Raw rows as tuples in `ROW_COLUMNS` order, by seq, for verification.

        Read through the driver's own cursor: plain tuples, no result-row objects, which made up
        a third of verification's time."""
        position = -1  # below any seq (the base may be 0)
        with self.engine.connect() as conn:
            sql = _driver_sql(conn).read_rows
            while True:
                rows = conn.exec_driver_sql(sql, {"after": position, "batch": batch}).cursor.fetchall()
                yield from rows
                if len(rows) < batch:
                    return
                position = rows[-1][0]

    def get(self, event_id: str) -> StoredEvent | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(EVENTS).where(EVENTS.c.event_id == event_id)).first()
            return _stored(row) if row is not None else None

    def find_watermark(self, watermark_id: str) -> list[StoredEvent]:
        """The events whose images carry `watermark_id` (16 lowercase hex digits), oldest first:
        usually one, none once retention has purged it. An index lookup, not a scan."""
        query = (
            select(EVENTS)
            .join(WATERMARKS, WATERMARKS.c.seq == EVENTS.c.seq)
            .where(WATERMARKS.c.watermark_id == watermark_id)
            .order_by(EVENTS.c.seq)
        )
        with self.engine.connect() as conn:
            return [_stored(row) for row in conn.execute(query)]

    def search(
        self,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        principal: str | None = None,
        outcome: str | None = None,
        type_prefix: str | None = None,
        request_id: str | None = None,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[StoredEvent]:
        conditions = []
        if since_ms is not None or until_ms is not None:
            positions = self._time_range_positions(since_ms, until_ms)
            if positions is None:
                return []
            # Scan those positions in chain order: `+ 0` keeps both planners off the time index,
            # whose range (a month is most of the table) they would read in full and then sort.
            time_ms = EVENTS.c.time_ms + 0
            conditions += [EVENTS.c.seq >= positions[0], EVENTS.c.seq < positions[1]]
            if since_ms is not None:
                conditions.append(time_ms >= since_ms)
            if until_ms is not None:
                conditions.append(time_ms < until_ms)
        if principal is not None:
            conditions.append(EVENTS.c.principal == principal)
        if outcome is not None:
            conditions.append(EVENTS.c.outcome == outcome)
        if type_prefix is not None:
            conditions.append(EVENTS.c.type.startswith(type_prefix, autoescape=True))
        if request_id is not None:
            conditions.append(EVENTS.c.request_id == request_id)
        if after_seq is not None:
            conditions.append(EVENTS.c.seq > after_seq)
        if before_seq is not None:
            conditions.append(EVENTS.c.seq < before_seq)
        order = EVENTS.c.seq.desc() if newest_first else EVENTS.c.seq
        query = select(EVENTS).where(and_(True, *conditions)).order_by(order).limit(limit)
        with self.engine.connect() as conn:
            return [_stored(row) for row in conn.execute(query)]

    def _time_range_positions(self, since_ms: int | None, until_ms: int | None) -> tuple[int, int] | None:
        """The seq range [first, end) that holds every event timed in [since_ms, until_ms), from
        the blocks whose time range meets it; None when no block does (no such event)."""
        meets = []
        if since_ms is not None:
            meets.append(TIME_BLOCKS.c.max_ms >= since_ms)
        if until_ms is not None:
            meets.append(TIME_BLOCKS.c.min_ms < until_ms)
        query = select(func.min(TIME_BLOCKS.c.block), func.max(TIME_BLOCKS.c.block)).where(*meets)
        with self.engine.connect() as conn:
            first, last = conn.execute(query).one()
        if first is None:
            return None
        return int(first) * AUDIT_TIME_BLOCK, (int(last) + 1) * AUDIT_TIME_BLOCK

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(EVENTS)).scalar_one())

    # --- retention ------------------------------------------------------------------------

    def delete_through(self, seq: int, expected_hash: str) -> int:
        """Delete events with seq ≤ `seq` and move the chain's base there; refuses when the event at
        `seq` no longer has `expected_hash` (something changed since it was archived)."""
        with self.engine.begin() as conn:
            head = _lock_head(conn)
            current = conn.execute(select(EVENTS.c.hash).where(EVENTS.c.seq == seq)).scalar()
            if current != expected_hash:
                raise ValueError(f"event {seq} changed after it was archived; nothing was purged")
            conn.execute(delete(WATERMARKS).where(WATERMARKS.c.seq <= seq))
            # Only the blocks wholly purged: one that still holds events keeps its (wider) range.
            conn.execute(delete(TIME_BLOCKS).where(TIME_BLOCKS.c.block < (seq + 1) // AUDIT_TIME_BLOCK))
            removed = conn.execute(delete(EVENTS).where(EVENTS.c.seq <= seq)).rowcount
            conn.execute(update(HEAD).where(HEAD.c.id == HEAD_ID).values(base_seq=seq, base_hash=expected_hash))
            del head
            return int(removed)


def _time_blocks(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, int]]:
    """The batch's earliest and latest time per block of positions, to widen the stored ranges."""
    blocks: dict[int, dict[str, int]] = {}
    for row in rows:
        block, ms = row["seq"] // AUDIT_TIME_BLOCK, row["time_ms"]
        found = blocks.get(block)
        if found is None:
            blocks[block] = {"block": block, "min_ms": ms, "max_ms": ms}
        else:
            found["min_ms"], found["max_ms"] = min(found["min_ms"], ms), max(found["max_ms"], ms)
    return list(blocks.values())


def _row(
    event: AuditEvent, *, seq: int, event_id: str, time_ms: int, body: str, prev: str, digest: str
) -> dict[str, Any]:
    return {
        "seq": seq,
        "event_id": event_id,
        "time_ms": time_ms,
        "type": column_text(event.type, 64),
        "outcome": event.outcome,
        "principal": column_text(event.principal, 128),
        "request_id": column_text(event.request_id, 64),
        "body": body,
        "prev_hash": prev,
        "hash": digest,
    }


@dataclass(frozen=True)
class _DriverSql:
    insert_events: str
    insert_watermarks: str
    widen_time_blocks: str
    move_head: str
    read_rows: str


ROW_COLUMNS = ("seq", "event_id", "time_ms", "type", "outcome", "principal", "request_id", "body", "prev_hash", "hash")
"""The `audit_events` columns in the order raw rows are read, verified and archived."""
_SQL_CACHE: dict[str, _DriverSql] = {}


def _driver_sql(conn: Connection) -> _DriverSql:
    """The hot statements as the driver's own SQL (named parameters: `:x` for sqlite3,
    `%(x)s` for psycopg): SQLAlchemy's per-execution compilation context cost as much as the
    SQLite commit."""
    dialect = conn.dialect
    cached = _SQL_CACHE.get(dialect.name)
    if cached is None:
        style = ":{}" if dialect.name == "sqlite" else "%({})s"
        # SQLite's two-argument min()/max() are PostgreSQL's LEAST/GREATEST.
        least, greatest = ("min", "max") if dialect.name == "sqlite" else ("LEAST", "GREATEST")

        def mark(name: str) -> str:
            return style.format(name)

        # Column names and placeholders are constants of this module; values are bound parameters.
        columns, marks = ", ".join(ROW_COLUMNS), ", ".join(mark(c) for c in ROW_COLUMNS)
        head_set = ", ".join(f"{c} = {mark('new_' + c)}" for c in ("seq", "hash", "checkpoint_seq", "checkpoint_ms"))
        cached = _SQL_CACHE[dialect.name] = _DriverSql(
            insert_events=f"INSERT INTO audit_events ({columns}) VALUES ({marks})",  # noqa: S608
            insert_watermarks="INSERT INTO audit_watermarks (watermark_id, seq) "  # noqa: S608
            f"VALUES ({mark('watermark_id')}, {mark('seq')})",
            widen_time_blocks="INSERT INTO audit_time_blocks (block, min_ms, max_ms) "  # noqa: S608
            f"VALUES ({mark('block')}, {mark('min_ms')}, {mark('max_ms')}) ON CONFLICT (block) DO UPDATE SET "
            f"min_ms = {least}(audit_time_blocks.min_ms, excluded.min_ms), "
            f"max_ms = {greatest}(audit_time_blocks.max_ms, excluded.max_ms)",
            move_head=f"UPDATE audit_head SET {head_set} WHERE id = {HEAD_ID}",  # noqa: S608
            read_rows=f"SELECT {columns} FROM audit_events WHERE seq > {mark('after')} "  # noqa: S608
            f"ORDER BY seq LIMIT {mark('batch')}",
        )
    return cached


def _lock_head(conn: Connection) -> Head:
    # A write first: SQLite takes its write lock now (not at a later upgrade that could fail with
    # "database is locked" mid-transaction) and PostgreSQL locks the row until commit.
    # RETURNING (SQLite ≥ 3.35, PostgreSQL) reads the locked row in the same statement.
    row = conn.execute(_LOCK_HEAD).one()
    return Head(row.seq, row.hash, row.base_seq, row.base_hash, row.checkpoint_seq, row.checkpoint_ms)


def _read_head(conn: Connection) -> Head:
    row = conn.execute(_READ_HEAD).one()
    return Head(row.seq, row.hash, row.base_seq, row.base_hash, row.checkpoint_seq, row.checkpoint_ms)
