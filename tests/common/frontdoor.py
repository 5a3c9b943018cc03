"""Front doors and shared back ends for the scale-out tests and bench: nginx and HAProxy running
the shipped configs (deploy/), a private redis-server, a TCP proxy to PostgreSQL that a test can
cut, and N `zguard serve` replicas sharing one database and one Redis.

nginx and HAProxy are Debian's (`nginx-light`, `haproxy`), installed with apt-get on first use
(tests run as root; Debian's policy in containers keeps them from starting as services). Each
runs in the foreground with a config rendered from deploy/ into the test's directory, on free
loopback ports; nothing of /etc/nginx or /etc/haproxy is read. Where they cannot be had the test
calls `unavailable` (skips, fails under CI=true).

What replicas must share and what each keeps for itself (docs/scale-out.md says why):

    shared, the same bytes on every replica         per replica
    database.url (PostgreSQL)                       state_dir (pid lock, runtime dir, archives)
    rate_limits.storage + rate_limits.key_prefix    api.port / console.port (here: free ports)
    api_auth.token_key_file     token digests, session CSRF and TOTP keys are derived from it
    state_dir/audit-prompt.key  prompt fingerprints (`audit search --prompt`) match everywhere
    provenance.watermark_key_file, provenance.signing_key_file   a trace works on any replica
    audit.checkpoint_keys       every replica's public checkpoint key, named by replica
                                                    serve.replica_id
                                                    audit.signing_key_file (its own checkpoint key)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Self

import httpx
from sqlalchemy.engine import URL

from tests.common.debian import apt_install
from tests.common.factories import free_port
from tests.common.pki import Pki
from tests.common.polling import wait_until
from tests.common.servers import ZguardProcess
from tests.common.unavailable import unavailable

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NGINX_CONF = DEPLOY / "nginx" / "zguard.conf"
HAPROXY_CFG = DEPLOY / "haproxy" / "zguard.cfg"
HOST = "127.0.0.1"
_PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")


def render(template: Path, values: Mapping[str, str]) -> str:
    """`template` with every `${NAME}` replaced; KeyError naming a placeholder left without a value
    (nginx's own `$variables` have no braces and stay as they are)."""
    text = template.read_text(encoding="utf-8")
    missing = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise KeyError(f"{template.name}: no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _binary(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}",) if os.path.exists(p)), None)


@cache
def _installed(binary: str, package: str) -> str | None:
    """Why `binary` cannot be had, or None once it is there (installs at most once per run)."""
    if _binary(binary) is not None:
        return None
    if (reason := apt_install([package])) is not None:
        return reason
    return None if _binary(binary) is not None else f"{package} installed, but no {binary}"


def require(binary: str, package: str) -> str:
    reason = _installed(binary, package)
    path = _binary(binary)
    if reason is not None or path is None:
        unavailable(f"no {binary} to test against: {reason}", remedy=f"apt-get install {package}")
    return path


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


