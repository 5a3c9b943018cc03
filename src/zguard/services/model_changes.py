"""Model changes need a second admin: the code behind `zguard model pin --as`, `model approve`
and `model changes` (the records themselves: zguard.audit.model_changes).

Decisions:

- Who acts is a stored admin principal, proven, not claimed: `--as NAME` names an enabled
  principal holding the `admin` role, and the command reads one of NAME's API tokens (from the
  terminal without echo, or as one line of stdin; never from argv). The token must be active
  (not revoked or expired), be NAME's, and not be narrowed to roles without `admin`. An OS
  account alone would not do: on a server every admin runs `sudo -u zguard zguard ...`, so the
  account is the same for all of them and cannot tell two people apart, and `--as` without
  proof is a claim anyone with shell access could make. The OS account (`cli:<account>`, its
  uid, sudo's SUDO_USER) is recorded beside the principal, so an auditor can match each event
  with the host's sudo log.
- Four eyes: the approver must be another principal than the requester of the change request
  it approves (names compared without case); the same admin is refused with its own code,
  `model_change_self_approval`. One approval per request (`model_change_already_approved`).
- Every decision is an audit event, committed before the command reports success:
  `model.change_requested`, `model.change_approved`, and `model.change_refused` (outcome
  `denied`, with the refusal's code) for each refusal. An event that cannot be recorded fails
  the command: an approval that is not on the record does not exist.
- The console approves with the signed-in identity (`approve_signed_in`): its authentication
  (a console session, or an API token) is the proof the CLI asks a pasted token for. The same
  checks follow: an enabled stored principal holding `admin`, whose credential is not narrowed to
  roles without it, never the requester, once per request; the same `model.change_approved`
  event, with the console's client address and request id in place of the OS account.
- Errors (HTTP refusals, so the console's JSON API answers them in the one error shape; the CLI
  prints each with its fix and exits 2)::

    ModelChangeRefused (403)              model_change_refused: not an admin, wrong token, nothing to approve
    ├── ModelChangeSelfApproval (403)     model_change_self_approval: the requester cannot approve their own change
    └── ModelChangeAlreadyApproved (409)  model_change_already_approved: this request has its approval
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from zguard.audit import AuditEvent, AuditSink, DetailValue
from zguard.audit.chain import iso_ms
from zguard.audit.model_changes import (
    APPROVED,
    REFUSED,
    REQUESTED,
    ChangeRecord,
    ChangeSource,
    change_records,
    change_state,
    counts,
    same_principal,
)
from zguard.errors import ZguardError
from zguard.security.tokens import token_digest
from zguard.store.principals import PrincipalRecord, PrincipalStore, utc_now

ADMIN_ROLE = "admin"
AUTH_METHOD = "api_token"


class ModelChangeRefused(ZguardError):
    """A model change request or approval refused; the message says why."""

    status = 403
    type = "permission_error"
    code = "model_change_refused"
    fix = "name an enabled admin with `--as NAME` and give one of NAME's active API tokens (zguard token create --user NAME)"


class ModelChangeSelfApproval(ModelChangeRefused):
    """The admin who pinned (requested) the change tried to approve it."""

    code = "model_change_self_approval"
    fix = "another admin approves it: `zguard model approve DIR --as OTHER_ADMIN`"


class ModelChangeAlreadyApproved(ModelChangeRefused):
    """The change request already has its second admin's approval."""

    status = 409
    type = "invalid_request_error"
    code = "model_change_already_approved"
    fix = "nothing to do: `zguard model changes` shows the approval"


@dataclass(frozen=True)
class Operator:
    """Who runs the command on the host, for the record (zguard.cli.common.acting_user/detail)."""

    account: str
    detail: Mapping[str, DetailValue]


