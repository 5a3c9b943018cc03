"""Bearer JWTs from the bank's IdP: verify one, and say which service principal and roles it is.

`JwtVerifier.verify` returns a `VerifiedToken` or raises `TokenRefused` with a stable `reason`
(`AuthService` audits it and answers 401 `invalid_api_key`), or `IdentityProviderUnavailable`
(503) when no key is cached and the IdP cannot be asked. Checks, in this order, each before any
work the next one costs:

1. at most `MAX_TOKEN_CHARS` characters, three base64url parts (`too_long`, `malformed`);
2. the header, decoded by us before the library sees it: `jku`, `x5u`, `x5c` and `jwk` are refused
   (`forbidden_header`), never followed: keys come only from the configured JWKS. Any header
   outside `ALLOWED_HEADERS` is refused the same way (`crit` and RFC 7797's `b64` included): no
   extension is understood, so none may be critical. `alg` must be in `identity.jwt.algorithms`
   (`alg_not_allowed`: `none` and HS* can never be, the settings refuse them);
3. the key: by `kid` (a dictionary key only) and the key type `alg` needs, from `JwksCache`
   (`unknown_kid`); when the JWK states an `alg`, it must be the header's (`alg_key_mismatch`);
4. the signature, by joserfc with a registry allowing only that one `alg` (`bad_signature`; a key
   of the wrong curve is `alg_key_mismatch`);
5. the claims, with joserfc's `JWTClaimsRegistry`: `iss` equal to `identity.jwt.issuer`
   (`wrong_issuer`), `aud` containing `identity.jwt.audience` (`wrong_audience`), `exp` required
   (`missing_claim`, `expired`), `nbf` and `iat` not in the future (`not_yet_valid`), all with
   `leeway_s`; several audiences need `azp` (`missing_azp`, OpenID Connect Core 2);
6. the principal, the first of `principal_claims` present, printable and at most 128 characters
   (`bad_principal`), and the roles: the values of `roles_claim` that `role_map` lists, which
   must pass the same separation-of-duties check as every principal's roles (`sod_conflict`,
   naming the values).

A verified token is remembered (by its SHA-256, at most `CACHE_MAX`) until its `exp` and no
longer, and only while the key set it was verified under is the current one: a business system
presents the same token for its whole lifetime, so the signature is checked once per token, not
once per request. Refused tokens are not remembered.

Why joserfc: see docs/identity.md. EdDSA is accepted under its RFC 8037 name, which IdPs send
(RFC 9864 deprecates the name for not naming the curve; the JWKS key's `crv` does), without the
library's warning on every call, and under RFC 9864's `Ed25519`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwa import EdDSAAlgorithm, JWSAlgModel
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from zguard.config import JwtSettings
from zguard.security.rbac import RoleMappingConflict, RoleRegistry, map_roles
from zguard.services.jwks import Fetch, JwksCache, KidUnknown

MAX_TOKEN_CHARS: Final = 8 * 1024
CACHE_MAX: Final = 10_000  # verified tokens remembered (LRU)
ROLE_SETS_MAX: Final = 1024  # distinct sets of mapped claim values whose roles are remembered
MAX_PRINCIPAL_CHARS: Final = 128
FORBIDDEN_HEADERS: Final = frozenset({"jku", "x5u", "x5c", "jwk"})
ALLOWED_HEADERS: Final = frozenset({"alg", "kid", "typ", "cty", "x5t", "x5t#S256"})  # x5t: Entra ID and ADFS send it
KEY_TYPE_OF: Final[Mapping[str, str]] = {
    **{f"{family}{bits}": "RSA" for family in ("RS", "PS") for bits in (256, 384, 512)},
    **{f"ES{bits}": "EC" for bits in (256, 384, 512)},
    "EdDSA": "OKP",
    "Ed25519": "OKP",
}
_PART = re.compile(r"[A-Za-z0-9_-]+")
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]*")
_PRINTABLE = re.compile(r"[!-~][ -~]*")
REFUSED = "the bearer token from the identity provider was refused ({reason}); get a new one from the IdP"


class TokenRefused(ValueError):
    """A JWT that is not accepted: `reason` is stable (audit, tests), `detail` is for the audit event only."""

    def __init__(self, reason: str, detail: str | None = None, *, message: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.message = message or REFUSED.format(reason=reason.replace("_", " "))


@dataclass(frozen=True)
class VerifiedToken:
    """What a verified token says that zguard uses: `principal` (from `principal_claims`), the
    zguard `roles` its mapped claim values grant, and for the audit trail `jti` and `client_id`."""

    principal: str
    roles: frozenset[str]
    expires_at: float
    jti: str | None = None
    client_id: str | None = None
    subject: str | None = None


class _QuietEdDSA(EdDSAAlgorithm):
    # RFC 9864's naming note, not a weakness: the key's `crv` names the curve. joserfc types the
    # attribute `str` on this class though its base declares `str | None` and reads it so.
    security_warning = None  # type: ignore[assignment]


class SignatureRegistry(JWSRegistry):
    """joserfc's registry with EdDSA quiet; each instance allows one algorithm."""

    # The base declares it an instance-level dict (read as self.algorithms); a copy per class keeps ours apart.
    algorithms: dict[str, JWSAlgModel] = {**JWSRegistry.algorithms, "EdDSA": _QuietEdDSA()}  # noqa: RUF012


