"""Console sign-in through the bank's IdP with OpenID Connect (authorization code, PKCE, nonce).

`OidcLogin.begin` starts a login: it returns the IdP's authorization URL and the login
transaction's cookie. `OidcLogin.complete` takes the callback's query and that cookie back and
returns a console session (`SessionService.login_verified`), or raises, each refusal audited as
`console.login` denied with a stable `reason`:

- `SignInFailed` (401 `sign_in_failed`): the protocol did not complete: `no_transaction`,
  `bad_transaction`, `transaction_expired`, `bad_state`, `replayed`, `wrong_issuer` (RFC 9207's
  `iss` parameter), `idp_error`, `malformed`, `code_rejected`, `no_id_token`, and the id_token's
  checks (`IdTokenVerifier`);
- `SignInRefused` (403 `sign_in_refused`): the IdP vouched for the person, zguard's rules refuse
  them: `sod_conflict` (naming the groups), `acr_not_met`, `amr_not_met`, `no_username`,
  `bad_username`, `name_taken` (a local user's name), `not_provisioned`, `disabled`;
- `IdentityProviderUnavailable` (503): discovery, the JWKS or the token endpoint cannot be asked.

Decisions written here:
- The login transaction (`state`, `nonce`, PKCE `code_verifier`, when it began) lives in a cookie
  sealed with AES-256-GCM under a key derived from the server key: the browser holds it, cannot
  read or change it, and any replica can open it. It is `SameSite=Lax` (the IdP's redirect back is
  a cross-site navigation, which a `Strict` cookie would miss), `HttpOnly`, path `/login/oidc`,
  and expires after `login_timeout_s`. Each transaction is accepted once: its state is marked
  used in the shared counter storage (Redis when replicas share one) before the code is
  exchanged, so a replayed callback is refused even where the IdP would accept the code again.
  That storage failing refuses the sign-in (fail closed, 503 `rate_limiter_unavailable`).
- PKCE S256 (RFC 7636) and a nonce on every login, whatever the IdP advertises. The id_token
  comes from the token endpoint over TLS as a confidential client (never from the browser), and
  is verified anyway: signature by a key of the issuer's JWKS (asymmetric algorithms only, no
  `jku`/`x5u`/`jwk` header), `iss`, `aud` containing the client id, `azp` equal to it when
  present (required when several audiences), `exp`/`iat`/`nbf` with `leeway_s`, `sub`, `nonce`.
- Roles come from the id_token's claims through `map_roles` at every login (never kept from an
  earlier one), so a group removed at the IdP is a role gone at the next sign-in; `required_acr`
  and `required_amr` refuse the login rather than hand out fewer roles. The principal is keyed
  by (`oidc`, `iss`, `sub`) (`PrincipalStore.sync_external`): renames at the IdP follow it.
- RP-initiated logout: the id_token of each session is kept in this process (bounded) for the
  `id_token_hint`; a logout served by another replica, or after a restart, sends `client_id`
  instead, which the spec allows and Keycloak and Entra ID accept (they ask the person to
  confirm). Tokens never go into a log line or an audit event.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    JoseError,
)
from joserfc.jwk import Key
from joserfc.jwt import JWTClaimsRegistry

from zguard.audit import AuditEvent, AuditSink, DetailValue, report
from zguard.config.identity_oidc import OidcSettings
from zguard.errors import (
    ConfigError,
    IdentityProviderUnavailable,
    RateLimiterUnavailable,
    SessionExpired,
    SignInFailed,
    SignInRefused,
    ZguardError,
)
from zguard.security.rates import Rate
from zguard.security.rbac import RoleMappingConflict, RoleRegistry, map_roles
from zguard.services.auth import Identity, RequestInfo
from zguard.services.counters import UNAVAILABLE_RETRY_AFTER_S, CounterStorage
from zguard.services.jwks import JwksCache, KidUnknown
from zguard.services.jwt_bearer import (
    ALLOWED_HEADERS,
    FORBIDDEN_HEADERS,
    KEY_TYPE_OF,
    MAX_TOKEN_CHARS,
    SignatureRegistry,
    check_claims,
    claim_at,
)
from zguard.services.oidc_provider import OidcProvider, TokenEndpointRefused, jwks_settings
from zguard.services.sessions import SessionService, SignedIn
from zguard.store.errors import PrincipalExists, PrincipalNotFound
from zguard.store.principals import PrincipalStore

TRANSACTION_AAD: Final = b"zguard oidc login transaction v1"
TRANSACTION_COOKIE_MAX: Final = 1024
HINTS_MAX: Final = 10_000  # id_tokens kept for RP-initiated logout
PARAM_MAX: Final = 2048  # a callback query value (code, state) longer than this is refused unread
SUBJECT_MAX: Final = 255
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]+")
FAILED: Final = "the sign-in through the identity provider did not complete ({reason}); start it again"
REFUSED: Final = "the identity provider signed you in, but zguard refuses this sign-in ({reason})"


@dataclass(frozen=True)
class Transaction:
    """One login in flight, as sealed into its cookie."""

    state: str
    nonce: str
    verifier: str
    started: int  # epoch seconds

    @classmethod
    def new(cls, now: float) -> Transaction:
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48), int(now))

    def challenge(self) -> str:
        """The PKCE S256 code challenge of the verifier (RFC 7636 4.2)."""
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class TransactionSeal:
    """Seals a `Transaction` into a cookie value and opens it again (AES-256-GCM)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(hashlib.sha256(b"zguard oidc transaction\0" + key).digest())

    def seal(self, transaction: Transaction) -> str:
        nonce = secrets.token_bytes(12)
        plain = json.dumps([transaction.state, transaction.nonce, transaction.verifier, transaction.started]).encode()
        sealed = nonce + self._aead.encrypt(nonce, plain, TRANSACTION_AAD)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, cookie: str) -> Transaction | None:
        """The transaction, or None when the value was not sealed by this key (or was changed)."""
        if len(cookie) > TRANSACTION_COOKIE_MAX:
            return None
        try:
            raw = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
            fields = json.loads(self._aead.decrypt(raw[:12], raw[12:], TRANSACTION_AAD))
        except (binascii.Error, ValueError, InvalidTag):
            return None
        if not (isinstance(fields, list) and len(fields) == 4 and all(isinstance(f, str) for f in fields[:3])):
            return None
        if not isinstance(fields[3], int):
            return None
        return Transaction(fields[0], fields[1], fields[2], fields[3])


