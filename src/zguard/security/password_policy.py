"""Which new passwords zguard accepts: pure rules, no I/O (NIST SP 800-63B §5.1.1.2).

Decisions written here:
- Length is what makes a password hard to guess online and offline: at least `min_length`
  characters (12 by default, `api_auth.password_min_length`), at most what bcrypt reads whole
  (72 bytes of UTF-8; longer is refused rather than silently truncated).
- No composition rules (they make passwords predictable, not strong); instead a password is
  refused when it is a well-known one (`COMMON_PASSWORDS`, compared case-insensitively after
  stripping digits and symbols from the ends, so `Password123!` is caught), is the username or
  contains it, or is one character or a short pattern repeated (`aaaaaaaaaaaa`, `abcabcabcabc`).
  A bank adds its own words (its name, products, city) with `extra_words`.
- The message says which rule failed and nothing about the password itself.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_MIN_LENGTH = 12
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further

# The most used passwords of public breach corpora (and the stems they are built from), plus the
# words a bank's staff reach for first. Compared after `_stem`.
COMMON_PASSWORDS = frozenset(
    [
        "password",
        "passw0rd",
        "p@ssw0rd",
        "p@ssword",
        "pa55word",
        "passwort",
        "motdepasse",
        "contrasena",
        "123456",
        "1234567",
        "12345678",
        "123456789",
        "1234567890",
        "0123456789",
        "987654321",
        "111111",
        "000000",
        "123123",
        "654321",
        "qwerty",
        "qwertyuiop",
        "qwerty123",
        "asdfgh",
        "asdfghjkl",
        "zxcvbnm",
        "1q2w3e4r",
        "1qaz2wsx",
        "qazwsx",
        "zaq12wsx",
        "abc123",
        "abcdef",
        "abcdefg",
        "abcdefgh",
        "iloveyou",
        "letmein",
        "welcome",
        "welcome1",
        "admin",
        "administrator",
        "root",
        "monkey",
        "dragon",
        "master",
        "sunshine",
        "princess",
        "football",
        "baseball",
        "shadow",
        "superman",
        "batman",
        "trustno1",
        "changeme",
        "changeit",
        "default",
        "secret",
        "secret123",
        "login",
        "guest",
        "test",
        "testing",
        "test123",
        "temp",
        "temp123",
        "hello",
        "hello123",
        "freedom",
        "whatever",
        "starwars",
        "pokemon",
        "computer",
        "internet",
        "charlie",
        "michael",
        "jennifer",
        "zguard",
        "zimage",
        "zimageturbo",
        "generator",
        "auditor",
        "approver",
        "viewer",
        "bank",
        "banking",
        "mybank",
        "bankofchina",
        "icbc",
        "ccb",
        "abc",
        "boc",
        "cmb",
        "citic",
        "finance",
        "money",
        "security",
        "woaini",
        "woaini1314",
        "5201314",
        "1314520",
        "88888888",
        "66666666",
        "168168",
        "518518",
        "a123456",
        "a123456789",
        "aa123456",
        "qq123456",
        "wang123",
        "zhang123",
        "li123456",
        "iloveu",
    ]
)


class PasswordRejected(ValueError):
    """The password breaks a rule; the message names the rule."""


_SYMBOLS = "!@#$%^&*()_+-=.,?~`'\"[]{}<>/\\|;: "


def _stems(password: str) -> set[str]:
    """The password folded, without symbols at its ends, and without digits and symbols there
    (`Password123!` → `password`, `88888888!!!!` → `88888888`)."""
    folded = password.casefold().strip()
    stems = {folded, folded.strip(_SYMBOLS), folded.strip(_SYMBOLS + "0123456789")}
    return {stem for stem in stems if stem}


def _repetitive(password: str) -> bool:
    """One character, or a pattern of up to 4 characters, repeated to fill the password."""
    for size in range(1, 5):
        unit = password[:size]
        if len(password) >= 2 * size and unit * (len(password) // size) + unit[: len(password) % size] == password:
            return True
    return False


def check_new_password(
    password: str,
    *,
    username: str | None = None,
    min_length: int = DEFAULT_MIN_LENGTH,
    extra_words: Iterable[str] = (),
) -> None:
    """Raise PasswordRejected naming the first rule `password` breaks."""
    if not password:
        raise PasswordRejected("the password is empty")
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        raise PasswordRejected(
            f"the password is longer than {MAX_PASSWORD_BYTES} bytes (UTF-8), which bcrypt would truncate; choose a shorter one"
        )
    if len(password) < min_length:
        raise PasswordRejected(
            f"the password is shorter than {min_length} characters; a passphrase of several words is best"
        )
    folded = password.casefold()
    if username and len(username) >= 3 and username.casefold() in folded:
        raise PasswordRejected("the password contains the username")
    words = COMMON_PASSWORDS | {word.casefold() for word in extra_words if word.strip()}
    if _stems(password) & words:
        raise PasswordRejected("the password is one of the most common passwords; choose another")
    if _repetitive(password):
        raise PasswordRejected("the password is one character or a short pattern repeated; choose another")
