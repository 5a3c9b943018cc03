"""What the console's governance pages call: re-certification campaigns and model-change approval.

Built once by the wiring (zguard.serve.wiring) on the server's state database, audit sink and
keys; None without a state database. Decisions written here:

- The campaign service is the CLI's `RecertificationService` (zguard.cli.recertification) on the
  same stores and role registry: the same rules and the same `approval.*` events, whoever calls.
- An export is signed with the audit checkpoint key, read (or made, as `serve` and the CLI do)
  when the first export is asked for, not at start-up: `zguard docs` and servers that never
  export keep no key because of this module.
- Model changes are `ModelChanges` on the principals and the readable audit trail (the records
  ARE the trail, zguard.audit.model_changes). The console path (`approve_signed_in`) takes the
  signed-in identity instead of a name and a pasted token: the console's own authentication is
  the proof (a session, which admins open with TOTP by default, or an API token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zguard.audit import AuditReader, AuditSink, DetailValue
from zguard.audit.model_changes import ChangeRecord, change_state
from zguard.audit.setup import signer
from zguard.errors import RouteNotFound, ZguardError
from zguard.integrity.manifest import ManifestError, check_layout
from zguard.security.keys import KeyFileError, load_public_key
from zguard.services.model_changes import ModelChangeRefused, ModelChanges, Operator
from zguard.services.recertification import RecertificationService, sign_export
from zguard.store.approvals import ApprovalStore
from zguard.store.recertification import RecertificationStore

if TYPE_CHECKING:
    from zguard.audit.chain import CheckpointSigner
    from zguard.config import Settings
    from zguard.services.auth import AuthService, Identity


@dataclass(frozen=True)
class SignedExport:
    """A campaign's evidence document, the Ed25519 signature over its exact bytes, and the key id."""

    filename: str
    data: bytes
    signature: bytes
    key_id: str


@dataclass(frozen=True)
class Governance:
    """The campaign service, the model-change records and approvals, and the export signer."""

    campaigns: RecertificationService
    grants: ApprovalStore  # the campaign items' grants, as they are now
    model_changes: ModelChanges | None  # None: the audit sink cannot be read back (no trail)
    signer: Callable[[], CheckpointSigner]
    manifest_key: Path | None = None  # model.manifest_public_key: a signed manifest's signature is checked too

    def signed(self, data: bytes, filename: str) -> SignedExport:
        key = self.signer()
        return SignedExport(filename, data, sign_export(data, key.private_key), key.key_id)

    def approve_model_change(
        self, identity: Identity, seq: int, operator: Operator
    ) -> tuple[ChangeRecord, ChangeRecord]:
        """Approve change request #`seq` as the signed-in `identity` (ModelChanges.approve_signed_in).

        The directory the request names is checked against its manifest first, as `zguard model
        approve` does, but without hashing (a request must not read 20 GB): the manifest there
        must be the one requested (its digest, its signature when a key is set), and every file
        present with its pinned size. `serve`'s load hashes every file against it; a byte changed
        since fails that load. A request that is not the latest for its digest is refused: the
        latest is the one that counts (zguard.audit.model_changes.change_state)."""
        changes = self.model_changes
        if changes is None:
            raise RouteNotFound("the audit trail cannot be read here: no model change requests")
        records = changes.records()
        request = next((r for r in records if r.is_request and r.seq == seq), None)
        about: dict[str, DetailValue] = {"request_seq": seq}
        try:
            if request is None:
                raise RouteNotFound(f"no model change request #{seq} in the audit trail")
            about |= {"digest": request.digest, "model_path": request.model_path or "", "requester": request.principal}
            model_dir = _check_dir(request, records, self.manifest_key)
        except ZguardError as refused:
            changes.refuse(refused, identity.name, operator, about)
        return changes.approve_signed_in(
            request.digest,
            model_dir,
            operator,
            name=identity.name,
            roles=identity.roles,
            principal_id=identity.principal_id,
            auth_method=identity.method,
        )


def _check_dir(request: ChangeRecord, records: list[ChangeRecord], manifest_key: Path | None) -> Path:
    """The request's directory when it still holds the manifest requested (Governance.approve_model_change)."""
    latest = change_state(records, request.digest).request
    if latest is not None and latest.seq != request.seq:
        raise ModelChangeRefused(
            f"change request #{request.seq} was superseded by #{latest.seq} for the same manifest",
            fix=f"approve change request #{latest.seq}",
        )
    model_dir = Path(request.model_path or "")
    try:
        public = None if manifest_key is None else load_public_key(manifest_key)
        manifest, _layout = check_layout(model_dir, public)
    except ManifestError as exc:
        problems = ", ".join(sorted({p.code for p in exc.problems}))
        raise ModelChangeRefused(
            f"{model_dir} does not match manifest {request.digest[:16]}… ({problems}): nothing to approve",
            fix=f"`zguard model verify {model_dir}`; re-pin it if the files changed on purpose",
        ) from None
    except OSError as exc:  # the directory is gone or unreadable
        raise ModelChangeRefused(
            f"{model_dir} cannot be read ({exc.strerror}): nothing to approve",
            fix="restore the model directory the change request names, or pin the one in use",
        ) from None
    except KeyFileError:
        raise ModelChangeRefused(
            "model.manifest_public_key cannot be read: the manifest's signature cannot be checked",
            fix="`zguard doctor` names the key file's problem",
        ) from None
    if manifest.digest != request.digest:
        raise ModelChangeRefused(
            f"{model_dir} holds manifest {manifest.digest[:16]}…, not the {request.digest[:16]}… requested",
            fix=f"the admin who pinned it records a request for what is there: `zguard model pin {model_dir} --as ADMIN`",
        )
    return model_dir


def governance_service(settings: Settings, auth: AuthService, audit: AuditSink) -> Governance | None:
    """The services above on the server's state database; None without one."""
    store = auth.store
    if store is None:
        return None
    token_key = auth.token_key
    # The trail's events are the records (zguard.audit.model_changes): the sink itself when it
    # reads back (the server's AuditTrail), else the store it appends to (a CLI's StoreSink).
    reader = audit if isinstance(audit, AuditReader) else getattr(audit, "store", None)
    changes = (
        ModelChanges(store, reader, audit, token_key=lambda: token_key) if isinstance(reader, AuditReader) else None
    )
    return Governance(
        campaigns=RecertificationService(
            RecertificationStore(store.engine),
            (grants := ApprovalStore(store.engine)),
            settings.role_registry(),
            audit=audit,
            schedule=settings.approvals.recertification_schedule,
            schedule_days=settings.approvals.recertification_days,
        ),
        grants=grants,
        model_changes=changes,
        signer=lambda: signer(settings),
        manifest_key=settings.model.manifest_public_key,
    )
