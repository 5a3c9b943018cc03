"""The hash chain and its signed checkpoints: pure functions; the key files themselves are `zguard.security.keys`.

An event's *body* is its canonical JSON (keys sorted, no spaces, UTF-8, every field present),
and its hash is SHA-256 over the previous event's hash (hex), a newline and the body:

    hash[n] = SHA-256(hash[n-1] + "\\n" + body[n]),   hash[0] = 64 zeros (genesis)

The body holds the event's own `seq`, so a row moved to another position no longer fits it.
A checkpoint is itself an event (`audit.checkpoint`) whose body carries the sequence number and
head hash it covers, the time, and an Ed25519 signature over exactly those three, made with a key
kept in its own file. Anyone can recompute SHA-256; only the key holder can sign, so a chain
rewritten after a checkpoint no longer matches it, and the checkpoint (also forwarded to syslog)
anchors the head off-host.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from zguard.audit import AuditEvent
from zguard.security.keys import key_id, load_or_create_private_key

GENESIS = "0" * 64
CHECKPOINT_TYPE = "audit.checkpoint"
SIGNATURE_CONTEXT = b"zguard-audit-checkpoint-v1"
BODY_VERSION = 1


def canonical(obj: Mapping[str, Any]) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain)
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate from client text: escape it (and all else) as \uXXXX
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_plain)
    return text


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple | frozenset | set):
        return list(value)
    return str(value)


def column_text(value: str | None, limit: int) -> str | None:
    """A body field as its search column holds it: cut to `limit`, lone surrogates as U+FFFD."""
    if value is None:
        return None
    value = value[:limit]
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def chain_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def iso_ms(time_ms: int) -> str:
    """UTC with milliseconds: 2026-11-26T21:30:00.123Z."""
    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def event_body(event: AuditEvent, *, seq: int, event_id: str, time_ms: int) -> dict[str, Any]:
    """Every field, always present (null when unknown), so the shape is stable for collectors."""
    return {
        "v": BODY_VERSION,
        "seq": seq,
        "event_id": event_id,
        "time": iso_ms(time_ms),
        "time_ms": time_ms,
        "type": event.type,
        "outcome": event.outcome,
        "code": event.code,
        "request_id": event.request_id,
        "listener": event.listener,
        "client": event.client,
        "principal": event.principal,
        "roles": list(event.roles),
        "auth_method": event.auth_method,
        "http": dict(event.http) if event.http is not None else None,
        "model": event.model,
        "manifest": event.manifest,
        "generation": dict(event.generation) if event.generation is not None else None,
        "prompt": dict(event.prompt) if event.prompt is not None else None,
        "policy": dict(event.policy) if event.policy is not None else None,
        "latency_ms": round(event.latency_ms, 3) if event.latency_ms is not None else None,
        "images": [dict(image) for image in event.images],
        "detail": dict(event.detail),
    }


# --- checkpoints ------------------------------------------------------------------------------


def checkpoint_message(seq: int, head_hash: str, time_ms: int) -> bytes:
    return b"\n".join((SIGNATURE_CONTEXT, str(seq).encode(), head_hash.encode(), str(time_ms).encode()))


@dataclass(frozen=True)
class CheckpointSigner:
    private_key: Ed25519PrivateKey
    replica: str | None = None  # the replica writing the checkpoints (`serve.replica_id`): named in each

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def detail(self, seq: int, head_hash: str, time_ms: int) -> dict[str, Any]:
        signature = self.private_key.sign(checkpoint_message(seq, head_hash, time_ms))
        return {
            "covers_seq": seq,
            "head_hash": head_hash,
            "signed_ms": time_ms,
            "key_id": self.key_id,
            "signature": signature.hex(),
            **({"replica": self.replica} if self.replica is not None else {}),
        }


def checkpoint_valid(public_key: Ed25519PublicKey, detail: Mapping[str, Any]) -> bool:
    try:
        message = checkpoint_message(int(detail["covers_seq"]), str(detail["head_hash"]), int(detail["signed_ms"]))
        public_key.verify(bytes.fromhex(str(detail["signature"])), message)
    except (KeyError, ValueError, TypeError, InvalidSignature):
        return False
    return True


def load_or_create_signing_key(path: Path) -> CheckpointSigner:
    """The checkpoint signer over the Ed25519 key in `path`, created mode 0600 when absent."""
    return CheckpointSigner(load_or_create_private_key(path))
