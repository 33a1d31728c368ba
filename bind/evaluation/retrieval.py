"""Retrieval over every ordered modality pair of a run, with chance levels and the direct-baseline ratio.

Chance levels are what a ranking in random order scores, computed exactly for the evaluated
rows: with ``M`` gallery items of which ``n`` are relevant to a query, a random top-k contains
none of them with hypergeometric probability ``C(M-n, k) / C(M, k)``, so chance R@k is the mean
of ``1 - hypergeom.pmf(0; M, n, k)`` over the queries. Instance level (one relevant item) this
is ``k / M``; category level at k = 1 it is ``Σ_c p_c²`` on paired rows (``p_c`` = share of
category c), the probability that a random gallery item shares the query's category.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import hypergeom

from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.pairs import ordered_pairs
from anchorbind.evaluation.schema import attribute_labels
from anchorbind.metrics import retrieval_metrics

__all__ = ["KS", "MIN_ROWS", "chance_recall", "compare_with_direct", "pair_retrieval", "shared_rows"]

KS = (1, 5, 10)
MIN_ROWS = 2


def shared_rows(emb: EmbeddingSet, *modalities: str) -> torch.Tensor:
    """Indices of the rows that have every one of ``modalities``."""
    mask = torch.ones(len(emb.keys), dtype=torch.bool)
    for name in modalities:
        mask &= emb.masks[name]
    return mask.nonzero().squeeze(1)


def chance_recall(query_labels: np.ndarray, gallery_labels: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Expected category R@k of a random ranking: mean over queries of ``1 - C(M-n,k)/C(M,k)``.

    Queries with no relevant gallery item (n = 0) are left out, as :func:`anchorbind.metrics.retrieval_metrics`
    leaves them out of R@k.

    Args:
        query_labels: ``(N,)`` labels of the queries.
        gallery_labels: ``(M,)`` labels of the gallery.
        ks: cut-offs (each at most M).

    Returns:
        ``{k: chance R@k}``.
    """
    values, counts = np.unique(gallery_labels, return_counts=True)
    relevant = dict(zip(values.tolist(), counts.tolist(), strict=True))
    n = np.array([relevant.get(label, 0) for label in query_labels.tolist()])
    n = n[n > 0]
    total = len(gallery_labels)
    if len(n) == 0:
        return {k: 0.0 for k in ks}
    return {k: float(np.mean(1.0 - hypergeom.pmf(0, total, n, k))) for k in ks}


def pair_retrieval(
    emb: EmbeddingSet,
    loss_config: Mapping[str, Any],
    *,
    label_attribute: str = "category",
    device: str | torch.device | None = None,
    notes: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Instance- and category-level retrieval for every ordered pair, labelled by how it was trained.

    Returns:
        ``{"q->g": {kind, num_pairs, instance/..., category/..., chance/...}}`` (see docs/metrics.md).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, pair in ordered_pairs(emb.modalities, loss_config).items():
        q, g = pair["query"], pair["gallery"]
        rows = shared_rows(emb, q, g)
        if len(rows) < MIN_ROWS:
            if notes is not None:
                notes.append(f"retrieval {name}: skipped, only {len(rows)} rows have both modalities")
            continue
        ks = tuple(k for k in KS if k <= len(rows))
        labels = attribute_labels(emb.meta, rows, label_attribute)
        metrics = retrieval_metrics(emb.embeddings[q][rows], emb.embeddings[g][rows], query_labels=labels,
                                    gallery_labels=labels, paired=True, ks=ks, device=device)
        block: dict[str, Any] = {"kind": pair["kind"], "num_pairs": len(rows), **metrics}
        for k in ks:
            block[f"chance/instance/R@{k}"] = k / len(rows)
        if labels is not None:
            for k, value in chance_recall(labels, labels, ks).items():
                block[f"chance/category/R@{k}"] = value
        elif notes is not None:
            notes.append(f"retrieval {name}: no {label_attribute!r} attribute in every sample's JSON; "
                         "instance level only")
        out[name] = block
    return out


def compare_with_direct(ours: Mapping[str, Mapping[str, Any]], baseline: Mapping[str, Mapping[str, Any]],
                        baseline_name: str) -> dict[str, dict[str, Any]]:
    """Emergent (this run) against direct (a baseline) for every pair that is one here and the other there.

    ``ratio/*`` = emergent / direct; ``ratio_above_chance/*`` = (emergent - chance) /
    (direct - chance), which discounts what a random ranking scores anyway (None when the
    direct baseline is not above chance).
    """
    out: dict[str, dict[str, Any]] = {}
    for pair, direct in baseline.items():
        emergent = ours.get(pair)
        if direct["kind"] != "direct" or emergent is None or emergent["kind"] != "emergent":
            continue
        block: dict[str, Any] = {"baseline": baseline_name}
        for level in ("category", "instance"):
            key = f"{level}/R@1"
            if key not in emergent or key not in direct:
                continue
            e, d, chance = emergent[key], direct[key], emergent.get(f"chance/{key}")
            block[f"emergent/{key}"] = e
            block[f"direct/{key}"] = d
            block[f"chance/{key}"] = chance
            block[f"ratio/{key}"] = e / d if d > 0 else None
            above = d - chance if chance is not None else None
            block[f"ratio_above_chance/{key}"] = (e - chance) / above if above and above > 0 else None
        out[pair] = block
    return out
