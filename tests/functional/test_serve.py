"""`zguard serve` as a real process: both listeners, readiness, the openai client, signals."""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from PIL import Image

from tests.common.factories import free_port
from tests.common.polling import wait_until
from tests.common.servers import ZguardProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ZguardProcess:
    """One server for the module; it builds the demo model itself (no model.path), as `make serve`
    does, and without integrity.allow_root: as root (CI, a fresh container) the demo starts warned."""
    env = {"ZGUARD_INTEGRITY__ALLOW_ROOT": "false"}
    proc = ZguardProcess(tmp_path_factory.mktemp("serve") / "state", env=env).start()
    proc.wait_ready()
    yield proc  # type: ignore[misc]
    assert proc.stop() == 0


def test_builds_demo_model_in_state_dir_and_says_so(server: ZguardProcess) -> None:
    state_dir = Path(server.env["ZGUARD_STATE_DIR"])
    assert (state_dir / "demo-model" / "model_index.json").is_file()
    assert state_dir.stat().st_mode & 0o777 == 0o700
    assert "SERVING THE DEMO MODEL" in server.log()
    if os.geteuid() == 0:  # `make serve` as root on a fresh container failed
        assert "RUNNING AS ROOT with the demo model" in server.log()
    models = httpx.get(f"{server.api}/v1/models").json()
    assert models["data"][0]["id"] == "z-image-turbo"
    assert models["data"][0]["demo"] is True


def test_both_listeners_answer_with_their_own_routes(server: ZguardProcess) -> None:
    assert httpx.get(f"{server.api}/healthz").json() == {"status": "ok"}
    page = httpx.get(f"{server.console}/")
    assert page.status_code == 200
    assert "images are noise" in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert httpx.get(f"{server.console}/api/status").json()["ready"] is True
    # The console never serves the generation API; the API never serves console pages.
    assert httpx.post(f"{server.console}/v1/images/generations", json={"prompt": "x"}).status_code in (404, 405)
    assert httpx.get(f"{server.api}/api/status").status_code == 404


def test_openai_client_unmodified(server: ZguardProcess) -> None:
    client = OpenAI(base_url=f"{server.api}/v1", api_key="not-checked-yet", max_retries=0)
    result = client.images.generate(prompt="a lighthouse at dawn", size="128x64", response_format="b64_json")  # type: ignore[arg-type]
    assert result.data is not None
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert image.size == (128, 64)


def test_openai_client_sees_error_codes(server: ZguardProcess) -> None:
    from openai import BadRequestError

    client = OpenAI(base_url=f"{server.api}/v1", api_key="x", max_retries=0)
    with pytest.raises(BadRequestError) as info:
        client.images.generate(prompt="x", size="100x100", response_format="b64_json")  # type: ignore[arg-type]
    assert info.value.code == "invalid_size"


def test_docs_are_off_by_default(server: ZguardProcess) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{server.api}{path}").status_code == 404


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_in_flight_generation_finish_and_exits_zero(
    tmp_path: Path, demo_model_dir: Path, signum: signal.Signals
) -> None:
    with ZguardProcess(tmp_path / "state", env={"ZGUARD_MODEL__PATH": str(demo_model_dir)}) as proc:
        proc.wait_ready()
        results: list[httpx.Response] = []
        body = {"prompt": "slow", "size": "512x512", "num_inference_steps": 40, "seed": 1}
        worker = threading.Thread(
            target=lambda: results.append(httpx.post(f"{proc.api}/v1/images/generations", json=body, timeout=120))
        )
        worker.start()
        wait_until(
            lambda: httpx.get(f"{proc.console}/api/status").json()["generating"] == 1,
            timeout=60,
            interval=0.02,
            what="the generation to start",
        )
        assert proc.proc is not None
        proc.proc.send_signal(signum)
        worker.join(120)
        assert proc.proc.wait(60) == 0
        assert results[0].status_code == 200
        assert len(results[0].json()["data"]) == 1
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{proc.api}/healthz")
        assert "finishing in-flight" in proc.log()


