"""Model changes with four eyes: the change requests and approvals, read from the audit trail.

A model change is named by its manifest digest (zguard.integrity.manifest): the same files give
the same digest, any changed byte another. `zguard model pin DIR --as ADMIN` records
`model.change_requested`; `zguard model approve DIR --as OTHER_ADMIN` records
`model.change_approved` (zguard.services.model_changes writes both). With
`model.change_approval_required`, `serve` and `doctor` ask `change_state` whether the digest they
are about to serve has an approval. Decisions:

- The record IS the audit trail: no table of its own that could disagree with it. The events are
  hash-chained and covered by the signed checkpoints like every other (`zguard audit verify`);
  editing, deleting or inserting one breaks the chain there.
- An approval counts only when it names the request it approves (`request_seq`), that request is
  for the same digest, its requester is the one the approval names, and the approver is another
  principal (compared without case, as principal names are). Both events' own hashes are
  re-computed here (`intact`), so an event whose body was edited in the database is not believed
  even before anyone runs `zguard audit verify`; the links between events and the checkpoint
  signatures are what `audit verify` (and `doctor`) check over the whole trail.
- Content-addressed: an approval is for the files, not for a path or a time. Re-pinning the same
  files gives the same digest and the approval stands; pinning anything else needs a new one.
- Only this module's event types are read (`type LIKE 'model.change_%'`, paged), so the check at
  start reads a handful of rows however long the trail is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from zguard.audit.chain import chain_hash
from zguard.audit.formats import body_of
from zguard.audit.store import StoredEvent
from zguard.errors import ModelChangeUnapproved

REQUESTED = "model.change_requested"
APPROVED = "model.change_approved"
REFUSED = "model.change_refused"  # an approve or pin the rules refused (self-approval, not an admin, ...)
UNAPPROVED = "model.change_unapproved"  # serve refused to start on an unapproved manifest
PREFIX = "model.change_"
PAGE = 500


@dataclass(frozen=True)
class ChangeRecord:
    """One `model.change_requested` or `model.change_approved` event, as stored."""

    seq: int
    event_id: str
    time_ms: int
    type: str
    digest: str
    principal: str
    model_path: str | None
    requester: str | None  # approvals: who requested the change they approve
    request_seq: int | None  # approvals: the seq of that request
    os_account: str | None  # who ran the command on the host (`cli:<account>`)
    intact: bool  # the stored hash is the hash of the stored body (and previous hash)

    @property
    def is_request(self) -> bool:
        return self.type == REQUESTED


@dataclass(frozen=True)
class ChangeState:
    """What the trail says about one digest: its last request and the approval that counts."""

    digest: str
    request: ChangeRecord | None
    approval: ChangeRecord | None

    @property
    def approved(self) -> bool:
        return self.approval is not None


class ChangeSource(Protocol):
    """Where the events are read from: the audit store, or a sink that reads back (AuditTrail)."""

    def search(
        self, *, type_prefix: str | None = None, after_seq: int | None = None, limit: int = 100
    ) -> Sequence[StoredEvent]: ...


def same_principal(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.casefold() == b.casefold()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _record(event: StoredEvent) -> ChangeRecord | None:
    body = body_of(event)
    detail = body.get("detail") or {}
    digest, principal = _text(detail.get("digest")), _text(body.get("principal"))
    if digest is None or principal is None:
        return None  # not one this module wrote; never counts
    request_seq = detail.get("request_seq")
    return ChangeRecord(
        seq=event.seq,
        event_id=event.event_id,
        time_ms=int(event.time * 1000),
        type=event.type,
        digest=digest,
        principal=principal,
        model_path=_text(detail.get("model_path")),
        requester=_text(detail.get("requester")),
        request_seq=request_seq if isinstance(request_seq, int) and not isinstance(request_seq, bool) else None,
        os_account=_text(detail.get("os_account")),
        intact=chain_hash(event.prev_hash, event.body) == event.hash,
    )


def _change_events(store: ChangeSource) -> Iterator[StoredEvent]:
    after: int | None = None
    while True:
        page = store.search(type_prefix=PREFIX, after_seq=after, limit=PAGE)
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].seq


def change_records(store: ChangeSource) -> list[ChangeRecord]:
    """Every request and approval in the trail, oldest first (refusals are not records)."""
    records = []
    for event in _change_events(store):
        if event.type in (REQUESTED, APPROVED) and (record := _record(event)) is not None:
            records.append(record)
    return records


def counts(approval: ChangeRecord, requests: dict[int, ChangeRecord]) -> bool:
    """Whether `approval` is a valid second pair of eyes on the request it names."""
    request = requests.get(approval.request_seq) if approval.request_seq is not None else None
    return (
        approval.intact
        and request is not None
        and request.intact
        and request.digest == approval.digest
        and same_principal(request.principal, approval.requester)
        and not same_principal(request.principal, approval.principal)
    )


def change_state(records: list[ChangeRecord], digest: str) -> ChangeState:
    """The last intact request for `digest` and the last approval of any request for it that counts."""
    requests = {r.seq: r for r in records if r.is_request}
    request = next((r for r in reversed(records) if r.is_request and r.digest == digest and r.intact), None)
    approval = next(
        (r for r in reversed(records) if not r.is_request and r.digest == digest and counts(r, requests)), None
    )
    return ChangeState(digest, request, approval)


def state_of(store: ChangeSource, digest: str) -> ChangeState:
    return change_state(change_records(store), digest)


def unapproved(model_dir: Path, state: ChangeState) -> ModelChangeUnapproved:
    """The refusal `serve` and `doctor` report for an unapproved `state`, with its fix."""
    approve = f"`zguard model approve {model_dir} --as OTHER_ADMIN`"
    if state.request is None:
        return ModelChangeUnapproved(
            f"model.change_approval_required: manifest {state.digest} of {model_dir} has no change request and no "
            "approval in the audit trail",
            fix=f"the admin who pinned it records the request: `zguard model pin {model_dir} --as ADMIN`; then {approve}",
        )
    return ModelChangeUnapproved(
        f"model.change_approval_required: manifest {state.digest} of {model_dir} was pinned by "
        f"{state.request.principal} (change request #{state.request.seq}) and has no approval by another admin",
        fix=f"{approve} (an admin other than {state.request.principal})",
    )
