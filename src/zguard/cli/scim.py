"""`zguard scim token`: a new bearer secret for the IdP's SCIM client, and the digest to configure.

The secret is printed once, alone on the last line of stdout (so `| tail -1` hands it on), and
never written anywhere by zguard: it goes into the IdP (Entra ID "Secret Token", Okta's
Authorization header), its SHA-256 into `identity.scim.token_sha256`. 256 random bits, so the
failed-attempt limit is a second line of defence, not the first.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys

from zguard.cli.common import EXIT_OK, Commands, command, group

SECRET_BYTES = 32


def new_secret() -> tuple[str, str]:
    """(secret, its SHA-256 in hex)."""
    secret = "zgscim_" + secrets.token_urlsafe(SECRET_BYTES)
    return secret, hashlib.sha256(secret.encode("ascii")).hexdigest()


def cmd_scim_token(_args: argparse.Namespace) -> int:
    secret, digest = new_secret()
    print(
        "add the digest to identity.scim.token_sha256 (beside the old one while rotating), then paste the "
        "secret on the last line into the IdP's provisioning settings; zguard keeps no copy of it",
        file=sys.stderr,
    )
    print(f"token_sha256: {digest}")
    print(secret, flush=True)
    return EXIT_OK


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `scim token`; `common` carries --config (unused: nothing is read)."""
    scim = group(commands, common, "scim", "SCIM provisioning tools", "Tools for SCIM provisioning (identity.scim).")
    command(
        scim,
        common,
        "token",
        cmd_scim_token,
        help_text="print a new bearer secret for the IdP and the SHA-256 to put in identity.scim.token_sha256",
    )
