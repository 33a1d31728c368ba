"""Processors for data tests (no model is built), and the anchor they describe."""

from __future__ import annotations

from functools import cache
from typing import Any

from anchorbind.anchor import AnchorConfig, FrozenAnchor
from anchorbind.processor import Processor
from anchorbind.registry import create_processor

ANCHOR_CONFIG = AnchorConfig(weights="packaged", image_size=64)
PLUGIN_CONFIGS: dict[str, dict[str, Any]] = {
    "text": {},
    "audio": {"width": 16, "depth": 1, "num_heads": 1},
    "depth": {"width": 16, "depth": 1, "num_heads": 1, "image_size": 32},
}
"""Tiny trunks: only their preprocessing fields matter to the processors."""


@cache
def processors() -> dict[str, Processor]:
    """``image`` (the packaged anchor's, at 64 px), ``text``, ``audio``, ``depth``: processors only."""
    return {"image": create_processor("image", ANCHOR_CONFIG),
            **{name: create_processor(name, config) for name, config in PLUGIN_CONFIGS.items()}}


@cache
def anchor() -> FrozenAnchor:
    """The packaged anchor at 64 px: the model whose preprocessing ``processors()["image"]`` is."""
    return FrozenAnchor(ANCHOR_CONFIG)
