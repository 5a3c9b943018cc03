"""Build the embedded demo model: a tiny, random-weight pipeline with the real Z-Image layout.

The demo model lets `zguard serve` and the test suite run the real `ZImagePipeline` code path
(tokenizer chat template, Qwen3 text encoder, transformer, VAE decode, scheduler) on any CPU in
milliseconds. Its images are noise. Every build writes byte-identical files: the weights come
from a fixed seed on the CPU, the tokenizer from a fixed byte-level vocabulary, and the configs
from fixed values, so a pinned manifest of the demo model stays valid across builds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from zguard.engine.offline import force_offline
from zguard.integrity.manifest import pin

DEMO_SEED = 20251126
MARKER_FILE = "zguard-demo.json"

# A chat template with the behaviour of Qwen3's for what ZImagePipeline sends: one user turn,
# `add_generation_prompt=True`, `enable_thinking` honoured the way Qwen3 honours it.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")

# Sizes chosen to satisfy the architecture's invariants at the smallest useful scale:
# dim // n_heads == sum(axes_dims), every axis dim even, cap_feat_dim == text hidden size,
# axes_lens[0] > the pipeline's padded caption length (512).
TEXT_HIDDEN = 32
TRANSFORMER = {
    "all_patch_size": [2],
    "all_f_patch_size": [1],
    "in_channels": 16,
    "dim": 64,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "cap_feat_dim": TEXT_HIDDEN,
    "axes_dims": [8, 12, 12],
    "axes_lens": [1024, 64, 64],
}
VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 8, 8],
    "layers_per_block": 1,
    "latent_channels": 16,
    "norm_num_groups": 4,
    "sample_size": 64,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}


def _byte_vocab() -> dict[str, int]:
    """The GPT-2 byte-to-unicode alphabet: every byte has a token, so any text tokenizes."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            chars.append(256 + extra)
            extra += 1
    symbols = sorted(chr(c) for c in chars)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for sym in symbols:
        vocab[sym] = len(vocab)
    return vocab


def build_demo_pipeline() -> Any:
    """Return an in-memory `ZImagePipeline` with deterministic random weights (float32, CPU)."""
    force_offline()
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from diffusers.utils import logging as diffusers_logging
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    vocab = _byte_vocab()
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=None,
        eos_token="<|im_end|>",  # noqa: S106 - a token, not a password
        pad_token="<|endoftext|>",  # noqa: S106
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=1024,
    )
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE

    torch.manual_seed(DEMO_SEED)
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(vocab),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=1024,
            torch_dtype="float32",
        )
    ).eval()
    transformer = ZImageTransformer2DModel(**TRANSFORMER).eval()
    vae = AutoencoderKL(**VAE).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
    return ZImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def write_demo_model(target: Path) -> Path:
    """Write the demo model and its manifest to `target` (created; must be absent or empty), atomically.

    The files are written to a sibling temporary directory and renamed into place, so a crash
    never leaves a half-written model that a later start would try to load.
    """
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    pipe = build_demo_pipeline()
    staging = Path(tempfile.mkdtemp(prefix=".zguard-demo-", dir=target.parent))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / MARKER_FILE).write_text(
            json.dumps(
                {"demo": True, "seed": DEMO_SEED, "note": "random weights: images are noise"}, sort_keys=True, indent=2
            )
            + "\n",
            encoding="utf-8",
        )
        pin(staging)  # the default run is pinned like any model; the same files give the same digest
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def is_demo_model(model_dir: Path) -> bool:
    """True when `model_dir` holds a model written by `write_demo_model`."""
    return (Path(model_dir) / MARKER_FILE).is_file()
