"""The systemd units as `zguard install` renders them: `systemd-analyze verify` silent, and an
exposure of 1.5 ("OK") or lower from `systemd-analyze security --offline=true`, with GPU access.

The units run the venv's own zguard, so verify finds an executable ExecStart= on this machine.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.common.systemd import require_systemd_analyze, security, verify
from zguard.ops.install import Layout
from zguard.ops.units import SCAN_SERVICE, SCAN_TIMER, SERVICE, UNIT_NAMES, render_unit, unit_template

MAX_EXPOSURE = 1.5
ZGUARD = Path(sys.executable).parent / "zguard"


def directives(text: str) -> list[tuple[str, str]]:
    lines = [line for line in text.splitlines() if "=" in line and not line.startswith("#")]
    return [(key, value) for key, _, value in (line.partition("=") for line in lines)]


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_systemd_analyze()
    assert ZGUARD.is_file(), f"the venv's zguard is missing: {ZGUARD}"
    folder = tmp_path_factory.mktemp("units")
    paths = {}
    for name, text in Layout(zguard_bin=ZGUARD, gpus=2).units().items():
        paths[name] = folder / name
        paths[name].write_text(text, encoding="utf-8")
    return paths


def test_verify_is_silent(units: dict[str, Path]) -> None:
    done = verify(*units.values())
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == ""


@pytest.mark.parametrize("name", [SERVICE, SCAN_SERVICE])
def test_exposure_is_ok(units: dict[str, Path], name: str) -> None:
    result = security(units[name])
    assert result.exposure <= MAX_EXPOSURE, result.output
    assert result.verdict in ("OK", "SAFE"), result.output


def test_service_keeps_the_gpu_and_nothing_else(units: dict[str, Path]) -> None:
    service = set(directives(units[SERVICE].read_text(encoding="utf-8")))
    allowed = {value for key, value in service if key == "DeviceAllow"}
    assert ("DevicePolicy", "closed") in service
    assert ("PrivateDevices", "no") in service
    for node in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"):
        assert f"/dev/{node} rw" in allowed
    assert {"char-nvidia-frontend rw", "char-nvidia-uvm rw", "char-nvidia-caps r"} <= allowed
    result = security(units[SERVICE])
    assert "PrivateDevices=" in result.output  # the one device point it gives up, for the GPU


def test_service_runs_serve_as_the_service_account(units: dict[str, Path]) -> None:
    text = units[SERVICE].read_text(encoding="utf-8")
    settings = dict(directives(text))
    assert settings["User"] == "ai-runner"
    assert settings["Group"] == "ai-service"
    assert settings["ExecStart"] == f"{ZGUARD} serve --config /etc/zguard/zguard.yaml"
    assert settings["StateDirectory"] == "zguard"
    assert settings["RuntimeDirectoryMode"] == "0700"
    assert settings["UMask"] == "0077"
    assert settings["CapabilityBoundingSet"] == ""
    assert settings["ProtectSystem"] == "strict"
    assert settings["PrivateUsers"] == "yes"
    assert settings["ProcSubset"] == "all"  # torch reads /proc/cpuinfo, CUDA /proc/driver/nvidia
    assert "MemoryDenyWriteExecute" not in settings
    assert "pytorch/pytorch#143651" in text  # why it stays off


def test_scan_runs_monthly_without_network(units: dict[str, Path]) -> None:
    scan = dict(directives(units[SCAN_SERVICE].read_text(encoding="utf-8")))
    assert (
        scan["ExecStart"]
        == f"{ZGUARD} scan --config /etc/zguard/zguard.yaml --vuln-db /etc/zguard/osv-pypi.zip --fail-on high"
    )
    assert scan["PrivateNetwork"] == "yes"
    assert scan["MemoryDenyWriteExecute"] == "yes"
    assert scan["Type"] == "oneshot"
    timer = dict(directives(units[SCAN_TIMER].read_text(encoding="utf-8")))
    assert timer["OnCalendar"] == "monthly"
    assert timer["Persistent"] == "true"
    assert timer["Unit"] == SCAN_SERVICE


def test_state_outside_var_lib_is_made_writable_by_path(tmp_path: Path) -> None:
    unit = Layout(zguard_bin=ZGUARD, state_dir=Path("/srv/zguard/state"), gpus=0).units()[SERVICE]
    settings = dict(directives(unit))
    assert settings["ReadWritePaths"] == "/srv/zguard/state"
    assert "StateDirectory" not in settings
    assert "DeviceAllow=/dev/nvidia0" not in unit
    (tmp_path / SERVICE).write_text(unit, encoding="utf-8")
    assert verify(tmp_path / SERVICE).stderr == ""


def test_every_template_field_is_filled() -> None:
    fields = Layout().unit_fields()
    for name in UNIT_NAMES:
        assert not re.search(r"@[A-Z_]+@", render_unit(name, fields))
    with pytest.raises(KeyError, match="no value for @APP_DIR@"):
        render_unit(SERVICE, {})
    with pytest.raises(ValueError, match="no unit template"):
        unit_template("other.service")
