"""The `zguard audit` commands: read, check and maintain the audit trail. Parsing and printing only.

The work is done in `zguard.audit` (store, verify, retention, archive, prompts). Decisions:

- Exit codes: 0 done; 1 `verify` / `verify-archive` found the record damaged; 2 refused (bad
  input, missing key, schema not current, purge held back: the operator must change something);
  3 the state database cannot be reached. One line on stderr for 2 and 3, never a traceback.
- Commands that only read (verify, status, tail, search, export) open the store without the
  signing key and never create a key: they also run on an auditor's machine against a copy.
- `verify` and `verify-archive` check signatures with the public half of the signing key file,
  or with `--public-key` (the copy kept off-host, which an intruder on this host cannot replace).
- Human output escapes control, line-separator and bidi characters of client-supplied fields
  and quotes values that hold a space or `=`, so a principal or client cannot drive the
  reader's terminal or forge a field (`zguard.audit.formats`); `--json` output and JSON Lines
  exports are the stored JSON with those characters as `\\uXXXX` escapes: the same JSON value,
  byte for byte the stored body whenever it holds none.
- `reveal` records `audit.prompt_revealed` before it prints the prompt, `export` records
  `audit.exported` (with the count) once written; when the store cannot be written (a read-only
  copy) they say so on stderr and go on: whoever holds the data and the key could read it
  without zguard anyway.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zguard import state_paths
from zguard.audit.formats import body_of, event_line, json_line, parse_moment, printable, write_events
from zguard.cli import common as cli_common
from zguard.cli.common import (
    EXIT_FIX,
    EXIT_NO,
    EXIT_OK,
    Commands,
    acting_user,
    run_on_database,
    schema_not_current,
    settings_of,
)
from zguard.config import Settings
from zguard.errors import EXIT_UNAVAILABLE, ConfigError, OperatorError, ZguardError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from sqlalchemy import Engine

    from zguard.audit import AuditEvent, DetailValue
    from zguard.audit.checkpoint_keys import CheckpointKeys
    from zguard.audit.store import AuditStore, StoredEvent

FOLLOW_POLL_S = 1.0
PAGE = 1_000
_sleep = time.sleep  # `tail --follow` waits with this; tests replace it


class AuditCommandRefused(OperatorError):
    """The command cannot do what was asked; the message says why and what to do."""

    code = "audit_command_refused"
    fix = "change the arguments as the message says (zguard audit COMMAND --help)"


class AuditNotRecorded(OperatorError):
    """An action that must be on the record could not be recorded, so it was not done."""

    code = "audit_not_recorded"
    exit_code = EXIT_UNAVAILABLE
    fix = "the state database could not be written: check it (zguard audit status, zguard doctor), then run the command again"


# --- opening the store -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    settings: Settings
    store: AuditStore
    shown_url: str


def _settings(args: argparse.Namespace) -> Settings:
    return settings_of(args)


def _on_store(settings: Settings, action: Callable[[_Context], int], *, signing: bool = False) -> int:
    """Run `action` on the audit store of `settings`, the schema required current. `signing` opens it
    with the checkpoint signing key (created when absent, as `serve` would); otherwise read-only use."""
    from zguard.audit.setup import open_audit_store
    from zguard.audit.store import AuditStore
    from zguard.store import migrate
    from zguard.store.errors import SchemaNotCurrent

    def on_engine(engine: Engine, shown: str) -> int:
        try:
            migrate.check_schema_current(engine)
            store = open_audit_store(settings, engine) if signing else AuditStore(engine)
            try:
                return action(_Context(settings, store, shown))
            finally:
                store.close()
        except SchemaNotCurrent as exc:
            print(f"zguard: state database {shown} {schema_not_current(exc)}", file=sys.stderr)
            return EXIT_FIX

    return _refusals(lambda: run_on_database(settings, on_engine))


def _refusals(run: Callable[[], int]) -> int:
    """Refusals, unusable key files and unreadable seals as one line on stderr and exit 2."""
    try:
        return run()
    except ConfigError:
        raise  # cli.main prints it with its fix and exits 2
    except ZguardError as exc:
        print(f"zguard: {exc.message}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, OperatorError) else EXIT_FIX
    return EXIT_FIX


def _checkpoint_keys(settings: Settings, given: str | None) -> Ed25519PublicKey | CheckpointKeys:
    """`--public-key` when given, else the listed `audit.checkpoint_keys` (several writers), else
    the public half of this host's signing key (zguard.audit.checkpoint_keys)."""
    from zguard.audit.checkpoint_keys import CheckpointKeys

    if given or not settings.audit.checkpoint_keys:
        return _public_key(settings, given)
    missing = [str(path) for path in settings.audit.checkpoint_keys if not path.exists()]
    if missing:
        raise AuditCommandRefused(f"audit.checkpoint_keys: no such file or directory: {', '.join(missing)}")
    return CheckpointKeys.from_paths(settings.audit.checkpoint_keys)


