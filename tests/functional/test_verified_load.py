"""The engine loads from the bytes it hashed: a file swapped on disk between check and load is
either never seen (its verified bytes are already in memory) or refused (it fails its hash).
Proved on the loaded weights of the real demo pipeline."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch

from zguard.engine.pipeline import DiffusersEngine
from zguard.integrity.manifest import MANIFEST_FILE, ManifestError, VerifiedReader

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture
def model(demo_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo_model_dir, tmp_path / "model"))


def engine(model_dir: Path, **kwargs: object) -> DiffusersEngine:
    return DiffusersEngine(model_dir, model_id="z-image-turbo", device="cpu", demo=True, **kwargs)  # type: ignore[arg-type]


def tampered_weights(path: Path) -> bytes:
    """A valid safetensors file of the same size and header: one byte of every 4 KiB of tensor data flipped."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    for offset in range(start + 2, len(data), 4096):
        data[offset] ^= 0x01
    assert safetensors.torch.load(bytes(data)).keys() == safetensors.torch.load_file(path).keys()
    return bytes(data)


def transformer_state(eng: DiffusersEngine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in eng._pipe.transformer.state_dict().items()}


def assert_equal_states(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def hook_reads(monkeypatch: pytest.MonkeyPatch, before: Callable[[str], None], after: Callable[[str], None]) -> None:
    original = VerifiedReader.read

    def read(self: VerifiedReader, rel: str) -> bytes:
        before(rel)
        data = original(self, rel)
        after(rel)
        return data

    monkeypatch.setattr(VerifiedReader, "read", read)


def test_load_reads_each_byte_once_and_records_the_digest(model: Path) -> None:
    eng = engine(model)
    eng.load()
    digest = (model / MANIFEST_FILE).read_text().split('"digest": "')[1][:64]
    assert eng.info.manifest == digest
    loaded = sum(p.stat().st_size for p in model.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    # Every file the pipeline needs, once; only the demo marker file is not read.
    assert loaded - 1024 < eng.bytes_read <= loaded


def test_a_weight_file_swapped_after_it_was_verified_never_reaches_the_model(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = safetensors.torch.load((model / WEIGHTS).read_bytes())  # not load_file: it maps the file
    swapped = tampered_weights(model / WEIGHTS)
    swaps: list[str] = []

    def swap(rel: str) -> None:
        if rel == WEIGHTS:
            (model / WEIGHTS).write_bytes(swapped)
            swaps.append(rel)

    hook_reads(monkeypatch, before=lambda rel: None, after=swap)
    eng = engine(model)
    eng.load()
    assert swaps == [WEIGHTS]
    assert (model / WEIGHTS).read_bytes() == swapped  # the disk holds the swapped file ...
    assert not all(torch.equal(t, original[k]) for k, t in safetensors.torch.load(swapped).items())
    assert_equal_states(transformer_state(eng), original)  # ... the model the verified bytes


def test_a_weight_file_swapped_between_the_check_and_its_read_is_refused(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    swapped = tampered_weights(model / WEIGHTS)
    hook_reads(
        monkeypatch,
        before=lambda rel: (model / WEIGHTS).write_bytes(swapped) if rel == WEIGHTS else None,
        after=lambda rel: None,
    )
    eng = engine(model)
    with pytest.raises(ManifestError) as caught:
        eng.load()
    assert [(p.code, p.path) for p in caught.value.problems] == [("changed", WEIGHTS)]
    assert eng._pipe is None


def test_a_config_swapped_after_it_was_verified_is_not_read_again(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = "transformer/config.json"
    hook_reads(
        monkeypatch,
        before=lambda rel: None,
        after=lambda rel: (model / config).write_text("{not json") if rel == config else None,
    )
    eng = engine(model)
    eng.load()  # diffusers read the config from the private copy of the verified bytes
    assert eng._pipe.transformer.config.dim == 64


@pytest.mark.parametrize(
    ("tamper", "code", "path"),
    [
        (lambda m: (m / WEIGHTS).write_bytes(tampered_weights(m / WEIGHTS)), "changed", WEIGHTS),
        (lambda m: (m / "vae" / "config.json").unlink(), "missing", "vae/config.json"),
        (lambda m: (m / "vae" / "extra.safetensors").write_bytes(b"{}"), "extra", "vae/extra.safetensors"),
        (
            lambda m: (m / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"x"),
            "pickle_weights",
            "vae/diffusion_pytorch_model.bin",
        ),
        (lambda m: (m / "vae" / "x.json").symlink_to("/etc/hostname"), "symlink_escapes", "vae/x.json"),
        (lambda m: (m / MANIFEST_FILE).unlink(), "manifest_missing", MANIFEST_FILE),
    ],
)
def test_the_engine_refuses_a_model_that_does_not_match(
    model: Path, tamper: Callable[[Path], object], code: str, path: str
) -> None:
    tamper(model)
    eng = engine(model)
    with pytest.raises(ManifestError) as caught:
        eng.load()
    assert (code, path) in [(p.code, p.path) for p in caught.value.problems]
    assert eng._pipe is None


def test_an_unpinned_model_loads_only_when_the_manifest_is_not_required(model: Path) -> None:
    (model / MANIFEST_FILE).unlink()
    eng = engine(model, manifest_required=False)
    eng.load()
    assert eng.info.manifest is None
    (model / "vae" / "weights.pt").write_bytes(b"x")  # pickle stays refused
    with pytest.raises(ManifestError, match="pickle_weights"):
        engine(model, manifest_required=False).load()


def test_a_configured_public_key_requires_its_signature(model: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from zguard.integrity.manifest import pin

    signer, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    for name, key in (("signer.pub", signer), ("stranger.pub", stranger)):
        pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        (tmp_path / name).write_bytes(pem)
    with pytest.raises(ManifestError, match="unsigned"):
        engine(model, manifest_public_key=tmp_path / "signer.pub").load()
    pin(model, signer)
    with pytest.raises(ManifestError, match="bad_signature"):
        engine(model, manifest_public_key=tmp_path / "stranger.pub").load()
    eng = engine(model, manifest_public_key=tmp_path / "signer.pub")
    eng.load()
    assert eng.info.manifest is not None


def test_sharded_weights_with_an_index_load_like_from_pretrained(demo_model_dir: Path, tmp_path: Path) -> None:
    """The real Z-Image-Turbo ships its transformer and text encoder as shards with an index
    json: re-save the demo's that way and the verified load must match diffusers' own."""
    from diffusers import ZImagePipeline

    from zguard.engine import GenerationJob
    from zguard.integrity.manifest import pin

    reference = ZImagePipeline.from_pretrained(demo_model_dir, local_files_only=True, use_safetensors=True)
    sharded = tmp_path / "sharded"
    reference.save_pretrained(sharded, safe_serialization=True, max_shard_size="100KB")
    shards = sorted(p.name for p in (sharded / "transformer").glob("*.safetensors"))
    assert len(shards) > 1
    assert (sharded / "transformer" / "diffusion_pytorch_model.safetensors.index.json").exists()
    assert list((sharded / "text_encoder").glob("*.safetensors.index.json"))
    pin(sharded)

    eng = engine(sharded)
    eng.load()
    loaded = transformer_state(eng)
    expected = {k: v.detach().clone() for k, v in reference.transformer.state_dict().items()}
    assert_equal_states(loaded, expected)
    text = {k: v.detach() for k, v in eng._pipe.text_encoder.state_dict().items()}
    assert all(torch.equal(text[k], v) for k, v in reference.text_encoder.state_dict().items())
    job = GenerationJob(prompt="a harbour at dusk", negative_prompt=None, width=64, height=64, steps=2, seed=5)
    baseline = engine(demo_model_dir)
    baseline.load()
    assert eng.generate(job, lambda: False)[0].tobytes() == baseline.generate(job, lambda: False)[0].tobytes()
