"""A checkpoint names the replica that signed it; the signed message is unchanged, so it verifies
with the same key as before and a signer without a replica writes exactly the old fields."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zguard.audit.chain import CheckpointSigner, checkpoint_valid

HEAD = "ab" * 32


def test_the_replica_is_named_beside_the_signature_and_the_signature_still_verifies() -> None:
    key = Ed25519PrivateKey.generate()
    named = CheckpointSigner(key, replica="gpu-07").detail(5, HEAD, 1_795_000_000_000)
    plain = CheckpointSigner(key).detail(5, HEAD, 1_795_000_000_000)
    assert named["replica"] == "gpu-07"
    assert "replica" not in plain
    assert {k: v for k, v in named.items() if k != "replica"} == plain  # Ed25519 signatures are deterministic
    assert checkpoint_valid(key.public_key(), named)
    assert not checkpoint_valid(Ed25519PrivateKey.generate().public_key(), named)
