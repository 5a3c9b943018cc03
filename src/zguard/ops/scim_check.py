"""`zguard doctor`'s SCIM check: the IdP's bearer secret must not cross the network in clear.

SCIM (`identity.scim`) is served on the console listener; the IdP (Entra ID and Okta call from
the internet, through the bank's reverse proxy) sends the provisioning secret in every request.
Pure settings reading, no I/O: a console without its own TLS is a WARN unless `trusted_proxies`
says a proxy terminates TLS in front of it; a state database is needed to provision into.
"""

from __future__ import annotations

from zguard.config import Settings
from zguard.ops.findings import CheckResult


def scim_finding(settings: Settings) -> CheckResult | None:
    """None when SCIM is off."""
    scim = settings.identity.scim
    if not scim.enabled:
        return None
    if settings.console.tls_cert_file is None and not settings.trusted_proxies:
        return CheckResult(
            "scim",
            "warn",
            "identity.scim is on but the console listener serves plain HTTP and no trusted proxy is named: "
            "the IdP's SCIM secret would cross the network in clear",
            "set console.tls_cert_file and console.tls_key_file, or terminate TLS at a reverse proxy listed in trusted_proxies",
        )
    mapped = f"{len(scim.group_role_map)} group(s) mapped to roles" if scim.group_role_map else "roles left to admins"
    return CheckResult(
        "scim",
        "pass",
        f"SCIM provisioning at /scim/v2 on the console, {len(scim.token_sha256)} secret digest(s), {mapped}",
    )
