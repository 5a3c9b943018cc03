"""ORM models of the state database (SQLAlchemy 2, typed).

Every timestamp is stored in UTC and comes back as an aware UTC `datetime` on every backend.
Constraint names follow one naming convention so migrations name them the same everywhere.
Secrets are never stored: passwords as bcrypt hashes, API tokens as hex digests (SHA-256 or
HMAC-SHA-256) with a short non-secret prefix to recognise them by.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
PRINCIPAL_KINDS = ("user", "service")
NAME_MAX = 128
ISSUER_MAX = 512
SUBJECT_MAX = 512
PRINCIPAL_SOURCES = ("local", "oidc", "ldap", "scim")
ROLE_MAX = 64
TOKEN_HASH_LEN = 64  # hex of a 256-bit digest
TOKEN_PREFIX_MAX = 16


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that must be timezone-aware going in and is UTC coming out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the state store; pass an aware datetime (UTC)")
        # SQLite keeps no zone: store the UTC wall time and re-attach UTC on the way out.
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime}  # noqa: RUF012  (SQLAlchemy reads it as a class attribute)


class PrincipalRow(Base):
    """Someone or something that can be granted roles: a human user or a service account."""

    __tablename__ = "principals"
    __table_args__ = (
        CheckConstraint("kind IN ('user', 'service')", name="kind"),
        # Service accounts authenticate with API tokens only.
        CheckConstraint("kind = 'user' OR password_hash IS NULL", name="password_users_only"),
        # One principal per identity at an external source (OIDC issuer + subject, LDAP DN, SCIM id).
        Index("uq_principals_source_issuer_subject", "source", "issuer", "subject", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=true())
    password_hash: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    # Where the principal comes from: `local` (zguard's own records), `oidc`, `ldap`, `scim`.
    # External ones carry the source's stable key: the issuer (OIDC `iss`, the LDAP server, the
    # SCIM client) and the subject there (`sub`, the entry's DN, the SCIM `externalId` or id).
    source: Mapped[str] = mapped_column(String(16), server_default="local")
    issuer: Mapped[str | None] = mapped_column(String(ISSUER_MAX))
    subject: Mapped[str | None] = mapped_column(String(SUBJECT_MAX))

    roles: Mapped[list[PrincipalRole]] = relationship(
        back_populates="principal", cascade="all, delete-orphan", order_by="PrincipalRole.role", lazy="selectin"
    )
    tokens: Mapped[list[ApiToken]] = relationship(
        back_populates="principal", cascade="all, delete-orphan", passive_deletes=True
    )


class PrincipalRole(Base):
    """One role granted to one principal."""

    __tablename__ = "principal_roles"

    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(ROLE_MAX), primary_key=True)

    principal: Mapped[PrincipalRow] = relationship(back_populates="roles")


class ApiToken(Base):
    """An API token, known only by the digest of its secret and a short display prefix."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(TOKEN_HASH_LEN), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(TOKEN_PREFIX_MAX))
    label: Mapped[str | None] = mapped_column(String(NAME_MAX))
    # None: the token carries all of its principal's roles; a list narrows them.
    roles: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]

    principal: Mapped[PrincipalRow] = relationship(back_populates="tokens", lazy="joined")


class AuthState(Base):
    """One row whose `version` grows with every change that can alter an authentication result
    (a principal disabled or enabled, its roles or password changed, a token revoked).

    Servers cache verified credentials and compare this number on each request, so a change
    made by any process (the CLI, another replica) takes effect at the next request.
    """

    __tablename__ = "auth_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, server_default="0")


HASH_HEX_LEN = 64
EVENT_ID_LEN = 32
EVENT_TYPE_MAX = 64


