"""Retention: archive the audit events older than `audit.retention_days`, then delete them.

`purge` does, in this order, and stops at the first thing that fails (fail closed: an event is
never deleted unless a verified, signed archive of it is on disk and the purge is recorded):

1. **Plan.** The events due are the longest prefix of the chain (from its base) older than the
   cutoff. They are held back past the syslog forwarder's cursor `syslog`: events not yet
   delivered to the central log server are never deleted. (A missing cursor counts as 0 while
   forwarding is configured.) The cut then falls on the last event a signed checkpoint covers, so
   the archive ends exactly where a signature anchors it; when everything stored is due, a
   checkpoint is forced to cover the head. Events between that checkpoint and the cutoff wait
   for the next run (at most one checkpoint interval's worth).
2. **Archive.** The events are read once, verified as a chain from the store's base to the signed
   checkpoint, and written to `archive_dir` (0700) as a signed archive (zguard.audit.archive,
   file 0600, temp file + fsync + rename). A chain that fails verification is not purged: the
   damaged rows are evidence.
3. **Record.** `audit.purged` (archive name, its SHA-256, seq range, count) is committed to the
   trail before anything is deleted.
4. **Delete.** `AuditStore.delete_through(last_seq, last_hash)` moves the chain's base, so
   `verify_store` still passes across the boundary.

`RetentionJob` runs `purge` once a day in a thread for `serve`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zguard import state_paths
from zguard.audit import AuditEvent, AuditSink, DetailValue
from zguard.audit.archive import ArchivedRow, ArchiveInfo, ArchiveWriter, checkpoint_problem
from zguard.audit.chain import CHECKPOINT_TYPE, CheckpointSigner, iso_ms
from zguard.audit.store import AuditStore, StoredEvent, pending
from zguard.audit.verify import verify_rows
from zguard.config import Settings
from zguard.errors import OperatorError

log = logging.getLogger("zguard.audit")
SYSLOG_CURSOR = "syslog"  # zguard.audit.forwarder.CURSOR_NAME
DAY_S = 86_400
PURGE_EVERY_S = DAY_S
FIRST_PURGE_DELAY_S = 600.0  # not at start-up: let the server settle and the forwarder catch up
LOCK_FILE = ".purge.lock"


class PurgeRefused(OperatorError):
    """Nothing was purged; `message` says why and what to do."""

    code = "audit_purge_refused"
    fix = "let the syslog forwarder deliver the held-back events (zguard audit status), then purge again"


@dataclass
class PurgeResult:
    """What a purge did (or, with `dry_run`, would do)."""

    cutoff_ms: int
    base_seq: int  # the chain's base before the purge
    due_through: int  # the last event older than the cutoff (as a prefix of the chain)
    cursor: int | None  # the syslog cursor, when it bounds the purge
    through_seq: int  # purged through this event (== base_seq: nothing purged)
    checkpoint_seq: int | None = None  # the signed checkpoint the archive ends with
    anchors: int = 0  # events after the purged ones up to what that checkpoint covers
    count: int = 0
    archive: ArchiveInfo | None = None
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def held_back(self) -> int:
        """Events due that the syslog forwarder has not delivered, so they stay."""
        return max(0, self.due_through - max(self.cursor, self.base_seq)) if self.cursor is not None else 0

    def as_dict(self) -> dict[str, Any]:
        archive = None
        if self.archive is not None:
            archive = {"path": str(self.archive.path), "sha256": self.archive.sha256}
        return {
            "dry_run": self.dry_run,
            "cutoff": iso_ms(self.cutoff_ms),
            "base_seq": self.base_seq,
            "due_through": self.due_through,
            "syslog_cursor": self.cursor,
            "held_back": self.held_back,
            "through_seq": self.through_seq,
            "checkpoint_seq": self.checkpoint_seq,
            "anchors": self.anchors,
            "count": self.count,
            "archive": archive,
            "notes": self.notes,
        }


def purge(
    store: AuditStore,
    settings: Settings,
    *,
    now: float | None = None,
    audit: AuditSink | None = None,
    actor: str = "zguard",
    dry_run: bool = False,
) -> PurgeResult:
    """Archive and delete the events older than `audit.retention_days` (see the module docstring).

    `audit` records `audit.purged`, or `audit.purge_failed` when the purge is refused (default:
    appended to `store` directly); `now` is UNIX seconds. Raises PurgeRefused (nothing deleted)
    or the store's database errors."""
    try:
        return _purge(
            store, settings, moment=time.time() if now is None else now, audit=audit, actor=actor, dry_run=dry_run
        )
    except PurgeRefused as exc:
        if not dry_run:
            failed = AuditEvent(
                type="audit.purge_failed", outcome="failed", principal=actor, detail={"reason": exc.message}
            )
            try:
                _record(store, audit, failed)
            except Exception:  # the refusal itself is what the caller must see; the log keeps the rest
                log.exception("could not record audit.purge_failed (%s) in the audit trail", exc.message)
        raise


