"""The re-certification check in `serve`: deadlines that act without anybody reading a campaign.

A daemon thread calls `RecertificationService.run_due` (zguard.services.recertification) every
`approvals.recertification_check_interval_s`: it closes open campaigns past their deadline,
revoking the grants nobody confirmed, and opens the scheduled campaign when due. Decisions
written here:

- It runs whenever the server has a state database (the governance service exists), schedule
  or not: a check is a couple of indexed reads, and a campaign opened by hand must close at its
  deadline whether or not anybody schedules the next one.
- Every replica runs it; run_due is idempotent and race-safe on the store, so no lease is taken
  (a replica that dies mid-close leaves the rest to the next check, on any replica).
- The first check runs at once after the start (a deadline that passed while the server was down
  is acted on then), the next ones every interval. A failed check (the database, most likely) is
  logged and tried again at the next interval; it never stops the server. Where no server runs,
  `zguard approvals recertify --due` from cron does the same.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from zguard.services.recertification import DueReport

log = logging.getLogger("zguard.serve.recertification")
STOP_TIMEOUT_S = 10.0  # a check in progress may finish first


class RecertificationJob:
    """Calls `run_due` at once, then every `interval_s`, in a daemon thread; `stop()` at shutdown."""

    def __init__(self, run_due: Callable[[], DueReport], interval_s: float) -> None:
        self._run_due = run_due
        self.interval_s = interval_s
        self.last_error: str | None = None
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RecertificationJob:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="zguard-recertification", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def run_once(self) -> DueReport | None:
        """One check; None when it failed (logged, tried again at the next interval)."""
        self.runs += 1
        try:
            report = self._run_due()
        except Exception as exc:  # noqa: BLE001 - the database or the audit trail: logged, retried
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.error("re-certification check failed (tried again in %.0f s): %s", self.interval_s, self.last_error)
            return None
        self.last_error = None
        for campaign in report.closed:
            lapsed = sum(1 for i in campaign.items if i.decision == "lapsed")
            log.info(
                "re-certification campaign %d (%s) closed at its deadline; %d grant(s) not re-certified, revoked",
                campaign.id,
                campaign.quarter,
                lapsed,
            )
        if report.opened is not None:
            log.info(
                "re-certification campaign %d (%s) opened by the schedule, deadline %s",
                report.opened.id,
                report.opened.quarter,
                report.opened.deadline.isoformat(),
            )
        return report

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            self.run_once()
            delay = self.interval_s


def start_recertification(campaigns: Callable[[], DueReport] | None, interval_s: float) -> RecertificationJob | None:
    """The check started on `campaigns` (the governance service's `run_due`); None without one."""
    if campaigns is None:
        return None
    return RecertificationJob(campaigns, interval_s).start()
