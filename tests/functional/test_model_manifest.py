"""The model manifest: pin, verify, and each refusal named with its file (`zguard model pin/verify` too)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zguard.cli.main import main
from zguard.integrity.manifest import (
    MANIFEST_FILE,
    FileEntry,
    ManifestError,
    ModelManifest,
    check_layout,
    pin,
    verify,
)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "transformer").mkdir(parents=True)
    (root / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}\n')
    (root / "transformer" / "config.json").write_text('{"dim": 64}\n')
    (root / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(100_000))
    pin(root)
    return root


def codes(model_dir: Path, **kwargs: object) -> list[tuple[str, str]]:
    return [(p.code, p.path) for p in verify(model_dir, **kwargs).problems]  # type: ignore[arg-type]


def write_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)
    return key


def test_a_pinned_directory_verifies(model: Path) -> None:
    report = verify(model)
    assert report.ok
    assert report.manifest is not None
    assert [f.path for f in report.manifest.files] == [
        "model_index.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
    ]
    assert report.bytes_hashed == sum(f.size for f in report.manifest.files)


def test_the_digest_is_the_sha256_of_the_canonical_manifest_without_it(model: Path) -> None:
    document = json.loads((model / MANIFEST_FILE).read_text())
    digest = document.pop("digest")
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert pin(model).digest == digest  # no timestamp: the same files give the same digest


def test_a_changed_byte_is_named(model: Path) -> None:
    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[5000] ^= 1
    weights.write_bytes(bytes(data))
    assert codes(model) == [("changed", "transformer/diffusion_pytorch_model.safetensors")]


def test_a_changed_size_is_named(model: Path) -> None:
    with (model / "transformer" / "config.json").open("a") as handle:
        handle.write(" ")
    assert codes(model) == [("size_changed", "transformer/config.json")]


def test_a_missing_file_is_named(model: Path) -> None:
    (model / "transformer" / "config.json").unlink()
    assert codes(model) == [("missing", "transformer/config.json")]


def test_an_extra_file_is_named(model: Path) -> None:
    (model / "transformer" / "extra.safetensors").write_bytes(b"x")
    assert codes(model) == [("extra", "transformer/extra.safetensors")]


def test_a_symlink_leaving_the_directory_is_refused(model: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (model / "transformer" / "config.json").unlink()
    (model / "transformer" / "config.json").symlink_to(outside)
    assert codes(model) == [("symlink_escapes", "transformer/config.json")]
    with pytest.raises(ManifestError, match="cannot be pinned"):
        pin(model)


def test_a_symlink_inside_is_followed_and_its_target_checked(model: Path) -> None:
    (model / "shared").mkdir()
    (model / "shared" / "vocab.json").write_text('{"a": 1}')
    (model / "transformer" / "vocab.json").symlink_to("../shared/vocab.json")
    pin(model)
    assert verify(model).ok
    (model / "shared" / "vocab.json").write_text('{"a": 2}')
    assert codes(model) == [("changed", "shared/vocab.json"), ("changed", "transformer/vocab.json")]


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "m.ckpt", "data.PKL"])
def test_pickle_weights_are_refused_even_when_pinned(model: Path, name: str) -> None:
    payload = b"\x80\x04pickle"
    (model / "transformer" / name).write_bytes(payload)
    with pytest.raises(ManifestError, match="pickle"):
        pin(model)
    # A manifest that pins it anyway (hand-made) does not help.
    manifest = ModelManifest.from_json((model / MANIFEST_FILE).read_text())
    entry = FileEntry(f"transformer/{name}", len(payload), hashlib.sha256(payload).hexdigest())
    (model / MANIFEST_FILE).write_text(ModelManifest.of([*manifest.files, entry]).to_json())
    assert codes(model) == [("pickle_weights", f"transformer/{name}")]


def test_signatures(model: Path, tmp_path: Path) -> None:
    signer = write_key(tmp_path / "signer.pem")
    stranger = write_key(tmp_path / "stranger.pem")
    assert codes(model, public_key=signer.public_key()) == [("unsigned", MANIFEST_FILE)]
    pin(model, signer)
    assert verify(model, signer.public_key()).ok
    assert codes(model, public_key=stranger.public_key()) == [("bad_signature", MANIFEST_FILE)]
    with pytest.raises(ManifestError, match="bad_signature"):
        check_layout(model, stranger.public_key())


def test_an_edited_manifest_is_invalid(model: Path) -> None:
    document = json.loads((model / MANIFEST_FILE).read_text())
    document["files"][0]["sha256"] = "0" * 64  # edited without re-pinning: the digest no longer matches
    (model / MANIFEST_FILE).write_text(json.dumps(document))
    assert codes(model) == [("manifest_invalid", MANIFEST_FILE)]


def test_no_manifest(model: Path) -> None:
    (model / MANIFEST_FILE).unlink()
    assert codes(model) == [("manifest_missing", MANIFEST_FILE)]


def test_cli_pin_and_verify(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_key(tmp_path / "key.pem")
    assert main(["model", "pin", str(model), "--key", str(tmp_path / "key.pem")]) == 0
    digest = json.loads((model / MANIFEST_FILE).read_text())["digest"]
    assert digest in capsys.readouterr().out
    assert main(["model", "verify", str(model), "--public-key", str(tmp_path / "key.pem")]) == 0
    assert "signature valid" in capsys.readouterr().out
    (model / "transformer" / "config.json").write_text('{"dim": 65}\n')
    assert main(["model", "verify", str(model)]) == 1
    err = capsys.readouterr().err
    assert "changed: transformer/config.json" in err
    assert "re-pin with `zguard model pin DIR`" in err


def test_progress_bar_and_log_lines_for_large_models(caplog: pytest.LogCaptureFixture) -> None:
    import io
    import logging

    from zguard.cli.model import ProgressBar
    from zguard.engine.pipeline import LoadProgress

    stream = io.StringIO()
    bar = ProgressBar(stream, "hashing")
    total = 10 * 1024**3
    for done in [0, total // 2, total]:
        bar(done, total)
    bar.close()
    assert "\rhashing [##############################] 10.7/10.7 GB 100%" in stream.getvalue()
    with caplog.at_level(logging.INFO, logger="zguard.engine.pipeline"):
        progress = LoadProgress(Path("/models/z"))
        for done in [*range(0, total, total // 100), total]:
            progress(done, total)
        LoadProgress(Path("/models/tiny"))(1000, 1000)  # a small model logs no progress
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10
    assert lines[-1] == "verifying and loading /models/z: 10.7 of 10.7 GB (100%)"