def _purge(
    store: AuditStore, settings: Settings, *, moment: float, audit: AuditSink | None, actor: str, dry_run: bool
) -> PurgeResult:
    signer = store.signer
    if signer is None:
        raise PurgeRefused("the audit store was opened without the checkpoint signing key; archives must be signed")
    result = _plan(store, settings, moment)
    result.dry_run = dry_run
    if result.through_seq <= result.base_seq:
        return result
    result.count = result.through_seq - result.base_seq
    found = _covering_checkpoint(store, result.through_seq)
    if found is None:
        if dry_run:
            result.notes.append(f"a checkpoint would be written first: none covers event {result.through_seq} yet")
            return result
        store.checkpoint()
        found = _covering_checkpoint(store, result.through_seq)
        if found is None:
            raise PurgeRefused(f"no signed checkpoint covers event {result.through_seq}: run `zguard audit verify`")
    checkpoint, covers = found
    result.checkpoint_seq, result.anchors = checkpoint.seq, covers - result.through_seq
    if dry_run:
        return result

    directory = _archive_directory(settings)
    with _exclusive(directory):
        head = store.head()
        if head.base_seq != result.base_seq:
            raise PurgeRefused("another purge moved the chain's base meanwhile; nothing was purged, run it again")
        name = f"audit-{_compact(moment)}-{result.base_seq + 1:012d}-{result.through_seq:012d}.jsonl"
        writer = ArchiveWriter(directory, name, base_seq=head.base_seq, base_hash=head.base_hash)
        try:
            info = _write_archive(store, writer, result, checkpoint=checkpoint, signer=signer, now=moment)
        except BaseException:
            writer.abort()
            raise
        result.archive, result.count = info, info.count
        detail: dict[str, DetailValue] = {
            "archive": info.path.name,
            "archive_sha256": info.sha256,
            "first_seq": info.first_seq,
            "last_seq": info.last_seq,
            "count": info.count,
            "checkpoint_seq": info.checkpoint_seq,
            "cutoff": iso_ms(result.cutoff_ms),
            "retention_days": settings.audit.retention_days,
            "held_back": result.held_back,
        }
        # Recorded before anything is deleted: no event leaves the store unrecorded.
        _record(store, audit, AuditEvent(type="audit.purged", outcome="done", principal=actor, detail=detail))
        try:
            removed = store.delete_through(info.last_seq, info.last_hash)
        except ValueError as exc:
            raise PurgeRefused(f"{exc}; the archive {info.path} was kept") from None
    if removed != info.count:
        result.notes.append(f"{removed} rows deleted for {info.count} archived events")
    return result


def _plan(store: AuditStore, settings: Settings, now: float) -> PurgeResult:
    head = store.head()
    cutoff_ms = int((now - settings.audit.retention_days * DAY_S) * 1000)
    young = store.search(since_ms=cutoff_ms, after_seq=head.base_seq, limit=1)
    due = young[0].seq - 1 if young else head.seq
    cursor = store.cursors().get(SYSLOG_CURSOR)
    if cursor is None and settings.audit.syslog.transport != "off":
        cursor = 0  # forwarding is configured but has delivered nothing yet
    through = max(head.base_seq, min(due, cursor) if cursor is not None else due)
    result = PurgeResult(cutoff_ms, head.base_seq, max(due, head.base_seq), cursor, through)
    if result.held_back:
        result.notes.append(
            f"{result.held_back} event(s) due are kept: the syslog forwarder has delivered only through event "
            f"{cursor} (see `zguard audit status`)"
        )
    return result


def _covering_checkpoint(store: AuditStore, through: int) -> tuple[StoredEvent, int] | None:
    """The first checkpoint covering event `through` or a later one, and the event it covers."""
    # A checkpoint event at seq S covers S - 1: the first one after `through` is the one.
    for event in store.search(type_prefix=CHECKPOINT_TYPE, after_seq=through, limit=20):
        if event.type != CHECKPOINT_TYPE:
            continue
        covers = (json.loads(event.body).get("detail") or {}).get("covers_seq")
        if isinstance(covers, int) and covers >= through:
            return event, covers
    return None


