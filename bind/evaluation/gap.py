"""The modality gap of a run: every pair of modalities, and the shift-along-the-gap experiment.

Pairs with the anchor (``image-m``) measure how far binding brought each plugin to the image
space; pairs of plugins (``text-audio``) measure the gap that emergent retrieval has to bridge.
The shift experiment (Liang et al. 2022) moves one modality along the centroid difference and
re-measures retrieval: if R@1 barely changes as the gap closes, the gap is not what limits it.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import torch

from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.retrieval import shared_rows
from anchorbind.evaluation.schema import attribute_labels
from anchorbind.metrics import modality_gap_metrics, shift_along_gap
from anchorbind.registry import ANCHOR_MODALITY

__all__ = ["SHIFT_LAMBDAS", "gap_section"]

SHIFT_LAMBDAS = (-0.5, 0.0, 0.25, 0.5, 0.75, 1.0)
"""0 = unshifted, 1 = the moved modality's centroid lands on the target's; -0.5 widens the gap."""
MIN_ROWS = 4


def _pairs(modalities: list[str]) -> list[tuple[str, str]]:
    """Anchor pairs first (``image``, plugin), then plugin pairs in model order."""
    plugins = [m for m in modalities if m != ANCHOR_MODALITY]
    anchor = [(ANCHOR_MODALITY, m) for m in plugins] if ANCHOR_MODALITY in modalities else []
    return anchor + list(combinations(plugins, 2))


def gap_section(emb: EmbeddingSet, *, label_attribute: str = "category",
                device: str | torch.device | None = None,
                notes: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gap statistics per pair ``"a-b"`` and shift curves per ``"moved->target"``.

    The shift moves the plugin toward the anchor for anchor pairs, and the second plugin toward
    the first for plugin pairs (e.g. ``audio->text``).
    """
    gaps: dict[str, Any] = {}
    shifts: dict[str, Any] = {}
    for a, b in _pairs(emb.modalities):
        rows = shared_rows(emb, a, b)
        if len(rows) < MIN_ROWS:
            if notes is not None:
                notes.append(f"gap {a}-{b}: skipped, {len(rows)} rows have both")
            continue
        x, y = emb.embeddings[a][rows], emb.embeddings[b][rows]
        gaps[f"{a}-{b}"] = {**modality_gap_metrics(x, y, names=(a, b), paired=True, device=device),
                            "num_pairs": len(rows)}
        labels = attribute_labels(emb.meta, rows, label_attribute)
        ks = tuple(k for k in (1, 5, 10) if k <= len(rows))
        shifts[f"{b}->{a}"] = shift_along_gap(y, x, SHIFT_LAMBDAS, x_labels=labels, y_labels=labels, ks=ks,
                                              device=device)
    return gaps, shifts
