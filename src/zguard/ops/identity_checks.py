"""`zguard doctor`'s checks of the bank's IdP: discovery and JWKS of `identity.oidc` and `identity.jwt`.

For each section that is enabled: the discovery document at `{issuer}/.well-known/openid-configuration`
answers and names the same issuer (for `identity.jwt` with its own `jwks_url`, no discovery is
needed and none is checked); the JWKS answers and holds at least one key zguard can use (a
signature key of a type the configured algorithms need, public only, RSA of 2048 bits or more).

Each fetch is made as the server makes it (TLS verified against `ca_file` or the system's CAs, a
timeout, redirects not followed, no proxy from the environment, at most `MAX_BYTES`), with httpx
directly: `ops` does not import `services`. A check never raises: whatever fails is its finding.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from zguard.config.identity import IdentitySettings
from zguard.ops.findings import CheckResult

MAX_BYTES: Final = 64 * 1024
MIN_RSA_BITS: Final = 2048
PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def key_type(alg: str) -> str:
    if alg.startswith(("RS", "PS")):
        return "RSA"
    return "EC" if alg.startswith("ES") else "OKP"


@dataclass(frozen=True)
class IdpTarget:
    """What one section says about its IdP."""

    section: str  # identity.oidc, identity.jwt
    issuer: str
    jwks_url: str | None
    ca_file: Path | None
    timeout_s: float
    algorithms: tuple[str, ...]
    needs_login_endpoints: bool  # OIDC sign-in also needs the authorization and token endpoints


class Unreachable(Exception):
    """A document could not be read; the message says why, for the finding."""


def _get_json(url: str, target: IdpTarget) -> Any:
    try:
        context = ssl.create_default_context(cafile=str(target.ca_file) if target.ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise Unreachable(f"{target.section}.ca_file {target.ca_file} cannot be used: {exc}") from None
    try:
        with (
            httpx.Client(verify=context, timeout=target.timeout_s, follow_redirects=False, trust_env=False) as client,
            client.stream("GET", url, headers={"accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise Unreachable(f"GET {url} answered HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    raise Unreachable(f"GET {url} sent over {MAX_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise Unreachable(f"GET {url} failed: {type(exc).__name__}: {exc}"[:300]) from None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Unreachable(f"GET {url} is not JSON") from None


def _name(target: IdpTarget) -> str:
    return target.section.split(".")[-1]


def discovery_finding(target: IdpTarget) -> tuple[CheckResult, str | None]:
    """The discovery check, and the JWKS URL it found (None when it failed)."""
    check = f"{_name(target)}_discovery"
    url = target.issuer.rstrip("/") + "/.well-known/openid-configuration"
    fix_reach = (
        f"check that this host reaches {url} (DNS, firewall, proxy), and {target.section}.ca_file for the bank's CA"
    )
    try:
        document = _get_json(url, target)
    except Unreachable as exc:
        return CheckResult(check, "fail", f"{target.section}: the IdP's discovery document: {exc}", fix_reach), None
    if not isinstance(document, dict):
        return CheckResult(check, "fail", f"{target.section}: {url} is not a JSON object", fix_reach), None
    named = document.get("issuer")
    if named != target.issuer:
        return (
            CheckResult(
                check,
                "fail",
                f"{target.section}: {url} names issuer {str(named)[:200]!r}, not {target.issuer!r}: every token would be refused",
                f"set {target.section}.issuer to exactly the IdP's issuer, {str(named)[:200]!r} (trailing slash included)",
            ),
            None,
        )
    wanted = ["jwks_uri"] + (["authorization_endpoint", "token_endpoint"] if target.needs_login_endpoints else [])
    if missing := [name for name in wanted if not isinstance(document.get(name), str)]:
        return (
            CheckResult(check, "fail", f"{target.section}: {url} has no {', '.join(missing)}", "check the issuer URL"),
            None,
        )
    advertised = document.get("id_token_signing_alg_values_supported")
    if target.needs_login_endpoints and isinstance(advertised, list) and not set(advertised) & set(target.algorithms):
        return (
            CheckResult(
                check,
                "fail",
                f"{target.section}: the IdP signs id_tokens with {', '.join(map(str, advertised))[:200]}, "
                f"none of {target.section}.algorithms ({', '.join(target.algorithms)})",
                f"add the IdP's algorithm to {target.section}.algorithms (asymmetric only)",
            ),
            None,
        )
    if target.needs_login_endpoints and not isinstance(document.get("end_session_endpoint"), str):
        return (
            CheckResult(
                check,
                "warn",
                f"{target.section}: {url} names issuer {target.issuer} but no end_session_endpoint: signing out "
                "of the console will not end the IdP's session",
                "enable RP-initiated logout at the IdP (Keycloak and Entra ID have it), or accept it",
            ),
            str(document["jwks_uri"]),
        )
    return CheckResult(check, "pass", f"{target.section}: {url} answers for issuer {target.issuer}"), str(
        document["jwks_uri"]
    )


def jwks_finding(target: IdpTarget, jwks_url: str) -> CheckResult:
    check = f"{_name(target)}_jwks"
    try:
        document = _get_json(jwks_url, target)
    except Unreachable as exc:
        return CheckResult(
            check, "fail", f"{target.section}: the IdP's JWKS: {exc}", f"check that this host reaches {jwks_url}"
        )
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return CheckResult(check, "fail", f"{target.section}: {jwks_url} has no `keys` list", "check the JWKS URL")
    types = {key_type(alg) for alg in target.algorithms}
    usable = [entry for entry in entries if isinstance(entry, dict) and _usable(entry, types)]
    if not usable:
        return CheckResult(
            check,
            "fail",
            f"{target.section}: {jwks_url} lists {len(entries)} key(s), none usable for {', '.join(target.algorithms)}: "
            "every token would be refused",
            f"publish a signature key (RSA of {MIN_RSA_BITS} bits or more, EC, Ed25519) at the IdP, "
            f"or add its algorithm to {target.section}.algorithms",
        )
    return CheckResult(check, "pass", f"{target.section}: {jwks_url} has {len(usable)} usable signing key(s)")


def _usable(entry: dict[str, Any], types: set[str]) -> bool:
    if entry.get("kty") not in types or entry.get("use") not in (None, "sig") or PRIVATE_MEMBERS & entry.keys():
        return False
    return entry.get("kty") != "RSA" or _bits(entry.get("n")) >= MIN_RSA_BITS


def _bits(n: object) -> int:
    if not isinstance(n, str):
        return 0
    try:
        return int.from_bytes(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4)), "big").bit_length()
    except (binascii.Error, ValueError):
        return 0


def targets(identity: IdentitySettings) -> list[IdpTarget]:
    found = []
    oidc, jwt = identity.oidc, identity.jwt
    if oidc.enabled and oidc.issuer is not None:
        found.append(
            IdpTarget("identity.oidc", oidc.issuer, None, oidc.ca_file, oidc.timeout_s, tuple(oidc.algorithms), True)
        )
    if jwt.enabled and jwt.issuer is not None:
        found.append(
            IdpTarget(
                "identity.jwt", jwt.issuer, jwt.jwks_url, jwt.ca_file, jwt.timeout_s, tuple(jwt.algorithms), False
            )
        )
    return found


def idp_findings(identity: IdentitySettings) -> list[CheckResult]:
    """The discovery and JWKS findings of every enabled IdP section (none when all are off)."""
    findings = []
    for target in targets(identity):
        jwks_url = target.jwks_url
        if jwks_url is None:
            discovery, jwks_url = discovery_finding(target)
            findings.append(discovery)
        if jwks_url is not None:
            findings.append(jwks_finding(target, jwks_url))
    return findings