def _public_key(settings: Settings, given: str | None) -> Ed25519PublicKey:
    from zguard.security.keys import load_public_key

    path = Path(given) if given else state_paths.audit_signing_key_file(settings)
    if not path.is_file():
        if given:
            raise AuditCommandRefused(f"no public key file {path}")
        raise AuditCommandRefused(
            f"no signing key at {path} (the server creates it at first start); pass --public-key FILE"
        )
    return load_public_key(path)


def _record(store: AuditStore, event: AuditEvent, *, required: bool = False) -> None:
    """Append `event`; when the store cannot be written, say so and go on (see the module
    docstring) — or, when the action must not happen unrecorded (`required`), raise
    AuditNotRecorded before it happens."""
    from sqlalchemy.exc import SQLAlchemyError

    from zguard.audit.store import pending

    try:
        store.append([pending(event)])
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or type(exc).__name__).strip().splitlines()[0]
        if required:
            raise AuditNotRecorded(
                f"{event.type} could not be recorded in the audit trail ({reason}); nothing was shown"
            ) from None
        print(f"zguard: warning: {event.type} could not be recorded in the audit trail: {reason}", file=sys.stderr)


# --- formatting ------------------------------------------------------------------------------


def _when(time_ms: int | None) -> str:
    from zguard.audit.chain import iso_ms

    return "-" if not time_ms else iso_ms(time_ms)


def moment(text: str) -> int:
    """`--since` / `--until`: see `formats.parse_moment`."""
    try:
        return parse_moment(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


# --- reading ---------------------------------------------------------------------------------


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "since_ms": args.since,
        "until_ms": args.until,
        "principal": args.principal,
        "outcome": args.outcome,
        "type_prefix": args.type,
        "request_id": args.request_id,
    }


def _matching(
    store: AuditStore, filters: Mapping[str, Any], *, limit: int | None, prompt_hmac: str | None = None
) -> Iterator[StoredEvent]:
    """Events matching `filters` (and, with `prompt_hmac`, whose prompt or negative prompt has it), oldest first."""
    after, found = None, 0
    while True:
        page = store.search(**filters, after_seq=after, limit=PAGE)
        for event in page:
            if prompt_hmac is not None and not _has_prompt_hmac(event, prompt_hmac):
                continue
            yield event
            found += 1
            if limit is not None and found >= limit:
                return
        if len(page) < PAGE:
            return
        after = page[-1].seq


def _has_prompt_hmac(event: StoredEvent, fingerprint: str) -> bool:
    if fingerprint not in event.body:  # most events: no JSON parsing
        return False
    prompt = body_of(event).get("prompt") or {}
    return fingerprint in (prompt.get("prompt_hmac"), prompt.get("negative_prompt_hmac"))


