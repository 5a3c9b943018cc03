"""Settings files and key files, as the host checks see them (the rules: zguard.ops.host_checks).

Settings files (the settings file, the banned-term lists, the manifest and auditor public keys,
TLS certificates and CAs) decide what zguard enforces: root's alone to change. Key files hold
secrets: root's and zguard's own account's to change, no other account's to read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr

from zguard import state_paths
from zguard.config import Settings
from zguard.config.loader import config_path
from zguard.ops.findings import CheckResult, ProcessUser, blocking_folder, describe, group_name, unreachable
from zguard.policy.terms import BUILTIN

SETTINGS_FILE_LABEL = "settings file"


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
    """Which keys of a parsed settings file hold secrets (password hashes, database URL, Redis URL...)."""
    return _secret_keys(raw, Settings)


@dataclass(frozen=True)
class SettingsFile:
    """The settings file zguard reads and its parsed contents (None when it does not parse:
    loading the settings reports that)."""

    path: Path
    raw: Any = None

    @classmethod
    def find(cls, cli_value: str | None, environ: Mapping[str, str] = os.environ) -> SettingsFile | None:
        """`--config`, else `$ZGUARD_CONFIG`, else `config/zguard.yaml`; None when there is none."""
        path, _named = config_path(cli_value, environ)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            return cls(path)  # the checks say who cannot read it
        try:
            return cls(path, yaml.safe_load(text))
        except yaml.YAMLError:
            return cls(path)

    @property
    def label(self) -> str:
        """`settings file`, or `settings file (database.url, ...)` naming the secrets it sets."""
        keys = config_secret_keys(self.raw)
        return f"{SETTINGS_FILE_LABEL} ({', '.join(keys)})" if keys else SETTINGS_FILE_LABEL


def settings_files(settings: Settings, source: SettingsFile | None = None) -> dict[str, Path]:
    """Files that decide what zguard enforces, by what they are: root's to change."""
    files = {source.label: source.path} if source is not None else {}
    for name in settings.policy.banned_terms_files:
        if not name.startswith(BUILTIN):
            files[f"policy.banned_terms_files {name}"] = Path(name)
    anchors = {
        "model.manifest_public_key": settings.model.manifest_public_key,
        "audit.auditor_public_key_file": settings.audit.auditor_public_key_file,
        "api.tls_cert_file": settings.api.tls_cert_file,
        "api.tls_client_ca_file": settings.api.tls_client_ca_file,
        "console.tls_cert_file": settings.console.tls_cert_file,
        "audit.syslog.ca_file": settings.audit.syslog.ca_file,
        "audit.syslog.cert_file": settings.audit.syslog.cert_file,
    }
    files.update({what: path for what, path in anchors.items() if path is not None})
    return files


def secret_files(settings: Settings, source: SettingsFile | None = None) -> dict[str, Path]:
    """Files that hold secrets, by what they are: key files, the demo token, the settings file
    when it sets a secret key."""
    files = state_paths.key_files(settings)
    if settings.audit.syslog.key_file is not None:
        files["audit.syslog.key_file"] = settings.audit.syslog.key_file
    notifications = settings.notifications
    if notifications.webhook.secret_file is not None:
        files["notifications.webhook.secret_file"] = notifications.webhook.secret_file
    if notifications.email.password_file is not None:
        files["notifications.email.password_file"] = notifications.email.password_file
    for name, listener in (("api", settings.api), ("console", settings.console)):
        if listener.tls_key_file is not None:
            files[f"{name}.tls_key_file"] = listener.tls_key_file
    if source is not None and config_secret_keys(source.raw):
        files[source.label] = source.path
    return files


# --- who can read and change a file -----------------------------------------------------------


def _changers(st: os.stat_result, who: ProcessUser, *, folder: bool = False) -> tuple[list[str], list[str]]:
    """(how zguard's account can change it, which other accounts can), root aside. In a sticky
    folder (/tmp) the group and world write bits let no one replace another account's file."""
    mine: list[str] = []
    others: list[str] = []
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != 0:
        (mine if st.st_uid == who.uid else others).append(f"uid {st.st_uid} (the owner)")
    if folder and mode & stat.S_ISVTX:
        return mine, others
    if mode & stat.S_IWGRP:
        group = f"group {group_name(st.st_gid)} (gid {st.st_gid})"
        (mine if st.st_gid in who.gids else others).append(group)
    if mode & stat.S_IWOTH:
        others = ["every account"]  # says it all
    return ([] if who.uid == 0 else mine), others  # root can change anything: `not_root` says so


