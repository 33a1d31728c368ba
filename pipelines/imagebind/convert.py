"""Convert ImageBind's checkpoint into an AnchorBind model folder.

:func:`from_imagebind` reads the checkpoint safely (``torch.load(weights_only=True, mmap=True)``
or safetensors), plans the mapping from its shapes (:mod:`.plan`), checks every produced tensor
against the AnchorBind module it is meant for (missing, unexpected and mis-shaped tensors are
one error listing them), and writes an ordinary ``BindModel.save_pretrained`` folder:

* ``deps/anchor.safetensors``: the vision branch as a timm ``vit_huge_patch14_clip_224`` (sizes
  from the checkpoint), its head the bias-free projection into the joint space;
* ``deps/text.backbone/``: the text branch as a transformers ``CLIPTextModel`` folder;
* ``model.safetensors``: the audio, depth, thermal and IMU trunks and every head and logit scale.

The weights are ImageBind's, CC-BY-NC 4.0: the folder's model card says so, and so does every
file that carries them.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from anchorbind.atomic import write_directory
from anchorbind.errors import ConfigError, ModelFileError
from anchorbind.model import BindModel
from anchorbind.pipelines.imagebind.plan import BRANCHES, DROP_PATH, TO_ANCHORBIND, ImportPlan, apply_rule, plan_import
from anchorbind.registry import create_plugin

__all__ = [
    "ANCHOR_MODEL",
    "DEPTH_PRESET",
    "IMAGEBIND_LICENSE",
    "from_imagebind",
    "imagebind_configs",
    "produce_tensors",
    "read_checkpoint",
]

logger = logging.getLogger(__name__)

IMAGEBIND_LICENSE = "cc-by-nc-4.0"
LICENSE_NOTE = ("ImageBind's weights are licensed CC-BY-NC 4.0 (non-commercial); "
                "see https://github.com/facebookresearch/ImageBind")
ANCHOR_MODEL = "vit_huge_patch14_clip_224"
"""timm's OpenCLIP ViT-H/14 architecture: ImageBind's vision trunk, with its sizes overridden from the checkpoint."""
ANCHOR_FILE = "anchor.safetensors"
TEXT_FOLDER = "text.backbone"
TEXT_MODEL_PREFIX = "text_model."
"""transformers 4 names CLIPTextModel's tensors ``text_model.*``; 5 drops the prefix. Rules use neither."""

DEPTH_PRESET: dict[str, Any] = {
    "normalization": "fixed",
    "baseline": 0.075,
    "focal": 518.857901,
    "min_depth": 0.075 * 518.857901 / 75.0,
    "max_depth": 0.075 * 518.857901 / 0.01,
    "disparity_mean": 0.0418 * 75.0,
    "disparity_std": 0.0295 * 75.0,
}
"""ImageBind's depth input, as Omnivore (whose depth recipe ImageBind follows) prepares SUN RGB-D / NYU:
disparity ``baseline * focal / depth`` in pixels (Kinect: 7.5 cm, 518.86 px), clamped to
[0.01, 75], divided by 75, then standardised with mean 0.0418 and std 0.0295. Expressed here in
disparity pixels (mean 3.135, std 2.2125; the clamp as a depth range). ImageBind released no depth
loader, so this is the documented reconstruction (``docs/imagebind.md``)."""