def _prompt_fingerprint(settings: Settings, text: str) -> str:
    from zguard.audit.prompts import PromptCapture
    from zguard.security.keys import read_key

    path = state_paths.audit_prompt_key_file(settings)
    if not path.is_file():
        raise AuditCommandRefused(
            f"no prompt HMAC key at {path}: --prompt needs the key `hmac` capture wrote events with"
        )
    return PromptCapture("hmac", hmac_key=read_key(path)).fingerprint(text)


def _text(value: str) -> str:
    """`-` reads the text from stdin, so a suspect prompt need not land in the shell's history."""
    return sys.stdin.read().rstrip("\n") if value == "-" else value


def _print_events(events: Iterator[StoredEvent] | list[StoredEvent], *, as_json: bool) -> int:
    shown = 0
    for event in events:
        print(json_line(event.body) if as_json else event_line(event))
        shown += 1
    return shown


# --- commands --------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    settings = _settings(args)

    def run() -> int:
        public_key = _checkpoint_keys(settings, args.public_key)  # before the database: a missing key is exit 2
        return _on_store(settings, lambda ctx: _verify(ctx, public_key, as_json=args.json))

    return _refusals(run)


def _verify(ctx: _Context, public_key: Ed25519PublicKey | CheckpointKeys, *, as_json: bool) -> int:
    from zguard.audit.verify import verify_store

    report = verify_store(ctx.store, public_key)
    head = ctx.store.head()
    if as_json:
        print(json.dumps({**report.as_dict(), "base_seq": head.base_seq, "head_seq": head.seq}, indent=2))
        return EXIT_OK if report.ok else EXIT_NO
    if report.problem is not None:
        problem = report.problem
        print(f"audit trail NOT intact: {problem.kind} at event {problem.seq}")
        print(f"  {printable(problem.message)}")
        damaged = list(ctx.store.iter_events(after=problem.seq - 1, until=problem.seq))
        if damaged:
            print(f"  event {problem.seq} as stored: id {damaged[0].event_id}: {event_line(damaged[0]).strip()}")
        return EXIT_NO
    span = f"events {report.first_seq}..{report.last_seq}" if report.events else "no events stored"
    covers = report.last_checkpoint if report.last_checkpoint is not None else "-"
    print(
        f"audit trail intact: {report.events} event(s) ({span}), {report.checkpoints} checkpoint(s) checked, "
        f"last checkpoint covers event {covers}; purged through event {head.base_seq}"
    )
    unsigned = head.seq - max(head.checkpoint_seq, head.base_seq)
    if unsigned > 0:
        print(f"  {unsigned} event(s) after the last checkpoint are chained but not yet signed")
    if report.signers is not None:
        signed = ", ".join(f"{printable(name)} {count}" for name, count in sorted(report.signers.items()))
        print(f"  checkpoints by listed key: {signed or 'none'}")
    for note in report.notes:
        print(f"  note: {printable(note)}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    def action(ctx: _Context) -> int:
        store, audit = ctx.store, ctx.settings.audit
        head, count, cursors = store.head(), store.count(), store.cursors()
        oldest = store.search(limit=1)
        status = {
            "head_seq": head.seq,
            "head_hash": head.hash,
            "events": count,
            "oldest": _when(int(oldest[0].time * 1000)) if oldest else None,
            "base_seq": head.base_seq,
            "last_checkpoint_covers": head.checkpoint_seq,
            "last_checkpoint_time": _when(head.checkpoint_ms) if head.checkpoint_ms else None,
            "unsigned": max(0, head.seq - max(head.checkpoint_seq, head.base_seq)),
            "retention_days": audit.retention_days,
            "syslog": audit.syslog.transport,
            "cursors": {name: {"seq": seq, "lag": max(0, head.seq - seq)} for name, seq in sorted(cursors.items())},
        }
        if args.json:
            print(json.dumps(status, indent=2))
            return EXIT_OK
        print(f"state database: {ctx.shown_url}")
        print(f"head:            event {head.seq} (hash {head.hash[:16]}…)")
        print(f"stored:          {count} event(s), oldest {status['oldest'] or '-'}")
        print(f"purged through:  event {head.base_seq}")
        print(
            f"last checkpoint: covers event {head.checkpoint_seq} at {status['last_checkpoint_time'] or '-'}; "
            f"{status['unsigned']} event(s) since"
        )
        print(f"retention:       {audit.retention_days} days; syslog forwarding {audit.syslog.transport}")
        if not cursors:
            print("cursors:         none")
        for name, seq in sorted(cursors.items()):
            print(f"cursor {name}:{' ' * max(1, 9 - len(name))}event {seq}, lag {max(0, head.seq - seq)}")
        return EXIT_OK

    return _on_store(_settings(args), action)


def cmd_tail(args: argparse.Namespace) -> int:
    def action(ctx: _Context) -> int:
        latest = list(reversed(ctx.store.search(limit=args.lines, newest_first=True)))
        _print_events(latest, as_json=args.json)
        position = latest[-1].seq if latest else ctx.store.head().seq
        while args.follow:  # until Ctrl-C (cli.main: exit 0)
            sys.stdout.flush()
            _sleep(FOLLOW_POLL_S)
            new = ctx.store.events_after(position, PAGE)
            _print_events(new, as_json=args.json)
            position = new[-1].seq if new else position
        return EXIT_OK

    return _on_store(_settings(args), action)


def cmd_search(args: argparse.Namespace) -> int:
    settings = _settings(args)

    def action(ctx: _Context) -> int:
        fingerprint = None if args.prompt is None else _prompt_fingerprint(settings, _text(args.prompt))
        events = _matching(ctx.store, _filters(args), limit=args.limit + 1, prompt_hmac=fingerprint)
        found = list(events)
        shown = _print_events(found[: args.limit], as_json=args.json)
        if len(found) > args.limit:
            print(f"zguard: more than {args.limit} events match; narrow the search or raise --limit", file=sys.stderr)
        elif shown == 0:
            print("zguard: no events match", file=sys.stderr)
        return EXIT_OK

    return _on_store(settings, action)


def cmd_export(args: argparse.Namespace) -> int:
    from zguard.audit import AuditEvent

    def action(ctx: _Context) -> int:
        filters = _filters(args)
        shown = {key: value for key, value in filters.items() if value is not None}
        detail = {"format": args.format, "filters": json.dumps(shown, sort_keys=True)}
        if args.output is None:
            count = write_events(sys.stdout, _matching(ctx.store, filters, limit=None), args.format)
        else:
            path = Path(args.output)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                raise AuditCommandRefused(
                    f"{path} exists; choose a new file (an export never overwrites one)"
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                count = write_events(handle, _matching(ctx.store, filters, limit=None), args.format)
            print(f"exported {count} event(s) to {path} ({args.format}, mode 0600)", file=sys.stderr)
        event = AuditEvent(
            type="audit.exported", outcome="done", principal=acting_user(), detail={**detail, "count": count}
        )
        _record(ctx.store, event)
        return EXIT_OK

    return _on_store(_settings(args), action)


def cmd_reveal(args: argparse.Namespace) -> int:
    from zguard.audit import AuditEvent
    from zguard.audit.chain import chain_hash
    from zguard.audit.prompts import SealError, load_x25519_private, open_sealed, recipient_id

    settings = _settings(args)

    def action(ctx: _Context) -> int:
        key_path = Path(args.key)
        try:
            private_key = load_x25519_private(key_path)
        except (OSError, ValueError, TypeError) as exc:
            raise AuditCommandRefused(f"--key {key_path}: not a usable X25519 private key (PEM): {exc}") from None
        event = ctx.store.get(args.event_id)
        if event is None:
            raise AuditCommandRefused(f"no audit event {args.event_id!r} (purged events are in the archives)")
        prompt = body_of(event).get("prompt") or {}
        sealed = {
            name: prompt[f"{name}_sealed"] for name in ("prompt", "negative_prompt") if f"{name}_sealed" in prompt
        }
        if not sealed:
            capture = prompt.get("capture") or "nothing"
            raise AuditCommandRefused(
                f"event {args.event_id} holds no sealed prompt (its prompt was captured as {capture})"
            )
        mine = recipient_id(private_key.public_key())
        try:
            opened = {name: open_sealed(blob, private_key) for name, blob in sealed.items()}
        except SealError:
            raise AuditCommandRefused(
                f"this key ({mine}) does not open event {args.event_id}'s prompt, sealed to {prompt.get('recipient', '?')}"
            ) from None
        if chain_hash(event.prev_hash, event.body) != event.hash:
            print(
                f"zguard: warning: event {event.seq} no longer matches its hash: run `zguard audit verify`",
                file=sys.stderr,
            )
        detail: dict[str, DetailValue] = {
            "event_id": event.event_id,
            "seq": event.seq,
            "fields": ",".join(opened),
            "recipient": mine,
        }
        # The most sensitive action there is: no record, no prompt (fail closed).
        revealed = AuditEvent(type="audit.prompt_revealed", outcome="done", principal=acting_user(), detail=detail)
        _record(ctx.store, revealed, required=True)
        if args.json:
            print(json.dumps({"event_id": event.event_id, "seq": event.seq, **opened}, ensure_ascii=False))
        else:
            for name, text in opened.items():
                print(f"{name}: {printable(text)}")
        return EXIT_OK

    return _on_store(settings, action)


def cmd_keygen(args: argparse.Namespace) -> int:
    from zguard.audit.prompts import write_keypair

    try:
        private, public = write_keypair(Path(args.dir))
    except FileExistsError:
        print(f"zguard: {args.dir} already holds an auditor key pair; choose another directory", file=sys.stderr)
        return EXIT_FIX
    print(f"private key: {private} (mode 0600): keep it with the auditor, never on the server")
    print(f"public key:  {public}: set audit.auditor_public_key_file to it and audit.prompt_capture: encrypted")
    return EXIT_OK


def cmd_public_key(args: argparse.Namespace) -> int:
    from zguard.security.keys import key_id, public_pem

    settings = _settings(args)

    def run() -> int:
        key = _public_key(settings, None)
        print(public_pem(key), end="")
        print(f"key id {key_id(key)}: keep this public key off-host to check checkpoints and archives", file=sys.stderr)
        return EXIT_OK

    return _refusals(run)


def cmd_checkpoint(args: argparse.Namespace) -> int:
    def action(ctx: _Context) -> int:
        stored = ctx.store.checkpoint()  # None when nothing came after the last one
        head = ctx.store.head()
        if stored is None:
            print(f"nothing new since the last checkpoint, which covers event {head.checkpoint_seq}")
        else:
            print(f"checkpoint event {stored.seq} signs the chain through event {head.checkpoint_seq}")
        return EXIT_OK

    return _on_store(_settings(args), action, signing=True)


def cmd_purge(args: argparse.Namespace) -> int:
    from zguard.audit.retention import purge

    def action(ctx: _Context) -> int:
        result = purge(ctx.store, ctx.settings, actor=acting_user(), dry_run=args.dry_run)
        if args.json:
            print(json.dumps(result.as_dict(), indent=2))
        elif result.through_seq <= result.base_seq:
            print(f"nothing to purge: no event before {_when(result.cutoff_ms)} can be purged now")
        elif result.archive is None:
            print(
                f"would archive and delete events {result.base_seq + 1}..{result.through_seq} ({result.count}), "
                f"older than {_when(result.cutoff_ms)}"
            )
        else:
            info = result.archive
            print(f"archived {info.count} event(s) ({info.first_seq}..{info.last_seq}) to {info.path}")
            print(f"  sha256 {info.sha256}; then deleted them: the chain now starts after event {info.last_seq}")
        for note in result.notes:
            print(f"zguard: {note}", file=sys.stderr)
        return EXIT_FIX if result.held_back else EXIT_OK

    return _on_store(_settings(args), action, signing=True)


def cmd_verify_archive(args: argparse.Namespace) -> int:
    from zguard.audit.archive import ArchiveProblem, verify_archive

    settings = _settings(args)

    def run() -> int:
        key = _public_key(settings, args.public_key)
        reports = []
        for name in args.files:
            path = Path(name)
            if not path.is_file():
                raise AuditCommandRefused(f"no archive file {path}")
            reports.append(verify_archive(path, key))
        intact = [r for r in reports if r.ok]
        intact.sort(key=lambda r: r.manifest["first_seq"] or 0)
        for before, after in itertools.pairwise(intact):
            if before.manifest["last_hash"] != after.manifest["base_hash"]:
                after.problem = ArchiveProblem(
                    "deleted",
                    before.manifest["last_seq"] + 1,
                    f"does not continue {before.path.name}: events between them are missing or were changed",
                )
        for report in reports:
            if args.json:
                continue
            info = report.manifest
            if report.problem is None:
                print(
                    f"{report.path}: intact: {report.events} event(s) {info['first_seq']}..{info['last_seq']}, "
                    f"signed checkpoint {info['checkpoint_seq']}, sha256 of lines {info['lines_sha256'][:16]}…"
                )
            else:
                where = f" at event {report.problem.seq}" if report.problem.seq is not None else ""
                print(f"{report.path}: NOT intact: {report.problem.kind}{where}: {printable(report.problem.message)}")
        if args.json:
            print(json.dumps([report.as_dict() for report in reports], indent=2))
        return EXIT_OK if all(report.ok for report in reports) else EXIT_NO

    return _refusals(run)


# --- the parser ------------------------------------------------------------------------------


def _filter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", type=moment, metavar="TIME", help="from this time: ISO 8601 (UTC unless zoned) or 24h, 7d ago"
    )
    parser.add_argument("--until", type=moment, metavar="TIME", help="before this time (same forms)")
    parser.add_argument("--principal", metavar="NAME", help="only events of this principal")
    parser.add_argument("--outcome", choices=["allowed", "denied", "done", "failed"], help="only this outcome")
    parser.add_argument(
        "--type", metavar="PREFIX", help="only event types starting with this: auth, generation.completed"
    )
    parser.add_argument("--request-id", metavar="ID", help="only events of this request")


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `zguard audit ...` to the `zguard` parser; `common` carries --config."""
    where = cli_common.group(
        commands,
        common,
        "audit",
        "verify, read and maintain the audit trail",
        "Verify, read and maintain the tamper-evident audit trail.",
    )

    def command(
        name: str, handler: cli_common.Handler, help_text: str, description: str, *, json_option: bool = True
    ) -> argparse.ArgumentParser:
        parser = cli_common.command(where, common, name, handler, help_text=help_text, description=description)
        if json_option:
            parser.add_argument("--json", action="store_true", help="machine-readable output")
        return parser

    verify = command(
        "verify",
        cmd_verify,
        "check the hash chain and checkpoint signatures; exit 1 naming the first bad event",
        "Check the whole stored chain: hashes, links, sequence, the head and every checkpoint signature. Exit 0 when intact; exit 1 naming the first bad event and what happened to it (edited, deleted, inserted, reordered, truncated, forged_checkpoint).",
    )
    verify.add_argument(
        "--public-key",
        metavar="FILE",
        help="the signing key's public half kept off-host (default: derived from the signing key file)",
    )
    command(
        "status",
        cmd_status,
        "show the head, checkpoints, purge point and forwarding lag",
        "Show the chain's head, the last checkpoint, the number of stored events, how far it was purged, and each consumer cursor (the syslog forwarder) with its lag.",
    )
    tail = command(
        "tail",
        cmd_tail,
        "print the latest events; --follow keeps printing",
        "Print the latest events, oldest first; with --follow keep printing new ones until Ctrl-C.",
    )
    tail.add_argument("-n", "--lines", type=_positive, default=20, metavar="N", help="how many (default 20)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing events as they are stored")
    search = command(
        "search",
        cmd_search,
        "find events by time, principal, outcome, type, request or prompt",
        "Find events by time, principal, outcome, type or request, oldest first. --prompt finds the generations of a suspect prompt in `hmac` capture mode by computing its HMAC with this server's key.",
    )
    _filter_options(search)
    search.add_argument(
        "--prompt", metavar="TEXT", help="a suspect prompt (or - to read it from stdin, out of shell history)"
    )
    search.add_argument("--limit", type=_positive, default=100, metavar="N", help="at most this many (default 100)")
    export = command(
        "export",
        cmd_export,
        "write matching events as JSON Lines or CSV",
        "Write matching events as JSON Lines (each line the stored event, exactly as hashed) or CSV (fixed columns; cells a spreadsheet would run as formulas are neutralised). Recorded as `audit.exported`.",
        json_option=False,
    )
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="jsonl (default) or csv")
    _filter_options(export)
    export.add_argument("--output", metavar="FILE", help="a new file, created mode 0600 (default: stdout)")
    reveal = command(
        "reveal",
        cmd_reveal,
        "open an event's sealed prompt with the auditor's private key",
        "Open the sealed prompt of an event captured in `encrypted` mode, with the auditor's X25519 private key (run it on the auditor's machine). Recorded as `audit.prompt_revealed`.",
    )
    reveal.add_argument("event_id", metavar="EVENT_ID", help="the event's id")
    reveal.add_argument(
        "--key",
        required=True,
        metavar="PRIVATE_KEY_FILE",
        help="the auditor's private key (PEM), from `zguard audit keygen`",
    )
    keygen = command(
        "keygen",
        cmd_keygen,
        "make an auditor key pair for encrypted prompt capture",
        "Make an auditor's X25519 key pair for `encrypted` prompt capture in DIR: the public key goes into the settings, the private key stays with the auditor.",
        json_option=False,
    )
    keygen.add_argument(
        "dir",
        metavar="DIR",
        help="a directory (created 0700) to write auditor-prompt.pem and auditor-prompt.pub.pem to",
    )
    command(
        "public-key",
        cmd_public_key,
        "print the checkpoint signing public key (PEM)",
        "Print the checkpoint signing key's public half (PEM), to keep off-host for `verify --public-key` and `verify-archive`.",
        json_option=False,
    )
    command(
        "checkpoint",
        cmd_checkpoint,
        "write a signed checkpoint now",
        "Write a signed checkpoint of the chain's head now.",
        json_option=False,
    )
    purge = command(
        "purge",
        cmd_purge,
        "archive and delete events older than the retention",
        "Archive the events older than audit.retention_days to a signed file in audit.archive_dir, then delete them; events the syslog forwarder has not delivered are kept (exit 2 says so). Recorded as `audit.purged`. The server runs this daily.",
    )
    purge.add_argument("--dry-run", action="store_true", help="say what would be purged; change nothing")
    archive = command(
        "verify-archive",
        cmd_verify_archive,
        "check purge archive files",
        "Check archive files written by purge: the chain inside, its signed checkpoint, the manifest's digest and signature, and that consecutive archives link up. Exit 1 when one is not intact.",
    )
    archive.add_argument("files", nargs="+", metavar="FILE", help="archive file(s)")
    archive.add_argument(
        "--public-key",
        metavar="FILE",
        help="the signing key's public half (default: derived from the signing key file)",
    )
