"""`zguard model demo`, `model pin`, `model verify`, `model approve` and `model changes`: the demo model,
the manifest and its four-eyes approval from the command line.

`pin --as ADMIN` and `approve --as OTHER_ADMIN` read ADMIN's API token from the terminal (not
echoed) or one line of stdin, never from argv; the rules are zguard.services.model_changes'.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from zguard.cli import common as cli_common
from zguard.cli.common import (
    EXIT_FIX,
    EXIT_NO,
    EXIT_OK,
    Commands,
    acting_detail,
    acting_user,
    command,
    group,
    run_on_database,
    schema_not_current,
    settings_of,
    setup_logging,
)
from zguard.integrity.manifest import MANIFEST_FILE, ManifestError, ModelManifest, Progress, VerifyReport, pin, verify
from zguard.security.keys import KeyFileError, load_public_key, read_private_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from sqlalchemy import Engine

    from zguard.services.model_changes import ModelChanges, Operator

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
    if args.as_admin is None:
        return _pin(model_dir, key)
    token = _read_token(args.as_admin)

    def action(changes: ModelChanges, operator: Operator) -> int:
        changes.authenticate(args.as_admin, token, operator)  # before the manifest is replaced
        code = _pin(model_dir, key)
        if code != EXIT_OK:
            return code
        digest = ModelManifest.from_json((model_dir / MANIFEST_FILE).read_text(encoding="utf-8")).digest
        request = changes.request(args.as_admin, token, digest, model_dir, operator)
        print(
            f"change request #{request.seq} recorded in the audit trail (model.change_requested by {request.principal}); "
            f"another admin approves it: zguard model approve {model_dir} --as OTHER_ADMIN"
        )
        return EXIT_OK

    return _on_changes(args, action)


def _pin(model_dir: Path, key: Ed25519PrivateKey | None) -> int:
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


def _verified(model_dir: Path, key_path: Path | None, key_name: str) -> VerifyReport | int:
    """`verify`'s report of `model_dir` (the signature too when a key is named), with a progress
    bar on a terminal; EXIT_FIX, said on stderr, when the key `key_name` names cannot be read."""
    try:
        public_key = load_public_key(key_path) if key_path is not None else None
    except (OSError, KeyFileError) as exc:
        print(f"zguard: {key_name}: {exc}", file=sys.stderr)
        return EXIT_FIX
    bar = _progress("verifying")
    try:
        return verify(model_dir, public_key, progress=bar)
    finally:
        if bar is not None:
            bar.close()


def cmd_model_verify(args: argparse.Namespace) -> int:
    model_dir = Path(args.dir)
    report = _verified(model_dir, Path(args.public_key) if args.public_key else None, "--public-key")
    if isinstance(report, int):
        return report
    if not report.ok or report.manifest is None:  # an intact report always has its manifest
        return _report_refusal(ManifestError(model_dir, report.problems))
    signature = "signature valid" if args.public_key else "signature not checked (no --public-key)"
    if report.manifest.signature is None:
        signature = "unsigned"
    print(
        f"OK: {len(report.manifest.files)} files, {report.bytes_hashed / 1e6:.1f} MB match the manifest; {signature}\n"
        f"manifest digest {report.manifest.digest}"
    )
    return EXIT_OK


# --- four eyes: change requests and approvals (zguard.services.model_changes) -------------------


def _read_token(name: str) -> str:
    """NAME's API token: from the terminal (not echoed), or one line of stdin; never from argv."""
    stdin = sys.stdin
    try:
        if stdin is not None and stdin.isatty():
            token = getpass.getpass(f"API token of {name} (not echoed): ")
        else:
            token = stdin.readline() if stdin is not None else ""
    except (EOFError, KeyboardInterrupt):
        token = ""
    token = token.strip()
    if not token:
        from zguard.services.model_changes import ModelChangeRefused

        raise ModelChangeRefused(
            f"--as {name}: no API token given: type it when asked, or pipe it as one line of stdin"
        )
    return token


def _on_changes(args: argparse.Namespace, action: Callable[[ModelChanges, Operator], int]) -> int:
    """Run `action` on the state database: its principals, and its audit trail to read and write."""
    from zguard import state_paths
    from zguard.audit.store import AuditStore
    from zguard.security.keys import read_key
    from zguard.services.model_changes import ModelChangeRefused, ModelChanges, Operator
    from zguard.store import migrate
    from zguard.store.errors import SchemaNotCurrent
    from zguard.store.principals import PrincipalStore

    settings = settings_of(args)
    setup_logging("warning")
    key_path = state_paths.token_key_file(settings)

    def token_key() -> bytes:
        if not key_path.is_file():
            raise ModelChangeRefused(f"no token key at {key_path}: run `zguard init` first")
        return read_key(key_path)

    def on_store(engine: Engine, shown: str) -> int:
        try:
            migrate.check_schema_current(engine)
        except SchemaNotCurrent as exc:
            print(f"zguard: state database {shown} {schema_not_current(exc)}", file=sys.stderr)
            return EXIT_FIX
        store = AuditStore(engine)
        changes = ModelChanges(
            PrincipalStore(engine), store, cli_common.audit_sink_factory(settings, engine), token_key=token_key
        )
        return action(changes, Operator(acting_user(), acting_detail()))

    return run_on_database(settings, on_store)


