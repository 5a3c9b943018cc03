"""Several replicas write one audit trail on PostgreSQL: one total order, checkpoints signed by
the replica that wrote them, and `zguard audit verify` accepting only the listed keys.

Two `AuditStore`s on their own engines and keys (`audit.signing_key_file`) are two replicas.
Marked `integration`: skips when PostgreSQL is unreachable, fails under CI=true.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import URL

from tests.common.cli import ZguardCli
from tests.common.databases import postgres_schema_url
from zguard.audit import AuditEvent
from zguard.audit.checkpoint_keys import CheckpointKeys
from zguard.audit.setup import open_audit_store, signer
from zguard.audit.store import AuditStore, pending
from zguard.audit.verify import verify_store
from zguard.config.loader import load_settings
from zguard.security.keys import KeyFileError, load_public_key
from zguard.store import migrate
from zguard.store.database import create_store_engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WRITERS = ("gpu-a", "gpu-b")
EVENTS_EACH = 60


@pytest.fixture
def url() -> Iterator[URL]:
    with postgres_schema_url() as schema:
        engine = create_store_engine(schema)
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()
        yield schema


def replica_config(tmp_path: Path, url: URL, name: str, keys_dir: Path | None = None) -> Path:
    """A replica's settings file: its own state_dir, signing key and replica id; one database."""
    home = tmp_path / name
    home.mkdir(parents=True, exist_ok=True)
    body = (
        f"state_dir: {home / 'state'}\n"
        f"database:\n  url: '{url.render_as_string(hide_password=False)}'\n"
        f"serve:\n  replica_id: {name}\n"
        "audit:\n  checkpoint_every: 10\n"
    )
    if keys_dir is not None:
        body += f"  checkpoint_keys: ['{keys_dir}']\n"
    config = home / "zguard.yaml"
    config.write_text(body, encoding="utf-8")
    return config


def write_concurrently(stores: list[AuditStore]) -> None:
    def write(store: AuditStore, name: str) -> None:
        for i in range(EVENTS_EACH):
            store.append([pending(AuditEvent(type="http.request", outcome="allowed", principal=name, detail={"i": i}))])

    threads = [threading.Thread(target=write, args=(s, n)) for s, n in zip(stores, WRITERS, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_two_writers_with_their_own_keys_make_one_chain_that_verifies_with_both_listed(
    tmp_path: Path, url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "checkpoint-keys"
    configs = [replica_config(tmp_path, url, name, keys) for name in WRITERS]
    settings = [load_settings(config, environ={}) for config in configs]
    engines = [create_store_engine(url) for _ in WRITERS]
    stores: list[AuditStore] = []
    try:
        keys.mkdir()
        # The store refuses to open with checkpoint_keys naming an empty directory: publish first.
        with pytest.raises(KeyFileError):
            open_audit_store(settings[0], engines[0])
        for s, name in zip(settings, WRITERS, strict=True):
            public = signer(s).public_key
            pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            (keys / f"{name}.pem").write_bytes(pem)
        stores = [open_audit_store(s, e) for s, e in zip(settings, engines, strict=True)]
        write_concurrently(stores)
        for store in stores:
            store.checkpoint()
        head = stores[0].head()
        assert head.seq >= 2 * EVENTS_EACH
        seqs = [e.seq for e in stores[1].iter_events()]
        assert seqs == list(range(1, head.seq + 1))  # one total order, no gap, no duplicate
        checkpoints = [json.loads(e.body)["detail"] for e in stores[0].iter_events() if e.type == "audit.checkpoint"]
        assert {c["replica"] for c in checkpoints} == set(WRITERS)  # each names the replica that signed it

        listed = CheckpointKeys.from_paths([keys])
        report = verify_store(stores[0], listed)
        assert report.ok, report.problem
        assert report.signers is not None
        assert set(report.signers) == set(WRITERS)
        assert sum(report.signers.values()) == report.checkpoints == len(checkpoints)
        # One replica's key alone: the other's checkpoints are not accepted.
        only_a = verify_store(stores[0], CheckpointKeys.from_paths([keys / "gpu-a.pem"]))
        assert only_a.problem is not None
        assert only_a.problem.kind == "forged_checkpoint"
        assert "not in audit.checkpoint_keys" in only_a.problem.message
        # Today's single key (this host's own) cannot verify a trail of two writers either.
        single = verify_store(stores[0], load_public_key(keys / "gpu-b.pem"))
        assert single.problem is not None
        assert single.problem.kind == "forged_checkpoint"

        cli = ZguardCli(configs[0], capsys)
        out = cli.ok("audit", "verify", "--json")
        verdict = json.loads(out)
        assert verdict["ok"] is True
        assert set(verdict["signers"]) == set(WRITERS)
        assert "checkpoints by listed key: gpu-a" in cli.ok("audit", "verify")
        (keys / "gpu-b.pem").unlink()  # an operator removes a key: its checkpoints are refused
        code, out, _ = cli("audit", "verify", "--json")
        assert code == 1
        assert json.loads(out)["problem"]["kind"] == "forged_checkpoint"
    finally:
        for store in stores:
            store.close()
        for engine in engines:
            engine.dispose()


def test_two_files_with_one_key_under_two_names_are_refused(tmp_path: Path) -> None:
    pem = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for name in WRITERS:
        (tmp_path / f"{name}.pem").write_bytes(pem)
    with pytest.raises(KeyFileError, match="same key under two names"):
        CheckpointKeys.from_paths([tmp_path])
