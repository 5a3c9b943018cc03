"""`zguard model demo`, `model pin` and `model verify`: the demo model and the manifest from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

from zguard.cli.common import EXIT_FIX, EXIT_NO, EXIT_OK, Commands, command, group, setup_logging
from zguard.integrity.manifest import MANIFEST_FILE, ManifestError, Progress, pin, verify
from zguard.security.keys import KeyFileError, load_public_key, read_private_key

PROGRESS_MIN_BYTES = 64 * 1024 * 1024  # smaller models finish before a bar would help
BAR_WIDTH = 30


class ProgressBar:
    """`[#####.....]  1.2/12.3 GB  10%  850 MB/s` on a terminal, redrawn at most 10 times a second."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self._stream = stream
        self._label = label
        self._started = time.monotonic()
        self._drawn = 0.0
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if total < PROGRESS_MIN_BYTES or (now - self._drawn < 0.1 and done < total):
            return
        self._drawn, self._shown = now, True
        filled = BAR_WIDTH * done // max(total, 1)
        rate = done / max(now - self._started, 1e-6) / 1e6
        self._stream.write(
            f"\r{self._label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
            f"{done / 1e9:.1f}/{total / 1e9:.1f} GB {100 * done // max(total, 1):3d}% {rate:.0f} MB/s"
        )
        self._stream.flush()

    def close(self) -> None:
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()


def _progress(label: str) -> ProgressBar | None:
    return ProgressBar(sys.stderr, label) if sys.stderr.isatty() else None


def _report_refusal(exc: ManifestError) -> int:
    print(f"zguard: {exc.message}", file=sys.stderr)
    return EXIT_NO


def cmd_model_pin(args: argparse.Namespace) -> int:
    model_dir = Path(args.dir)
    if not model_dir.is_dir():
        print(f"zguard: {model_dir} is not a directory", file=sys.stderr)
        return EXIT_FIX
    try:
        key = read_private_key(Path(args.key)) if args.key else None
    except (OSError, KeyFileError) as exc:
        print(f"zguard: --key: {exc}", file=sys.stderr)
        return EXIT_FIX
    bar = _progress("hashing")
    progress: Progress | None = bar
    try:
        manifest = pin(model_dir, key, progress=progress)
    except ManifestError as exc:
        return _report_refusal(exc)
    finally:
        if bar is not None:
            bar.close()
    signed = f", signed by key {manifest.signature['key_id']}" if manifest.signature else ""
    print(
        f"pinned {len(manifest.files)} files ({manifest.total_bytes / 1e6:.1f} MB) in {model_dir / MANIFEST_FILE}{signed}\n"
        f"manifest digest {manifest.digest}"
    )
    return EXIT_OK


def cmd_model_verify(args: argparse.Namespace) -> int:
    model_dir = Path(args.dir)
    try:
        public_key = load_public_key(Path(args.public_key)) if args.public_key else None
    except (OSError, KeyFileError) as exc:
        print(f"zguard: --public-key: {exc}", file=sys.stderr)
        return EXIT_FIX
    bar = _progress("verifying")
    try:
        report = verify(model_dir, public_key, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if not report.ok or report.manifest is None:  # an intact report always has its manifest
        return _report_refusal(ManifestError(model_dir, report.problems))
    signature = "signature valid" if public_key is not None else "signature not checked (no --public-key)"
    if report.manifest.signature is None:
        signature = "unsigned"
    print(
        f"OK: {len(report.manifest.files)} files, {report.bytes_hashed / 1e6:.1f} MB match the manifest; {signature}\n"
        f"manifest digest {report.manifest.digest}"
    )
    return EXIT_OK


def cmd_model_demo(args: argparse.Namespace) -> int:
    setup_logging("warning")
    from zguard.engine.demo import write_demo_model

    try:
        path = write_demo_model(Path(args.dir))
    except FileExistsError:
        print(f"zguard: {args.dir} exists and is not empty; choose an empty or new directory", file=sys.stderr)
        return EXIT_FIX
    print(f"demo model written to {path} (random weights: images are noise), pinned in its manifest")
    return EXIT_OK


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `model demo`, `model pin` and `model verify`; `common` carries --config."""
    model_commands = group(commands, common, "model", "model tools", "Model tools.")
    demo = command(
        model_commands,
        common,
        "demo",
        cmd_model_demo,
        help_text="build the tiny random-weight demo model",
        description="Write the tiny random-weight demo pipeline (safetensors, byte-identical every build) to DIR.",
    )
    demo.add_argument("dir", metavar="DIR", help="new or empty directory to write the model to")
    pin_cmd = model_commands.add_parser(
        "pin",
        parents=[common],
        help="write the model manifest (every file's size and SHA-256)",
        description=f"Hash every file of DIR and write DIR/{MANIFEST_FILE} (replacing any): the whitelist `zguard serve` "
        "checks before loading. Refuses pickle weights (.bin .pt .pth .ckpt .pkl) and symlinks leading out of DIR.",
    )
    pin_cmd.add_argument("dir", metavar="DIR", help="the model directory")
    pin_cmd.add_argument("--key", metavar="FILE", help="Ed25519 private key (PEM, mode 0600) to sign the manifest with")
    pin_cmd.set_defaults(handler=cmd_model_pin)
    verify_cmd = model_commands.add_parser(
        "verify",
        parents=[common],
        help="check a model directory against its manifest",
        description="Check every file of DIR against its manifest: changed, missing and extra files, symlinks "
        "leading out, pickle weights, and with --public-key the signature. Exit 0 when it matches, 1 naming each problem.",
    )
    verify_cmd.add_argument("dir", metavar="DIR", help="the model directory")
    verify_cmd.add_argument(
        "--public-key", metavar="FILE", help="Ed25519 public key (PEM) the manifest must be signed by"
    )
    verify_cmd.set_defaults(handler=cmd_model_verify)
