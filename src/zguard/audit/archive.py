"""Signed archive files of purged audit events: writing them, and checking one on its own.

An archive is JSON Lines, one object a line, in this order:

- `{"kind": "event", ...}` with every column of the `audit_events` row (`store.ROW_COLUMNS`:
  seq, event_id, time_ms, type, outcome, principal, request_id, body, prev_hash, hash) for each
  archived event, in sequence order; `body` is the canonical JSON string exactly as hashed;
- `{"kind": "anchor", ...the same fields}` for the events after the last archived one up to the
  signed checkpoint that covers them, when that checkpoint covers a later event than the last
  archived one: they let the chain be followed to the signature. They stay in the store (and
  will be archived again, as events, by a later purge);
- `{"kind": "checkpoint", ...the same fields}`: that signed checkpoint event (a copy: it stays
  in the store);
- `{"kind": "manifest", ...}` last: the range (`first_seq`, `last_seq`, `count`), the chain's
  `base_hash` before the first event and `last_hash` after the last, `lines_sha256` (SHA-256 of
  every byte before the manifest line), and an Ed25519 `signature` by the audit signing key over
  the canonical JSON of the other manifest fields, prefixed with `MANIFEST_CONTEXT` so that a
  manifest signature can never pass for a checkpoint signature or the other way round.

`verify_archive` needs nothing but the file and the public key: the chain inside must be whole,
the checkpoint must be validly signed and name the hash the chain reaches, the manifest must be
signed and its digest must match the lines. Consecutive archives link: an archive's `base_hash`
is the previous one's `last_hash`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from zguard.audit.chain import CHECKPOINT_TYPE, CheckpointSigner, canonical, chain_hash, checkpoint_valid
from zguard.audit.verify import verify_rows
from zguard.security.keys import key_id

ARCHIVE_FORMAT = "zguard-audit-archive-v1"
MANIFEST_CONTEXT = b"zguard-audit-archive-v1\n"
_KINDS = ("event", "anchor", "checkpoint", "manifest")


class ArchivedRow(NamedTuple):
    """An event as the archive keeps it: an `audit_events` row, fields in `store.ROW_COLUMNS`
    order, so that `verify_rows` reads it like a row from the store."""

    seq: int
    event_id: str
    time_ms: int
    type: str
    outcome: str
    principal: str | None
    request_id: str | None
    body: str
    prev_hash: str
    hash: str


_TYPES: dict[str, tuple[type, ...]] = {
    name: (int,) if name in ("seq", "time_ms") else (str, type(None)) if name in ("principal", "request_id") else (str,)
    for name in ArchivedRow._fields
}


_encode_line = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def archive_line(kind: str, row: ArchivedRow) -> bytes:
    # Fixed key order, not sorted: the manifest's digest covers these exact bytes, so they need
    # not be canonical, and sorting cost as much as the rest of the purge.
    return (_encode_line({"kind": kind, **row._asdict()}) + "\n").encode()


def manifest_message(manifest: Mapping[str, Any]) -> bytes:
    """What the manifest signature covers: every manifest field but the signature."""
    return MANIFEST_CONTEXT + canonical({k: v for k, v in manifest.items() if k != "signature"}).encode()


@dataclass(frozen=True)
class ArchiveInfo:
    path: Path
    sha256: str  # of the whole file
    first_seq: int
    last_seq: int
    count: int
    last_hash: str
    checkpoint_seq: int


class ArchiveWriter:
    """Writes one archive to a hidden temporary file in `directory` (mode 0600); `finish` signs it,
    fsyncs it and renames it into place, so an archive file is either whole or absent."""

    def __init__(self, directory: Path, name: str, *, base_seq: int, base_hash: str) -> None:
        self.path = directory / name
        self._temp = directory / f".{name}.partial"
        self._handle = os.fdopen(os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        self._digest = hashlib.sha256()
        self._file_digest = hashlib.sha256()
        self.base_seq, self.base_hash = base_seq, base_hash
        self.first_seq: int | None = None
        self.last_seq, self.last_hash, self.count = base_seq, base_hash, 0  # the archived events
        self.end_seq, self.end_hash, self.anchors = base_seq, base_hash, 0  # the chain written, anchors included

    def _write(self, line: bytes) -> None:
        self._handle.write(line)
        self._digest.update(line)
        self._file_digest.update(line)

    def add(self, row: ArchivedRow, *, anchor: bool = False) -> None:
        """Append `row` as an archived event, or (`anchor`) as a link on the way to the checkpoint."""
        if anchor:
            self._write(archive_line("anchor", row))
            self.anchors += 1
        else:
            if self.anchors:
                raise ValueError("an archived event cannot follow an anchor")
            self._write(archive_line("event", row))
            self.first_seq = row.seq if self.first_seq is None else self.first_seq
            self.last_seq, self.last_hash = row.seq, row.hash
            self.count += 1
        self.end_seq, self.end_hash = row.seq, row.hash

    def finish(
        self, checkpoint: ArchivedRow, signer: CheckpointSigner, *, created_ms: int, **extra: Any
    ) -> ArchiveInfo:
        self._write(archive_line("checkpoint", checkpoint))
        manifest: dict[str, Any] = {
            "kind": "manifest",
            "format": ARCHIVE_FORMAT,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "count": self.count,
            "base_seq": self.base_seq,
            "base_hash": self.base_hash,
            "last_hash": self.last_hash,
            "anchors": self.anchors,
            "checkpoint_seq": checkpoint.seq,
            "created_ms": created_ms,
            "lines_sha256": self._digest.hexdigest(),
            "key_id": signer.key_id,
            **extra,
        }
        manifest["signature"] = signer.private_key.sign(manifest_message(manifest)).hex()
        line = (canonical(manifest) + "\n").encode()
        self._handle.write(line)
        self._file_digest.update(line)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        if self.path.exists():
            self.abort()
            raise FileExistsError(f"{self.path} already exists")
        os.rename(self._temp, self.path)
        _fsync_directory(self.path.parent)
        return ArchiveInfo(
            self.path,
            self._file_digest.hexdigest(),
            self.first_seq if self.first_seq is not None else self.base_seq,
            self.last_seq,
            self.count,
            self.last_hash,
            checkpoint.seq,
        )

    def abort(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self._temp.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _body(row: ArchivedRow) -> dict[str, Any]:
    try:
        body = json.loads(row.body)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@dataclass(frozen=True)
class ArchiveProblem:
    kind: str  # a verify.Kind (edited, deleted, ...), or malformed, lines_digest, manifest_signature
    seq: int | None
    message: str


def checkpoint_problem(
    checkpoint: ArchivedRow, *, last_seq: int, last_hash: str, public_key: Ed25519PublicKey
) -> ArchiveProblem | None:
    """Why `checkpoint` does not sign the chain ending at (`last_seq`, `last_hash`), or None."""
    seq = checkpoint.seq
    if chain_hash(checkpoint.prev_hash, checkpoint.body) != checkpoint.hash:
        return ArchiveProblem("edited", seq, f"the checkpoint event {seq} was edited: it no longer matches its hash")
    body = _body(checkpoint)
    detail = body.get("detail") or {}
    if body.get("type") != CHECKPOINT_TYPE or body.get("seq") != seq or not checkpoint_valid(public_key, detail):
        return ArchiveProblem(
            "forged_checkpoint", seq, f"checkpoint {seq} has no valid signature by the audit signing key"
        )
    covers = detail.get("covers_seq")
    if covers != last_seq or detail.get("head_hash") != last_hash or checkpoint.prev_hash != last_hash:
        return ArchiveProblem(
            "edited",
            covers if isinstance(covers, int) else seq,
            f"the chain up to event {last_seq} does not match the signed checkpoint {seq} (which covers event "
            f"{covers}): events before it were rewritten",
        )
    return None


# --- verification ----------------------------------------------------------------------------


@dataclass
class ArchiveReport:
    path: Path
    events: int = 0
    checkpoints: int = 0  # inside the archived chain
    manifest: dict[str, Any] = field(default_factory=dict)
    problem: ArchiveProblem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        keys = ("first_seq", "last_seq", "count", "base_hash", "last_hash", "checkpoint_seq", "created_ms", "key_id")
        return {
            "path": str(self.path),
            "ok": self.ok,
            "events": self.events,
            "checkpoints": self.checkpoints,
            **{key: self.manifest.get(key) for key in keys},
            "problem": None
            if self.problem is None
            else {"kind": self.problem.kind, "seq": self.problem.seq, "message": self.problem.message},
        }


def _parse_line(number: int, raw: bytes) -> tuple[str, ArchivedRow | None, dict[str, Any]]:
    try:
        line = json.loads(raw)
    except ValueError:
        raise _Malformed(number, "is not JSON") from None
    if not isinstance(line, dict) or line.get("kind") not in _KINDS:
        raise _Malformed(number, "is not an " + ", ".join(_KINDS) + " line")
    if line["kind"] == "manifest":
        return "manifest", None, line
    wrong = [
        name for name, types in _TYPES.items() if not isinstance(line.get(name), types) or isinstance(line[name], bool)
    ]
    if wrong:
        raise _Malformed(number, "lacks " + ", ".join(wrong) + " (or has the wrong type)")
    return line["kind"], ArchivedRow(**{name: line[name] for name in ArchivedRow._fields}), line


class _Found(Exception):
    """A problem that ends the walk through an archive."""

    def __init__(self, kind: str, seq: int | None, message: str) -> None:
        super().__init__(message)
        self.problem = ArchiveProblem(kind, seq, message)


class _Malformed(_Found):
    def __init__(self, number: int, what: str) -> None:
        super().__init__("malformed", None, f"line {number} {what}")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        yield from enumerate(handle, start=1)


def verify_archive(path: Path, public_key: Ed25519PublicKey) -> ArchiveReport:
    """Check an archive file with the audit signing key's public half; never raises for bad content."""
    report = ArchiveReport(path)
    try:
        return _verify(path, public_key, report)
    except _Found as exc:
        report.problem = exc.problem
        return report


