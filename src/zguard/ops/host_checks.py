"""Storage and permission checks: where the model lies, who may change it, who may read secrets.

Every check returns `CheckResult`s (PASS / WARN / FAIL, a message naming the path and what is wrong,
and the command that fixes it); `serve` refuses to start on the FAILs of `startup_problems`,
and `zguard doctor` prints them all. The kernel's views are read from injectable roots (`/proc`,
`/sys`), so tests show an encrypted and an unencrypted device with fake trees.

Encryption: the mount holding the path is found in `<proc>/self/mountinfo` (longest mount
point, the later of two equal ones: over-mounts); its device `MAJ:MIN` is looked up in
`<sys>/dev/block/MAJ:MIN`; a device-mapper target whose `dm/uuid` begins with `CRYPT-` is
dm-crypt (LUKS or plain). Stacks are followed through `slaves/`, so an LVM volume or RAID on
top of a LUKS container counts as encrypted.
"""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, SecretStr

from zguard import state_paths
from zguard.config import Settings
from zguard.config.loader import config_path
from zguard.errors import ConfigError

Severity = Literal["pass", "warn", "fail"]
SEVERITY_ORDER: Mapping[Severity, int] = {"pass": 0, "warn": 1, "fail": 2}
PROC = Path("/proc")
SYS = Path("/sys")
MAX_SHOWN = 5  # offending paths named in one finding
MAX_DM_DEPTH = 16


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict. `fix` is the command (or setting) that makes it pass."""

    check: str
    severity: Severity
    message: str
    fix: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "severity": self.severity,
            "message": self.message,
            "fix": self.fix,
            "detail": dict(self.detail),
        }


def worst(findings: Iterable[CheckResult]) -> Severity:
    return max((f.severity for f in findings), key=SEVERITY_ORDER.__getitem__, default="pass")


@dataclass(frozen=True)
class ProcessUser:
    """Who zguard runs as: the effective uid, its primary group and every group it holds."""

    uid: int
    gid: int
    gids: frozenset[int]

    @classmethod
    def current(cls) -> ProcessUser:
        return cls(os.geteuid(), os.getegid(), frozenset({os.getegid(), *os.getgroups()}))

    def group_name(self) -> str:
        try:
            return grp.getgrgid(self.gid).gr_name
        except KeyError:
            return str(self.gid)


# --- encryption -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    major: int
    minor: int
    mount_point: str
    fstype: str
    source: str

    @property
    def device(self) -> str:
        return f"{self.major}:{self.minor}"


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as `\\ooo`."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 4].isdigit() and len(text[i + 1 : i + 4]) == 3:
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not sep or len(fields) < 5 or len(tail) < 2 or ":" not in fields[2]:
            continue
        major, minor = fields[2].split(":", 1)
        mounts.append(Mount(int(major), int(minor), _unescape(fields[4]), tail[0], _unescape(tail[1])))
    return mounts


def mount_of(path: Path, proc_root: Path = PROC) -> Mount | None:
    """The mount `path` (resolved) lies on: the longest matching mount point, the last listed."""
    try:
        mounts = parse_mountinfo((proc_root / "self" / "mountinfo").read_text(encoding="utf-8"))
    except OSError:
        return None
    target = os.path.realpath(path)
    best: Mount | None = None
    for mount in mounts:
        point = mount.mount_point.rstrip("/") or "/"
        inside = target == point or target.startswith(point + "/") or point == "/"
        if inside and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = mount
    return best


def encryption_layers(device: str, sys_root: Path = SYS) -> tuple[bool, list[str]]:
    """(encrypted, the device-mapper layers seen as `name uuid`) for block device `MAJ:MIN`."""
    layers: list[str] = []

    def visit(node: Path, depth: int) -> bool:
        if depth > MAX_DM_DEPTH:
            return False
        try:
            uuid = (node / "dm" / "uuid").read_text(encoding="utf-8").strip()
        except OSError:
            uuid = ""
        if uuid:
            try:
                name = (node / "dm" / "name").read_text(encoding="utf-8").strip()
            except OSError:
                name = node.name
            layers.append(f"{name} {uuid}")
            if uuid.startswith("CRYPT-"):
                return True
        slaves = node / "slaves"
        children = sorted(slaves.iterdir()) if slaves.is_dir() else []
        return bool(children) and all(visit(child, depth + 1) for child in children)

    node = sys_root / "dev" / "block" / device
    if not node.exists():
        return False, layers
    return visit(node, 0), layers


def storage_encryption(path: Path, *, required: bool, proc_root: Path = PROC, sys_root: Path = SYS) -> CheckResult:
    """Whether `path` lies on dm-crypt. Not encrypted: FAIL when `required`, else WARN."""
    missing: Severity = "fail" if required else "warn"
    fix = (
        f"move {path} to a LUKS volume (cryptsetup luksFormat DEVICE; cryptsetup open DEVICE zguard-models; "
        "mkfs and mount it), then point model.path there"
    )
    mount = mount_of(path, proc_root)
    if mount is None:
        return CheckResult(
            "model_storage_encrypted",
            missing,
            f"{path}: cannot find its mount in {proc_root}/self/mountinfo; encryption unknown",
            fix,
        )
    detail: dict[str, Any] = {
        "mount_point": mount.mount_point,
        "device": mount.device,
        "fstype": mount.fstype,
        "source": mount.source,
    }
    if mount.major == 0:
        return CheckResult(
            "model_storage_encrypted",
            missing,
            f"{path}: on {mount.fstype} at {mount.mount_point} ({mount.source}), not a block device; "
            "cannot show it is encrypted",
            fix,
            detail,
        )
    encrypted, layers = encryption_layers(mount.device, sys_root)
    detail["layers"] = layers
    if encrypted:
        return CheckResult(
            "model_storage_encrypted",
            "pass",
            f"{path}: on {mount.source} ({mount.device}) at {mount.mount_point}, dm-crypt: {' -> '.join(layers)}",
            None,
            detail,
        )
    return CheckResult(
        "model_storage_encrypted",
        missing,
        f"{path}: on {mount.source} ({mount.device}) at {mount.mount_point}, which is not dm-crypt/LUKS",
        fix,
        detail,
    )


# --- permissions ------------------------------------------------------------------------------


def _walk(root: Path) -> Iterable[Path]:
    yield root
    for base, dirs, names in os.walk(root):
        for name in sorted(dirs) + sorted(names):
            yield Path(base) / name


def _named(paths: list[str]) -> str:
    shown = ", ".join(paths[:MAX_SHOWN])
    return shown + (f" and {len(paths) - MAX_SHOWN} more" if len(paths) > MAX_SHOWN else "")


def model_permissions(model_dir: Path, who: ProcessUser) -> list[CheckResult]:
    """The model files must not be writable by zguard's account (root owns them, the service
    group reads them: 750/640 or tighter). Writable: FAIL; readable by others: WARN."""
    writable: list[str] = []
    open_to_others: list[str] = []
    for path in _walk(model_dir):
        try:
            st = path.lstat()
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            continue  # the manifest check decides about links; their own mode means nothing
        mode = stat.S_IMODE(st.st_mode)
        owned = st.st_uid == who.uid and who.uid != 0
        if owned or mode & stat.S_IWOTH or (mode & stat.S_IWGRP and st.st_gid in who.gids):
            writable.append(f"{path} ({st.st_uid}:{st.st_gid} {mode:o})")
        if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IXOTH):
            open_to_others.append(str(path))
    fix = f"chown -R root:{who.group_name()} {model_dir} && chmod -R u=rwX,g=rX,o= {model_dir}"
    findings = []
    if writable:
        findings.append(
            CheckResult(
                "model_files_read_only",
                "fail",
                f"{model_dir}: {len(writable)} file(s) or folder(s) the account zguard runs as (uid {who.uid}) "
                f"can change: {_named(writable)}",
                fix,
            )
        )
    else:
        findings.append(
            CheckResult("model_files_read_only", "pass", f"{model_dir}: not writable by uid {who.uid}", None)
        )
    if open_to_others:
        findings.append(
            CheckResult(
                "model_files_private",
                "warn",
                f"{model_dir}: {len(open_to_others)} file(s) or folder(s) open to other accounts: {_named(open_to_others)}",
                f"chmod -R o= {model_dir}",
            )
        )
    else:
        findings.append(CheckResult("model_files_private", "pass", f"{model_dir}: closed to other accounts", None))
    return findings


def _secret_keys(data: Any, model: type[BaseModel], prefix: str = "") -> list[str]:
    """The dotted keys in raw settings `data` that set a secret (`SecretStr`) field of `model`."""
    found: list[str] = []
    if not isinstance(data, Mapping):
        return found
    for key, value in data.items():
        info = model.model_fields.get(str(key))
        if info is None or value is None:
            continue
        name = f"{prefix}{key}"
        if "SecretStr" in str(info.annotation):
            default = info.default.get_secret_value() if isinstance(info.default, SecretStr) else info.default
            if value != default:  # `memory://` spelled out is no secret
                found.append(name)
            continue
        nested = _nested_model(info.annotation)
        if nested is None:
            continue
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            where = f"{name}.{index}." if isinstance(value, list) else f"{name}."
            found += _secret_keys(item, nested, where)
    return found


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        nested = _nested_model(arg)
        if nested is not None:
            return nested
    return None


def config_secret_keys(raw: Any) -> list[str]:
    """Which keys of a parsed settings file hold secrets (passwords, database URL, Redis URL...)."""
    return _secret_keys(raw, Settings)


def secret_files(settings: Settings, config_file: Path | None = None, raw_config: Any = None) -> dict[str, Path]:
    """Files that hold secrets, by what they are: key files, the demo token, the settings file
    when it sets a secret key."""
    files = state_paths.key_files(settings)
    if settings.audit.syslog.key_file is not None:
        files["audit.syslog.key_file"] = settings.audit.syslog.key_file
    for name, listener in (("api", settings.api), ("console", settings.console)):
        if listener.tls_key_file is not None:
            files[f"{name}.tls_key_file"] = listener.tls_key_file
    if config_file is not None and config_secret_keys(raw_config):
        files[f"settings file ({', '.join(config_secret_keys(raw_config))})"] = config_file
    return files


def settings_file(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> tuple[Path | None, Any]:
    """The settings file zguard reads (`--config`, `$ZGUARD_CONFIG`, `config/zguard.yaml`) and its
    parsed contents; (None, None) when there is none or it cannot be parsed (loading reports that)."""
    path, _named = config_path(cli_value, environ)
    try:
        return path, yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None, None


def refuse_readable_settings_file(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> None:
    """`serve`: raise ConfigError when the settings file sets a secret and others may read it."""
    path, raw = settings_file(cli_value, environ)
    if path is None or not config_secret_keys(raw):
        return
    keys = ", ".join(config_secret_keys(raw))
    refusals = [f"{f.message}; fix: {f.fix}" for f in secret_file_permissions({f"settings file ({keys})": path})]
    if any("readable by every account" in line for line in refusals):
        raise ConfigError(refusals)


def secret_file_permissions(files: Mapping[str, Path]) -> list[CheckResult]:
    """Files holding secrets must not be readable (or writable) by other accounts: FAIL."""
    findings = []
    for what, path in files.items():
        try:
            st = path.stat()
        except OSError:
            continue  # not created yet, or not configured: nothing to leak
        mode = stat.S_IMODE(st.st_mode)
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            findings.append(
                CheckResult(
                    "secret_file_private",
                    "fail",
                    f"{path} ({what}) is readable by every account on this host (mode {mode:o})",
                    f"chmod o-rwx {path}  (0600, or 0640 with the service group)",
                    {"path": str(path)},
                )
            )
        else:
            findings.append(
                CheckResult("secret_file_private", "pass", f"{path} ({what}): mode {mode:o}", None, {"path": str(path)})
            )
    if not findings:
        findings.append(CheckResult("secret_file_private", "pass", "no secret files yet (none configured or created)"))
    return findings


def state_dir_permissions(state_dir: Path, who: ProcessUser) -> CheckResult:
    """The state directory: mode 0700, owned by zguard's account."""
    try:
        st = state_dir.stat()
    except FileNotFoundError:
        return CheckResult(
            "state_dir", "warn", f"{state_dir}: does not exist yet (`zguard serve` creates it, mode 0700)"
        )
    except OSError as exc:
        return CheckResult("state_dir", "fail", f"{state_dir}: cannot be read ({exc.strerror})", f"ls -ld {state_dir}")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != who.uid:
        return CheckResult(
            "state_dir",
            "fail",
            f"{state_dir}: owned by uid {st.st_uid}, not by the account zguard runs as (uid {who.uid})",
            f"chown {who.uid}:{who.group_name()} {state_dir} && chmod 700 {state_dir}",
        )
    if mode & 0o077:
        return CheckResult(
            "state_dir", "fail", f"{state_dir}: mode {mode:o}, other accounts can enter it", f"chmod 700 {state_dir}"
        )
    return CheckResult("state_dir", "pass", f"{state_dir}: mode {mode:o}, owned by uid {st.st_uid}")