def _run_cli(env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "ZGUARD_STATE_DIR": str(tmp_path / "state"),
        "ZGUARD_INTEGRITY__ALLOW_ROOT": "true",
        **env_extra,
    }
    return subprocess.run(
        [sys.executable, "-m", "zguard", "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_refuses_port_in_use_naming_the_key(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run_cli({"ZGUARD_API__PORT": str(port), "ZGUARD_CONSOLE__PORT": str(free_port())}, tmp_path)
    assert done.returncode == 2
    assert "api.port" in done.stderr
    assert "free port" in done.stderr


def test_refuses_non_loopback_bind_without_authentication(tmp_path: Path) -> None:
    done = _run_cli({"ZGUARD_API__HOST": "0.0.0.0", "ZGUARD_API_AUTH__ENABLED": "false"}, tmp_path)
    assert done.returncode == 2
    assert "api.host" in done.stderr
    assert "api_auth.enabled" in done.stderr


def test_refuses_non_loopback_bind_with_empty_allowlist(tmp_path: Path) -> None:
    done = _run_cli({"ZGUARD_CONSOLE__HOST": "0.0.0.0", "ZGUARD_CONSOLE__ALLOW": "[]"}, tmp_path)
    assert done.returncode == 2
    assert "console.allow: empty" in done.stderr


def test_first_start_prints_a_demo_token_that_works(tmp_path: Path) -> None:
    with ZguardProcess(tmp_path / "state", env={"ZGUARD_API_AUTH__ENABLED": "true"}) as proc:
        proc.wait_ready()
        # Not a terminal (stdout may be a journal): the token is in a private file, never in the output.
        token_file = tmp_path / "state" / "demo-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text(encoding="ascii").strip()
        assert re.fullmatch(r"zg_[0-9A-Za-z]{42}", token)
        assert str(token_file) in proc.log()
        body = {"prompt": "x", "size": "64x64"}
        url = f"{proc.api}/v1/images/generations"
        assert httpx.post(url, json=body).status_code == 401
        assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        status = httpx.get(f"{proc.console}/api/status", headers={"Authorization": f"Bearer {token}"})
        assert status.status_code == 200
        assert proc.stop() == 0
        assert token not in proc.log()
    # A second start keeps the store and prints no new token.
    with ZguardProcess(tmp_path / "state", env={"ZGUARD_API_AUTH__ENABLED": "true"}) as again:
        again.wait_ready()
        assert not re.findall(r"zg_[0-9A-Za-z]{42}", again.log())
        assert again.stop() == 0


def test_refuses_two_principals_that_are_one_name(tmp_path: Path) -> None:
    # a settings-file auditor and a stored generator, both `demo` to login and the audit trail
    import json

    from zguard.store.database import create_store_engine
    from zguard.store.migrate import upgrade
    from zguard.store.principals import PrincipalStore

    (tmp_path / "state").mkdir(mode=0o700)
    engine = create_store_engine(f"sqlite:///{tmp_path / 'state' / 'zguard.db'}")
    upgrade(engine)
    PrincipalStore(engine).create_principal("demo", "service", roles=["generator"])
    engine.dispose()
    users = [{"username": "Demo", "password": "$2b$04$" + "C" * 53, "roles": ["auditor"]}]
    done = _run_cli({"ZGUARD_API_AUTH__USERS": json.dumps(users), "ZGUARD_API__PORT": str(free_port())}, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "'Demo' (api_auth.users) and 'demo' (state database) are one principal" in done.stderr
    assert "Traceback" not in done.stderr


def test_refuses_bad_setting_naming_key(tmp_path: Path) -> None:
    done = _run_cli({"ZGUARD_GENERATION__MAX_QUEUE": "many"}, tmp_path)
    assert done.returncode == 2
    assert "generation.max_queue" in done.stderr
    assert "Traceback" not in done.stderr


def test_refuses_model_path_without_pipeline(tmp_path: Path) -> None:
    done = _run_cli({"ZGUARD_MODEL__PATH": str(tmp_path)}, tmp_path)
    assert done.returncode == 2
    assert "model.path" in done.stderr
    assert "model_index.json" in done.stderr


def test_model_that_fails_to_load_stops_the_process(tmp_path: Path, demo_model_dir: Path) -> None:
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(demo_model_dir, broken)
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with ZguardProcess(tmp_path / "state", env={"ZGUARD_MODEL__PATH": str(broken)}) as proc:
        assert proc.proc is not None
        assert proc.proc.wait(120) == 3
        assert "model load or warm-up failed" in proc.log()
        assert "Traceback" not in proc.log()


def test_cold_start_answers_health_while_building_the_demo_model_and_stops_cleanly(tmp_path: Path) -> None:
    with ZguardProcess(tmp_path / "state") as proc:
        health = wait_until(
            lambda: httpx.get(f"{proc.api}/healthz", timeout=1),
            timeout=60,
            ignoring=(httpx.HTTPError,),
            what="an answer on /healthz",
        )
        assert health.status_code == 200
        # Still building or loading: not ready, yet the process answers and obeys signals.
        assert httpx.get(f"{proc.api}/readyz").status_code == 503
        assert proc.stop() == 0
    assert not list((tmp_path / "state").glob(".zguard-demo-*"))


def test_second_signal_stops_without_waiting_for_the_generation(tmp_path: Path, demo_model_dir: Path) -> None:
    env = {
        "ZGUARD_MODEL__PATH": str(demo_model_dir),
        "ZGUARD_GENERATION__SHUTDOWN_GRACE_S": "120",
        "ZGUARD_GENERATION__MAX_STEPS": "200",
    }
    with ZguardProcess(tmp_path / "state", env=env) as proc:
        proc.wait_ready()
        # About 30 s on a 2-core CPU: far longer than the bound below.
        body = {"prompt": "slow", "size": "1024x1024", "num_inference_steps": 200, "seed": 1}
        worker = threading.Thread(
            target=lambda: httpx.post(f"{proc.api}/v1/images/generations", json=body, timeout=300), daemon=True
        )
        worker.start()
        wait_until(
            lambda: httpx.get(f"{proc.console}/api/status").json()["generating"] == 1,
            timeout=60,
            interval=0.02,
            what="the generation to start",
        )
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        time.sleep(1.2)  # a second signal within 1 s counts as the first one delivered twice
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(30) == 0
        assert time.monotonic() - started < 10
        assert "closing connections now" in proc.log()
