"""Three `zguard serve` replicas on the demo model behind the shipped nginx front door
(deploy/nginx/zguard.conf), sharing one PostgreSQL database and one Redis, proven together:
global limits, revocation and sign-out everywhere, `kill -9` and a rolling restart under load,
Redis and PostgreSQL lost and back; and HAProxy (deploy/haproxy/zguard.cfg) draining a replica
whose /readyz says 503.

The cluster starts once per session (a replica's start is most of the cost). Each replica
reaches Redis through a TCP proxy of its own and all reach PostgreSQL through one, so a test can
take a dependency away from one replica or from all without touching the servers. The tests that
break something put it back before they return; they run in file order, the destructive ones
last. Marked `integration` and `slow`: skips when PostgreSQL, nginx or HAProxy cannot be had,
fails under CI=true.
"""

from __future__ import annotations

import io
import json
import re
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.common.databases import postgres_schema_url
from tests.common.frontdoor import Haproxy, Nginx, RedisServer, Replicas, TcpProxy, via_proxy
from tests.common.pki import Pki
from tests.common.polling import wait_until
from zguard.store import migrate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPLICAS = 3
PASSWORD = "correct horse battery staple 7"
GENERATE = {"prompt": "a lighthouse at dawn", "size": "64x64", "num_inference_steps": 1}
LIMITED_RATE = 4  # generations a minute for the principal `limited`, across all replicas
MAX_CONCURRENT = 3  # rate_limits.max_concurrent_per_principal, across all replicas
LEASE_S = 3  # serve.in_flight_lease_s: how long a killed replica's slots outlive it


@dataclass
class Cluster:
    replicas: Replicas
    nginx: Nginx
    redis: RedisServer
    redis_proxies: list[TcpProxy]
    postgres_proxy: TcpProxy
    database_url: str
    pki: Pki
    admin: str  # the admin's API token
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, token: str | None = None, **kwargs: object) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        tls = ssl.create_default_context(cafile=self.pki.ca)
        return httpx.Client(base_url=self.nginx.url, verify=tls, headers=headers, **{"timeout": 30, **kwargs})  # type: ignore[arg-type]

    def console(self, index: int, token: str | None = None) -> httpx.Client:
        """Replica `index`'s console listener, directly: the console is never on the public door."""
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.replicas[index].console, headers=headers, timeout=30)

    def upstreams_in_log(self) -> Counter[str]:
        """How many requests each replica answered through nginx so far (the last of the access
        log's `upstream=` list: the replica nginx moved the request on to, if it did)."""
        log = (self.nginx.directory / "log" / "access.log").read_text(errors="replace")
        return Counter(entry.split(", ")[-1] for entry in re.findall(r"upstream=(.*?) upstream_status=", log))


