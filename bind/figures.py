"""Figures of the report (matplotlib, Agg): each returns the PNG path it wrote.

Every figure has a title, labelled axes and a legend where there is more than one series.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA

from bind.extract import EmbeddingSet

__all__ = [
    "alignment_scatter", "gap_projection", "probe_bars", "shift_curves", "similarity_matrices", "training_curves",
    "visiocentrism_bars",
]


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _category_centroids(emb: EmbeddingSet, modality: str, classes: list[str]) -> np.ndarray:
    rows = emb.masks[modality].nonzero().squeeze(1).tolist()
    labels = np.array([emb.meta[i]["attributes"]["category"] for i in rows])
    x = emb.embeddings[modality][rows].numpy()
    centroids = np.stack([x[labels == c].mean(0) for c in classes])
    return centroids / np.linalg.norm(centroids, axis=1, keepdims=True)


def similarity_matrices(emb: EmbeddingSet, pairs: list[tuple[str, str]], path: Path) -> Path:
    """Cosine similarity between category centroids of two modalities, one panel per pair."""
    classes = sorted({m["attributes"]["category"] for m in emb.meta if m})
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.6 * len(pairs), 4.2), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs, strict=True):
        sims = _category_centroids(emb, a, classes) @ _category_centroids(emb, b, classes).T
        image = ax.imshow(sims, cmap="viridis")
        ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel(f"{b} category centroid")
        ax.set_ylabel(f"{a} category centroid")
        ax.set_title(f"{a} vs {b}: centroid cosine")
        fig.colorbar(image, ax=ax, fraction=0.046, label="cosine similarity")
    return _save(fig, path)


def gap_projection(emb: EmbeddingSet, path: Path, per_modality: int = 300) -> Path:
    """All modalities in one 2-D PCA projection: the modality gap is the separation of the clouds."""
    stacked, names = [], []
    for name in emb.modalities:
        rows = emb.masks[name].nonzero().squeeze(1)[:per_modality]
        stacked.append(emb.embeddings[name][rows].numpy())
        names.append(name)
    points = PCA(n_components=2, random_state=0).fit_transform(np.concatenate(stacked))
    fig, ax = plt.subplots(figsize=(6, 5))
    start = 0
    for name, block in zip(names, stacked, strict=True):
        part = points[start:start + len(block)]
        ax.scatter(part[:, 0], part[:, 1], s=6, alpha=0.6, label=name)
        start += len(block)
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title("Embeddings of every modality (PCA): the modality gap")
    ax.legend(markerscale=3)
    return _save(fig, path)


def probe_bars(probes: Mapping[str, Mapping[str, Any]], modality: str, path: Path) -> Path:
    """Probe accuracy per attribute from the bound embedding and the native features, grouped."""
    order = {"shared": 0, "visual-only": 1, "non-visual": 2}
    attrs = sorted(probes, key=lambda a: (order.get(probes[a]["group"], 3), a))
    x = np.arange(len(attrs))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(attrs) + 2), 4))
    ax.bar(x - 0.2, [probes[a]["native"] for a in attrs], 0.4, label="native trunk features")
    ax.bar(x + 0.2, [probes[a]["bound"] for a in attrs], 0.4, label="bound embedding")
    ax.scatter(x, [probes[a]["chance"] for a in attrs], marker="_", s=300, color="k", label="majority class")
    ax.set_xticks(x, [f"{a}\n({probes[a]['group']})" for a in attrs], fontsize=8)
    ax.set_ylabel("linear-probe accuracy (held out)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"What survives binding: {modality}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def visiocentrism_bars(indices: Mapping[str, Mapping[str, float | None]], path: Path) -> Path:
    """Visiocentrism index per modality, one bar group per run."""
    runs = list(indices)
    modalities = sorted({m for r in runs for m, v in indices[r].items() if v is not None})
    x = np.arange(len(modalities))
    width = 0.8 / max(len(runs), 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(modalities) + 2), 4))
    for i, run in enumerate(runs):
        values = [indices[run].get(m) or 0.0 for m in modalities]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, label=run)
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xticks(x, modalities)
    ax.set_ylabel("index (non-visual minus shared relative probe loss)")
    ax.set_title("Visiocentrism index (higher = more non-visual information lost)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def training_curves(csv_path: Path, path: Path) -> Path | None:
    """Total loss and each term against the step, from ``train_log.csv``."""
    if not csv_path.is_file():
        return None
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    terms = [k for k in rows[0] if k == "loss" or ("/" in k and not k.startswith(("logit_scale", "lr")))]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for term in terms:
        ax.plot(steps, [float(r[term]) for r in rows], label=term, linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Training curves")
    ax.legend(fontsize=8)
    return _save(fig, path)


def shift_curves(shifts: Mapping[str, list[dict[str, float]]], path: Path) -> Path:
    """Retrieval R@1 as each modality is moved along the gap vector toward the anchor."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in shifts.items():
        lambdas = [p["lambda"] for p in points]
        ax.plot(lambdas, [p["instance/R@1"] for p in points], marker="o", label=f"{name} instance R@1")
        if "category/R@1" in points[0]:
            ax.plot(lambdas, [p["category/R@1"] for p in points], marker="s", linestyle="--",
                    label=f"{name} category R@1")
    ax.set_xlabel("shift along the gap vector (lambda; 1 = centroids coincide)")
    ax.set_ylabel("R@1")
    ax.set_title("Embedding-shift experiment")
    ax.legend(fontsize=7)
    return _save(fig, path)


def alignment_scatter(points: list[dict[str, Any]], path: Path) -> Path:
    """Mutual-kNN alignment with the anchor against retrieval R@1, per checkpoint and modality."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name in sorted({p["modality"] for p in points}):
        mine = [p for p in points if p["modality"] == name]
        ax.plot([p["mutual_knn"] for p in mine], [p["R@1"] for p in mine], marker="o", label=name)
    ax.set_xlabel("mutual kNN alignment with the anchor (k=10)")
    ax.set_ylabel("instance R@1 vs image")
    ax.set_title("Does alignment predict retrieval? (one point per checkpoint)")
    ax.legend()
    return _save(fig, path)

