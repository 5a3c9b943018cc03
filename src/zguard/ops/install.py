"""`zguard install`: the deployment guide's manual set-up as one repeatable, checkable command.

    zguard install --dry-run            print the plan; change nothing (any user may run it)
    zguard install                      as root: accounts, directories, settings file, units
    zguard install --enable             ... and systemctl enable --now zguard.service zguard-scan.timer
    zguard install --root DIR           into a staging root: accounts via useradd/groupadd --root DIR,
                                        owners from DIR/etc/passwd and DIR/etc/group; the host untouched

What it makes (paths configurable):

    group ai-service, system user ai-runner (primary group ai-service, shell /usr/sbin/nologin, no home)
    /opt/z-image-turbo      root:ai-service 750   the application (venv/bin/zguard): read-only to the service
    /etc/zguard             root:ai-service 750   zguard.yaml 640 (a starter, never overwritten)
    /var/lib/zguard         ai-runner:ai-service 700   state: database, keys
    /opt/secure-models      root:ai-service 750, every file below 640: the service reads, never writes
    /etc/systemd/system     zguard.service, zguard-scan.service, zguard-scan.timer (root 644)

Idempotent: each step first checks what is there and acts only on a difference, so a second run
changes nothing and says so. The settings file is the operator's once written: only its owner and
mode are corrected. Nothing is enabled or started without `--enable`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zguard.errors import OperatorError
from zguard.ops.units import ENABLED_UNITS, UNIT_NAMES, render_unit

DEFAULT_USER = "ai-runner"
DEFAULT_GROUP = "ai-service"
DEFAULT_APP_DIR = Path("/opt/z-image-turbo")
DEFAULT_CONFIG_DIR = Path("/etc/zguard")
DEFAULT_STATE_DIR = Path("/var/lib/zguard")
DEFAULT_MODEL_DIR = Path("/opt/secure-models")
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
NOLOGIN = "/usr/sbin/nologin"
NO_HOME = "/nonexistent"  # Debian's convention for system users without a home
SETTINGS_FILE = "zguard.yaml"
MODEL_SUBDIR = "Z-Image-Turbo"
OSV_DB_FILE = "osv-pypi.zip"  # osv.dev's PyPI export, copied in by the operator each month
_NO_LOGIN_SHELLS = frozenset({NOLOGIN, "/sbin/nologin", "/usr/bin/nologin", "/bin/false", "/usr/bin/false"})


class InstallError(OperatorError):
    """A step could not be carried out; `message` names it and the reason."""

    code = "install_step_failed"
    fix = "mend what the message names and run `zguard install` again: the steps done stay done"


@dataclass(frozen=True)
class InstallLayout:
    """Where everything goes, as paths on the target system (a staging root is prefixed later)."""

    app_dir: Path = DEFAULT_APP_DIR
    config_dir: Path = DEFAULT_CONFIG_DIR
    state_dir: Path = DEFAULT_STATE_DIR
    model_dir: Path = DEFAULT_MODEL_DIR
    unit_dir: Path = DEFAULT_UNIT_DIR
    user: str = DEFAULT_USER
    group: str = DEFAULT_GROUP
    zguard_bin: Path | None = None  # default: app_dir/venv/bin/zguard
    gpus: int = 1
    scan_args: str | None = None  # default: --vuln-db CONFIG_DIR/osv-pypi.zip --fail-on high

    @property
    def executable(self) -> Path:
        return self.zguard_bin or self.app_dir / "venv" / "bin" / "zguard"

    @property
    def scan_arguments(self) -> str:
        return self.scan_args or f"--vuln-db {self.config_dir / OSV_DB_FILE} --fail-on high"

    @property
    def settings_file(self) -> Path:
        return self.config_dir / SETTINGS_FILE

    def unit_fields(self) -> dict[str, str]:
        if self.state_dir.parent == Path("/var/lib"):
            state = f"StateDirectory={self.state_dir.name}\nStateDirectoryMode=0700"
        else:
            state = f"ReadWritePaths={self.state_dir}"
        devices = "\n".join(f"DeviceAllow=/dev/nvidia{index} rw" for index in range(self.gpus))
        return {
            "USER": self.user,
            "GROUP": self.group,
            "ZGUARD": str(self.executable),
            "CONFIG": str(self.settings_file),
            "APP_DIR": str(self.app_dir),
            "MODEL_DIR": str(self.model_dir),
            "STATE_DIR": str(self.state_dir),
            "STATE_DIRECTIVES": state,
            "NVIDIA_DEVICES": devices,
            "SCAN_ARGS": self.scan_arguments,
        }

    def units(self) -> dict[str, str]:
        fields = self.unit_fields()
        return {name: render_unit(name, fields) for name in UNIT_NAMES}

    def starter_settings(self) -> str:
        return STARTER_SETTINGS.format(
            state_dir=self.state_dir, model_path=self.model_dir / MODEL_SUBDIR, config=self.settings_file
        )


STARTER_SETTINGS = """\
# zguard settings, written once by `zguard install` (never overwritten); docs/settings.md lists
# every key. Check with: zguard config check --config {config}
state_dir: {state_dir}
model:
  path: {model_path}   # zguard model pin {model_path} (as root) before the first start
  manifest_required: true
