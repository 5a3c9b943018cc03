"""ReplicaStatus without Redis: the lists' digest, and what `/readyz/detail` and `/metrics` get."""

from __future__ import annotations

import hashlib

from zguard.services.replicas import ReplicaStatus, lists_digest


def test_the_digest_ignores_list_paths_and_order_but_not_content() -> None:
    a, b = hashlib.sha256(b"x").hexdigest(), hashlib.sha256(b"y").hexdigest()
    same = lists_digest({"/etc/zguard/a.txt": a, "/etc/zguard/b.txt": b})
    assert same == lists_digest({"/srv/b.txt": b, "/srv/a.txt": a})
    assert same.startswith("sha256:")
    assert len(same) == len("sha256:") + 64
    assert same != lists_digest({"/etc/zguard/a.txt": a})
    assert same != lists_digest({"/etc/zguard/a.txt": a, "/etc/zguard/b.txt": a})


def test_without_shared_counters_there_are_no_peers_and_no_drift() -> None:
    status = ReplicaStatus("gpu-07", None)
    assert status.detail() == {"digest": None, "drift": False}
    [gauge] = status.gauges()
    assert (gauge.name, gauge.value) == ("zguard_policy_drift", 0)


def test_a_peer_with_another_digest_is_drift() -> None:
    status = ReplicaStatus("gpu-07", None)
    status.peers = {"gpu-08": "sha256:" + "0" * 64}
    assert status.drift
    assert status.gauges()[0].value == 1
