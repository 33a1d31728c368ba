"""What an ImageBind checkpoint holds and where each of its tensors goes in AnchorBind.

ImageBind (facebookresearch/ImageBind, ``imagebind/models/imagebind_model.py``) keeps every
branch in four module dicts: ``modality_preprocessors`` (patch stems, class tokens, position
embeddings), ``modality_trunks`` (``nn.MultiheadAttention`` blocks), ``modality_heads``
(LayerNorm -> select -> bias-free Linear) and ``modality_postprocessors`` (normalise, logit scale).
AnchorBind keeps a branch in one place: the anchor (a timm ViT), the text plugin (a transformers
``CLIPTextModel`` backbone) or a plugin's timm ViT trunk. :func:`plan_import` reads only the
checkpoint's *shapes* (so it works on the meta device) and returns, per branch, the sizes it
implies and a list of :class:`Rule` s that say how each AnchorBind tensor is made from ImageBind's.

Head counts are not stored in a checkpoint; they are inferred as width / ImageBind's head
width for that branch (80 vision, 48 depth, 64 the others) unless given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from anchorbind.errors import ModelFileError

__all__ = [
    "BRANCHES",
    "HEAD_DIMS",
    "TO_ANCHORBIND",
    "BranchSizes",
    "ImportPlan",
    "Rule",
    "plan_import",
]

BRANCHES = ("vision", "text", "audio", "depth", "thermal", "imu")
TO_ANCHORBIND = {"vision": "image", "text": "text", "audio": "audio", "depth": "depth", "thermal": "thermal",
                 "imu": "imu"}
"""ImageBind's branch names -> AnchorBind's (the vision branch is the anchor, ``image``)."""
HEAD_DIMS = {"vision": 80, "text": 64, "audio": 64, "depth": 48, "thermal": 64, "imu": 64}
"""Attention head width of each branch in ``imagebind_huge`` (e.g. vision 1280 / 16 heads)."""
DROP_PATH = {"audio": 0.1, "imu": 0.7}
"""``imagebind_huge``'s training drop-path rates (used only when fine-tuning)."""
AUDIO_STRIDE = 10
"""ImageBind's audio patch stride (not recorded in the checkpoint)."""
AUDIO_INPUT = (128, 204)
"""ImageBind's audio input: 128 mel bins x 204 frames."""
IMU_PATCH = 8
"""ImageBind's IMU patch length in samples (not recorded in the checkpoint)."""
STEMS = {"audio": "rgbt_stem", "depth": "depth_stem", "thermal": "rgbt_stem", "imu": "imu_stem"}
HEAD_PROJ = {"vision": "2", "audio": "2", "depth": "2", "thermal": "2", "imu": "3"}

Transform = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """One AnchorBind tensor: ``target`` (``"anchor:..."``, ``"text_backbone:..."`` or
    ``"plugin:<name>:..."``) made by ``transform`` from ImageBind's ``sources`` (none: a constant)."""

    target: str
    sources: tuple[str, ...]
    transform: str = "copy"


@dataclass
class BranchSizes:
    """What a branch's shapes say about it."""

    width: int
    depth: int
    num_heads: int
    mlp_ratio: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportPlan:
    """Sizes per branch, the tensor rules, and the checkpoint keys no rule reads (checked, then dropped)."""

    sizes: dict[str, BranchSizes]
    out_dim: int
    rules: list[Rule]
    checked_only: dict[str, str]
    skipped_branches: list[str] = field(default_factory=list)


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str) -> tuple[int, ...]:
    try:
        return tuple(shapes[key])
    except KeyError:
        raise ModelFileError(f"not an ImageBind checkpoint: missing {key}") from None


def _block_count(shapes: Mapping[str, tuple[int, ...]], branch: str) -> int:
    pattern = re.compile(rf"^modality_trunks\.{branch}\.blocks\.(\d+)\.")
    indices = {int(m.group(1)) for key in shapes if (m := pattern.match(key))}
    if not indices:
        raise ModelFileError(f"not an ImageBind checkpoint: branch {branch!r} has no transformer blocks")
    if indices != set(range(len(indices))):
        raise ModelFileError(f"branch {branch!r}: block indices are not 0..{len(indices) - 1} ({sorted(indices)})")
    return len(indices)