def _read_manifest(path: Path) -> tuple[int, dict[str, Any], str]:
    """First pass: the manifest (the last line), its line number, and the SHA-256 of the lines before it."""
    digest, previous, last = hashlib.sha256(), None, None
    for number, raw in _lines(path):
        if previous is not None:
            digest.update(previous)
        previous, last = raw, (number, raw)
    if last is None:
        raise _Malformed(0, "(the file is empty)")
    kind, _, manifest = _parse_line(*last)
    if kind != "manifest" or manifest.get("format") != ARCHIVE_FORMAT:
        raise _Malformed(last[0], f"(the last) is not a {ARCHIVE_FORMAT} manifest")
    for name, types in (("base_seq", int), ("last_seq", int), ("base_hash", str), ("last_hash", str)):
        if not isinstance(manifest.get(name), types):
            raise _Malformed(last[0], f"(the manifest) lacks {name}")
    return last[0], manifest, digest.hexdigest()


class _Walk:
    """Second pass: yields the chain's rows (archived events, then anchors) and notes the rest."""

    def __init__(self, path: Path, manifest_line: int) -> None:
        self.path, self.manifest_line = path, manifest_line
        self.checkpoint: ArchivedRow | None = None
        self.last_archived: ArchivedRow | None = None
        self.end: ArchivedRow | None = None  # the chain's last row, anchors included
        self.count = self.anchors = 0

    def rows(self) -> Iterator[ArchivedRow]:
        """The chain's rows, one line behind the file: a line whose seq is not above the one before
        it is reported as reordered before the gap it left is mistaken for a deletion."""
        held: ArchivedRow | None = None
        for row in self._parsed():
            if held is not None:
                if row.seq <= held.seq:
                    raise _Found("reordered", row.seq, f"event {row.seq} is stored after event {held.seq}")
                yield held
            held = row
        if held is not None:
            yield held

    def _parsed(self) -> Iterator[ArchivedRow]:
        for number, raw in _lines(self.path):
            if number == self.manifest_line:
                return
            kind, row, _ = _parse_line(number, raw)
            if kind == "manifest" or row is None:
                raise _Malformed(number, "is a manifest before the end")
            if self.checkpoint is not None:
                raise _Malformed(number, "follows the checkpoint line")
            if kind == "checkpoint":
                self.checkpoint = row
                continue
            if kind == "event":
                if self.anchors:
                    raise _Malformed(number, "is an archived event after an anchor")
                self.count += 1
                self.last_archived = row
            else:
                self.anchors += 1
            self.end = row
            yield row