class ModelChanges:
    """Request and approve model changes; each decision checked, then audited."""

    def __init__(
        self,
        principals: PrincipalStore,
        store: ChangeSource,
        audit: AuditSink,
        *,
        token_key: Callable[[], bytes],
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._principals = principals
        self._store = store
        self._audit = audit
        self._token_key = token_key
        self._clock = clock

    def records(self) -> list[ChangeRecord]:
        return change_records(self._store)

    def authenticate(self, name: str, token: str, operator: Operator) -> PrincipalRecord:
        """The admin principal `name`, proven by `token`; ModelChangeRefused (recorded) otherwise."""
        principal = self._principals.get_principal(name)
        problem = None
        if principal is None:
            problem = f"no principal {name!r} in the state store (zguard user list)"
        elif not principal.enabled:
            problem = f"{name!r} is disabled"
        elif ADMIN_ROLE not in principal.roles:
            problem = f"{name!r} does not hold the role admin (it holds: {', '.join(principal.roles) or 'none'})"
        else:
            try:
                record = self._principals.get_token_by_hash(token_digest(token, self._token_key()))
            except ValueError:
                record = None
            now = self._clock()
            if record is None or record.principal.name != principal.name:
                problem = f"the token given is not one of the API tokens of {name!r}"
            elif record.revoked_at is not None or (record.expires_at is not None and record.expires_at <= now):
                problem = f"the token {record.prefix}… of {name!r} is revoked or expired"
            elif record.roles is not None and ADMIN_ROLE not in record.roles:
                problem = f"the token {record.prefix}… of {name!r} is narrowed to roles without admin"
        if problem is not None or principal is None:
            self._refuse(ModelChangeRefused(f"--as {name}: {problem}"), name, operator, {})
        return principal

    def request(self, name: str, token: str, digest: str, model_dir: Path, operator: Operator) -> ChangeRecord:
        """Record `model.change_requested` for `digest` by admin `name`."""
        admin = self.authenticate(name, token, operator)
        self._emit(REQUESTED, admin.name, operator, {"digest": digest, "model_path": str(model_dir)})
        return self._latest(REQUESTED, digest)

    def approve(
        self, name: str, token: str, digest: str, model_dir: Path, operator: Operator
    ) -> tuple[ChangeRecord, ChangeRecord]:
        """Record `model.change_approved` of the last request for `digest` by admin `name`, who
        must not be its requester; (approval, request)."""
        admin = self.authenticate(name, token, operator)
        return self._approve(admin.name, digest, model_dir, operator, AUTH_METHOD)

    def approve_signed_in(
        self,
        digest: str,
        model_dir: Path,
        operator: Operator,
        *,
        name: str,
        roles: frozenset[str],
        principal_id: int | None,
        auth_method: str,
    ) -> tuple[ChangeRecord, ChangeRecord]:
        """`approve` for someone the console has authenticated (a session or an API token): the
        stored principal must be enabled and hold `admin`, be the one the credential names
        (`principal_id`), and the credential's roles (`roles`, narrowed by a token) must keep
        `admin`. The four-eyes checks and the event are `approve`'s."""
        principal = self._principals.get_principal(name)
        problem = None
        if principal is None or principal_id is None or principal.id != principal_id:
            problem = f"{name!r} is not a principal of the state store: only stored admins approve model changes"
        elif not principal.enabled:
            problem = f"{name!r} is disabled"
        elif ADMIN_ROLE not in principal.roles or ADMIN_ROLE not in roles:
            problem = f"{name!r} does not act with the role admin here (this sign-in holds: {', '.join(sorted(roles)) or 'none'})"
        if problem is not None or principal is None:
            self._refuse(
                ModelChangeRefused(problem or name, fix="an admin other than the one who pinned it approves"),
                name,
                operator,
                {"digest": digest, "model_path": str(model_dir)},
            )
        return self._approve(principal.name, digest, model_dir, operator, auth_method)

    def _approve(
        self, admin_name: str, digest: str, model_dir: Path, operator: Operator, auth_method: str
    ) -> tuple[ChangeRecord, ChangeRecord]:
        records = self.records()
        state = change_state(records, digest)
        about: dict[str, DetailValue] = {"digest": digest, "model_path": str(model_dir)}
        request = state.request
        if request is None:
            self._refuse(
                ModelChangeRefused(
                    f"no change request for manifest {digest} in the audit trail: the admin who pinned it records "
                    f"one with `zguard model pin {model_dir} --as ADMIN`",
                    fix=f"`zguard model pin {model_dir} --as ADMIN`, then another admin approves it",
                ),
                admin_name,
                operator,
                about,
            )
        about |= {"requester": request.principal, "request_seq": request.seq}
        if same_principal(request.principal, admin_name):
            self._refuse(
                ModelChangeSelfApproval(
                    f"{admin_name!r} pinned manifest {digest} (change request #{request.seq}) and cannot approve "
                    "it: a model change needs a second admin"
                ),
                admin_name,
                operator,
                about,
            )
        requests = {r.seq: r for r in records if r.is_request}
        done = next(
            (r for r in records if r.request_seq == request.seq and not r.is_request and counts(r, requests)), None
        )
        if done is not None:
            self._refuse(
                ModelChangeAlreadyApproved(
                    f"change request #{request.seq} (manifest {digest}) was approved by {done.principal!r} "
                    f"at {iso_ms(done.time_ms)}"
                ),
                admin_name,
                operator,
                about,
            )
        self._emit(APPROVED, admin_name, operator, about, auth_method)
        return self._latest(APPROVED, digest), request

    def _latest(self, kind: str, digest: str) -> ChangeRecord:
        return next(r for r in reversed(self.records()) if r.type == kind and r.digest == digest)

    def refuse(self, exc: ZguardError, name: str, operator: Operator, about: dict[str, DetailValue]) -> NoReturn:
        """Record `exc` as a `model.change_refused` event (outcome denied, its code), then raise it:
        for the checks a caller makes before `approve_signed_in` (zguard.services.governance)."""
        self._refuse(exc, name, operator, about)

    def _refuse(self, exc: ZguardError, name: str, operator: Operator, about: dict[str, DetailValue]) -> NoReturn:
        self._audit.emit(
            AuditEvent(
                type=REFUSED,
                outcome="denied",
                code=exc.code,
                principal=operator.account,
                manifest=_text(about.get("digest")),
                detail={**operator.detail, **about, "claimed_as": name[:128], "reason": exc.message[:500]},
            )
        )
        raise exc

    def _emit(
        self, kind: str, name: str, operator: Operator, about: dict[str, DetailValue], auth_method: str = AUTH_METHOD
    ) -> None:
        self._audit.emit(
            AuditEvent(
                type=kind,
                outcome="done",
                principal=name,
                roles=(ADMIN_ROLE,),
                auth_method=auth_method,
                manifest=_text(about.get("digest")),
                detail={**operator.detail, **about, "os_account": operator.account},
            )
        )


def _text(value: DetailValue) -> str | None:
    return value if isinstance(value, str) else None
