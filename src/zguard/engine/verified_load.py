"""Load a diffusers pipeline from the bytes that were hashed, never from the files again.

`load_pipeline` reads every file it needs through a `VerifiedReader`: each file is read once,
hashed while read, and handed over only if it matches the manifest. Then:

* configs, tokenizer and scheduler files (small) are written from those bytes into a private
  directory (`tempfile.mkdtemp`: mode 0700, owned by this process's user) that diffusers and
  transformers read, and which is removed when loading ends;
* weights (`*.safetensors`) never touch the disk again: `safetensors.torch.load(bytes)` parses
  the verified bytes, and the tensors are assigned into a model built from its config with
  empty (meta) weights.

A file swapped on disk after it was read cannot reach the model (its bytes are already in
memory), and one swapped before it is read fails its hash and the load is refused.

Memory, the trade-off: one weight file at a time. While a file is read its chunks and their
joined copy coexist briefly; then `safetensors.torch.load` copies the tensors out of the bytes,
so the peak is about twice the largest file on top of the model loaded so far (a 12 GB model in
5 GB shards peaks near 12 + 10 GB on the CPU side when loading to the CPU; on CUDA each tensor
moves to the GPU as it is placed, so host memory stays near twice one shard). Reading through
`mmap` would avoid the copies but would load from the file, not from what was hashed.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zguard.errors import EXIT_UNAVAILABLE, OperatorError
from zguard.integrity.manifest import VerifiedReader

log = logging.getLogger(__name__)

WEIGHTS_SUFFIX = ".safetensors"
LIBRARIES = ("diffusers", "transformers")
_VARIANT = re.compile(r"^[^.]+\.[^.]+\.safetensors$")  # model.fp16.safetensors: a variant, not loaded


class ModelLoadError(OperatorError):
    """The model directory is pinned and intact but cannot be assembled (missing weights, unknown class)."""

    code = "model_load_failed"
    exit_code = EXIT_UNAVAILABLE
    fix = "point model.path at a complete diffusers-format Z-Image directory, then `zguard model pin DIR`"


def _component_class(library: str, class_name: str) -> type[Any]:
    if library not in LIBRARIES:
        raise ModelLoadError(f"model_index.json names library {library!r}; only {LIBRARIES} are loaded")
    module = __import__(library)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ModelLoadError(f"model_index.json names {library}.{class_name}, which this {library} does not have")
    return cls


def weight_files(component: str, files: Sequence[str], index_text: str | None) -> list[str]:
    """The safetensors files of `component`: the shards its index names, else its unvariant files."""
    if index_text is not None:
        shards = sorted(set(json.loads(index_text)["weight_map"].values()))
        return [f"{component}/{shard}" for shard in shards]
    return sorted(
        rel
        for rel in files
        if rel.startswith(f"{component}/")
        and rel.count("/") == 1
        and rel.endswith(WEIGHTS_SUFFIX)
        and not _VARIANT.match(rel.split("/")[1])
    )


def _build_empty(cls: type[Any], library: str, config_dir: Path) -> Any:
    from accelerate import init_empty_weights  # type: ignore[import-untyped]  # accelerate ships no types

    if library == "diffusers":
        config = cls.load_config(config_dir)
        with init_empty_weights():
            return cls.from_config(config)
    import transformers

    config = transformers.AutoConfig.from_pretrained(config_dir, local_files_only=True)
    with init_empty_weights():
        return cls(config)


def _load_weights(model: Any, reader: VerifiedReader, files: Sequence[str], device: str, dtype: Any) -> None:
    import safetensors.torch

    expected = set(model.state_dict())
    keep_fp32 = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    loaded: set[str] = set()
    for rel in files:
        state = safetensors.torch.load(reader.read(rel))  # the bytes object is dropped as soon as it is parsed
        placed = {}
        for key, tensor in state.items():
            name = key if key in expected or not key.startswith(prefix) else key.removeprefix(prefix)
            if name not in expected:
                log.debug("%s: %s is not a weight of %s; ignored", rel, key, type(model).__name__)
                continue
            fp32 = any(part in keep_fp32 for part in name.split("."))
            target = tensor.dtype if not tensor.is_floating_point() else (tensor.dtype if fp32 else dtype)
            placed[name] = tensor.to(device=device, dtype=target)
        state.clear()
        model.load_state_dict(placed, strict=False, assign=True)
        loaded.update(placed)
        placed.clear()
    missing = sorted(expected - loaded)
    if missing:
        raise ModelLoadError(
            f"{type(model).__name__}: {len(missing)} weights not found in {', '.join(files) or 'any safetensors file'} "
            f"(first: {missing[0]})"
        )


def load_pipeline(reader: VerifiedReader, files: Sequence[str], *, device: str, dtype: Any) -> Any:
    """The pipeline of `model_index.json`, every byte from `reader` (`files`: the pinned paths)."""
    import diffusers

    staging = Path(tempfile.mkdtemp(prefix="zguard-model-"))  # 0700, this user only
    try:

        def materialise(rel: str) -> Path:
            target = staging / rel
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            target.write_bytes(reader.read(rel))
            return target

        index = json.loads(materialise("model_index.json").read_text(encoding="utf-8"))
        pipeline_cls = getattr(diffusers, str(index.get("_class_name")), None)
        if not (isinstance(pipeline_cls, type) and issubclass(pipeline_cls, diffusers.DiffusionPipeline)):
            raise ModelLoadError(f"model_index.json: {index.get('_class_name')!r} is not a diffusers pipeline")
        components: dict[str, Any] = {}
        for name, spec in index.items():
            if name.startswith("_") or not isinstance(spec, list) or None in spec:
                continue
            library, class_name = spec
            cls = _component_class(library, class_name)
            for rel in files:  # configs, tokenizer files, shard indexes: small, from verified bytes
                if rel.startswith(f"{name}/") and not rel.endswith(WEIGHTS_SUFFIX):
                    materialise(rel)
            index_file = next(
                (rel for rel in files if rel.startswith(f"{name}/") and rel.endswith(".index.json")), None
            )
            shards = weight_files(name, files, (staging / index_file).read_text() if index_file else None)
            if shards:
                model = _build_empty(cls, library, staging / name)
                _load_weights(model, reader, shards, device, dtype)
                components[name] = model.to(device).eval()  # buffers made at construction follow the weights
            else:
                components[name] = cls.from_pretrained(staging / name, local_files_only=True)
        return pipeline_cls(**components)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
