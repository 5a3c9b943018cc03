"""Benchmark: a legitimate client's latency while the same listener is abused at the transport level.

Run it with ``.venv/bin/python bench/bench_edge_abuse.py [--duration S] [--idle N] [--slow N]
[--oversized N]``. It prints ONE JSON object on stdout; progress goes to stderr. It is a
measurement, not a test: a p95 over target only sets ``p95_ok`` to false (a broken setup, such as
a server that stops answering, makes the script exit 1).

The server is a real ``zguard serve`` process (demo model, authentication off on loopback, the
default transport limits: 1024 connections per listener, 128 per client address, 16 KiB of
headers, 10 s for them), logging at info to a file. The legitimate client, in this process, sends
``GET /v1/models`` ``--rate`` times a second on a keep-alive ``httpx`` connection from 127.0.0.1
(paced, not back to back: it measures latency, not the server's capacity, and stays under the
default 600/minute rate of ``rate_limits.other_routes``) and times each answer (200 only; anything
else counts as an error). ``server_cpu_cores`` is the server process's CPU over each phase.

Phases of ``--duration`` seconds each: ``unattacked_before``, then ``attacked``, then
``unattacked_after``; the baseline is the mean of the two unattacked p95s, measured in the same
run, so load from other work on the machine cancels out as far as it can. ``p95_ok``: the attacked
p95 is at most ``TARGET_P95_RATIO`` times the baseline. The attack runs in a separate process at the lowest
CPU priority (``nice 19``: it does not compete for this process's GIL, and a real attacker's CPU is
not the server's), from many loopback addresses (127.1.x.y: a
distributed attack, under the per-address cap), for the whole attacked phase plus a ramp:
``--idle`` sockets that connect and send nothing (reconnecting when closed), ``--slow`` sockets
that send their headers one byte a second (reconnecting after their 408) and ``--oversized``
senders that each send a header value of ``--oversized-mib`` MiB (reconnecting after their 431).
``attack`` reports what the attackers saw: connections opened, closed by the server without an
answer, and answers by status. ``server_log_bytes_during_attack`` says how much the server logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

TARGET_P95_RATIO = 2.0
RAMP_S = 4.0
SOCKETS_PER_ADDRESS = 40


def log(message: str) -> None:
    print(f"[bench_edge_abuse] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench.machine
from bench.machine import machine_info as shared_machine_info  # noqa: E402


def machine_info() -> dict[str, Any]:
    return shared_machine_info(("uvicorn", "httptools", "fastapi", "starlette"))


# --- the server --------------------------------------------------------------------------------


def start_server(work: Path, api_port: int) -> tuple[subprocess.Popen[bytes], Path]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ZGUARD_")},
        "ZGUARD_STATE_DIR": str(work / "state"),
        "ZGUARD_API_AUTH__ENABLED": "false",
        "ZGUARD_INTEGRITY__ALLOW_ROOT": "true",
        "ZGUARD_API__PORT": str(api_port),
        "ZGUARD_CONSOLE__PORT": str(free_port()),
        "ZGUARD_LOG_LEVEL": "info",
    }
    log_path = work / "server.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zguard", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"zguard serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=2).status_code == 200:
                return proc, log_path
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("zguard serve did not become ready")


# --- the legitimate client -----------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(api_port: int, duration: float, server_pid: int, rate: float) -> dict[str, Any]:
    latencies: list[float] = []
    cpu_before, wall_before = process_cpu_s(server_pid), time.monotonic()
    errors: Counter[str] = Counter()
    with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:
        end = time.monotonic() + duration
        due = time.monotonic()
        while due < end:
            time.sleep(max(0.0, due - time.monotonic()))
            due = max(due + 1 / rate, time.monotonic())
            started = time.perf_counter()
            try:
                status = client.get("/v1/models").status_code
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                continue
            if status == 200:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors[str(status)] += 1
    server_cpu = (process_cpu_s(server_pid) - cpu_before) / (time.monotonic() - wall_before)
    if len(latencies) < 20:
        raise RuntimeError(f"the legitimate client got only {len(latencies)} answers (errors: {dict(errors)})")
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(cuts[94], 2),
        "p99_ms": round(cuts[98], 2),
        "max_ms": round(max(latencies), 2),
        "errors": dict(errors),
        "server_cpu_cores": round(server_cpu, 2),
    }


# --- the attackers (a separate process) ---------------------------------------------------------


async def _open(port: int, source: str, stats: Counter[str]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    stats["opened"] += 1
    return reader, writer


async def _answer(reader: asyncio.StreamReader, stats: Counter[str], kind: str) -> None:
    """Read until the server closes; count its answer's status, or a close without one."""
    try:
        data = await reader.read(64)
        while await reader.read(65536):
            pass
    except OSError:
        data = b""
    status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed_without_answer"
    stats[f"{kind}:{status}"] += 1


async def _idle(port: int, source: str, stop: asyncio.Event, stats: Counter[str]) -> None:
    while not stop.is_set():
        try:
            reader, writer = await _open(port, source, stats)
            await _answer(reader, stats, "idle")
            writer.close()
        except OSError:
            stats["idle:connect_failed"] += 1
            await asyncio.sleep(0.1)


async def _slow(port: int, source: str, stop: asyncio.Event, stats: Counter[str]) -> None:
    while not stop.is_set():
        try:
            reader, writer = await _open(port, source, stats)
            writer.write(b"GET /v1/models HTTP/1.1\r\nHost: zguard\r\nX-Slow: ")
            answered = asyncio.ensure_future(_answer(reader, stats, "slow"))
            while not answered.done() and not stop.is_set():
                with contextlib.suppress(OSError):
                    writer.write(b"a")
                await asyncio.wait([answered], timeout=1.0)
            answered.cancel()
            writer.close()
        except OSError:
            stats["slow:connect_failed"] += 1
            await asyncio.sleep(0.1)


