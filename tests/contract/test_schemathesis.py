"""The published contract against a live server: schemathesis, every check and phase, each role.

One `zguard serve` for the module, configured as an operator would (authentication on, the
interactive docs on so the live `/openapi.json` is served) with small generation limits so a
generated request costs milliseconds on the demo model; the document those limits produce is the
one tested, which is the point: the bounds in it come from the settings. Failed-login and
read-rate limits are raised so that schemathesis's deliberately wrong credentials and its
hundreds of requests reach the routes instead of the (separately tested) limits.

Schemathesis runs as its CLI (`st run`, configured by tests/contract/schemathesis.toml: a fixed
seed, so a failure here replays with `st run ... --seed`), once per built-in role and document
(the API's live `/openapi.json`, and the console's JSON API as `make docs` renders it under the
same settings), with the coverage, fuzzing and stateful phases and all checks; any failure fails
the test with its report.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.common.servers import ZguardProcess
from zguard.cli.docs import openapi_document
from zguard.config.loader import load_settings
from zguard.security.rbac import BUILTIN_ROLES

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")
ROLES = sorted(BUILTIN_ROLES)
LIMITS = {
    "ZGUARD_API_AUTH__ENABLED": "true",
    "ZGUARD_API__DOCS_ENABLED": "true",
    "ZGUARD_GENERATION__MAX_SIDE": "64",
    "ZGUARD_GENERATION__MAX_STEPS": "2",
    "ZGUARD_GENERATION__DEFAULT_STEPS": "2",
    "ZGUARD_GENERATION__MAX_N": "1",
    "ZGUARD_API_AUTH__FAILED_LOGINS_PER_USER_ADDRESS": "100000/minute",
    "ZGUARD_API_AUTH__FAILED_LOGINS_PER_ADDRESS": "100000/minute",
    "ZGUARD_API_AUTH__FAILED_LOGINS_PER_USER": "100000/hour",
    "ZGUARD_RATE_LIMITS__OTHER_ROUTES": "100000/minute",
}


def _zguard(server: ZguardProcess, *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "zguard", *argv],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"zguard {' '.join(argv)}: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ZguardProcess, dict[str, str]]]:
    """The server and one API token per built-in role (each on a service account of that role)."""
    server = ZguardProcess(tmp_path_factory.mktemp("contract") / "state", env=LIMITS)
    _zguard(server, "init", "--admin", "admin")
    tokens = {}
    for role in ROLES:
        owner = "admin" if role == "admin" else f"svc-{role}"
        if role != "admin":
            _zguard(server, "user", "add", owner, "--service", "--role", role)
        tokens[role] = _zguard(server, "token", "create", "--user", owner).strip().splitlines()[-1]
    with server:
        server.wait_ready()
        yield server, tokens
        assert server.stop() == 0, server.log()


def _schemathesis() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent))
    assert found, "schemathesis is a test dependency (pyproject's dev extra): `make install`"
    return found


def test_the_live_document_carries_the_servers_own_limits(live: tuple[ZguardProcess, dict[str, str]]) -> None:
    server, tokens = live
    document = httpx.get(f"{server.api}/openapi.json", headers={"Authorization": f"Bearer {tokens['viewer']}"}).json()
    body = document["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]["application/json"]
    fields = body["schema"]["properties"]
    assert fields["size"]["anyOf"][0]["enum"] == ["auto", "64x64"]
    assert fields["n"]["maximum"] == 1
    assert fields["num_inference_steps"]["anyOf"][0]["maximum"] == 2
    assert json.loads(json.dumps(fields["seed"]))["anyOf"][0]["maximum"] == 2**63 - 1 - 16  # exact, not a float


def _console_document(server: ZguardProcess, path: Path) -> Path:
    """The console's document as `make docs` renders it, under the live server's settings (the
    console serves none itself; its operations are for the console's own pages and tools)."""
    settings = load_settings(environ=server.env)
    path.write_text(json.dumps(openapi_document("console", settings)), encoding="utf-8")
    return path


@pytest.mark.parametrize("listener", ["api", "console"])
@pytest.mark.parametrize("role", ROLES)
def test_schemathesis_finds_nothing(
    live: tuple[ZguardProcess, dict[str, str]], role: str, listener: str, tmp_path: Path
) -> None:
    server, tokens = live
    if listener == "api":
        where = [f"{server.api}/openapi.json"]
    else:
        where = [str(_console_document(server, tmp_path / "console-openapi.json")), "--url", server.console]
    done = subprocess.run(
        [
            _schemathesis(),
            "--no-color",
            "--config-file",
            str(CONFIG),
            "run",
            *where,
            "--header",
            f"Authorization: Bearer {tokens[role]}",
            "--phases",
            "coverage,fuzzing,stateful",
            "--checks",
            "all",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,  # its cache directory (.schemathesis) goes there
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-6000:]
    assert "passed" in report
