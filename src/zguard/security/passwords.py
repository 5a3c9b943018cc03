"""Password hashes: bcrypt only, in the deployment guide's `$2a$`/`$2b$`/`$2y$` format.

Verification is deliberately slow (that is bcrypt's point), so callers run it off the event
loop, behind failure limits, and cache successes. `DUMMY` hashes let an unknown username cost
the same as a known one, so timing does not reveal which names exist.
"""

from __future__ import annotations

import re
import secrets

import bcrypt

BCRYPT_HASH = re.compile(r"^\$2[aby]\$(\d{2})\$[./A-Za-z0-9]{53}$")
DEFAULT_COST = 12
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further; longer passwords are refused, not truncated


def is_bcrypt_hash(text: str) -> bool:
    return BCRYPT_HASH.match(text) is not None


def cost_of(password_hash: str) -> int:
    match = BCRYPT_HASH.match(password_hash)
    if match is None:
        raise ValueError("not a bcrypt hash")
    return int(match.group(1))


def hash_password(password: str, cost: int = DEFAULT_COST) -> str:
    """A new `$2b$` hash of `password`; refuse empty passwords and ones bcrypt would truncate."""
    data = password.encode("utf-8")
    if not data:
        raise ValueError("the password is empty")
    if len(data) > MAX_PASSWORD_BYTES:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes, which bcrypt would truncate")
    return bcrypt.hashpw(data, bcrypt.gensalt(cost)).decode("ascii")


def verify_password(password: str, password_hash: str) -> bool:
    """True when `password` matches; False for anything malformed. Constant-time inside bcrypt."""
    data = password.encode("utf-8", "surrogatepass")
    if not data or len(data) > MAX_PASSWORD_BYTES or not is_bcrypt_hash(password_hash):
        return False
    try:
        return bcrypt.checkpw(data, password_hash.encode("ascii"))
    except ValueError:
        return False


def dummy_hash(cost: int = DEFAULT_COST) -> str:
    """A hash of a random password nobody knows, at `cost`: verify against it for unknown users."""
    return hash_password(secrets.token_urlsafe(24), cost)
