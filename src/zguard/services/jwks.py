"""The IdP's signing keys (JWKS): fetched from one configured place, cached, refreshed sparingly.

Decisions written here:
- Keys come only from `identity.jwt.jwks_url`, or the `jwks_uri` of the issuer's discovery
  document (whose `issuer` must equal the configured one, OpenID Connect Discovery 4.3). Nothing a
  token says (`jku`, `x5u`, `x5c`, `jwk`) is ever fetched: `zguard.services.jwt_bearer` refuses
  such tokens before asking here.
- Every document is read with a timeout, redirects not followed, no proxy from the environment,
  TLS verified (the system's CAs or `ca_file`), and at most `MAX_DOCUMENT_BYTES`.
- Only signature keys are kept (`use` "sig" or absent), of the key types the allowed algorithms
  need, without private parts, RSA of at least 2048 bits, at most `jwks_max_keys` of them: a set with more is refused whole,
  so an IdP that floods its JWKS cannot make every request scan a long list.
- A `kid` is only ever a dictionary key: no path, query or file is built from it.
- Refetches are rare and single-flight: an unknown `kid` or keys older than `jwks_cache_s`
  start at most one fetch per `jwks_refresh_cooldown_s`, under one asyncio lock, so N concurrent
  requests with a new kid cause one fetch; those that waited read its result.
- Fail-closed or open: with no key cached and the IdP unreachable the request fails CLOSED
  (503 `identity_provider_unavailable`). With keys cached, a failed refresh keeps them (logged):
  refusing every business system's valid token because the IdP blinked would cost availability,
  while a key the IdP withdrew stays trusted at most until the IdP answers again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from zguard.config import JwtSettings
from zguard.config.idp import check_idp_url
from zguard.errors import IdentityProviderUnavailable

log = logging.getLogger("zguard.identity.jwt")

MAX_DOCUMENT_BYTES: Final = 64 * 1024
MIN_RSA_BITS: Final = 2048  # NIST SP 800-131A: shorter RSA signatures are disallowed
MAX_LISTED_KEYS: Final = 200  # entries read from `keys` at all, usable or not
KEY_TYPES: Final[Mapping[str, type[Key]]] = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}
PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
UNAVAILABLE: Final = "the identity provider's signing keys cannot be fetched now; retry later"

Fetch = Callable[[str], Awaitable[bytes]]


class KidUnknown(LookupError):
    """No cached key has this kid (and key type), and no refetch may be made now, or it did not bring one."""


@dataclass(frozen=True)
class KeySet:
    """Usable keys by (kid, key type); kid None for a key published without one."""

    keys: Mapping[tuple[str | None, str], Key]

    def find(self, kid: str | None, kty: str) -> Key | None:
        if kid is not None:
            return self.keys.get((kid, kty))
        of_type = [key for (_kid, key_type), key in self.keys.items() if key_type == kty]
        return of_type[0] if len(of_type) == 1 else None  # no kid: only when one key can be meant


class FetchFailed(Exception):
    """A document could not be fetched or used; `detail` says why (for the log and audit, never a client)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def parse_key_set(document: bytes, *, key_types: frozenset[str], max_keys: int) -> KeySet:
    """The usable signature keys of a JWKS document; FetchFailed when it is not one or has too many."""
    try:
        data = json.loads(document)
    except (ValueError, UnicodeDecodeError):
        raise FetchFailed("the JWKS is not JSON") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list) or len(entries) > MAX_LISTED_KEYS:
        raise FetchFailed(f"the JWKS has no `keys` list of at most {MAX_LISTED_KEYS} entries")
    keys: dict[tuple[str | None, str], Key] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kty, kid, use = entry.get("kty"), entry.get("kid"), entry.get("use")
        if kty not in key_types or use not in (None, "sig") or (kid is not None and not isinstance(kid, str)):
            continue
        if PRIVATE_MEMBERS & entry.keys():
            log.warning("the IdP's JWKS publishes private key material (kid %r); that key is ignored", kid)
            continue
        if kty == "RSA" and _modulus_bits(entry.get("n")) < MIN_RSA_BITS:  # before joserfc, which would warn
            log.warning("the IdP's JWKS has an RSA key under %d bits (kid %r); it is ignored", MIN_RSA_BITS, kid)
            continue
        try:
            key = KEY_TYPES[kty].import_key(entry)
        except (JoseError, ValueError, TypeError):
            log.warning("a key of the IdP's JWKS could not be read (kid %r); it is ignored", kid)
            continue
        keys[(kid, kty)] = key
    if len(keys) > max_keys:
        raise FetchFailed(f"the JWKS has {len(keys)} usable keys, over identity.jwt.jwks_max_keys ({max_keys})")
    return KeySet(keys)


def _modulus_bits(n: object) -> int:
    """The bit length of an RSA JWK's `n` (base64url); 0 when it is not one."""
    if not isinstance(n, str):
        return 0
    try:
        return int.from_bytes(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4)), "big").bit_length()
    except (binascii.Error, ValueError):
        return 0


