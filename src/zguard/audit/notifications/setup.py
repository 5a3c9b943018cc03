"""Building the notifiers of `notifications` at start: the secret files read and checked, once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TypeVar

from zguard.audit import AuditSink
from zguard.audit.notifications.channels import Channel, EmailChannel, WebhookChannel, tls_context
from zguard.audit.notifications.outbox import CURSOR_PREFIX, Notifier, NotifySource, SenderLease
from zguard.audit.store import AuditStore
from zguard.config import Settings
from zguard.config.notifications import NotificationSettings
from zguard.errors import ConfigError
from zguard.security.keys import KeyFileError
from zguard.store.leases import Lease

WEBHOOK_KEY_MIN_BYTES: Final = 32
SECRET_MAX_BYTES: Final = 4096  # read of a key or password file at most
_T = TypeVar("_T")


def _private_bytes(path: Path, what: str, limit: int) -> bytes:
    """At most `limit` bytes of a file only its owner can read: the permission rule of zguard's own
    key files (`zguard.security.keys.read_key`), whose length rule and messages fit those only."""
    try:
        mode = path.stat().st_mode & 0o777
        with path.open("rb") as handle:
            raw = handle.read(limit)
    except OSError as exc:
        raise KeyFileError(
            f"{path}: cannot read the {what} ({exc.strerror or type(exc).__name__})",
            fix="check the setting that names it, and that the service account owns the file",
        ) from None
    if mode & 0o077:
        raise KeyFileError(f"{path} is readable by group or others (mode {mode:o})", fix=f"chmod 600 {path}")
    return raw


def read_webhook_key(path: Path) -> bytes:
    """The HMAC key: the file's bytes without a final newline, at least 32 of them."""
    key = _private_bytes(path, "webhook key", SECRET_MAX_BYTES).removesuffix(b"\n").removesuffix(b"\r")
    if len(key) < WEBHOOK_KEY_MIN_BYTES:
        raise KeyFileError(
            f"{path} holds {len(key)} bytes of key, fewer than {WEBHOOK_KEY_MIN_BYTES}",
            fix=f"openssl rand -hex 32 > {path} && chmod 600 {path}, and give the receiver the same key",
        )
    return key


def read_password(path: Path) -> str:
    """The relay's password: the first line of the file."""
    lines = _private_bytes(path, "password", SECRET_MAX_BYTES).decode("utf-8", "replace").splitlines()
    if not lines or not lines[0]:
        raise KeyFileError(f"{path} holds no password on its first line", fix=f"write the password into {path}")
    return lines[0]


def _secret(key: str, read: Callable[[Path], _T], path: Path) -> _T:
    try:
        return read(path)
    except KeyFileError as exc:
        raise ConfigError([f"notifications.{key}: {exc.message}; fix: {exc.fix}"]) from None


def build_notifiers(
    settings: NotificationSettings,
    source: NotifySource,
    audit: AuditSink,
    *,
    lease_for: Callable[[str], SenderLease] | None = None,
) -> list[Notifier]:
    """One notifier per configured channel (none when both are off), not yet started; ConfigError
    naming the key and the fix when a secret file is missing, shared or too short. `lease_for`
    gives the lease of a channel, by its cursor's name (several replicas on one store)."""
    webhook, email = settings.webhook, settings.email
    channels: list[tuple[Channel, int, float]] = []
    if webhook.url is not None and webhook.secret_file is not None:  # the validator pairs them
        key = _secret("webhook.secret_file", read_webhook_key, webhook.secret_file)
        context = tls_context(webhook.ca_file) if webhook.url.startswith("https:") else None
        hook = WebhookChannel(
            webhook.url, key, timeout_s=webhook.timeout_s, max_backoff_s=webhook.max_backoff_s, context=context
        )
        channels.append((hook, webhook.max_attempts, webhook.max_backoff_s))
    if email.host is not None:
        password = (
            None if email.password_file is None else _secret("email.password_file", read_password, email.password_file)
        )
        channels.append((EmailChannel(email, password), email.max_attempts, email.max_backoff_s))
    return [
        Notifier(
            source,
            channel,
            audit,
            events=settings.events,
            max_attempts=attempts,
            max_backoff_s=backoff,
            lease=None if lease_for is None else lease_for(CURSOR_PREFIX + channel.name),
        )
        for channel, attempts, backoff in channels
    ]


def serve_notifiers(settings: Settings, store: AuditStore, audit: AuditSink) -> list[Notifier]:
    """`serve`'s notifiers: each sends while this replica holds its lease (`notify-webhook`,
    `notify-email` in the state database, `serve.forwarder_lease_s` long), one replica at a time."""
    replica = settings.serve.resolved_replica_id(settings.api.port)
    lease_s = settings.serve.forwarder_lease_s
    return build_notifiers(
        settings.notifications,
        store,
        audit,
        lease_for=lambda name: Lease(store.engine, name, replica, lease_s=lease_s),
    )


def start_notifiers(notifiers: Sequence[Notifier]) -> None:
    for notifier in notifiers:
        notifier.start()


def close_notifiers(notifiers: Sequence[Notifier], timeout: float = 5.0) -> None:
    for notifier in notifiers:
        notifier.close(timeout)