def read_checkpoint(source: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors: a state dict as given, a ``.safetensors`` file, or a ``.pth`` read
    with ``torch.load(weights_only=True, mmap=True)`` (nothing is unpickled beyond tensors).

    A ``{"model": state}`` / ``{"state_dict": state}`` wrapper and a ``module.`` prefix are unwrapped.

    Raises:
        ModelFileError: naming the file: missing, unreadable, or not a mapping of tensors.
    """
    if isinstance(source, Mapping):
        state: Any = dict(source)
        where = "the given state dict"
    else:
        path = Path(source).expanduser()
        where = str(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: no such checkpoint file")
        try:
            if path.suffix == ".safetensors":
                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # torch.load / safetensors raise many types for a bad file
            raise ModelFileError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state, Mapping) and set(state) == {wrapper} and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{where}: not a state dict of tensors")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return dict(state)


def imagebind_configs(plan: ImportPlan, *, anchor_weights: str, text_backbone: str) -> dict[str, Any]:
    """The AnchorBind model config (``{"anchor": ..., "modalities": ...}``) an import plan implies."""
    vision = plan.sizes["vision"]
    origin = {"weights": "ImageBind imagebind_huge", "source": "facebookresearch/ImageBind checkpoint",
              "license": IMAGEBIND_LICENSE, "note": LICENSE_NOTE}
    anchor = {
        "model": ANCHOR_MODEL, "weights": anchor_weights, "image_size": vision.extra["image_size"], "output": "head",
        "model_kwargs": {"embed_dim": vision.width, "depth": vision.depth, "num_heads": vision.num_heads,
                         "mlp_ratio": vision.mlp_ratio, "patch_size": vision.extra["patch_size"],
                         "num_classes": plan.out_dim, "norm_layer": "layernorm"},
    }
    imagebind_trunk = {"stem_bias": False, "stem_norm": True, "attn_bias_kv": True, "global_pool": "token",
                       "head_norm": False, "logit_scale_learnable": False, "pretrained": origin}
    modalities: dict[str, Any] = {}
    for branch, sizes in plan.sizes.items():
        if branch == "vision":
            continue
        name = TO_ANCHORBIND[branch]
        if branch == "text":
            modalities[name] = {
                "backbone": text_backbone, "tokenizer": "clip", "pooling": "eos", "tuning": "frozen",
                "max_length": sizes.extra["context_length"], "head_norm": False, "logit_scale_learnable": True,
                "lora_target_modules": ["q_proj", "v_proj"], "pretrained": origin,
            }
            continue
        shape = {"width": sizes.width, "depth": sizes.depth, "num_heads": sizes.num_heads,
                 "mlp_ratio": sizes.mlp_ratio, "drop_path_rate": DROP_PATH.get(branch, 0.0), **imagebind_trunk}
        extra = dict(sizes.extra)
        if branch == "depth":
            extra.update(DEPTH_PRESET)
        if branch == "imu":
            extra["head_dropout"] = 0.5
            extra["scale"] = [1.0] * extra["channels"]
        modalities[name] = {**shape, **extra}
    return {"anchor": anchor, "modalities": modalities}


def _clip_text_config(plan: ImportPlan) -> Any:
    from transformers import CLIPTextConfig

    text = plan.sizes["text"]
    return CLIPTextConfig(
        vocab_size=text.extra["vocab_size"], hidden_size=text.width,
        intermediate_size=round(text.width * text.mlp_ratio), num_hidden_layers=text.depth,
        num_attention_heads=text.num_heads,
        max_position_embeddings=text.extra["context_length"], hidden_act="gelu", layer_norm_eps=1e-6,
        projection_dim=plan.out_dim, bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )


def _expected_shapes(plan: ImportPlan, configs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every target tensor's shape, from the AnchorBind modules built on the meta device."""
    import timm

    expected: dict[str, tuple[int, ...]] = {}
    anchor = configs["anchor"]
    with torch.device("meta"):
        vit = timm.create_model(anchor["model"], pretrained=False, img_size=anchor["image_size"],
                                **anchor["model_kwargs"])
        expected |= {f"anchor:{k}": tuple(v.shape) for k, v in vit.state_dict().items()}
        if "text" in plan.sizes:
            from transformers import CLIPTextModel

            text = CLIPTextModel(_clip_text_config(plan))
            expected |= {f"text_backbone:{k.removeprefix(TEXT_MODEL_PREFIX)}": tuple(v.shape)
                         for k, v in text.state_dict().items()}
            expected |= {"plugin:text:head.proj.weight": (plan.out_dim, plan.sizes["text"].width),
                         "plugin:text:logit_scale.log_scale": ()}
        for name, cfg in configs["modalities"].items():
            if name == "text":
                continue
            plugin = create_plugin(name, {**cfg, "pretrained": None}, embed_dim=plan.out_dim)
            expected |= {f"plugin:{name}:{k}": tuple(v.shape) for k, v in plugin.state_dict().items()}
    return expected


def produce_tensors(state: Mapping[str, torch.Tensor], plan: ImportPlan,
                    configs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Every AnchorBind tensor (``"anchor:..."``, ``"text_backbone:..."``, ``"plugin:<name>:..."``).

    Works on meta tensors too (a checkpoint's shapes only), which is how the full-size mapping
    is checked without the 4.5 GB file.

    Raises:
        ModelFileError: listing target tensors no rule makes, tensors no module expects, and
            tensors of the wrong shape; or a text mask that is not causal.
    """
    expected = _expected_shapes(plan, configs)
    made = {rule.target: apply_rule(rule, state, expected.get(rule.target, ())) for rule in plan.rules}
    for key, check in plan.checked_only.items():
        value = state[key]
        if check == "causal_mask" and value.device.type != "meta":
            causal = torch.full(value.shape, float("-inf")).triu(1)
            if not torch.equal(value.float(), causal):
                raise ModelFileError(f"{key}: ImageBind's text mask is not the causal mask this import assumes")
    missing = sorted(expected.keys() - made.keys())
    unexpected = sorted(made.keys() - expected.keys())
    mis_shaped = [f"{k}: {tuple(made[k].shape)} != {expected[k]}" for k in sorted(made.keys() & expected.keys())
                  if tuple(made[k].shape) != expected[k]]
    if missing or unexpected or mis_shaped:
        raise ModelFileError(f"the checkpoint does not map onto AnchorBind's modules: missing {missing[:20]}, "
                             f"unexpected {unexpected[:20]}, mis-shaped {mis_shaped[:20]}")
    return made


def _part(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value.detach().float().contiguous() for key, value in tensors.items()
            if key.startswith(prefix)}


def from_imagebind(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    out: str | os.PathLike[str] | None = None,
    *,
    modalities: Sequence[str] | None = None,
    heads: Mapping[str, int] | None = None,
    overwrite: bool = False,
) -> BindModel:
    """Import ImageBind's checkpoint (or a reduced one of the same architecture) as a BindModel.

    Args:
        source: ``imagebind_huge.pth`` (or a ``.safetensors``), or its state dict.
        out: the model folder to write (``from_pretrained`` loads it later). ``None``: a new
            temporary folder, which the returned model's config points into and which is left
            in place for the process's lifetime (save the model to keep it).
        modalities: ImageBind branches to import (default all six; ``vision`` is always the anchor).
        heads: head counts per branch where they cannot be inferred (see :mod:`.plan`).
        overwrite: replace an existing ``out``.

    Returns:
        The model loaded back from ``out`` with ``BindModel.from_pretrained``.

    Raises:
        ModelFileError: the checkpoint is unreadable or does not map (every problem listed).
        ConfigError: ``out`` exists and ``overwrite`` is not set.
    """
    state = read_checkpoint(source)
    plan = plan_import({k: tuple(v.shape) for k, v in state.items()}, tuple(modalities or BRANCHES), heads)
    if plan.skipped_branches:
        logger.info("not importing ImageBind branches %s", plan.skipped_branches)
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="anchorbind-imagebind-")) / "model"
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ConfigError(f"{folder}: exists; pass overwrite=True (--overwrite) to replace it")
    logger.warning(LICENSE_NOTE)

    def write(tmp: Path) -> None:
        deps = tmp / "deps"
        deps.mkdir()
        configs = imagebind_configs(plan, anchor_weights=str(deps / ANCHOR_FILE), text_backbone=str(deps / TEXT_FOLDER))
        tensors = produce_tensors(state, plan, configs)
        save_file(_part(tensors, "anchor:"), str(deps / ANCHOR_FILE),
                  metadata={"format": "pt", "license": IMAGEBIND_LICENSE,
                            "weights": "ImageBind imagebind_huge (vision)",
                            "source": "facebookresearch/ImageBind checkpoint"})
        if "text" in plan.sizes:
            _write_text_backbone(plan, _part(tensors, "text_backbone:"), deps / TEXT_FOLDER)
        model = BindModel.from_config(configs)
        plugin_state = {f"plugins.{key[len('plugin:'):].replace(':', '.', 1)}": value.detach().float()
                        for key, value in tensors.items() if key.startswith("plugin:")}
        result = model.load_state_dict(plugin_state, strict=False)
        if result.unexpected_keys:
            raise ModelFileError(f"tensors the built model does not have: {result.unexpected_keys[:20]}")
        model.write_model_files(tmp, load_name=str(folder))

    write_directory(folder, write)
    model = BindModel.from_pretrained(folder)
    logger.info("imported ImageBind into %s (%s)", folder, ", ".join(model.modalities))
    return model


def _write_text_backbone(plan: ImportPlan, tensors: Mapping[str, torch.Tensor], folder: Path) -> None:
    """The text branch as a transformers ``CLIPTextModel`` folder, with a model card stating the licence."""
    from transformers import CLIPTextModel

    model = CLIPTextModel(_clip_text_config(plan))
    prefix = TEXT_MODEL_PREFIX if any(k.startswith(TEXT_MODEL_PREFIX) for k in model.state_dict()) else ""
    model.load_state_dict({prefix + key: value for key, value in tensors.items()}, strict=True)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").write_text(
        f"---\nlicense: {IMAGEBIND_LICENSE}\nlibrary_name: transformers\n---\n\n"
        "# ImageBind text tower\n\nThe text branch of ImageBind's `imagebind_huge` (an OpenCLIP text "
        f"transformer), converted by `anchorbind import-imagebind`. {LICENSE_NOTE}.\n"
        "It reads CLIP BPE token ids (context "
        f"{plan.sizes['text'].extra['context_length']}); its pooled output is the end-of-text token after "
        "the final LayerNorm, which is ImageBind's text head before the projection.\n")


def checkpoint_size_note(state: Mapping[str, torch.Tensor]) -> str:
    """``"1,311 tensors, 1,201.9 M parameters"`` for logs."""
    count = sum(math.prod(v.shape) for v in state.values())
    return f"{len(state):,} tensors, {count / 1e6:,.1f} M parameters"