def _verify(path: Path, public_key: Ed25519PublicKey, report: ArchiveReport) -> ArchiveReport:
    manifest_line, manifest, digest = _read_manifest(path)
    report.manifest = manifest
    base_seq, base_hash = manifest["base_seq"], manifest["base_hash"]
    walk = _Walk(path, manifest_line)
    chain = verify_rows(walk.rows(), base_seq=base_seq, base_hash=base_hash, head_seq=None, public_key=public_key)
    report.events, report.checkpoints = walk.count, chain.checkpoints
    if chain.problem is not None:
        report.problem = ArchiveProblem(chain.problem.kind, chain.problem.seq, chain.problem.message)
    else:
        report.problem = _anchor_problem(walk, base_seq=base_seq, base_hash=base_hash, public_key=public_key)
    if report.problem is None and digest != manifest.get("lines_sha256"):
        report.problem = ArchiveProblem("lines_digest", None, "the archive's lines do not match the manifest's SHA-256")
    if report.problem is None and (manifest.get("key_id") != key_id(public_key) or not _signed(public_key, manifest)):
        report.problem = ArchiveProblem(
            "manifest_signature", None, "the manifest has no valid signature by this audit signing key"
        )
    archived = walk.last_archived
    last = (archived.seq, archived.hash) if archived is not None else (base_seq, base_hash)
    if report.problem is None and (
        walk.count != manifest.get("count")
        or walk.anchors != manifest.get("anchors")
        or last != (manifest["last_seq"], manifest["last_hash"])
        or (walk.checkpoint is not None and walk.checkpoint.seq != manifest.get("checkpoint_seq"))
    ):
        report.problem = ArchiveProblem("malformed", None, "the manifest's range or counts differ from the lines")
    return report


def _anchor_problem(
    walk: _Walk, *, base_seq: int, base_hash: str, public_key: Ed25519PublicKey
) -> ArchiveProblem | None:
    """Whether the signed checkpoint at the archive's end covers exactly the chain inside it."""
    checkpoint = walk.checkpoint
    if checkpoint is None:
        return ArchiveProblem("truncated", None, "the archive holds no checkpoint line")
    covers = (_body(checkpoint).get("detail") or {}).get("covers_seq")
    end_seq, end_hash = (walk.end.seq, walk.end.hash) if walk.end is not None else (base_seq, base_hash)
    if isinstance(covers, int) and end_seq < covers:
        return ArchiveProblem(
            "truncated", end_seq + 1, f"the chain ends at event {end_seq}, before the checkpoint's event {covers}"
        )
    return checkpoint_problem(checkpoint, last_seq=end_seq, last_hash=end_hash, public_key=public_key)


def _signed(public_key: Ed25519PublicKey, manifest: Mapping[str, Any]) -> bool:
    try:
        public_key.verify(bytes.fromhex(str(manifest.get("signature"))), manifest_message(manifest))
    except (ValueError, InvalidSignature):
        return False
    return True
