"""The checkpoint keys `zguard audit verify` trusts when several replicas write one trail.

Decisions written here:
- Each replica signs the checkpoints it writes with its own key (`audit.signing_key_file`), so a
  key stolen from one host cannot sign for the others, and each checkpoint names its writer
  (`detail.replica`, hash-chained). The keys the verifier accepts are a listed set,
  `audit.checkpoint_keys`: PEM public key files, or directories whose `*.pem` files are read.
  A key is named by its file name without `.pem` (`gpu-07.pem` → `gpu-07`): the operator's
  name for the replica, kept off the replicas themselves.
- A checkpoint signed by a key that is not listed is *forged*, even when its signature is
  sound: otherwise anyone who can write the database could add a key of their own. The
  checkpoint's `key_id` picks the listed key; its `detail.replica` is compared with the key's
  name only in the report (`signers`), since a replica may be renamed while its key stays.
- An empty list keeps today's behaviour: the public half of this host's own signing key (or
  `--public-key`), whose checkpoints all verify under one key.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from zguard.security.keys import KeyFileError, key_id, load_public_key

KEY_SUFFIX = ".pem"


@dataclass(frozen=True)
class TrustedKey:
    name: str  # the replica's name: the key file's name without `.pem`
    public_key: Ed25519PublicKey
    path: Path


class CheckpointKeys(Mapping[str, TrustedKey]):
    """The listed checkpoint keys by key id (`zguard.security.keys.key_id`)."""

    def __init__(self, keys: Iterable[TrustedKey]) -> None:
        self._by_id: dict[str, TrustedKey] = {}
        for key in keys:
            self._by_id[key_id(key.public_key)] = key

    def __getitem__(self, kid: str) -> TrustedKey:
        return self._by_id[kid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    @classmethod
    def from_paths(cls, paths: Iterable[Path]) -> CheckpointKeys:
        """Every key of `paths` (files, or directories of `*.pem`); KeyFileError naming the
        first that cannot be read, and when two files hold one key under different names."""
        keys: list[TrustedKey] = []
        for path in paths:
            files = sorted(p for p in path.iterdir() if p.name.endswith(KEY_SUFFIX)) if path.is_dir() else [path]
            if path.is_dir() and not files:
                raise KeyFileError(f"{path} holds no {KEY_SUFFIX} public key files")
            keys += [TrustedKey(file.name.removesuffix(KEY_SUFFIX), load_public_key(file), file) for file in files]
        seen: dict[str, TrustedKey] = {}
        for key in keys:
            other = seen.setdefault(key_id(key.public_key), key)
            if other.name != key.name:
                raise KeyFileError(f"{other.path} and {key.path} hold the same key under two names")
        return cls(keys)
