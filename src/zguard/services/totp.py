"""The console's second factor: TOTP (RFC 6238, 6 digits, 30 s, SHA-1 as every authenticator app
does), optional for everyone, required for the roles in `console.totp_required_roles` (admin by
default).

Decisions written here (ASVS 5.0 V6.5):
- Secrets are 160 random bits (RFC 4226's recommendation), stored sealed: AES-256-GCM under a key
  derived from the server key, with the user's name as associated data, so a database copy gives
  no secret and a sealed secret moved to another user does not open.
- A code is accepted for the current step and one either side (±30 s of clock drift), compared in
  constant time, and only once: the accepted step is recorded atomically in the state database,
  so a code seen over a shoulder cannot be replayed, in this or any other process.
- A wrong code after a right password counts as a failed login (the same counters as a wrong
  password), so six digits cannot be guessed faster than a password.
- Enrolment proves possession: the secret is stored only with a valid code made from it.
  A user whose role requires a second factor and who has none cannot sign in to the console;
  an operator enrols them out of band (`zguard user totp NAME`), or they enrol before the
  requirement applies to them.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import secrets
import time
from collections.abc import Callable, Collection

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from zguard.store.sessions import TotpStore

ISSUER = "zguard"
TOTP_KEY_PURPOSE = b"console totp"  # `derive_key(token key, this)` seals the secrets (server and CLI alike)
SECRET_BYTES = 20  # 160 bits
STEP_S = 30
DRIFT_STEPS = 1
DIGITS = 6


class SecondFactor:
    def __init__(
        self,
        store: TotpStore,
        key: bytes,
        required_roles: Collection[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._aead = AESGCM(key)
        self._required = frozenset(required_roles)
        self._clock = clock

    def required_for(self, roles: Collection[str]) -> bool:
        return bool(self._required & set(roles))

    @staticmethod
    def new_secret() -> str:
        return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")

    @staticmethod
    def provisioning_uri(name: str, secret: str) -> str:
        return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).provisioning_uri(name=name, issuer_name=ISSUER)

    async def enrolled(self, name: str) -> bool:
        return await asyncio.to_thread(self._store.get, name) is not None

    async def verify(self, name: str, code: str) -> bool:
        """True when `code` is `name`'s current code and was not used before (then it is spent)."""
        found = await asyncio.to_thread(self._store.get, name)
        if found is None:
            return False
        secret = self._unseal(name, found[0])
        step = self._matching_step(secret, code)
        if secret is None or step is None or step <= found[1]:
            return False
        return await asyncio.to_thread(self._store.accept_step, name, step)

    async def enrol(self, name: str, secret: str, code: str) -> bool:
        """Store `secret` for `name` if `code` was made from it; False (nothing stored) if not."""
        step = self._matching_step(secret, code)
        if step is None:
            return False
        await asyncio.to_thread(self._store.put, name, self._seal(name, secret), step)
        return True

    async def remove(self, name: str) -> bool:
        return await asyncio.to_thread(self._store.remove, name)

    def _matching_step(self, secret: str | None, code: str) -> int | None:
        if secret is None or len(code) != DIGITS or not code.isascii() or not code.isdigit():
            return None
        try:
            totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S)
            now = int(self._clock()) // STEP_S
            found = None
            for step in range(now - DRIFT_STEPS, now + DRIFT_STEPS + 1):  # every candidate compared: constant time
                if hmac.compare_digest(totp.at(step * STEP_S), code):
                    found = step
        except (ValueError, TypeError):  # not base32
            return None
        return found

    def _seal(self, name: str, secret: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, secret.encode("ascii"), name.encode("utf-8"))
        return base64.b64encode(nonce + sealed).decode("ascii")

    def _unseal(self, name: str, sealed: str) -> str | None:
        raw = base64.b64decode(sealed)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], name.encode("utf-8")).decode("ascii")
        except InvalidTag:  # moved to another user, or the server key changed
            return None