class _Daemon:
    """A server in the foreground as a child process, with its output in a file."""

    name = "daemon"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.out = directory / f"{self.name}.out"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> None:
        with self.out.open("ab") as out:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {proc.returncode}:\n{self.diagnostics()}")
            return _accepts(self.port)

        wait_until(up, timeout=timeout, what=lambda: f"{self.name} to listen:\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Nginx(_Daemon):
    """nginx running deploy/nginx/zguard.conf, TLS with the test PKI, in front of `upstreams`."""

    name = "nginx"

    def __init__(self, directory: Path, pki: Pki, upstreams: Sequence[int], *, workers: int = 1) -> None:
        self.binary = require("nginx", "nginx-light")
        super().__init__(directory)
        for sub in ("run", "log"):
            (directory / sub).mkdir(exist_ok=True)
        servers = "\n".join(f"        server {HOST}:{port} max_fails=3 fail_timeout=5s;" for port in upstreams)
        self.config = directory / "nginx.conf"
        self.config.write_text(
            render(
                NGINX_CONF,
                {
                    "WORKER_PROCESSES": str(workers),
                    "RUN_DIR": str(directory / "run"),
                    "LOG_DIR": str(directory / "log"),
                    "UPSTREAM_SERVERS": servers,
                    "LISTEN": f"{HOST}:{self.port}",
                    "SERVER_NAME": "localhost",
                    "TLS_CERT": str(pki.server_cert),
                    "TLS_KEY": str(pki.server_key),
                    "READ_TIMEOUT": "150s",
                },
            ),
            encoding="utf-8",
        )
        self.url = f"https://localhost:{self.port}"

    def argv(self) -> list[str]:
        return [
            self.binary,
            "-c",
            str(self.config),
            "-e",
            str(self.directory / "log" / "error.log"),
            "-g",
            "daemon off;",
        ]

    def diagnostics(self) -> str:
        log = self.directory / "log" / "error.log"
        return super().diagnostics() + (log.read_text(errors="replace")[-4000:] if log.exists() else "")


class Haproxy(_Daemon):
    """HAProxy running deploy/haproxy/zguard.cfg in front of `servers`, checking /readyz."""

    name = "haproxy"

    def __init__(self, directory: Path, pki: Pki, servers: Sequence[int], *, check_interval: str = "500ms") -> None:
        self.binary = require("haproxy", "haproxy")
        super().__init__(directory)
        (directory / "run").mkdir(exist_ok=True)
        pem = directory / "server.pem"  # HAProxy wants the chain and its key in one file
        pem.write_bytes(pki.server_cert.read_bytes() + pki.server_key.read_bytes())
        pem.chmod(0o600)
        self.stats_socket = directory / "run" / "admin.sock"
        backends = "\n".join(f"    server replica{i} {HOST}:{port} check" for i, port in enumerate(servers))
        self.config = directory / "haproxy.cfg"
        text = render(
            HAPROXY_CFG,
            {
                "RUN_DIR": str(directory / "run"),
                "BIND": f"{HOST}:{self.port}",
                "TLS_PEM": str(pem),
                "SERVER_TIMEOUT": "150s",
                "CHECK_HOST": "localhost",
                "CHECK_INTERVAL": check_interval,
                "BACKEND_SERVERS": backends,
            },
        )
        # The runtime API, for the test to read each server's state (not part of the shipped file).
        text = text.replace("global\n", f"global\n    stats socket {self.stats_socket} mode 600 level admin\n", 1)
        self.config.write_text(text, encoding="utf-8")
        self.url = f"https://localhost:{self.port}"

    def argv(self) -> list[str]:
        return [self.binary, "-db", "-f", str(self.config)]

    def server_states(self) -> dict[str, str]:
        """`replicaN` -> UP/DOWN/... as HAProxy sees it now (from `show stat` on its socket)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {r["svname"]: r["status"] for r in rows if r.get("svname", "").startswith("replica")}


class RedisServer(_Daemon):
    """A redis-server of the test's own on a free loopback port (no persistence), to stop and start."""

    name = "redis"

    def __init__(self, directory: Path) -> None:
        self.binary = require("redis-server", "redis-server")
        super().__init__(directory)
        self.url = f"redis://{HOST}:{self.port}/0"

    def argv(self) -> list[str]:
        return [
            self.binary,
            *("--bind", HOST, "--port", str(self.port), "--save", "", "--appendonly", "no"),
            *("--dir", str(self.directory), "--protected-mode", "yes"),
        ]


class TcpProxy:
    """A loopback TCP forwarder to `target` that a test can cut (every connection reset, new ones
    refused at once) and restore: PostgreSQL "unreachable and back" without touching the server."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server((HOST, 0))
        self.port = int(self._listener.getsockname()[1])
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with self._lock:
                    self._open.discard(sock)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    @property
    def connections(self) -> int:
        """Client connections open through the proxy now (each is two sockets)."""
        with self._lock:
            return len(self._open) // 2

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            victims = list(self._open)
        for sock in victims:
            _reset(sock)

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        with contextlib.suppress(OSError):  # wakes the accept() in the other thread; close() alone does not
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), so the peer sees a broken connection at once."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def via_proxy(url: URL, proxy: TcpProxy) -> str:
    """`url` (PostgreSQL) pointed at `proxy` instead, as the string `ZGUARD_DATABASE__URL` takes."""
    return url.set(host=HOST, port=proxy.port).render_as_string(hide_password=False)


class Replicas:
    """N `zguard serve` processes on the demo model, one state dir and port pair each, sharing
    one PostgreSQL database (`database_url`), one Redis and the keys that must be shared.

    `start()` starts replica 0 alone first: it creates the shared key files and migrates the
    database, which several first starts at once would race for; then the others together."""

    def __init__(
        self,
        directory: Path,
        count: int,
        *,
        database_url: str,
        redis_url: str,
        env: Mapping[str, str],
        per_replica_env: Callable[[int], Mapping[str, str]] | None = None,
    ) -> None:
        self.directory = directory
        self.shared = directory / "shared"
        self.shared.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.env = {
            "ZGUARD_DATABASE__URL": database_url,
            "ZGUARD_RATE_LIMITS__STORAGE": redis_url,
            "ZGUARD_RATE_LIMITS__KEY_PREFIX": "zguard-scale-out",
            "ZGUARD_API_AUTH__ENABLED": "true",
            "ZGUARD_TRUSTED_PROXIES": HOST,
            "ZGUARD_API_AUTH__TOKEN_KEY_FILE": str(self.shared / "token.key"),
            # Each replica signs its checkpoints with its own key (state_dir/audit-signing.pem,
            # written below); every public half is listed, named by its replica.
            "ZGUARD_AUDIT__CHECKPOINT_KEYS": f"[{self.shared / 'checkpoint-keys'}]",
            "ZGUARD_PROVENANCE__WATERMARK_KEY_FILE": str(self.shared / "watermark.key"),
            "ZGUARD_PROVENANCE__SIGNING_KEY_FILE": str(self.shared / "provenance-signing.pem"),
            **env,
        }
        self.replicas = [
            ZguardProcess(
                directory / f"replica{i}" / "state", {**self.env, **(per_replica_env(i) if per_replica_env else {})}
            )
            for i in range(count)
        ]
        (self.shared / "checkpoint-keys").mkdir(exist_ok=True)
        for i, replica in enumerate(self.replicas):
            _signing_key(Path(replica.env["ZGUARD_STATE_DIR"]), self.shared / "checkpoint-keys" / f"replica{i}.pem")

    def __getitem__(self, index: int) -> ZguardProcess:
        return self.replicas[index]

    def __iter__(self) -> Iterator[ZguardProcess]:
        return iter(self.replicas)

    @property
    def api_ports(self) -> list[int]:
        return [r.api_port for r in self.replicas]

    def start(self, timeout: float = 240) -> None:
        first, *rest = self.replicas
        first.start()
        first.wait_ready(timeout)
        prompt_key = first.env["ZGUARD_STATE_DIR"] + "/audit-prompt.key"
        for replica in rest:
            state = Path(replica.env["ZGUARD_STATE_DIR"])
            state.mkdir(parents=True, exist_ok=True, mode=0o700)
            if os.path.exists(prompt_key):  # no setting names it: the same file in every state dir
                shutil.copy2(prompt_key, state / "audit-prompt.key")
            replica.start()
        for replica in rest:
            replica.wait_ready(timeout)

    def restart(self, index: int, *, kill: bool = False, timeout: float = 240) -> None:
        """Stop replica `index` (SIGTERM, or SIGKILL with `kill`) and start it again on the same ports."""
        replica = self.replicas[index]
        assert replica.proc is not None
        if kill:
            replica.proc.kill()
            replica.proc.wait(10)
        else:
            replica.stop(timeout=60)
        replica.start()
        replica.wait_ready(timeout)

    def stop(self) -> None:
        for replica in self.replicas:
            if replica.proc is not None and replica.proc.poll() is None:
                replica.proc.terminate()
        for replica in self.replicas:
            if replica.proc is not None:
                try:
                    replica.proc.wait(30)
                except subprocess.TimeoutExpired:
                    replica.proc.kill()
                    replica.proc.wait(10)


def _signing_key(state_dir: Path, public_file: Path) -> None:
    """A replica's own checkpoint key in its state dir (as `zguard serve` would create it), and
    its public half where the others' are (what `zguard audit public-key` on each host gives)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(state_dir / "audit-signing.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    public_file.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def ready_everywhere(replicas: Replicas) -> bool:
    return all(httpx.get(f"{r.api}/readyz", timeout=3).status_code == 200 for r in replicas)