class AuditEventRow(Base):
    """One audit event. `body` is the event's canonical JSON, exactly the bytes that were hashed;
    the other columns repeat fields of it for searching, and verification checks they agree.

    `hash` = SHA-256(`prev_hash` + "\\n" + `body`), so each event commits to every one before it.
    `seq` is assigned by the writer under the head row's lock: one order across writers.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(EVENT_ID_LEN), unique=True)
    time_ms: Mapped[int] = mapped_column(BigInteger, index=True)
    type: Mapped[str] = mapped_column(String(EVENT_TYPE_MAX), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    principal: Mapped[str | None] = mapped_column(String(NAME_MAX), index=True)
    request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    body: Mapped[str] = mapped_column(String)
    prev_hash: Mapped[str] = mapped_column(String(HASH_HEX_LEN))
    hash: Mapped[str] = mapped_column(String(HASH_HEX_LEN))


class AuditHead(Base):
    """The chain's head in one row, updated in the same transaction as the events it covers.

    Every writer first updates this row, which takes the write lock (SQLite) or the row lock
    (PostgreSQL) before it reads the head: that is what keeps several writers, threads or
    replicas, on one chain. `base_seq`/`base_hash` are where the stored chain starts: 0 and the
    genesis hash, or the last purged event once retention has archived older ones.
    """

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(HASH_HEX_LEN))
    base_seq: Mapped[int] = mapped_column(BigInteger)
    base_hash: Mapped[str] = mapped_column(String(HASH_HEX_LEN))
    checkpoint_seq: Mapped[int] = mapped_column(BigInteger)
    checkpoint_ms: Mapped[int] = mapped_column(BigInteger)


WATERMARK_ID_LEN = 16  # 64 bits in hex


class AuditWatermark(Base):
    """Which event carries an image's watermark id: the index `zguard trace` looks ids up in.

    Derived data, outside the chain: written in the same transaction as the event it points to,
    deleted with it by retention, and rebuilt from the bodies by migration 0004. An id may repeat
    (64 random bits), so the key is the pair.
    """

    __tablename__ = "audit_watermarks"

    watermark_id: Mapped[str] = mapped_column(String(WATERMARK_ID_LEN), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False, index=True)


AUDIT_TIME_BLOCK = 4096
"""Events per row of `audit_time_blocks`: a million events make 245 rows."""


class AuditTimeBlock(Base):
    """The earliest and latest event time in each run of `AUDIT_TIME_BLOCK` chain positions
    (`block` = seq // AUDIT_TIME_BLOCK): a block-range index, like PostgreSQL's BRIN, kept by hand
    so that it works on SQLite too.

    Event times follow the chain's order only roughly (each event carries the time it happened,
    appended later by whichever writer), so a time range cannot be read as a seq range directly;
    the blocks whose [min_ms, max_ms] meet the range bound where its events can be, exactly, and
    a search scans only those positions. Derived data outside the chain, like `audit_watermarks`:
    written in the append's transaction, rebuilt from the events by migration 0007.
    """

    __tablename__ = "audit_time_blocks"

    block: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    min_ms: Mapped[int] = mapped_column(BigInteger)
    max_ms: Mapped[int] = mapped_column(BigInteger)


class AuditCursor(Base):
    """How far a consumer of the trail (the syslog forwarder) has durably got: the outbox."""

    __tablename__ = "audit_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class Lease(Base):
    """Which replica runs a job only one may run at a time (the syslog forwarder), until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_ms: Mapped[int] = mapped_column(BigInteger)
    acquired_ms: Mapped[int] = mapped_column(BigInteger)


SESSION_REASON_MAX = 32
CLIENT_MAX = 64  # an IPv6 address with a zone fits


class ConsoleSession(Base):
    """A signed-in console session, known only by the SHA-256 of its cookie value.

    `fingerprint` digests what the session was granted on (the principal's password hash, roles
    and state): when any of them changes the session is refused and revoked at its next request.
    `principal_id` is None for users declared in the settings file; `principal` is the name
    either way, as the audit trail records it. Revoking (logout, "sign out everywhere", a timeout,
    an admin) sets `revoked_at` and bumps `auth_state.version`, so every process drops its cached
    copy at the next request.
    """

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(TOKEN_HASH_LEN), unique=True)
    principal: Mapped[str] = mapped_column(String(NAME_MAX), index=True)
    principal_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(HASH_HEX_LEN))
    client: Mapped[str] = mapped_column(String(CLIENT_MAX))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(SESSION_REASON_MAX))


class TotpSecret(Base):
    """A user's TOTP second factor: the shared secret, sealed (AES-GCM under a key derived from
    the server key, bound to the user's name), and the last time step accepted (no code is
    accepted twice). Keyed by name so settings-file users can enrol too."""

    __tablename__ = "totp_secrets"

    principal: Mapped[str] = mapped_column(String(NAME_MAX), primary_key=True)
    sealed: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime]
    last_step: Mapped[int] = mapped_column(BigInteger, server_default="0")


