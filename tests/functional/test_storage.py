"""Host integrity checks (zguard.ops.host_checks): every refusal case, with fake /proc and /sys
trees for the encrypted and unencrypted devices, another account's view by monkeypatching who
zguard runs as, and `zguard serve` refusing for real (as root, and as `nobody`)."""

from __future__ import annotations

import grp
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.common.factories import free_port
from tests.common.hosts import (
    SERVICE,
    act_as,
    block_device,
    fake_host,
    installed_model,
    lay_out_as_installed,
    luks_host,
    needs_root,
    open_tmp,
    python_runnable_by_others,
)
from zguard.cli.main import main
from zguard.config import Settings
from zguard.integrity.manifest import pin
from zguard.ops.host_checks import (
    Host,
    ProcessUser,
    SettingsFile,
    config_secret_keys,
    host_findings,
    model_permissions,
    running_as,
    secret_file_permissions,
    secret_files,
    security_modules,
    startup_problems,
    state_dir_permissions,
    storage_encryption,
    worst,
)
from zguard.ops.mounts import encryption_layers, mount_of, parse_mountinfo


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder another account can reach (for the checks as the service account sees them)."""
    with open_tmp() as path:
        yield path


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


@needs_root
def test_model_files_writable_by_the_service_group_are_refused(tmp_path: Path) -> None:
    root = model_dir(tmp_path, dir_mode=0o770, file_mode=0o660)
    readable, writable, private = model_permissions(root, SERVICE)
    assert readable.severity == "pass"
    assert writable.severity == "fail"
    assert str(root / "transformer" / "weights.safetensors") in writable.message
    assert writable.fix == f"chown -R root:{SERVICE.group_name()} {root} && chmod -R u=rwX,g=rX,o= {root}"
    assert private.severity == "pass"


@needs_root
def test_model_files_owned_by_the_service_account_are_refused(tmp_path: Path) -> None:
    root = model_dir(tmp_path, dir_mode=0o750, file_mode=0o640)
    os.chown(root / "model_index.json", SERVICE.uid, SERVICE.gid)
    _, writable, _ = model_permissions(root, SERVICE)
    assert writable.severity == "fail"
    assert f"{root / 'model_index.json'} (4242:4242 640)" in writable.message


def test_model_files_writable_by_everyone_are_refused_and_open_ones_warned(tmp_path: Path) -> None:
    root = model_dir(tmp_path, dir_mode=0o755, file_mode=0o666)
    _, writable, private = model_permissions(root, SERVICE)
    assert writable.severity == "fail"
    assert private.severity == "warn"
    assert private.fix == f"chmod -R o= {root}"


@needs_root
def test_root_owned_750_640_model_files_pass(tmp_path: Path) -> None:
    root = model_dir(tmp_path, dir_mode=0o750, file_mode=0o640)
    assert [f.severity for f in model_permissions(root, SERVICE)] == ["pass", "pass", "pass"]


@needs_root
def test_a_model_folder_or_weight_file_the_service_account_cannot_read_is_refused(tmp_path: Path) -> None:
    # doctor used to say PASS here: it checked "not writable", never "readable"
    root = model_dir(tmp_path, dir_mode=0o750, file_mode=0o640)
    weights = root / "transformer" / "weights.safetensors"
    weights.chmod(0o600)
    readable, writable, _ = model_permissions(root, SERVICE)
    assert readable.severity == "fail"
    assert f"cannot read: {weights} (0:4242 mode 600)" in readable.message
    assert readable.fix == f"chown -R root:{SERVICE.group_name()} {root} && chmod -R u=rwX,g=rX,o= {root}"
    assert writable.severity == "pass"
    weights.chmod(0o640)
    (root / "transformer").chmod(0o740)  # r without x: the folder cannot be entered
    assert f"{root / 'transformer'} (0:4242 mode 740)" in model_permissions(root, SERVICE)[0].message
    (root / "transformer").chmod(0o750)
    os.chown(root, 0, 0)  # root:root 750: the service account is not in the group
    refused = model_permissions(root, SERVICE)[0]
    assert refused.severity == "fail"
    assert f"{root} (0:0 mode 750)" in refused.message


@needs_root
def test_a_model_below_a_folder_the_service_account_cannot_enter_is_refused(base: Path) -> None:
    volume = base / "secure-models"
    root = installed_model(volume / "Z-Image-Turbo")
    volume.chmod(0o700)
    settings = Settings.model_validate({"state_dir": str(base / "state"), "model": {"path": str(root)}})
    findings = {f.check: f for f in host_findings(settings, luks_host(base))}
    refused = findings["model_files_readable"]
    assert refused.severity == "fail"
    assert f"{root} (model.path): the account zguard runs as (uid 4242) cannot reach it: {volume} (0:0 mode 700)" in (
        refused.message
    )
    assert refused.fix is not None
    assert refused.fix.startswith(f"namei -l {root}")
    assert findings["model_storage_encrypted"].severity == "pass"


def test_startup_refuses_a_writable_model_dir_naming_path_and_fix(tmp_path: Path) -> None:
    root = model_dir(tmp_path, dir_mode=0o777, file_mode=0o666)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    host = Host(ProcessUser(os.geteuid(), os.getegid(), frozenset({os.getegid()})))
    settings = Settings.model_validate(
        {"state_dir": str(state), "integrity": {"allow_root": True}, "model": {"path": str(root)}}
    )
    refusals, _ = startup_problems(settings, host)
    assert len(refusals) == 1
    assert str(root) in refusals[0]
    assert "can change" in refusals[0]
    assert "chmod -R u=rwX,g=rX,o=" in refusals[0]


def test_a_demo_marker_in_an_operator_model_path_exempts_nothing(base: Path) -> None:
    # `zguard-demo.json` used to skip the "files the service account could change" refusal
    root = model_dir(base, dir_mode=0o777, file_mode=0o666)
    (root / "zguard-demo.json").write_text('{"demo": true}\n', encoding="utf-8")
    settings = Settings.model_validate(
        {"state_dir": str(base / "state"), "integrity": {"allow_root": True}, "model": {"path": str(root)}}
    )
    refusals, _ = startup_problems(settings, Host(SERVICE))
    assert any("can change" in line and str(root) in line for line in refusals), refusals
    # the demo model zguard builds in its own state_dir (model.path unset) is its own, and exempt
    demo = Settings.model_validate({"state_dir": str(base / "state"), "integrity": {"allow_root": True}})
    checks = {f.check: f.severity for f in host_findings(demo, Host(SERVICE))}
    assert checks["model_files_read_only"] == "warn"
    assert "model_files_readable" not in checks


def test_a_missing_model_asks_whether_the_encrypted_volume_is_mounted(base: Path) -> None:
    mount_point = base / "secure-models"
    mount_point.mkdir()  # the LUKS volume is not open: its mount point is an empty folder on /
    proc, sys_root = fake_host(base / "host", [("8:1", "/", "ext4", "/dev/sda1")])
    block_device(sys_root, "8:1", name="sda1")
    for path, state in ((mount_point / "Z-Image-Turbo", "does not exist"), (mount_point, "is empty")):
        settings = Settings.model_validate(
            {
                "state_dir": str(base / "state"),
                "model": {"path": str(path)},
                "integrity": {"require_encrypted_model_storage": True},
            }
        )
        findings = {f.check: f for f in host_findings(settings, Host(SERVICE, proc, sys_root))}
        missing = findings["model_files_readable"]
        assert missing.severity == "fail"
        assert f"{path}: no model_index.json (the directory {state}" in missing.message
        assert "is the encrypted volume mounted?" in missing.message
        assert f"findmnt -T {path}" in missing.message
        assert missing.fix is not None
        assert "cryptsetup open" in missing.fix
        encrypted = findings["model_storage_encrypted"]  # not skipped
        assert encrypted.severity == "fail"
        assert "/dev/sda1" in encrypted.message


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
    files = secret_files(settings, SettingsFile(config, raw))
    findings = secret_file_permissions(files)
    assert [f.severity for f in findings] == ["fail"]
    assert str(config) in findings[0].message
    assert "readable by every account" in findings[0].message
    assert findings[0].fix is not None
    assert findings[0].fix.startswith(f"chmod o-rwx {config}")
    config.chmod(0o640)
    assert [f.severity for f in secret_file_permissions(files)] == ["pass"]
    assert config not in secret_files(settings, SettingsFile(config, {"api": {"port": 1}})).values()


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
    assert none.fix is not None
    assert "/etc/apparmor.d/zguard" not in none.fix  # zguard ships no such profile
    assert "zguard ships no SELinux or AppArmor policy" in none.fix
    assert "systemd-analyze security zguard.service" in none.fix
    (sys_root / "fs" / "selinux").mkdir(parents=True)
    (sys_root / "fs" / "selinux" / "enforce").write_text("1", encoding="ascii")
    (proc / "self" / "attr").mkdir()
    (proc / "self" / "attr" / "current").write_text("system_u:system_r:zguard_t:s0\x00", encoding="ascii")
    enforcing = security_modules(proc, sys_root)
    assert enforcing.severity == "pass"
    assert enforcing.message == "SELinux enforcing, AppArmor disabled, process label system_u:system_r:zguard_t:s0"
    (sys_root / "fs" / "selinux" / "enforce").write_text("0", encoding="ascii")
    assert security_modules(proc, sys_root).severity == "warn"


# --- settings files: root's alone to change --------------------------------------------------


def test_a_settings_file_every_account_can_change_is_refused(base: Path) -> None:
    config = base / "zguard.yaml"
    config.write_text("api:\n  port: 5000\n", encoding="utf-8")
    config.chmod(0o666)
    settings = Settings.model_validate({"state_dir": str(base / "state")})
    findings = [
        f for f in host_findings(settings, Host(SERVICE), SettingsFile(config)) if f.detail.get("path") == str(config)
    ]
    assert [(f.check, f.severity) for f in findings] == [("settings_files_protected", "fail")]
    owner = f"{config.stat().st_uid}:{config.stat().st_gid}"
    assert findings[0].message == f"{config} (settings file, {owner} mode 666): can be changed by every account"
    assert findings[0].fix == f"chown root:{SERVICE.group_name()} {config} && chmod 640 {config}"


@needs_root
def test_a_settings_file_the_service_account_can_change_is_refused(base: Path) -> None:
    # a compromised zguard could add api_auth.users, widen api.allow, empty the banned-term lists
    model = installed_model(base / "model")
    real = Settings.model_validate({"state_dir": str(base / "state"), "model": {"path": str(model)}})
    demo = Settings.model_validate({"state_dir": str(base / "state")})
    config = base / "etc" / "zguard.yaml"
    config.parent.mkdir(mode=0o750)
    os.chown(config.parent, 0, SERVICE.gid)  # as /etc/zguard: root:ai-service 750
    config.write_text("api:\n  port: 5000\n", encoding="utf-8")

    host = luks_host(base)

    def verdict(settings: Settings) -> tuple[str, str, str | None]:
        found = [
            f for f in host_findings(settings, host, SettingsFile(config)) if f.check == "settings_files_protected"
        ]
        assert len(found) == 1
        return found[0].severity, found[0].message, found[0].fix

    os.chown(config, SERVICE.uid, SERVICE.gid)
    config.chmod(0o600)
    severity, message, fix = verdict(real)
    assert severity == "fail"
    assert message == (
        f"{config} (settings file, 4242:4242 mode 600): the account zguard runs as (uid 4242) can change it "
        "(uid 4242 (the owner)): a compromised zguard could widen its own access"
    )
    assert fix == f"chown root:{SERVICE.group_name()} {config} && chmod 640 {config}"
    assert verdict(demo)[0] == "warn"  # a checkout run on the demo model: the developer owns the settings
    os.chown(config, 0, SERVICE.gid)
    config.chmod(0o660)
    severity, message, _ = verdict(real)
    assert severity == "fail"
    assert f"can change it (group {SERVICE.group_name()} (gid 4242))" in message
    config.chmod(0o640)
    assert verdict(real)[0] == "pass"
    os.chown(config.parent, SERVICE.uid, SERVICE.gid)  # whoever owns the folder can replace the file
    severity, message, fix = verdict(real)
    assert severity == "fail"
    assert f"uid 4242 (the owner) through its folder {config.parent}" in message
    assert fix is not None
    assert fix.startswith("move it to a folder only root can change: install -o root")
    os.chown(config.parent, 0, SERVICE.gid)
    os.chown(config, 5151, SERVICE.gid)
    severity, message, _ = verdict(real)
    assert (severity, "can be changed by uid 5151 (the owner)" in message) == ("fail", True)
    os.chown(config, 0, 0)  # root:root 640: the service account cannot read it
    severity, message, _ = verdict(real)
    assert (severity, "the account zguard runs as (uid 4242) cannot read it" in message) == ("fail", True)


@needs_root
def test_config_check_refuses_a_settings_file_the_service_account_owns(
    base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = installed_model(base / "model")
    state = base / "state"
    state.mkdir(mode=0o700)
    os.chown(state, SERVICE.uid, SERVICE.gid)
    config = base / "zguard.yaml"
    config.write_text(f"state_dir: {state}\nmodel:\n  path: {model}\n", encoding="utf-8")
    os.chown(config, SERVICE.uid, SERVICE.gid)
    config.chmod(0o600)
    act_as(monkeypatch, luks_host(base))
    assert main(["config", "check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config} (settings file, 4242:4242 mode 600): the account zguard runs as (uid 4242) can change it" in err
    assert f"fix: chown root:{SERVICE.group_name()} {config} && chmod 640 {config}" in err
    os.chown(config, 0, SERVICE.gid)
    config.chmod(0o640)
    assert main(["config", "check", "--config", str(config)]) == 0, capsys.readouterr().err
    assert "# configuration OK" in capsys.readouterr().err


@pytest.mark.slow
def test_a_settings_file_mode_666_is_refused_alike_by_serve_config_check_doctor_and_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    config = tmp_path / "zguard.yaml"
    config.write_text(f"state_dir: {state}\nintegrity:\n  allow_root: true\n", encoding="utf-8")
    config.chmod(0o666)
    owner = f"{config.stat().st_uid}:{config.stat().st_gid}"
    problem = f"{config} (settings file, {owner} mode 666): can be changed by every account"
    fix = f"chown root:{ProcessUser.current().group_name()} {config} && chmod 640 {config}"
    for name in [n for n in os.environ if n.startswith("ZGUARD_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    done = serve(tmp_path, ZGUARD_CONFIG=str(config))
    assert done.returncode == 2, done.stderr
    assert f"{problem}; fix: {fix}" in done.stderr
    assert "Traceback" not in done.stderr

    capsys.readouterr()
    assert main(["config", "check", "--config", str(config)]) == 2
    assert f"{problem}; fix: {fix}" in capsys.readouterr().err

    assert main(["doctor", "--json", "--config", str(config)]) == 2
    doctor = [f for f in json.loads(capsys.readouterr().out)["findings"] if f["check"] == "settings_files_protected"]
    assert [(f["severity"], f["message"], f["fix"]) for f in doctor] == [("fail", problem, fix)]

    assert main(["db", "upgrade", "--config", str(config)]) == 0
    capsys.readouterr()
    main(["scan", "--json", "--config", str(config)])
    scan = [f for f in json.loads(capsys.readouterr().out)["findings"] if f["code"] == "settings_files_protected"]
    assert [(f["check"], f["severity"], f["subject"], f["message"], f["fix"]) for f in scan] == [
        ("host", "high", str(config), problem, fix)
    ]


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
def test_serve_refuses_to_run_a_real_model_as_root(tmp_path: Path, demo_model_dir: Path) -> None:
    done = serve(tmp_path, ZGUARD_MODEL__PATH=str(demo_model_dir))  # an operator's model.path
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


# --- as the service account for real: `nobody` ------------------------------------------------


@pytest.fixture
def as_nobody() -> Iterator[tuple[Path, dict[str, str]]]:
    """A folder `nobody` can reach with a state directory it owns, and what runs zguard as it."""
    if os.geteuid() != 0:
        pytest.skip("runs zguard as nobody")
    with python_runnable_by_others(), open_tmp() as root:
        state = root / "state"
        state.mkdir(mode=0o700)
        os.chown(state, 65534, 65534)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(root),
            "ZGUARD_STATE_DIR": str(state),
            "ZGUARD_API__PORT": str(free_port()),
            "ZGUARD_CONSOLE__PORT": str(free_port()),
        }
        yield root, env


def nobody_group() -> str:
    return grp.getgrgid(65534).gr_name  # nogroup on Debian, nobody on RHEL


def zguard_as_nobody(root: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zguard", *argv],
        env=env,
        cwd=root,
        user=65534,
        group=65534,
        extra_groups=[],  # with `user` alone the child keeps root's groups
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_a_model_folder_the_service_account_cannot_read_is_a_refusal_not_a_crash(
    as_nobody: tuple[Path, dict[str, str]],
) -> None:
    # serve and doctor died with PermissionError (exit 1, which systemd restarts in a loop)
    root, env = as_nobody
    model = installed_model(root / "model", gid=0)
    model.chmod(0o700)  # root:root 700: nobody cannot even look inside
    env = {**env, "ZGUARD_MODEL__PATH": str(model)}
    served = zguard_as_nobody(root, env, "serve")
    assert served.returncode == 2, served.stderr
    assert "Traceback" not in served.stderr
    assert f"{model}: the account zguard runs as (uid 65534) cannot read it (Permission denied)" in served.stderr
    assert f"fix: chown -R root:{nobody_group()} {model} && chmod -R u=rwX,g=rX,o= {model}" in served.stderr
    doctor = zguard_as_nobody(root, env, "doctor")
    assert doctor.returncode == 2, doctor.stderr
    assert "Traceback" not in doctor.stderr
    assert (
        f"FAIL  model_files_readable: {model}: the account zguard runs as (uid 65534) cannot read it" in doctor.stdout
    )


@pytest.mark.slow
def test_a_weight_file_and_a_settings_file_seen_as_the_service_account(
    as_nobody: tuple[Path, dict[str, str]],
) -> None:
    root, env = as_nobody
    model = installed_model(root / "model", gid=65534)
    pin(model)
    lay_out_as_installed(model, 65534)
    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.chmod(0o600)  # root:nogroup 600: the one file nobody cannot read
    verified = zguard_as_nobody(root, env, "model", "verify", str(model))  # hashing it: a finding, not a crash
    assert verified.returncode == 1, verified.stderr
    assert "Traceback" not in verified.stderr
    assert "unreadable: transformer/diffusion_pytorch_model.safetensors: cannot read it (Permission denied)" in (
        verified.stderr + verified.stdout
    )
    config = root / "zguard.yaml"
    config.write_text(f"model:\n  path: {model}\n", encoding="utf-8")
    os.chown(config, 65534, 65534)  # the service account's own settings file
    served = zguard_as_nobody(root, {**env, "ZGUARD_CONFIG": str(config)}, "serve")
    assert served.returncode == 2, served.stderr
    assert "Traceback" not in served.stderr
    assert f"cannot read: {weights} (0:65534 mode 600)" in served.stderr
    assert f"{config} (settings file, 65534:65534 mode 644): the account zguard runs as (uid 65534) can change it" in (
        served.stderr
    )
    assert f"fix: chown root:{nobody_group()} {config} && chmod 640 {config}" in served.stderr
