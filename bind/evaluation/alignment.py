"""Representational alignment of a run: plugins with the anchor and with each other.

For each plugin three comparisons with mutual kNN, CKA (biased and unbiased) and CKNNA:
its native trunk features with the anchor's pooled features (how image-like the trunk is),
its bound embedding with the anchor's embedding (what training optimised), and its trunk
features with its own embedding (how much the projection head reshapes them). For each pair
of plugins the same between their features and between their embeddings: the alignment that
emergent retrieval relies on.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.retrieval import shared_rows
from anchorbind.metrics import alignment_metrics
from anchorbind.registry import ANCHOR_MODALITY

__all__ = ["alignment_section"]

MAX_SAMPLES = 1000
"""CKA and CKNNA build N x N kernels; 1000 rows keep them at a few MB and under a second."""


def alignment_section(emb: EmbeddingSet, *, k: int = 10, max_samples: int = MAX_SAMPLES,
                      notes: list[str] | None = None) -> dict[str, Any]:
    """``{"<plugin>": {...vs anchor...}, "<a>-<b>": {...plugin pair...}}`` (see docs/metrics.md)."""
    out: dict[str, Any] = {}
    plugins = [m for m in emb.modalities if m != ANCHOR_MODALITY]
    comparisons: list[tuple[str, dict[str, tuple[str, str, str, str]]]] = []
    if ANCHOR_MODALITY in emb.modalities:
        for m in plugins:
            comparisons.append((m, {
                "features_vs_anchor_features": ("features", m, "features", ANCHOR_MODALITY),
                "embeddings_vs_anchor_embeddings": ("embeddings", m, "embeddings", ANCHOR_MODALITY),
                "features_vs_own_embeddings": ("features", m, "embeddings", m),
            }))
    for a, b in combinations(plugins, 2):
        comparisons.append((f"{a}-{b}", {
            "features_vs_features": ("features", a, "features", b),
            "embeddings_vs_embeddings": ("embeddings", a, "embeddings", b),
        }))
    for name, blocks in comparisons:
        modalities = {spec[1] for spec in blocks.values()} | {spec[3] for spec in blocks.values()}
        rows = shared_rows(emb, *modalities)[:max_samples]
        if len(rows) <= k + 1:
            if notes is not None:
                notes.append(f"alignment {name}: skipped, {len(rows)} shared rows (need more than {k + 1})")
            continue
        out[name] = {"num_samples": len(rows)}
        for block, (kind_a, a, kind_b, b) in blocks.items():
            x = getattr(emb, kind_a)[a][rows]
            y = getattr(emb, kind_b)[b][rows]
            out[name][block] = alignment_metrics(x, y, k=k)
    return out
