"""Z-Image-Turbo's full-size configs, built on any device, and the dry run that checks them.

Used by `zimage_full_size.py` (the GPU benchmark) and its test: building on ``meta`` allocates
nothing, so the parameter counts, the bf16 footprint and the dimension checks run in CI.
Sources of the values are given in the report of issue 21 and next to each config.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

# Z-Image-Turbo's configs. diffusers' ZImageTransformer2DModel defaults are these values.
TEXT_HIDDEN = 2560
TRANSFORMER: dict[str, Any] = {
    "all_patch_size": [2],
    "all_f_patch_size": [1],
    "in_channels": 16,
    "dim": 3840,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "n_heads": 30,
    "n_kv_heads": 30,
    "norm_eps": 1e-5,
    "qk_norm": True,
    "cap_feat_dim": TEXT_HIDDEN,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": [32, 48, 48],
    "axes_lens": [1024, 512, 512],
}
# Qwen3-4B (the model's text encoder; the pipeline reads hidden_states[-2], no LM head needed).
TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": TEXT_HIDDEN,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "tie_word_embeddings": True,
    "attention_bias": False,
}
# The FLUX.1 autoencoder (16 latent channels), as Z-Image ships it.
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "force_upcast": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}
SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
EXPECTED_PARAMS = {"transformer": 6.15e9, "text_encoder": 4.02e9, "vae": 83.8e6}  # published sizes

SIDE, STEPS, MAX_CAPTION_TOKENS = 1024, 8, 512  # the pipeline's max_sequence_length
BF16_BYTES = 2
GIB = 1024**3


def build_modules(device: str, configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The three networks of the pipeline from `configs`, built with their tensors on `device`.

    On ``meta`` nothing is allocated. On CUDA the parameters are allocated and initialised on the
    GPU itself (PyTorch's default init runs there in milliseconds), so nothing touches the host."""
    import torch
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    with torch.device(device):
        return {
            "transformer": ZImageTransformer2DModel(**configs["transformer"]).eval(),
            "text_encoder": Qwen3Model(Qwen3Config(**configs["text_encoder"])).eval(),
            "vae": AutoencoderKL(**configs["vae"]).eval(),
        }


def count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())  # buffers: rotary tables, a few hundred values


def vae_scale_factor(vae_config: dict[str, Any]) -> int:
    return int(2 ** (len(vae_config["block_out_channels"]) - 1))  # as ZImagePipeline computes it


def dimension_checks(configs: dict[str, dict[str, Any]], side: int = SIDE) -> dict[str, bool]:
    """The invariants the architecture needs; every value must be True."""
    from zguard.engine.pipeline import drawable_size

    tr, te = configs["transformer"], configs["text_encoder"]
    patch = max(tr["all_patch_size"])
    max_h, max_w = drawable_size(
        SimpleNamespace(
            transformer=SimpleNamespace(config=SimpleNamespace(**tr)), vae_scale_factor=vae_scale_factor(configs["vae"])
        )
    )
    return {
        "head_dim_equals_sum_axes_dims": tr["dim"] % tr["n_heads"] == 0
        and tr["dim"] // tr["n_heads"] == sum(tr["axes_dims"]),
        "axes_dims_even": all(d % 2 == 0 for d in tr["axes_dims"]),
        "cap_feat_dim_equals_text_hidden": tr["cap_feat_dim"] == te["hidden_size"],
        "text_heads_divisible_by_kv_heads": te["num_attention_heads"] % te["num_key_value_heads"] == 0,
        # Caption tokens take positions 1..len on the first axis, the image's frame comes after them.
        "axes_lens_fit_caption": tr["axes_lens"][0] > MAX_CAPTION_TOKENS + 1,
        "axes_lens_fit_side": max_h is not None and max_w is not None and max_h >= side and max_w >= side,
        "latent_channels_match": configs["vae"]["latent_channels"] == tr["in_channels"],
        "side_divisible": side % (vae_scale_factor(configs["vae"]) * patch) == 0,
    }


