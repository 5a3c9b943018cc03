"""Benchmark: what hostile `POST /v1/provenance/trace` uploads cost a served zguard (issue 14).

Run it with ``.venv/bin/python bench/bench_trace_abuse.py [--seconds S] [--generations N] [--out FILE]``.
It prints ONE JSON object on stdout; progress goes to stderr. A measurement, not a test: only a
broken server makes it exit 1.

What runs: ``python -m zguard serve`` as a subprocess (`tests.common.servers.ZguardProcess`: a
temporary state dir, the demo model built there on first start, free loopback ports,
authentication on), with one auditor and one generator service account whose tokens
``zguard user add`` / ``zguard token create`` made before the start. Settings are the defaults
(``provenance.trace_workers`` 2, ``trace_max_pixels`` 2048², ``trace_timeout_s`` 30).

``unloaded`` / ``after``: ``--generations`` sequential 64×64 generations (2 steps, the demo model,
watermarked and encoded as served) with nothing else running, before and after the attack: the
same-run baseline (``after`` shows drift).
``attack``: for ``--seconds``, ``--parallel`` (12, the issue's figure) client threads post hostile
uploads back to back, cycling through the issue's 4 kB 2048² PNG of zeros, the 2.4 kB PNG that
declares 8000×8000 and stops after 100 rows, an EPS file and a GIF; a thread refused with 503
waits the Retry-After (at most 5 s) before its next upload, as the issue's clients each waited
for their answer (an upload flood without pause is the rate limiter's case, bench_auth's flood:
``rate_limits.other_routes`` is raised here so that it does not hide the trace limits).
Meanwhile the same 64×64 generations run one after the other (``loaded``). ``outcomes`` counts
the answers by upload, status and error code.
``memory``: the server's resident set from ``/proc/<pid>/status``: ``VmRSS`` before the attack and
the peak (``VmHWM``, reset through ``/proc/<pid>/clear_refs`` just before the attack, so the
model load's peak does not count); ``peak_growth_mib`` is the difference, against
``target_peak_growth_mib`` (512). ``latency``: ``ratio_loaded_over_unloaded`` compares the
medians, against ``target_ratio`` (2.0). Before this issue the same attack took +12.5 GB (one
truncated upload) and moved a 64×64 generation from 0.08 s to 28 s (12 uploads of 2048²).
The ``machine`` figures say whether other work competed for the CPUs during the run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' hostile uploads and server helper

from tests.common.hostile_images import refused_upload, tiny_file_bomb, truncated_bomb
from tests.common.servers import ZguardProcess

TRACE = "/v1/provenance/trace"
GENERATION = {"prompt": "a lighthouse on a cliff", "size": "64x64", "num_inference_steps": 2}
TARGET_PEAK_GROWTH_MIB = 512
TARGET_RATIO = 2.0
OTHER_ROUTES_RATE = "1000000/minute"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def zguard(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "zguard", *args], env=env, capture_output=True, text=True, check=False, timeout=300
    )
    if done.returncode != 0:
        log(f"zguard {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        raise SystemExit(1)
    return done.stdout


def service_token(env: dict[str, str], name: str, role: str) -> str:
    zguard(env, "user", "add", name, "--service", "--role", role)
    return zguard(env, "token", "create", "--user", name).strip().splitlines()[-1].strip()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid`, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def generate(client: httpx.Client, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    resp = client.post("/v1/images/generations", json=GENERATION, headers=headers)
    elapsed = time.perf_counter() - started
    if resp.status_code != 200:
        log(f"generation failed: {resp.status_code} {resp.text}")
        raise SystemExit(1)
    return elapsed


def latencies(base: str, headers: dict[str, str], count: int) -> list[float]:
    with httpx.Client(base_url=base, timeout=120) as client:
        return [generate(client, headers) for _ in range(count)]


def summary(samples: list[float]) -> dict[str, float | int]:
    ordered = sorted(samples)
    return {
        "n": len(samples),
        "median_s": round(statistics.median(samples), 4),
        "p95_s": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 4),
        "max_s": round(ordered[-1], 4),
    }


UPLOADS: list[tuple[str, bytes]] = [
    ("png_2048_zeros_4kB", tiny_file_bomb(2048)),
    ("png_8000_truncated", truncated_bomb()),
    ("eps", refused_upload("EPS")),
    ("gif", refused_upload("GIF")),
]


def attack(base: str, headers: dict[str, str], parallel: int, stop: threading.Event) -> collections.Counter[str]:
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def hammer(worker: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            i = worker
            while not stop.is_set():
                name, blob = UPLOADS[i % len(UPLOADS)]
                i += 1
                resp = client.post(TRACE, content=blob, headers={**headers, "content-type": "image/png"})
                code = resp.json().get("error", {}).get("code") if resp.status_code != 200 else "traced"
                with lock:
                    outcomes[f"{name} {resp.status_code} {code}"] += 1
                if resp.status_code in (429, 503):  # as the clients: each upload waits for its answer
                    stop.wait(min(float(resp.headers.get("retry-after", "1")), 5.0))

    threads = [threading.Thread(target=hammer, args=(w,), daemon=True) for w in range(parallel)]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(150)
    return outcomes


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Serve, measure unloaded, attack and measure, measure again; the raw figures."""
    with tempfile.TemporaryDirectory(prefix="zguard-bench-trace-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir(mode=0o700)
        # The per-principal request rate (rate_limits.other_routes, 600/minute) would refuse most
        # of the uploads before the trace route: raised, so the trace limits are what is measured.
        server = ZguardProcess(
            state, env={"ZGUARD_API_AUTH__ENABLED": "true", "ZGUARD_RATE_LIMITS__OTHER_ROUTES": OTHER_ROUTES_RATE}
        )
        zguard(server.env, "init")
        auditor = {"authorization": f"Bearer {service_token(server.env, 'auditor1', 'auditor')}"}
        generator = {"authorization": f"Bearer {service_token(server.env, 'gen1', 'generator')}"}
        with server:
            log("starting zguard serve (builds the demo model on first start)")
            ready_s = server.wait_ready(timeout=600)
            assert server.proc is not None
            pid = server.proc.pid
            log(f"ready after {ready_s:.1f} s; warming up")
            latencies(server.api, generator, 3)
            with httpx.Client(base_url=server.api, timeout=120) as client:  # the trace path's imports
                client.post(TRACE, content=tiny_file_bomb(256), headers={**auditor, "content-type": "image/png"})
            unloaded = latencies(server.api, generator, args.generations)
            log(f"unloaded: median {statistics.median(unloaded):.3f} s")
            before = proc_status(pid)
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := the current RSS
            stop = threading.Event()
            found: dict[str, collections.Counter[str]] = {}
            attacker = threading.Thread(
                target=lambda: found.update(outcomes=attack(server.api, auditor, args.parallel, stop)), daemon=True
            )
            started = time.perf_counter()
            attacker.start()
            loaded: list[float] = []
            with httpx.Client(base_url=server.api, timeout=120) as client:
                time.sleep(1.0)  # let the uploads fill the trace pool first
                while time.perf_counter() - started < args.seconds:
                    loaded.append(generate(client, generator))
            stop.set()
            attacker.join(200)
            during = proc_status(pid)
            log(f"loaded: median {statistics.median(loaded):.3f} s over {len(loaded)} generations")
            after = latencies(server.api, generator, args.generations)
            exit_status = server.stop()
    return {
        "ready_s": ready_s,
        "exit_status": exit_status,
        "unloaded": unloaded,
        "loaded": loaded,
        "after": after,
        "before": before,
        "during": during,
        "outcomes": found.get("outcomes", collections.Counter()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the attack")
    parser.add_argument("--parallel", type=int, default=12, help="client threads posting hostile uploads")
    parser.add_argument("--generations", type=int, default=10, help="64x64 generations per unloaded phase")
    parser.add_argument("--out", type=Path, help="also write the JSON here (e.g. bench/results/trace-abuse-DATE.json)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    run = measure(args)
    growth_mib = (run["during"]["VmHWM"] - run["before"]["VmRSS"]) / 1024
    ratio = statistics.median(run["loaded"]) / statistics.median(run["unloaded"])
    result: dict[str, Any] = {
        "benchmark": "trace_abuse",
        "settings": {
            "trace_workers": 2,
            "trace_max_pixels": 2048 * 2048,
            "trace_timeout_s": 30.0,
            "rate_limits.other_routes": OTHER_ROUTES_RATE,
        },
        "attack": {
            "seconds": args.seconds,
            "parallel_uploads": args.parallel,
            "uploads": {name: len(blob) for name, blob in UPLOADS},
            "outcomes": dict(sorted(run["outcomes"].items())),
        },
        "memory": {
            "rss_before_mib": round(run["before"]["VmRSS"] / 1024, 1),
            "peak_during_attack_mib": round(run["during"]["VmHWM"] / 1024, 1),
            "peak_growth_mib": round(growth_mib, 1),
            "target_peak_growth_mib": TARGET_PEAK_GROWTH_MIB,
            "ok": growth_mib <= TARGET_PEAK_GROWTH_MIB,
        },
        "latency": {
            "unloaded": summary(run["unloaded"]),
            "loaded": summary(run["loaded"]),
            "after": summary(run["after"]),
            "ratio_loaded_over_unloaded": round(ratio, 3),
            "target_ratio": TARGET_RATIO,
            "ok": ratio <= TARGET_RATIO,
        },
        "serve": {"ready_s": round(run["ready_s"], 1), "exit_status": run["exit_status"]},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    text = json.dumps(result, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
