"""`zguard scan` through `zguard.cli.main.main`, on a real SQLite state database and a small pinned model directory.

The OSV fixture marks the PyYAML version installed in this environment as vulnerable, so the
dependency check is exercised against what is really installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from tests.common.hosts import SERVICE, act_as, lay_out_as_installed, luks_host, needs_root, open_tmp
from zguard.audit.setup import open_audit_store
from zguard.cli.main import main
from zguard.config.loader import load_settings
from zguard.integrity.manifest import pin
from zguard.security.passwords import hash_password
from zguard.store import migrate
from zguard.store.database import create_store_engine, database_url
from zguard.store.principals import PrincipalStore

PYYAML = metadata.version("pyyaml")
DIGEST = "ab" * 32
STRONG = "$2b$12$" + "a" * 53  # a well-formed bcrypt hash at cost 12 (never checked: no login here)
NOW = datetime.now(UTC)


def osv_fixture(directory: Path, *, vulnerable: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    events = [{"introduced": "0"}, {"fixed": "999.0"}] if vulnerable else [{"introduced": "0"}, {"fixed": "1.0"}]
    advisory = {
        "id": "GHSA-zgrd-test-0001",
        "summary": "test: unsafe load in PyYAML",
        "affected": [
            {"package": {"ecosystem": "PyPI", "name": "PyYAML"}, "ranges": [{"type": "ECOSYSTEM", "events": events}]}
        ],
        "database_specific": {"severity": "CRITICAL"},
    }
    (directory / "GHSA-zgrd-test-0001.json").write_text(json.dumps(advisory))
    return directory


def write_config(root: Path) -> Path:
    """A settings file under `root` naming a small pinned model and an initialised state database."""
    model = root / "model"
    (model / "transformer").mkdir(parents=True)
    (model / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}\n')
    (model / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x01" * 4096)
    pin(model)
    path = root / "zguard.yaml"
    path.write_text(f"state_dir: {root / 'state'}\nmodel:\n  path: {model}\nintegrity:\n  allow_root: true\n")
    settings = load_settings(path, environ={})
    settings.state_dir.mkdir(mode=0o700)
    engine = create_store_engine(database_url(settings))
    migrate.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A folder the service account can reach (pytest's own are root's alone)."""
    with open_tmp() as root:
        yield root


def store_for(config: Path, clock: datetime = NOW) -> PrincipalStore:
    return PrincipalStore(create_store_engine(database_url(load_settings(config, environ={}))), clock=lambda: clock)


