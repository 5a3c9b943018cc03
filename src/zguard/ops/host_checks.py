"""Host integrity checks, in one place: what the host must be before zguard serves from it.

`host_findings` is the one list, and every command runs it: `serve` refuses to start on its
FAILs (exit 2; zguard.serve.lifecycle) and logs its WARNs; `config check` refuses on the same
FAILs (zguard.cli.serve; run as root it cannot see what the service account sees, so it says so
in a warning instead of refusing root); `zguard doctor` prints it (and more: zguard.ops.doctor);
`zguard scan` reports each finding that is not PASS (FAIL as `high`, WARN as `low`). So each
problem reads the same everywhere: the path, what is wrong, and the command that fixes it. Its
parts live in zguard.ops.findings (the vocabulary), zguard.ops.file_checks (settings and key
files), zguard.ops.model_checks and zguard.ops.mounts; commands import them from here.

    not_root                  running as root: FAIL, WARN with integrity.allow_root: true
    state_dir                 owned by the account zguard runs as, mode 0700 (absent: WARN, serve makes it)
    settings_files_protected  the settings file, the banned-term lists, the manifest and auditor public keys,
                              TLS certificates and CAs: readable by zguard's account; changeable by root only
    key_files_protected       every key file (token, audit signing, prompt, watermark, provenance signing,
                              TLS and syslog keys, the demo token): readable by zguard's account; changeable
                              by no account but root and zguard's own
    secret_file_private       key files and a settings file that sets a secret: readable by no other account
    model_files_readable      model.path exists, holds model_index.json, and zguard's account can read every
                              file and enter every folder of it (and every folder above it)
    model_files_read_only     no model file or folder zguard's account could change
    model_files_private       model files closed to other accounts: WARN
    model_storage_encrypted   on dm-crypt/LUKS (zguard.ops.mounts): FAIL when
                              integrity.require_encrypted_model_storage, else WARN

Decisions, and why:
- A settings file (or list, or trust anchor) that zguard's own account can change is refused: a
  compromised zguard could add `api_auth.users` with any role, widen `api.allow` or empty the
  banned-term lists, and the change would outlive the compromise. It is a WARN only while zguard
  serves the demo model it built itself (model.path unset, images are noise): that is a
  checkout run (`make serve`) by a developer who owns the checkout and its settings. The folder
  holding such a file counts too (whoever can change the folder can replace the file); only the
  folder itself, not those above it, and a sticky folder (/tmp) lets no one replace another's file.
- Key files zguard writes itself live in its state directory, owned by its account: that account
  changing them gains nothing it does not hold already. Any other account that can change or
  read them fails.
- Password hashes are secrets here, as in /etc/shadow: a readable bcrypt hash can be attacked
  offline. So a settings file with `api_auth.users` is refused when other accounts can read it.
  git stores no mode 0600, which is why the README installs `config/security.yaml` with
  `install -m 600` (or root:GROUP 0640) rather than serving the checkout's copy. Fail closed.
- The demo model is exempt from the model checks only when zguard built it, in its own
  state_dir (model.path unset). A `zguard-demo.json` in an operator's model.path exempts nothing.
- A model directory that is missing or has no model_index.json is most often an encrypted
  volume that is not open or not mounted (the mount point is left empty): the message asks, and
  the encryption check still runs on the path.
- Access is decided from owners and mode bits as the kernel does (owner class, group class,
  others; root reads everything); POSIX ACLs and read-only mounts are not consulted, so a check
  may fail a file an ACL would have allowed: the fix names the mode that needs no ACL.
- Nothing here raises on an unreadable path: a PermissionError is a finding with its fix.
"""

from __future__ import annotations

import stat
from pathlib import Path

from zguard.config import Settings
from zguard.errors import ConfigError
from zguard.ops.file_checks import (
    SettingsFile,
    config_secret_keys,
    file_findings,
    secret_file_permissions,
    secret_files,
    settings_files,
)
from zguard.ops.findings import SEVERITY_ORDER, CheckResult, Host, ProcessUser, Severity, worst
from zguard.ops.model_checks import model_dir_problem, model_findings, model_permissions, storage_encryption
from zguard.ops.mounts import PROC, SYS

__all__ = [  # the one place the commands and tests import the host checks from
    "HOST_FIX",
    "SEVERITY_ORDER",
    "CheckResult",
    "Host",
    "ProcessUser",
    "SettingsFile",
    "Severity",
    "config_secret_keys",
    "host_findings",
    "model_dir_problem",
    "model_permissions",
    "refuse_unsafe_host",
    "running_as",
    "secret_file_permissions",
    "secret_files",
    "security_modules",
    "startup_problems",
    "state_dir_permissions",
    "storage_encryption",
    "tighten_state_dir",
    "worst",
]
HOST_FIX = "each line ends with the command that fixes it; `zguard doctor` shows every check"


