"""Group-wise structure of the joint space: stacked modalities (k-means, kNN) and per-modality probes.

Stacking every modality's embeddings and clustering them asks whether the joint space groups
by meaning (V-measure against categories) or by modality (V-measure against modalities: the
modality gap). A linear probe per modality says how much of the label each bound embedding
holds on its own, the ceiling for any cross-modal use of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.schema import attribute_labels
from anchorbind.metrics import groupwise_metrics, linear_probe

__all__ = ["PROBE_COMPONENTS", "groupwise_section", "probe_folds"]

MIN_ROWS = 12
MAX_FOLDS = 5
PROBE_COMPONENTS = 256
"""Probes read at most this many principal components (see :mod:`anchorbind.metrics.probe`): a plugin's
bound embedding spans at most its trunk width + 1 dimensions, and 256 keeps the solver fast on
the anchor's 1280 while covering every plugin trunk shipped here."""


def probe_folds(labels: np.ndarray, max_folds: int = MAX_FOLDS) -> tuple[int, np.ndarray]:
    """Folds for stratified cross-validation and the rows whose value is common enough to use.

    The number of folds is ``max_folds`` or fewer, so that at least two values keep one sample
    per fold; rows of rarer values are left out (the caller reports how many).

    Returns:
        ``(folds, keep)``; ``folds`` is 0 when fewer than two values have two samples.
    """
    values, counts = np.unique(labels, return_counts=True)
    if len(values) < 2:
        return 0, np.zeros(len(labels), dtype=bool)
    second = int(np.sort(counts)[-2])
    folds = min(max_folds, second)
    if folds < 2:
        return 0, np.zeros(len(labels), dtype=bool)
    return folds, np.isin(labels, values[counts >= folds])


def groupwise_section(emb: EmbeddingSet, *, label_attribute: str = "category", k: int = 10,
                      notes: list[str] | None = None) -> dict[str, Any]:
    """``stacked`` (k-means V-measure vs labels and vs modality, kNN) and ``linear_probe`` per modality."""
    embeddings, labels = {}, {}
    for name in emb.modalities:
        rows = emb.masks[name].nonzero().squeeze(1)
        values = attribute_labels(emb.meta, rows, label_attribute)
        if values is not None and len(rows) >= MIN_ROWS:
            embeddings[name], labels[name] = emb.embeddings[name][rows], values
    if not embeddings:
        if notes is not None:
            notes.append(f"groupwise: skipped, no modality has {MIN_ROWS} rows with attributes.{label_attribute}")
        return {}
    out: dict[str, Any] = {}
    total = sum(len(v) for v in labels.values())
    if len(embeddings) >= 2:
        out["stacked"] = {**groupwise_metrics(embeddings, labels, k=min(k, total - 1)),
                          "modalities": sorted(embeddings)}
    probes = {}
    for name, values in labels.items():
        folds, keep = probe_folds(values)
        if folds == 0:
            continue
        result = linear_probe(embeddings[name][keep].numpy(), values[keep], cv_folds=folds,
                              components=PROBE_COMPONENTS)
        _, counts = np.unique(values[keep], return_counts=True)
        probes[name] = {**result, "chance": float(counts.max() / counts.sum()),
                        "left_out_rare_samples": int((~keep).sum())}
    out["linear_probe"] = probes
    return out