def scan(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["scan", "--json", "--config", str(config), *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, json.loads(out)


def codes(report: dict[str, Any]) -> dict[str, list[str]]:
    """The findings by code, but the host checks' (test_storage and the tests at the end show those)."""
    found: dict[str, list[str]] = {}
    for finding in report["findings"]:
        if finding["check"] != "host":
            found.setdefault(finding["code"], []).append(finding["subject"])
    return found


def test_reports_the_installed_vulnerable_package_and_the_permission_findings(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = store_for(config, NOW - timedelta(days=120))
    old.create_principal("stale-svc", "service", roles=["generator"])
    old.add_token("stale-svc", token_hash="1" * 64, prefix="zg_stale", expires_at=NOW + timedelta(days=30))
    store = store_for(config)
    for name in ("a1", "a2", "a3", "a4"):
        store.create_principal(name, "user", roles=["admin"], password_hash=hash_password("pw", cost=4))
    store.create_principal("gone", "service", roles=["generator"], enabled=False)
    store.add_token("gone", token_hash=DIGEST, prefix="zg_gone")
    store.create_principal("mixed", "service", roles=["generator", "auditor"])
    with config.open("a") as settings_file:  # a user of the settings file is a principal too
        settings_file.write(f"api_auth:\n  users:\n    - {{username: ops, password: '{STRONG}', roles: [admin]}}\n")

    code, report = scan(config, capsys, "--vuln-db", str(osv_fixture(tmp_path / "osv")))

    assert code == 1
    found = codes(report)
    assert found["vulnerable_package"] == [f"pyyaml {PYYAML}"]
    vulnerable = next(f for f in report["findings"] if f["code"] == "vulnerable_package")
    assert vulnerable["severity"] == "critical"
    assert "GHSA-zgrd-test-0001" in vulnerable["message"]
    assert found["disabled_principal_live_token"] == ["token 2 (zg_gone…) of gone"]
    assert found["token_without_expiry"] == ["token 2 (zg_gone…) of gone"]
    assert found["token_unused"] == ["token 1 (zg_stale…) of stale-svc"]
    assert found["principal_generation_and_audit"] == ["principal mixed"]
    assert found["many_admins"] == ["role admin"]
    assert sorted(found["weak_bcrypt_cost"]) == ["principal a1", "principal a2", "principal a3", "principal a4"]
    assert report["admins"] == 5
    assert {"name": "ops", "kind": "config", "roles": ["admin"], "enabled": True} in report["principals"]
    assert {p["name"]: p["roles"] for p in report["principals"]}["mixed"] == ["auditor", "generator"]
    assert report["model"]["verified"] is True
    assert report["status"] == "findings"
    assert report["counts"]["critical"] == 1


def test_without_a_database_nothing_is_called_clean(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = scan(config, capsys)
    assert code == 1  # the default --fail-on high: an unchecked environment fails the scan
    assert report["status"] == "incomplete"
    assert codes(report) == {"vuln_db_not_checked": ["--vuln-db"]}
    capsys.readouterr()
    main(["scan", "--config", str(config)])
    table = capsys.readouterr().out
    assert "INCOMPLETE" in table
    assert "NOT checked (no --vuln-db)" in table
    assert "clean" not in table.lower()


@needs_root
def test_clean_only_when_everything_was_checked_and_the_scan_is_audited(
    open_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # clean needs a clean host too: the service account's view of an installed, encrypted host
    config = write_config(open_root)
    settings = load_settings(config, environ={})
    assert settings.model.path is not None
    lay_out_as_installed(settings.model.path)
    os.chown(settings.state_dir, SERVICE.uid, SERVICE.gid)
    os.chown(config, 0, SERVICE.gid)
    config.chmod(0o640)
    act_as(monkeypatch, luks_host(tmp_path, SERVICE))
    code, report = scan(config, capsys, "--vuln-db", str(osv_fixture(tmp_path / "osv", vulnerable=False)))
    assert (code, report["status"], report["findings"]) == (0, "clean", [])
    assert report["dependencies"]["checked"] == report["dependencies"]["installed"] > 10

    engine = create_store_engine(database_url(settings))
    events = [e for e in open_audit_store(settings, engine).iter_events() if e.type == "scan.completed"]
    engine.dispose()
    assert len(events) == 1
    body = json.loads(events[0].body)
    assert body["detail"]["status"] == "clean"
    assert body["detail"]["findings_critical"] == 0


def test_fail_on_threshold_and_a_changed_model(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(config, environ={})
    assert settings.model.path is not None
    weights = next(settings.model.path.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    vuln_db = str(osv_fixture(tmp_path / "osv", vulnerable=False))
    code, report = scan(config, capsys, "--vuln-db", vuln_db)
    assert code == 1
    assert codes(report)["manifest_mismatch"] == [str(settings.model.path)]
    assert report["model"]["verified"] is False


def test_low_findings_pass_high_and_fail_low(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_for(config, NOW - timedelta(days=100)).create_principal("svc", "service", roles=["generator"])
    store_for(config, NOW - timedelta(days=100)).add_token(
        "svc", token_hash=DIGEST, prefix="zg_svc", expires_at=NOW + timedelta(days=1)
    )
    vuln_db = str(osv_fixture(tmp_path / "osv", vulnerable=False))
    assert scan(config, capsys, "--vuln-db", vuln_db)[0] == 0
    assert scan(config, capsys, "--vuln-db", vuln_db, "--fail-on", "low")[0] == 1


def test_unreadable_database_is_a_usage_error(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--config", str(config), "--vuln-db", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err