def _write_archive(
    store: AuditStore,
    writer: ArchiveWriter,
    result: PurgeResult,
    *,
    checkpoint: StoredEvent,
    signer: CheckpointSigner,
    now: float,
) -> ArchiveInfo:
    """One pass over the rows from the base to the checkpoint: archived, verified, and checked
    against the checkpoint's signature before `finish` renames the archive into place."""
    detail = json.loads(checkpoint.body).get("detail") or {}
    covers = int(detail["covers_seq"])
    signed: list[ArchivedRow] = []  # the checkpoint's own row, met after the chain it covers

    def rows() -> Iterator[ArchivedRow]:
        for raw in store.iter_rows():
            row = ArchivedRow(*raw)
            if row.seq > covers:
                if row.seq == checkpoint.seq:
                    signed.append(row)
                if row.seq >= checkpoint.seq:
                    return
                continue
            writer.add(row, anchor=row.seq > result.through_seq)
            yield row

    report = verify_rows(
        rows(),
        base_seq=writer.base_seq,
        base_hash=writer.base_hash,
        head_seq=covers,
        head_hash=detail.get("head_hash"),
        public_key=store.trusted_keys or signer.public_key,  # several writers: every listed replica's key
    )
    if report.problem is not None:
        problem = report.problem
        raise PurgeRefused(
            f"the events to purge fail verification ({problem.kind} at event {problem.seq}: {problem.message}); "
            "nothing was purged: they are evidence, run `zguard audit verify`"
        )
    if not signed:
        raise PurgeRefused(f"the checkpoint event {checkpoint.seq} disappeared; nothing was purged")
    why = checkpoint_problem(
        signed[0], last_seq=writer.end_seq, last_hash=writer.end_hash, public_key=signer.public_key
    )
    if why is not None:
        raise PurgeRefused(f"{why.message}; nothing was purged")
    return writer.finish(
        signed[0],
        signer,
        created_ms=int(now * 1000),
        cutoff_ms=result.cutoff_ms,
        retention_days=int((now * 1000 - result.cutoff_ms) // (DAY_S * 1000)),
    )


def _record(store: AuditStore, audit: AuditSink | None, event: AuditEvent) -> None:
    if audit is not None:
        audit.emit(event)
    else:
        store.append([pending(event)])


def _archive_directory(settings: Settings) -> Path:
    directory = state_paths.audit_archive_dir(settings)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = directory.stat().st_mode & 0o777
    if mode & 0o077:
        raise PurgeRefused(
            f"the audit archive directory {directory} is open to group or others (mode {mode:o}); chmod 700 {directory}"
        )
    return directory


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """One purge at a time on this host (the CLI and the daily job may meet)."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PurgeRefused("another purge is running; nothing was purged") from None
        yield
    finally:
        os.close(fd)


def _compact(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y%m%dT%H%M%SZ")


class RetentionJob:
    """Runs `purge` once a day in a daemon thread; `serve` starts it and stops it at shutdown.

    A failed purge is logged and recorded (`audit.purge_failed`) and tried again the next day:
    it never stops the server, and it never deletes anything it could not archive."""

    def __init__(
        self,
        store: AuditStore,
        settings: Settings,
        *,
        audit: AuditSink | None = None,
        every_s: float = PURGE_EVERY_S,
        first_delay_s: float = FIRST_PURGE_DELAY_S,
    ) -> None:
        self.store, self.settings, self.audit = store, settings, audit
        self.every_s, self.first_delay_s = every_s, first_delay_s
        self.last_result: PurgeResult | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="zguard-audit-retention", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop waiting; a purge in progress finishes first (up to `timeout`)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def run_once(self) -> PurgeResult | None:
        try:
            result = purge(self.store, self.settings, audit=self.audit)
        except PurgeRefused as exc:  # purge recorded it; tried again tomorrow
            self.last_error = exc.message
            log.error("audit purge refused: %s", exc.message)
            return None
        except Exception as exc:  # noqa: BLE001 - the database, most likely: logged, tried again tomorrow
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.error("audit purge failed: %s", self.last_error)
            return None
        self.last_result, self.last_error = result, None
        if result.archive is not None:
            log.info("audit purge: archived and deleted %d event(s) to %s", result.count, result.archive.path)
        for note in result.notes:
            log.warning("audit purge: %s", note)
        return result

    def _run(self) -> None:
        delay = self.first_delay_s
        while not self._stop.wait(delay):
            self.run_once()
            delay = self.every_s
