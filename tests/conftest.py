"""Fixtures every kind of test may use; it imports nothing heavy, so a unit test file starts in
about a second (the functional fixtures, which load the app and the pipeline, are in
tests/functional/conftest.py).

Hypothesis's pytest plugin is off (`-p no:hypothesispytest` in pyproject.toml): registered as a
plugin, the whole hypothesis package went through pytest's assertion rewriting at start (~2.4 s
when bytecode is not cached), and the plugin imported hypothesis in the terminal summary, where
CPython 3.11.7 fails with "AST constructor recursion depth mismatch" after tests that ran servers
in threads. `@given` works without it; the test modules that use it import it themselves.
Schemathesis's plugin is off too (`-p no:schemathesis`): tests/contract runs its CLI against a
live server, and the plugin would import schemathesis (and hypothesis) into every session.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight demo pipeline, written once per session (torch loads only when asked)."""
    from zguard.engine.demo import write_demo_model

    return write_demo_model(tmp_path_factory.mktemp("models") / "demo")