integrity:
  require_encrypted_model_storage: true   # the model directory must lie on the LUKS volume
# The network plan (docs/deployment.md): the API for the business network, the console for the
# management network. Both stay on loopback until you set the bind address and the allowlist.
api:
  host: 127.0.0.1      # e.g. the address on the business network
  port: 5000
  allow: [127.0.0.0/8] # e.g. [10.20.0.0/16]: business systems
console:
  host: 127.0.0.1      # e.g. the address on the management network
  port: 7860
  allow: [127.0.0.0/8] # e.g. [10.10.0.0/24]: administrators and auditors
rate_limit: 10/分钟
audit:
  retention_days: 180
  syslog:
    transport: "off"   # tls: host, port 6514, ca_file (docs/deployment.md, step 9)
"""


# --- reading accounts from a root -------------------------------------------------------------


def _entries(path: Path) -> dict[str, list[str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    return {fields[0]: fields for line in lines if (fields := line.split(":")) and len(fields) >= 4}


@dataclass(frozen=True)
class Accounts:
    """The accounts of one root, read from its etc/passwd and etc/group (not NSS: a staging root
    has its own, and install creates local accounts)."""

    root: Path

    def user(self, name: str) -> list[str] | None:
        return _entries(self.root / "etc" / "passwd").get(name)

    def gid(self, name: str) -> int | None:
        entry = _entries(self.root / "etc" / "group").get(name)
        return int(entry[2]) if entry else None

    def uid(self, name: str) -> int | None:
        entry = self.user(name)
        return int(entry[2]) if entry else None


def _make_dirs(path: Path) -> None:
    """mkdir -p with every parent created 755, whatever the umask (the service must traverse them)."""
    missing = []
    for parent in [path, *path.parents]:
        if parent.exists():
            break
        missing.append(parent)
    for folder in reversed(missing):
        folder.mkdir()
        os.chmod(folder, 0o755)  # noqa: S103 - parents such as /opt: the service account must traverse them


def _login_defs() -> str:
    host = Path("/etc/login.defs")
    if host.is_file():
        return host.read_text(encoding="utf-8", errors="replace")
    return "SYS_UID_MIN 100\nSYS_UID_MAX 999\nSYS_GID_MIN 100\nSYS_GID_MAX 999\nUID_MIN 1000\nGID_MIN 1000\n"


def _run(argv: Sequence[str]) -> None:
    if shutil.which(argv[0]) is None:
        raise InstallError(f"{argv[0]} is not installed (needed for: {' '.join(argv)})")
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv, no shell
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InstallError(f"`{shlex.join(argv)}` failed ({done.returncode}): {reason}")


# --- steps ------------------------------------------------------------------------------------


@dataclass
class Step:
    """One thing install sees to. `pending()` says what it would change (None: already in place),
    `apply()` changes it; both run against `root`."""

    what: str
    pending: Callable[[], str | None]
    apply: Callable[[], None]


@dataclass
class Installer:
    layout: InstallLayout
    root: Path = Path("/")
    enable: bool = False
    run: Callable[[Sequence[str]], None] = _run

    @property
    def staged(self) -> bool:
        return self.root.resolve() != Path("/")

    def on_disk(self, path: Path) -> Path:
        return self.root / path.relative_to("/")

    @property
    def accounts(self) -> Accounts:
        return Accounts(self.root)

    def root_option(self) -> list[str]:
        return ["--root", str(self.root.resolve())] if self.staged else []

    def steps(self) -> list[Step]:
        lay = self.layout
        steps = [self._staging_root()] if self.staged else []
        steps += [self._group(), self._user()]
        steps += [
            self._directory(lay.app_dir, "root", lay.group, 0o750),
            self._directory(lay.config_dir, "root", lay.group, 0o750),
            self._file(lay.settings_file, lay.starter_settings(), "root", lay.group, 0o640, replace=False),
            self._directory(lay.state_dir, lay.user, lay.group, 0o700),
            self._directory(lay.model_dir, "root", lay.group, 0o750),
            self._model_tree(),
            self._directory(lay.unit_dir, "root", "root", 0o755),
        ]
        steps += [
            self._file(lay.unit_dir / name, text, "root", "root", 0o644, replace=True)
            for name, text in lay.units().items()
        ]
        if self.enable:
            steps.append(self._enable())
        return steps

    # accounts

    def _staging_root(self) -> Step:
        etc = self.root / "etc"
        files = {
            "passwd": ("root:x:0:0:root:/root:/bin/sh\n", 0o644),
            "group": ("root:x:0:\n", 0o644),
            "shadow": ("root:*:1:0:99999:7:::\n", 0o640),
            "gshadow": ("root:*::\n", 0o640),
            "login.defs": (_login_defs(), 0o644),
        }
        missing = [name for name in files if not (etc / name).exists()]

        def apply() -> None:
            _make_dirs(etc)
            for name in missing:
                text, mode = files[name]
                (etc / name).write_text(text, encoding="utf-8")
                os.chmod(etc / name, mode)

        return Step(
            f"staging root {self.root}", lambda: f"create etc/{', etc/'.join(missing)}" if missing else None, apply
        )

    def _group(self) -> Step:
        name = self.layout.group
        argv = ["groupadd", *self.root_option(), "--system", name]
        return Step(
            f"group {name}",
            lambda: None if self.accounts.gid(name) is not None else f"create: {shlex.join(argv)}",
            lambda: self.run(argv),
        )

    def _user(self) -> Step:
        lay = self.layout

        def pending() -> str | None:
            entry = self.accounts.user(lay.user)
            if entry is None:
                return f"create: {shlex.join(self._useradd())}"
            changes = []
            if entry[6:7] and entry[6] not in _NO_LOGIN_SHELLS:
                changes.append(f"shell {entry[6]} -> {NOLOGIN}")
            if int(entry[3]) != self.accounts.gid(lay.group):
                changes.append(f"primary group {entry[3]} -> {lay.group}")
            return "; ".join(changes) or None

        def apply() -> None:
            if self.accounts.user(lay.user) is None:
                self.run(self._useradd())
            else:
                self.run(["usermod", *self.root_option(), "--shell", NOLOGIN, "--gid", lay.group, lay.user])

        return Step(f"user {lay.user}", pending, apply)

    def _useradd(self) -> list[str]:
        lay = self.layout
        return [
            "useradd",
            *self.root_option(),
            "--system",
            "--gid",
            lay.group,
            "--no-create-home",
            "--home-dir",
            NO_HOME,
            "--shell",
            NOLOGIN,
            "--comment",
            "zguard service (Z-Image-Turbo)",
            lay.user,
        ]

    # files

    def _ids(self, user: str, group: str) -> tuple[int, int] | None:
        uid, gid = self.accounts.uid(user), self.accounts.gid(group)
        if user == "root":
            uid = 0
        if group == "root":
            gid = 0
        return None if uid is None or gid is None else (uid, gid)

    def _differences(self, path: Path, user: str, group: str, mode: int) -> list[str]:
        st = path.lstat()
        changes = []
        ids = self._ids(user, group)
        if ids is None or (st.st_uid, st.st_gid) != ids:
            changes.append(f"owner {st.st_uid}:{st.st_gid} -> {user}:{group}")
        if stat.S_IMODE(st.st_mode) != mode:
            changes.append(f"mode {stat.S_IMODE(st.st_mode):o} -> {mode:o}")
        return changes

    def _set_owner_mode(self, path: Path, user: str, group: str, mode: int) -> None:
        ids = self._ids(user, group)
        if ids is None:
            raise InstallError(f"{path}: account {user} or group {group} does not exist")
        os.chown(path, *ids, follow_symlinks=False)
        os.chmod(path, mode)

    def _directory(self, path: Path, user: str, group: str, mode: int) -> Step:
        disk = self.on_disk(path)

        def pending() -> str | None:
            if not disk.exists():
                return f"create {user}:{group} {mode:o}"
            if not disk.is_dir() or disk.is_symlink():
                return f"replace: {disk} is not a directory (install stops here)"
            return "; ".join(self._differences(disk, user, group, mode)) or None

        def apply() -> None:
            if disk.exists() and (not disk.is_dir() or disk.is_symlink()):
                raise InstallError(f"{disk} exists and is not a directory; move it away and run install again")
            _make_dirs(disk)
            self._set_owner_mode(disk, user, group, mode)

        return Step(f"directory {path}", pending, apply)

    def _file(self, path: Path, text: str, user: str, group: str, mode: int, *, replace: bool) -> Step:
        disk = self.on_disk(path)

        def pending() -> str | None:
            if not disk.exists():
                return f"write {user}:{group} {mode:o}"
            changes = self._differences(disk, user, group, mode)
            if replace and disk.read_text(encoding="utf-8") != text:
                changes.insert(0, "rewrite (differs from this zguard's)")
            return "; ".join(changes) or None

        def apply() -> None:
            if not disk.exists() or (replace and disk.read_text(encoding="utf-8") != text):
                temporary = disk.with_name(f".{disk.name}.zguard-install")
                temporary.write_text(text, encoding="utf-8")
                self._set_owner_mode(temporary, user, group, mode)
                temporary.replace(disk)
            self._set_owner_mode(disk, user, group, mode)

        return Step(f"file {path}", pending, apply)

    def _model_tree(self) -> Step:
        """Everything below the model directory: root:group, folders 750, files 640."""
        top, group = self.on_disk(self.layout.model_dir), self.layout.group

        def wrong() -> list[tuple[Path, int]]:
            found = []
            for base, dirs, names in os.walk(top) if top.is_dir() else ():
                for name in dirs + names:
                    path = Path(base) / name
                    if path.is_symlink():
                        continue  # the manifest check decides about links
                    mode = 0o750 if path.is_dir() else 0o640
                    if self._differences(path, "root", group, mode):
                        found.append((path, mode))
            return found

        def pending() -> str | None:
            found = wrong()
            return f"fix owner root:{group} and modes 750/640 of {len(found)} file(s) and folder(s)" if found else None

        def apply() -> None:
            for path, mode in wrong():
                self._set_owner_mode(path, "root", group, mode)

        return Step(f"model files under {self.layout.model_dir}", pending, apply)

    # systemd

    def _enable(self) -> Step:
        units = list(ENABLED_UNITS)
        if self.staged:
            argv = ["systemctl", "--root", str(self.root.resolve()), "enable", *units]
            wants = {"zguard.service": "multi-user.target.wants", "zguard-scan.timer": "timers.target.wants"}
            links = [self.on_disk(DEFAULT_UNIT_DIR / wants[u] / u) for u in units]  # where systemctl links

            def unlinked() -> str | None:
                return None if all(link.is_symlink() for link in links) else shlex.join(argv)

            return Step("enable " + " ".join(units), unlinked, lambda: self.run(argv))

        def pending() -> str | None:
            running = all(_succeeds(["systemctl", "is-enabled", "--quiet", u]) for u in units) and all(
                _succeeds(["systemctl", "is-active", "--quiet", u]) for u in units
            )
            return None if running else f"systemctl enable --now {' '.join(units)}"

        def apply() -> None:
            self.run(["systemctl", "daemon-reload"])
            self.run(["systemctl", "enable", "--now", *units])

        return Step("enable and start " + " ".join(units), pending, apply)


def _succeeds(argv: Sequence[str]) -> bool:
    """Whether a query command exits 0 (False when it is not installed)."""
    try:
        return subprocess.run(list(argv), capture_output=True, check=False, timeout=30).returncode == 0  # noqa: S603 - fixed argv
    except (OSError, subprocess.TimeoutExpired):
        return False


def host_gpus(dev: Path = Path("/dev")) -> int:
    """How many /dev/nvidiaN nodes the host has (0 without the NVIDIA driver)."""
    return sum(1 for path in dev.glob("nvidia*") if re.fullmatch(r"nvidia\d+", path.name))
