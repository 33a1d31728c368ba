"""Shared by the ImageBind equality test and the script that made its fixture from ImageBind's own code.

A reduced ImageBind (random weights, ImageBind's key names) is fully determined by its tensor
names and shapes and a seed, and so are the test inputs: the fixture stores only those, the
token ids ImageBind's tokenizer gave, and the unit embeddings ImageBind's model computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

FIXTURE = "imagebind_reduced.json"
SEED = 1234
REDUCED_SIZES = {
    "vision_embed_dim": 160, "vision_num_blocks": 2, "vision_num_heads": 2,
    "text_embed_dim": 128, "text_num_blocks": 2, "text_num_heads": 2,
    "audio_embed_dim": 128, "audio_num_blocks": 2, "audio_num_heads": 2,
    "depth_embed_dim": 96, "depth_num_blocks": 2, "depth_num_heads": 2,
    "thermal_embed_dim": 128, "thermal_num_blocks": 2, "thermal_num_heads": 2,
    "imu_embed_dim": 128, "imu_num_blocks": 2, "imu_num_heads": 2,
    "out_embed_dim": 64,
}
"""ImageBindModel arguments: every branch at 2 blocks, widths at ImageBind's head widths x 2 heads."""
LOG_LOGIT_SCALES = {"text": math.log(1 / 0.07), "audio": math.log(20.0), "depth": math.log(5.0),
                    "thermal": math.log(10.0), "imu": math.log(5.0)}
TEXTS = [
    "a dog barking in the rain",
    "Two cafés &amp; a crème brûlée — naïve façade!!",
    "   spaced\tout \n text  ",
    " ".join(["a very long caption that keeps going"] * 20),
]
"""Tokenizer inputs: plain, HTML entity and accents, odd whitespace, and one longer than 77 tokens."""


def random_state(shapes: Mapping[str, list[int] | tuple[int, ...]], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Deterministic random weights for every tensor, in sorted key order from one generator.

    Matrices and kernels ~ N(0, 1/fan_in) (activations stay O(1), so attention is not uniform and
    bias_k/bias_v matter); LayerNorm weights ~ 1 + N(0, 0.1); other vectors and tokens ~ N(0, 0.1)
    or N(0, 0.5); logit scales are ImageBind's; the text mask is ImageBind's causal mask.
    """
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        if key.endswith("log_logit_scale"):
            state[key] = torch.tensor(LOG_LOGIT_SCALES[key.split(".")[1]])
            continue
        if key == "modality_preprocessors.text.mask":
            state[key] = torch.full(shape, float("-inf")).triu(1)
            continue
        noise = torch.randn(shape, generator=generator)
        is_norm = len(shape) == 1 and key.endswith(".weight") and ("norm" in key or "pre_transformer_layer" in key
                                                                      or key.startswith("modality_heads"))
        if is_norm:
            state[key] = 1.0 + 0.1 * noise
        elif len(shape) >= 2 and not key.endswith(("cls_token", "pos_embed", "bias_k", "bias_v")):
            state[key] = noise / math.sqrt(math.prod(shape[1:]))
        elif key.endswith(("cls_token", "pos_embed", "bias_k", "bias_v")):
            state[key] = 0.5 * noise
        else:
            state[key] = 0.1 * noise
    return state


def fixed_inputs(seed: int = SEED) -> dict[str, torch.Tensor]:
    """Two inputs per non-text branch, as ImageBind's model takes them (audio: 3 clips each)."""
    generator = torch.Generator().manual_seed(seed + 1)
    return {
        "vision": torch.randn(2, 3, 224, 224, generator=generator),
        "audio": torch.randn(2, 3, 1, 128, 204, generator=generator),
        "depth": torch.randn(2, 1, 224, 224, generator=generator),
        "thermal": torch.randn(2, 1, 224, 224, generator=generator),
        "imu": torch.randn(2, 6, 2000, generator=generator),
    }
