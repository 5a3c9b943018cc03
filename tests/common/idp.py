"""A stand-in for the bank's IdP in tests: signing keys, a token forger and a JWKS server on loopback.

`IdpKeys` holds an RSA, an EC P-256 and an Ed25519 key (each with a kid). `sign` writes a compact
JWS by hand with `cryptography`, so tests can make what no JOSE library would sign for them
(`alg: none`, HS256 under a public key's bytes, headers pointing elsewhere). `KeyServer` is a
stdlib `ThreadingHTTPServer` on 127.0.0.1 serving a discovery document and a JWKS, counting each
GET by path; an attacker's server is the same class serving other keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.jwk import ECKey, OKPKey, RSAKey

REALM = "/realms/bank"
AUDIENCE = "zguard-api"
ALGORITHMS = ("RS256", "ES256", "EdDSA")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64_json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode("utf-8"))


@dataclass
class IdpKeys:
    """One key per algorithm family; `jwks()` publishes the public halves."""

    rsa: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ec: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    ed: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    prefix: str = "idp"
    issuer: str = "https://idp.invalid/realms/bank"  # the `iss` of `token()`: set to the server's

    def kid(self, alg: str) -> str:
        return f"{self.prefix}-{alg.lower()}"

    def public_jwks(self) -> list[dict[str, Any]]:
        rsa_jwk = RSAKey.import_key(self.rsa.public_key()).as_dict(private=False)
        ec_jwk = ECKey.import_key(self.ec.public_key()).as_dict(private=False)
        ed_jwk = OKPKey.import_key(self.ed.public_key()).as_dict(private=False)
        return [
            {**rsa_jwk, "kid": self.kid("RS256"), "use": "sig", "alg": "RS256"},
            {**ec_jwk, "kid": self.kid("ES256"), "use": "sig"},
            {**ed_jwk, "kid": self.kid("EdDSA")},
        ]

    def rsa_public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, header: dict[str, Any], claims: dict[str, Any], *, key: str | None = None) -> str:
        """A compact JWS of `claims` under `header`, signed per `header["alg"]` with this set's key
        (`key` names another family's key to sign with, for mismatches)."""
        alg = header.get("alg")
        signing_input = f"{b64_json(header)}.{b64_json(claims)}".encode("ascii")
        family = key or str(alg)
        if alg == "none":
            signature = b""
        elif family.startswith("RS"):
            signature = self.rsa.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif family.startswith("ES"):
            r, s = decode_dss_signature(self.ec.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        elif family in ("EdDSA", "Ed25519"):
            signature = self.ed.sign(signing_input)
        else:
            raise ValueError(f"no key for {family}")
        return f"{signing_input.decode('ascii')}.{b64(signature)}"

    def token(self, alg: str = "RS256", *, header: dict[str, Any] | None = None, **claims: Any) -> str:
        """A token as the IdP would issue it, claims overridable (a value None drops the claim)."""
        now = int(time.time())
        base = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "exp": now + 300,
            "iat": now,
            "azp": "billing-batch",
            "roles": ["zg-generators"],
            "jti": "jti-0001",
        }
        merged = {k: v for k, v in {**base, **claims}.items() if v is not None}
        return self.sign({"alg": alg, "typ": "JWT", "kid": self.kid(alg), **(header or {})}, merged)


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """A compact JWS MACed with HS256 under `secret` (the classic attack passes a public key's bytes)."""
    signing_input = f"{b64_json(header)}.{b64_json(claims)}".encode("ascii")
    return f"{signing_input.decode('ascii')}.{b64(hmac.new(secret, signing_input, hashlib.sha256).digest())}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.hits[self.path] += 1
        if owner.delay_s:
            time.sleep(owner.delay_s)
        body = owner.documents.get(self.path)
        if owner.down or body is None:
            self.send_response(503 if owner.down else 404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        data = json.dumps(body).encode("utf-8")
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: pytest would show it on stderr


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: KeyServer


class KeyServer:
    """A discovery document and a JWKS on 127.0.0.1:<free port>, in a thread; `hits` counts GETs by path."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self.hits: Counter[str] = Counter()
        self.down = False
        self.delay_s = 0.0
        self.documents: dict[str, Any] = {}
        self.set_keys(keys)
        self.documents[f"{REALM}/.well-known/openid-configuration"] = {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_url,
            "id_token_signing_alg_values_supported": list(ALGORITHMS),
        }
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-idp", daemon=True)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}{REALM}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    @property
    def jwks_path(self) -> str:
        return f"{REALM}/protocol/openid-connect/certs"

    @property
    def jwks_fetches(self) -> int:
        return self.hits[self.jwks_path]

    def set_keys(self, keys: list[dict[str, Any]]) -> None:
        self.documents[self.jwks_path] = {"keys": keys}

    def __enter__(self) -> KeyServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