def _folder_changers(path: Path, who: ProcessUser) -> tuple[list[str], list[str]]:
    """`_changers` of the folder holding `path`: whoever can change it can replace the file."""
    try:
        return _changers(path.parent.stat(), who, folder=True)
    except OSError:
        return [], []


def file_findings(
    what: str, path: Path, who: ProcessUser, *, key: bool, secret: bool, demo: bool, state_dir: Path
) -> list[CheckResult]:
    """A settings file (`key` False: root's alone to change) or a key file (`key` True: root's and
    zguard's account's). `secret`: no other account may read it. `demo`: zguard serves the demo
    model it built, so its account changing a settings file is a WARN (a checkout run)."""
    check = "key_files_protected" if key else "settings_files_protected"
    group = who.group_name()
    try:
        st = path.stat()
    except FileNotFoundError:
        return []  # not created yet, or not configured: loading names a missing file
    except OSError:
        return [unreachable(check, what, path, who, group)]
    if blocking_folder(path, who) is not None:
        return [unreachable(check, what, path, who, group)]
    mine, others = _changers(st, who)
    folder_mine, folder_others = _folder_changers(path, who)
    failures: list[str] = []
    warnings: list[str] = []
    if others or folder_others:
        named = others + [f"{who_} through its folder {path.parent}" for who_ in folder_others]
        failures.append(f"can be changed by {', '.join(named)}")
    if not key and (mine or folder_mine):
        named = mine + [f"{how} through its folder {path.parent}" for how in folder_mine]
        (warnings if demo else failures).append(
            f"the account zguard runs as (uid {who.uid}) can change it ({', '.join(named)}): "
            "a compromised zguard could widen its own access"
        )
    if not who.can_read(st):
        failures.append(f"the account zguard runs as (uid {who.uid}) cannot read it")
    inside_state = path.parent == state_dir
    if folder_others or (folder_mine and not key):
        fix = (
            f"move it to a folder only root can change: install -o root -g {group} -m 640 {path} "
            f"/etc/zguard/{path.name}, and point zguard there"
        )
    elif key and inside_state:
        fix = f"chown {who.uid}:{group} {path} && chmod 600 {path}"
    else:
        fix = f"chown root:{group} {path} && chmod 640 {path}"
    detail = {"path": str(path), "mode": f"{stat.S_IMODE(st.st_mode):o}", "owner": f"{st.st_uid}:{st.st_gid}"}
    problems = failures + warnings
    findings = [
        CheckResult(
            check,
            "fail" if failures else "warn",
            f"{path} ({what}, {describe(st)}): {'; '.join(problems)}",
            fix,
            detail,
        )
        if problems
        else CheckResult(check, "pass", f"{path} ({what}): {describe(st)}", None, detail)
    ]
    if secret:
        findings.append(_private(what, path, st, who))
    return findings


def _private(what: str, path: Path, st: os.stat_result, who: ProcessUser) -> CheckResult:
    mode = stat.S_IMODE(st.st_mode)
    detail = {"path": str(path)}
    if mode & stat.S_IROTH:
        return CheckResult(
            "secret_file_private",
            "fail",
            f"{path} ({what}) is readable by every account on this host (mode {mode:o})",
            f"chmod o-rwx {path}  (0600, or 0640 with the service group)",
            detail,
        )
    if mode & stat.S_IRGRP and st.st_gid not in who.gids and st.st_uid != who.uid:
        return CheckResult(
            "secret_file_private",
            "fail",
            f"{path} ({what}) is readable by the members of group {group_name(st.st_gid)} (gid {st.st_gid}), "
            f"which the account zguard runs as does not hold (mode {mode:o})",
            f"chgrp {who.group_name()} {path} && chmod 640 {path}  (or chmod g-rwx {path})",
            detail,
        )
    return CheckResult("secret_file_private", "pass", f"{path} ({what}): mode {mode:o}", None, detail)


def secret_file_permissions(files: Mapping[str, Path], who: ProcessUser | None = None) -> list[CheckResult]:
    """Files holding secrets must not be readable by other accounts: FAIL."""
    who = who or ProcessUser.current()
    findings = []
    for what, path in files.items():
        try:
            st = path.stat()
        except OSError:
            continue  # not created yet, or not configured: nothing to leak (unreachable: file_findings)
        findings.append(_private(what, path, st, who))
    if not findings:
        findings.append(CheckResult("secret_file_private", "pass", "no secret files yet (none configured or created)"))
    return findings
