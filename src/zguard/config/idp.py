"""What every IdP section of the settings shares: the signature algorithms zguard knows and the
rule for an IdP's URLs. Apart from `zguard.config.identity` so that the sections declared in
modules of their own (`zguard.config.identity_oidc`) use them without an import cycle. Pure.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

from zguard.config.sections import is_loopback

# Asymmetric signatures only. An HMAC (HS*) would need a secret shared with the IdP, and an HS*
# verifier handed a public key is the classic forgery (sign with the public key's bytes).
SIGNATURE_ALGORITHMS: Final = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "Ed25519",
)


def check_idp_url(
    value: str | None,
    what: str,
    *,
    example: str = "https://idp.bank.example/realms/bank",
    why: str = "keys and discovery fetched over plain HTTP could be replaced on the way",
) -> str | None:
    """`value` when it is an https URL, or http to a loopback host (a test IdP); else ValueError.
    Other outbound URLs (the notification webhook) use the same rule with their own `example` and `why`."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} must be an https:// URL, e.g. {example}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"{what} must use https (http is allowed only to a loopback host): {why}")
    if parts.username or parts.password or parts.fragment:
        raise ValueError(f"{what} must not carry credentials or a #fragment")
    return value


def check_algorithms(value: list[str], key: str) -> list[str]:
    """`value` without repeats when it names known asymmetric algorithms only; else ValueError
    naming `key`. `none` accepts unsigned tokens, and an HMAC (HS*) verifier handed the IdP's
    public key lets anyone holding it forge tokens (the classic confusion attack)."""
    refused = [name for name in value if name.lower() == "none" or name.upper().startswith("HS")]
    if refused:
        raise ValueError(
            f"{key}: {', '.join(refused)} refused: `none` accepts unsigned tokens and HMAC (HS*) would let anyone "
            "holding the IdP's public key forge tokens; list RS256, ES256 or EdDSA"
        )
    if unknown := [name for name in value if name not in SIGNATURE_ALGORITHMS]:
        raise ValueError(f"{key}: unknown algorithm(s) {', '.join(unknown)}; known: {', '.join(SIGNATURE_ALGORITHMS)}")
    if not value:
        raise ValueError(f"{key}: name at least one algorithm, e.g. [RS256]")
    return list(dict.fromkeys(value))