SCIM_ID_LEN = 32  # a uuid4 in hex
SCIM_EXTERNAL_ID_MAX = 512
SCIM_DISPLAY_MAX = 256


class ScimUser(Base):
    """What SCIM knows of a principal it provisioned (source `scim`, subject = its SCIM id):
    the IdP's `externalId` and `displayName`, echoed back to it and searched by `externalId`."""

    __tablename__ = "scim_users"

    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True)
    external_id: Mapped[str | None] = mapped_column(String(SCIM_EXTERNAL_ID_MAX), index=True)
    display_name: Mapped[str | None] = mapped_column(String(SCIM_DISPLAY_MAX))
    updated_at: Mapped[datetime]


class ScimGroup(Base):
    """A group the IdP provisioned; its `display_name` is what `identity.scim.group_role_map` maps."""

    __tablename__ = "scim_groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scim_id: Mapped[str] = mapped_column(String(SCIM_ID_LEN), unique=True)
    display_name: Mapped[str] = mapped_column(String(SCIM_DISPLAY_MAX), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(SCIM_EXTERNAL_ID_MAX), index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ScimGroupMember(Base):
    """One provisioned user in one SCIM group; goes with either."""

    __tablename__ = "scim_group_members"

    group_id: Mapped[int] = mapped_column(ForeignKey("scim_groups.id", ondelete="CASCADE"), primary_key=True)
    principal_id: Mapped[int] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True, index=True
    )


APPROVAL_TEXT_MAX = 512  # purpose, comments, revocation reasons
APPROVAL_FIELD_MAX = 128  # business unit, ticket, data classification
MODEL_ID_MAX = 256
DIGEST_MAX = 80  # "sha256:" and 64 hex digits
REQUEST_STATUSES = ("pending", "approved", "rejected", "expired")
GRANT_STATUSES = ("active", "revoked", "expired", "exhausted")


class ApprovalRequest(Base):
    """Someone asks to use a model: for what, until when, how much (zguard.services.approvals).

    `status` is what was last written; a pending request past `expires_at` is expired whatever it
    says (the service writes that when it reads one). Names are kept beside ids so the record
    reads the same after a principal is deleted.
    """

    __tablename__ = "approval_requests"
    __table_args__ = (CheckConstraint("status IN ('pending', 'approved', 'rejected', 'expired')", name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    requester_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id", ondelete="SET NULL"), index=True)
    requester: Mapped[str] = mapped_column(String(NAME_MAX), index=True)
    model_id: Mapped[str] = mapped_column(String(MODEL_ID_MAX))
    model_digest: Mapped[str] = mapped_column(String(DIGEST_MAX))
    purpose: Mapped[str] = mapped_column(String(APPROVAL_TEXT_MAX))
    business_unit: Mapped[str] = mapped_column(String(APPROVAL_FIELD_MAX))
    ticket: Mapped[str | None] = mapped_column(String(APPROVAL_FIELD_MAX))
    data_classification: Mapped[str] = mapped_column(String(APPROVAL_FIELD_MAX))
    quota_per_day: Mapped[int] = mapped_column(Integer)
    quota_total: Mapped[int] = mapped_column(Integer)
    validity_days: Mapped[int] = mapped_column(Integer)
    quorum: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), index=True, server_default="pending")
    # A request for a SCIM group (zguard.services.grant_groups): its opaque id, never reused.
    group_scim_id: Mapped[str | None] = mapped_column(String(SCIM_ID_LEN))
    group_name: Mapped[str | None] = mapped_column(String(SCIM_DISPLAY_MAX))


