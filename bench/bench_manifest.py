"""Benchmark: model manifest verification against `sha256sum`, and the bytes read while loading.

Run it with ``.venv/bin/python bench/bench_manifest.py [--gb N] [--rounds N] [--dir DIR]``. It
prints ONE JSON object on stdout; progress goes to stderr. It is a measurement, not a test:
figures off target only set the ``*_ok`` booleans to false.

The model directory is generated under ``--dir`` (default: a new directory in /tmp, deleted at
the end): a Z-Image layout (transformer, text_encoder, vae in safetensors shards with index
files, configs, tokenizer, scheduler) of ``--gb`` GB (default 3) whose tensors hold random bytes,
then pinned.

``verify``
    ``zguard`` is ``zguard.integrity.manifest.verify(dir)`` (layout check, then every file hashed
    in 8 MiB reads, ``HASH_THREADS`` files at a time); ``sha256sum`` is one ``sha256sum`` process
    over the same files. Both run in this run, alternating, after one untimed pass that brings the
    files into the page cache (so both read from memory: this compares hashing, not the disk).
    Seconds and MB/s are medians over ``--rounds``; ``ratio`` is zguard's throughput over
    sha256sum's (target >= 0.9). ``zguard_one_thread`` is the same with one thread.
``load``
    What ``DiffusersEngine.load()`` does with every file, minus building the modules: each file is
    read once through a ``VerifiedReader`` (hashed while read, compared with the pin), configs are
    written to a private temporary directory, and weights parsed with ``safetensors.torch.load``
    from the verified bytes. ``read_amplification`` is the bytes the reader took from the model
    directory over the model's size (target ~1.0); ``rchar_amplification`` the same from the
    kernel's count of this process's ``read()`` bytes (``/proc/self/io``). ``peak_rss_mb``
    against ``largest_file_mb`` shows the memory trade-off: about twice the largest file.
``demo_engine``
    The full ``DiffusersEngine.load()`` of the real (tiny) demo pipeline: bytes read over its size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zguard.integrity.manifest import MANIFEST_FILE, VerifiedReader, check_layout, pin, verify

TARGET_RATIO = 0.9
TARGET_AMPLIFICATION = 1.05
# Share of the model per component, and the shard count: roughly Z-Image-Turbo's proportions.
COMPONENTS = {"transformer": (0.60, 3), "text_encoder": (0.37, 2), "vae": (0.03, 1)}
TENSOR_BYTES = 64 * 1024 * 1024
BLOCK = os.urandom(TENSOR_BYTES)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_shard(path: Path, size: int, seed: int) -> list[str]:
    """A safetensors file of about `size` bytes: bf16 tensors of random-looking bytes."""
    names, sizes = [], []
    left = size
    while left > 0:
        n = min(TENSOR_BYTES, left) // 2 * 2 or 2
        names.append(f"layers.{seed}.{len(names)}.weight")
        sizes.append(n)
        left -= n
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, n in zip(names, sizes, strict=True):
        header[name] = {"dtype": "BF16", "shape": [n // 2], "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as handle:
        handle.write(len(text).to_bytes(8, "little") + text)
        for i, n in enumerate(sizes):
            start = (seed * 7919 + i * 104729) % (TENSOR_BYTES // 2)  # distinct content per tensor
            chunk = BLOCK[start:] + BLOCK[:start]
            handle.write(chunk[:n])
    return names


def generate_model(root: Path, total: int) -> None:
    (root / "tokenizer").mkdir(parents=True)
    (root / "scheduler").mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": "ZImagePipeline"}))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"shift": 3.0}))
    (root / "tokenizer" / "tokenizer.json").write_bytes(os.urandom(11 * 1024 * 1024))
    seed = 0
    for component, (share, shards) in COMPONENTS.items():
        (root / component).mkdir()
        (root / component / "config.json").write_text(json.dumps({"component": component}))
        weight_map = {}
        for i in range(shards):
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            seed += 1
            for tensor in write_shard(root / component / name, int(total * share / shards), seed):
                weight_map[tensor] = name
        (root / component / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def time_sha256sum(files: list[Path]) -> float:
    started = time.perf_counter()
    subprocess.run(["sha256sum", *map(str, files)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def time_verify(root: Path, threads: int) -> float:
    started = time.perf_counter()
    report = verify(root, threads=threads)
    elapsed = time.perf_counter() - started
    if not report.ok:
        raise SystemExit(f"verify failed: {report.problems}")
    return elapsed


def measure_load(root: Path) -> dict[str, Any]:
    import safetensors.torch

    size = sum(p.stat().st_size for p in files_of(root))
    before_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    before_rchar = rchar()
    started = time.perf_counter()
    manifest, layout = check_layout(root)
    reader = VerifiedReader(root, manifest, layout)
    staging = Path(tempfile.mkdtemp(prefix="zguard-bench-"))
    tensors = 0
    try:
        for rel in reader.paths:
            if rel.endswith(".safetensors"):
                state = safetensors.torch.load(reader.read(rel))
                tensors += len(state)
                del state
            else:
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(reader.read(rel))
    finally:
        shutil.rmtree(staging)
    elapsed = time.perf_counter() - started
    read_kernel = rchar() - before_rchar
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "model_bytes": size,
        "bytes_read": reader.bytes_read,
        "read_amplification": round(reader.bytes_read / size, 4),
        "rchar_amplification": round(read_kernel / size, 4),
        "tensors": tensors,
        "seconds": round(elapsed, 2),
        "mb_per_s": round(size / elapsed / 1e6, 1),
        "largest_file_mb": round(max(p.stat().st_size for p in files_of(root)) / 1e6, 1),
        "peak_rss_mb": round(peak / 1024, 1),
        "peak_rss_growth_mb": round((peak - before_rss) / 1024, 1),
        "amplification_ok": reader.bytes_read / size <= TARGET_AMPLIFICATION,
    }


def measure_demo_engine(parent: Path) -> dict[str, Any]:
    from zguard.engine.demo import write_demo_model
    from zguard.engine.pipeline import DiffusersEngine

    model = write_demo_model(parent / "demo")
    size = sum(p.stat().st_size for p in files_of(model))
    engine = DiffusersEngine(model, model_id="z-image-turbo", device="cpu", demo=True)
    before = rchar()
    started = time.perf_counter()
    engine.load()
    return {
        "model_bytes": size,
        "bytes_read": engine.bytes_read,
        "read_amplification": round(engine.bytes_read / size, 4),
        "rchar_bytes": rchar() - before,  # includes Python modules imported by the first load
        "seconds": round(time.perf_counter() - started, 2),
        "manifest": engine.info.manifest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=3.0, help="model size in GB (default 3)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to generate the model (default: the system temp dir, /tmp)"
    )
    args = parser.parse_args()
    parent = Path(tempfile.mkdtemp(prefix="zguard-bench-manifest-", dir=args.dir))  # default: the system temp dir
    try:
        root = parent / "model"
        total = int(args.gb * 1e9)
        log(f"generating a {args.gb} GB model in {root}")
        generate_model(root, total)
        files = files_of(root)
        size = sum(p.stat().st_size for p in files)
        started = time.perf_counter()
        pin(root)
        pin_s = time.perf_counter() - started
        log("load: verified reads")
        load = measure_load(root)
        log("verify vs sha256sum")
        time_sha256sum(files)  # page cache warm for both
        runs: dict[str, list[float]] = {"zguard": [], "zguard_one_thread": [], "sha256sum": []}
        for _ in range(args.rounds):
            runs["sha256sum"].append(time_sha256sum(files))
            runs["zguard"].append(time_verify(root, threads=4))
            runs["zguard_one_thread"].append(time_verify(root, threads=1))
        medians = {name: statistics.median(times) for name, times in runs.items()}
        verify_figures = {
            name: {"seconds": round(s, 3), "mb_per_s": round(size / s / 1e6, 1)} for name, s in medians.items()
        }
        ratio = medians["sha256sum"] / medians["zguard"]
        log("demo engine load")
        demo = measure_demo_engine(parent)
        print(
            json.dumps(
                {
                    "model": {"bytes": size, "files": len(files), "cpus": os.cpu_count()},
                    "pin_s": round(pin_s, 2),
                    "verify": {
                        **verify_figures,
                        "ratio": round(ratio, 3),
                        "ratio_one_thread": round(medians["sha256sum"] / medians["zguard_one_thread"], 3),
                        "ratio_ok": ratio >= TARGET_RATIO,
                        "rounds": args.rounds,
                    },
                    "load": load,
                    "demo_engine": demo,
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    main()
