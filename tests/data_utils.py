"""Processors for data tests: the real anchor and plugins, at tiny sizes."""

from __future__ import annotations

from functools import cache
from typing import Any

from anchorbind.anchor import AnchorConfig, FrozenAnchor
from anchorbind.registry import create_plugin


@cache
def processors() -> dict[str, Any]:
    """``image`` (packaged anchor at 64 px), ``text``, ``audio``, ``depth`` (tiny trunks)."""
    anchor = FrozenAnchor(AnchorConfig(weights="packaged", image_size=64))
    return {
        "image": anchor,
        "text": create_plugin("text", embed_dim=anchor.embed_dim),
        "audio": create_plugin("audio", {"width": 16, "depth": 1, "num_heads": 1}, embed_dim=anchor.embed_dim),
        "depth": create_plugin("depth", {"width": 16, "depth": 1, "num_heads": 1, "image_size": 32},
                               embed_dim=anchor.embed_dim),
    }
