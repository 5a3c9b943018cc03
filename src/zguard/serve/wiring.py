"""What `zguard serve` runs: the state store, the engine and the services wired around one audit
sink. Tests, benchmarks and `zguard.cli.docs` build a `Runtime` the same way, around their own engine."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from zguard import state_paths
from zguard.app.context import Services
from zguard.audit import AuditEvent, AuditReader, AuditSink
from zguard.audit.prompts import PromptCapture
from zguard.audit.setup import AuditHealth
from zguard.audit.strangers import StrangerRefusals
from zguard.config import Settings
from zguard.engine import ImageEngine
from zguard.engine.admission import AdmissionQueue, Batching, WorkerThread
from zguard.errors import ConfigError
from zguard.ops.doctor import run_checks
from zguard.provenance.marking import ProvenanceMarker
from zguard.security.tokens import new_token, token_digest
from zguard.services.admin import AdminService
from zguard.services.approvals import approval_service
from zguard.services.auth import AuthService
from zguard.services.counters import CounterStorage
from zguard.services.governance import governance_service
from zguard.services.images import ImageService
from zguard.services.jwt_bearer import JwtVerifier
from zguard.services.ldap_auth import LdapDirectory
from zguard.services.oidc import OidcLogin
from zguard.services.postprocess import PostProcessPool, default_workers
from zguard.services.prompt_policy import PolicyHolder
from zguard.services.ratelimit import RateLimitService
from zguard.services.readiness import Readiness, database_probe
from zguard.services.replicas import ReplicaStatus
from zguard.services.scim import ScimService
from zguard.services.sessions import SessionService
from zguard.store import migrate
from zguard.store.database import create_store_engine, database_url
from zguard.store.errors import SchemaNotCurrent
from zguard.store.principals import PrincipalStore
from zguard.store.scim import ScimStore

log = logging.getLogger("zguard.serve.lifecycle")  # the name operators' log filters know from before the split
DEMO_WARNING = (
    "SERVING THE DEMO MODEL: random weights, every image is noise. "
    "Set model.path (or ZGUARD_MODEL__PATH) to the Z-Image-Turbo directory to serve real images."
)
DEMO_PRINCIPAL = "demo"
DEMO_LABEL = "demo"  # the label of the token a demo start issues


@dataclass
class Runtime:
    """What `serve` wires together; tests build one around their own engine."""

    services: Services
    admission: AdmissionQueue
    worker: WorkerThread
    policy: PolicyHolder | None = None


def prepare_state_dir(state_dir: Path) -> Path:
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:  # a refusal with its fix, never a traceback
        fix = f"install -d -m 700 -o SERVICE-ACCOUNT {state_dir}"
        raise ConfigError([f"state_dir: cannot create {state_dir} ({exc.strerror}); fix: {fix}"]) from None
    return state_dir


def resolve_model_dir(settings: Settings) -> tuple[Path, bool]:
    """(model directory, is demo). Cheap: the demo model itself is built by the engine's load().
    "Is demo" labels what is served; it exempts nothing from the host checks, which exempt only
    the demo model zguard builds in its state_dir (model.path unset: zguard.ops.host_checks)."""
    from zguard.engine.demo import is_demo_model
    from zguard.ops.host_checks import ProcessUser, model_dir_problem

    if settings.model.path is not None:
        path = settings.model.path
        if (problem := model_dir_problem(path, ProcessUser.current())) is not None:
            raise ConfigError([f"model.path: {problem.line()}"])
        return path, is_demo_model(path)
    prepare_state_dir(settings.state_dir)
    return state_paths.demo_model_dir(settings), True


def configured_engine(settings: Settings) -> ImageEngine:
    """The Z-Image pipeline of `model.path`, or the demo model (built on first load)."""
    from zguard.engine.pipeline import DiffusersEngine

    model_dir, demo = resolve_model_dir(settings)
    if demo:
        log.warning(DEMO_WARNING)
    return DiffusersEngine(
        model_dir,
        model_id=settings.model.id,
        device=settings.model.device,
        demo=demo,
        build_demo=settings.model.path is None,
        manifest_required=settings.model.manifest_required,
        manifest_public_key=settings.model.manifest_public_key,
    )


def open_store(settings: Settings) -> PrincipalStore:
    """The state store, at the schema this build needs.

    The embedded default (SQLite in `state_dir`, no `database.url`) is created and migrated on
    first start, so `make serve` needs no extra step. A configured database is never changed by
    `serve`: schema changes are an operator's decision (`zguard init` / `zguard db upgrade`).
    """
    embedded = settings.database.url is None
    if embedded:
        prepare_state_dir(settings.state_dir)
    engine = create_store_engine(database_url(settings))
    try:
        if embedded and migrate.current_revision(engine) is None:
            log.info("creating the state database in %s", settings.state_dir)
            migrate.upgrade(engine)
        migrate.check_schema_current(engine)
    except SchemaNotCurrent as exc:
        raise ConfigError([f"database: {exc.message}"]) from None
    except SQLAlchemyError as exc:
        raise ConfigError(
            [f"database.url: cannot open the state database ({type(exc).__name__}); check the URL and that it is up"]
        ) from None
    return PrincipalStore(engine)


def retire_demo_account(store: PrincipalStore, audit: AuditSink) -> bool:
    """When a real model is served, disable the `demo` account that a demo start made (it holds
    a token labelled `demo`), so its token stops generating; True when it was disabled."""
    record = store.get_principal(DEMO_PRINCIPAL)
    if record is None or not record.enabled or record.kind != "service":
        return False
    if not any(token.label == DEMO_LABEL for token in store.list_tokens(DEMO_PRINCIPAL)):
        return False  # an account an operator named `demo`: not ours to disable
    store.disable_principal(DEMO_PRINCIPAL)
    log.warning(
        "disabled the service account 'demo' that the demo model's first start created: "
        "this server serves a real model, and the demo token must not generate with it"
    )
    audit.emit(
        AuditEvent(
            type="user.disabled",
            outcome="done",
            principal="server",
            detail={"target": DEMO_PRINCIPAL, "reason": "a real model is served"},
        )
    )
    return True


def issue_demo_token(settings: Settings, store: PrincipalStore, token_key: bytes) -> None:
    """On the demo model's first start: a `demo` service account (generator, viewer) and its token.

    On a terminal (`make serve`) the token is printed once with a ready-to-paste command. Anywhere
    else stdout may be a log (systemd sends it to the journal), so the token goes to the file
    `state_dir/demo-token` (mode 0600) instead and only that path is logged.
    """
    if store.get_principal(DEMO_PRINCIPAL) is not None or not settings.api_auth.enabled:
        return
    store.create_principal(DEMO_PRINCIPAL, "service", roles=["generator", "viewer"])
    issued = new_token()
    days = settings.api_auth.token_expiry_days
    store.add_token(
        DEMO_PRINCIPAL,
        token_hash=token_digest(issued.plaintext, token_key),
        prefix=issued.display_prefix,
        label=DEMO_LABEL,
        expires_at=datetime.now(UTC) + timedelta(days=days) if days else None,
    )
    if not sys.stdout.isatty():
        prepare_state_dir(settings.state_dir)
        path = state_paths.demo_token_file(settings)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(issued.plaintext + "\n")
        log.warning("a demo API token (service account 'demo') was written to %s (mode 0600)", path)
        return
    host = settings.api.host if ":" not in settings.api.host else f"[{settings.api.host}]"
    print(
        "\n  A demo API token for the service account 'demo' (roles generator, viewer), shown only this once:\n\n"
        f"    {issued.plaintext}\n\n"
        f"  curl -s http://{host}:{settings.api.port}/v1/images/generations "
        f"-H 'Authorization: Bearer {issued.plaintext}' -H 'Content-Type: application/json' "
        """-d '{"prompt": "a lighthouse at dawn", "size": "256x256"}'\n""",
        flush=True,
    )


def build_auth(settings: Settings, store: PrincipalStore | None, token_key: bytes, audit: AuditSink) -> AuthService:
    registry = settings.role_registry()
    jwt = settings.identity.jwt
    ldap = settings.identity.ldap  # directory users become principals: no directory without a state database
    return AuthService(
        settings.api_auth,
        registry,
        store=store,
        token_key=token_key,
        audit=audit,
        counters=CounterStorage.from_settings(settings.rate_limits),
        jwt=JwtVerifier.from_settings(jwt, registry) if jwt.enabled else None,
        directory=LdapDirectory.from_settings(ldap, registry) if ldap.enabled and store is not None else None,
    )


def admin_service(settings: Settings, auth: AuthService, audit: AuditSink) -> AdminService | None:
    """What the console's admin pages call: the CLI's `AdminService` (same checks, same events) on
    the server's store and token key; None without a state database."""
    if auth.store is None:
        return None
    key = auth.token_key
    return AdminService(
        auth.store,
        settings.role_registry(),
        token_key=lambda: key,
        audit=audit,
        password_min_length=settings.api_auth.password_min_length,
        token_expiry=timedelta(days=days) if (days := settings.api_auth.token_expiry_days) else None,
        reserved_names=[user.username for user in settings.api_auth.users],
    )


