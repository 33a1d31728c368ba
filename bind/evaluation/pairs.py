"""Which modality pairs a run trained, and which are emergent or directly trained.

* ``trained``: the anchor (image) with a plugin bound to it;
* ``direct``: two plugins listed in the run's ``loss.direct_pairs`` (a baseline);
* ``emergent``: two plugins never paired in training — comparable only through the anchor.

A plugin whose anchor weight is 0 (a pure direct baseline) makes its image pairs ``untrained``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import permutations
from typing import Any

from anchorbind.registry import ANCHOR_MODALITY

__all__ = ["ordered_pairs", "pair_kind"]


def pair_kind(a: str, b: str, loss_config: Mapping[str, Any]) -> str:
    """``trained``, ``direct``, ``emergent`` or ``untrained`` for the unordered pair {a, b}."""
    direct = {frozenset(p) for p in loss_config.get("direct_pairs", [])}
    weights = loss_config.get("weights", {}) or {}
    if ANCHOR_MODALITY in (a, b):
        other = b if a == ANCHOR_MODALITY else a
        return "trained" if float(weights.get(other, 1.0)) > 0 else "untrained"
    if frozenset((a, b)) in direct:
        return "direct"
    return "emergent"


def ordered_pairs(modalities: Sequence[str], loss_config: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``{"a->b": {"query": a, "gallery": b, "kind": ...}}`` for every ordered pair."""
    return {
        f"{a}->{b}": {"query": a, "gallery": b, "kind": pair_kind(a, b, loss_config)}
        for a, b in permutations(modalities, 2)
    }