def activation_estimate(configs: dict[str, dict[str, Any]], side: int = SIDE) -> dict[str, Any]:
    """A rough upper estimate of the transient memory (bf16, inference, one image) at `side`²."""
    tr, vae = configs["transformer"], configs["vae"]
    scale = vae_scale_factor(vae)
    image_tokens = (side // scale // max(tr["all_patch_size"])) ** 2
    seq = image_tokens + MAX_CAPTION_TOKENS
    ffn = int(tr["dim"] / 3 * 8)  # FeedForward's hidden width in transformer_z_image
    block = seq * (6 * tr["dim"] + 3 * ffn) * BF16_BYTES
    scores = tr["n_heads"] * seq * seq * BF16_BYTES  # only if attention materialises them (math kernel)
    widest = max(vae["block_out_channels"][:-1])  # the decoder's last upsample runs at this width at full size
    vae_decode = 3 * widest * side * side * BF16_BYTES
    return {
        "side": side,
        "image_tokens": image_tokens,
        "sequence_tokens_max": seq,
        "transformer_block_gib": round(block / GIB, 3),
        "attention_scores_if_materialised_gib": round(scores / GIB, 3),
        "vae_decode_gib": round(vae_decode / GIB, 3),
        "peak_over_weights_gib": round(max(block, vae_decode) / GIB, 3),
        "formula": "block: seq*(6*dim + 3*ffn)*2 B (residual, q/k/v/out, w1/w3/product); vae: 3 feature maps "
        "of the widest decoder stage at full size (256 ch) *2 B; attention scores only for the math kernel",
    }


def dry_run(configs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Build every module on ``meta``; report counts, the bf16 footprint and the checks."""
    configs = configs or full_size_configs()
    started = time.perf_counter()
    modules = build_modules("meta", configs)
    counts = {name: count(module) for name, module in modules.items()}
    total = sum(counts.values())
    checks = dimension_checks(configs)
    estimate = activation_estimate(configs)
    weights_gib = total * BF16_BYTES / GIB
    return {
        "benchmark": "Z-Image-Turbo full size, dry run (meta device)",
        "ok": all(checks.values()),
        "parameters": counts,
        "parameters_total": total,
        "parameters_vs_published": {n: round(counts[n] / EXPECTED_PARAMS[n], 4) for n in EXPECTED_PARAMS},
        "bf16_gib": {name: round(n * BF16_BYTES / GIB, 3) for name, n in counts.items()},
        "bf16_gib_total": round(weights_gib, 3),
        "activation_estimate": estimate,
        "expected_peak_gib": round(weights_gib + estimate["peak_over_weights_gib"], 3),
        "checks": checks,
        "configs": configs,
        "build_s": round(time.perf_counter() - started, 3),
    }


def full_size_configs() -> dict[str, dict[str, Any]]:
    return {"transformer": TRANSFORMER, "text_encoder": TEXT_ENCODER, "vae": VAE, "scheduler": SCHEDULER}


def smoke_configs() -> dict[str, dict[str, Any]]:
    from zguard.engine import demo

    text = {
        **TEXT_ENCODER,
        "hidden_size": demo.TEXT_HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 1024,
        "vocab_size": 512,
    }
    return {"transformer": demo.TRANSFORMER, "text_encoder": text, "vae": demo.VAE, "scheduler": demo.SCHEDULER}


def build_pipeline(device: str, dtype: Any, configs: dict[str, dict[str, Any]]) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    from zguard.engine.demo import build_demo_pipeline

    tokenizer = build_demo_pipeline().tokenizer  # the project's offline byte-level Qwen tokenizer
    modules = {name: module.to(dtype) for name, module in build_modules(device, configs).items()}
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**configs["scheduler"]), tokenizer=tokenizer, **modules
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
