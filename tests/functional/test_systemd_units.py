"""The systemd units as `zguard install` renders them: `systemd-analyze verify` silent, and an
exposure of 1.5 ("OK") or lower from `systemd-analyze security --offline=true`, with GPU access.

The units run the venv's own zguard, so verify finds an executable ExecStart= on this machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.common.systemd import require_systemd_analyze, security, verify
from zguard.cli.main import main
from zguard.ops.install import InstallLayout
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
    for name, text in InstallLayout(zguard_bin=ZGUARD, gpus=2).units().items():
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
    unit = InstallLayout(zguard_bin=ZGUARD, state_dir=Path("/srv/zguard/state"), gpus=0).units()[SERVICE]
    settings = dict(directives(unit))
    assert settings["ReadWritePaths"] == "/srv/zguard/state"
    assert "StateDirectory" not in settings
    assert "DeviceAllow=/dev/nvidia0" not in unit
    (tmp_path / SERVICE).write_text(unit, encoding="utf-8")
    assert verify(tmp_path / SERVICE).stderr == ""


def test_every_template_field_is_filled() -> None:
    fields = InstallLayout().unit_fields()
    for name in UNIT_NAMES:
        assert not re.search(r"@[A-Z_]+@", render_unit(name, fields))
    with pytest.raises(KeyError, match="no value for @APP_DIR@"):
        render_unit(SERVICE, {})
    with pytest.raises(ValueError, match="no unit template"):
        unit_template("other.service")


MDWE_RUNNER = """
import ctypes, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
from zguard.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_scan_runs_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """zguard-scan.service sets MemoryDenyWriteExecute=yes (the server cannot: torch's JIT): the
    scan must run under it. The kernel's PR_SET_MDWE (Linux 6.3+) refuses the same mappings."""
    config = tmp_path / "zguard.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n", encoding="utf-8")
    assert main(["init", "--config", str(config)]) == 0  # a state database for the scan's audit event
    done = subprocess.run(
        [sys.executable, "-c", MDWE_RUNNER, "scan", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert done.returncode in (0, 1), done.stderr  # findings or none; never killed by a signal
    assert "zguard scan:" in done.stdout


def test_service_allows_the_open_files_the_default_connection_caps_need() -> None:
    """`serve` refuses to start with fewer open files than its caps need (zguard.serve.open_files);
    systemd's default soft limit (1024) is far below it."""
    from zguard.config import Settings
    from zguard.serve.open_files import open_files_needed

    settings = dict(directives(InstallLayout().units()[SERVICE]))
    assert int(settings["LimitNOFILE"]) >= 2 * open_files_needed(Settings())