def scim_service(
    settings: Settings, auth: AuthService, audit: AuditSink, counters: CounterStorage
) -> ScimService | None:
    """SCIM provisioning on the server's store, its failed attempts counted where request rates are;
    None when `identity.scim` is off or there is no state database (nothing to provision into)."""
    scim = settings.identity.scim
    if not scim.enabled or auth.store is None:
        return None
    return ScimService(
        scim,
        settings.role_registry(),
        ScimStore(auth.store.engine),
        audit=audit,
        counters=counters,
        reserved_names=[user.username for user in settings.api_auth.users],
    )


def oidc_login(
    settings: Settings, auth: AuthService, sessions: SessionService | None, counters: CounterStorage, audit: AuditSink
) -> OidcLogin | None:
    """Console sign-in through the IdP when `identity.oidc` is on (the client secret read now);
    ConfigError without a state database, where no principal or session can be kept."""
    oidc = settings.identity.oidc
    if not oidc.enabled:
        return None
    if auth.store is None or sessions is None:
        raise ConfigError(["identity.oidc.enabled needs the state database (state_dir or database.url)"])
    return OidcLogin.from_settings(
        oidc,
        settings.role_registry(),
        principals=auth.store,
        sessions=sessions,
        counters=counters,
        key=auth.derived_key(b"oidc login transactions"),
        audit=audit,
    )