def _short(digest: str) -> str:
    return digest[:16]


def cmd_model_approve(args: argparse.Namespace) -> int:
    model_dir = Path(args.dir)
    key_path = settings_of(args).model.manifest_public_key  # signed manifests: the signature is checked too
    report = _verified(model_dir, key_path, "model.manifest_public_key")
    if isinstance(report, int):
        return report
    if not report.ok or report.manifest is None:  # approve only files that match what was pinned
        return _report_refusal(ManifestError(model_dir, report.problems))
    digest = report.manifest.digest
    token = _read_token(args.as_admin)

    def action(changes: ModelChanges, operator: Operator) -> int:
        from zguard.audit.chain import iso_ms

        approval, request = changes.approve(args.as_admin, token, digest, model_dir, operator)
        print(
            f"approved manifest {digest} ({len(report.manifest.files) if report.manifest else 0} files) of {model_dir}\n"
            f"  requested by {request.principal} at {iso_ms(request.time_ms)} (change request #{request.seq})\n"
            f"  approved by {approval.principal} (model.change_approved #{approval.seq}, in the hash-chained audit trail)"
        )
        return EXIT_OK

    return _on_changes(args, action)


def cmd_model_changes(args: argparse.Namespace) -> int:
    def action(changes: ModelChanges, _operator: Operator) -> int:
        from zguard.audit.chain import iso_ms
        from zguard.audit.model_changes import counts

        records = changes.records()
        requests = {r.seq: r for r in records if r.is_request}
        approved = {r.request_seq for r in records if not r.is_request and counts(r, requests)}
        if args.json:
            for r in records:
                print(
                    json.dumps(
                        {
                            "seq": r.seq,
                            "time": iso_ms(r.time_ms),
                            "type": r.type,
                            "digest": r.digest,
                            "principal": r.principal,
                            "requester": r.requester,
                            "request_seq": r.request_seq,
                            "model_path": r.model_path,
                            "os_account": r.os_account,
                            "intact": r.intact,
                            "approved": r.seq in approved if r.is_request else None,
                        },
                        sort_keys=True,
                    )
                )
            return EXIT_OK
        if not records:
            print("no model change requests in the audit trail (zguard model pin DIR --as ADMIN records one)")
            return EXIT_OK
        rows = []
        for r in records:
            if r.is_request:
                status = "approved" if r.seq in approved else "awaiting approval"
            else:
                status = f"approves #{r.request_seq} of {r.requester}" if counts(r, requests) else "does not count"
            if not r.intact:
                status += " (EVENT ALTERED: zguard audit verify)"
            kind = "request" if r.is_request else "approval"
            rows.append([str(r.seq), iso_ms(r.time_ms), kind, _short(r.digest), r.principal, status])
        headers = ["#", "TIME", "KIND", "DIGEST", "ADMIN", "STATUS"]
        widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
        for row in [headers, *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        return EXIT_OK

    return _on_changes(args, action)


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
    """Add `model demo`, `pin`, `verify`, `approve` and `changes`; `common` carries --config."""
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
    pin_cmd.add_argument(
        "--as",
        dest="as_admin",
        metavar="NAME",
        help="record a change request by admin NAME in the audit trail (asks for NAME's API token); "
        "with model.change_approval_required another admin must then `zguard model approve DIR`",
    )
    approve_cmd = command(
        model_commands,
        common,
        "approve",
        cmd_model_approve,
        help_text="approve a pinned model change as a second admin",
        description="Check DIR against its manifest, then record `model.change_approved` for its digest by admin "
        "NAME (asks for NAME's API token) in the audit trail. NAME must not be the admin who pinned it "
        "(`zguard model pin DIR --as ADMIN`). With model.change_approval_required, `serve` loads only approved manifests.",
    )
    approve_cmd.add_argument("dir", metavar="DIR", help="the model directory")
    approve_cmd.add_argument("--as", dest="as_admin", metavar="NAME", required=True, help="the approving admin")
    changes_cmd = command(
        model_commands,
        common,
        "changes",
        cmd_model_changes,
        help_text="list model change requests and approvals",
        description="List every model change request and approval in the audit trail, oldest first.",
    )
    changes_cmd.add_argument("--json", action="store_true", help="one JSON object per line")
