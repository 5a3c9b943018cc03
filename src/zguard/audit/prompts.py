"""What the audit trail keeps of a prompt (`audit.prompt_capture`): never the text itself.

- `hmac` (default): HMAC-SHA256 of the UTF-8 prompt under a server key kept in its own file,
  plus the length. The log alone reveals nothing; an investigator holding a suspect prompt asks
  zguard to compute its HMAC (`zguard audit search --prompt`) and compares.
- `none`: the length only.
- `encrypted`: the prompt sealed to the auditor's X25519 public key (ephemeral X25519 key
  agreement, HKDF-SHA256, AES-256-GCM). The server holds no key that opens it; `zguard audit
  reveal EVENT_ID --key PRIVATE_KEY_FILE` does, on the auditor's machine.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from zguard.audit import DetailValue
from zguard.errors import OperatorError

Capture = Literal["hmac", "none", "encrypted"]
SEAL_INFO = b"zguard-prompt-seal-v1"
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class SealError(OperatorError):
    """A sealed prompt cannot be opened (wrong key, damaged data)."""

    code = "sealed_prompt_unreadable"
    fix = "pass the investigator's private key that matches audit.prompt_seal_public_key (--key FILE)"


def _derive(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=SEAL_INFO + ephemeral + recipient).derive(shared)


def seal(text: str, recipient: X25519PublicKey) -> str:
    ephemeral = X25519PrivateKey.generate()
    ephemeral_pub = ephemeral.public_key().public_bytes(*_RAW)
    recipient_pub = recipient.public_bytes(*_RAW)
    key = _derive(ephemeral.exchange(recipient), ephemeral_pub, recipient_pub)
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, text.encode("utf-8"), ephemeral_pub)
    return base64.b64encode(ephemeral_pub + nonce + sealed).decode("ascii")


def open_sealed(blob: str, private_key: X25519PrivateKey) -> str:
    try:
        raw = base64.b64decode(blob, validate=True)
        ephemeral_pub, nonce, sealed = raw[:32], raw[32:44], raw[44:]
        recipient_pub = private_key.public_key().public_bytes(*_RAW)
        key = _derive(
            private_key.exchange(X25519PublicKey.from_public_bytes(ephemeral_pub)), ephemeral_pub, recipient_pub
        )
        return AESGCM(key).decrypt(nonce, sealed, ephemeral_pub).decode("utf-8")
    except Exception as exc:  # InvalidTag, bad base64, a key of the wrong size
        raise SealError("the sealed prompt cannot be opened with this key") from exc


def recipient_id(public_key: X25519PublicKey) -> str:
    return hashlib.sha256(public_key.public_bytes(*_RAW)).hexdigest()[:16]


def load_x25519_public(path: Path) -> X25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, X25519PublicKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an X25519 public key")
    return key


def load_x25519_private(path: Path) -> X25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, X25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an X25519 private key")
    return key


def write_keypair(directory: Path) -> tuple[Path, Path]:
    """An auditor's key pair: `auditor-prompt.pem` (private, 0600) and `auditor-prompt.pub.pem`."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = X25519PrivateKey.generate()
    private_path, public_path = directory / "auditor-prompt.pem", directory / "auditor-prompt.pub.pem"
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    public_path.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path


@dataclass(frozen=True)
class PromptCapture:
    mode: Capture
    hmac_key: bytes | None = None
    recipient: X25519PublicKey | None = None

    def fingerprint(self, text: str) -> str:
        if self.hmac_key is None:
            raise ValueError("prompt capture 'hmac' needs a key")
        return hmac.new(self.hmac_key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def fields(self, prompt: str | None, negative_prompt: str | None) -> dict[str, DetailValue]:
        """The `prompt` object of a generation's audit event."""
        out: dict[str, DetailValue] = {"capture": self.mode}
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if text is None:
                continue
            out[f"{name}_len"] = len(text)
            if self.mode == "hmac":
                out[f"{name}_hmac"] = self.fingerprint(text)
            elif self.mode == "encrypted":
                if self.recipient is None:
                    raise ValueError("prompt capture 'encrypted' needs the auditor's public key")
                out[f"{name}_sealed"] = seal(text, self.recipient)
        if self.mode == "encrypted" and self.recipient is not None:
            out["recipient"] = recipient_id(self.recipient)
        return out
