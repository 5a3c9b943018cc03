"""`AuditTrail`: the sink that commits every event before the caller goes on (group commit).

Callers hand an event to one writer thread and wait until it is committed: `emit` (threads,
the CLI) blocks, `record` (the event loop) awaits. The writer takes everything that queued up
while the previous transaction was committing and commits it in one transaction, so N
concurrent requests cost about one commit, not N, and a single caller still gets its event
durable before its response leaves. A failed commit fails every caller in that batch with
`AuditUnavailable` (503 `audit_unavailable`): nothing proceeds unrecorded.

The writer also writes a checkpoint when `audit.checkpoint_interval_s` passes with new events
and no further traffic, and a final one at `close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from zguard.audit import AuditEvent
from zguard.audit.store import AuditStore, Pending, StoredEvent, events_since_checkpoint, pending
from zguard.errors import AuditUnavailable

log = logging.getLogger("zguard.audit")
MAX_BATCH = 1_000

Done = Callable[[StoredEvent | None, BaseException | None], None]


class AuditTrail:
    def __init__(self, store: AuditStore, *, tick_s: float = 1.0) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[tuple[Pending, Done] | None] = queue.SimpleQueue()
        self._tick_s = tick_s
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.failures = 0
        self.last_error: str | None = None

    # --- the sink interface ---------------------------------------------------------------

    def emit(self, event: AuditEvent) -> None:
        """Commit `event`; return once it is durable. Raise AuditUnavailable when it cannot be."""
        self.commit(event)

    def commit(self, event: AuditEvent) -> StoredEvent:
        item = pending(event)
        if self._writer is None:
            self._start()  # it also writes the interval checkpoints
        if self._queue.empty():  # nobody is waiting: commit in this thread, sparing two thread switches
            try:
                stored = self.store.try_append([item])
            except Exception as exc:  # noqa: BLE001 - the caller gets AuditUnavailable instead
                self._failed(exc, 1)
                raise AuditUnavailable("the audit trail cannot be written; retry later") from None
            if stored is not None:
                self.last_error = None
                return stored[0]
        future: Future[StoredEvent] = Future()

        def done(stored: StoredEvent | None, error: BaseException | None) -> None:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(stored)  # type: ignore[arg-type]

        self._submit(item, done)
        return future.result()

    async def record(self, event: AuditEvent) -> StoredEvent:
        """`commit` for the event loop: awaits the commit without blocking other requests."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[StoredEvent] = loop.create_future()

        def settle(stored: StoredEvent | None, error: BaseException | None) -> None:
            if waiter.done():  # the request was cancelled meanwhile
                return
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(stored)  # type: ignore[arg-type]

        def done(stored: StoredEvent | None, error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(settle, stored, error)

        self._submit(pending(event), done)
        return await waiter

    def search(self, **filters: Any) -> list[StoredEvent]:
        """Read events back (`AuditStore.search`): what the audit API serves to auditors."""
        return self.store.search(**filters)

    def find_watermark(self, watermark_id: str) -> list[StoredEvent]:
        """The events whose images carry `watermark_id` (`AuditStore.find_watermark`): for `zguard trace`."""
        return self.store.find_watermark(watermark_id)

    # --- lifecycle ------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, write a final checkpoint, stop the writer."""
        with self._lock:
            writer, self._writer = self._writer, None
            self._closed = True
        if writer is not None:
            self._queue.put(None)
            writer.join(timeout)
        try:
            self.store.checkpoint()
        except Exception:
            log.exception("could not write the closing audit checkpoint")

    def _submit(self, item: Pending, done: Done) -> None:
        if self._writer is None:
            self._start()
        self._queue.put((item, done))

    def _start(self) -> None:
        with self._lock:
            if self._closed:
                raise AuditUnavailable("the audit trail is closed; the server is stopping")
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="zguard-audit-writer", daemon=True)
                self._writer.start()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=self._tick_s)
            except queue.Empty:
                self._tick()
                continue
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[tuple[Pending, Done]]) -> None:
        try:
            stored = self.store.append([item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001 - every waiter gets AuditUnavailable instead
            self._failed(exc, len(batch))
            error = AuditUnavailable("the audit trail cannot be written, so the request was refused; retry later")
            for _, done in batch:
                done(None, error)
            return
        self.last_error = None
        for (_, done), event in zip(batch, stored, strict=False):
            done(event, None)

    def _failed(self, exc: BaseException, count: int) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        log.error("audit store write failed; refusing the %d request(s) it would record: %s", count, self.last_error)

    def _tick(self) -> None:
        """No traffic for a tick: write the interval checkpoint if one is due."""
        policy = self.store.checkpoints
        if policy is None or self.store.signer is None:
            return
        try:
            head = self.store.head()
            now_ms = int(self.store._clock() * 1000)
            if events_since_checkpoint(head.seq, head) and now_ms - head.checkpoint_ms >= policy.interval_ms:
                self.store.checkpoint()
        except Exception:
            log.warning("could not write the interval audit checkpoint", exc_info=True)
