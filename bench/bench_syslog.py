"""Benchmark: syslog forwarding throughput to a real rsyslog over TCP and TLS.

Run it with ``.venv/bin/python bench/bench_syslog.py [--events N] [--rate R] [--duration S]``.
It prints ONE JSON object on stdout; progress goes to stderr. A measurement, not a test: figures
under target only set ``keeps_up`` to false (a broken setup makes the script exit 1).

rsyslogd (installed when missing, as the tests do) runs on loopback with the tests' configuration
(``tests/common/rsyslog.py``): each message written raw to a file, as a collector that stores
what it gets. "Arrived" below means rsyslog has written the message's line to that file. Events
are about 900 bytes of canonical JSON, like a generation's; the outbox is in memory
(``tests/common/outbox.py``), so the store's own reads are not in these figures.

``format``
    `format_message` alone, events per second on one core: the CPU cost per event.
``<transport>.baseline_raw``
    The same messages, formatted beforehand, written by one transport straight to rsyslog in
    batches of ``batch_size``: what this rsyslog and loopback take at most. The baseline.
``<transport>.backlog``
    ``--events`` events already stored when the forwarder starts (a collector outage just ended):
    events per second until all arrived, and ``ratio_to_baseline``.
``<transport>.live``
    Events appended at ``--rate`` per second for ``--duration`` seconds while the forwarder runs
    (zguard under load): the largest gap between stored and arrived events, how long after the last
    append everything had arrived (``catch_up_s``), and when the durable cursor had passed it all
    (it trails by the settle time on purpose). ``keeps_up``: appends ran at ≥ 95 % of the rate and
    everything arrived within 2 s of the last append.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' rsyslog and outbox helpers

from tests.common.outbox import MemoryOutbox
from tests.common.pki import make_pki
from tests.common.rsyslog import Input, Rsyslog, rsyslogd_unavailable

from zguard.audit.forwarder import CURSOR_NAME, SETTLE_S, Forwarder
from zguard.audit.syslog import format_message
from zguard.audit.syslog_transport import open_transport
from zguard.config import SyslogSettings

TARGET_RATE = 2000  # events/s the issue asks forwarding to keep up with


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def realistic_fields(i: int) -> dict[str, Any]:
    return {
        "type": "generation.completed",
        "outcome": "done",
        "principal": f"analyst{i % 50:02d}",
        "roles": ["generator"],
        "auth_method": "token",
        "client": f"10.20.{i % 256}.{(i * 7) % 256}",
        "request_id": f"{i:032x}",
        "model": {"id": "z-image-turbo", "manifest_sha256": "9f" * 32},
        "params": {"width": 1024, "height": 1024, "steps": 8, "seed": i, "n": 1, "output_format": "png"},
        "prompt": {"hmac_sha256": f"{i:064x}", "length": 42},
        "policy": {"verdict": "allowed", "findings": []},
        "latency_ms": 1234.5,
        "images": [{"sha256": "ab" * 32, "watermark_id": f"wm-{i:016x}"}],
    }


class ArrivalCounter:
    """Counts the lines rsyslog has written to one output file, reading only what is new."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._offset = 0

    def poll(self) -> int:
        if self.path.exists():
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
            self._offset += len(chunk)
            self.count += chunk.count(b"\n")
        return self.count

    def wait_for(self, count: int, timeout: float) -> float | None:
        """Seconds until `count` lines are there, or None after `timeout`."""
        began = time.monotonic()
        while self.poll() < count:
            if time.monotonic() - began > timeout:
                return None
            time.sleep(0.005)
        return time.monotonic() - began


def bench_format(events: int) -> dict[str, Any]:
    outbox = MemoryOutbox()
    stored = [outbox.append(**realistic_fields(i)) for i in range(events)]
    settings = SyslogSettings(transport="tcp")
    began = time.perf_counter()
    sizes = [len(format_message(e, settings=settings, hostname="bench-host", procid=1)) for e in stored]
    elapsed = time.perf_counter() - began
    return {
        "events": events,
        "events_per_s": round(events / elapsed),
        "us_per_event": round(elapsed / events * 1e6, 1),
        "message_bytes_avg": round(sum(sizes) / len(sizes)),
    }


def bench_raw(rsyslog: Rsyslog, name: Input, events: int, settings: SyslogSettings) -> dict[str, Any]:
    outbox = MemoryOutbox()
    messages = [
        format_message(outbox.append(**realistic_fields(i)), settings=settings, hostname="bench-host", procid=1)
        for i in range(events)
    ]
    counter = ArrivalCounter(rsyslog.output(name))
    start_count = counter.poll()
    transport = open_transport(settings)
    began = time.monotonic()
    for i in range(0, events, settings.batch_size):
        transport.send(messages[i : i + settings.batch_size])
    waited = counter.wait_for(start_count + events, timeout=120)
    elapsed = time.monotonic() - began
    transport.close()
    if waited is None:
        raise RuntimeError(f"{name}: only {counter.count - start_count} of {events} raw messages arrived")
    return {"events": events, "events_per_s": round(events / elapsed)}


