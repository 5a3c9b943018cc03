"""`zguard approvals request|list|approve|reject|revoke`: model-use approvals on the command line.

The same service as the console's JSON API (zguard.services.approvals), so the same checks and
the same audit events. `--as NAME` names the principal who acts (a stored principal or a user
in `api_auth.users`): their roles decide what they may do, and four eyes apply to them (never
the requester, never twice). The OS account running the command is recorded beside it in each
event (`os_user`, `uid`), as every command records it. Whoever can run zguard on the host can
also read its database, so `--as` names a responsibility, not a proof of identity: the console
API is where an approver signs in for themselves.

The served model is named by `model.id` and the manifest pinned in `model.path` (its digest),
without loading the model. Refusals print the message and its fix and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from zguard.cli import common as cli_common
from zguard.cli.common import (
    EXIT_FIX,
    EXIT_OK,
    Commands,
    acting_caller,
    command,
    group,
    settings_of,
    setup_logging,
)
from zguard.config import Settings
from zguard.errors import InvalidValue, ZguardError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from zguard.services.approvals import ApprovalService, Caller


def served_model(settings: Settings) -> tuple[str, str | None]:
    """(model.id, the pinned manifest's digest or None) as `serve` would load them."""
    from zguard.integrity.manifest import read_manifest

    if settings.model.path is None:
        return settings.model.id, None
    try:
        return settings.model.id, read_manifest(settings.model.path).digest
    except (OSError, ValueError, ZguardError):
        return settings.model.id, None


def _run(args: argparse.Namespace, action: Callable[[ApprovalService, Caller | None], int]) -> int:
    from zguard.services.approvals import ApprovalService
    from zguard.services.counters import CounterStorage
    from zguard.store import migrate
    from zguard.store.approvals import ApprovalStore
    from zguard.store.errors import SchemaNotCurrent
    from zguard.store.principals import PrincipalStore

    settings = settings_of(args)
    setup_logging("warning")

    def on_store(engine: Engine, shown: str) -> int:
        try:
            migrate.check_schema_current(engine)
            principals = PrincipalStore(engine)
            service = ApprovalService(
                settings.approvals,
                ApprovalStore(engine),
                settings.role_registry(),
                audit=cli_common.audit_sink_factory(settings, engine),
                counters=CounterStorage.from_settings(settings.rate_limits),
                served=lambda: served_model(settings),
                version=principals.auth_version,
            )
            caller = acting_caller(settings, engine, args.as_name) if getattr(args, "as_name", None) else None
            return action(service, caller)
        except SchemaNotCurrent as exc:
            print(f"zguard: state database {shown} {cli_common.schema_not_current(exc)}", file=sys.stderr)
            return EXIT_FIX
        except ZguardError as exc:
            fix = f"; fix: {exc.fix}" if exc.fix else ""
            print(f"zguard: {exc.message} ({exc.code}){fix}", file=sys.stderr)
            return EXIT_FIX

    return cli_common.run_on_database(settings, on_store)


def cmd_request(args: argparse.Namespace) -> int:
    from zguard.services.approvals import RequestForm

    def action(service: ApprovalService, caller: Caller | None) -> int:
        form = RequestForm(
            model=args.model,
            purpose=args.purpose,
            business_unit=args.business_unit,
            data_classification=args.classification,
            quota_per_day=args.per_day,
            quota_total=args.total,
            validity_days=args.days,
            ticket=args.ticket,
            group=args.group,
        )
        record = service.request(_required(caller), form)
        print(
            f"approval request {record.id}: pending, needs {record.quorum} approver(s) before "
            f"{record.expires_at:%Y-%m-%d %H:%M} UTC; `zguard approvals approve {record.id} --as APPROVER`"
        )
        return EXIT_OK

    return _run(args, action)


def _required(caller: Caller | None) -> Caller:
    if caller is None:  # argparse requires --as on every command that acts
        raise InvalidValue("--as NAME is required", param="--as")
    return caller


def _decide(args: argparse.Namespace, decision: str) -> int:
    from zguard.services.grant_scope import Scope

    def action(service: ApprovalService, caller: Caller | None) -> int:
        scope = Scope(getattr(args, "max_size", None), getattr(args, "max_steps", None))
        outcome = service.decide(
            _required(caller), args.request, "approve" if decision == "approve" else "reject", args.comment, scope
        )
        if outcome.grant is not None:
            grant = outcome.grant
            holder = f"group {grant.group_name}" if grant.group_name else grant.principal
            scoped = (
                ""
                if grant.max_size is None and grant.max_steps is None
                else f", {_scope_text(grant.max_size, grant.max_steps)}"
            )
            print(
                f"approval request {args.request}: approved; grant {grant.id} for {holder} until "
                f"{grant.expires_at:%Y-%m-%d %H:%M} UTC ({grant.quota_per_day}/day, {grant.quota_total} in all{scoped})"
            )
        else:
            request = outcome.request
            print(
                f"approval request {args.request}: {request.status} ({outcome.approvals} of {request.quorum} approvals)"
            )
        return EXIT_OK

    return _run(args, action)


def cmd_approve(args: argparse.Namespace) -> int:
    return _decide(args, "approve")


def cmd_reject(args: argparse.Namespace) -> int:
    return _decide(args, "reject")


def cmd_revoke(args: argparse.Namespace) -> int:
    if getattr(args, "campaign", None) is not None:
        from zguard.cli.recertification import revoke_in_campaign

        return revoke_in_campaign(args)

    def action(service: ApprovalService, caller: Caller | None) -> int:
        grant = service.revoke(_required(caller), args.grant, args.reason)
        print(f"grant {grant.id} of {grant.principal}: revoked")
        return EXIT_OK

    return _run(args, action)


def cmd_list(args: argparse.Namespace) -> int:
    from zguard.services.approvals import grant_json, request_json

    def action(service: ApprovalService, _caller: Caller | None) -> int:
        requests = service.list_requests(status=args.status)
        grants = service.list_grants()
        if args.json:
            print(
                json.dumps({"requests": [request_json(r) for r in requests], "grants": [grant_json(g) for g in grants]})
            )
            return EXIT_OK
        print("REQUEST  STATUS    REQUESTER         MODEL                  PER_DAY  TOTAL  DAYS  DECISIONS")
        for r in requests:
            decided = ", ".join(f"{d.decider}:{d.decision}" for d in r.decisions) or "-"
            print(
                f"{r.id:<8} {r.status:<9} {r.requester[:17]:<17} {r.model_id[:22]:<22} {r.quota_per_day:<8} "
                f"{r.quota_total:<6} {r.validity_days:<5} {decided}"
            )
        print("GRANT    STATUS    PRINCIPAL         USED/TOTAL  PER_DAY  EXPIRES           SCOPE")
        for g in grants:
            holder = f"@{g.group_name}" if g.group_name else g.principal
            print(
                f"{g.id:<8} {g.status:<9} {holder[:17]:<17} {f'{g.used_total}/{g.quota_total}':<11} "
                f"{g.quota_per_day:<8} {g.expires_at:%Y-%m-%d %H:%M}  {_scope_text(g.max_size, g.max_steps)}"
            )
        return EXIT_OK

    return _run(args, action)


def _scope_text(max_size: int | None, max_steps: int | None) -> str:
    parts = ([f"size<={max_size}"] if max_size else []) + ([f"steps<={max_steps}"] if max_steps else [])
    return ",".join(parts) or "-"


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `approvals request|list|approve|reject|revoke` (and zguard.cli.recertification's)."""
    approvals = group(
        commands,
        common,
        "approvals",
        "model-use approvals",
        "Model-use approvals: requests, four-eyes decisions, grants (docs/governance.md).",
    )

    def acting(parser: argparse.ArgumentParser, who: str) -> None:
        parser.add_argument(
            "--as", dest="as_name", required=True, metavar="NAME", help=f"the {who} (a principal or api_auth user)"
        )

    req = command(approvals, common, "request", cmd_request, help_text="ask to use the served model")
    acting(req, "requester")
    req.add_argument("--model", required=True, help="the served model's id or manifest digest")
    req.add_argument("--purpose", required=True)
    req.add_argument("--business-unit", required=True)
    req.add_argument("--classification", required=True, help="data classification, e.g. internal, confidential")
    req.add_argument("--ticket", default=None, help="change or ticket reference")
    req.add_argument("--per-day", type=int, required=True, help="images per UTC day")
    req.add_argument("--total", type=int, required=True, help="images in all")
    req.add_argument("--days", type=int, required=True, help="validity in days (at most approvals.max_validity_days)")
    req.add_argument(
        "--group", default=None, metavar="NAME", help="for this SCIM group (you a member): its members share the grant"
    )

    lst = command(approvals, common, "list", cmd_list, help_text="requests, their decisions, and grants")
    lst.add_argument("--status", choices=["pending", "approved", "rejected", "expired"], default=None)
    lst.add_argument("--json", action="store_true", help="one JSON document")

    for name, handler, text in (
        ("approve", cmd_approve, "approve a request"),
        ("reject", cmd_reject, "reject a request (--comment required)"),
    ):
        dec = command(approvals, common, name, handler, help_text=text)
        dec.add_argument("request", type=int, metavar="REQUEST_ID")
        acting(dec, "approver")
        dec.add_argument("--comment", default=None)
        if name == "approve":
            dec.add_argument("--max-size", type=int, default=None, metavar="PX", help="the grant's longest image side")
            dec.add_argument("--max-steps", type=int, default=None, metavar="N", help="the grant's most steps")

    rev = command(approvals, common, "revoke", cmd_revoke, help_text="revoke a grant, with its reason")
    rev.add_argument("grant", type=int, metavar="GRANT_ID")
    acting(rev, "approver")
    rev.add_argument("--reason", required=True)
    rev.add_argument(
        "--campaign", type=int, default=None, metavar="ID", help="record it as re-certification campaign ID's decision"
    )

    from zguard.cli import recertification

    recertification.register(approvals, common, acting)
