"""Visiocentrism: which information survives binding a modality to an image space?

For every modality and every ground-truth attribute, a linear probe reads the attribute from
(a) the bound embedding and (b) the plugin's native trunk features. Binding through a frozen
image anchor rewards keeping only what images can show, so attributes that images cannot see
(the world's rhythm, tempo, loudness) should lose more probe accuracy than shared ones.

Relative probe loss of attribute ``a``::

    rel_loss(a) = (acc_native(a) - acc_bound(a)) / max(acc_native(a) - chance(a), 0.05)

i.e. the fraction of the *above-chance* information the bound embedding lost (0 = nothing lost,
1 = down to chance). The visiocentrism index of a modality is::

    index = mean_{a non-visual} rel_loss(a) - mean_{a shared} rel_loss(a)

Positive: binding destroys non-visual information more than shared information.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from bind.eval import linear_probe, retrieval_metrics, stratified_split

__all__ = ["GROUPS", "attribute_probes", "emergent_by_attribute", "visiocentrism_index"]

GROUPS = {"visual": "visual-only", "both": "shared", "audio": "non-visual"}
MIN_HEADROOM = 0.05


def _labels(meta: Sequence[dict[str, Any] | None], rows: np.ndarray, attribute: str) -> np.ndarray:
    return np.array([str(meta[i]["attributes"][attribute]) for i in rows])


def attribute_probes(
    embeddings: torch.Tensor,
    features: torch.Tensor,
    mask: torch.Tensor,
    meta: Sequence[dict[str, Any] | None],
    observability: Mapping[str, str],
    *,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Probe accuracy per attribute from bound embeddings and from native features (held-out split)."""
    rows = mask.nonzero().squeeze(1).numpy()
    rows = np.array([i for i in rows if meta[i] is not None], dtype=int)
    out: dict[str, dict[str, Any]] = {}
    for attribute, seen_by in observability.items():
        labels = _labels(meta, rows, attribute)
        values, counts = np.unique(labels, return_counts=True)
        # a stratified split needs two samples of a value: rarer values are left out (and counted)
        kept_values = values[counts >= 2]
        keep = np.isin(labels, kept_values)
        if len(kept_values) < 2:
            out[attribute] = {"group": GROUPS.get(seen_by, seen_by),
                              "skipped": "fewer than two values with >= 2 samples"}
            continue
        labels, attr_rows = labels[keep], rows[keep]
        counts = counts[counts >= 2]
        train, test = stratified_split(labels, test_size=0.3, seed=seed)
        # chance: the majority-class rate, what a constant predictor scores on this split
        result = {"group": GROUPS.get(seen_by, seen_by), "chance": float(counts.max() / counts.sum())}
        result["left_out_rare_samples"] = int((~keep).sum())
        for name, x in (("bound", embeddings[attr_rows]), ("native", features[attr_rows])):
            probe = linear_probe(x.numpy(), labels, train_indices=train, test_indices=test, seed=seed)
            result[name] = probe["accuracy"]
        result["relative_loss"] = (result["native"] - result["bound"]) / max(result["native"] - result["chance"],
                                                                             MIN_HEADROOM)
        out[attribute] = result
    return out


def visiocentrism_index(probes: Mapping[str, Mapping[str, Any]]) -> float | None:
    """Mean relative loss on non-visual attributes minus that on shared ones (None if either is absent)."""
    by_group: dict[str, list[float]] = {}
    for result in probes.values():
        if "relative_loss" not in result:
            continue
        by_group.setdefault(result["group"], []).append(result["relative_loss"])
    if "non-visual" not in by_group or "shared" not in by_group:
        return None
    return float(np.mean(by_group["non-visual"]) - np.mean(by_group["shared"]))


def emergent_by_attribute(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    meta: Sequence[dict[str, Any] | None],
    observability: Mapping[str, str],
    *,
    query_is_text: bool,
) -> dict[str, dict[str, Any]]:
    """Category-level R@1 where relevance means "same value of attribute a", per attribute.

    For text queries only captions that state the attribute count (a caption that does not
    mention the rhythm cannot ask for it); the chance level is reported beside each number.
    """
    out: dict[str, dict[str, Any]] = {}
    all_rows = np.arange(len(meta))
    for attribute, seen_by in observability.items():
        rows = all_rows
        if query_is_text:
            rows = np.array([i for i in all_rows if meta[i]["caption_states"].get(attribute)], dtype=int)
        if len(rows) < 10:
            continue
        q_labels = _labels(meta, rows, attribute)
        g_labels = _labels(meta, all_rows, attribute)
        metrics = retrieval_metrics(queries[rows], gallery, query_labels=q_labels, gallery_labels=g_labels,
                                    paired=False, ks=(1, 5))
        _, counts = np.unique(g_labels, return_counts=True)
        p = counts / counts.sum()
        out[attribute] = {"group": GROUPS.get(seen_by, seen_by), "R@1": metrics["category/R@1"],
                          "R@5": metrics["category/R@5"], "chance_R@1": float((p**2).sum()),
                          "num_queries": len(rows)}
    return out
