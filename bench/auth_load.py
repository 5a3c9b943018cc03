"""The load clients of bench_auth.py's ``http`` part: wrk when it is on ``PATH``, else a minimal asyncio
HTTP/1.1 client in a spawned process; both run every scenario right after a baseline slice, round by
round (see bench_auth.py's docstring for the method)."""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method != "GET":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _one_connection(port: int, request: bytes, deadline: float, statuses: collections.Counter[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            statuses[int(head[9:12])] += 1
            lower = head.lower()
            start = lower.find(b"content-length:")
            length = int(lower[start + 15 : lower.find(b"\r\n", start)]) if start >= 0 else 0
            await reader.readexactly(length)
            if b"connection: close" in lower:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def _load(port: int, request: bytes, seconds: float, connections: int) -> tuple[collections.Counter[int], float]:
    statuses: collections.Counter[int] = collections.Counter()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(_one_connection(port, request, deadline, statuses) for _ in range(connections)))
    return statuses, time.perf_counter() - started


def run_client(  # noqa: PLR0917 - a multiprocessing target takes positional arguments
    port: int, scenarios: list[dict[str, Any]], rounds: int, seconds: float, connections: int, out: Any
) -> None:
    """The load generator, in its own process: every scenario once per round, for `seconds`."""

    async def main() -> dict[str, Any]:
        results: dict[str, Any] = {
            s["name"]: {"rps": [], "ratios": [], "unexpected": collections.Counter()} for s in scenarios
        }

        async def run(scenario: dict[str, Any]) -> float:
            statuses, elapsed = await _load(port, bytes.fromhex(scenario["request"]), seconds, connections)
            rps = statuses.pop(scenario["status"], 0) / elapsed
            results[scenario["name"]]["rps"].append(rps)
            results[scenario["name"]]["unexpected"].update(statuses)
            return rps

        for scenario in scenarios:  # warm-up: caches, lock-outs, connections
            await _load(port, bytes.fromhex(scenario["request"]), min(0.5, seconds), connections)
        baseline, others = scenarios[0], scenarios[1:]
        for _ in range(rounds):
            # Each scenario right after a baseline slice, compared with it: the machine's drift and
            # other work on it hit both alike.
            for scenario in others:
                before = await run(baseline)
                rps = await run(scenario)
                results[scenario["name"]]["ratios"].append(rps / before if before else 0.0)
            if not others:
                await run(baseline)
        return {
            name: {
                "rps": r["rps"],
                "ratios": r["ratios"],
                "unexpected": {str(k): v for k, v in r["unexpected"].items()},
            }
            for name, r in results.items()
        }

    out.put(asyncio.run(main()))


def load_from_another_process(
    port: int, spec: list[dict[str, Any]], rounds: int, seconds: float, connections: int
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    out = context.SimpleQueue()
    client = context.Process(target=run_client, args=(port, spec, rounds, seconds, connections, out))
    client.start()
    client.join(timeout=60 + len(spec) * (rounds + 1) * (seconds + 1))
    if client.exitcode != 0 or out.empty():
        client.kill()
        raise RuntimeError(f"the load client failed (exit {client.exitcode})")
    results: dict[str, Any] = out.get()
    return results


@dataclass(frozen=True)
class Scenario:
    name: str
    status: int
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    what: str

    def raw(self) -> bytes:
        return request_bytes(self.method, self.path, self.headers, self.body)


WRK_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)\b", re.MULTILINE)
WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
WRK_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses: (\d+)", re.MULTILINE)
WRK_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_LATENCY = re.compile(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk_seconds(seconds: float) -> int:
    return max(1, round(seconds))  # wrk's -d takes whole seconds


def wrk_once(port: int, scenario: Scenario, seconds: int, connections: int, script_dir: Path) -> dict[str, Any]:
    """One wrk run of `scenario`: the rate answered with its status class, and what was not."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in scenario.headers.items():
        command += ["-H", f"{name}: {value}"]
    if scenario.method != "GET" or scenario.body:
        script = script_dir / f"{scenario.name}.lua"
        if not script.exists():
            body = scenario.body.decode("ascii")
            assert "]==]" not in body
            script.write_text(
                f'wrk.method = "{scenario.method}"\n'
                f"wrk.body = [==[{body}]==]\n"
                'wrk.headers["Content-Type"] = "application/json"\n',
                encoding="utf-8",
            )
        command += ["-s", str(script)]
    command.append(f"http://127.0.0.1:{port}{scenario.path}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=False)
    out = done.stdout
    requests, rps = WRK_REQUESTS.search(out), WRK_RPS.search(out)
    if done.returncode != 0 or requests is None or rps is None:
        raise RuntimeError(
            f"wrk failed for {scenario.name} (exit {done.returncode}): {out[-500:]} {done.stderr[-500:]}"
        )
    total = int(requests.group(1))
    non_2xx_match = WRK_NON_2XX.search(out)
    non_2xx = int(non_2xx_match.group(1)) if non_2xx_match else 0
    unexpected: collections.Counter[str] = collections.Counter()
    if scenario.status < 400:
        unexpected["non-2xx/3xx"] = non_2xx
    else:
        unexpected["2xx/3xx"] = total - non_2xx
    errors = WRK_SOCKET_ERRORS.search(out)
    if errors:
        for kind, count in zip(("connect", "read", "write", "timeout"), errors.groups(), strict=True):
            unexpected[f"socket_error_{kind}"] = int(count)
    expected = total - sum(v for k, v in unexpected.items() if not k.startswith("socket_error"))
    latency = {f"p{q}": float(v) * TO_MS[unit] for q, v, unit in WRK_LATENCY.findall(out)}
    return {
        "rps": float(rps.group(1)) * expected / total if total else 0.0,
        "unexpected": +unexpected,
        "latency_ms": latency,
    }


def check_status(port: int, scenario: Scenario) -> None:
    """One request with httpx: wrk only tells 2xx/3xx from the rest, this checks the exact status."""
    import httpx

    response = httpx.request(
        scenario.method,
        f"http://127.0.0.1:{port}{scenario.path}",
        headers={**scenario.headers, **({"Content-Type": "application/json"} if scenario.body else {})},
        content=scenario.body or None,
        timeout=10,
    )
    if response.status_code != scenario.status:
        raise RuntimeError(
            f"{scenario.name}: expected {scenario.status}, got {response.status_code} {response.text[:200]}"
        )


def load_with_wrk(
    port: int, scenarios: list[Scenario], rounds: int, seconds: float, connections: int
) -> dict[str, Any]:
    """What `load_from_another_process` measures, with wrk as the client."""
    secs = wrk_seconds(seconds)
    results: dict[str, Any] = {
        s.name: {"rps": [], "ratios": [], "unexpected": collections.Counter(), "p50": [], "p99": []} for s in scenarios
    }
    with tempfile.TemporaryDirectory(prefix="zguard-bench-wrk-") as tmp:
        script_dir = Path(tmp)

        def run(scenario: Scenario) -> float:
            once = wrk_once(port, scenario, secs, connections, script_dir)
            r = results[scenario.name]
            r["rps"].append(once["rps"])
            r["unexpected"].update(once["unexpected"])
            for q in ("p50", "p99"):
                if q in once["latency_ms"]:
                    r[q].append(once["latency_ms"][q])
            rps: float = once["rps"]
            return rps

        for scenario in scenarios:  # warm-up: caches, lock-outs, connections
            wrk_once(port, scenario, 1, connections, script_dir)
            check_status(port, scenario)
        baseline, others = scenarios[0], scenarios[1:]
        for _ in range(rounds):
            # Each scenario right after a baseline slice, compared with it (see run_client).
            for scenario in others:
                before = run(baseline)
                rps = run(scenario)
                results[scenario.name]["ratios"].append(rps / before if before else 0.0)
            if not others:
                run(baseline)
    return {
        name: {
            "rps": r["rps"],
            "ratios": r["ratios"],
            "unexpected": dict(r["unexpected"]),
            "latency_ms_p50_median": round(statistics.median(r["p50"]), 3) if r["p50"] else None,
            "latency_ms_p99_median": round(statistics.median(r["p99"]), 3) if r["p99"] else None,
        }
        for name, r in results.items()
    }


def load(  # noqa: PLR0917 - positional like load_from_another_process
    client: str, port: int, scenarios: list[Scenario], rounds: int, seconds: float, connections: int
) -> dict[str, Any]:
    if client == "wrk":
        return load_with_wrk(port, scenarios, rounds, seconds, connections)
    spec = [{"name": s.name, "status": s.status, "request": s.raw().hex()} for s in scenarios]
    return load_from_another_process(port, spec, rounds, seconds, connections)