def _tls_context(settings: JwtSettings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file is not None else None)


def http_fetch(settings: JwtSettings) -> Fetch:
    """GET a JSON document from the IdP under the rules in the module doc; FetchFailed on any failure."""
    context: ssl.SSLContext | None = None

    async def fetch(url: str) -> bytes:
        nonlocal context
        if context is None:  # built on first use: a CA file is read when the IdP is first asked
            context = _tls_context(settings)
        try:
            async with (
                httpx.AsyncClient(
                    verify=context, timeout=settings.timeout_s, follow_redirects=False, trust_env=False
                ) as client,
                client.stream("GET", url, headers={"accept": "application/json"}) as response,
            ):
                if response.status_code != 200:
                    raise FetchFailed(f"GET {url}: HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > MAX_DOCUMENT_BYTES:
                    raise FetchFailed(f"GET {url}: {declared} bytes, over {MAX_DOCUMENT_BYTES}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise FetchFailed(f"GET {url}: over {MAX_DOCUMENT_BYTES} bytes")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise FetchFailed(f"GET {url}: {type(exc).__name__}") from None
        except (OSError, ssl.SSLError) as exc:  # a CA file that cannot be read, a socket refused early
            raise FetchFailed(f"GET {url}: {type(exc).__name__}: {exc}") from None

    return fetch


class JwksCache:
    """The IdP's keys for `JwtVerifier`; see the module doc for when it fetches."""

    def __init__(
        self,
        settings: JwtSettings,
        *,
        key_types: frozenset[str],
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`fetch` GETs a URL's bytes (default: `http_fetch`); `clock` is monotonic seconds."""
        self._settings = settings
        self._key_types = key_types
        self._fetch = fetch or http_fetch(settings)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")  # the last successful fetch
        self._attempted_at = float("-inf")  # the last fetch tried, whatever came of it
        self._attempts = 0
        self._last_error: str | None = None
        self._jwks_url = settings.jwks_url
        self.fetches = 0  # JWKS documents requested (what tests and the benchmark count)
        self.generation = 0  # grows with every key set read: what was verified under an older one is re-verified

    async def key(self, kid: str | None, kty: str) -> Key:
        """The cached key for (kid, kty), refetching under the rules above; raise KidUnknown, or
        IdentityProviderUnavailable when no key is cached and the IdP cannot be asked."""
        started = self._clock()
        found = self._keys.find(kid, kty) if self._keys is not None else None
        fresh = started - self._fetched_at < self._settings.jwks_cache_s
        if found is not None and (fresh or self._lock.locked()):
            return found  # the common path: no await, no lock
        attempts = self._attempts
        async with self._lock:
            if self._attempts == attempts and self._may_fetch():  # nobody fetched while this one waited
                await self._refresh()
        found = self._keys.find(kid, kty) if self._keys is not None else None
        if found is not None:
            return found
        if self._keys is None:
            raise IdentityProviderUnavailable(UNAVAILABLE, retry_after=self._retry_after(), detail=self._last_error)
        raise KidUnknown(kid)

    def _may_fetch(self) -> bool:
        return self._clock() - self._attempted_at >= self._settings.jwks_refresh_cooldown_s

    def _retry_after(self) -> int:
        return max(1, round(self._settings.jwks_refresh_cooldown_s - (self._clock() - self._attempted_at)))

    async def _refresh(self) -> None:
        self._attempted_at = self._clock()
        self._attempts += 1
        try:
            url = self._jwks_url or await self._discover()
            self.fetches += 1
            document = await self._fetch(url)
            keys = parse_key_set(document, key_types=self._key_types, max_keys=self._settings.jwks_max_keys)
        except FetchFailed as failure:
            self._last_error = failure.detail
            kept = "keeping the cached keys" if self._keys is not None else "no key cached: tokens get 503"
            log.error("the IdP's JWKS could not be fetched (%s); %s", failure.detail, kept)
            return
        self._keys = keys
        self.generation += 1
        self._fetched_at = self._clock()
        self._last_error = None
        log.info("read %d signing key(s) from the IdP's JWKS", len(keys.keys))

    async def _discover(self) -> str:
        """The issuer's `jwks_uri`, from its discovery document (read once, then remembered)."""
        issuer = self._settings.issuer
        if issuer is None:  # JwtSettings refuses enabled without an issuer
            raise FetchFailed("identity.jwt.issuer is not set")
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            data: Any = json.loads(await self._fetch(url))
        except (ValueError, UnicodeDecodeError):
            raise FetchFailed(f"{url} is not JSON") from None
        if not isinstance(data, dict) or data.get("issuer") != issuer:
            raise FetchFailed(f"{url} names another issuer than identity.jwt.issuer")
        jwks_uri = data.get("jwks_uri")
        try:
            if not isinstance(jwks_uri, str):
                raise ValueError("jwks_uri is missing")
            check_idp_url(jwks_uri, "the discovery document's jwks_uri")
        except ValueError as exc:
            raise FetchFailed(f"{url}: {exc}") from None
        self._jwks_url = jwks_uri
        return jwks_uri
