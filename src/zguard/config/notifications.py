"""Settings `notifications`: approval and model-change events sent to a webhook and by e-mail.

Decisions written here (the sending itself is `zguard.audit.notifications`; docs/governance.md):

- Off by default: a channel is on once its target is set (`webhook.url`, `email.host`).
- The webhook URL is https, or http only to a loopback host (a local relay), by the same rule as
  an IdP's URLs; it carries no credentials: the body is signed with the key of `secret_file`
  (HMAC-SHA256), which is read and checked (owner-only, 32 bytes or more) when serve starts. The
  URL rule is the one of an IdP's URLs (`zguard.config.idp`), with its own message.
- E-mail uses STARTTLS or implicit TLS; `plain` only to a loopback host (a local relay or a test
  sink), so a password or an approval detail never crosses a network in clear.
- `events` names event types (`approval.granted`) or families (`approval.*`). `notification.*`
  is refused: a failed notification is itself an event, and sending it could loop.
- Pure: no I/O here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final, Literal

from pydantic import Field, field_validator, model_validator

from zguard.config.idp import check_idp_url
from zguard.config.sections import Section, is_loopback

# Every approval step (requests, decisions, grants, refusals, re-certification: new ones included)
# and the model-change four eyes; not `model.loaded` and the other lifecycle events.
DEFAULT_EVENTS: Final = (
    "approval.*",
    "model.change_requested",
    "model.change_approved",
    "model.change_refused",
    "model.change_unapproved",
)
NOTIFICATION_PREFIX: Final = "notification."
MAX_EVENT_PATTERNS: Final = 64
MAX_RECIPIENTS: Final = 32
_EVENT_PATTERN = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?")
_ADDRESS = re.compile(r"[^\s@<>,;\"]{1,64}@[A-Za-z0-9.-]{1,253}")


def event_selected(patterns: tuple[str, ...] | list[str], event_type: str) -> bool:
    """Whether `event_type` is named by `patterns` (exact names, or `family.*`)."""
    for pattern in patterns:
        if pattern.endswith(".*"):
            if event_type.startswith(pattern[:-1]):
                return True
        elif pattern == event_type:
            return True
    return False


class DeliverySettings(Section):
    """What both channels share: the TLS anchor, the timeout and the retries."""

    ca_file: Path | None = Field(
        None,
        description="PEM CA bundle the receiver's (relay's) certificate is checked against; unset: the system's CAs.",
    )
    timeout_s: float = Field(
        10.0, gt=0, le=120, description="Seconds each network step of one try may wait (connect, send, each answer)."
    )
    max_attempts: int = Field(
        5,
        ge=1,
        le=50,
        description="Tries per event while the failure is temporary (a connection error; a webhook's 5xx, 408, 425 or 429; a relay's 4xx), with backoff between; then the event is recorded as `notification.failed` and the next one is sent.",
    )
    max_backoff_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="The longest wait between two tries (a webhook's `Retry-After` is kept within it).",
    )


class WebhookSettings(DeliverySettings):
    """An HTTPS endpoint that receives each selected event as a signed JSON POST."""

    url: str | None = Field(
        None,
        description="Where each selected event is POSTed as JSON (https, or http only to a loopback host). Unset: no webhook.",
    )
    secret_file: Path | None = Field(
        None,
        description="File holding the HMAC-SHA256 key the body is signed with (`X-Zguard-Signature`): 32 bytes or more (e.g. `openssl rand -hex 32`; a final newline is dropped), mode 0600, owned by the service account. Required with `url`.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return check_idp_url(
            value,
            "notifications.webhook.url",
            example="https://hooks.bank.example/zguard",
            why="approval details sent over plain HTTP can be read, and the receiver impersonated, on the way",
        )

    @model_validator(mode="after")
    def _secret_needed(self) -> WebhookSettings:
        if self.url is not None and self.secret_file is None:
            raise ValueError(
                "notifications.webhook.url needs notifications.webhook.secret_file (the HMAC key receivers verify "
                "the body with); fix: openssl rand -hex 32 > /etc/zguard/webhook.key && chmod 600 /etc/zguard/webhook.key"
            )
        return self


class EmailSettings(DeliverySettings):
    """A plain-text message per selected event, through the bank's SMTP relay."""

    host: str | None = Field(None, description="The SMTP relay's host name. Unset: no e-mail.")
    port: int = Field(587, ge=1, le=65535, description="The relay's port: 587 for STARTTLS, 465 for implicit TLS.")
    security: Literal["starttls", "tls", "plain"] = Field(
        "starttls",
        description="`starttls` (upgrade, refused when the relay does not offer it), `tls` (implicit TLS), or `plain` (only to a loopback host).",
    )
    username: str | None = Field(
        None, max_length=256, description="The account to authenticate as; unset: no authentication."
    )
    password_file: Path | None = Field(
        None,
        description="File holding that account's password (one line; a final newline is dropped), mode 0600. Required with `username`.",
    )
    from_address: str | None = Field(
        None, description="The sender address (`From:`), e.g. `zguard@bank.example`. Required with `host`."
    )
    to: list[str] = Field(
        default_factory=list,
        description="The recipients (approvers' list, the governance mailbox). At least one with `host`.",
    )

    @field_validator("from_address")
    @classmethod
    def _sender(cls, value: str | None) -> str | None:
        if value is not None and not _ADDRESS.fullmatch(value):
            raise ValueError(
                f"notifications.email.from_address: {value[:80]!r} is not an address like zguard@bank.example"
            )
        return value

    @field_validator("to")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_RECIPIENTS:
            raise ValueError(f"notifications.email.to: at most {MAX_RECIPIENTS} recipients (use a list address)")
        for address in value:
            if not _ADDRESS.fullmatch(address):
                raise ValueError(
                    f"notifications.email.to: {address[:80]!r} is not an address like approvers@bank.example"
                )
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _complete(self) -> EmailSettings:
        if self.host is None:
            return self
        missing = [name for name, value in (("from_address", self.from_address), ("to", self.to)) if not value]
        if missing:
            raise ValueError(f"notifications.email.host needs notifications.email.{' and '.join(missing)}")
        if self.security == "plain" and not is_loopback(self.host):
            raise ValueError(
                "notifications.email.security: plain is allowed only to a loopback host (a local relay); "
                "use starttls (port 587) or tls (port 465)"
            )
        if (self.username is None) != (self.password_file is None):
            raise ValueError("notifications.email: set both username and password_file, or neither")
        return self


class NotificationSettings(Section):
    """Approval and model-change events as webhook calls and e-mails, sent from the audit trail."""

    webhook: WebhookSettings = Field(
        default_factory=WebhookSettings, description="A signed JSON POST per selected event."
    )
    email: EmailSettings = Field(default_factory=EmailSettings, description="A plain-text e-mail per selected event.")
    events: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EVENTS),
        description="Which audit events are sent: exact types (`approval.granted`) or families (`approval.*`). Default: every approval, re-certification and model-change event.",
    )

    @field_validator("events")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        if not 1 <= len(value) <= MAX_EVENT_PATTERNS:
            raise ValueError(f"notifications.events: name 1 to {MAX_EVENT_PATTERNS} event types")
        for pattern in value:
            if not _EVENT_PATTERN.fullmatch(pattern):
                raise ValueError(
                    f"notifications.events: {pattern[:80]!r} is not an event type (approval.granted) or family (approval.*)"
                )
            if pattern.startswith(NOTIFICATION_PREFIX):
                raise ValueError(
                    f"notifications.events: {pattern} refused: a failed notification is itself an event, and sending "
                    "it could loop (it reaches syslog and the audit trail)"
                )
        return list(dict.fromkeys(value))