def _cli(env: dict[str, str], *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zguard", *argv], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, pki: Pki, demo_model_dir: Path) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("scale-out")
    with postgres_schema_url() as url, RedisServer(base / "redis") as redis:
        postgres_proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
        redis_proxies = [TcpProxy(("127.0.0.1", redis.port)) for _ in range(REPLICAS)]
        database_url = via_proxy(url, postgres_proxy)
        replicas = Replicas(
            base,
            REPLICAS,
            database_url=database_url,
            redis_url=redis.url,
            env={
                "ZGUARD_MODEL__PATH": str(demo_model_dir),
                "ZGUARD_MODEL__WARMUP": "false",
                "ZGUARD_GENERATION__MIN_SIDE": "16",
                "ZGUARD_GENERATION__MAX_QUEUE": "64",
                "ZGUARD_RATE_LIMITS__PER_PRINCIPAL": f"{{limited: {LIMITED_RATE}/minute}}",
                "ZGUARD_RATE_LIMIT": "100000/minute",
                "ZGUARD_RATE_LIMITS__OTHER_ROUTES": "100000/minute",
                "ZGUARD_RATE_LIMITS__MAX_CONCURRENT_PER_PRINCIPAL": str(MAX_CONCURRENT),
                "ZGUARD_SERVE__IN_FLIGHT_LEASE_S": str(LEASE_S),
                "ZGUARD_AUDIT__CHECKPOINT_EVERY": "50",  # checkpoints from every replica under load
            },
            per_replica_env=lambda i: {
                "ZGUARD_RATE_LIMITS__STORAGE": f"redis://127.0.0.1:{redis_proxies[i].port}/0",
                "ZGUARD_SERVE__REPLICA_ID": f"replica{i}",
            },
        )
        nginx: Nginx | None = None
        try:
            init = _cli(replicas[0].env, "init", "--admin", "root")
            assert init.returncode == 0, init.stderr
            admin = init.stdout.strip().splitlines()[-1]
            replicas.start()
            nginx = Nginx(base / "nginx", pki, replicas.api_ports)
            nginx.start()
            cluster = Cluster(replicas, nginx, redis, redis_proxies, postgres_proxy, database_url, pki, admin)
            _accounts(cluster)
            yield cluster
        finally:
            if nginx is not None:
                nginx.stop()
            replicas.stop()
            for proxy in (postgres_proxy, *redis_proxies):
                proxy.close()


def _accounts(cluster: Cluster) -> None:
    """Service accounts `svc`, `limited`, `burst` (generator) with a token each; a user `carol`."""
    with cluster.console(0, cluster.admin) as console:
        for name in ("svc", "limited", "burst"):
            made = console.post("/console/api/users", json={"name": name, "kind": "service", "roles": ["generator"]})
            assert made.status_code == 201, made.text
            token = console.post(f"/console/api/users/{made.json()['id']}/tokens", json={})
            assert token.status_code == 201, token.text
            cluster.tokens[name] = token.json()["token"]
        carol = {"name": "carol", "kind": "user", "roles": ["viewer"], "password": PASSWORD}
        assert console.post("/console/api/users", json=carol).status_code == 201


def _code(resp: httpx.Response) -> str | None:
    try:
        return str(resp.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def _pids(cluster: Cluster) -> list[int]:
    return [r.proc.pid for r in cluster.replicas if r.proc is not None]


# --- controls that hold across replicas -----------------------------------------------------------


def test_a_rate_limit_holds_across_replicas_behind_nginx(cluster: Cluster) -> None:
    """`limited` may generate 4 times a minute in all: 10 requests spread over three replicas
    get 4 images and 6 refusals with the limit's code, whichever replica answered."""
    before = cluster.upstreams_in_log()
    with cluster.client(cluster.tokens["limited"]) as client:
        answers = [client.post("/v1/images/generations", json=GENERATE) for _ in range(10)]
    statuses = [r.status_code for r in answers]
    assert statuses.count(200) == LIMITED_RATE, [(r.status_code, r.text[:200]) for r in answers]
    refused = [r for r in answers if r.status_code != 200]
    assert {(r.status_code, _code(r)) for r in refused} == {(429, "rate_limit_exceeded")}
    assert all(1 <= int(r.headers["retry-after"]) <= 61 for r in refused)
    spread = cluster.upstreams_in_log() - before
    assert len(spread) == REPLICAS, f"nginx did not spread the requests over every replica: {spread}"


def test_the_in_flight_cap_holds_across_replicas(cluster: Cluster) -> None:
    """`max_concurrent_per_principal` (3) counts a principal's generations on every replica
    (leases in Redis): nine slow ones at once through nginx (three per replica, which per-process
    counting would all admit) leave at most three running, the rest 429."""
    slow = {**GENERATE, "size": "256x256", "num_inference_steps": 8}
    results: list[httpx.Response] = []
    lock = threading.Lock()
    barrier = threading.Barrier(3 * MAX_CONCURRENT)

    def one() -> None:
        with cluster.client(cluster.tokens["burst"]) as client:
            barrier.wait()
            resp = client.post("/v1/images/generations", json=slow)
        with lock:
            results.append(resp)

    threads = [threading.Thread(target=one) for _ in range(3 * MAX_CONCURRENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    codes = Counter((r.status_code, _code(r)) for r in results)
    assert 1 <= codes[(200, None)] <= MAX_CONCURRENT, codes
    assert codes[(429, "too_many_concurrent_requests")] >= 2 * MAX_CONCURRENT, codes
    assert sum(codes.values()) == 3 * MAX_CONCURRENT


def test_a_token_revoked_on_one_replica_is_refused_by_another_within_a_second(cluster: Cluster) -> None:
    with cluster.console(0, cluster.admin) as console_a:
        svc = next(u for u in console_a.get("/console/api/users").json()["data"] if u["name"] == "svc")
        made = console_a.post(f"/console/api/users/{svc['id']}/tokens", json={"label": "revoke-me"})
        assert made.status_code == 201, made.text
        token, token_id = made.json()["token"], made.json()["id"]
        headers = {"authorization": f"Bearer {token}"}
        b = cluster.replicas[1]
        assert httpx.get(f"{b.api}/v1/models", headers=headers, timeout=10).status_code == 200  # B has it cached now
        assert console_a.delete(f"/console/api/users/{svc['id']}/tokens/{token_id}").status_code == 200
        revoked_at = time.monotonic()

    def refused_by_b() -> bool:
        return httpx.get(f"{b.api}/v1/models", headers=headers, timeout=5).status_code == 401

    wait_until(refused_by_b, timeout=1.0, interval=0.05, what="replica B to refuse the revoked token")
    assert time.monotonic() - revoked_at <= 1.0
    for replica in cluster.replicas:  # and every replica, and the front door
        resp = httpx.get(f"{replica.api}/v1/models", headers=headers, timeout=5)
        assert (resp.status_code, _code(resp)) == (401, "invalid_api_key")
    with cluster.client(token) as client:
        assert client.get("/v1/models").status_code == 401


def test_a_console_session_from_one_replica_works_on_another_and_logout_ends_it_everywhere(cluster: Cluster) -> None:
    a, b, c = (cluster.replicas[i] for i in range(3))
    origin = a.console.removeprefix("http://")
    with httpx.Client(base_url=a.console, timeout=30) as browser:
        signed = browser.post(
            "/login",
            data={"username": "carol", "password": PASSWORD},
            headers={"origin": f"http://{origin}", "accept": "text/html"},
        )
        assert signed.status_code == 303, signed.text[:500]
        cookies = dict(browser.cookies)
    assert cookies, "no session cookie"
    sessions = {}
    for replica in (a, b, c):
        with httpx.Client(base_url=replica.console, cookies=cookies, timeout=30) as client:
            whoami = client.get("/console/api/session")
            assert whoami.status_code == 200, whoami.text
            assert whoami.json()["name"] == "carol"
            sessions[replica.console] = whoami.json()
    with httpx.Client(base_url=b.console, cookies=cookies, timeout=30) as on_b:
        csrf = {"x-csrf-token": sessions[b.console]["csrf_token"], "origin": b.console}
        out = on_b.post("/console/api/logout", headers=csrf)
        assert out.status_code == 200, out.text
    logged_out = time.monotonic()

    def dead_everywhere() -> bool:
        return all(
            httpx.get(f"{r.console}/console/api/session", cookies=cookies, timeout=5).status_code == 401
            for r in (a, b, c)
        )

    wait_until(dead_everywhere, timeout=1.0, interval=0.05, what="the signed-out session to be refused everywhere")
    assert time.monotonic() - logged_out <= 1.0


def test_every_replica_names_itself_and_they_agree_on_the_policy_lists(cluster: Cluster) -> None:
    """/readyz/detail (console, `system:read`): each replica's id, and the same banned-term
    digest on all three, no drift, every peer seen through Redis."""
    details = []
    for index in range(REPLICAS):
        with cluster.console(index, cluster.admin) as console:
            detail = console.get("/readyz/detail")
            assert detail.status_code == 200, detail.text
            details.append(detail.json())
    assert [d["replica"] for d in details] == [f"replica{i}" for i in range(REPLICAS)]
    digests = {d["policy"]["digest"] for d in details}
    assert len(digests) == 1, digests
    assert next(iter(digests)).startswith("sha256:")
    assert not any(d["policy"]["drift"] for d in details)

    def peers_seen() -> bool:
        for index in range(REPLICAS):
            policy = _detail(cluster, index)["policy"]
            assert isinstance(policy, dict)
            others = {f"replica{j}" for j in range(REPLICAS)} - {f"replica{index}"}
            if set(policy["peers"]) != others or set(policy["peers"].values()) != digests:
                return False
        return True

    wait_until(peers_seen, timeout=20, what="every replica to see its peers' digests, equal to its own")


def _detail(cluster: Cluster, index: int) -> dict[str, object]:
    with cluster.console(index, cluster.admin) as console:
        body: dict[str, object] = console.get("/readyz/detail").json()
        return body


# --- replicas killed and restarted under load -----------------------------------------------------


class Load:
    """Threads sending generations (half of them: fewer than the in-flight cap) and reads through
    the front door until stopped, keeping every answer (status, code, Retry-After, request id)
    and every transport failure."""

    def __init__(self, cluster: Cluster, threads: int = 4) -> None:
        self.cluster = cluster
        self.answers: list[tuple[int, str | None, str | None, str | None]] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,)) for k in range(threads)]

    def _run(self, kind: int) -> None:
        # The client waits as long as nginx does (150 s, past generation.timeout_s): a slow answer
        # under the CPU load of a replica starting is still an answer.
        with self.cluster.client(self.cluster.tokens["svc"], timeout=150) as client:
            while not self._stop.is_set():
                try:
                    if kind % 2 == 0:
                        resp = client.post("/v1/images/generations", json=GENERATE)
                    else:
                        resp = client.get("/v1/models")
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                entry = (
                    resp.status_code,
                    _code(resp),
                    resp.headers.get("retry-after"),
                    resp.headers.get("x-request-id"),
                )
                with self._lock:
                    self.answers.append(entry)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def wait_for(self, count: int, timeout: float = 60) -> None:
        wait_until(lambda: len(self.answers) >= count, timeout=timeout, what=f"{count} answers under load")


def _audit_request_ids(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            bodies = conn.execute(text("SELECT body FROM audit_events")).scalars().all()
    finally:
        engine.dispose()
    return {json.loads(body).get("request_id") for body in bodies} - {None}


def test_kill_9_of_one_replica_under_load_loses_no_acknowledged_event_and_the_chain_verifies(cluster: Cluster) -> None:
    victim = cluster.replicas[1]
    try:
        with Load(cluster) as load:
            load.wait_for(40)
            assert victim.proc is not None
            victim.proc.kill()
            victim.proc.wait(10)
            seen = len(load.answers)
            load.wait_for(seen + 40)  # the others carry on
    finally:  # back for the tests after this one, whatever happened
        victim.start()
        victim.wait_ready(240)
    answered = [rid for _status, _code_, _retry, rid in load.answers if rid]
    assert len(answered) == len(load.answers), "an answer came without X-Request-ID"
    recorded = _audit_request_ids(cluster.database_url)
    missing = [rid for rid in answered if rid not in recorded]
    assert not missing, f"{len(missing)} answered request(s) have no audit event, e.g. {missing[:3]}"
    # 503: nginx found no replica for a moment; 429 `too_many_concurrent_requests`: the killed
    # replica's in-flight slots are held until their lease ends (LEASE_S), as designed.
    outcomes = Counter((s, c) for s, c, _r, _id in load.answers)
    assert set(outcomes) <= {(200, None), (503, "server_busy"), (429, "too_many_concurrent_requests")}, outcomes
    verified = _cli(cluster.replicas[0].env, "audit", "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    signers = json.loads(verified.stdout)["signers"]  # each replica signs with its own listed key
    assert set(signers) <= {f"replica{i}" for i in range(REPLICAS)}, signers
    assert len([name for name, count in signers.items() if count]) >= 2, signers


def test_a_rolling_restart_under_load_answers_every_request_or_a_clean_503(cluster: Cluster) -> None:
    """Replicas 0 and 2 stopped (SIGTERM: drain) and started again, one after the other, under
    load; replica 1 was restarted by the kill -9 test above, so every replica has been. (Each start
    costs ~30 s on this 2-core machine: the third restart would only repeat the first.)"""
    with Load(cluster) as load:
        load.wait_for(20)
        for index in (0, REPLICAS - 1):
            cluster.replicas.restart(index)
        seen = len(load.answers)
        load.wait_for(seen + 20)
    assert not load.failures, load.failures[:5]
    statuses = Counter((s, c) for s, c, _r, _id in load.answers)
    assert set(statuses) <= {(200, None), (503, "server_busy"), (503, "model_not_ready")}, statuses
    retry_afters = [retry_after for status, _c, retry_after, _id in load.answers if status == 503]
    assert all(r is not None and int(r) >= 1 for r in retry_afters), retry_afters
    assert statuses[(200, None)] >= 40


# --- dependencies lost and back: fail closed, recover without a restart -------------------------


def _readyz(cluster: Cluster) -> list[int]:
    return [httpx.get(f"{r.api}/readyz", timeout=5).status_code for r in cluster.replicas]


def _generates(cluster: Cluster) -> httpx.Response:
    with cluster.client(cluster.tokens["svc"]) as client:
        return client.post("/v1/images/generations", json=GENERATE)


def _recovers(cluster: Cluster, pids: list[int], what: str) -> None:
    wait_until(lambda: _readyz(cluster) == [200] * REPLICAS, timeout=30, what=f"every replica ready after {what}")
    wait_until(lambda: _generates(cluster).status_code == 200, timeout=15, what=f"a generation after {what}")
    assert _pids(cluster) == pids, "a replica was restarted"


def test_redis_stopped_and_started_fails_closed_then_recovers(cluster: Cluster) -> None:
    pids = _pids(cluster)
    cluster.redis.stop()
    try:
        wait_until(lambda: _readyz(cluster) == [503] * REPLICAS, timeout=10, what="every /readyz to say 503")
        refused = _generates(cluster)
        assert (refused.status_code, _code(refused)) == (503, "rate_limiter_unavailable"), refused.text
        assert "retry-after" in refused.headers
    finally:
        cluster.redis.start()
    _recovers(cluster, pids, "Redis came back")


def test_postgres_unreachable_and_back_fails_closed_then_recovers(cluster: Cluster) -> None:
    pids = _pids(cluster)
    cluster.postgres_proxy.cut()
    try:
        refused = _generates(cluster)
        assert refused.status_code == 503, refused.text
        assert _code(refused) == "audit_unavailable", refused.text
        assert "retry-after" in refused.headers
        assert all(status == 503 for status in _readyz(cluster))
    finally:
        cluster.postgres_proxy.restore()
    _recovers(cluster, pids, "PostgreSQL came back")


def test_haproxy_drains_a_replica_whose_readyz_is_503(cluster: Cluster, tmp_path: Path) -> None:
    with Haproxy(tmp_path / "haproxy", cluster.pki, cluster.replicas.api_ports) as haproxy:
        states: Callable[[], dict[str, str]] = haproxy.server_states
        wait_until(lambda: set(states().values()) == {"UP"}, timeout=15, what=lambda: f"every replica UP: {states()}")
        cluster.redis_proxies[2].cut()  # replica 2 alone loses Redis: its /readyz says 503
        try:
            wait_until(lambda: states()["replica2"] == "DOWN", timeout=15, what=lambda: f"replica2 drained: {states()}")
            assert states()["replica0"] == states()["replica1"] == "UP"
            with httpx.Client(
                base_url=haproxy.url, verify=ssl.create_default_context(cafile=cluster.pki.ca), timeout=30
            ) as client:
                headers = {"authorization": f"Bearer {cluster.tokens['svc']}"}
                answers = [client.get("/v1/models", headers=headers).status_code for _ in range(12)]
            assert answers == [200] * 12  # nothing reaches the drained replica
        finally:
            cluster.redis_proxies[2].restore()
        wait_until(lambda: states()["replica2"] == "UP", timeout=15, what=lambda: f"replica2 back: {states()}")


# --- rolling upgrades: the previous release's code runs on the new schema -----------------------

# Migrations after this one must keep the previous release's code working on the new schema
# during a rolling upgrade (old and new replicas side by side): only new tables, new indexes and
# new columns that are nullable or have a default. 0010 is the last one before the rule.
COMPATIBLE_SINCE = "0010"
ADDITIVE = re.compile(
    r"^(CREATE TABLE|CREATE (UNIQUE )?INDEX|ALTER TABLE \S+ ADD (COLUMN|CONSTRAINT)|UPDATE alembic_version|COMMENT ON)",
    re.IGNORECASE,
)


def additive(statement: str) -> bool:
    """Whether code that knows nothing of `statement` keeps working after it: a new column must
    be nullable or have a default, or the old code's INSERTs fail."""
    if not ADDITIVE.match(statement):
        return False
    if re.match(r"^ALTER TABLE \S+ ADD COLUMN", statement, re.IGNORECASE):
        return "NOT NULL" not in statement.upper() or " DEFAULT " in statement.upper()
    return True


def _offline_sql(start: str) -> list[str]:
    """The SQL each migration after `start` emits for PostgreSQL, rendered offline (no database):
    every script's `upgrade()` run against a MigrationContext in `as_sql` mode."""
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    revisions = list(reversed(list(scripts.iterate_revisions("head", start))))
    assert revisions, f"no migration after {start}"
    assert revisions[0].down_revision == start  # the bound itself is not iterated
    out = io.StringIO()
    context = MigrationContext.configure(dialect_name="postgresql", opts={"as_sql": True, "output_buffer": out})
    with Operations.context(context):
        for revision in revisions:
            revision.module.upgrade()
    return [s.strip() for s in re.split(r";\s*\n", out.getvalue()) if s.strip()]


@pytest.mark.parametrize(
    ("statement", "ok"),
    [
        ("ALTER TABLE t ADD COLUMN c INTEGER", True),
        ("ALTER TABLE t ADD COLUMN c INTEGER DEFAULT 0 NOT NULL", True),
        ("ALTER TABLE t ADD COLUMN c INTEGER NOT NULL", False),
        ("ALTER TABLE t DROP COLUMN c", False),
        ("ALTER TABLE t ALTER COLUMN c SET NOT NULL", False),
        ("ALTER TABLE t RENAME TO u", False),
        ("DROP TABLE t", False),
        ("CREATE INDEX ix ON t (c)", True),
    ],
)
def test_the_compatibility_rule_tells_additive_from_breaking(statement: str, ok: bool) -> None:
    assert additive(statement) is ok


def test_migrations_after_0010_only_add_so_the_previous_release_keeps_working() -> None:
    statements = _offline_sql(COMPATIBLE_SINCE)
    assert any(s.upper().startswith(("CREATE TABLE", "ALTER TABLE")) for s in statements), statements
    breaking = [s[:200] for s in statements if not additive(s)]
    assert not breaking, "a migration after 0010 changes or drops what the previous release uses:\n" + "\n".join(
        breaking
    )
