"""The model directory, as the host checks see it (the rules: zguard.ops.host_checks): there,
readable by zguard's account, not writable by it, closed to others, on dm-crypt; and, for
`doctor`, whether its manifest has a second admin's approval (`model_change_finding`)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from zguard import state_paths
from zguard.audit.model_changes import state_of, unapproved
from zguard.audit.store import AuditStore
from zguard.config import Settings
from zguard.integrity.manifest import ManifestError, read_manifest
from zguard.ops.findings import CheckResult, Host, ProcessUser, Severity, blocking_folder, describe, unreachable
from zguard.ops.mounts import PROC, SYS, encryption_layers, mount_of
from zguard.store import migrate
from zguard.store.database import create_store_engine, database_url
from zguard.store.errors import SchemaNotCurrent

MAX_SHOWN = 5  # offending paths named in one finding


def _walk(root: Path, errors: list[OSError]) -> Iterator[Path]:
    yield root
    for base, dirs, names in os.walk(root, onerror=errors.append):
        for name in sorted(dirs) + sorted(names):
            yield Path(base) / name


def _named(paths: list[str]) -> str:
    shown = ", ".join(paths[:MAX_SHOWN])
    return shown + (f" and {len(paths) - MAX_SHOWN} more" if len(paths) > MAX_SHOWN else "")


def model_fix(model_dir: Path, who: ProcessUser) -> str:
    return f"chown -R root:{who.group_name()} {model_dir} && chmod -R u=rwX,g=rX,o= {model_dir}"


def model_dir_problem(model_dir: Path, who: ProcessUser) -> CheckResult | None:
    """Why `model_dir` cannot be a model zguard's account loads (missing, no model_index.json,
    unreachable), or None. A missing one is most often an encrypted volume not mounted."""
    detail = {"path": str(model_dir)}
    blocked = blocking_folder(model_dir, who)
    if blocked is not None:
        return unreachable("model_files_readable", "model.path", model_dir, who, who.group_name())
    try:
        (model_dir / "model_index.json").stat()
    except (FileNotFoundError, NotADirectoryError):
        try:
            present = model_dir.is_dir()
        except OSError:
            present = False
        state = "is empty or not a diffusers-format model directory" if present else "does not exist"
        return CheckResult(
            "model_files_readable",
            "fail",
            f"{model_dir}: no model_index.json (the directory {state}): is the encrypted volume mounted? "
            f"(findmnt -T {model_dir} shows what is mounted there)",
            "open and mount the model volume (cryptsetup open DEVICE NAME && mount /dev/mapper/NAME MOUNT_POINT, "
            "or start its crypttab and fstab units), or point model.path at the Z-Image-Turbo directory",
            detail,
        )
    except OSError as exc:
        return CheckResult(
            "model_files_readable",
            "fail",
            f"{model_dir}: the account zguard runs as (uid {who.uid}) cannot read it ({exc.strerror})",
            model_fix(model_dir, who),
            detail,
        )
    return None


def model_permissions(model_dir: Path, who: ProcessUser) -> list[CheckResult]:
    """Every model file readable by zguard's account (folders: r and x) and none writable by it
    (root owns them, the service group reads them: 750/640 or tighter): FAIL otherwise; readable
    by others: WARN."""
    errors: list[OSError] = []
    unreadable: dict[str, str] = {}
    writable: list[str] = []
    open_to_others: list[str] = []
    for path in _walk(model_dir, errors):
        try:
            st = path.lstat()
        except OSError as exc:
            unreadable[str(path)] = f"{path} ({exc.strerror})"
            continue
        if stat.S_ISLNK(st.st_mode):
            continue  # the manifest check decides about links; their own mode means nothing
        mode = stat.S_IMODE(st.st_mode)
        if not who.can_read(st):
            unreadable[str(path)] = f"{path} ({describe(st)})"
        owned = st.st_uid == who.uid and who.uid != 0
        if owned or mode & stat.S_IWOTH or (mode & stat.S_IWGRP and st.st_gid in who.gids):
            writable.append(f"{path} ({st.st_uid}:{st.st_gid} {mode:o})")
        if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IXOTH):
            open_to_others.append(str(path))
    for error in errors:  # a folder zguard itself could not list (so its files were not seen)
        unreadable.setdefault(str(error.filename), f"{error.filename} ({error.strerror})")
    fix = model_fix(model_dir, who)
    detail = {"path": str(model_dir)}
    findings = [
        CheckResult(
            "model_files_readable",
            "fail",
            f"{model_dir}: {len(unreadable)} file(s) or folder(s) the account zguard runs as (uid {who.uid}) "
            f"cannot read: {_named(list(unreadable.values()))}",
            fix,
            detail,
        )
        if unreadable
        else CheckResult("model_files_readable", "pass", f"{model_dir}: readable by uid {who.uid}", None, detail)
    ]
    if writable:
        findings.append(
            CheckResult(
                "model_files_read_only",
                "fail",
                f"{model_dir}: {len(writable)} file(s) or folder(s) the account zguard runs as (uid {who.uid}) "
                f"can change: {_named(writable)}",
                fix,
                detail,
            )
        )
    else:
        findings.append(
            CheckResult("model_files_read_only", "pass", f"{model_dir}: not writable by uid {who.uid}", None, detail)
        )
    if open_to_others:
        findings.append(
            CheckResult(
                "model_files_private",
                "warn",
                f"{model_dir}: {len(open_to_others)} file(s) or folder(s) open to other accounts: {_named(open_to_others)}",
                f"chmod -R o= {model_dir}",
                detail,
            )
        )
    else:
        findings.append(
            CheckResult("model_files_private", "pass", f"{model_dir}: closed to other accounts", None, detail)
        )
    return findings


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
            {"path": str(path)},
        )
    detail: dict[str, Any] = {
        "path": str(path),
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


def model_findings(settings: Settings, host: Host) -> list[CheckResult]:
    """The model checks; the demo model is exempt from the permission checks only when zguard
    builds it in its own state_dir (model.path unset)."""
    required = settings.integrity.require_encrypted_model_storage
    path = settings.model.path
    if path is None:
        demo = state_paths.demo_model_dir(settings)
        return [
            CheckResult(
                "model_files_read_only",
                "warn",
                f"serving the demo model ({demo}, random weights, built and owned by zguard itself)",
                "set model.path to the Z-Image-Turbo directory (root-owned, mode 750/640)",
                {"path": str(demo)},
            ),
            storage_encryption(demo, required=required, proc_root=host.proc_root, sys_root=host.sys_root),
        ]
    problem = model_dir_problem(path, host.who)
    return [
        *([problem] if problem is not None else model_permissions(path, host.who)),
        storage_encryption(path, required=required, proc_root=host.proc_root, sys_root=host.sys_root),
    ]


def model_change_finding(settings: Settings) -> CheckResult | None:
    """`model.change_approval_required`: whether the manifest `serve` would load has a second
    admin's approval in the audit trail (zguard.audit.model_changes), as `serve` checks at start.
    None when the setting is off."""
    check = "model_change_approved"
    if not settings.model.change_approval_required:
        return None
    model_dir = settings.model.path
    if model_dir is None:
        return CheckResult(check, "pass", "serving the demo model zguard builds itself: no model change to approve")
    detail = {"path": str(model_dir)}
    try:
        digest = read_manifest(model_dir).digest
    except ManifestError as exc:
        return CheckResult(check, "fail", exc.message.splitlines()[0], "`zguard model pin DIR --as ADMIN`", detail)
    engine = create_store_engine(database_url(settings))
    try:
        migrate.check_schema_current(engine)
        state = state_of(AuditStore(engine), digest)
    except (SQLAlchemyError, SchemaNotCurrent, OSError) as exc:  # a finding, not a crash
        return CheckResult(
            check, "fail", f"cannot read the model change approvals: {type(exc).__name__}: {exc}", "zguard audit status"
        )
    finally:
        engine.dispose()
    if state.approval is None:
        refusal = unapproved(model_dir, state)
        return CheckResult(
            check, "fail", f"{refusal.code}: {refusal.message}", refusal.fix, {**detail, "digest": digest}
        )
    return CheckResult(
        check,
        "pass",
        f"manifest {digest} pinned by {state.approval.requester}, approved by {state.approval.principal}",
        None,
        {**detail, "digest": digest},
    )