def _heads(branch: str, width: int, heads: Mapping[str, int]) -> int:
    if branch in heads:
        count = int(heads[branch])
    else:
        count, rest = divmod(width, HEAD_DIMS[branch])
        if rest or count == 0:
            raise ModelFileError(
                f"branch {branch!r}: width {width} is not a multiple of ImageBind's head width {HEAD_DIMS[branch]}; "
                f"the head count is not stored in a checkpoint, give it (--heads {branch}=N)")
    if count <= 0 or width % count:
        raise ModelFileError(f"branch {branch!r}: width {width} is not divisible by {count} heads")
    return count


def _sizes(shapes: Mapping[str, tuple[int, ...]], branch: str, heads: Mapping[str, int]) -> BranchSizes:
    trunk = f"modality_trunks.{branch}.blocks.0"
    width = _shape(shapes, f"{trunk}.norm_1.weight")[0]
    hidden = _shape(shapes, f"{trunk}.mlp.fc1.weight")[0]
    return BranchSizes(width=width, depth=_block_count(shapes, branch), num_heads=_heads(branch, width, heads),
                       mlp_ratio=hidden / width)


def _block_rules(branch: str, prefix: str, depth: int, *, bias_kv: bool, text: bool = False) -> list[Rule]:
    rules = []
    for i in range(depth):
        src = f"modality_trunks.{branch}.blocks.{i}"
        if text:  # transformers CLIPTextModel
            dst = f"{prefix}encoder.layers.{i}"
            for n, part in enumerate("qkv"):
                for leaf in ("weight", "bias"):
                    rules.append(Rule(f"{dst}.self_attn.{part}_proj.{leaf}", (f"{src}.attn.in_proj_{leaf}",),
                                      f"chunk3_{n}"))
            names = {"attn.out_proj": "self_attn.out_proj", "norm_1": "layer_norm1", "norm_2": "layer_norm2",
                     "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
        else:  # timm Block
            dst = f"{prefix}blocks.{i}"
            rules.append(Rule(f"{dst}.attn.qkv.weight", (f"{src}.attn.in_proj_weight",)))
            rules.append(Rule(f"{dst}.attn.qkv.bias", (f"{src}.attn.in_proj_bias",)))
            if bias_kv:
                rules.append(Rule(f"{dst}.attn.bias_k", (f"{src}.attn.bias_k",)))
                rules.append(Rule(f"{dst}.attn.bias_v", (f"{src}.attn.bias_v",)))
            names = {"attn.out_proj": "attn.proj", "norm_1": "norm1", "norm_2": "norm2", "mlp.fc1": "mlp.fc1",
                     "mlp.fc2": "mlp.fc2"}
        for old, new in names.items():
            for leaf in ("weight", "bias"):
                rules.append(Rule(f"{dst}.{new}.{leaf}", (f"{src}.{old}.{leaf}",)))
    return rules


def _vision(shapes: Mapping[str, tuple[int, ...]], heads: Mapping[str, int]) -> tuple[BranchSizes, list[Rule]]:
    sizes = _sizes(shapes, "vision", heads)
    stem = _shape(shapes, "modality_preprocessors.vision.rgbt_stem.proj.1.weight")  # (D, 3, T, p, p)
    tokens = _shape(shapes, "modality_preprocessors.vision.pos_embedding_helper.pos_embed")[1]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ModelFileError(f"vision: {tokens - 1} position embeddings are not a square grid")
    sizes.extra = {"patch_size": stem[-1], "image_size": grid * stem[-1], "frames": stem[2]}
    pre = "modality_preprocessors.vision"
    rules = [Rule("anchor:cls_token", (f"{pre}.cls_token",)),
             Rule("anchor:pos_embed", (f"{pre}.pos_embedding_helper.pos_embed",)),
             Rule("anchor:patch_embed.proj.weight", (f"{pre}.rgbt_stem.proj.1.weight",), "sum_frames"),
             Rule("anchor:norm_pre.weight", ("modality_trunks.vision.pre_transformer_layer.0.weight",)),
             Rule("anchor:norm_pre.bias", ("modality_trunks.vision.pre_transformer_layer.0.bias",)),
             Rule("anchor:norm.weight", ("modality_heads.vision.0.weight",)),
             Rule("anchor:norm.bias", ("modality_heads.vision.0.bias",)),
             Rule("anchor:head.weight", ("modality_heads.vision.2.weight",)),
             Rule("anchor:head.bias", (), "zeros_out")]
    rules += _block_rules("vision", "anchor:", sizes.depth, bias_kv=False)
    return sizes, rules


def _text(shapes: Mapping[str, tuple[int, ...]], heads: Mapping[str, int]) -> tuple[BranchSizes, list[Rule]]:
    sizes = _sizes(shapes, "text", heads)
    vocab, _ = _shape(shapes, "modality_preprocessors.text.token_embedding.weight")
    context = _shape(shapes, "modality_preprocessors.text.pos_embed")[1]
    sizes.extra = {"vocab_size": vocab, "context_length": context}
    pre, tb = "modality_preprocessors.text", "text_backbone:"  # CLIPTextModel names, less any "text_model." prefix
    rules = [Rule(f"{tb}embeddings.token_embedding.weight", (f"{pre}.token_embedding.weight",)),
             Rule(f"{tb}embeddings.position_embedding.weight", (f"{pre}.pos_embed",), "squeeze0"),
             Rule(f"{tb}final_layer_norm.weight", ("modality_heads.text.proj.0.weight",)),
             Rule(f"{tb}final_layer_norm.bias", ("modality_heads.text.proj.0.bias",)),
             Rule("plugin:text:head.proj.weight", ("modality_heads.text.proj.1.weight",)),
             Rule("plugin:text:logit_scale.log_scale", ("modality_postprocessors.text.1.log_logit_scale",))]
    rules += _block_rules("text", "text_backbone:", sizes.depth, bias_kv=False, text=True)
    return sizes, rules


def _one_channel(shapes: Mapping[str, tuple[int, ...]], branch: str, heads: Mapping[str, int]
                 ) -> tuple[BranchSizes, list[Rule]]:
    """audio, depth, thermal, imu: a bias-free stem + LayerNorm, bias-kv blocks, a class-token head."""
    sizes = _sizes(shapes, branch, heads)
    pre, stem = f"modality_preprocessors.{branch}", STEMS[branch]
    stem_shape = _shape(shapes, f"{pre}.{stem}.proj.weight")
    pos_key = f"{pre}.pos_embed" if branch == "imu" else f"{pre}.pos_embedding_helper.pos_embed"
    patches = _shape(shapes, pos_key)[1] - 1
    if branch == "imu":
        channels, rest = divmod(stem_shape[1], IMU_PATCH)
        if rest:
            raise ModelFileError(f"imu: stem input width {stem_shape[1]} is not channels x {IMU_PATCH} samples")
        sizes.extra = {"patch_size": IMU_PATCH, "channels": channels, "num_samples": patches * IMU_PATCH}
    elif branch == "audio":
        kernel = stem_shape[-1]
        grid = [(n - kernel) // AUDIO_STRIDE + 1 for n in AUDIO_INPUT]
        if grid[0] * grid[1] != patches:
            raise ModelFileError(f"audio: {patches} position embeddings do not fit ImageBind's {AUDIO_INPUT[0]}x"
                                 f"{AUDIO_INPUT[1]} spectrogram with {kernel}-bin patches every {AUDIO_STRIDE}")
        sizes.extra = {"patch_size": kernel, "patch_stride": AUDIO_STRIDE}
    else:
        side = math.isqrt(patches)
        if side * side != patches:
            raise ModelFileError(f"{branch}: {patches} position embeddings are not a square grid")
        sizes.extra = {"patch_size": stem_shape[-1], "image_size": side * stem_shape[-1]}
    name = TO_ANCHORBIND[branch]
    dst = f"plugin:{name}:"
    rules = [Rule(f"{dst}trunk.cls_token", (f"{pre}.cls_token",)),
             Rule(f"{dst}trunk.pos_embed", (pos_key,)),
             Rule(f"{dst}trunk.patch_embed.proj.weight", (f"{pre}.{stem}.proj.weight",)),
             Rule(f"{dst}trunk.patch_embed.norm.weight", (f"{pre}.{stem}.norm_layer.weight",)),
             Rule(f"{dst}trunk.patch_embed.norm.bias", (f"{pre}.{stem}.norm_layer.bias",)),
             Rule(f"{dst}trunk.norm.weight", (f"modality_heads.{branch}.0.weight",)),
             Rule(f"{dst}trunk.norm.bias", (f"modality_heads.{branch}.0.bias",)),
             Rule(f"{dst}head.proj.weight", (f"modality_heads.{branch}.{HEAD_PROJ[branch]}.weight",)),
             Rule(f"{dst}logit_scale.log_scale", (f"modality_postprocessors.{branch}.1.log_logit_scale",))]
    rules += _block_rules(branch, f"{dst}trunk.", sizes.depth, bias_kv=True)
    return sizes, rules


def plan_import(shapes: Mapping[str, tuple[int, ...]], modalities: tuple[str, ...] = BRANCHES,
                heads: Mapping[str, int] | None = None) -> ImportPlan:
    """The import plan for a checkpoint with these tensor ``shapes`` (``{key: shape}``).

    Args:
        shapes: every tensor of the checkpoint.
        modalities: ImageBind branch names to import (``vision`` always: it is the anchor).
        heads: head counts by branch, overriding the inference from ImageBind's head widths.

    Raises:
        ModelFileError: a branch is missing or its shapes are inconsistent, the head count
            cannot be inferred, or the checkpoint holds tensors of no known branch (listed).
    """
    heads = dict(heads or {})
    unknown_branches = sorted(set(modalities) - set(BRANCHES))
    if unknown_branches:
        raise ModelFileError(f"unknown ImageBind modalities {unknown_branches}; ImageBind has {list(BRANCHES)}")
    chosen = ("vision", *[b for b in BRANCHES if b in modalities and b != "vision"])
    sizes: dict[str, BranchSizes] = {}
    rules: list[Rule] = []
    for branch in chosen:
        if branch == "vision":
            branch_sizes, branch_rules = _vision(shapes, heads)
        elif branch == "text":
            branch_sizes, branch_rules = _text(shapes, heads)
        else:
            branch_sizes, branch_rules = _one_channel(shapes, branch, heads)
        sizes[branch], rules = branch_sizes, rules + branch_rules
    out_dim = _shape(shapes, "modality_heads.vision.2.weight")[0]
    checked_only = {"modality_preprocessors.text.mask": "causal_mask"} if "text" in chosen else {}
    missing = sorted({source for rule in rules for source in rule.sources if source not in shapes}
                     | {key for key in checked_only if key not in shapes})
    if missing:
        raise ModelFileError(f"missing tensors ({len(missing)}): {missing[:20]}")
    read = {source for rule in rules for source in rule.sources} | set(checked_only)
    ours = re.compile(rf"^modality_(preprocessors|trunks|heads|postprocessors)\.({'|'.join(BRANCHES)})\.")
    strangers = sorted(key for key in shapes if key not in read and not ours.match(key))
    if strangers:
        raise ModelFileError(f"tensors of no ImageBind branch ({len(strangers)}): {strangers[:20]}")
    skipped = sorted({m.group(2) for key in shapes if key not in read and (m := ours.match(key))} - set(chosen))
    leftovers = sorted(key for key in shapes
                       if key not in read and (m := ours.match(key)) and m.group(2) in chosen)
    if leftovers:
        raise ModelFileError(f"unexpected tensors in imported branches ({len(leftovers)}): {leftovers[:20]}")
    return ImportPlan(sizes=sizes, out_dim=out_dim, rules=rules, checked_only=checked_only, skipped_branches=skipped)


def apply_rule(rule: Rule, state: Mapping[str, torch.Tensor], target_shape: tuple[int, ...]) -> torch.Tensor:
    """The AnchorBind tensor ``rule`` makes from ``state`` (a contiguous float copy, or meta)."""
    if rule.transform == "zeros_out":
        return torch.zeros(target_shape)
    value = state[rule.sources[0]]
    if rule.transform == "copy":
        out = value
    elif rule.transform == "sum_frames":  # Conv3d over an image repeated in time == Conv2d with summed kernels
        out = value.sum(dim=2)
    elif rule.transform == "squeeze0":
        out = value[0]
    elif rule.transform.startswith("chunk3_"):
        out = value.chunk(3, dim=0)[int(rule.transform[-1])]
    else:
        raise ValueError(f"unknown transform {rule.transform!r}")
    return out.reshape(target_shape) if out.ndim == 0 and target_shape == () else out
