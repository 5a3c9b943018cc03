"""`zguard doctor`'s approvals check: enough approvers for the quorum (issue 20).

With `approvals.required` on, nobody generates without a grant, and a grant needs `quorum`
distinct approvers who are not the requester. Counted: the enabled stored principals and the
`api_auth.users` whose roles grant `approvals:decide`. People the IdP maps to an approver role
at sign-in (OIDC, LDAP) are stored at their first sign-in and counted from then on, so a new
deployment may read low until they have signed in once: the message says so.

- `approvals_quorum`: WARN when `approvals.required` is on and there are no approvers, or fewer
  than the quorum the served model needs (`per_model_quorum` for its id or digest, else
  `quorum`); WARN too for every `per_model_quorum` rule of 2 while fewer than 2 approvers exist
  (requests for that model could never be granted), whether or not approvals are required.
  An approver who may also generate cannot approve their own request, so exactly `quorum`
  approvers among whom one may generate is a WARN for that one's requests.
- None when approvals are not required and no per-model rule is short: nothing to report.
- A state database that cannot be read is a WARN saying the approvers could not be counted.
"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from zguard.config import Settings
from zguard.errors import ZguardError
from zguard.integrity.manifest import read_manifest
from zguard.ops.findings import CheckResult
from zguard.security.rbac import Permission, authorize
from zguard.store import migrate
from zguard.store.database import create_store_engine, database_url
from zguard.store.errors import SchemaNotCurrent
from zguard.store.principals import PrincipalStore

CHECK = "approvals_quorum"
IDP_NOTE = "people an IdP maps to an approver role count once they have signed in"


def served_quorum(settings: Settings) -> tuple[str, int]:
    """(the served model as named, the quorum its requests need), as `serve` would load it."""
    digest = None
    if settings.model.path is not None:
        try:
            digest = read_manifest(settings.model.path).digest
        except (OSError, ValueError, ZguardError):
            digest = None
    return settings.model.id, settings.approvals.quorum_for(settings.model.id, digest)


def approvers(settings: Settings) -> tuple[list[str], list[str]] | None:
    """(the approvers' names, those among them who may also generate); None: not readable."""
    registry = settings.role_registry()
    people = [(u.username, tuple(u.roles)) for u in settings.api_auth.users]
    engine = create_store_engine(database_url(settings))
    try:
        migrate.check_schema_current(engine)
        people += [(p.name, p.roles) for p in PrincipalStore(engine).list_principals() if p.enabled]
    except (SQLAlchemyError, SchemaNotCurrent, OSError):
        return None
    finally:
        engine.dispose()
    deciding = [(name, roles) for name, roles in people if authorize(roles, Permission.APPROVALS_DECIDE, registry)]
    both = [name for name, roles in deciding if authorize(roles, Permission.IMAGES_GENERATE, registry)]
    return [name for name, _ in deciding], both


def approval_quorum_findings(settings: Settings) -> list[CheckResult]:
    section = settings.approvals
    short_rules = [key for key, quorum in section.per_model_quorum.items() if quorum == 2]
    if not section.required and not short_rules:
        return []
    counted = approvers(settings)
    if counted is None:
        return [
            CheckResult(CHECK, "warn", "cannot count the approvers: the state database cannot be read",
                        "zguard db upgrade (or fix database.url / state_dir)")
        ]  # fmt: skip
    names, generating = counted
    n = len(names)
    detail = {"approvers": n, "approvers_who_generate": len(generating)}
    fix = "give approvers the `approver` role: `zguard user add NAME --role approver` (or an IdP group mapped to it)"
    findings: list[CheckResult] = []
    if section.required:
        model, quorum = served_quorum(settings)
        if n == 0:
            findings.append(CheckResult(CHECK, "warn", f"approvals.required is on and nobody holds approvals:decide: no "
                                        f"grant can be made and every generation is refused ({IDP_NOTE})", fix,
                                        detail))  # fmt: skip
        elif n < quorum:
            findings.append(CheckResult(CHECK, "warn", f"requests for {model} need {quorum} approvers and only {n} "
                                        f"exist(s) ({', '.join(names[:5])}): none can be granted ({IDP_NOTE})", fix,
                                        detail))  # fmt: skip
        elif n == quorum and generating:
            findings.append(CheckResult(CHECK, "warn", f"requests for {model} need {quorum} approvers and exactly {n} "
                                        f"exist; {', '.join(generating[:5])} may also generate, and nobody approves "
                                        "their own request, so theirs cannot be granted", fix, detail))  # fmt: skip
    for key in short_rules:
        if n < 2:
            findings.append(CheckResult(CHECK, "warn", f"approvals.per_model_quorum[{key!r}] is 2 and only {n} "
                                        f"approver(s) exist: requests for that model cannot be granted ({IDP_NOTE})",
                                        fix, {**detail, "model": key}))  # fmt: skip
    if not findings:
        findings.append(CheckResult(CHECK, "pass", f"{n} approver(s) for a quorum of {served_quorum(settings)[1]}",
                                    None, detail))  # fmt: skip
    return findings
