"""Building the audit trail's parts from the settings: keys, store, prompt capture."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, replace

from sqlalchemy import Engine

from zguard import state_paths
from zguard.audit import AuditEvent
from zguard.audit.bounds import EventBounds
from zguard.audit.chain import CheckpointSigner, iso_ms, load_or_create_signing_key
from zguard.audit.checkpoint_keys import CheckpointKeys
from zguard.audit.forwarder import Forwarder
from zguard.audit.notifications.outbox import Notifier
from zguard.audit.prompts import PromptCapture, load_x25519_public
from zguard.audit.store import AuditStore, CheckpointPolicy, StoredEvent, pending
from zguard.audit.trail import AuditTrail
from zguard.config import Settings
from zguard.security.keys import load_or_create_key
from zguard.store.leases import Lease


def signer(settings: Settings) -> CheckpointSigner:
    """The checkpoint signing key, created (0600, its directory 0700 when new) on first use; its
    checkpoints name this replica (`detail.replica`)."""
    path = state_paths.audit_signing_key_file(settings)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return replace(load_or_create_signing_key(path), replica=settings.serve.resolved_replica_id(settings.api.port))


def open_audit_store(settings: Settings, engine: Engine) -> AuditStore:
    policy = CheckpointPolicy(
        every=settings.audit.checkpoint_every, interval_ms=int(settings.audit.checkpoint_interval_s * 1000)
    )
    bounds = EventBounds(field_chars=settings.audit.field_max_chars)
    trusted = CheckpointKeys.from_paths(settings.audit.checkpoint_keys) if settings.audit.checkpoint_keys else None
    return AuditStore(engine, signer=signer(settings), checkpoints=policy, bounds=bounds, trusted_keys=trusted)


def prompt_capture(settings: Settings) -> PromptCapture:
    mode = settings.audit.prompt_capture
    if mode == "hmac":
        return PromptCapture("hmac", hmac_key=load_or_create_key(state_paths.audit_prompt_key_file(settings)))
    if mode == "encrypted" and settings.audit.auditor_public_key_file is not None:  # the validator requires it
        return PromptCapture("encrypted", recipient=load_x25519_public(settings.audit.auditor_public_key_file))
    return PromptCapture("none")


class StoreSink:
    """Appends each event in the caller's thread: for CLI commands, which emit a handful."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store

    def emit(self, event: AuditEvent) -> None:
        self.store.append([pending(event)])

    async def record(self, event: AuditEvent) -> StoredEvent:
        return (await asyncio.to_thread(self.store.append, [pending(event)]))[0]


class AuditHealth:
    """What admins see of the trail (`/readyz/detail` on the console, `/api/status`): the head,
    the last checkpoint, the writer's last failure, the syslog forwarding lag and the
    notifications' (zguard.audit.notifications)."""

    def __init__(
        self,
        trail: AuditTrail | None = None,
        forwarder: Forwarder | None = None,
        notifiers: Sequence[Notifier] = (),
    ) -> None:
        self.trail = trail
        self.forwarder = forwarder
        self.notifiers = tuple(notifiers)

    def snapshot(self) -> dict[str, object]:
        if self.trail is None:
            return {"store": "none"}
        head = self.trail.store.head()
        out: dict[str, object] = {
            "head_seq": head.seq,
            "checkpoint_seq": head.checkpoint_seq,
            "checkpoint_time": iso_ms(head.checkpoint_ms) if head.checkpoint_ms else None,
            "purged_through": head.base_seq,
            "write_failures": self.trail.failures,
            "last_write_error": self.trail.last_error,
        }
        if self.forwarder is None:
            out["forwarding"] = {"transport": "off"}
        else:
            status = self.forwarder.status()
            out["forwarding"] = {
                "target": status.target,
                "running": status.running,
                "cursor": status.cursor,
                "lag": status.lag,
                "last_success": iso_ms(int(status.last_success * 1000)) if status.last_success else None,
                "last_error": status.last_error,
                "consecutive_failures": status.consecutive_failures,
                "active": status.active,
                "holder": status.holder,
            }
        if self.notifiers:  # only when configured: the shape stays what it was without them
            out["notifications"] = [asdict(notifier.status()) for notifier in self.notifiers]
        return out


FORWARDER_LEASE = "syslog-forwarder"  # the lease's name in the state database (zguard.store.leases)


def start_forwarder(settings: Settings, store: AuditStore) -> Forwarder | None:
    """The syslog forwarder of `audit.syslog`, started; None when forwarding is off. It forwards
    while this replica holds the forwarder's lease: one replica at a time on a shared store."""
    if settings.audit.syslog.transport == "off":
        return None
    lease = Lease(
        store.engine,
        FORWARDER_LEASE,
        settings.serve.resolved_replica_id(settings.api.port),
        lease_s=settings.serve.forwarder_lease_s,
    )
    forwarder = Forwarder(store, settings.audit.syslog, lease=lease)
    forwarder.start()
    return forwarder