class ApprovalDecision(Base):
    """One approver's decision on one request; the unique pair stops anyone deciding twice."""

    __tablename__ = "approval_decisions"
    __table_args__ = (
        Index("uq_approval_decisions_request_id_decider", "request_id", "decider", unique=True),
        CheckConstraint("decision IN ('approve', 'reject')", name="decision"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("approval_requests.id", ondelete="CASCADE"))
    decider_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id", ondelete="SET NULL"))
    decider: Mapped[str] = mapped_column(String(NAME_MAX))
    decision: Mapped[str] = mapped_column(String(8))
    comment: Mapped[str | None] = mapped_column(String(APPROVAL_TEXT_MAX))
    at: Mapped[datetime]
    max_size: Mapped[int | None] = mapped_column(Integer)  # the scope this approver set
    max_steps: Mapped[int | None] = mapped_column(Integer)


class ApprovalGrant(Base):
    """What an approved request allows: one principal, one model digest, a quota, a window.

    One grant per request (`request_id` unique): two approvers completing the quorum at once
    cannot make two. `used_total` is the last count written back from the rate-limit storage,
    where the quota is charged atomically; the storage is the authority while it holds the count.
    """

    __tablename__ = "approval_grants"
    __table_args__ = (CheckConstraint("status IN ('active', 'revoked', 'expired', 'exhausted')", name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("approval_requests.id", ondelete="CASCADE"), unique=True)
    principal_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id", ondelete="SET NULL"))
    principal: Mapped[str] = mapped_column(String(NAME_MAX), index=True)
    model_digest: Mapped[str] = mapped_column(String(DIGEST_MAX))
    max_size: Mapped[int | None] = mapped_column(Integer)
    max_steps: Mapped[int | None] = mapped_column(Integer)
    quota_per_day: Mapped[int] = mapped_column(Integer)
    quota_total: Mapped[int] = mapped_column(Integer)
    used_total: Mapped[int] = mapped_column(Integer, server_default="0")
    not_before: Mapped[datetime]
    expires_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), server_default="active")
    revoked_by: Mapped[str | None] = mapped_column(String(NAME_MAX))
    reason: Mapped[str | None] = mapped_column(String(APPROVAL_TEXT_MAX))
    last_used_at: Mapped[datetime | None]  # written with used_total when a charge is recorded
    # Held by a SCIM group: covers its members, charged against this one quota (shared).
    group_scim_id: Mapped[str | None] = mapped_column(String(SCIM_ID_LEN), index=True)
    group_name: Mapped[str | None] = mapped_column(String(SCIM_DISPLAY_MAX))


CAMPAIGN_QUARTER_MAX = 16  # "2026Q4"
CAMPAIGN_STATUSES = ("open", "closed")
RECERTIFICATION_DECISIONS = ("confirmed", "revoked", "lapsed", "ended")


class RecertificationCampaign(Base):
    """A quarter's access re-certification (zguard.services.recertification): every grant active
    when it opened is listed once, and must be confirmed by its deadline or it is revoked."""

    __tablename__ = "recertification_campaigns"
    __table_args__ = (CheckConstraint("status IN ('open', 'closed')", name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    quarter: Mapped[str] = mapped_column(String(CAMPAIGN_QUARTER_MAX), unique=True)
    opened_by: Mapped[str] = mapped_column(String(NAME_MAX))
    opened_at: Mapped[datetime]
    deadline: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), server_default="open")
    closed_by: Mapped[str | None] = mapped_column(String(NAME_MAX))
    closed_at: Mapped[datetime | None]


class RecertificationItem(Base):
    """One grant in one campaign: who was asked (the approvers of its request), and the decision.

    `decision` stays NULL until someone confirms or revokes it; at the close an undecided grant is
    `lapsed` (revoked: "not re-certified") or `ended` (it expired or was exhausted meanwhile)."""

    __tablename__ = "recertification_items"
    __table_args__ = (
        Index("uq_recertification_items_campaign_id_grant_id", "campaign_id", "grant_id", unique=True),
        CheckConstraint("decision IN ('confirmed', 'revoked', 'lapsed', 'ended')", name="decision"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("recertification_campaigns.id", ondelete="CASCADE"))
    grant_id: Mapped[int] = mapped_column(ForeignKey("approval_grants.id", ondelete="CASCADE"), index=True)
    principal: Mapped[str] = mapped_column(String(NAME_MAX))
    approvers: Mapped[str] = mapped_column(String(APPROVAL_TEXT_MAX))
    decision: Mapped[str | None] = mapped_column(String(16))
    decider: Mapped[str | None] = mapped_column(String(NAME_MAX))
    decided_at: Mapped[datetime | None]
    comment: Mapped[str | None] = mapped_column(String(APPROVAL_TEXT_MAX))