def build_runtime(
    settings: Settings,
    engine: ImageEngine,
    *,
    auth: AuthService,
    audit: AuditSink,
    prompts: PromptCapture,
    provenance: ProvenanceMarker,
    rate_limits: RateLimitService | None = None,
    policy: PolicyHolder | None = None,
    audit_health: AuditHealth | None = None,
) -> Runtime:
    """Wire the services, once, around the given audit sink, keys and marker: nothing here falls
    back to an in-memory trail or a throwaway key (tests build those in tests/common/factories).
    Without `rate_limits`: the configured limits, auditing to `audit`. Without `policy`: the
    configured lists (a list that cannot be loaded stops the start: fail closed). Without
    `audit_health`: no trail to report on (`zguard docs`)."""
    worker = WorkerThread()
    generation = settings.generation
    batching = Batching(max_images=generation.max_batch_images, wait_s=generation.batch_wait_ms / 1000)
    admission = AdmissionQueue(generation.max_queue, worker, batching=batching)
    rate_limits = rate_limits or RateLimitService.from_settings(settings, audit)
    readiness = Readiness()
    if rate_limits.counters.shared:  # every permissioned request fails closed without it
        readiness.probes["rate_limits.storage"] = rate_limits.counters.reachable
    if auth.store is not None:  # so is every request that checks a credential or records an event
        readiness.probes["database.url"] = database_probe(auth.store.engine)
    policy = policy or PolicyHolder.from_settings(settings)
    images = ImageService(
        settings.generation,
        engine,
        admission,
        readiness,
        audit=audit,
        prompts=prompts,
        postprocess=PostProcessPool(generation.postprocess_workers or default_workers()),
        policy=policy,
        provenance=provenance,
    )
    services = Services(
        engine=engine,
        images=images,
        admission=admission,
        auth=auth,
        audit=audit,
        readiness=readiness,
        started_at=int(time.time()),
        rate_limits=rate_limits,
        prompts=prompts,
        audit_health=audit_health or AuditHealth(),
        policy=policy,
        audit_reader=audit if isinstance(audit, AuditReader) else None,  # decided once, not per request
        strangers=StrangerRefusals(
            settings.audit.unauthenticated_events_per_minute, settings.audit.unauthenticated_events_per_minute_total
        ),
        sessions=(sessions := SessionService.for_auth(settings.console, auth, audit)),
        oidc=oidc_login(settings, auth, sessions, rate_limits.counters, audit),
        admin=admin_service(settings, auth, audit),
        scim=scim_service(settings, auth, audit, rate_limits.counters),
        approvals=approval_service(
            settings.approvals, settings.role_registry(), auth.store, engine, audit=audit, counters=rate_limits.counters
        ),
        governance=governance_service(settings, auth, audit),
        doctor=lambda: [finding.as_dict() for finding in run_checks(settings)],
        replica=ReplicaStatus(
            settings.serve.resolved_replica_id(settings.api.port),
            policy,
            counters=rate_limits.counters,
            audit=audit,
            interval_s=settings.serve.policy_publish_interval_s,
            follow_reloads=settings.serve.policy_follow_reloads,
        ),
    )
    return Runtime(services=services, admission=admission, worker=worker, policy=policy)
