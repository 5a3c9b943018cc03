"""The bank's OpenID provider as zguard's console talks to it: discovery and the token endpoint.

Decisions written here:
- Discovery is read from `{issuer}/.well-known/openid-configuration` on first use (and when
  `serve` starts, through `OidcLogin.warm`), then kept for `DISCOVERY_CACHE_S`; a failed refresh
  keeps the document already read. Its `issuer` must equal `identity.oidc.issuer` exactly
  (OpenID Connect Discovery 4.3), and every endpoint it names must be https (http only to a
  loopback host), as the settings demand of the issuer itself.
- The JWKS is `zguard.services.jwks.JwksCache` (the one the API's JWT verifier uses), pointed at
  the discovery's `jwks_uri`: cached, refetched on an unknown kid with a cooldown, single-flight.
- Every request to the IdP: a timeout, redirects not followed, no proxy from the environment,
  TLS verified (system CAs or `ca_file`), at most `MAX_DOCUMENT_BYTES` read.
- The token endpoint is called with `client_secret_basic` (RFC 6749 2.3.1: id and secret
  form-encoded, then Basic). Its refusal (400 `invalid_grant`: a code used twice, expired, or
  issued to another client or redirect URI) is the IdP's answer, not an outage.
- Fail closed: an IdP that cannot be reached means no sign-in through it (503
  `identity_provider_unavailable`); password sign-in does not depend on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote_plus

import httpx

from zguard.config import JwtSettings
from zguard.config.identity_oidc import OidcSettings
from zguard.config.idp import check_idp_url
from zguard.errors import IdentityProviderUnavailable
from zguard.services.jwks import MAX_DOCUMENT_BYTES, FetchFailed, http_fetch

log = logging.getLogger("zguard.identity.oidc")

DISCOVERY_CACHE_S: Final = 3600.0
RETRY_AFTER_S: Final = 30
UNAVAILABLE: Final = "the identity provider cannot be reached now; sign in with a password or retry later"


@dataclass(frozen=True)
class ProviderMetadata:
    """What zguard uses of the discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None = None


class TokenEndpointRefused(Exception):
    """The token endpoint answered, and refused: `error` is its OAuth error code (bounded)."""

    def __init__(self, error: str, status: int) -> None:
        super().__init__(error)
        self.error = error
        self.status = status


def jwks_settings(settings: OidcSettings, jwks_uri: str | None = None) -> JwtSettings:
    """The JWKS cache's settings for the OIDC issuer: its keys at `jwks_uri`, the same TLS and timeout."""
    return JwtSettings(
        issuer=settings.issuer, jwks_url=jwks_uri, ca_file=settings.ca_file, timeout_s=settings.timeout_s
    )


def parse_metadata(document: bytes, issuer: str) -> ProviderMetadata:
    """The discovery document's endpoints; FetchFailed (with why) when it is not usable."""
    try:
        data: Any = json.loads(document)
    except (ValueError, UnicodeDecodeError):
        raise FetchFailed("the discovery document is not JSON") from None
    if not isinstance(data, dict):
        raise FetchFailed("the discovery document is not a JSON object")
    if data.get("issuer") != issuer:
        raise FetchFailed(f"the discovery document names issuer {str(data.get('issuer'))[:200]!r}, not {issuer!r}")
    urls: dict[str, str | None] = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "end_session_endpoint"):
        value = data.get(name)
        if value is None and name == "end_session_endpoint":
            urls[name] = None
            continue
        if not isinstance(value, str):
            raise FetchFailed(f"the discovery document has no {name}")
        try:
            check_idp_url(value, f"the discovery document's {name}")
        except ValueError as exc:
            raise FetchFailed(str(exc)) from None
        urls[name] = value
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=str(urls["authorization_endpoint"]),
        token_endpoint=str(urls["token_endpoint"]),
        jwks_uri=str(urls["jwks_uri"]),
        end_session_endpoint=urls["end_session_endpoint"],
    )


