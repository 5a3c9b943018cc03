"""`zguard approvals recertify|confirm|campaign|verify-export`: quarterly access re-certification.

    zguard approvals recertify --quarter 2026Q4 --as APPROVER [--deadline 2026-12-20]
    zguard approvals confirm GRANT --campaign ID --as APPROVER [--comment ...]
    zguard approvals revoke GRANT --campaign ID --as APPROVER --reason ...
    zguard approvals recertify --close ID --as APPROVER
    zguard approvals recertify --due
    zguard approvals campaign [ID] [--export csv|json [--output FILE]]
    zguard approvals verify-export FILE [--signature FILE.sig] [--public-key PEM]

The same service whatever the caller (zguard.services.recertification): the same checks and
audit events. `--as` names the approver as for `approvals approve` (zguard.cli.approvals). An
export is signed with the audit checkpoint key (created as `serve` would when absent) and the
signature written beside it as FILE.sig; `verify-export` exits 0 when it verifies, 1 when not.
`recertify --due` acts as the system, as `serve`'s thread does (no `--as`): for cron or a
systemd timer where no server runs; it closes what is past its deadline, opens the scheduled
campaign when due (`approvals.recertification_schedule`), prints what it did and exits 0.
Refusals print the message and its fix and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from zguard.cli import common as cli_common
from zguard.cli.common import (
    EXIT_FIX,
    EXIT_NO,
    EXIT_OK,
    Commands,
    acting_caller,
    command,
    settings_of,
    setup_logging,
)
from zguard.errors import InvalidValue, ZguardError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from zguard.services.approvals import Caller
    from zguard.services.recertification import RecertificationService
    from zguard.store.recertification import CampaignRecord

Acting = Callable[[argparse.ArgumentParser, str], None]


def _run(args: argparse.Namespace, action: Callable[[RecertificationService, Caller | None], int]) -> int:
    from zguard.services.recertification import RecertificationService
    from zguard.store import migrate
    from zguard.store.approvals import ApprovalStore
    from zguard.store.errors import SchemaNotCurrent
    from zguard.store.recertification import RecertificationStore

    settings = settings_of(args)
    setup_logging("warning")

    def on_store(engine: Engine, shown: str) -> int:
        try:
            migrate.check_schema_current(engine)
            service = RecertificationService(
                RecertificationStore(engine),
                ApprovalStore(engine),
                settings.role_registry(),
                audit=cli_common.audit_sink_factory(settings, engine),
                schedule=settings.approvals.recertification_schedule,
                schedule_days=settings.approvals.recertification_days,
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


def _acting(caller: Caller | None) -> Caller:
    if caller is None:
        raise InvalidValue("--as NAME is required", param="--as")
    return caller


def _summary(campaign: CampaignRecord) -> str:
    decided = sum(1 for i in campaign.items if i.decision is not None)
    return (
        f"campaign {campaign.id} ({campaign.quarter}): {campaign.status}, {decided} of {len(campaign.items)} "
        f"grant(s) decided, deadline {campaign.deadline:%Y-%m-%d %H:%M} UTC"
    )


def cmd_recertify(args: argparse.Namespace) -> int:
    from zguard.services.recertification import deadline_of

    def action(service: RecertificationService, caller: Caller | None) -> int:
        if args.due:
            if caller is not None or any(v is not None for v in (args.close, args.quarter, args.deadline)):
                raise InvalidValue(
                    "--due acts alone, as the system: no --quarter, --deadline, --close or --as", param="--due"
                )
            return _print_due(service)
        if args.close is not None:
            closed = service.close(_acting(caller), args.close)
            print(_summary(closed) + "; every unconfirmed grant revoked (not re-certified)")
            return EXIT_OK
        if args.quarter is None:
            raise InvalidValue("name the campaign: --quarter 2026Q4 (or --close ID)", param="--quarter")
        deadline = None
        if args.deadline is not None:
            try:
                deadline = deadline_of(date.fromisoformat(args.deadline))
            except ValueError:
                raise InvalidValue(
                    f"--deadline {args.deadline!r} is not a date (YYYY-MM-DD)", param="--deadline"
                ) from None
        campaign = service.open(_acting(caller), args.quarter, deadline)
        print(_summary(campaign))
        for item in campaign.items:
            print(f"  grant {item.grant_id} of {item.principal}: asked {', '.join(item.approvers) or '-'}")
        print(f"confirm each with `zguard approvals confirm GRANT --campaign {campaign.id} --as APPROVER`")
        return EXIT_OK

    return _run(args, action)


def _print_due(service: RecertificationService) -> int:
    report = service.run_due(cli_common.acting_detail())
    for campaign in report.closed:
        lapsed = sum(1 for i in campaign.items if i.decision == "lapsed")
        print(_summary(campaign) + f"; closed at its deadline, {lapsed} unconfirmed grant(s) revoked")
    if report.opened is not None:
        print(_summary(report.opened) + " (opened by the schedule)")
    if not report.closed and report.opened is None:
        print(f"nothing due (schedule: {service.schedule})")
    return EXIT_OK


def cmd_confirm(args: argparse.Namespace) -> int:
    def action(service: RecertificationService, caller: Caller | None) -> int:
        campaign = service.confirm(_acting(caller), args.campaign, args.grant, args.comment)
        print(f"grant {args.grant}: confirmed; " + _summary(campaign))
        return EXIT_OK

    return _run(args, action)


def revoke_in_campaign(args: argparse.Namespace) -> int:
    """`zguard approvals revoke GRANT --campaign ID`: recorded as the campaign's decision."""

    def action(service: RecertificationService, caller: Caller | None) -> int:
        grant = service.revoke(_acting(caller), args.campaign, args.grant, args.reason)
        print(f"grant {grant.id} of {grant.principal}: revoked (campaign {args.campaign})")
        return EXIT_OK

    return _run(args, action)


