"""Fixtures of the integration tests: a test PKI and a real rsyslog collector on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.common.pki import Pki, make_pki
from tests.common.rsyslog import Rsyslog


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def rsyslog(tmp_path: Path, pki: Pki) -> Iterator[Rsyslog]:
    """rsyslogd with TCP, UDP, TLS and mutual-TLS inputs on free loopback ports (installed when missing)."""
    with Rsyslog(tmp_path / "rsyslog", pki) as server:
        yield server