def looks_like_jws(token: str) -> bool:
    """Whether a bearer credential is shaped like a compact JWS (so not a zguard `zg_` key)."""
    return not token.startswith("zg_") and token.count(".") == 2


def _shown(value: object) -> str:
    """Client text for an audit detail: escaped (repr) and bounded."""
    text = repr(value)
    return text if len(text) <= 66 else text[:64] + "…"


def _b64_json(part: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise TokenRefused("malformed", "a part is not base64url JSON") from None


def claim_at(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name, or by a dotted path into nested objects when no claim has the whole name."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for step in name.split("."):
        if not isinstance(value, dict) or step not in value:
            return None
        value = value[step]
    return value


class JwtVerifier:
    """Verifies IdP bearer JWTs against `identity.jwt`; see the module doc for the checks."""

    def __init__(
        self,
        settings: JwtSettings,
        registry: RoleRegistry,
        *,
        keys: JwksCache,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` is wall-clock seconds (for `exp`, `nbf`, `iat`)."""
        if settings.issuer is None or settings.audience is None:  # JwtSettings refuses this when enabled
            raise ValueError("identity.jwt needs issuer and audience")
        self._settings = settings
        self._roles = registry
        self._mapped: dict[frozenset[str], frozenset[str]] = {}  # mapped claim values -> roles (settings are fixed)
        self.keys = keys
        self._clock = clock
        self._allowed = frozenset(settings.algorithms)
        self._registries = {alg: SignatureRegistry(algorithms=[alg]) for alg in settings.algorithms}
        self._verified: OrderedDict[bytes, tuple[VerifiedToken, int]] = OrderedDict()
        self._claims = JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            leeway=settings.leeway_s,
            iss={"essential": True, "value": settings.issuer},
            aud={"essential": True, "value": settings.audience},
            exp={"essential": True},
        )

    @classmethod
    def from_settings(
        cls,
        settings: JwtSettings,
        registry: RoleRegistry,
        *,
        fetch: Fetch | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> JwtVerifier:
        """A verifier with its own key cache (over HTTP unless `fetch` is given)."""
        key_types = frozenset(KEY_TYPE_OF[alg] for alg in settings.algorithms)
        keys = JwksCache(settings, key_types=key_types, fetch=fetch, clock=monotonic)
        return cls(settings, registry, keys=keys, clock=clock)

    async def verify(self, token: str) -> VerifiedToken:
        """The verified token's principal and roles; TokenRefused or IdentityProviderUnavailable."""
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenRefused("too_long", f"{len(token)} characters, over {MAX_TOKEN_CHARS}")
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        remembered = self._verified.get(digest)
        if remembered is not None:
            known, generation = remembered
            if generation == self.keys.generation and self._clock() < known.expires_at:
                self._verified.move_to_end(digest)
                return known
            del self._verified[digest]
        verified = await self._verify(token)
        self._verified[digest] = (verified, self.keys.generation)
        while len(self._verified) > CACHE_MAX:
            self._verified.popitem(last=False)
        return verified

    async def _verify(self, token: str) -> VerifiedToken:
        parts = token.split(".")
        # An empty signature is let through to the header check, so `alg: none` is named as such.
        if (
            len(parts) != 3
            or not all(_PART.fullmatch(part) for part in parts[:2])
            or not _SIGNATURE.fullmatch(parts[2])
        ):
            raise TokenRefused("malformed", "not three base64url parts")
        header = _b64_json(parts[0])
        if not isinstance(header, dict):
            raise TokenRefused("malformed", "the header is not a JSON object")
        alg, kid = self._check_header(header)
        key = await self._key(alg, kid)
        try:
            verified = jwt.decode(token, key, registry=self._registries[alg])
        except BadSignatureError:
            raise TokenRefused("bad_signature", f"alg {alg}, kid {_shown(kid)}") from None
        except JoseError as exc:  # a key of another curve or size than the algorithm needs, a bad payload
            reason = "malformed" if "payload" in type(exc).__name__.lower() else "alg_key_mismatch"
            raise TokenRefused(reason, f"{type(exc).__name__}: alg {alg}, kid {_shown(kid)}") from None
        return self._check_claims(verified.claims)

    def _check_header(self, header: Mapping[str, Any]) -> tuple[str, str | None]:
        if forbidden := sorted(FORBIDDEN_HEADERS & header.keys()):
            raise TokenRefused(
                "forbidden_header", f"header {', '.join(forbidden)}: keys come only from identity.jwt's JWKS"
            )
        if unknown := sorted(header.keys() - ALLOWED_HEADERS):
            raise TokenRefused("forbidden_header", f"unsupported header(s) {_shown(unknown)}")
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self._allowed:
            raise TokenRefused("alg_not_allowed", f"alg {_shown(alg)} is not in identity.jwt.algorithms")
        if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= 256):
            raise TokenRefused("malformed", "kid is not a string of 1-256 characters")
        return alg, kid

    async def _key(self, alg: str, kid: str | None) -> Key:
        try:
            key = await self.keys.key(kid, KEY_TYPE_OF[alg])
        except KidUnknown:
            raise TokenRefused("unknown_kid", f"kid {_shown(kid)} ({alg}) is not in the IdP's JWKS") from None
        stated = key.alg
        if stated is not None and stated != alg:
            raise TokenRefused("alg_key_mismatch", f"the JWK of kid {_shown(kid)} is for {_shown(stated)}, not {alg}")
        return key

    def _check_claims(self, claims: dict[str, Any]) -> VerifiedToken:
        check_claims(self._claims, claims, TokenRefused, _claim_reason, malformed="malformed")
        audience = claims["aud"]
        azp = claims.get("azp")
        if isinstance(audience, list) and len(audience) > 1 and not (isinstance(azp, str) and azp):
            raise TokenRefused("missing_azp", f"{len(audience)} audiences and no azp")
        principal = self._principal(claims)
        roles = self._mapped_roles(claims)
        jti, client_id, subject = claims.get("jti"), claims.get("client_id"), claims.get("sub")
        return VerifiedToken(
            principal=principal,
            roles=roles,
            expires_at=float(claims["exp"]),
            jti=jti if isinstance(jti, str) else None,
            client_id=client_id if isinstance(client_id, str) else None,
            subject=subject if isinstance(subject, str) else None,
        )

    def _principal(self, claims: Mapping[str, Any]) -> str:
        for name in self._settings.principal_claims:
            value = claims.get(name)
            if value is None or value == "":
                continue
            if not isinstance(value, str) or len(value) > MAX_PRINCIPAL_CHARS or not _PRINTABLE.fullmatch(value):
                raise TokenRefused("bad_principal", f"claim {name} is not printable text of 1-128 characters")
            return value
        raise TokenRefused("bad_principal", f"none of {', '.join(self._settings.principal_claims)} is present")

    def _mapped_roles(self, claims: Mapping[str, Any]) -> frozenset[str]:
        name = self._settings.roles_claim
        if name is None:
            return frozenset()
        raw = claim_at(claims, name)
        values = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        role_map = self._settings.role_map
        mapped = frozenset(v for v in values if isinstance(v, str) and v in role_map)
        if (known := self._mapped.get(mapped)) is not None:  # the same groups, the same answer: no SoD walk
            return known
        try:
            roles = map_roles(mapped, role_map, self._roles)
        except RoleMappingConflict as exc:
            named = ", ".join(exc.values)
            raise TokenRefused(
                "sod_conflict",
                f"{name} values {named} map to {exc}",
                message=f"the token's {name} values {named} map to roles that one principal may not hold together "
                "(separation of duties); the IdP must give this client only one of them",
            ) from None
        if len(self._mapped) < ROLE_SETS_MAX:  # few distinct sets in practice; a flood of odd ones is not kept
            self._mapped[mapped] = roles
        return roles


def check_claims(
    registry: JWTClaimsRegistry,
    claims: dict[str, Any],
    refuse: Callable[[str, str], Exception],
    reason: Callable[[str, bool], str],
    *,
    malformed: str,
) -> None:
    """`registry`'s checks of `claims` (issuer, audience, times with leeway, required values), a
    failure raised as `refuse(reason, detail)`: "expired", `reason(claim, missing)`, or `malformed`.
    The API's bearer tokens and the console's id_tokens (zguard.services.oidc) share it."""
    try:
        registry.validate(claims)
    except ExpiredTokenError:
        raise refuse("expired", "exp is past (leeway included)") from None
    except MissingClaimError as exc:
        raise refuse(reason(exc.claim, True), f"missing {exc.claim}") from None
    except InvalidClaimError as exc:
        raise refuse(reason(exc.claim, False), f"invalid {exc.claim}") from None
    except ClaimError as exc:
        raise refuse(malformed, f"claim {exc.claim}") from None


def _claim_reason(claim: str, missing: bool) -> str:
    names = set(claim.split(","))
    if "iss" in names:
        return "wrong_issuer"
    if "aud" in names:
        return "wrong_audience"
    if names & {"nbf", "iat"} and not missing:
        return "not_yet_valid"
    return "missing_claim" if missing else "malformed"
