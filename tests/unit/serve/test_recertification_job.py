"""zguard.serve.recertification: serve's thread calls run_due at once and then every interval,
keeps going after a failure, and stops at shutdown."""

from __future__ import annotations

import logging
import threading

import pytest

from zguard.serve.recertification import RecertificationJob, start_recertification
from zguard.services.recertification import DueReport

WAIT_S = 30.0  # generous: a loaded CI machine; never part of an assertion


class FakeCampaigns:
    """run_due that fails on the second call, then records the rest; `third` is set on the third."""

    def __init__(self) -> None:
        self.calls = 0
        self.third = threading.Event()

    def run_due(self) -> DueReport:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("database unreachable")
        if self.calls >= 3:
            self.third.set()
        return DueReport()


def test_the_thread_runs_the_check_again_after_a_failure_and_stops(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeCampaigns()
    job = RecertificationJob(fake.run_due, interval_s=0.01)
    with caplog.at_level(logging.ERROR, logger="zguard.serve.recertification"):
        job.start()
        try:
            assert fake.third.wait(WAIT_S)
        finally:
            job.stop()
    assert "re-certification check failed" in caplog.text
    assert "database unreachable" in caplog.text
    assert job.runs == fake.calls >= 3  # joined: the thread is gone, nothing calls after the stop


def test_the_first_check_runs_at_once_not_after_the_interval() -> None:
    called = threading.Event()

    def run_due() -> DueReport:
        called.set()
        return DueReport()

    job = start_recertification(run_due, interval_s=3600)
    assert job is not None
    try:
        assert called.wait(WAIT_S)
    finally:
        job.stop()
    assert job.last_error is None


def test_no_state_database_no_thread() -> None:
    assert start_recertification(None, interval_s=300) is None


def test_a_failed_check_is_recorded_and_the_next_one_clears_it() -> None:
    fake = FakeCampaigns()
    job = RecertificationJob(fake.run_due, interval_s=300)
    assert job.run_once() is not None
    assert job.run_once() is None
    assert job.last_error == "RuntimeError: database unreachable"
    assert job.run_once() == DueReport()
    assert job.last_error is None