def tighten_state_dir(state_dir: Path, who: ProcessUser) -> bool:
    """Set mode 0700 on zguard's own state directory when it is looser; True when it changed."""
    try:
        st = state_dir.stat()
    except OSError:
        return False
    if st.st_uid == who.uid and stat.S_IMODE(st.st_mode) & 0o077:
        state_dir.chmod(0o700)
        return True
    return False


def running_as(who: ProcessUser, *, allow_root: bool) -> CheckResult:
    if who.uid != 0:
        return CheckResult("not_root", "pass", f"running as uid {who.uid}")
    if allow_root:
        return CheckResult(
            "not_root",
            "warn",
            "running as root (integrity.allow_root: true): the model files and the audit trail are writable by this process",
            "run as a dedicated account: useradd --system zguard; systemd User=zguard",
        )
    return CheckResult(
        "not_root",
        "fail",
        "running as root: a compromised zguard could change the model files and the audit trail",
        "run as a dedicated account (useradd --system zguard; systemd User=zguard), or set "
        "integrity.allow_root: true (ZGUARD_INTEGRITY__ALLOW_ROOT=true) to accept it explicitly",
    )


# --- mandatory access control -----------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip().strip("\x00")
    except OSError:
        return None


def security_modules(proc_root: Path = PROC, sys_root: Path = SYS) -> CheckResult:
    """SELinux and AppArmor as the kernel reports them; WARN when neither confines zguard."""
    selinux = _read(sys_root / "fs" / "selinux" / "enforce")
    apparmor = _read(sys_root / "module" / "apparmor" / "parameters" / "enabled")
    label = _read(proc_root / "self" / "attr" / "apparmor" / "current") or _read(
        proc_root / "self" / "attr" / "current"
    )
    selinux_mode = {"1": "enforcing", "0": "permissive"}.get(selinux or "", "disabled")
    apparmor_mode = "enabled" if apparmor == "Y" else "disabled"
    detail = {"selinux": selinux_mode, "apparmor": apparmor_mode, "label": label}
    text = f"SELinux {selinux_mode}, AppArmor {apparmor_mode}, process label {label or '-'}"
    confined = selinux_mode == "enforcing" or (apparmor_mode == "enabled" and label not in (None, "", "unconfined"))
    if confined:
        return CheckResult("security_modules", "pass", text, None, detail)
    return CheckResult(
        "security_modules",
        "warn",
        text + ": zguard is not confined by a mandatory access control policy",
        "load a policy for zguard (SELinux: setenforce 1 and a zguard domain; AppArmor: aa-enforce /etc/apparmor.d/zguard)",
        detail,
    )


def startup_problems(
    settings: Settings,
    model_dir: Path,
    *,
    demo: bool,
    who: ProcessUser | None = None,
    proc_root: Path = PROC,
    sys_root: Path = SYS,
) -> tuple[list[str], list[CheckResult]]:
    """What `serve` refuses to start with (one line each: path, problem, fix) and the warnings."""
    who = who or ProcessUser.current()
    findings = [running_as(who, allow_root=settings.integrity.allow_root)]
    findings.append(state_dir_permissions(settings.state_dir, who))
    findings += secret_file_permissions(secret_files(settings))
    if not demo:  # the demo model is built by zguard itself, so it is necessarily its own
        findings += model_permissions(model_dir, who)
    if settings.integrity.require_encrypted_model_storage:
        findings.append(storage_encryption(model_dir, required=True, proc_root=proc_root, sys_root=sys_root))
    refusals = [f"{f.message}; fix: {f.fix}" for f in findings if f.severity == "fail"]
    return refusals, [f for f in findings if f.severity == "warn"]
