"""`zguard doctor`: the checks, the JSON shape, exit status by the worst finding, and
`--explain REQUEST_ID` on a real audit trail written by real refused requests."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.common.audit import audit_trail, sqlite_url
from tests.common.engines import GatedEngine
from tests.common.factories import api_client, build_test_runtime, make_settings
from tests.common.hosts import SERVICE, act_as, installed_model, luks_host, needs_root, open_tmp
from zguard.audit.prompts import PromptCapture
from zguard.cli.main import main
from zguard.ops.doctor import EXIT_BY_SEVERITY, report, run_checks
from zguard.ops.host_checks import CheckResult, Host, ProcessUser
from zguard.security.passwords import hash_password
from zguard.serve.wiring import build_auth
from zguard.services.readiness import ModelState

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
CHECKS = {
    "not_root",
    "state_dir",
    "model_files_read_only",
    "model_storage_encrypted",
    "security_modules",
    "runtime_dir_empty",
    "no_images_on_disk",
    "last_cleanup",
    "audit_trail",
}


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state dir (0700) with a real, empty audit trail, and the environment `zguard doctor` reads."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with audit_trail(sqlite_url(state), state):  # the schema and audit-signing.pem, as serve leaves them
        pass
    for name in [n for n in os.environ if n.startswith("ZGUARD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ZGUARD_STATE_DIR", str(state))
    monkeypatch.setenv("ZGUARD_INTEGRITY__ALLOW_ROOT", "true")
    monkeypatch.chdir(tmp_path)  # no config/zguard.yaml of the caller's
    return state


def doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["doctor", *argv])
    return code, capsys.readouterr().out


def test_json_shape_and_exit_status_by_the_worst_finding(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = doctor(capsys, "--json")
    result = json.loads(out)
    assert set(result) == {"status", "exit", "findings"}
    assert {f["check"] for f in result["findings"]} >= CHECKS
    for finding in result["findings"]:
        assert set(finding) == {"check", "severity", "message", "fix", "detail"}
        assert finding["severity"] in {"pass", "warn", "fail"}
        assert finding["severity"] == "pass" or finding["fix"], finding
    assert result["status"] == max((f["severity"] for f in result["findings"]), key=["pass", "warn", "fail"].index)
    assert code == result["exit"] == EXIT_BY_SEVERITY[result["status"]]
    by_check = {f["check"]: f for f in result["findings"]}
    assert by_check["state_dir"]["severity"] == "pass"
    assert by_check["audit_trail"]["severity"] == "pass", by_check["audit_trail"]
    assert by_check["no_images_on_disk"]["severity"] == "pass"


def test_exit_codes_are_0_pass_1_warn_2_fail() -> None:
    passing = CheckResult("a", "pass", "ok")
    assert report([passing])["exit"] == 0
    assert report([passing, CheckResult("b", "warn", "hm", "do x")])["exit"] == 1
    assert report([passing, CheckResult("b", "warn", "hm", "x"), CheckResult("c", "fail", "no", "y")])["exit"] == 2


def test_a_loose_state_dir_and_an_image_file_fail_with_their_fixes(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state.chmod(0o755)
    (state / "exports").mkdir()
    (state / "exports" / "result.bin").write_bytes(PNG)
    (state / "run" / "tmp").mkdir(parents=True)
    (state / "run" / "tmp" / "left.tmp").write_bytes(b"x")
    code, out = doctor(capsys)
    assert code == 2
    assert f"FAIL  state_dir: {state}: mode 755, other accounts can enter it" in out
    assert f"      fix: chmod 700 {state}" in out
    assert f"FAIL  no_images_on_disk: {state}: 1 image file(s): {state / 'exports' / 'result.bin'}" in out
    assert f"WARN  runtime_dir_empty: {state / 'run'}: 1 file(s) left by libraries" in out
    assert out.rstrip().endswith("FAIL")


def test_a_world_readable_secret_config_fails(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = state.parent / "zguard.yaml"
    config.write_text('rate_limits:\n  storage: "redis://:hunter2@redis:6379/0"\n', encoding="utf-8")
    config.chmod(0o644)
    code, out = doctor(capsys, "--config", str(config))
    assert code == 2
    assert (
        f"FAIL  secret_file_private: {config} (settings file (rate_limits.storage)) is readable by every account" in out
    )
    assert f"fix: chmod o-rwx {config}" in out


def test_root_is_a_failure_unless_allowed(state: Path) -> None:
    settings = make_settings(state, integrity={"allow_root": False}, model={"path": str(state / "model")})
    root = Host(ProcessUser(0, 0, frozenset({0})))
    assert {f.check: f.severity for f in run_checks(settings, root)}["not_root"] == "fail"


def test_the_demo_model_runs_as_root_loudly_warned(state: Path) -> None:
    # `make serve` as root on a fresh container (root is all there is) failed
    settings = make_settings(state, integrity={"allow_root": False})  # no model.path: the demo
    root = Host(ProcessUser(0, 0, frozenset({0})))
    [finding] = [f for f in run_checks(settings, root) if f.check == "not_root"]
    assert finding.severity == "warn"
    assert finding.message.startswith("RUNNING AS ROOT with the demo model")


def test_a_tampered_audit_trail_fails(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sqlalchemy import text

    from zguard.audit import AuditEvent
    from zguard.audit.store import pending

    with audit_trail(sqlite_url(state), state) as trail:
        for i in range(3):
            trail.store.append([pending(AuditEvent(type="http.request", outcome="allowed", detail={"i": i}))])
        with trail.store.engine.begin() as conn:
            conn.execute(
                text("UPDATE audit_events SET body = replace(body, :old, :new) WHERE seq = 2"),
                {"old": '"i":1', "new": '"i":9'},
            )
    code, out = doctor(capsys)
    assert code == 2
    assert "FAIL  audit_trail: audit trail NOT intact: edited at event 2" in out


def _events(state: Path, count: int) -> None:
    from zguard.audit import AuditEvent
    from zguard.audit.store import pending

    with audit_trail(sqlite_url(state), state) as trail:
        for i in range(count):
            trail.store.append([pending(AuditEvent(type="http.request", outcome="allowed", detail={"i": i}))])


def test_a_syslog_collector_that_is_down_is_a_warning_not_a_pass(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a collector that was down was PASS ("126 events behind")
    from tests.common.factories import free_port

    _events(state, 3)
    monkeypatch.setenv("ZGUARD_AUDIT__SYSLOG__TRANSPORT", "tcp")
    monkeypatch.setenv("ZGUARD_AUDIT__SYSLOG__PORT", str(free_port()))  # nobody listens
    code, out = doctor(capsys, "--json")
    [finding] = [f for f in json.loads(out)["findings"] if f["check"] == "syslog_forwarding"]
    assert finding["severity"] == "warn"
    assert "cannot be reached" in finding["message"]
    assert finding["detail"]["reachable"] is False
    assert code >= 1


def test_syslog_that_never_delivered_anything_is_a_warning(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    _events(state, 3)
    with socket.socket() as collector:  # reachable, but the forwarder never sent it anything
        collector.bind(("127.0.0.1", 0))
        collector.listen()
        monkeypatch.setenv("ZGUARD_AUDIT__SYSLOG__TRANSPORT", "tcp")
        monkeypatch.setenv("ZGUARD_AUDIT__SYSLOG__PORT", str(collector.getsockname()[1]))
        _, out = doctor(capsys, "--json")
    [finding] = [f for f in json.loads(out)["findings"] if f["check"] == "syslog_forwarding"]
    assert finding["severity"] == "warn"
    assert "nothing was ever delivered" in finding["message"]


@pytest.mark.parametrize(("url", "severity"), [("redis://127.0.0.1:9/0", "fail"), ("redis://127.0.0.1:6379/0", "pass")])
def test_the_rate_limit_storage_is_checked_when_it_is_redis(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str, severity: str
) -> None:
    # Redis down: every request was 503, /readyz said ready and doctor did not check it
    monkeypatch.setenv("ZGUARD_RATE_LIMITS__STORAGE", url)
    _, out = doctor(capsys, "--json")
    [finding] = [f for f in json.loads(out)["findings"] if f["check"] == "rate_limit_storage"]
    assert finding["severity"] == severity, finding
    assert "redis://127.0.0.1:" in finding["message"]


# --- --explain -------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def refused(state: Path) -> Iterator[dict[str, str]]:
    """Real requests, refused for real, each recorded in the trail: code → request id."""
    import anyio

    users = [
        {"username": "vera", "password": hash_password("pw-vera-1", cost=4), "roles": ["viewer"]},
        {"username": "gina", "password": hash_password("pw-gina-1", cost=4), "roles": ["generator"]},
    ]
    settings = make_settings(
        state, api_auth={"enabled": True, "users": users}, rate_limit="1/minute", api={"allow": ["127.0.0.0/8"]}
    )
    ids: dict[str, str] = {}

    async def requests(trail: Any) -> None:
        engine = GatedEngine()
        engine.release()
        runtime = build_test_runtime(
            settings,
            engine,
            build_auth(settings, None, b"t" * 32, trail),
            audit=trail,
            prompts=PromptCapture("hmac", hmac_key=b"k" * 32),
        )
        runtime.services.readiness.set(ModelState.READY)
        try:
            async with api_client(settings, runtime, peer=("10.9.9.9", 40000)) as outside:
                ids["ip_not_allowed"] = (await outside.get("/v1/models")).headers["x-request-id"]
            async with api_client(settings, runtime) as api:
                bad = await api.get("/v1/models", headers={"Authorization": "Bearer zg_not-a-key"})
                ids["invalid_api_key"] = bad.headers["x-request-id"]
                ids["missing_credentials"] = (await api.get("/v1/models")).headers["x-request-id"]
                denied = await api.post(
                    "/v1/images/generations",
                    json={"prompt": "a cat", "size": "64x64"},
                    headers=basic("vera", "pw-vera-1"),
                )
                ids["permission_denied"] = denied.headers["x-request-id"]
                ok = await api.get("/v1/models", headers=basic("gina", "pw-gina-1"))
                ids["allowed"] = ok.headers["x-request-id"]
                # the configured rate applies to generation (reads have their own budget)
                generate = {"prompt": "a cat", "size": "64x64"}
                first = await api.post("/v1/images/generations", json=generate, headers=basic("gina", "pw-gina-1"))
                assert first.status_code == 200, first.text
                limited = await api.post("/v1/images/generations", json=generate, headers=basic("gina", "pw-gina-1"))
                ids["rate_limit_exceeded"] = limited.headers["x-request-id"]
        finally:
            runtime.worker.stop(timeout=5)

    with audit_trail(sqlite_url(state), state) as trail:
        anyio.run(requests, trail)
    return ids


def test_explain_ip_not_allowed_names_the_client_and_the_allowlist_key(
    refused: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZGUARD_API__ALLOW", "127.0.0.0/8")
    code, out = doctor(capsys, "--explain", refused["ip_not_allowed"])
    assert code == 0
    assert f"request {refused['ip_not_allowed']}: http.request denied" in out
    assert "HTTP 403, code ip_not_allowed" in out
    assert "refused client 10.9.9.9 on the api listener" in out
    assert "it was outside api.allow = ['127.0.0.0/8']" in out
    assert "has changed since" not in out
    assert "fix: add the client's network to api.allow (e.g. api.allow: [10.9.9.9/32])" in out


def test_explain_tells_the_allowlist_in_force_when_refused_not_todays(
    refused: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # it said an address was outside an allowlist that (by now) contains it
    monkeypatch.setenv("ZGUARD_API__ALLOW", "10.9.9.0/24")
    code, out = doctor(capsys, "--explain", refused["ip_not_allowed"])
    assert code == 0
    assert "it was outside api.allow = ['127.0.0.0/8']" in out
    assert "api.allow has changed since: these settings say ['10.9.9.0/24']" in out


def test_explain_invalid_api_key_points_at_the_authorization_header(
    refused: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = doctor(capsys, "--explain", refused["invalid_api_key"])
    assert code == 0
    assert "code invalid_api_key" in out
    assert "authentication refused the Authorization header (bearer): malformed" in out
    assert "fix: check the Authorization header" in out
    code, out = doctor(capsys, "--explain", refused["missing_credentials"])
    assert "no Authorization header" in out
    assert "fix: send 'Authorization: Bearer <zguard API key>'" in out


def test_explain_permission_denied_names_the_permission_and_roles(
    refused: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = doctor(capsys, "--explain", refused["permission_denied"])
    assert code == 0
    assert "authorization refused vera (roles: viewer): no role among viewer grants images:generate" in out
    assert "fix: give vera a role that grants images:generate: zguard user roles vera --role ROLE" in out


def test_explain_rate_limit_names_the_limit(refused: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out = doctor(capsys, "--explain", refused["rate_limit_exceeded"], "--json")
    assert code == 0
    result = json.loads(out)
    assert result["code"] == "rate_limit_exceeded"
    assert result["explanation"] == "the rate limit refused gina: at most 1 request(s) per 60 s"
    assert result["fix"].startswith("retry after 60 s, or raise rate_limit / rate_limits.per_principal.gina")
    assert [e["request_id"] for e in result["events"]] == [refused["rate_limit_exceeded"]]


def test_explain_an_allowed_request_and_an_unknown_one(
    refused: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = doctor(capsys, "--explain", refused["allowed"])
    assert code == 0
    assert "the request was not refused: outcome allowed, HTTP 200" in out
    code = main(["doctor", "--explain", "0" * 32])
    assert code == 2
    assert "no audit event for request " + "0" * 32 in capsys.readouterr().err


# --- the host checks, as the service account sees them -----------------------------------------


@pytest.fixture
def service_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Doctor checks as the service account on an encrypted host; yields a folder it can reach."""
    with open_tmp() as root:
        act_as(monkeypatch, luks_host(tmp_path, SERVICE))
        yield root


