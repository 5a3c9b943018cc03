"""What `zguard doctor` checks, with the fix for each, and what it says of a refused request.

The checks are zguard.ops.host_checks's list, the one `serve` refuses to start on (root, state
directory, settings and key files, model files, encrypted volume), then what only doctor
reports: SELinux/AppArmor, what zero persistence leaves to show (runtime directory empty, no
image files under the state directory, the last cleanup) and the audit trail (the chain verified
as `zguard audit verify` does; the syslog forwarding lag). The command that prints them is
zguard.cli.doctor.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from limits.errors import StorageError
from limits.storage import storage_from_string
from sqlalchemy.exc import SQLAlchemyError

from zguard import state_paths
from zguard.audit.checkpoint_keys import CheckpointKeys
from zguard.audit.store import AuditStore
from zguard.audit.verify import verify_store
from zguard.config import Settings
from zguard.errors import EXIT_FIX, EXIT_NO, EXIT_OK, fix_for
from zguard.ops.approval_checks import approval_quorum_findings
from zguard.ops.host_checks import (
    CheckResult,
    Host,
    SettingsFile,
    host_findings,
    security_modules,
    worst,
)
from zguard.ops.identity_checks import idp_findings
from zguard.ops.ldap_check import ldap_finding
from zguard.ops.model_checks import model_change_finding
from zguard.ops.notification_check import notification_findings
from zguard.ops.persistence import CleanupRecord, files_under
from zguard.ops.scim_check import scim_finding
from zguard.security.keys import KeyFileError, load_public_key
from zguard.security.netacl import NetworkAllowlist
from zguard.store import migrate
from zguard.store.database import create_store_engine, database_url
from zguard.store.errors import SchemaNotCurrent

EXIT_BY_SEVERITY = {"pass": EXIT_OK, "warn": EXIT_NO, "fail": EXIT_FIX}
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
MAX_SCANNED_FILES = 100_000


# --- the checks -------------------------------------------------------------------------------


def _is_image(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    return head.startswith(IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def image_files(root: Path) -> list[Path]:
    """Files under `root` that begin like a PNG, JPEG, GIF or WebP image."""
    return [path for path in files_under(root)[:MAX_SCANNED_FILES] if _is_image(path)]


def persistence_findings(settings: Settings, host: Host) -> list[CheckResult]:
    record = CleanupRecord.read(state_paths.cleanup_record_file(settings))
    runtime = Path(record.runtime_dir) if record is not None else state_paths.runtime_dir(settings, os.environ)
    findings = []
    left = files_under(runtime)
    if left:
        shown = ", ".join(str(p) for p in left[:5])
        findings.append(
            CheckResult(
                "runtime_dir_empty",
                "warn",
                f"{runtime}: {len(left)} file(s) left by libraries: {shown} (a running server sweeps them; "
                "a stopped one should have left none)",
                f"stop zguard (it empties the directory on exit), or: find {runtime} -type f -delete",
            )
        )
    else:
        findings.append(CheckResult("runtime_dir_empty", "pass", f"{runtime}: no files"))
    images = image_files(settings.state_dir)
    if images:
        findings.append(
            CheckResult(
                "no_images_on_disk",
                "fail",
                f"{settings.state_dir}: {len(images)} image file(s): {', '.join(str(p) for p in images[:5])}",
                "find out what wrote them (zguard keeps images in memory only), then shred -u them",
            )
        )
    else:
        findings.append(CheckResult("no_images_on_disk", "pass", f"{settings.state_dir}: no image files"))
    if record is None:
        findings.append(
            CheckResult(
                "last_cleanup",
                "warn",
                f"no runtime cleanup recorded in {state_paths.cleanup_record_file(settings)} (zguard serve has not run with this state_dir)",
                "start zguard serve; it records every sweep",
            )
        )
    else:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.time))
        age = host.now() - record.time
        stale = record.reason not in ("stop", "start") and age > 2 * settings.isolation.cleanup_interval_s
        findings.append(
            CheckResult(
                "last_cleanup",
                "warn" if stale else "pass",
                f"last runtime cleanup {when} ({age:.0f} s ago, {record.reason}, {record.removed} file(s) removed)",
                "the periodic sweep has stopped: check that zguard serve is running and its log" if stale else None,
                {"time": when, "reason": record.reason, "removed": record.removed},
            )
        )
    return findings


def audit_findings(settings: Settings) -> list[CheckResult]:
    """The chain verified as `zguard audit verify` does, and the syslog forwarding lag."""
    if settings.database.url is None and not state_paths.database_file(settings).exists():
        return [
            CheckResult(
                "audit_trail",
                "warn",
                f"no state database in {settings.state_dir} yet",
                "zguard init (or start zguard serve once)",
            )
        ]
    key_path = state_paths.audit_signing_key_file(settings)
    public_key: Ed25519PublicKey | CheckpointKeys | None = load_public_key(key_path) if key_path.is_file() else None
    if settings.audit.checkpoint_keys:  # several writers: every listed replica's key
        try:
            public_key = CheckpointKeys.from_paths(settings.audit.checkpoint_keys)
        except (KeyFileError, OSError) as exc:
            return [
                CheckResult("audit_trail", "fail", f"audit.checkpoint_keys: {exc}", "list readable PEM public keys")
            ]
    engine = create_store_engine(database_url(settings))
    try:
        migrate.check_schema_current(engine)
        store = AuditStore(engine)
        report = verify_store(store, public_key)
        head, cursors = store.head(), store.cursors()
    except (SQLAlchemyError, SchemaNotCurrent, OSError, ValueError) as exc:  # a finding, not a crash
        return [
            CheckResult(
                "audit_trail",
                "fail",
                f"cannot read the audit trail: {type(exc).__name__}: {exc}",
                "zguard audit status; zguard db current",
            )
        ]
    finally:
        engine.dispose()
    findings = []
    if report.problem is not None:
        findings.append(
            CheckResult(
                "audit_trail",
                "fail",
                f"audit trail NOT intact: {report.problem.kind} at event {report.problem.seq}: {report.problem.message}",
                "zguard audit verify; compare with the checkpoints forwarded to syslog, and treat as an incident",
            )
        )
    else:
        unsigned = "" if public_key is not None else f" (no signing key at {key_path}: signatures not checked)"
        findings.append(
            CheckResult(
                "audit_trail",
                "pass" if public_key is not None else "warn",
                f"audit trail intact: {report.events} event(s), {report.checkpoints} checkpoint(s){unsigned}",
                None if public_key is not None else "zguard audit verify --public-key FILE",
            )
        )
    if settings.audit.syslog.transport != "off":
        findings.append(syslog_finding(settings, head.seq, cursors))
    return findings


def collector_reachable(host: str, port: int, timeout_s: float = 2.0) -> str | None:
    """None when a TCP connection to the collector opens, else why not (nothing is sent)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def syslog_finding(settings: Settings, head_seq: int, cursors: Mapping[str, int]) -> CheckResult:
    """WARN when the collector cannot be reached (TCP/TLS), nothing was ever delivered, or the
    forwarder is more than a batch behind; PASS only when none of these holds. A count of events
    behind is no proof of delivery: a collector that is down was PASS at "126 events behind"."""
    syslog = settings.audit.syslog
    where = f"{syslog.host}:{syslog.port} ({syslog.transport})"
    lag = max((max(0, head_seq - seq) for seq in cursors.values()), default=head_seq)
    delivered = any(seq > 0 for seq in cursors.values())
    keeps = "the outbox keeps the events until it is"
    if syslog.transport in ("tcp", "tls") and (why := collector_reachable(syslog.host, syslog.port)) is not None:
        return CheckResult(
            "syslog_forwarding",
            "warn",
            f"syslog collector {where} cannot be reached ({why}); {lag} event(s) not delivered",
            f"start the collector or fix audit.syslog.host/port; {keeps} (zguard audit status shows the cursor)",
            {"lag": lag, "reachable": False},
        )
    if head_seq > 0 and not delivered:
        return CheckResult(
            "syslog_forwarding",
            "warn",
            f"syslog forwarding to {where}: nothing was ever delivered ({lag} event(s) waiting)",
            f"start zguard serve (it forwards); if it runs, check the collector accepts the connection; {keeps}",
            {"lag": lag, "reachable": syslog.transport not in ("tcp", "tls") or None},
        )
    if lag > syslog.batch_size:
        return CheckResult(
            "syslog_forwarding",
            "warn",
            f"syslog forwarding to {where}: {lag} event(s) behind",
            f"check the collector keeps up (zguard audit status shows the cursor); {keeps}",
            {"lag": lag},
        )
    return CheckResult(
        "syslog_forwarding", "pass", f"syslog forwarding to {where}: {lag} event(s) behind", None, {"lag": lag}
    )