def cmd_campaign(args: argparse.Namespace) -> int:
    from zguard.audit.setup import signer
    from zguard.services.recertification import sign_export

    settings = settings_of(args)

    def action(service: RecertificationService, caller: Caller | None) -> int:
        if args.campaign is None:
            if args.export:
                raise InvalidValue("--export needs the campaign's ID", param="--export")
            campaigns = service.list_campaigns()
            print("CAMPAIGN  QUARTER  STATUS  GRANTS  DECIDED  DEADLINE")
            for c in campaigns:
                decided = sum(1 for i in c.items if i.decision is not None)
                print(
                    f"{c.id:<9} {c.quarter:<8} {c.status:<7} {len(c.items):<7} {decided:<8} {c.deadline:%Y-%m-%d %H:%M}"
                )
            return EXIT_OK
        if not args.export:
            campaign = service.get(args.campaign, caller)
            print(_summary(campaign))
            print("GRANT    PRINCIPAL         DECISION   DECIDER           AT                ASKED")
            for i in campaign.items:
                at = "-" if i.decided_at is None else f"{i.decided_at:%Y-%m-%d %H:%M}"
                print(
                    f"{i.grant_id:<8} {i.principal[:17]:<17} {(i.decision or 'pending'):<10} "
                    f"{(i.decider or '-')[:17]:<17} {at:<17} {','.join(i.approvers) or '-'}"
                )
            return EXIT_OK
        data = service.export(caller, args.campaign, args.export)
        key = signer(settings)
        output = Path(args.output or f"campaign-{args.campaign}.{args.export}")
        output.write_bytes(data)
        signature = Path(f"{output}.sig")
        signature.write_bytes(sign_export(data, key.private_key))
        print(f"{output}: evidence of campaign {args.campaign}; signature {signature} (Ed25519, key id {key.key_id})")
        print(f"check it with `zguard approvals verify-export {output}` (or openssl, docs/governance.md)")
        return EXIT_OK

    return _run(args, action)


def cmd_verify_export(args: argparse.Namespace) -> int:
    from zguard import state_paths
    from zguard.security.keys import KeyFileError, key_id, load_public_key
    from zguard.services.recertification import verify_export

    settings = settings_of(args)
    path = Path(args.file)
    signature = Path(args.signature or f"{path}.sig")
    key_path = Path(args.public_key) if args.public_key else state_paths.audit_signing_key_file(settings)
    try:
        data, sig = path.read_bytes(), signature.read_bytes()
        public = load_public_key(key_path)
    except OSError as exc:
        print(f"zguard: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_FIX
    except KeyFileError as exc:
        print(f"zguard: {exc.message}", file=sys.stderr)
        return EXIT_FIX
    if verify_export(data, sig, public):
        print(f"{path}: signature good (Ed25519, key id {key_id(public)})")
        return EXIT_OK
    print(f"{path}: signature does NOT verify with key id {key_id(public)}: the file or signature was changed")
    return EXIT_NO


def register(approvals: Commands, common: argparse.ArgumentParser, acting: Acting) -> None:
    """Add `approvals recertify|confirm|campaign|verify-export` (called by zguard.cli.approvals)."""
    rec = command(
        approvals, common, "recertify", cmd_recertify,
        help_text="open a quarter's re-certification campaign, --close one, or do what is --due",
    )  # fmt: skip
    rec.add_argument(  # not `acting`: optional, as --due acts as the system
        "--as", dest="as_name", default=None, metavar="NAME", help="the approver (a principal or api_auth user)"
    )
    rec.add_argument("--quarter", default=None, metavar="YEARQn", help="e.g. 2026Q4")
    rec.add_argument(
        "--deadline", default=None, metavar="DATE", help="last day to decide (UTC; default: the quarter's end)"
    )
    rec.add_argument("--close", type=int, default=None, metavar="ID", help="close campaign ID now")
    rec.add_argument(
        "--due",
        action="store_true",
        help="close campaigns past their deadline (unconfirmed grants revoked), open the scheduled one; for cron",
    )

    con = command(approvals, common, "confirm", cmd_confirm, help_text="re-certify a grant in a campaign")
    con.add_argument("grant", type=int, metavar="GRANT_ID")
    con.add_argument("--campaign", type=int, required=True, metavar="ID")
    acting(con, "approver")
    con.add_argument("--comment", default=None)

    cam = command(
        approvals, common, "campaign", cmd_campaign,
        help_text="show re-certification campaigns, or export one's signed evidence",
    )  # fmt: skip
    cam.add_argument("campaign", type=int, nargs="?", default=None, metavar="ID")
    cam.add_argument("--export", choices=["csv", "json"], default=None, help="write the signed evidence")
    cam.add_argument("--output", default=None, metavar="FILE", help="default campaign-ID.csv|json; FILE.sig beside it")

    ver = command(
        approvals, common, "verify-export", cmd_verify_export,
        help_text="check a campaign export's signature (exit 0 good, 1 bad)",
    )  # fmt: skip
    ver.add_argument("file", metavar="FILE")
    ver.add_argument("--signature", default=None, metavar="SIG", help="default FILE.sig")
    ver.add_argument(
        "--public-key", default=None, metavar="PEM", help="default: the audit signing key file's public half"
    )
