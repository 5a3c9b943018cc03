"""Refusals of the protocol layer (zguard.serve.transport) as audit events, bounded under a flood.

Each refused connection or request becomes a `transport.refused` event (listener, client,
status, code, request id, phase), up to `per_client` events per client address and `total`
events in all per `window_s`. What is over either bound is only counted; at the end of the
window one `transport.refusals_suppressed` event says how many were left out, by code, and from
how many addresses. So a flood of refused connections costs at most `total + 1` events a window,
however many addresses it comes from; the per-address table holds at most `total` entries.

Decision (fail open): an event that cannot be written is logged, not retried. The connection
was refused either way and nothing was served; a broken trail shows up on the next request the
app answers, which is refused with 503 `audit_unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

from zguard.audit import AuditEvent, AuditSink
from zguard.serve.transport import Refusal

log = logging.getLogger("zguard.serve.transport")
PER_CLIENT_EVENTS = 10
TOTAL_EVENTS = 300
WINDOW_S = 60.0


class RefusalRecorder:
    """A `TransportGuard.on_refused` for `zguard serve`: call it on the event loop."""

    def __init__(
        self,
        audit: AuditSink,
        *,
        per_client: int = PER_CLIENT_EVENTS,
        total: int = TOTAL_EVENTS,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self._per_client = per_client
        self._total = total
        self._window_s = window_s
        self._clock = clock
        self._window_start = clock()
        self._by_client: Counter[str | None] = Counter()
        self._recorded = 0
        self._suppressed: Counter[str] = Counter()
        self._suppressed_clients: set[str | None] = set()
        self._summary_due: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task[object]] = set()

    def __call__(self, refusal: Refusal) -> None:
        self._roll_window()
        if self._by_client[refusal.client] >= self._per_client or self._recorded >= self._total:
            self._suppressed[refusal.code] += 1
            if len(self._suppressed_clients) < self._total:
                self._suppressed_clients.add(refusal.client)
            if self._summary_due is None:
                self._schedule_summary()
            return
        self._by_client[refusal.client] += 1
        self._recorded += 1
        self._write(
            AuditEvent(
                type="transport.refused",
                outcome="denied",
                code=refusal.code,
                request_id=refusal.request_id,
                listener=refusal.listener,
                client=refusal.client,
                detail={"phase": refusal.phase},
                http={"status": refusal.status},
            )
        )

    def _schedule_summary(self) -> None:
        delay = max(0.0, self._window_start + self._window_s - self._clock())
        self._summary_due = asyncio.get_running_loop().call_later(delay, self._summary_time)

    def _summary_time(self) -> None:
        """The window's end, when refusals were left out: report them even if no more come."""
        self._summary_due = None
        if self._clock() < self._window_start + self._window_s:  # the loop's timers may fire a hair early
            self._schedule_summary()
        else:
            self._roll_window()

    def _roll_window(self) -> None:
        """Start a new window when this one is over, first reporting what it left out."""
        now = self._clock()
        if now < self._window_start + self._window_s:
            return
        if self._summary_due is not None:
            self._summary_due.cancel()
            self._summary_due = None
        if self._suppressed:
            codes = ",".join(f"{code}:{count}" for code, count in sorted(self._suppressed.items()))
            self._write(
                AuditEvent(
                    type="transport.refusals_suppressed",
                    outcome="denied",
                    detail={
                        "suppressed": sum(self._suppressed.values()),
                        "codes": codes,
                        "clients": len(self._suppressed_clients),
                        "window_s": self._window_s,
                    },
                )
            )
        self._window_start = now
        self._by_client.clear()
        self._recorded = 0
        self._suppressed.clear()
        self._suppressed_clients.clear()

    def _write(self, event: AuditEvent) -> None:
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(self._record(event))
        self._writes.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._writes.discard)

    async def _record(self, event: AuditEvent) -> object:
        try:
            return await self._audit.record(event)
        except Exception:  # fail open: see the module docstring
            log.exception("could not record %s in the audit trail", event.type)
            return None
