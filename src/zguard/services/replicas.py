"""This process as one replica of several: its name, and its banned-term lists compared with the others'.

Decisions written here:
- The lists' *digest* is SHA-256 over the sorted SHA-256 of each list's bytes (one per line): the
  same bytes give the same digest whatever path each host keeps them at, and the order of the
  lists does not change what they block. The actions and allow-phrases are settings, checked
  like every setting (one file deployed everywhere); the digest is about the lists, which an
  operator changes and reloads at run time.
- With Redis counters each replica publishes, every `serve.policy_publish_interval_s`, a hash
  `<prefix>:policy:<replica>` (`digest`, `terms`, `time_ms`) that lives three intervals, and
  lists itself in the set `<prefix>:policy:replicas`; it reads the others' back. A peer whose
  hash expired (it stopped) is dropped from the set. A replica whose digest differs from any live
  peer's reports `policy_drift` (in `/readyz/detail` and `zguard_policy_drift`): both sides do, so
  the operator sees which replicas disagree, and none is trusted over another.
- A reload on one replica is announced by incrementing `<prefix>:policy:version`. A replica with
  `serve.policy_follow_reloads` reloads its own lists from its own files when the version moves
  (audited as `policy.reloaded`, trigger `peer`); without it, it keeps its lists and, if they
  differ, reports drift. Drift does not refuse requests: each replica enforces the lists it
  loaded, which passed their checks; drift is an operator's alarm, not an outage.
- Redis unreachable: the last comparison stays shown with `"checked": false`; requests are
  refused by the rate limiter anyway (fail closed there).
- Memory counters: no peers to compare with; the digest is still shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from zguard.audit import AuditSink
from zguard.services.counters import CounterStorage
from zguard.services.metrics import Gauge
from zguard.services.prompt_policy import LoadedPolicy, PolicyHolder, reload_and_audit

log = logging.getLogger("zguard.replicas")
PEER_TRIGGER = "peer"  # `policy.reloaded`'s trigger when another replica's reload was followed
TTL_INTERVALS = 3  # a published digest lives this many publish intervals


def lists_digest(hashes: Mapping[str, str]) -> str:
    """`sha256:<hex>` over the sorted per-list SHA-256 values (see the module doc)."""
    joined = "\n".join(sorted(hashes.values()))
    return "sha256:" + hashlib.sha256(joined.encode()).hexdigest()


class ReplicaStatus:
    """This replica's id and its lists' agreement with the other replicas (published through Redis)."""

    def __init__(
        self,
        replica_id: str,
        policy: PolicyHolder | None,
        *,
        counters: CounterStorage | None = None,
        audit: AuditSink | None = None,
        interval_s: float = 5.0,
        follow_reloads: bool = False,
    ) -> None:
        self.replica_id = replica_id
        self._policy = policy
        self._counters = counters if counters is not None and counters.shared else None
        self._audit = audit
        self._interval_s = interval_s
        self._follow = follow_reloads
        self._announced: LoadedPolicy | None = policy.loaded if policy is not None else None
        self._version: int | None = None  # the announced reload version last seen
        self.peers: dict[str, str] = {}  # replica id -> digest, of the live peers last read
        self.checked = False  # whether the last comparison reached Redis
        self.follows = 0  # reloads made to follow another replica
        self._task: asyncio.Task[None] | None = None

    @property
    def digest(self) -> str | None:
        return lists_digest(self._policy.hashes) if self._policy is not None else None

    @property
    def drift(self) -> bool:
        digest = self.digest
        return any(other != digest for other in self.peers.values())

    def detail(self) -> dict[str, Any]:
        """What `/readyz/detail` shows under `policy`."""
        out: dict[str, Any] = {"digest": self.digest, "drift": self.drift}
        if self._counters is not None:
            out.update(peers=dict(sorted(self.peers.items())), checked=self.checked, follow_reloads=self._follow)
        return out

    def gauges(self) -> list[Gauge]:
        drift = int(self.drift)
        return [
            Gauge("zguard_policy_drift", "1 when another replica enforces banned-term lists of another digest.", drift)
        ]

    # --- Redis ----------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        if self._counters is None:  # only called when the counters are shared
            raise RuntimeError("replica keys need shared (Redis) counters")
        return f"{self._counters.prefix}:policy:{name}"

    async def sync(self) -> None:
        """One round: announce a local reload, publish, follow a peer's reload, compare. Raises the
        storage's errors (the loop logs them)."""
        if self._counters is None or self._policy is None:
            return
        client = self._counters.redis()
        version_key, members_key = self._key("version"), self._key("replicas")
        if self._policy.loaded is not self._announced:  # reloaded here (SIGHUP, console): tell the others
            self._version = int(await client.incr(version_key))
            self._announced = self._policy.loaded
        version = int(await client.get(version_key) or 0)
        if self._version is None:
            self._version = version
        elif version != self._version:
            self._version = version
            if self._follow:
                await self._follow_reload()
        loaded = self._policy.loaded
        own = self._key(self.replica_id)
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(
                own,
                mapping={
                    "digest": lists_digest(loaded.hashes),
                    "terms": loaded.policy.term_count,
                    "time_ms": int(time.time() * 1000),
                },
            )
            pipe.pexpire(own, int(self._interval_s * TTL_INTERVALS * 1000))
            pipe.sadd(members_key, self.replica_id)
            pipe.smembers(members_key)
            *_, members = await pipe.execute()
        peers: dict[str, str] = {}
        for raw in sorted(members):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            if name == self.replica_id:
                continue
            found = await client.hget(self._key(name), "digest")
            if found is None:  # expired: that replica stopped publishing
                await client.srem(members_key, name)
                continue
            peers[name] = found.decode() if isinstance(found, bytes) else str(found)
        self.peers = peers
        self.checked = True

    async def _follow_reload(self) -> None:
        if self._policy is None or self._audit is None:
            return
        log.info("another replica reloaded its prompt policy lists: reloading ours (serve.policy_follow_reloads)")
        result = await asyncio.to_thread(reload_and_audit, self._policy, self._audit, PEER_TRIGGER)
        self._announced = self._policy.loaded  # our own follow-up is no new announcement
        if result.ok:
            self.follows += 1

    async def withdraw(self) -> None:
        """Remove this replica's published digest (at a clean stop)."""
        if self._counters is None:
            return
        client = self._counters.redis()
        with contextlib.suppress(*self._counters.errors):
            await client.delete(self._key(self.replica_id))
            await client.srem(self._key("replicas"), self.replica_id)

    async def run(self) -> None:
        """`sync` every interval until cancelled; failures logged, the loop goes on."""
        errors = self._counters.errors if self._counters is not None else ()
        while True:
            try:
                await self.sync()
            except errors as exc:
                self.checked = False
                log.warning(
                    "could not compare prompt policy digests with the other replicas: %s", CounterStorage.reason(exc)
                )
            await asyncio.sleep(self._interval_s)

    def start(self) -> None:
        if self._counters is not None and self._policy is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="policy digest sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            await self.withdraw()
