"""Known-answer vectors for `zguard-manifest.json`: its digest, its signature and its file text.

These vectors pin a persisted format: the manifest digest names a model's exact content in every
audit event, and pinned manifests (and their signatures) live next to model directories for as
long as a model is served. A vector that no longer matches means the format changed: that needs a
new `FORMAT` / `SIGNATURE_CONTEXT` (a version bump) and re-pinning every model, never a quiet edit
of the constants here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zguard.integrity.manifest import (
    FORMAT,
    MANIFEST_FILE,
    SIGNATURE_CONTEXT,
    FileEntry,
    ModelManifest,
    body_digest,
    pin,
    verify,
)

PRIVATE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEY_ID = "56475aa75463474c"

# Fixed file contents (a Chinese file so the non-ASCII bytes are hashed as UTF-8).
FILES = {
    "model_index.json": b'{"_class_name": "ZImagePipeline"}\n',
    "tokenizer/vocab.txt": "你好\nworld\n".encode(),
    "transformer/diffusion_pytorch_model.safetensors": bytes(range(256)) * 4,
}
ENTRIES = (
    FileEntry("model_index.json", 34, "d0b34fb056f00da6f8435e711ce3407d46f9272b6695a5d7bd0d7a9939e7b37c"),
    FileEntry("tokenizer/vocab.txt", 13, "400c050ade219b2ef63580431129e8c69cdf95e017a97d08d79f072a247c71b9"),
    FileEntry(
        "transformer/diffusion_pytorch_model.safetensors",
        1024,
        "785b0751fc2c53dc14a4ce3d800e69ef9ce1009eb327ccf458afe09c242c26c9",
    ),
)
CANONICAL_BODY = (
    '{"files":['
    '{"path":"model_index.json","sha256":"d0b34fb056f00da6f8435e711ce3407d46f9272b6695a5d7bd0d7a9939e7b37c","size":34},'
    '{"path":"tokenizer/vocab.txt","sha256":"400c050ade219b2ef63580431129e8c69cdf95e017a97d08d79f072a247c71b9","size":13},'
    '{"path":"transformer/diffusion_pytorch_model.safetensors",'
    '"sha256":"785b0751fc2c53dc14a4ce3d800e69ef9ce1009eb327ccf458afe09c242c26c9","size":1024}'
    '],"format":"zguard-model-manifest/1"}'
)
DIGEST = "dd1c8c6385b5639c76735970f4d7dae3d3604f9ff734d098aac3dec3ff7ba56b"
SIGNED_MESSAGE = b"zguard model manifest v1\ndd1c8c6385b5639c76735970f4d7dae3d3604f9ff734d098aac3dec3ff7ba56b"
SIGNATURE = (
    "0083048633068bd20490bfc4749da03bda3ec629297fe56ba743bc3425ff2a77"
    "69f7219a97f5e50a4bda279f3e406c289a5572f067df88dd489fb85296bc0702"
)
FILES_JSON = (
    ' "files": [\n'
    "  {\n"
    '   "path": "model_index.json",\n'
    '   "sha256": "d0b34fb056f00da6f8435e711ce3407d46f9272b6695a5d7bd0d7a9939e7b37c",\n'
    '   "size": 34\n'
    "  },\n"
    "  {\n"
    '   "path": "tokenizer/vocab.txt",\n'
    '   "sha256": "400c050ade219b2ef63580431129e8c69cdf95e017a97d08d79f072a247c71b9",\n'
    '   "size": 13\n'
    "  },\n"
    "  {\n"
    '   "path": "transformer/diffusion_pytorch_model.safetensors",\n'
    '   "sha256": "785b0751fc2c53dc14a4ce3d800e69ef9ce1009eb327ccf458afe09c242c26c9",\n'
    '   "size": 1024\n'
    "  }\n"
    " ],\n"
)
SIGNED_MANIFEST_JSON = (
    "{\n"
    ' "digest": "dd1c8c6385b5639c76735970f4d7dae3d3604f9ff734d098aac3dec3ff7ba56b",\n'
    + FILES_JSON
    + ' "format": "zguard-model-manifest/1",\n'
    ' "signature": {\n'
    '  "ed25519": "' + SIGNATURE + '",\n'
    '  "key_id": "56475aa75463474c"\n'
    " }\n"
    "}\n"
)
UNSIGNED_MANIFEST_JSON = (
    "{\n"
    ' "digest": "dd1c8c6385b5639c76735970f4d7dae3d3604f9ff734d098aac3dec3ff7ba56b",\n'
    + FILES_JSON
    + ' "format": "zguard-model-manifest/1"\n'
    "}\n"
)


def model_dir(root: Path) -> Path:
    for rel, data in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_constants() -> None:
    assert FORMAT == "zguard-model-manifest/1"
    assert SIGNATURE_CONTEXT == b"zguard model manifest v1\n"
    assert MANIFEST_FILE == "zguard-manifest.json"


def test_file_entries_are_plain_sha256_and_size() -> None:
    for entry in ENTRIES:
        data = FILES[entry.path]
        assert entry.size == len(data)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()


def test_body_and_digest() -> None:
    body = ModelManifest.body(reversed(ENTRIES))  # sorted by path whatever the order given
    assert json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False) == CANONICAL_BODY
    assert body_digest(body) == DIGEST
    # What the digest is: SHA-256 of the compact, key-sorted JSON of {format, files}.
    assert hashlib.sha256(CANONICAL_BODY.encode()).hexdigest() == DIGEST


def test_signature_over_context_and_digest() -> None:
    manifest = ModelManifest.of(ENTRIES, PRIVATE_KEY)
    assert manifest.digest == DIGEST
    assert manifest.signature == {"key_id": KEY_ID, "ed25519": SIGNATURE}
    assert SIGNATURE_CONTEXT + DIGEST.encode() == SIGNED_MESSAGE
    assert PRIVATE_KEY.sign(SIGNED_MESSAGE).hex() == SIGNATURE
    PRIVATE_KEY.public_key().verify(bytes.fromhex(SIGNATURE), SIGNED_MESSAGE)
    assert manifest.signature_problem(PRIVATE_KEY.public_key()) is None


def test_manifest_file_text() -> None:
    assert ModelManifest.of(ENTRIES, PRIVATE_KEY).to_json() == SIGNED_MANIFEST_JSON
    assert ModelManifest.of(ENTRIES).to_json() == UNSIGNED_MANIFEST_JSON


def test_pinned_literal_manifests_still_parse_and_verify() -> None:
    signed = ModelManifest.from_json(SIGNED_MANIFEST_JSON)
    assert signed.files == ENTRIES
    assert signed.digest == DIGEST
    assert signed.signature_problem(PRIVATE_KEY.public_key()) is None
    assert ModelManifest.from_json(UNSIGNED_MANIFEST_JSON).digest == DIGEST


def test_pin_writes_the_vector(tmp_path: Path) -> None:
    directory = model_dir(tmp_path / "model")
    manifest = pin(directory, PRIVATE_KEY, threads=1)
    assert manifest.files == ENTRIES
    assert manifest.digest == DIGEST
    assert (directory / MANIFEST_FILE).read_bytes() == SIGNED_MANIFEST_JSON.encode()
    assert verify(directory, PRIVATE_KEY.public_key()).ok


def test_a_manifest_pinned_earlier_still_verifies(tmp_path: Path) -> None:
    directory = model_dir(tmp_path / "model")
    (directory / MANIFEST_FILE).write_text(SIGNED_MANIFEST_JSON, encoding="utf-8")
    report = verify(directory, PRIVATE_KEY.public_key())
    assert report.ok, report.problems
    assert report.manifest is not None
    assert report.manifest.digest == DIGEST