async def _oversized(port: int, source: str, mib: int, stop: asyncio.Event, stats: Counter[str]) -> None:
    chunk = b"a" * (1 << 20)
    while not stop.is_set():
        try:
            reader, writer = await _open(port, source, stats)
            answered = asyncio.ensure_future(_answer(reader, stats, "oversized"))
            writer.write(b"GET /v1/models HTTP/1.1\r\nHost: zguard\r\nX-Big: ")
            with contextlib.suppress(OSError):
                for _ in range(mib):
                    if answered.done() or stop.is_set():
                        break
                    writer.write(chunk)
                    await writer.drain()
                    stats["oversized:mib_sent"] += 1
            await asyncio.wait([answered], timeout=5)
            answered.cancel()
            writer.close()
        except OSError:
            stats["oversized:connect_failed"] += 1
            await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Attack:
    port: int
    idle: int
    slow: int
    oversized: int
    mib: int
    seconds: float


async def _attack(attack: Attack) -> dict[str, int]:
    port = attack.port
    stats: Counter[str] = Counter()
    stop = asyncio.Event()

    def source(n: int, block: int) -> str:
        return f"127.{block}.{n // SOCKETS_PER_ADDRESS}.{n % SOCKETS_PER_ADDRESS + 1}"

    tasks = [asyncio.ensure_future(_idle(port, source(n, 1), stop, stats)) for n in range(attack.idle)]
    tasks += [asyncio.ensure_future(_slow(port, source(n, 2), stop, stats)) for n in range(attack.slow)]
    tasks += [
        asyncio.ensure_future(_oversized(port, source(n, 3), attack.mib, stop, stats)) for n in range(attack.oversized)
    ]
    await asyncio.sleep(attack.seconds)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return dict(sorted(stats.items()))


def attack_process(attack: Attack, out: Any) -> None:
    import resource

    # In a real attack the attackers' CPU is not the server's: at the lowest priority, the
    # attacker here takes only what the server and the legitimate client leave on a small machine.
    os.nice(19)
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    stats: dict[str, Any] = asyncio.run(_attack(attack))
    stats["attacker_cpu_s"] = round(process_cpu_s(os.getpid()), 1)
    out.put(stats)


# --- the run ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument(
        "--rate",
        type=float,
        default=15.0,
        help="the legitimate client's requests per second (under other_routes' 600/min)",
    )
    parser.add_argument("--idle", type=int, default=1000, help="sockets that send nothing")
    parser.add_argument("--slow", type=int, default=50, help="sockets that send headers one byte a second")
    parser.add_argument("--oversized", type=int, default=4, help="senders of an oversized header value")
    parser.add_argument("--oversized-mib", type=int, default=64, help="MiB of header value each tries to send")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0 or min(args.idle, args.slow, args.oversized) < 0 or args.oversized_mib < 1:
        parser.error("need --duration > 0, --rate > 0, counts >= 0, --oversized-mib >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zguard-bench-edge-") as tmp:
        api_port = free_port()
        log("starting zguard serve (demo model)")
        try:
            server, log_path = start_server(Path(tmp), api_port)
        except RuntimeError as exc:
            log(f"FAILED: {exc}")
            return 1
        try:
            log("unattacked")
            before = measure(api_port, args.duration, server.pid, args.rate)
            log(f"attack: {args.idle} idle, {args.slow} slow-header, {args.oversized} oversized-header sockets")
            results: Any = multiprocessing.get_context("spawn").Queue()
            attacker = multiprocessing.get_context("spawn").Process(
                target=attack_process,
                args=(
                    Attack(api_port, args.idle, args.slow, args.oversized, args.oversized_mib, RAMP_S + args.duration),
                    results,
                ),
            )
            attacker.start()
            time.sleep(RAMP_S)
            log_before = log_path.stat().st_size
            attacked = measure(api_port, args.duration, server.pid, args.rate)
            log_growth = log_path.stat().st_size - log_before
            attack = results.get(timeout=60)
            attacker.join(30)
            time.sleep(1)
            log("unattacked again")
            after = measure(api_port, args.duration, server.pid, args.rate)
        except RuntimeError as exc:
            log(f"FAILED: {exc}")
            return 1
        finally:
            server.terminate()
            server.wait(60)
    baseline = (before["p95_ms"] + after["p95_ms"]) / 2
    ratio = attacked["p95_ms"] / baseline
    result = {
        "benchmark": "zguard transport limits: legitimate GET /v1/models latency under idle, slow-header and "
        "oversized-header attack on the same listener",
        "parameters": {
            "seconds_per_phase": args.duration,
            "legitimate_requests_per_s": args.rate,
            "idle_sockets": args.idle,
            "slow_header_sockets": args.slow,
            "oversized_header_senders": args.oversized,
            "oversized_mib": args.oversized_mib,
            "attack_sources": f"127.1-3.x.y, {SOCKETS_PER_ADDRESS} sockets per address",
            "server": "zguard serve, demo model, default transport limits, log level info to a file",
        },
        "machine": machine_info(),
        "unattacked_before": before,
        "attacked": attacked,
        "unattacked_after": after,
        "baseline_p95_ms": round(baseline, 2),
        "p95_ratio_to_baseline": round(ratio, 2),
        "target_p95_ratio": TARGET_P95_RATIO,
        "p95_ok": ratio <= TARGET_P95_RATIO,
        "attack": attack,
        "server_log_bytes_during_attack": log_growth,
        "bench_wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
