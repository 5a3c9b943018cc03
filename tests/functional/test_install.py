"""`zguard install --root DIR`: real groupadd/useradd inside a staging root, real owners and
modes, checked against the tree the deployment guide asks for and against doctor's own checks;
a second run changes nothing. The host's accounts are never touched.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
from pathlib import Path

import pytest

from tests.common.systemd import require_root, verify
from zguard.cli.main import main
from zguard.config.loader import load_settings
from zguard.ops.host_checks import ProcessUser, model_permissions, secret_file_permissions, state_dir_permissions
from zguard.ops.install import Accounts

ZGUARD = Path(sys.executable).parent / "zguard"
UNITS = ("zguard.service", "zguard-scan.service", "zguard-scan.timer")


def install(root: Path, *extra: str) -> int:
    return main(["install", "--root", str(root), "--zguard-bin", str(ZGUARD), "--gpus", "1", *extra])


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int, str]]:
    """Every path under root: owner, group, mode, mtime, content digest."""
    seen = {}
    for base, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            path = Path(base) / name
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
            seen[str(path.relative_to(root))] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime_ns, digest)
    return seen


def owner_mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    """A staging root holding a model copied in loosely (writable by all, as an unzip leaves it)."""
    require_root()
    root = tmp_path / "root"
    model = root / "opt" / "secure-models" / "Z-Image-Turbo"
    (model / "transformer").mkdir(parents=True)
    (model / "model_index.json").write_text("{}", encoding="utf-8")
    (model / "transformer" / "diffusion.safetensors").write_bytes(b"\0" * 64)
    for path in (model, model / "transformer", model / "transformer" / "diffusion.safetensors"):
        path.chmod(0o777)
    return root


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert install(tmp_path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    assert "dry run: nothing changes" in out
    assert "groupadd --root" in out
    assert "--shell /usr/sbin/nologin" in out
    assert "directory /var/lib/zguard: create ai-runner:ai-service 700" in out
    assert "file /etc/systemd/system/zguard.service: write root:root 644" in out
    assert "nothing enabled or started" in out


def test_install_builds_the_guide_tree(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert install(staged) == 0
    accounts = Accounts(staged)
    uid, gid = accounts.uid("ai-runner"), accounts.gid("ai-service")
    assert uid is not None
    assert gid is not None
    user = accounts.user("ai-runner")
    assert user is not None
    assert (int(user[3]), user[5], user[6]) == (gid, "/nonexistent", "/usr/sbin/nologin")
    assert not (staged / "nonexistent").exists()
    assert uid < 1000  # a system account

    model = staged / "opt" / "secure-models"
    expected = {
        "opt/z-image-turbo": (0, gid, 0o750),
        "etc/zguard": (0, gid, 0o750),
        "etc/zguard/zguard.yaml": (0, gid, 0o640),
        "var/lib/zguard": (uid, gid, 0o700),
        "opt/secure-models": (0, gid, 0o750),
        "opt/secure-models/Z-Image-Turbo": (0, gid, 0o750),
        "opt/secure-models/Z-Image-Turbo/transformer": (0, gid, 0o750),
        "opt/secure-models/Z-Image-Turbo/model_index.json": (0, gid, 0o640),
        "opt/secure-models/Z-Image-Turbo/transformer/diffusion.safetensors": (0, gid, 0o640),
        "opt": (0, 0, 0o755),
        "var/lib": (0, 0, 0o755),
        **{f"etc/systemd/system/{unit}": (0, 0, 0o644) for unit in UNITS},
    }
    assert {path: owner_mode(staged / path) for path in expected} == expected
    assert not any((staged / "etc/systemd/system").glob("*.wants"))  # nothing enabled

    # doctor's own checks pass for the service account on this tree
    runner = ProcessUser(uid, gid, frozenset({gid}))
    assert {f.severity for f in model_permissions(model, runner)} == {"pass"}
    assert state_dir_permissions(staged / "var/lib/zguard", runner).severity == "pass"
    settings_file = staged / "etc/zguard/zguard.yaml"
    assert [f.severity for f in secret_file_permissions({"settings file": settings_file})] == ["pass"]

    # the starter settings load, and name the installed paths
    settings = load_settings(str(settings_file))
    assert settings.state_dir == Path("/var/lib/zguard")
    assert settings.model.path == Path("/opt/secure-models/Z-Image-Turbo")
    assert settings.integrity.require_encrypted_model_storage

    done = verify(*(staged / "etc/systemd/system" / unit for unit in UNITS))
    assert (done.returncode, done.stderr) == (0, "")

    before = snapshot(staged)
    capsys.readouterr()
    assert install(staged) == 0
    assert snapshot(staged) == before


def test_second_run_reports_nothing_changed(staged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert install(staged) == 0
    capsys.readouterr()
    assert install(staged) == 0
    out = capsys.readouterr().out
    assert "13 step(s), 0 changed" in out
    assert "done" not in out


def test_install_repairs_drift_and_keeps_the_operators_settings(
    staged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert install(staged) == 0
    settings_file = staged / "etc/zguard/zguard.yaml"
    edited = settings_file.read_text(encoding="utf-8") + "log_level: debug\n"
    settings_file.write_text(edited, encoding="utf-8")
    settings_file.chmod(0o644)
    (staged / "var/lib/zguard").chmod(0o755)
    unit = staged / "etc/systemd/system/zguard.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n", encoding="utf-8")
    passwd = staged / "etc/passwd"
    passwd.write_text(passwd.read_text(encoding="utf-8").replace("/usr/sbin/nologin", "/bin/bash"), encoding="utf-8")
    capsys.readouterr()

    assert install(staged) == 0
    out = capsys.readouterr().out
    assert "shell /bin/bash -> /usr/sbin/nologin" in out
    assert "4 changed" in out  # the user, the settings file, the state directory, the unit
    assert settings_file.read_text(encoding="utf-8") == edited  # owner and mode fixed, content kept
    assert owner_mode(settings_file)[2] == 0o640
    assert owner_mode(staged / "var/lib/zguard")[2] == 0o700
    assert "serve --config /etc/zguard/zguard.yaml" in unit.read_text(encoding="utf-8")
    user = Accounts(staged).user("ai-runner")
    assert user is not None
    assert user[6] == "/usr/sbin/nologin"


def test_enable_links_the_service_and_the_timer(staged: Path) -> None:
    assert install(staged, "--enable") == 0
    system = staged / "etc/systemd/system"
    assert (system / "multi-user.target.wants/zguard.service").is_symlink()
    assert (system / "timers.target.wants/zguard-scan.timer").is_symlink()
    assert not (system / "multi-user.target.wants/zguard-scan.service").exists()


def test_paths_are_configurable(staged: Path) -> None:
    assert install(staged, "--app-dir", "/srv/zimg", "--state-dir", "/srv/zguard-state", "--model-dir", "/data/m") == 0
    unit = (staged / "etc/systemd/system/zguard.service").read_text(encoding="utf-8")
    assert "ReadWritePaths=/srv/zguard-state" in unit
    assert "RequiresMountsFor=/data/m /srv/zguard-state" in unit
    gid = Accounts(staged).gid("ai-service")
    assert owner_mode(staged / "data/m") == (0, gid, 0o750)
    assert "state_dir: /srv/zguard-state" in (staged / "etc/zguard/zguard.yaml").read_text(encoding="utf-8")


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert install(tmp_path / "missing") == 2
    assert "not a directory" in capsys.readouterr().err
    assert install(tmp_path, "--state-dir", "var/lib/zguard") == 2
    assert "paths must be absolute" in capsys.readouterr().err
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / "z-image-turbo").write_text("not a folder", encoding="utf-8")
    if os.geteuid() == 0:
        assert install(tmp_path) == 2
        assert "is not a directory" in capsys.readouterr().err


def test_runbook_names_every_install_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["install", "--help"])
    options = re.findall(r"^\s+(?:-\w, )?(--[a-z-]+)", capsys.readouterr().out, re.MULTILINE)
    flags = set(options) - {"--help", "--config"}
    runbook = (Path(__file__).parents[2] / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert flags
    assert not [flag for flag in sorted(flags) if flag not in runbook], "docs/deployment.md lacks install flags"