def run_checks(settings: Settings, host: Host | None = None, source: SettingsFile | None = None) -> list[CheckResult]:
    """The host integrity list `serve` refuses on (zguard.ops.host_checks), then what only doctor reports."""
    host = host or Host.current()
    findings = host_findings(settings, host, source)
    findings.append(security_modules(host.proc_root, host.sys_root))
    findings += persistence_findings(settings, host)
    findings += audit_findings(settings)
    if (counters := counter_storage_finding(settings)) is not None:
        findings.append(counters)
    findings += filter(None, [ldap_finding(settings.identity.ldap)])
    findings += idp_findings(settings.identity)
    findings += filter(None, [scim_finding(settings)])
    findings += filter(None, [model_change_finding(settings)])
    findings += approval_quorum_findings(settings)
    findings += notification_findings(settings)
    return findings


def counter_storage_finding(settings: Settings) -> CheckResult | None:
    """The rate-limit storage, when it is Redis: every permissioned request fails closed (503)
    while it is down, so it is a FAIL. None for `memory://` (nothing to reach)."""
    url = settings.rate_limits.storage.get_secret_value()
    if url.startswith("memory"):
        return None
    parts = urlsplit(url)
    where = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"  # never the password
    try:
        storage = storage_from_string(url, wrap_exceptions=True, socket_connect_timeout=2.0, socket_timeout=2.0)
        up = bool(storage.check())
    except (StorageError, OSError, ValueError):  # any failure to ask is the answer: it is not reachable
        up = False
    if up:
        return CheckResult("rate_limit_storage", "pass", f"rate_limits.storage {where} answers")
    return CheckResult(
        "rate_limit_storage",
        "fail",
        f"rate_limits.storage {where} does not answer: every request that needs a permission is refused "
        "with 503 rate_limiter_unavailable, and /readyz is 503",
        f"start Redis there (redis-cli -h {parts.hostname} -p {parts.port or 6379} ping), or fix rate_limits.storage",
    )


