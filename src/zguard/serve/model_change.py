"""The start check of `model.change_approval_required` (the rules: zguard.audit.model_changes).

`serve` reads the manifest's digest before `server.started` is recorded and refuses to start
(`model_change_unapproved`, exit 2, recorded as `model.change_unapproved`) when the trail holds
no approval of it by an admin other than its requester. The digest checked is handed to the
load, which refuses a model whose verified manifest is another one (a manifest swapped between
this check and the load), so what is served is what was approved.
"""

from __future__ import annotations

import logging

from zguard.audit import AuditEvent, AuditSink
from zguard.audit.chain import iso_ms
from zguard.audit.model_changes import UNAPPROVED, state_of, unapproved
from zguard.audit.store import AuditStore
from zguard.config import Settings
from zguard.errors import ModelChangeUnapproved
from zguard.integrity.manifest import read_manifest

log = logging.getLogger("zguard.serve.model_change")


def check_model_change(settings: Settings, store: AuditStore, audit: AuditSink) -> str | None:
    """The approved manifest digest to load, or None when no approval is required (setting off, or
    the demo model zguard builds itself); ModelChangeUnapproved (recorded) when it is missing."""
    model_dir = settings.model.path
    if not settings.model.change_approval_required or model_dir is None:
        return None
    digest = read_manifest(model_dir).digest  # ManifestError: no manifest, nothing to approve
    state = state_of(store, digest)
    if state.approval is not None and state.request is not None:
        log.info(
            "model change approved: manifest %s pinned by %s, approved by %s at %s",
            digest,
            state.approval.requester,
            state.approval.principal,
            iso_ms(state.approval.time_ms),
        )
        return digest
    refusal = unapproved(model_dir, state)
    audit.emit(
        AuditEvent(
            type=UNAPPROVED,
            outcome="denied",
            code=refusal.code,
            principal="zguard",
            model=settings.model.id,
            manifest=digest,
            detail={"model_path": str(model_dir), "requester": state.request.principal if state.request else None},
        )
    )
    raise refusal


def check_loaded(approved: str | None, loaded: str | None) -> None:
    """After the load: the verified manifest must be the approved one."""
    if approved is not None and loaded != approved:
        raise ModelChangeUnapproved(
            f"the model loaded with manifest {loaded}, not the approved {approved}: the manifest changed after the "
            "start check; nothing is served"
        )
