"""`zguard scim token`: a fresh secret each time, and the digest that `identity.scim` accepts."""

from __future__ import annotations

import argparse
import hashlib

import pytest

from zguard.cli import scim as scim_cli
from zguard.cli.common import EXIT_OK, config_parent
from zguard.config.identity_scim import ScimSettings


def run(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    parser = argparse.ArgumentParser(prog="zguard")
    scim_cli.register(parser.add_subparsers(dest="command"), config_parent())
    args = parser.parse_args(["scim", "token"])
    assert args.handler(args) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    return out[0].removeprefix("token_sha256: "), out[1]


def test_the_secret_is_new_each_time_and_the_digest_is_its_sha256(capsys: pytest.CaptureFixture[str]) -> None:
    digest, secret = run(capsys)
    again, other = run(capsys)
    assert secret != other
    assert len(secret) >= 40
    assert digest == hashlib.sha256(secret.encode()).hexdigest()
    assert again != digest
    assert ScimSettings(enabled=True, token_sha256=[digest, again]).token_sha256 == [digest, again]