def report(findings: Sequence[CheckResult]) -> dict[str, Any]:
    status = worst(findings)
    return {"status": status, "exit": EXIT_BY_SEVERITY[status], "findings": [f.as_dict() for f in findings]}


# --- --explain --------------------------------------------------------------------------------


def _allow_key(settings: Settings, listener: str | None) -> tuple[str, list[str]]:
    if listener == "console":
        return "console.allow", settings.console.allow
    return "api.allow", settings.api.allow


def explain_event(body: Mapping[str, Any], settings: Settings) -> tuple[str, str | None]:
    """(what refused the request, how to fix it) for one audit event body."""
    code = body.get("code")
    detail: Mapping[str, Any] = body.get("detail") or {}
    client, listener, principal = body.get("client"), body.get("listener"), body.get("principal")
    roles = ", ".join(body.get("roles") or []) or "none"
    status = (body.get("http") or {}).get("status")
    if code is None:
        return f"the request was not refused: outcome {body.get('outcome')}, HTTP {status}", None
    if code == "ip_not_allowed":
        key, allow = _allow_key(settings, listener)
        # The allowlist recorded with the decision, not the one these settings hold today.
        recorded = detail.get("allowlist")
        in_force = recorded.split() if isinstance(recorded, str) else allow
        changed = ""
        if (
            detail.get("allowlist_sha256")
            and detail["allowlist_sha256"] != NetworkAllowlist.from_entries(allow).digest()
        ):
            changed = f"; {key} has changed since: these settings say {allow}"
        return (
            f"the network allowlist refused client {client} on the {listener} listener (TCP peer {detail.get('peer')}, "
            f"{detail.get('forwarded_headers', 0)} X-Forwarded-For header(s)): it was outside {key} = {in_force}"
            f"{'' if recorded is not None else ' (not recorded with the event: these are the current settings)'}{changed}",
            f"add the client's network to {key} (e.g. {key}: [{client}/32]), or call from an allowed network; "
            "behind a proxy, list the proxy in trusted_proxies so X-Forwarded-For is read",
        )
    if code == "missing_credentials":
        return (
            "authentication refused it: the request carried no credentials (no Authorization header)",
            "send 'Authorization: Bearer <zguard API key>' (zguard token create --user NAME), or HTTP Basic",
        )
    if code == "invalid_api_key":
        reason = detail.get("reason", "wrong credentials")
        return (
            f"authentication refused the Authorization header ({body.get('auth_method') or 'credentials'}): {reason}",
            "check the Authorization header: the key copied whole (zg_...), not revoked, expired or disabled "
            "(zguard token list); issue a new one with zguard token create --user NAME",
        )
    if code == "permission_denied":
        permission = detail.get("permission", "?")
        return (
            f"authorization refused {principal} (roles: {roles}): {detail.get('reason') or f'needs {permission}'}",
            f"give {principal} a role that grants {permission}: zguard user roles {principal} --role ROLE",
        )
    if code == "rate_limit_exceeded":
        return (
            f"the rate limit refused {principal}: at most {detail.get('limit')} request(s) per {detail.get('period_s')} s",
            f"retry after {detail.get('retry_after')} s, or raise rate_limit / rate_limits.per_principal.{principal} "
            "/ rate_limits.per_role",
        )
    if code == "too_many_concurrent_requests":
        limit = settings.rate_limits.max_concurrent_per_principal
        return (
            f"the concurrency limit refused {principal}: already {limit} generation(s) in flight",
            "wait for one to finish, or raise rate_limits.max_concurrent_per_principal",
        )
    if code == "too_many_failed_logins":
        return (
            f"too many failed logins from {client} or for this user; locked out for {detail.get('retry_after', '?')} s",
            "fix the password in the client, wait out the lockout; limits: api_auth.failed_logins_per_user / "
            "api_auth.failed_logins_per_address",
        )
    if code == "prompt_rejected":
        policy = body.get("policy") or {}
        return (
            f"the prompt policy rejected the prompt: category {policy.get('category')}, detector "
            f"{policy.get('detector')}, term {policy.get('term_id')}",
            "rephrase the prompt; if it is legitimate, an admin adds the phrase to policy.allow_phrases "
            "(check with zguard policy test)",
        )
    if code == "audit_unavailable":
        return (
            "the audit trail could not record the request, so it was refused (fail closed)",
            "check the state database (zguard audit status, zguard doctor); the server log has the error",
        )
    return (
        f"refused with {code} (HTTP {status}); detail: {json.dumps(dict(detail), ensure_ascii=False)}",
        fix_for(str(code)) or "the server log has the request id; the code is listed in docs/errors.md",
    )