@needs_root
def test_a_model_the_service_account_cannot_read_fails(
    state: Path, service_view: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # doctor said PASS: it checked that the files were not writable, never that they were readable
    model = installed_model(service_view / "model")
    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.chmod(0o600)
    monkeypatch.setenv("ZGUARD_MODEL__PATH", str(model))
    code, out = doctor(capsys)
    assert code == 2
    assert (
        f"FAIL  model_files_readable: {model}: 1 file(s) or folder(s) the account zguard runs as (uid 4242) "
        f"cannot read: {weights} (0:4242 mode 600)"
    ) in out
    assert f"      fix: chown -R root:{SERVICE.group_name()} {model} && chmod -R u=rwX,g=rX,o= {model}" in out
    assert f"PASS  model_files_read_only: {model}: not writable by uid 4242" in out
    weights.chmod(0o640)
    model.chmod(0o700)
    code, out = doctor(capsys)
    assert code == 2
    assert f"FAIL  model_files_readable: {model}: 1 file(s) or folder(s)" in out
    assert f"{model} (0:4242 mode 700)" in out


def test_a_missing_model_asks_for_the_volume_and_still_checks_encryption(
    state: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = state.parent / "secure-models" / "Z-Image-Turbo"
    monkeypatch.setenv("ZGUARD_MODEL__PATH", str(absent))
    code, out = doctor(capsys, "--json")
    assert code == 2
    by_check = {f["check"]: f for f in json.loads(out)["findings"]}
    missing = by_check["model_files_readable"]
    assert missing["severity"] == "fail"
    assert "is the encrypted volume mounted?" in missing["message"]
    assert missing["fix"].startswith("open and mount the model volume (cryptsetup open DEVICE NAME")
    assert by_check["model_storage_encrypted"]["detail"]["path"] == str(absent)  # not skipped
