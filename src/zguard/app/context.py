"""What the app factories are given: the services both listeners share in one process.

The edge asks for interfaces, not classes: `ImageGeneration`, `Authenticator` and `RateLimiter`
state what the routes and middleware call; only the wiring (zguard.serve.wiring) picks the
concrete services (`ImageService`, `AuthService`, `RateLimitService`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from zguard.audit import AuditReader, AuditSink
from zguard.audit.prompts import PromptCapture
from zguard.audit.setup import AuditHealth
from zguard.audit.strangers import StrangerRefusals
from zguard.engine import ImageEngine
from zguard.engine.admission import AdmissionQueue
from zguard.services.metrics import RequestMetrics
from zguard.services.prompt_policy import PolicyHolder
from zguard.services.readiness import Readiness

if TYPE_CHECKING:
    from zguard.audit import RequestRecord
    from zguard.provenance.marking import ProvenanceMarker
    from zguard.security.rbac import Permission, RoleRegistry
    from zguard.services.admin import AdminService
    from zguard.services.approvals import ApprovalService
    from zguard.services.auth import Identity, RequestInfo
    from zguard.services.governance import Governance
    from zguard.services.images import GeneratedImages, GenerationPlan, ImageRequest
    from zguard.services.oidc import OidcLogin
    from zguard.services.ratelimit import Bucket, RateLimitState
    from zguard.services.replicas import ReplicaStatus
    from zguard.services.scim import ScimService
    from zguard.services.sessions import SessionService


class ImageGeneration(Protocol):
    """Plan, record and run a generation request (zguard.services.images.ImageService)."""

    default_size: tuple[int, int]

    @property
    def provenance(self) -> ProvenanceMarker | None: ...

    def plan(self, req: ImageRequest, roles: Collection[str] = ()) -> GenerationPlan: ...

    async def record_accepted(
        self, plan: GenerationPlan, where: RequestInfo, identity: Identity, record: RequestRecord | None
    ) -> None: ...

    async def generate(
        self, plan: GenerationPlan, request_id: str, record: RequestRecord | None = None
    ) -> GeneratedImages: ...


class Authenticator(Protocol):
    """Who is calling, and may they (zguard.services.auth.AuthService)."""

    async def authenticate(self, authorization: str | None, info: RequestInfo) -> Identity: ...

    def authorize(self, identity: Identity, permission: Permission, info: RequestInfo) -> None: ...

    @property
    def registry(self) -> RoleRegistry: ...


class RateLimiter(Protocol):
    """Rates and in-flight caps per principal (zguard.services.ratelimit.RateLimitService)."""

    async def check(
        self, identity: Identity, info: RequestInfo, *, bucket: Bucket = "generation"
    ) -> RateLimitState | None: ...

    def concurrency(self, identity: Identity, info: RequestInfo) -> AbstractAsyncContextManager[None]: ...


@dataclass(frozen=True)
class Services:
    engine: ImageEngine
    images: ImageGeneration
    admission: AdmissionQueue
    auth: Authenticator
    audit: AuditSink
    readiness: Readiness
    started_at: int
    rate_limits: RateLimiter
    prompts: PromptCapture
    audit_health: AuditHealth = field(default_factory=AuditHealth)
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    # Which refusals of unauthenticated requests get an event each; shared by both listeners.
    strangers: StrangerRefusals = field(default_factory=StrangerRefusals)
    policy: PolicyHolder | None = None  # for its reload counts on /metrics
    audit_reader: AuditReader | None = None  # the trail as auditors read it; None: no readable store
    sessions: SessionService | None = None  # console sign-in; None: no state database, no console login
    admin: AdminService | None = None  # the console's user and token administration; None: no state database
    oidc: OidcLogin | None = None  # console sign-in through the IdP (identity.oidc); None: off
    scim: ScimService | None = None  # SCIM provisioning at /scim/v2 on the console; None: identity.scim off
    approvals: ApprovalService | None = None  # model-use approvals (approvals.*); None: no state database
    # re-certification campaigns and model-change approval on the console; None: no state database
    governance: Governance | None = None
    # `zguard doctor`'s findings (check, severity, message, fix) for the console's system page; None: not wired
    doctor: Callable[[], list[dict[str, Any]]] | None = None
    replica: ReplicaStatus | None = None  # this replica's id and its lists' digest against the others'; None: not wired
