"""`zguard audit verify`: walk the chain and name the first thing that is wrong.

Rows are read in `seq` order from the chain's base (0, or the last purged event) and checked:

- **edited**: the row's body no longer hashes to its stored hash, its searchable columns
  disagree with its body, or (an edit re-hashed by someone without the signing key) the next
  event no longer links to it, or a signed checkpoint no longer matches the chain;
- **deleted**: the sequence jumps (event N is missing);
- **inserted**: an event that does not link to its predecessor while the next one links past
  it, or events beyond the recorded head;
- **reordered**: an event stored at a position other than the one its own body names;
- **truncated**: the store ends before the recorded head or before the last signed checkpoint.

Every `audit.checkpoint` event's Ed25519 signature is checked and its head hash compared with
the chain at the point it covers. With several writers the key is a listed set
(`zguard.audit.checkpoint_keys`): each checkpoint's `key_id` must name a listed key, and the
report counts the checkpoints of each (`signers`, by the key's replica name). What the database alone cannot show — the whole tail after
the last checkpoint removed *and* the head row rewritten to match — the checkpoints forwarded to
syslog still show; compare `zguard audit status` with the collector's last checkpoint.

On a live trail the server keeps appending while the walk runs: a row beyond the head read at the
start is taken as appended meanwhile only when the head, read again, covers it (the store moves
the head in the same transaction as it writes the rows); the walk then ends at the first head,
which it checked. A row beyond the head as read again is still named as inserted.

A caller showing progress (the console's "verify now") passes `progress`: it is called with the
rows checked so far every `progress_every` rows (an integer comparison per row otherwise).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from zguard.audit.chain import CHECKPOINT_TYPE, checkpoint_valid, column_text
from zguard.audit.checkpoint_keys import CheckpointKeys
from zguard.audit.store import ROW_COLUMNS, AuditStore, Head

Kind = Literal["edited", "deleted", "inserted", "reordered", "truncated", "forged_checkpoint"]
PublicKeys = Ed25519PublicKey | CheckpointKeys  # one key, or the listed keys of several writers


@dataclass(frozen=True)
class ChainProblem:
    kind: Kind
    seq: int
    message: str


@dataclass
class Report:
    events: int = 0
    checkpoints: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_checkpoint: int | None = None
    problem: ChainProblem | None = None
    notes: list[str] = field(default_factory=list)
    signers: dict[str, int] | None = None  # checkpoints per listed key's name; None: one key

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "checkpoints": self.checkpoints,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_checkpoint_covers": self.last_checkpoint,
            "problem": None
            if self.problem is None
            else {"kind": self.problem.kind, "seq": self.problem.seq, "message": self.problem.message},
            "notes": self.notes,
            **({"signers": dict(sorted(self.signers.items()))} if self.signers is not None else {}),
        }


# Rows are tuples in this column order (AuditStore.iter_rows).
_SEQ, _BODY, _PREV, _HASH = (ROW_COLUMNS.index(name) for name in ("seq", "body", "prev_hash", "hash"))
# (index, name, length limit of a text column) of the columns that repeat a body field
_CHECKED = (
    (1, "event_id", 0),
    (2, "time_ms", 0),
    (3, "type", 64),
    (4, "outcome", 0),
    (5, "principal", 128),
    (6, "request_id", 64),
)
_RING = 4096  # the last events' (seq, hash): where an insertion's link and a checkpoint's head are looked up
PROGRESS_EVERY = 10_000  # rows between progress calls: well under a second of verification


def verify_rows(
    rows: Iterable[Sequence[Any]],
    *,
    base_seq: int,
    base_hash: str,
    head_seq: int | None,
    head_hash: str | None = None,
    public_key: PublicKeys | None,
    progress: Callable[[int], None] | None = None,
    progress_every: int = PROGRESS_EVERY,
    head_now: Callable[[], int] | None = None,
) -> Report:
    """Check rows (tuples in `ROW_COLUMNS` order) given in ascending `seq` order.

    `progress`, when given, is called with the count of rows checked every `progress_every` (> 0)
    rows. `head_now`, when given, reads the head's seq again once a row past `head_seq` shows up:
    if it covers that row, the row was appended during the walk and the walk ends there."""
    report = Report(signers={} if isinstance(public_key, CheckpointKeys) else None)
    ticks = _Progress(progress, progress_every)
    expected_seq = base_seq + 1
    prev_hash = base_hash
    ring: list[tuple[int, str]] = [(-1, "")] * _RING  # ring[seq % _RING] = (seq, hash) of the last good rows
    ring[base_seq % _RING] = (base_seq, base_hash)

    def linked_to(digest: str) -> int | None:
        """The seq of a recent good row with hash `digest` (only looked up once something is wrong)."""
        return max((seq for seq, known in ring if known == digest and seq >= 0), default=None)

    last_seq = base_seq
    loads = json.loads
    sha256 = hashlib.sha256

    def fail(kind: Kind, seq: int, message: str) -> Report:
        report.problem = ChainProblem(kind, seq, message)
        return report

    for row in rows:
        seq, raw, row_prev, row_hash = row[_SEQ], row[_BODY], row[_PREV], row[_HASH]
        if head_seq is not None and seq > head_seq:
            if head_now is not None and head_now() >= seq:
                break
            return fail("inserted", seq, f"event(s) from {seq} on were inserted after the recorded head {head_seq}")
        if report.first_seq is None:
            report.first_seq = seq
        try:
            body = loads(raw)
            digest = sha256(f"{row_prev}\n{raw}".encode()).hexdigest()
        except (ValueError, UnicodeEncodeError):
            return fail("edited", seq, f"event {seq}: its body is not valid JSON")
        if digest != row_hash:
            return fail("edited", seq, f"event {seq} was edited: its content no longer matches its hash")
        body_seq = body.get("seq")
        if body_seq != seq:
            linked = linked_to(row_prev)
            if isinstance(body_seq, int) and body_seq < seq and linked is not None and linked < seq - 1:
                return fail(
                    "inserted",
                    linked + 1,
                    f"event(s) {linked + 1}..{seq - 1} were inserted: event {body_seq} (now stored at {seq}) "
                    f"links to event {linked}",
                )
            return fail(
                "reordered",
                seq,
                f"events were reordered: the event stored at position {seq} is event {body_seq} by its own content",
            )
        for index, name, limit in _CHECKED:
            expected = body.get(name)
            if row[index] != expected and not (  # a long or unencodable value is stored cut / replaced
                limit and isinstance(expected, str) and row[index] == column_text(expected, limit)
            ):
                return fail("edited", seq, f"event {seq} was edited: column {name!r} disagrees with the hashed content")
        if seq > expected_seq:
            missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
            return fail(
                "deleted",
                expected_seq,
                f"event(s) {missing} were deleted: the sequence jumps from {expected_seq - 1} to {seq}",
            )
        if row_prev != prev_hash:
            linked = linked_to(row_prev)
            if linked is not None:
                return fail(
                    "inserted",
                    linked + 1,
                    f"event(s) {linked + 1}..{seq - 1} were inserted: event {seq} links to event {linked}",
                )
            return fail(
                "edited", seq - 1, f"event {seq - 1} was edited and re-hashed: event {seq} no longer links to it"
            )
        ring[seq % _RING] = (seq, row_hash)
        if body.get("type") == CHECKPOINT_TYPE:
            report.checkpoints += 1
            if (problem := _check_checkpoint(body, seq, public_key, ring, base_seq, base_hash, report)) is not None:
                return fail(*problem)
        prev_hash = row_hash
        expected_seq = seq + 1
        last_seq = seq
        report.events += 1
        if report.events == ticks.at:
            ticks.tick(report.events)
    report.last_seq = last_seq if report.events else None
    if head_seq is not None:
        if last_seq < head_seq:
            return fail(
                "truncated",
                last_seq + 1,
                f"the trail was truncated: it ends at event {last_seq} but the head records {head_seq}",
            )
        if head_hash is not None and prev_hash != head_hash:
            return fail(
                "edited",
                last_seq,
                f"the chain's last hash (event {last_seq}) differs from the recorded head: events were rewritten",
            )
    return report


class _Progress:
    """`verify_rows`' progress calls: at `at` rows checked, then every `every` rows. Without a
    callback `at` is never reached, so the walk pays one integer comparison per row."""

    __slots__ = ("at", "call", "every")

    def __init__(self, call: Callable[[int], None] | None, every: int) -> None:
        self.call = call if call is not None else _no_progress
        self.every = every
        self.at = every if call is not None else -1

    def tick(self, checked: int) -> None:
        self.call(checked)
        self.at += self.every


def _no_progress(checked: int) -> None:
    del checked


def _check_checkpoint(  # noqa: PLR0917 - the verifier's state it reads
    body: dict[str, Any],
    seq: int,
    public_key: PublicKeys | None,
    ring: list[tuple[int, str]],
    base_seq: int,
    base_hash: str,
    report: Report,
) -> tuple[Kind, int, str] | None:
    detail = body.get("detail") or {}
    if isinstance(public_key, CheckpointKeys):
        listed = public_key.get(str(detail.get("key_id")))
        if listed is None:
            return "forged_checkpoint", seq, f"checkpoint {seq} is signed by a key not in audit.checkpoint_keys"
        if not checkpoint_valid(listed.public_key, detail):
            return "forged_checkpoint", seq, f"checkpoint {seq} has no valid signature by the key of {listed.name}"
        if report.signers is not None:
            report.signers[listed.name] = report.signers.get(listed.name, 0) + 1
    elif public_key is not None and not checkpoint_valid(public_key, detail):
        return "forged_checkpoint", seq, f"checkpoint {seq} has no valid signature by the audit signing key"
    covers = detail.get("covers_seq")
    if not isinstance(covers, int):
        return None
    known_seq, known_hash = ring[covers % _RING]
    known = known_seq == covers
    if known and known_hash != detail.get("head_hash"):
        return (
            "edited",
            covers,
            f"the chain up to event {covers} does not match the signed checkpoint {seq}: events before it were rewritten",
        )
    if covers == base_seq and detail.get("head_hash") != base_hash:
        return "edited", seq, f"checkpoint {seq} does not match the chain's base"
    if not known and covers != base_seq:
        report.notes.append(f"checkpoint {seq} covers event {covers}, outside the stored chain")
    report.last_checkpoint = covers
    return None


def verify_store(
    store: AuditStore,
    public_key: PublicKeys | None,
    *,
    head: Head | None = None,
    progress: Callable[[int], None] | None = None,
    progress_every: int = PROGRESS_EVERY,
) -> Report:
    """Verify the whole stored chain against its head row and checkpoints: through `head` (read
    from the store at the start when None), with `verify_rows`' `progress` calls."""
    head = store.head() if head is None else head
    return verify_rows(
        store.iter_rows(),
        base_seq=head.base_seq,
        base_hash=head.base_hash,
        head_seq=head.seq,
        head_hash=head.hash,
        public_key=public_key,
        progress=progress,
        progress_every=progress_every,
        head_now=store.head_seq,
    )
