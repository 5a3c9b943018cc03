"""`zguard trace IMAGE` and `zguard provenance verify IMAGE`.

`trace` decodes the invisible watermark under this installation's key, finds the generation's
audit event and prints who generated the image, when, from where, with which model and verdict:
exit 0 when found, 1 ("no zguard watermark found", or a valid mark no event carries). Every
trace is recorded (`provenance.traced`) before the answer is printed; when the store cannot be
written the trace is refused (audit fails closed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zguard import state_paths
from zguard.audit.formats import printable
from zguard.cli.common import (
    EXIT_FIX,
    EXIT_NO,
    EXIT_OK,
    NOT_INITIALIZED_HINT,
    Commands,
    acting_user,
    run_on_database,
    settings_of,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from zguard.provenance.trace import TraceResult


def _read_image(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        print(f"zguard: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return None


def cmd_trace(args: argparse.Namespace) -> int:
    from zguard.audit.store import AuditStore, pending
    from zguard.provenance.marking import load_watermarker
    from zguard.provenance.trace import NotAnImage, trace, traced_event
    from zguard.security.keys import KeyFileError
    from zguard.store import migrate
    from zguard.store.errors import SchemaNotCurrent

    settings = settings_of(args)
    blob = _read_image(args.image)
    if blob is None:
        return EXIT_FIX
    try:
        watermarker = load_watermarker(settings)
    except (OSError, KeyFileError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        print(f"zguard: watermark key {state_paths.watermark_key_file(settings)}: {reason}", file=sys.stderr)
        return EXIT_FIX

    def on_engine(engine: Engine, shown: str) -> int:
        try:
            migrate.check_schema_current(engine)
        except SchemaNotCurrent:
            print(f"zguard: state database {shown} is not current; {NOT_INITIALIZED_HINT}", file=sys.stderr)
            return EXIT_FIX
        store = AuditStore(engine)
        try:
            try:
                result = trace(blob, watermarker, store, max_pixels=settings.provenance.trace_max_pixels)
            except NotAnImage as exc:
                print(f"zguard: {args.image}: {exc}", file=sys.stderr)
                return EXIT_FIX
            store.append([pending(traced_event(result, principal=acting_user(), source="cli"))])
        finally:
            store.close()
        _print(result, as_json=args.json)
        return EXIT_OK if result.found else EXIT_NO

    return run_on_database(settings, on_engine)


def _print(result: TraceResult, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.summary(), ensure_ascii=False, sort_keys=True))
        return
    for note in result.notes:
        print(note)
    if result.mark is not None:
        print(f"watermark id: {result.mark.hex_id} (image at {result.mark.scale[0]:.3f}x its generated size)")
    if result.event is None:
        return
    event: dict[str, Any] = result.event
    policy = event.get("policy") or {}
    lines = {
        "generated": event.get("time"),
        "request": event.get("request_id"),
        "audit event": f"{event.get('event_id')} (seq {event.get('seq')})",
        "by": f"{event.get('principal')} (roles {', '.join(event.get('roles') or []) or '-'}; auth {event.get('auth_method')})",
        "listener": event.get("listener"),
        "client": event.get("client"),
        "model": f"{event.get('model')} (manifest {event.get('manifest') or '-'})",
        "generation": json.dumps(event.get("generation"), ensure_ascii=False, sort_keys=True),
        "policy verdict": json.dumps(policy, ensure_ascii=False, sort_keys=True) if policy else "-",
    }
    for name, value in lines.items():
        print(f"{name}: {printable(str(value))}")
    if result.label is not None:
        print(
            f"label: ProduceID {printable(result.label.get('ProduceID', ''))}, ContentProducer {printable(result.label.get('ContentProducer', ''))}"
        )


def cmd_verify(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from zguard.provenance.labels import verify
    from zguard.provenance.marking import load_signing_key
    from zguard.provenance.trace import NotAnImage, open_image

    settings = settings_of(args)
    blob = _read_image(args.image)
    if blob is None:
        return EXIT_FIX
    if args.public_key is not None:
        key = serialization.load_pem_public_key(Path(args.public_key).read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            print(f"zguard: {args.public_key} is not an Ed25519 public key", file=sys.stderr)
            return EXIT_FIX
        public_key = key
    else:
        public_key = load_signing_key(settings).public_key()
    try:
        check = verify(open_image(blob, max_pixels=settings.provenance.trace_max_pixels), public_key)
    except NotAnImage as exc:
        print(f"zguard: {args.image}: {exc}", file=sys.stderr)
        return EXIT_FIX
    if args.json:
        print(json.dumps({"valid": check.valid, "reason": check.reason, "label": check.label}, ensure_ascii=False))
    else:
        print(("label OK: " if check.valid else "label NOT valid: ") + check.reason)
        for name, value in (check.label or {}).items():
            print(f"  {name}: {printable(value)}")
    return EXIT_OK if check.valid else EXIT_NO


def cmd_public_key(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from zguard.provenance.marking import load_signing_key

    key = load_signing_key(settings_of(args)).public_key()
    sys.stdout.write(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    )
    return EXIT_OK


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `zguard trace` and `zguard provenance ...`; `common` carries --config."""
    trace = commands.add_parser(
        "trace",
        parents=[common],
        help="find the request that generated an image",
        description="Decode an image's invisible watermark and print the generation's audit record (who, when, from where, model, policy verdict). Exit 0 when found, 1 when not. Recorded as a provenance.traced audit event.",
    )
    trace.add_argument("image", help="the image file (PNG, JPEG or WebP)")
    trace.add_argument("--json", action="store_true", help="print one JSON object")
    trace.set_defaults(handler=cmd_trace)
    provenance = commands.add_parser(
        "provenance", parents=[common], help="AIGC label tools", description="Check GB 45438-2025 labels."
    )
    where = provenance.add_subparsers(dest="provenance_command", required=True, metavar="COMMAND")
    verify = where.add_parser(
        "verify",
        parents=[common],
        help="check an image's implicit label signature",
        description="Check the TC260 AIGC label in an image's XMP metadata against the provenance signing key and the image's pixels. Exit 0 when valid, 1 otherwise.",
    )
    verify.add_argument("image")
    verify.add_argument("--public-key", help="Ed25519 public key (PEM) to check against; default: this server's")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(handler=cmd_verify)
    public_key = where.add_parser(
        "public-key",
        parents=[common],
        help="print the label signing public key (PEM)",
        description="Print the public half of provenance.signing_key_file, for whoever checks labels elsewhere.",
    )
    public_key.set_defaults(handler=cmd_public_key)
