"""A real rsyslogd for syslog tests, private to the test and bound to 127.0.0.1 only.

`require_rsyslogd()` installs Debian's `rsyslog` and `rsyslog-gnutls` when they are missing
(`apt-get update`, then `apt-get install -y`; tests run as root, and Debian's policy for
containers keeps the package from starting the system's own rsyslog). When that is impossible the
test is skipped with the reason, except under CI=true, where every test must run and it fails.

`Rsyslog(directory, pki)` writes a config of its own (nothing of /etc/rsyslog.conf is read) with
four inputs, each on a free loopback port and writing to a file of its own:

    tcp    imtcp, plain; octet-counted framing is recognised by imtcp itself
    udp    imudp, with a 16 MiB receive buffer: a batch arrives as a burst of datagrams
    tls    imtcp with the gtls driver (RFC 5425): the server certificate of `pki`
    mtls   the same, and the client must present a certificate signed by the test CA

Each output file gets every message exactly as received (`%rawmsg%`) followed by one LF, and
rsyslog's own escaping of control characters on receipt is off, so a CR, LF or line separator a
sender let through would split a record there: what the log-injection tests look for. rsyslog's
internal messages go to `internal.log` (its start line is how `start()` knows it is up).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from tests.common.debian import apt_install
from tests.common.pki import SERVER_NAME, Pki
from tests.common.polling import wait_until
from tests.common.unavailable import unavailable
from zguard.audit.syslog import BOM, decode_param_value
from zguard.config import SyslogSettings

Input = Literal["tcp", "udp", "tls", "mtls"]
INPUTS: tuple[Input, ...] = ("tcp", "udp", "tls", "mtls")
HOST = "127.0.0.1"
_PACKAGES = ("rsyslog", "rsyslog-gnutls")


def _rsyslogd_path() -> str | None:
    path = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)
    has_gtls = bool(glob.glob("/usr/lib/*/rsyslog/lmnsd_gtls.so") or glob.glob("/usr/lib/rsyslog/lmnsd_gtls.so"))
    return path if path and has_gtls else None


@cache
def rsyslogd_unavailable() -> str | None:
    """Why rsyslogd cannot be had, or None once it is installed (installs at most once per run)."""
    if _rsyslogd_path() is not None:
        return None
    if (reason := apt_install(_PACKAGES)) is not None:
        return reason
    return None if _rsyslogd_path() is not None else "rsyslog installed, but rsyslogd or its gtls driver is missing"


def require_rsyslogd() -> str:
    """The path of rsyslogd, installed if need be; skip (fail under CI=true) when it cannot be."""
    reason = rsyslogd_unavailable()
    path = _rsyslogd_path()
    if reason is not None or path is None:
        unavailable(f"no rsyslog to test against: {reason}")
    return path


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


_CONFIG = """\
global(
  workDirectory="{work}"
  maxMessageSize="256k"
  processInternalMessages="on"
  parser.escapeControlCharactersOnReceive="off"
  defaultNetstreamDriverCAFile="{ca}"
  defaultNetstreamDriverCertFile="{cert}"
  defaultNetstreamDriverKeyFile="{key}"
)
module(load="imudp")
module(load="imtcp" maxSessions="200")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="tcp") {{ action(type="omfile" file="{dir}/tcp.log" template="raw") }}
ruleset(name="udp") {{ action(type="omfile" file="{dir}/udp.log" template="raw") }}
ruleset(name="tls") {{ action(type="omfile" file="{dir}/tls.log" template="raw") }}
ruleset(name="mtls") {{ action(type="omfile" file="{dir}/mtls.log" template="raw") }}
input(type="imtcp" address="{host}" port="{tcp}" ruleset="tcp")
input(type="imudp" address="{host}" port="{udp}" ruleset="udp" rcvbufSize="16m")
input(type="imtcp" address="{host}" port="{tls}" ruleset="tls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" address="{host}" port="{mtls}" ruleset="mtls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
action(type="omfile" file="{dir}/internal.log")
"""


class Rsyslog:
    """One rsyslogd process on loopback; `start()`/`stop()` as often as a test likes, same ports."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        self.rsyslogd = require_rsyslogd()
        self.directory = directory
        self.pki = pki
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "work").mkdir(exist_ok=True)
        self.ports: dict[Input, int] = {
            "tcp": free_port(),
            "udp": free_port(socket.SOCK_DGRAM),
            "tls": free_port(),
            "mtls": free_port(),
        }
        self.config = directory / "rsyslog.conf"
        self.config.write_text(
            _CONFIG.format(
                work=directory / "work",
                dir=directory,
                host=HOST,
                ca=pki.ca,
                cert=pki.server_cert,
                key=pki.server_key,
                **self.ports,
            ),
            encoding="utf-8",
        )
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def __enter__(self) -> Rsyslog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            return
        starts_before = self._start_lines()
        with (self.directory / "rsyslogd.out").open("ab") as out:
            self._process = subprocess.Popen(
                [self.rsyslogd, "-n", "-f", str(self.config), "-i", str(self.directory / "rsyslogd.pid")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        process = self._process

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"rsyslogd exited with {process.returncode}:\n{self.diagnostics()}")
            return self._start_lines() > starts_before and self._accepts(self.ports["tcp"])

        try:
            wait_until(up, timeout=timeout, what=lambda: f"rsyslogd to start:\n{self.diagnostics()}")
        except AssertionError:
            self.stop(kill=True)
            raise
        self.starts += 1

    def stop(self, *, kill: bool = False, timeout: float = 15.0) -> None:
        """SIGTERM (rsyslog writes what it has read, then exits) or, with `kill`, SIGKILL."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def output(self, name: Input) -> Path:
        return self.directory / f"{name}.log"

    def text(self, name: Input) -> str:
        path = self.output(name)
        return path.read_bytes().decode("utf-8") if path.exists() else ""

    def lines(self, name: Input) -> list[str]:
        """The records received, split wherever Unicode sees a line break (not just at LF). A
        record rsyslog is still writing (no LF after it yet) is left for the next read: parsing
        half of it failed the outage test under load (its tail cut inside the structured data)."""
        text = self.text(name)
        return text[: text.rfind("\n") + 1].splitlines()

    def wait_for_lines(self, name: Input, count: int, timeout: float = 20.0) -> list[str]:
        """The records of `name` once there are `count` or more; AssertionError after `timeout` s."""
        wait_until(
            lambda: len(self.lines(name)) >= count,
            timeout=timeout,
            what=lambda: f"{count} records on {name} (got {len(self.lines(name))}):\n{self.diagnostics()}",
        )
        return self.lines(name)

    def settings(self, name: Input, **overrides: Any) -> SyslogSettings:
        """Forwarding settings that reach input `name`; TLS checks the certificate against the test CA."""
        values: dict[str, Any] = {
            "transport": "udp" if name == "udp" else "tcp" if name == "tcp" else "tls",
            "host": HOST,
            "port": self.ports[name],
            "max_backoff_s": 0.5,
            "timeout_s": 5.0,
        }
        if name in ("tls", "mtls"):
            values |= {"ca_file": self.pki.ca, "server_name": SERVER_NAME}
        if name == "mtls":
            values |= {"cert_file": self.pki.client_cert, "key_file": self.pki.client_key}
        return SyslogSettings(**(values | overrides))

    def diagnostics(self) -> str:
        parts = []
        for name in ("rsyslogd.out", "internal.log"):
            path = self.directory / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts) or "(no output)"

    def _start_lines(self) -> int:
        path = self.directory / "internal.log"
        return path.read_text(errors="replace").count("] start") if path.exists() else 0

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class Received:
    """One RFC 5424 message as the collector wrote it, with zguard's structured data decoded."""

    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd_id: str
    params: dict[str, str]
    msg: str  # after the BOM: the event's JSON


def _parse_sd(text: str) -> tuple[str, dict[str, str], str]:
    """`[id name="value" ...]` at the start of `text`: (id, decoded params, the rest after `]`)."""
    if not text.startswith("["):
        raise ValueError(f"no structured data in {text[:80]!r}")
    end_id = min(i for i in (text.find(" "), text.find("]")) if i > 0)
    sd_id, i, params = text[1:end_id], end_id, {}
    while text[i] == " ":
        equals = text.index("=", i)
        name = text[i + 1 : equals]
        if text[equals + 1] != '"':
            raise ValueError(f"unquoted value of {name}")
        j = equals + 2
        while text[j] != '"':
            j += 2 if text[j] == "\\" else 1
        params[name] = decode_param_value(text[equals + 2 : j])
        i = j + 1
    if text[i] != "]":
        raise ValueError(f"structured data not closed at {i}: {text[i : i + 20]!r}")
    return sd_id, params, text[i + 1 :]


def parse_line(line: str) -> Received:
    """Parse one received line; raises ValueError when it is not a whole zguard message."""
    pri_end = line.index(">")
    if not line.startswith("<") or line[pri_end + 1 : pri_end + 3] != "1 ":
        raise ValueError(f"not RFC 5424: {line[:80]!r}")
    timestamp, hostname, app_name, procid, msgid, rest = line[pri_end + 3 :].split(" ", 5)
    sd_id, params, rest = _parse_sd(rest)
    bom = BOM.decode("utf-8")
    if not rest.startswith(" " + bom):
        raise ValueError(f"MSG does not start with the BOM: {rest[:20]!r}")
    return Received(
        int(line[1:pri_end]), timestamp, hostname, app_name, procid, msgid, sd_id, params, rest[1 + len(bom) :]
    )