class OidcProvider:
    """Discovery (cached) and the token endpoint of `identity.oidc.issuer`."""

    def __init__(self, settings: OidcSettings, client_secret: str, *, clock: Any = time.monotonic) -> None:
        if settings.issuer is None or settings.client_id is None:  # OidcSettings refuses this when enabled
            raise ValueError("identity.oidc needs issuer and client_id")
        self._settings = settings
        self._issuer = settings.issuer
        self._client_id = settings.client_id
        self._secret = client_secret
        self._fetch = http_fetch(jwks_settings(settings))
        self._clock = clock
        self._lock = asyncio.Lock()
        self._metadata: ProviderMetadata | None = None
        self._read_at = float("-inf")
        self._context: ssl.SSLContext | None = None
        self.last_error: str | None = None

    @property
    def discovery_url(self) -> str:
        return self._issuer.rstrip("/") + "/.well-known/openid-configuration"

    async def metadata(self) -> ProviderMetadata:
        """The discovery document's endpoints; IdentityProviderUnavailable when none was ever read."""
        if self._metadata is not None and self._clock() - self._read_at < DISCOVERY_CACHE_S:
            return self._metadata
        async with self._lock:
            if self._metadata is None or self._clock() - self._read_at >= DISCOVERY_CACHE_S:
                await self._refresh()
        if self._metadata is None:
            raise IdentityProviderUnavailable(UNAVAILABLE, retry_after=RETRY_AFTER_S, detail=self.last_error)
        return self._metadata

    async def _refresh(self) -> None:
        try:
            metadata = parse_metadata(await self._fetch(self.discovery_url), self._issuer)
        except FetchFailed as failure:
            self.last_error = failure.detail
            kept = "keeping the document read before" if self._metadata is not None else "no sign-in through it"
            log.error("the IdP's discovery document could not be read (%s); %s", failure.detail, kept)
            if self._metadata is not None:
                self._read_at = self._clock() - DISCOVERY_CACHE_S + RETRY_AFTER_S  # ask again soon, not per request
            return
        self._metadata, self._read_at, self.last_error = metadata, self._clock(), None

    async def exchange(self, code: str, verifier: str) -> Mapping[str, Any]:
        """The token endpoint's JSON answer for an authorization code; TokenEndpointRefused when it
        refuses, IdentityProviderUnavailable when it cannot be asked."""
        metadata = await self.metadata()
        if self._context is None:
            self._context = ssl.create_default_context(
                cafile=str(self._settings.ca_file) if self._settings.ca_file is not None else None
            )
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": str(self._settings.redirect_uri),
            "code_verifier": verifier,
        }
        basic = (quote_plus(self._client_id), quote_plus(self._secret))  # RFC 6749 2.3.1: form-encoded first
        try:
            async with (
                httpx.AsyncClient(
                    verify=self._context, timeout=self._settings.timeout_s, follow_redirects=False, trust_env=False
                ) as client,
                client.stream(
                    "POST", metadata.token_endpoint, data=form, auth=basic, headers={"accept": "application/json"}
                ) as response,
            ):
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise FetchFailed(f"POST {metadata.token_endpoint}: over {MAX_DOCUMENT_BYTES} bytes")
                status = response.status_code
        except httpx.HTTPError as exc:
            raise self._unavailable(f"POST {metadata.token_endpoint}: {type(exc).__name__}") from None
        except (OSError, ssl.SSLError) as exc:
            raise self._unavailable(f"POST {metadata.token_endpoint}: {type(exc).__name__}: {exc}") from None
        except FetchFailed as failure:
            raise self._unavailable(failure.detail) from None
        try:
            answer: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            answer = None
        if status >= 500 or not isinstance(answer, dict):
            raise self._unavailable(f"POST {metadata.token_endpoint}: HTTP {status}, not a JSON object")
        if status != 200:
            error = answer.get("error")
            raise TokenEndpointRefused(error[:64] if isinstance(error, str) else "unknown", status)
        return answer

    def _unavailable(self, detail: str) -> IdentityProviderUnavailable:
        self.last_error = detail
        log.error("the IdP's token endpoint could not be asked (%s)", detail)
        return IdentityProviderUnavailable(UNAVAILABLE, retry_after=RETRY_AFTER_S, detail=detail)