# --- the account and its state directory ------------------------------------------------------


def state_dir_permissions(state_dir: Path, who: ProcessUser) -> CheckResult:
    """The state directory: mode 0700, owned by zguard's account."""
    detail = {"path": str(state_dir)}
    try:
        st = state_dir.stat()
    except FileNotFoundError:
        return CheckResult(
            "state_dir", "warn", f"{state_dir}: does not exist yet (`zguard serve` creates it, mode 0700)", None, detail
        )
    except OSError as exc:
        return CheckResult(
            "state_dir", "fail", f"{state_dir}: cannot be read ({exc.strerror})", f"namei -l {state_dir}", detail
        )
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != who.uid:
        return CheckResult(
            "state_dir",
            "fail",
            f"{state_dir}: owned by uid {st.st_uid}, not by the account zguard runs as (uid {who.uid})",
            f"chown {who.uid}:{who.group_name()} {state_dir} && chmod 700 {state_dir}",
            detail,
        )
    if mode & 0o077:
        return CheckResult(
            "state_dir",
            "fail",
            f"{state_dir}: mode {mode:o}, other accounts can enter it",
            f"chmod 700 {state_dir}",
            detail,
        )
    return CheckResult("state_dir", "pass", f"{state_dir}: mode {mode:o}, owned by uid {st.st_uid}", None, detail)


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


def running_as(who: ProcessUser, *, allow_root: bool, demo: bool = False) -> CheckResult:
    """Root is refused unless `integrity.allow_root`, except for the demo model zguard builds
    itself (no `model.path`): in a fresh container root is all there is, and a demo with random
    weights and no real model files to protect starts, loudly warned. A real model never does."""
    if who.uid != 0:
        return CheckResult("not_root", "pass", f"running as uid {who.uid}")
    if demo and not allow_root:
        return CheckResult(
            "not_root",
            "warn",
            "RUNNING AS ROOT with the demo model: allowed for a try-out only; a real model.path is refused as root",
            "run as a dedicated account: useradd --system zguard; systemd User=zguard (zguard install does it)",
        )
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


# --- mandatory access control (doctor only: a report, never a refusal) ------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip().strip("\x00")
    except OSError:
        return None


SECURITY_MODULES_FIX = (
    "zguard ships no SELinux or AppArmor policy; what confines it is its systemd unit's sandboxing "
    "(zguard install writes it: systemd-analyze security zguard.service). For mandatory access control "
    "write a site policy for the zguard binary: SELinux, a zguard_t domain (sepolicy generate --init "
    "PATH-TO-zguard) with setenforce 1; AppArmor, a profile (aa-genprof PATH-TO-zguard) put in enforce mode"
)


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
        SECURITY_MODULES_FIX,
        detail,
    )


# --- the one list -----------------------------------------------------------------------------


def host_findings(
    settings: Settings, host: Host | None = None, source: SettingsFile | None = None
) -> list[CheckResult]:
    """Every host integrity check, in the order they are printed; `source`: the settings file read."""
    host = host or Host.current()
    who = host.who
    demo = settings.model.path is None
    findings = [running_as(who, allow_root=settings.integrity.allow_root, demo=settings.model.path is None)]
    findings.append(state_dir_permissions(settings.state_dir, who))
    secrets = secret_files(settings, source)
    for what, path in settings_files(settings, source).items():
        secret = source is not None and path == source.path and what in secrets
        findings += file_findings(what, path, who, key=False, secret=secret, demo=demo, state_dir=settings.state_dir)
    for what, path in secrets.items():
        if source is None or path != source.path:
            findings += file_findings(what, path, who, key=True, secret=True, demo=demo, state_dir=settings.state_dir)
    if not any(f.check == "secret_file_private" for f in findings):
        findings.append(CheckResult("secret_file_private", "pass", "no secret files yet (none configured or created)"))
    findings += model_findings(settings, host)
    return findings


def startup_problems(
    settings: Settings, host: Host | None = None, source: SettingsFile | None = None
) -> tuple[list[str], list[CheckResult]]:
    """What `serve` refuses to start with (one line each: path, problem, fix) and the warnings."""
    findings = host_findings(settings, host, source)
    return [f.line() for f in findings if f.severity == "fail"], [f for f in findings if f.severity == "warn"]


def refuse_unsafe_host(
    settings: Settings, host: Host | None = None, source: SettingsFile | None = None
) -> list[CheckResult]:
    """Raise ConfigError (exit 2) naming every FAIL of `host_findings`; return the WARNs."""
    refusals, warnings = startup_problems(settings, host, source)
    if refusals:
        raise ConfigError(refusals, fix=HOST_FIX)
    return warnings
