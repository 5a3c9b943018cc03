"""What a test does when something it needs from outside the venv is missing (a Debian package,
a PostgreSQL or Redis server, root): it skips with the reason, except under CI=true, where every
test must run and it fails instead."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str, *, remedy: str | None = None) -> NoReturn:
    """Skip for `reason`; under CI=true fail, saying so (and `remedy`, e.g. "start Redis", if given)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: every test must run{f'; {remedy}' if remedy else ''})")
    pytest.skip(reason)
