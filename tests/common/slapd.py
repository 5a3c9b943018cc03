"""A real OpenLDAP slapd for the LDAP sign-in tests, private to the test and bound to 127.0.0.1 only.

`require_slapd()` installs Debian's `slapd` and `ldap-utils` when they are missing (`apt-get`;
tests run as root, and Debian's policy keeps the package from starting the system's own slapd).
When that is impossible the test is skipped with the reason, except under CI=true, where it fails.

`Slapd(directory, pki)` writes a slapd.conf of its own (nothing of /etc/ldap/slapd.d is read),
loads `DIRECTORY_LDIF` with slapadd, and serves `ldaps://127.0.0.1:<port>` and
`ldap://127.0.0.1:<port>` (StartTLS) with the test CA's server certificate. slapd runs in the
foreground with `-d stats`, its log in `slapd.log`: `binds(dn)` counts the BIND operations that
reached it for a DN, which is how a test proves no bind was tried.

The tree (`dc=bank,dc=example`): the service account `cn=svc-zguard`; users alice (a direct
member of zg-generators), bob (in team-audit, itself in zg-auditors: nested), carol (in
zg-generators and zg-auditors: a separation-of-duties conflict), and two entries with
uid=twin (in different OUs). Every user's password is `USER_PASSWORDS[uid]`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from functools import cache
from pathlib import Path

from tests.common.debian import apt_install
from tests.common.pki import Pki
from tests.common.polling import wait_until
from tests.common.unavailable import unavailable

HOST = "127.0.0.1"
SUFFIX = "dc=bank,dc=example"
SERVICE_DN = f"cn=svc-zguard,{SUFFIX}"
SERVICE_PASSWORD = "service-secret-42"
USERS_DN = f"ou=people,{SUFFIX}"
GROUPS_DN = f"ou=groups,{SUFFIX}"
USER_PASSWORDS = {"alice": "alice-pass-1", "bob": "bob-pass-2", "carol": "carol-pass-3", "twin": "twin-pass-4"}
_PACKAGES = ("slapd", "ldap-utils")
_SLAPD = "/usr/sbin/slapd"
_SLAPADD = "/usr/sbin/slapadd"


def _user(uid: str, ou: str = "people") -> str:
    return f"""dn: uid={uid},ou={ou},{SUFFIX}
objectClass: inetOrgPerson
uid: {uid}
cn: {uid.title()}
sn: {uid.title()}
userPassword: {USER_PASSWORDS[uid]}
"""


def _group(cn: str, *members: str) -> str:
    lines = [f"dn: cn={cn},{GROUPS_DN}", "objectClass: groupOfNames", f"cn: {cn}"]
    lines += [f"member: {member}" for member in members]
    return "\n".join(lines) + "\n"


DIRECTORY_LDIF = "\n".join(
    [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Bank\ndc: bank\n",
        f"dn: {USERS_DN}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: ou=contractors,{SUFFIX}\nobjectClass: organizationalUnit\nou: contractors\n",
        f"dn: {GROUPS_DN}\nobjectClass: organizationalUnit\nou: groups\n",
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: svc-zguard\nuserPassword: {SERVICE_PASSWORD}\n",
        _user("alice"),
        _user("bob"),
        _user("carol"),
        _user("twin"),
        _user("twin", "contractors"),
        _group("zg-generators", f"uid=alice,{USERS_DN}", f"uid=carol,{USERS_DN}"),
        _group("team-audit", f"uid=bob,{USERS_DN}"),
        _group("zg-auditors", f"cn=team-audit,{GROUPS_DN}", f"uid=carol,{USERS_DN}"),
    ]
)

_CONFIG = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
TLSCACertificateFile {ca}
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
database mdb
maxsize 16777216
suffix "{suffix}"
rootdn "cn=admin,{suffix}"
directory {dir}/db
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
"""


@cache
def slapd_unavailable() -> str | None:
    """Why slapd cannot be had, or None once it is installed (installs at most once per run)."""
    if os.path.exists(_SLAPD) and os.path.exists(_SLAPADD):
        return None
    if (reason := apt_install(_PACKAGES)) is not None:
        return reason
    return None if os.path.exists(_SLAPD) else "slapd installed, but /usr/sbin/slapd is missing"


def require_slapd() -> None:
    if (reason := slapd_unavailable()) is not None:
        unavailable(f"no slapd to test against: {reason}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Slapd:
    """One slapd on loopback; `start()`/`stop()` as often as a test likes, same ports and data."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        require_slapd()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "db").mkdir(exist_ok=True)
        self.ldaps_port = free_port()
        self.ldap_port = free_port()
        self.config = directory / "slapd.conf"
        self.config.write_text(
            _CONFIG.format(dir=directory, ca=pki.ca, cert=pki.server_cert, key=pki.server_key, suffix=SUFFIX),
            encoding="utf-8",
        )
        (directory / "data.ldif").write_text(DIRECTORY_LDIF, encoding="utf-8")
        loaded = subprocess.run(
            [_SLAPADD, "-f", str(self.config), "-l", str(directory / "data.ldif")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if loaded.returncode != 0:
            raise RuntimeError(f"slapadd failed ({loaded.returncode}): {loaded.stderr}")
        self.log = directory / "slapd.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{HOST}:{self.ldaps_port}"

    @property
    def ldap_url(self) -> str:
        return f"ldap://{HOST}:{self.ldap_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            return
        urls = f"{self.ldaps_url}/ {self.ldap_url}/"
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                [_SLAPD, "-f", str(self.config), "-h", urls, "-d", "stats"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        process = self._process

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"slapd exited with {process.returncode}:\n{self.text()[-4000:]}")
            return self._accepts(self.ldaps_port) and self._accepts(self.ldap_port)

        try:
            wait_until(up, timeout=timeout, what=lambda: f"slapd to start:\n{self.text()[-4000:]}")
        except AssertionError:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def binds(self, dn_part: str) -> int:
        """How many BIND operations for a DN containing `dn_part` (case-insensitive) slapd has logged."""
        wanted = dn_part.casefold()
        return sum(1 for line in self._bind_lines() if wanted in line.casefold())

    def all_binds(self) -> int:
        return len(self._bind_lines())

    def _bind_lines(self) -> list[str]:
        # One `BIND dn=... method=128` line per request; a successful one adds a `mech=SIMPLE` line.
        return [line for line in self.text().splitlines() if " BIND dn=" in line and " method=" in line]

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            return False
