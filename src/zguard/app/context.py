"""What the app factories are given: the services both listeners share in one process."""

from __future__ import annotations

from dataclasses import dataclass, field

from zguard.audit import AuditReader, AuditSink
from zguard.audit.prompts import PromptCapture
from zguard.audit.setup import AuditHealth
from zguard.engine import ImageEngine
from zguard.engine.admission import AdmissionQueue
from zguard.services.auth import AuthService
from zguard.services.images import ImageService
from zguard.services.metrics import RequestMetrics
from zguard.services.prompt_policy import PolicyHolder
from zguard.services.ratelimit import RateLimitService
from zguard.services.readiness import Readiness


@dataclass(frozen=True)
class Services:
    engine: ImageEngine
    images: ImageService
    admission: AdmissionQueue
    auth: AuthService
    audit: AuditSink
    readiness: Readiness
    started_at: int
    rate_limits: RateLimitService
    prompts: PromptCapture
    audit_health: AuditHealth = field(default_factory=AuditHealth)
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    policy: PolicyHolder | None = None  # for its reload counts on /metrics
    audit_reader: AuditReader | None = None  # the trail as auditors read it; None: no readable store
