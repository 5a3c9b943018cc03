"""Settings `serve`: this process as one replica of several (docs/scale-out.md).

Decisions written here:

- A replica has a name, `replica_id`, shown in `/readyz/detail`, in the lifecycle audit events
  and in the checkpoints it signs. Unset, it is derived from the host name and the API port
  (`gpu-07-5000`), which is unique per host and stable across restarts. It goes into Redis keys
  and audit events, so it is bounded: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, starting with a
  letter or digit.
- The leases (an in-flight slot in Redis, the syslog forwarder's row in the state database)
  expire by themselves when a replica dies; each is renewed every third of its length, so a
  replica that is merely slow (a GC pause, a busy event loop) keeps it.
- Policy lists: every replica publishes the digest of the lists it enforces; a replica that
  finds another with a different digest reports drift. Whether it follows a reload made on
  another replica (reads its own files again) is `policy_follow_reloads`: off by default, since
  the files are each host's and an operator may roll a change out host by host.
"""

from __future__ import annotations

import re
import socket

from pydantic import Field, field_validator

from zguard.config.sections import Section

REPLICA_ID_MAX = 64
REPLICA_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9._-]+")


def check_replica_id(value: str) -> str:
    """`value` when it is a valid replica id; ValueError naming the rule otherwise."""
    if not REPLICA_ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"a replica id is 1 to {REPLICA_ID_MAX} characters of A-Z a-z 0-9 . _ -, starting with a letter "
            f"or digit: {value[:40]!r}"
        )
    return value


def derived_replica_id(hostname: str, port: int) -> str:
    """`<hostname>-<port>`, the host name reduced to the allowed characters (and bounded)."""
    host = _NOT_ALLOWED.sub("-", hostname.split(".", maxsplit=1)[0]).strip("-._") or "replica"
    suffix = f"-{port}"
    return host[: REPLICA_ID_MAX - len(suffix)] + suffix


class ServeSettings(Section):
    """How this process works beside other replicas on the same database and Redis."""

    replica_id: str | None = Field(
        None,
        description="This replica's name (1-64 of `A-Z a-z 0-9 . _ -`), shown in `/readyz/detail`, lifecycle audit events and the checkpoints it signs; `zguard serve --replica-id` overrides it. Unset: the host name and the API port, e.g. `gpu-07-5000`.",
    )
    in_flight_lease_s: float = Field(
        30.0,
        ge=3.0,
        le=3600.0,
        description="With Redis counters: how long a held in-flight slot lives without renewal; renewed every third of it while the generation runs, so a replica that dies mid-generation frees its slots after at most this.",
    )
    forwarder_lease_s: float = Field(
        15.0,
        ge=3.0,
        le=600.0,
        description="How long the syslog forwarder's lease (a row in the state database) lives without renewal: one replica forwards at a time; when it dies another takes over from the durable cursor after at most this.",
    )
    policy_publish_interval_s: float = Field(
        5.0,
        ge=1.0,
        le=300.0,
        description="With Redis counters: how often this replica publishes the digest of its banned-term lists and compares it with the others' (drift shown in `/readyz/detail` and `zguard_policy_drift`).",
    )
    policy_follow_reloads: bool = Field(
        False,
        description="Reload this replica's own lists when another replica announces a reload (through Redis). Off: a different digest is reported as drift until this replica is reloaded too.",
    )

    @field_validator("replica_id")
    @classmethod
    def _replica_id(cls, value: str | None) -> str | None:
        return None if value is None else check_replica_id(value)

    def resolved_replica_id(self, api_port: int) -> str:
        """The configured id, else the derived one."""
        return self.replica_id or derived_replica_id(socket.gethostname(), api_port)