def bench_backlog(rsyslog: Rsyslog, name: Input, events: int, settings: SyslogSettings) -> dict[str, Any]:
    outbox = MemoryOutbox()
    for i in range(events):
        outbox.append(**realistic_fields(i))
    counter = ArrivalCounter(rsyslog.output(name))
    start_count = counter.poll()
    forwarder = Forwarder(outbox, settings, hostname="bench-host")
    forwarder.start()
    arrived = counter.wait_for(start_count + events, timeout=120)
    delivered = forwarder.close(timeout=10)
    if arrived is None or not delivered:
        raise RuntimeError(f"{name}: backlog not delivered: {forwarder.status()}")
    return {
        "events": events,
        "arrived_s": round(arrived, 3),
        "events_per_s": round(events / arrived),
        "cursor": outbox.cursor(CURSOR_NAME),
    }


def bench_live(rsyslog: Rsyslog, name: Input, rate: float, duration: float, settings: SyslogSettings) -> dict[str, Any]:
    outbox = MemoryOutbox()
    counter = ArrivalCounter(rsyslog.output(name))
    start_count = counter.poll()
    forwarder = Forwarder(outbox, settings, hostname="bench-host")
    forwarder.start()
    total = int(rate * duration)
    finished = threading.Event()
    appended_for: list[float] = []

    def append_at_rate() -> None:
        began = time.monotonic()
        done = 0
        while done < total:
            due = min(total, int((time.monotonic() - began) * rate) + 1)
            while done < due:
                outbox.append(**realistic_fields(done))
                done += 1
            time.sleep(0.002)
        appended_for.append(time.monotonic() - began)
        finished.set()

    appender = threading.Thread(target=append_at_rate, name="appender")
    appender.start()
    max_gap = max_cursor_lag = 0
    while not finished.is_set():
        head = outbox.head_seq()
        max_gap = max(max_gap, head - (counter.poll() - start_count))
        max_cursor_lag = max(max_cursor_lag, forwarder.lag())
        time.sleep(0.05)
    appender.join()
    catch_up = counter.wait_for(start_count + total, timeout=60)
    cursor_began = time.monotonic()
    while outbox.cursor(CURSOR_NAME) < total and time.monotonic() - cursor_began < 30:
        time.sleep(0.01)
    cursor_after = time.monotonic() - cursor_began + (catch_up or 0.0)
    forwarder.close(timeout=10)
    achieved = total / appended_for[0]
    keeps_up = achieved >= 0.95 * rate and catch_up is not None and catch_up <= 2.0
    return {
        "target_rate": rate,
        "appended": total,
        "append_rate": round(achieved),
        "max_stored_not_arrived": max_gap,
        "max_cursor_lag": max_cursor_lag,
        "catch_up_s": None if catch_up is None else round(catch_up, 3),
        "cursor_caught_up_s": round(cursor_after, 3),
        "keeps_up": keeps_up,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="events in the backlog and baseline runs")
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="appends per second in the live run")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of appends in the live run")
    parser.add_argument("--transports", default="tcp,tls", help="comma-separated: tcp, tls")
    args = parser.parse_args()

    reason = rsyslogd_unavailable()
    if reason is not None:
        log(f"cannot run: {reason}")
        return 1
    banner = subprocess.run(["rsyslogd", "-v"], capture_output=True, text=True, check=False).stdout.split()
    version = banner[1] if len(banner) > 1 else "unknown"
    result: dict[str, Any] = {
        "benchmark": "syslog_forwarding",
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "rsyslog": version},
        "settle_s": SETTLE_S,
        "target_events_per_s": TARGET_RATE,
    }
    log("formatting...")
    result["format"] = bench_format(min(args.events, 20_000))
    with tempfile.TemporaryDirectory(prefix="zguard-bench-syslog-") as tmp:
        pki = make_pki(Path(tmp) / "pki")
        with Rsyslog(Path(tmp) / "rsyslog", pki) as rsyslog:
            for name in args.transports.split(","):
                transport: Input = "tls" if name.strip() == "tls" else "tcp"
                settings = rsyslog.settings(transport, timeout_s=10.0, max_backoff_s=1.0)
                log(f"{transport}: baseline...")
                section: dict[str, Any] = {"batch_size": settings.batch_size}
                section["baseline_raw"] = bench_raw(rsyslog, transport, args.events, settings)
                log(f"{transport}: backlog...")
                section["backlog"] = bench_backlog(rsyslog, transport, args.events, settings)
                section["backlog"]["ratio_to_baseline"] = round(
                    section["backlog"]["events_per_s"] / section["baseline_raw"]["events_per_s"], 2
                )
                log(f"{transport}: live at {args.rate:g}/s for {args.duration:g} s...")
                section["live"] = bench_live(rsyslog, transport, args.rate, args.duration, settings)
                result[transport] = section
    result["keeps_up"] = all(
        result[name]["live"]["keeps_up"] for name in ("tcp", "tls") if name in result and "live" in result[name]
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
