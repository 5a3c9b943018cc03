"""Benchmark: what an IdP bearer JWT costs per request, beside a zguard API key, and JWKS refresh storms.

Run it with ``.venv/bin/python bench/bench_jwt.py [--iterations N] [--storm N]``. It prints ONE
JSON object on stdout; progress goes to stderr. A measurement, not a test: figures over target
only set the ``*_ok`` booleans to false.

The IdP is ``tests.common.idp.KeyServer``: a discovery document and a JWKS (RSA 2048, EC P-256,
Ed25519) served over HTTP on 127.0.0.1, counting every GET. The services are built as ``zguard
serve`` builds them (``build_auth`` from settings with ``identity.jwt`` on) over a migrated SQLite
state database holding one service principal and its zguard API key; audit events are folded into
a fresh ``RequestRecord`` per call, as ``AccessControl`` passes the request's record.

Per algorithm (``RS256``, ``ES256``, ``EdDSA``), keys cached (the first call fetched them):
    ``signature_only``: the signature check alone with ``cryptography``, the floor any library pays.
    ``verify_fresh``: ``JwtVerifier.verify`` of a token it has not seen (a new ``jti`` each call),
    so the signature and claims are checked: the JOSE work alone. ``authenticate_fresh``: the
    same through ``AuthService.authenticate("Bearer ...")``, what a request with a new token costs.
    ``authenticate_repeated``: one token presented again and again, as a business system reuses
    its access token until it expires (remembered by its SHA-256 until its ``exp``).
    ``zg_api_key_authenticate``: a zguard API key through ``AuthService.authenticate`` in the same
    loop (the baseline: HMAC digest, cached token, the per-request ``auth_version`` query). The
    kinds alternate call by call, so load from other work on the machine falls on all of them
    alike. ``median_ok`` compares ``authenticate_fresh``'s median with ``target_median_us``.
``refresh_storm``
    ``--storm`` concurrent verifications of tokens whose ``kid`` the JWKS lacks, on a cold cache
    (``cold``), and again after the cooldown with the IdP's keys rotated (``rotated``: the new kid
    is in the refetched set, so every request then passes), the IdP answering each GET after
    ``--idp-delay-ms`` so the requests overlap the fetch. ``jwks_fetches`` counts the JWKS GETs
    the key server saw; ``single_flight_ok`` says whether each storm caused exactly one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.common, bench.*

from bench.auth_deployment import DiscardAuditSink
from bench.auth_inprocess import summarize_us
from bench.machine import machine_info
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from sqlalchemy.engine import URL
from tests.common.idp import AUDIENCE, IdpKeys, KeyServer

from zguard.audit import RequestRecord
from zguard.config import Settings
from zguard.security.keys import KEY_BYTES
from zguard.security.tokens import new_token, token_digest
from zguard.serve.wiring import build_auth
from zguard.services.auth import AuthService, RequestInfo
from zguard.services.jwt_bearer import JwtVerifier, TokenRefused
from zguard.store import migrate
from zguard.store.database import create_store_engine
from zguard.store.principals import PrincipalStore

TARGET_MEDIAN_US = 150.0
ALGORITHMS = ("RS256", "ES256", "EdDSA")
ROLE_MAP = {"zg-generators": "generator"}


def log(message: str) -> None:
    print(f"[bench_jwt] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=2000, help="timed calls per credential kind")
    parser.add_argument("--warmup", type=int, default=200, help="unrecorded calls first")
    parser.add_argument("--storm", type=int, default=50, help="concurrent unknown-kid requests per storm")
    parser.add_argument("--idp-delay-ms", type=float, default=50.0, help="how long the IdP takes per GET")
    args = parser.parse_args(argv)
    if args.iterations < 20 or args.storm < 2:
        parser.error("need --iterations >= 20 and --storm >= 2")
    return args


def settings_for(state_dir: Path, idp: KeyServer, **jwt: Any) -> Settings:
    return Settings.model_validate(
        {
            "state_dir": str(state_dir),
            "api_auth": {"enabled": True},
            "identity": {
                "jwt": {"enabled": True, "issuer": idp.issuer, "audience": AUDIENCE, "role_map": ROLE_MAP, **jwt}
            },
        }
    )


@dataclass
class Bench:
    keys: IdpKeys
    verifier: JwtVerifier
    auth: AuthService
    api_key: str


def build(work: Path, idp: KeyServer) -> tuple[Settings, AuthService, str]:
    """`build_auth` over a migrated SQLite store with one service principal; its zguard API key."""
    settings = settings_for(work / "state", idp)
    (work / "state").mkdir(mode=0o700)
    engine = create_store_engine(URL.create("sqlite", database=str(work / "state" / "zguard.db")))
    migrate.upgrade(engine)
    store = PrincipalStore(engine)
    key = os.urandom(KEY_BYTES)
    store.create_principal("bench-service", "service", roles=["generator"])
    token = new_token()
    store.add_token("bench-service", token_hash=token_digest(token.plaintext, key), prefix=token.display_prefix)
    return settings, build_auth(settings, store, key, audit=DiscardAuditSink()), token.plaintext


def raw_verifier(keys: IdpKeys, alg: str, token: str) -> Callable[[], None]:
    """The signature check alone, with `cryptography` (what any library must pay), for one token."""
    header, payload, signature = token.split(".")
    message = f"{header}.{payload}".encode("ascii")
    sig = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    if alg == "RS256":
        rsa_key = keys.rsa.public_key()
        return lambda: rsa_key.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
    if alg == "ES256":
        ec_key = keys.ec.public_key()
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        return lambda: ec_key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    ed_key = keys.ed.public_key()
    return lambda: ed_key.verify(sig, message)


async def measure(d: Bench, iterations: int, warmup: int) -> dict[str, Any]:
    """Per algorithm: a fresh token each call (the signature is checked) through the verifier and
    through `authenticate`, and one token presented again and again (remembered until its exp);
    the zguard API key through `authenticate` in the same loop."""
    perf = time.perf_counter_ns
    total = warmup + iterations
    exp = int(time.time()) + 3600
    log(f"signing {2 * total} tokens per algorithm")
    fresh = {alg: [d.keys.token(alg, exp=exp, jti=f"v{i}") for i in range(total)] for alg in ALGORITHMS}
    fresh_auth = {alg: [d.keys.token(alg, exp=exp, jti=f"a{i}") for i in range(total)] for alg in ALGORITHMS}
    repeated = {alg: d.keys.token(alg, exp=exp, jti="repeated") for alg in ALGORITHMS}
    samples: dict[str, dict[str, list[int]]] = {
        alg: {"signature_only": [], "verify_fresh": [], "authenticate_fresh": [], "authenticate_repeated": []}
        for alg in ALGORITHMS
    }
    raw = {alg: raw_verifier(d.keys, alg, fresh[alg][0]) for alg in ALGORITHMS}
    api_key: list[int] = []

    def info() -> RequestInfo:
        return RequestInfo(client="127.0.0.1", request_id="0" * 32, listener="api", record=RequestRecord())

    async def timed(header: str) -> int:
        request = info()
        t0 = perf()
        identity = await d.auth.authenticate(header, request)
        elapsed = perf() - t0
        if header != f"Bearer {d.api_key}" and identity.method != "jwt":
            raise RuntimeError("a JWT did not authenticate as one")
        return elapsed

    for i in range(total):
        for alg in ALGORITHMS:
            t0 = perf()
            raw[alg]()
            raw_ns = perf() - t0
            t0 = perf()
            await d.verifier.verify(fresh[alg][i])
            verify_ns = perf() - t0
            fresh_ns = await timed(f"Bearer {fresh_auth[alg][i]}")
            repeated_ns = await timed(f"Bearer {repeated[alg]}")
            if i >= warmup:
                samples[alg]["signature_only"].append(raw_ns)
                samples[alg]["verify_fresh"].append(verify_ns)
                samples[alg]["authenticate_fresh"].append(fresh_ns)
                samples[alg]["authenticate_repeated"].append(repeated_ns)
        key_ns = await timed(f"Bearer {d.api_key}")
        if i >= warmup:
            api_key.append(key_ns)
        if i == 0:
            await asyncio.sleep(0.2)  # the API key's first last-used bookkeeping runs in a thread
    result: dict[str, Any] = {
        "target_median_us": TARGET_MEDIAN_US,
        "zg_api_key_authenticate": summarize_us(api_key),
    }
    for alg, parts in samples.items():
        summaries: dict[str, Any] = {name: summarize_us(values) for name, values in parts.items()}
        summaries["median_ok"] = summaries["authenticate_fresh"]["median_us"] <= TARGET_MEDIAN_US
        result[alg] = summaries
    return result


async def storm(work: Path, keys: IdpKeys, n: int, delay_s: float) -> dict[str, Any]:
    with KeyServer(keys.public_jwks()) as idp:
        keys.issuer = idp.issuer
        settings = settings_for(work / "storm", idp, jwks_refresh_cooldown_s=1)
        verifier = JwtVerifier.from_settings(settings.identity.jwt, settings.role_registry())
        idp.delay_s = delay_s
        stranger = IdpKeys(issuer=idp.issuer, prefix="unknown")

        async def wave(token: str) -> tuple[dict[str, int], float]:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(verifier.verify(token) for _ in range(n)), return_exceptions=True)
            seconds = time.perf_counter() - t0
            outcomes: dict[str, int] = {}
            for r in results:
                name = r.reason if isinstance(r, TokenRefused) else type(r).__name__
                outcomes[name] = outcomes.get(name, 0) + 1
            return outcomes, seconds

        before = idp.jwks_fetches
        cold, cold_s = await wave(stranger.token("ES256"))
        cold_fetches = idp.jwks_fetches - before
        rotated_keys = IdpKeys(issuer=idp.issuer, prefix="rotated")
        idp.set_keys([*keys.public_jwks(), *rotated_keys.public_jwks()])
        await asyncio.sleep(1.1)  # past the cooldown
        before = idp.jwks_fetches
        rotated, rotated_s = await wave(rotated_keys.token("ES256"))
        rotated_fetches = idp.jwks_fetches - before
    return {
        "concurrent_requests": n,
        "idp_delay_ms": delay_s * 1000,
        "cold": {"jwks_fetches": cold_fetches, "outcomes": cold, "wall_ms": round(cold_s * 1000, 1)},
        "rotated": {"jwks_fetches": rotated_fetches, "outcomes": rotated, "wall_ms": round(rotated_s * 1000, 1)},
        "single_flight_ok": cold_fetches == 1 and rotated_fetches == 1 and rotated == {"VerifiedToken": n},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    keys = IdpKeys()
    with tempfile.TemporaryDirectory(prefix="zguard-bench-jwt-") as tmp, KeyServer(keys.public_jwks()) as idp:
        work = Path(tmp)
        keys.issuer = idp.issuer
        settings, auth, api_key = build(work, idp)
        verifier = JwtVerifier.from_settings(settings.identity.jwt, settings.role_registry())
        log("per-request verification")
        per_request = asyncio.run(measure(Bench(keys, verifier, auth, api_key), args.iterations, args.warmup))
        fetches = idp.jwks_fetches
        log("refresh storms")
        storms = asyncio.run(storm(work, IdpKeys(), args.storm, args.idp_delay_ms / 1000))
    result = {
        "benchmark": "zguard IdP bearer JWTs: per-request verification beside a zguard API key, JWKS refresh storms",
        "parameters": {
            "iterations": args.iterations,
            "warmup": args.warmup,
            "keys": "RSA 2048 (RS256), EC P-256 (ES256), Ed25519 (EdDSA)",
            "jwks": "served over HTTP on 127.0.0.1 (tests.common.idp.KeyServer), discovered from the issuer",
            "state_database": "SQLite file, migrated (the zguard API key's store)",
            "audit": "decisions folded into a RequestRecord per call; events discarded (no trail write)",
        },
        "machine": machine_info(("joserfc", "cryptography", "httpx", "fastapi")),
        "per_request": per_request,
        "jwks_fetches_during_per_request": fetches,
        "refresh_storm": storms,
        "all_ok": all(per_request[alg]["median_ok"] for alg in ALGORITHMS) and storms["single_flight_ok"],
        "bench_wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
