"""The permission review and configuration hygiene checks of `zguard scan`.

Pure: settings, principal and token records and the time go in; findings come out. The
deployment guide asks for periodic permission reviews; these are the questions a reviewer asks
first (who holds which role, how many admins, which tokens never expire or sit unused, who was
disabled but can still call the API, which role mixes generating with reading the record of it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from zguard.config import ListenerSettings, Settings
from zguard.security.passwords import cost_of
from zguard.security.rbac import AUDIT, GENERATION, RoleRegistry
from zguard.store.principals import PrincipalRecord, TokenRecord

SEVERITIES = ("info", "low", "medium", "high", "critical")
UNUSED_AFTER = timedelta(days=90)
MIN_BCRYPT_COST = 10
MAX_ADMINS = 3  # more than this many enabled admins is worth a second look
OPEN_NETWORKS = frozenset({"0.0.0.0/0", "::/0"})


@dataclass(frozen=True)
class ScanFinding:
    """One thing the scan found. `subject` names a package, principal, token id or setting,
    never a secret; `fix` says what to do."""

    check: str
    code: str
    severity: str
    subject: str
    message: str
    fix: str = ""
    detail: dict[str, str] = field(default_factory=dict)


def at_or_above(severity: str, threshold: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index(threshold)


def bcrypt_cost(password_hash: str) -> int | None:
    try:
        return cost_of(password_hash)
    except ValueError:
        return None


def _live(token: TokenRecord, now: datetime) -> bool:
    return token.revoked_at is None and (token.expires_at is None or token.expires_at > now)


def permission_review(
    principals: Sequence[PrincipalRecord],
    tokens: Iterable[TokenRecord],
    registry: RoleRegistry,
    now: datetime,
    configured_admins: Sequence[str] = (),
) -> list[ScanFinding]:
    """`configured_admins`: users of the settings file holding `admin` (counted with the database's)."""
    findings: list[ScanFinding] = []
    for role in registry:
        if role.permissions & GENERATION and role.permissions & AUDIT:
            findings.append(
                ScanFinding("permissions", "role_generation_and_audit", "high", f"role {role.name}",
                        f"role {role.name} grants both image generation and audit access",
                        "split the role: whoever generates must not review the record of it")
            )  # fmt: skip
    for principal in principals:
        held = [registry.get(name) for name in principal.roles]
        perms = {p for role in held if role is not None for p in role.permissions}
        if principal.enabled and perms & GENERATION and perms & AUDIT:
            findings.append(
                ScanFinding("permissions", "principal_generation_and_audit", "high", f"principal {principal.name}",
                        f"{principal.name} holds roles {', '.join(principal.roles)}: generation and audit together",
                        f"zguard user roles {principal.name} ... (remove one side)")
            )  # fmt: skip
        cost = bcrypt_cost(principal.password_hash or "")
        if cost is not None and cost < MIN_BCRYPT_COST:
            findings.append(_weak_hash(f"principal {principal.name}", cost, f"zguard user passwd {principal.name}"))
    admins = [p.name for p in principals if p.enabled and "admin" in p.roles] + list(configured_admins)
    if len(admins) > MAX_ADMINS:
        findings.append(
            ScanFinding("permissions", "many_admins", "medium", "role admin",
                    f"{len(admins)} enabled admins ({', '.join(admins)})",
                    f"keep admin to the few who need it (at most {MAX_ADMINS})")
        )  # fmt: skip
    for token in tokens:
        if not _live(token, now):
            continue
        owner, subject = token.principal.name, f"token {token.id} ({token.prefix}…) of {token.principal.name}"
        if not token.principal.enabled:
            findings.append(
                ScanFinding("permissions", "disabled_principal_live_token", "high", subject,
                        f"{owner} is disabled but still holds a live token",
                        f"zguard token revoke {token.id}")
            )  # fmt: skip
        if token.expires_at is None:
            findings.append(
                ScanFinding("permissions", "token_without_expiry", "medium", subject, "token never expires",
                        f"revoke it (zguard token revoke {token.id}) and issue one with an expiry")
            )  # fmt: skip
        last = token.last_used_at or token.created_at
        if now - last >= UNUSED_AFTER:
            findings.append(
                ScanFinding("permissions", "token_unused", "low", subject,
                        f"not used for {(now - last).days} days" + ("" if token.last_used_at else " (never used)"),
                        f"revoke it if it is no longer needed (zguard token revoke {token.id})")
            )  # fmt: skip
    return findings


def _weak_hash(subject: str, cost: int, fix: str) -> ScanFinding:
    return ScanFinding(
        "config", "weak_bcrypt_cost", "medium", subject, f"bcrypt cost {cost} (< {MIN_BCRYPT_COST})",
        f"re-hash the password at cost {MIN_BCRYPT_COST} or more: {fix}",
    )  # fmt: skip


def _listener(name: str, listener: ListenerSettings) -> list[ScanFinding]:
    if listener.is_loopback:
        return []
    findings = []
    if listener.tls_cert_file is None:
        findings.append(
            ScanFinding("config", "listener_without_tls", "high", f"{name}.host",
                    f"{name} listens on {listener.host} without TLS",
                    f"set {name}.tls_cert_file and {name}.tls_key_file, or front it with a TLS proxy on loopback")
        )  # fmt: skip
    if not listener.allow or OPEN_NETWORKS & set(listener.allow):
        findings.append(
            ScanFinding("config", "listener_without_allowlist", "high", f"{name}.allow",
                    f"{name} listens on {listener.host} with allow {listener.allow or '[]'}",
                    f"list only the networks that may call it in {name}.allow")
        )  # fmt: skip
    return findings


def config_hygiene(settings: Settings) -> list[ScanFinding]:
    findings = _listener("api", settings.api) + _listener("console", settings.console)
    if not settings.api_auth.enabled:
        findings.append(
            ScanFinding("config", "auth_disabled", "high", "api_auth.enabled",
                    "authentication is off: every caller acts as a local generator and viewer",
                    "set api_auth.enabled: true")
        )  # fmt: skip
    for user in settings.api_auth.users:
        cost = bcrypt_cost(user.password.get_secret_value())
        if cost is not None and cost < MIN_BCRYPT_COST:
            findings.append(_weak_hash(f"api_auth.users {user.username}", cost, "zguard user hash-password"))
    return findings
