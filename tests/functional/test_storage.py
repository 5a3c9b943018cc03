"""Storage and permission checks: every refusal case, with fake /proc and /sys trees for the
encrypted and unencrypted devices, and `zguard serve` refusing for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.common.factories import free_port
from zguard.config import Settings
from zguard.ops.host_checks import (
    ProcessUser,
    config_secret_keys,
    encryption_layers,
    model_permissions,
    mount_of,
    parse_mountinfo,
    running_as,
    secret_file_permissions,
    secret_files,
    security_modules,
    startup_problems,
    state_dir_permissions,
    storage_encryption,
    worst,
)

SERVICE = ProcessUser(uid=4242, gid=4242, gids=frozenset({4242}))


def fake_host(tmp_path: Path, mounts: list[tuple[str, str, str, str]]) -> tuple[Path, Path]:
    """A /proc with `mounts` (MAJ:MIN, mount point, fstype, source) and an empty /sys."""
    proc, sys_root = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    lines = [
        f"{i + 20} 1 {dev} / {point} rw,relatime - {fs} {src} rw" for i, (dev, point, fs, src) in enumerate(mounts)
    ]
    (proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n", encoding="ascii")
    (sys_root / "dev" / "block").mkdir(parents=True)
    return proc, sys_root


def block_device(
    sys_root: Path, dev: str, *, uuid: str | None = None, name: str = "", slaves: tuple[str, ...] = ()
) -> Path:
    node = sys_root / "devices" / "virtual" / "block" / (name or dev.replace(":", "_"))
    node.mkdir(parents=True)
    if uuid is not None:
        (node / "dm").mkdir()
        (node / "dm" / "uuid").write_text(uuid + "\n", encoding="ascii")
        (node / "dm" / "name").write_text((name or dev) + "\n", encoding="ascii")
    (node / "slaves").mkdir()
    for slave in slaves:  # as in sysfs: slaves/<name> links to the lower device's directory
        (node / "slaves" / slave).symlink_to(sys_root / "devices" / "virtual" / "block" / slave)
    (sys_root / "dev" / "block" / dev).symlink_to(node)
    return node


# --- encryption -------------------------------------------------------------------------------


def test_unencrypted_block_device_fails_when_required_and_warns_otherwise(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    proc, sys_root = fake_host(tmp_path, [("8:0", "/", "ext4", "/dev/sda"), ("8:1", str(models), "ext4", "/dev/sdb1")])
    block_device(sys_root, "8:1", name="sdb1")
    required = storage_encryption(models / "zimage", required=True, proc_root=proc, sys_root=sys_root)
    assert required.severity == "fail"
    assert str(models / "zimage") in required.message
    assert "/dev/sdb1" in required.message
    assert "not dm-crypt" in required.message
    assert required.fix is not None
    assert "cryptsetup luksFormat" in required.fix
    assert storage_encryption(models, required=False, proc_root=proc, sys_root=sys_root).severity == "warn"


def test_luks_device_passes(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    proc, sys_root = fake_host(
        tmp_path, [("8:0", "/", "ext4", "/dev/sda"), ("253:0", str(models), "xfs", "/dev/mapper/m")]
    )
    block_device(sys_root, "253:0", uuid="CRYPT-LUKS2-0f1e2d3c4b5a69788796a5b4c3d2e1f0-models", name="dm-0")
    finding = storage_encryption(models, required=True, proc_root=proc, sys_root=sys_root)
    assert finding.severity == "pass", finding.message
    assert "CRYPT-LUKS2" in finding.message


def test_lvm_on_luks_is_followed_through_slaves(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    _proc, sys_root = fake_host(tmp_path, [("253:2", str(models), "ext4", "/dev/mapper/vg-models")])
    block_device(sys_root, "253:0", uuid="CRYPT-LUKS2-aaaa-luks", name="dm-0")
    block_device(sys_root, "253:2", uuid="LVM-xyz", name="dm-2", slaves=("dm-0",))
    encrypted, layers = encryption_layers("253:2", sys_root)
    assert encrypted
    assert layers == ["dm-2 LVM-xyz", "dm-0 CRYPT-LUKS2-aaaa-luks"]
    block_device(sys_root, "253:3", uuid="LVM-plain", name="dm-3", slaves=("sdc",))
    (sys_root / "devices" / "virtual" / "block" / "sdc").mkdir()
    assert encryption_layers("253:3", sys_root)[0] is False  # LVM on a bare disk is not encrypted


def test_a_filesystem_without_a_block_device_cannot_be_shown_encrypted(tmp_path: Path) -> None:
    proc, sys_root = fake_host(tmp_path, [("0:45", "/", "overlay", "overlay")])
    finding = storage_encryption(tmp_path, required=True, proc_root=proc, sys_root=sys_root)
    assert finding.severity == "fail"
    assert "overlay" in finding.message
    assert "not a block device" in finding.message


def test_the_longest_and_latest_mount_wins_and_escapes_are_decoded(tmp_path: Path) -> None:
    text = (
        "20 1 8:0 / / rw - ext4 /dev/sda rw\n"
        "21 20 8:1 / /srv/my\\040models rw - ext4 /dev/sdb rw\n"
        "22 21 253:0 / /srv/my\\040models rw - ext4 /dev/mapper/luks rw\n"
    )
    mounts = parse_mountinfo(text)
    assert mounts[1].mount_point == "/srv/my models"
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountinfo").write_text(text, encoding="ascii")
    found = mount_of(Path("/srv/my models/zimage"), tmp_path)
    assert found is not None
    assert found.device == "253:0"
    other = mount_of(Path("/srv/my modelsX"), tmp_path)
    assert other is not None
    assert other.device == "8:0"


# --- permissions ------------------------------------------------------------------------------


def model_dir(tmp_path: Path, *, dir_mode: int, file_mode: int, gid: int = SERVICE.gid) -> Path:
    root = tmp_path / "zimage"
    (root / "transformer").mkdir(parents=True)
    for path in (root / "model_index.json", root / "transformer" / "weights.safetensors"):
        path.write_bytes(b"{}")
        path.chmod(file_mode)
    for path in (root / "transformer", root):
        path.chmod(dir_mode)
    if os.geteuid() == 0:
        for path in (
            root,
            root / "model_index.json",
            root / "transformer",
            root / "transformer" / "weights.safetensors",
        ):
            os.chown(path, 0, gid)
    return root


@pytest.mark.skipif(os.geteuid() != 0, reason="builds root-owned model files")
def test_model_files_writable_by_the_service_group_are_refused(tmp_path: Path) -> None:
    root = model_dir(tmp_path, dir_mode=0o770, file_mode=0o660)
    writable, private = model_permissions(root, SERVICE)
    assert writable.severity == "fail"
    assert str(root / "transformer" / "weights.safetensors") in writable.message
    assert writable.fix == f"chown -R root:{SERVICE.group_name()} {root} && chmod -R u=rwX,g=rX,o= {root}"
    assert private.severity == "pass"


@pytest.mark.skipif(os.geteuid() != 0, reason="builds files owned by another account")
def test_model_files_owned_by_the_service_account_are_refused(tmp_path: Path) -> None:
    root = model_dir(tmp_path, dir_mode=0o750, file_mode=0o640)
    os.chown(root / "model_index.json", SERVICE.uid, SERVICE.gid)
    writable, _ = model_permissions(root, SERVICE)
    assert writable.severity == "fail"
    assert f"{root / 'model_index.json'} (4242:4242 640)" in writable.message


def test_model_files_writable_by_everyone_are_refused_and_open_ones_warned(tmp_path: Path) -> None:
    root = model_dir(tmp_path, dir_mode=0o755, file_mode=0o666)
    writable, private = model_permissions(root, SERVICE)
    assert writable.severity == "fail"
    assert private.severity == "warn"
    assert private.fix == f"chmod -R o= {root}"


@pytest.mark.skipif(os.geteuid() != 0, reason="builds root-owned model files")
def test_root_owned_750_640_model_files_pass(tmp_path: Path) -> None:
    root = model_dir(tmp_path, dir_mode=0o750, file_mode=0o640)
    assert [f.severity for f in model_permissions(root, SERVICE)] == ["pass", "pass"]


def test_startup_refuses_a_writable_model_dir_naming_path_and_fix(tmp_path: Path) -> None:
    root = model_dir(tmp_path, dir_mode=0o777, file_mode=0o666)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    who = ProcessUser(os.geteuid(), os.getegid(), frozenset({os.getegid()}))
    settings = Settings.model_validate({"state_dir": str(state), "integrity": {"allow_root": True}})
    refusals, _ = startup_problems(settings, root, demo=False, who=who)
    assert len(refusals) == 1
    assert str(root) in refusals[0]
    assert "can change" in refusals[0]
    assert "chmod -R u=rwX,g=rX,o=" in refusals[0]
    assert startup_problems(settings, root, demo=True, who=who)[0] == []  # zguard's own demo model


def test_world_readable_secret_config_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "zguard.yaml"
    raw = {"api_auth": {"users": [{"username": "a", "password": "$2b$04$" + "x" * 53}]}, "database": {"url": "x"}}
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    config.chmod(0o644)
    assert config_secret_keys(raw) == ["api_auth.users.0.password", "database.url"]
    assert config_secret_keys({"api": {"port": 5000}, "database": {"url": None}}) == []
    assert config_secret_keys({"rate_limits": {"storage": "memory://"}}) == []
    assert config_secret_keys({"rate_limits": {"storage": "redis://:pw@r:6379/0"}}) == ["rate_limits.storage"]
    settings = Settings.model_validate({"state_dir": str(tmp_path / "state")})
    files = secret_files(settings, config, raw)
    findings = secret_file_permissions(files)
    assert [f.severity for f in findings] == ["fail"]
    assert str(config) in findings[0].message
    assert "readable by every account" in findings[0].message
    assert findings[0].fix is not None
    assert findings[0].fix.startswith(f"chmod o-rwx {config}")
    config.chmod(0o640)
    assert [f.severity for f in secret_file_permissions(files)] == ["pass"]
    assert secret_files(settings, config, {"api": {"port": 1}}).get("settings file") is None


def test_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "token.key").write_bytes(b"k" * 32)
    (state / "token.key").chmod(0o604)
    settings = Settings.model_validate({"state_dir": str(state)})
    findings = secret_file_permissions(secret_files(settings))
    assert worst(findings) == "fail"
    assert any(str(state / "token.key") in f.message for f in findings)


def test_state_dir_must_be_0700_and_owned_by_the_service_account(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    me = ProcessUser(os.geteuid(), os.getegid(), frozenset({os.getegid()}))
    loose = state_dir_permissions(state, me)
    assert loose.severity == "fail"
    assert loose.fix == f"chmod 700 {state}"
    assert "mode 755" in loose.message
    state.chmod(0o700)
    assert state_dir_permissions(state, me).severity == "pass"
    foreign = state_dir_permissions(state, SERVICE)
    assert foreign.severity == "fail"
    assert foreign.fix is not None
    assert foreign.fix.startswith("chown 4242:")
    assert state_dir_permissions(tmp_path / "absent", me).severity == "warn"


def test_running_as_root_is_refused_unless_allowed() -> None:
    root = ProcessUser(0, 0, frozenset({0}))
    refused = running_as(root, allow_root=False)
    assert refused.severity == "fail"
    assert refused.fix is not None
    assert "integrity.allow_root: true" in refused.fix
    assert "useradd" in refused.fix
    assert running_as(root, allow_root=True).severity == "warn"
    assert running_as(SERVICE, allow_root=False).severity == "pass"


def test_security_modules_are_reported(tmp_path: Path) -> None:
    proc, sys_root = fake_host(tmp_path, [])
    none = security_modules(proc, sys_root)
    assert none.severity == "warn"
    assert none.detail == {"selinux": "disabled", "apparmor": "disabled", "label": None}
    (sys_root / "fs" / "selinux").mkdir(parents=True)
    (sys_root / "fs" / "selinux" / "enforce").write_text("1", encoding="ascii")
    (proc / "self" / "attr").mkdir()
    (proc / "self" / "attr" / "current").write_text("system_u:system_r:zguard_t:s0\x00", encoding="ascii")
    enforcing = security_modules(proc, sys_root)
    assert enforcing.severity == "pass"
    assert enforcing.message == "SELinux enforcing, AppArmor disabled, process label system_u:system_r:zguard_t:s0"
    (sys_root / "fs" / "selinux" / "enforce").write_text("0", encoding="ascii")
    assert security_modules(proc, sys_root).severity == "warn"


# --- `zguard serve` refuses for real ----------------------------------------------------------


def serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        "PATH": "/usr/bin:/bin",
        "ZGUARD_STATE_DIR": str(tmp_path / "state"),
        "ZGUARD_API__PORT": str(free_port()),
        "ZGUARD_CONSOLE__PORT": str(free_port()),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "zguard", "serve"],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="shows the refusal of root")
def test_serve_refuses_to_run_as_root(tmp_path: Path) -> None:
    done = serve(tmp_path)
    assert done.returncode == 2
    assert "running as root" in done.stderr
    assert "ZGUARD_INTEGRITY__ALLOW_ROOT=true" in done.stderr


def test_serve_refuses_unencrypted_model_storage_when_required(tmp_path: Path) -> None:
    if storage_encryption(tmp_path, required=True).severity == "pass":
        pytest.skip("this host's temporary directory is on dm-crypt")
    done = serve(
        tmp_path, ZGUARD_INTEGRITY__ALLOW_ROOT="true", ZGUARD_INTEGRITY__REQUIRE_ENCRYPTED_MODEL_STORAGE="true"
    )
    assert done.returncode == 2, done.stderr
    assert str(tmp_path / "state" / "demo-model") in done.stderr
    assert "cryptsetup luksFormat" in done.stderr


def test_serve_refuses_a_world_readable_settings_file_holding_secrets(tmp_path: Path) -> None:
    config = tmp_path / "zguard.yaml"
    config.write_text('database:\n  url: "postgresql+psycopg://zguard:hunter2@db/zguard"\n', encoding="utf-8")
    config.chmod(0o644)
    done = serve(tmp_path, ZGUARD_INTEGRITY__ALLOW_ROOT="true", ZGUARD_CONFIG=str(config))
    assert done.returncode == 2, done.stderr
    assert f"{config} (settings file (database.url)) is readable by every account" in done.stderr
    assert f"fix: chmod o-rwx {config}" in done.stderr
    assert "hunter2" not in done.stderr