def _refused_failed(reason: str, detail: str | None = None, context: Mapping[str, str] | None = None) -> SignInFailed:
    return SignInFailed(FAILED.format(reason=reason.replace("_", " ")), reason=reason, detail=detail, context=context)


class IdTokenVerifier:
    """Verifies an id_token from `identity.oidc.issuer` for `client_id` (see the module doc)."""

    def __init__(self, settings: OidcSettings, keys: JwksCache, *, clock: Callable[[], float] = time.time) -> None:
        if settings.issuer is None or settings.client_id is None:
            raise ValueError("identity.oidc needs issuer and client_id")
        self._issuer = settings.issuer
        self._client_id = settings.client_id
        self._leeway = settings.leeway_s
        self._allowed = frozenset(settings.algorithms)
        self._registries = {alg: SignatureRegistry(algorithms=[alg]) for alg in settings.algorithms}
        self.keys = keys
        self._clock = clock

    async def verify(self, token: str, nonce: str) -> dict[str, Any]:
        """The id_token's claims; SignInFailed with the reason of the first check that refused it."""
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise _refused_failed("malformed_id_token", "not a compact JWS of at most 8 KiB")
        try:
            first = token.split(".", maxsplit=1)[0]
            header = json.loads(base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise _refused_failed("malformed_id_token", "the header is not base64url JSON") from None
        if not isinstance(header, dict):
            raise _refused_failed("malformed_id_token", "the header is not a JSON object")
        if (FORBIDDEN_HEADERS & header.keys()) or (header.keys() - ALLOWED_HEADERS):
            raise _refused_failed("forbidden_header", f"header names {sorted(header)[:8]}")
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self._allowed:
            raise _refused_failed("alg_not_allowed", f"alg {str(alg)[:32]!r} is not in identity.oidc.algorithms")
        if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= 256):
            raise _refused_failed("malformed_id_token", "kid is not a string of 1-256 characters")
        key = await self._key(alg, kid)
        try:
            claims: dict[str, Any] = jwt.decode(token, key, registry=self._registries[alg]).claims
        except BadSignatureError:
            raise _refused_failed("bad_signature", f"alg {alg}, kid {str(kid)[:64]!r}") from None
        except JoseError as exc:
            raise _refused_failed("malformed_id_token", type(exc).__name__) from None
        self._check_claims(claims, nonce)
        return claims

    async def _key(self, alg: str, kid: str | None) -> Key:
        try:
            key = await self.keys.key(kid, KEY_TYPE_OF[alg])
        except KidUnknown:
            raise _refused_failed("unknown_kid", f"kid {str(kid)[:64]!r} ({alg}) is not in the IdP's JWKS") from None
        if key.alg is not None and key.alg != alg:
            raise _refused_failed("alg_key_mismatch", f"the JWK is for {key.alg}, the id_token says {alg}")
        return key

    def _check_claims(self, claims: dict[str, Any], nonce: str) -> None:
        registry = JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            leeway=self._leeway,
            iss={"essential": True, "value": self._issuer},
            aud={"essential": True, "value": self._client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        check_claims(registry, claims, _refused_failed, _reason, malformed="malformed_id_token")
        audience, azp = claims["aud"], claims.get("azp")
        several = isinstance(audience, list) and len(audience) > 1
        if several and azp is None:
            raise _refused_failed("missing_azp", f"{len(audience)} audiences and no azp")
        if azp is not None and azp != self._client_id:
            raise _refused_failed("wrong_azp", "azp is another client's")  # OpenID Connect Core 3.1.3.7 (5)
        subject = claims["sub"]
        if not isinstance(subject, str) or not 0 < len(subject) <= SUBJECT_MAX or not _PRINTABLE.fullmatch(subject):
            raise _refused_failed("malformed_id_token", "sub is not printable text of 1-255 characters")


def _reason(claim: str, missing: bool) -> str:
    names = set(claim.split(","))
    for name, reason in (("iss", "wrong_issuer"), ("aud", "wrong_audience"), ("nonce", "nonce")):
        if name in names:
            return ("missing_" if missing else "wrong_") + name if name == "nonce" else reason
    if names & {"nbf", "iat"} and not missing:
        return "not_yet_valid"
    return "missing_claim" if missing else "malformed_id_token"


def read_client_secret(settings: OidcSettings) -> str:
    """`client_secret`, or the first line of `client_secret_file`; ConfigError naming the key."""
    if settings.client_secret is not None:
        return settings.client_secret.get_secret_value()
    path = Path(str(settings.client_secret_file))
    try:
        secret = path.read_text(encoding="utf-8").splitlines()[0].strip() if path.stat().st_size else ""
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise ConfigError([f"identity.oidc.client_secret_file: {path} cannot be read ({type(exc).__name__})"]) from None
    if len(secret) < 16:
        raise ConfigError([f"identity.oidc.client_secret_file: {path} holds no secret of 16 characters or more"])
    return secret


class OidcLogin:
    """The console's OpenID Connect sign-in; see the module doc."""

    def __init__(
        self,
        settings: OidcSettings,
        registry: RoleRegistry,
        *,
        provider: OidcProvider,
        verifier: IdTokenVerifier,
        principals: PrincipalStore,
        sessions: SessionService,
        counters: CounterStorage,
        key: bytes,
        audit: AuditSink,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if settings.issuer is None or settings.client_id is None:
            raise ValueError("identity.oidc needs issuer and client_id")
        self.settings = settings
        self.issuer = settings.issuer
        self._client_id = settings.client_id
        self._roles = registry
        self.provider = provider
        self.verifier = verifier
        self._principals = principals
        self._sessions = sessions
        self._counters = counters
        self._once = Rate(1, settings.login_timeout_s)
        self._seal = TransactionSeal(key)
        self._audit = audit
        self._clock = clock
        self._hints: OrderedDict[int, str] = OrderedDict()

    @classmethod
    def from_settings(
        cls,
        settings: OidcSettings,
        registry: RoleRegistry,
        *,
        principals: PrincipalStore,
        sessions: SessionService,
        counters: CounterStorage,
        key: bytes,
        audit: AuditSink,
        clock: Callable[[], float] = time.time,
    ) -> OidcLogin:
        """The sign-in over HTTP to the configured IdP (the client secret read now)."""
        key_types = frozenset(KEY_TYPE_OF[alg] for alg in settings.algorithms)
        keys = JwksCache(jwks_settings(settings), key_types=key_types)
        return cls(
            settings,
            registry,
            provider=OidcProvider(settings, read_client_secret(settings)),
            verifier=IdTokenVerifier(settings, keys, clock=clock),
            principals=principals,
            sessions=sessions,
            counters=counters,
            key=key,
            audit=audit,
            clock=clock,
        )

    @property
    def label(self) -> str:
        return self.settings.label

    async def warm(self) -> None:
        """Read the discovery document now (at start), so the first sign-in does not wait for it."""
        with contextlib.suppress(IdentityProviderUnavailable):  # logged by the provider; the first sign-in asks again
            await self.provider.metadata()

    # --- the flow ----------------------------------------------------------------------------

    async def begin(self, info: RequestInfo) -> tuple[str, str]:
        """(the IdP's authorization URL, the transaction cookie's value); IdentityProviderUnavailable audited."""
        try:
            metadata = await self.provider.metadata()
        except IdentityProviderUnavailable as exc:
            self._deny(info, "identity_provider_unavailable", exc, {"stage": "discovery"})
            raise
        transaction = Transaction.new(self._clock())
        query = {
            "response_type": "code",
            "client_id": self._client_id,
            "redirect_uri": str(self.settings.redirect_uri),
            "scope": " ".join(self.settings.scopes),
            "state": transaction.state,
            "nonce": transaction.nonce,
            "code_challenge": transaction.challenge(),
            "code_challenge_method": "S256",
        }
        endpoint = metadata.authorization_endpoint
        url = endpoint + ("&" if "?" in endpoint else "?") + urlencode(query)
        return url, self._seal.seal(transaction)

    async def complete(self, params: Mapping[str, str], cookie: str | None, info: RequestInfo) -> SignedIn:
        """A console session for the callback's `params` (its query) under the transaction `cookie`;
        every refusal raised as its error and audited (see the module doc)."""
        try:
            return await self._complete(params, cookie, info)
        except (SignInFailed, SignInRefused) as exc:
            self._deny(info, exc.reason, exc, exc.context)
            raise
        except (IdentityProviderUnavailable, RateLimiterUnavailable) as exc:
            self._deny(info, exc.code, exc, {})
            raise

    async def _complete(self, params: Mapping[str, str], cookie: str | None, info: RequestInfo) -> SignedIn:
        transaction = self._transaction(params, cookie)
        await self._use_once(transaction)
        if "iss" in params and params["iss"] != self.issuer:  # RFC 9207: an answer from another IdP (mix-up)
            raise _refused_failed("wrong_issuer", "the callback's iss parameter names another issuer")
        if "error" in params:
            error = params["error"][:64]
            raise _refused_failed("idp_error", f"the IdP answered {error!r}", {"idp_error": error})
        code = params.get("code", "")
        if not code or len(code) > PARAM_MAX:
            raise _refused_failed("malformed", "no authorization code")
        try:
            answer = await self.provider.exchange(code, transaction.verifier)
        except TokenEndpointRefused as refused:
            raise _refused_failed(
                "code_rejected", f"the token endpoint said {refused.error!r}", {"idp_error": refused.error}
            ) from None
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise _refused_failed("no_id_token", "the token response has no id_token (is `openid` a scope?)")
        claims = await self.verifier.verify(id_token, transaction.nonce)
        return await self._sign_in(claims, id_token, info)

    def _transaction(self, params: Mapping[str, str], cookie: str | None) -> Transaction:
        if not cookie:
            raise _refused_failed("no_transaction", "no login transaction cookie: begun in another browser, or expired")
        transaction = self._seal.open(cookie)
        if transaction is None:
            raise _refused_failed("bad_transaction", "the login transaction cookie was not sealed by this server")
        if self._clock() - transaction.started > self.settings.login_timeout_s:
            raise _refused_failed("transaction_expired", f"begun over {self.settings.login_timeout_s} s ago")
        state = params.get("state", "")
        if len(state) > PARAM_MAX or not secrets.compare_digest(
            state.encode("utf-8", "surrogatepass"), transaction.state.encode()
        ):
            raise _refused_failed("bad_state", "the callback's state is not this browser's login transaction")
        return transaction

    async def _use_once(self, transaction: Transaction) -> None:
        digest = hashlib.sha256(transaction.state.encode()).hexdigest()
        counters = self._counters
        try:
            first = await counters.limiter.hit(counters.item(self._once), counters.prefix, "oidc-state", digest)
        except counters.errors as exc:
            raise RateLimiterUnavailable(
                "sign-in is unavailable right now; retry shortly",
                retry_after=UNAVAILABLE_RETRY_AFTER_S,
                detail=CounterStorage.reason(exc),
            ) from None
        if not first:
            raise _refused_failed("replayed", "this login transaction was completed already")

    async def _sign_in(self, claims: Mapping[str, Any], id_token: str, info: RequestInfo) -> SignedIn:
        subject: str = claims["sub"]
        username = claims.get(self.settings.username_claim)
        if not isinstance(username, str) or not username.strip():
            raise self._refuse("no_username", f"the id_token has no {self.settings.username_claim} claim", None)
        roles = self._mapped_roles(claims, username)
        self._check_factors(claims, roles, username)
        create = not self.settings.require_provisioned
        try:
            record = await asyncio.to_thread(
                self._principals.sync_external, "oidc", self.issuer, subject, username, sorted(roles), create=create
            )
        except PrincipalExists:
            raise self._refuse("name_taken", "a local user or another principal holds this name", username) from None
        except PrincipalNotFound:
            raise self._refuse(
                "not_provisioned", "identity.oidc.require_provisioned: not provisioned", username
            ) from None
        except ValueError:
            raise self._refuse("bad_username", "the name is not 1-128 printable characters", username) from None
        if not record.enabled:
            raise self._refuse("disabled", "the principal is disabled", username)
        detail: dict[str, DetailValue] = {"issuer": self.issuer[:200], "subject": subject[:SUBJECT_MAX]}
        acr, amr = claims.get("acr"), claims.get("amr")
        if isinstance(acr, str):
            detail["acr"] = acr[:128]
        if isinstance(amr, list):
            detail["amr"] = ",".join(str(m)[:32] for m in amr[:8])
        try:
            signed = await self._sessions.login_verified(record.name, info, method="oidc", detail=detail)
        except SessionExpired:  # disabled between the sync and now
            raise self._refuse("disabled", "the principal was disabled during sign-in", username) from None
        self._hints[signed.record.id] = id_token
        while len(self._hints) > HINTS_MAX:
            self._hints.popitem(last=False)
        return signed

    def _mapped_roles(self, claims: Mapping[str, Any], username: str) -> frozenset[str]:
        name = self.settings.roles_claim
        if name is None:
            return frozenset()
        raw = claim_at(claims, name)
        values = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        try:
            return map_roles(values, self.settings.role_map, self._roles)
        except RoleMappingConflict as exc:
            named = ", ".join(value[:64] for value in exc.values)
            raise self._refuse(
                "sod_conflict", f"{name} values map to roles one person may not hold", username, {"groups": named[:512]}
            ) from None

    def _check_factors(self, claims: Mapping[str, Any], roles: frozenset[str], username: str) -> None:
        acr, amr = claims.get("acr"), claims.get("amr")
        methods = {m for m in amr if isinstance(m, str)} if isinstance(amr, list) else set()
        for role in sorted(roles):
            accepted = self.settings.required_acr.get(role)
            if accepted is not None and acr not in accepted:
                raise self._refuse("acr_not_met", f"role {role} needs acr {accepted}", username, {"role": role})
            wanted = self.settings.required_amr.get(role)
            if wanted is not None and not methods & set(wanted):
                raise self._refuse("amr_not_met", f"role {role} needs one of amr {wanted}", username, {"role": role})

    @staticmethod
    def _refuse(
        reason: str, detail: str, username: str | None, context: Mapping[str, str] | None = None
    ) -> SignInRefused:
        return SignInRefused(
            REFUSED.format(reason=reason.replace("_", " ")),
            reason=reason,
            principal=username[:128] if username else None,
            detail=detail,
            context=context,
        )

    # --- sign out ----------------------------------------------------------------------------

    async def logout_url(self, identity: Identity) -> str | None:
        """Where to send the browser after `identity`'s session ended here, to end it at the IdP
        too (RP-initiated logout); None when it is not an OIDC session or the IdP has no endpoint."""
        hint = self._hints.pop(identity.session_id, None) if identity.session_id is not None else None
        if hint is None:
            record = await asyncio.to_thread(self._principals.get_principal, identity.name)
            if record is None or record.source != "oidc" or record.issuer != self.issuer:
                return None
        try:
            metadata = await self.provider.metadata()
        except IdentityProviderUnavailable:
            return None  # signed out here; the IdP's session ends on its own
        if metadata.end_session_endpoint is None:
            return None
        query = {"client_id": self._client_id}
        if hint is not None:
            query["id_token_hint"] = hint
        if self.settings.post_logout_redirect_uri is not None:
            query["post_logout_redirect_uri"] = self.settings.post_logout_redirect_uri
        endpoint = metadata.end_session_endpoint
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(query)

    # --- audit -------------------------------------------------------------------------------

    def _deny(self, info: RequestInfo, reason: str, error: ZguardError, extra: Mapping[str, DetailValue]) -> None:
        event = AuditEvent(
            type="console.login",
            outcome="failed" if error.status >= 500 else "denied",
            code=error.code,
            request_id=info.request_id,
            listener=info.listener,
            client=info.client,
            principal=error.principal if isinstance(error, SignInRefused) else None,
            auth_method="oidc",
            detail={"via": "oidc", "reason": reason, **extra},
        )
        report(self._audit, info.record, event)
        if info.record is not None:
            info.record.type = "console.login"
