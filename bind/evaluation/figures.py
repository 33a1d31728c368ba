"""Figures of the report (matplotlib, Agg): each writes one PNG and returns its path (None if no data).

Every figure has a title, labelled axes and a legend where there is more than one series; a
modality keeps one colour across figures.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA

from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.schema import GROUP_ORDER, attribute_labels

__all__ = [
    "alignment_scatter", "gap_projection", "probe_bars", "retrieval_bars", "shift_curves", "similarity_matrices",
    "training_curves", "visiocentrism_bars",
]

KIND_COLOURS = {"trained": "tab:blue", "emergent": "tab:orange", "direct": "tab:green", "untrained": "tab:gray"}
GROUP_COLOURS = {"shared": "#dbe9f6", "visual-only": "#fde8d0", "non-visual": "#e2f0d9"}


def _colour(modality: str, modalities: Sequence[str]) -> Any:
    return plt.get_cmap("tab10")(sorted(modalities).index(modality) % 10)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def retrieval_bars(retrieval: Mapping[str, Mapping[str, Any]], path: Path,
                   direct: Mapping[str, Mapping[str, Any]] | None = None) -> Path | None:
    """Category and instance R@1 of every ordered pair, coloured by kind, with chance marked."""
    rows = sorted(retrieval.items(), key=lambda kv: (list(KIND_COLOURS).index(kv[1]["kind"]), kv[0]))
    rows += [(f"{pair} (baseline)", block) for pair, block in sorted((direct or {}).items())]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.75 * len(rows) + 3), 4.4), sharey=True)
    x = np.arange(len(rows))
    for ax, level in zip(axes, ("category", "instance"), strict=True):
        values = [block.get(f"{level}/R@1") or 0.0 for _, block in rows]
        ax.bar(x, values, color=[KIND_COLOURS.get(block["kind"], "k") for _, block in rows])
        ax.scatter(x, [block.get(f"chance/{level}/R@1") or 0.0 for _, block in rows], marker="_", s=250,
                   color="k", zorder=3, label="chance")
        ax.set_xticks(x, [pair for pair, _ in rows], rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{level}-level R@1")
        ax.set_xlabel("query -> gallery")
    axes[0].set_ylabel("R@1")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for k, c in KIND_COLOURS.items()
               if any(b["kind"] == k for _, b in rows)]
    labels = [k for k in KIND_COLOURS if any(b["kind"] == k for _, b in rows)]
    axes[1].legend(handles + axes[1].get_legend_handles_labels()[0], [*labels, "chance"], fontsize=8)
    fig.suptitle("Retrieval: trained vs emergent vs direct")
    return _save(fig, path)


def _centred_category_centroids(emb: EmbeddingSet, modality: str, classes: list[str],
                                label_attribute: str) -> np.ndarray:
    rows = emb.masks[modality].nonzero().squeeze(1).numpy()
    labels = attribute_labels(emb.meta, rows, label_attribute)
    x = emb.embeddings[modality][rows].numpy()
    x = x - x.mean(0)  # remove the modality's own mean: what is left is its category structure
    centroids = np.stack([x[labels == c].mean(0) if (labels == c).any() else np.zeros(x.shape[1]) for c in classes])
    return centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)


def similarity_matrices(emb: EmbeddingSet, pairs: list[tuple[str, str]], path: Path,
                        label_attribute: str = "category") -> Path | None:
    """Cosine between category centroids of two modalities (each mean-centred), one panel per pair.

    Centring removes the modality gap (a constant offset that would make every cell alike), so
    a bright diagonal means the two modalities agree on what distinguishes the categories.
    """
    all_rows = np.arange(len(emb.keys))
    labels = attribute_labels(emb.meta, all_rows, label_attribute)
    if labels is None or not pairs:
        return None
    classes = sorted(set(labels.tolist()))
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.8 * len(pairs), 4.4), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs, strict=True):
        sims = (_centred_category_centroids(emb, a, classes, label_attribute)
                @ _centred_category_centroids(emb, b, classes, label_attribute).T)
        image = ax.imshow(sims, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel(f"{b}: {label_attribute} centroid")
        ax.set_ylabel(f"{a}: {label_attribute} centroid")
        ax.set_title(f"{a} vs {b}")
        fig.colorbar(image, ax=ax, fraction=0.046, label="cosine (mean-centred)")
    fig.suptitle(f"Do modalities agree on the {label_attribute}s? Centroid cosine similarity")
    return _save(fig, path)


def gap_projection(emb: EmbeddingSet, path: Path, per_modality: int = 300) -> Path | None:
    """All modalities in one 2-D PCA projection: the modality gap is the separation of the clouds."""
    stacked, names = [], []
    for name in emb.modalities:
        rows = emb.masks[name].nonzero().squeeze(1)[:per_modality]
        if len(rows):
            stacked.append(emb.embeddings[name][rows].numpy())
            names.append(name)
    if sum(len(s) for s in stacked) < 3:
        return None
    pca = PCA(n_components=2, random_state=0)
    points = pca.fit_transform(np.concatenate(stacked))
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    start = 0
    for name, block in zip(names, stacked, strict=True):
        part = points[start:start + len(block)]
        colour = _colour(name, emb.modalities)
        ax.scatter(part[:, 0], part[:, 1], s=7, alpha=0.5, color=colour, label=name)
        ax.scatter(*part.mean(0), s=140, marker="X", color=colour, edgecolor="k", linewidth=0.8)
        start += len(block)
    ratio = pca.explained_variance_ratio_
    ax.set_xlabel(f"principal component 1 ({ratio[0]:.0%} of variance)")
    ax.set_ylabel(f"principal component 2 ({ratio[1]:.0%} of variance)")
    ax.set_title("The modality gap: every modality's embeddings (PCA; X = centroid)")
    ax.legend(markerscale=3, title="modality")
    return _save(fig, path)


def probe_bars(probes: Mapping[str, Mapping[str, Any]], title: str, path: Path) -> Path | None:
    """Probe accuracy per attribute from the native features and the bound embedding, by group."""
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    attrs = sorted((a for a, p in probes.items() if "native" in p), key=lambda a: (order.get(probes[a]["group"], 9), a))
    if not attrs:
        return None
    x = np.arange(len(attrs))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(attrs) + 2.5), 4.2))
    for i, a in enumerate(attrs):
        ax.axvspan(i - 0.5, i + 0.5, color=GROUP_COLOURS.get(probes[a]["group"], "white"), zorder=0)
    ax.bar(x - 0.2, [probes[a]["native"] for a in attrs], 0.4, yerr=[probes[a].get("native_std", 0) for a in attrs],
           capsize=2, label="native trunk features")
    ax.bar(x + 0.2, [probes[a]["bound"] for a in attrs], 0.4, yerr=[probes[a].get("bound_std", 0) for a in attrs],
           capsize=2, label="bound embedding")
    ax.scatter(x, [probes[a]["chance"] for a in attrs], marker="_", s=400, color="k", zorder=3,
               label="chance (majority class)")
    ax.set_xticks(x, [f"{a}\n({probes[a]['group']})" for a in attrs], fontsize=8)
    ax.set_xlim(-0.5, len(attrs) - 0.5)
    ax.set_ylabel("linear-probe accuracy (cross-validated)")
    ax.set_xlabel("ground-truth attribute (observability group)")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def visiocentrism_bars(indices: Mapping[str, Mapping[str, float | None]], path: Path) -> Path | None:
    """Visiocentrism index per modality, one bar per run; undefined indices are marked n/a."""
    runs = list(indices)
    modalities = sorted({m for r in runs for m in indices[r]})
    if not modalities:
        return None
    x = np.arange(len(modalities))
    width = 0.8 / max(len(runs), 1)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 * len(modalities) + 2), 4.2))
    for i, run in enumerate(runs):
        offset = x + (i - (len(runs) - 1) / 2) * width
        values = [indices[run].get(m) for m in modalities]
        ax.bar(offset, [v if v is not None else 0.0 for v in values], width, label=run)
        for xi, value in zip(offset, values, strict=True):
            if value is None:
                ax.text(xi, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xticks(x, modalities)
    ax.set_xlabel("modality")
    ax.set_ylabel("non-visual minus shared relative probe loss")
    ax.set_ylim(-1.05, 1.05)
    ax.set_title("Visiocentrism index (> 0: binding loses non-visual information)")
    ax.legend(fontsize=8, title="run")
    return _save(fig, path)


def training_curves(csv_path: Path, path: Path) -> Path | None:
    """Total loss and each loss term against the step, from ``train_log.csv``."""
    if not csv_path.is_file():
        return None
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    terms = [k for k in rows[0] if "/" in k and not k.startswith(("logit_scale", "lr"))]
    scales = [k for k in rows[0] if k.startswith("logit_scale/")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(steps, [float(r["loss"]) for r in rows], color="k", linewidth=1.6, label="total loss")
    for term in terms:
        values = [float(r[term]) if r.get(term) not in (None, "") else np.nan for r in rows]
        axes[0].plot(steps, values, linewidth=1.1, label=term)
    axes[0].set_xlabel("optimizer step")
    axes[0].set_ylabel("loss")
    axes[0].set_title("Training loss and its terms")
    axes[0].legend(fontsize=7)
    for scale in scales:
        axes[1].plot(steps, [float(r[scale]) for r in rows], linewidth=1.1, label=scale.split("/", 1)[1])
    axes[1].set_xlabel("optimizer step")
    axes[1].set_ylabel("logit scale (inverse temperature)")
    axes[1].set_title("Logit scales")
    if scales:
        axes[1].legend(fontsize=7, title="modality")
    return _save(fig, path)


def shift_curves(shifts: Mapping[str, list[dict[str, float]]], path: Path) -> Path | None:
    """R@1 (instance and category) and centroid distance as each modality moves along the gap vector."""
    if not shifts:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    names = list(shifts)
    for name in names:
        points = shifts[name]
        colour = plt.get_cmap("tab10")(names.index(name) % 10)
        lambdas = [p["lambda"] for p in points]
        axes[0].plot(lambdas, [p.get("instance/R@1") for p in points], marker="o", color=colour, label=name)
        if points[0].get("category/R@1") is not None:
            axes[1].plot(lambdas, [p["category/R@1"] for p in points], marker="s", color=colour, label=name)
        axes[2].plot(lambdas, [p["centroid_distance"] for p in points], marker="^", color=colour, label=name)
    for ax, ylabel, title in zip(axes, ("instance R@1", "category R@1", "centroid distance after the shift"),
                                 ("Instance retrieval", "Category retrieval", "Gap left"), strict=True):
        ax.axvline(0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("lambda (0 = as trained, 1 = centroids coincide)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7, title="moved -> target")
    fig.suptitle("Embedding-shift experiment: does closing the gap change retrieval?")
    return _save(fig, path)


def alignment_scatter(points: list[dict[str, Any]], path: Path,
                      measures: Sequence[str] = ("mutual_knn", "cka_features")) -> Path | None:
    """Alignment with the anchor against retrieval R@1, per checkpoint (labelled by step) and plugin."""
    if not points:
        return None
    labels = {"mutual_knn": "mutual kNN with the anchor (k=10)", "cknna": "CKNNA with the anchor",
              "cka_embeddings": "linear CKA, embeddings vs anchor", "cka_features": "linear CKA, features vs anchor"}
    modalities = sorted({p["modality"] for p in points})
    fig, axes = plt.subplots(1, len(measures), figsize=(5.8 * len(measures), 4.4), squeeze=False)
    for ax, measure in zip(axes[0], measures, strict=True):
        for name in modalities:
            mine = [p for p in points if p["modality"] == name]
            colour = _colour(name, modalities)
            ax.plot([p[measure] for p in mine], [p["R@1"] for p in mine], marker="o", color=colour, alpha=0.8,
                    label=name)
            for p in mine:
                ax.annotate(str(p["step"] if p.get("step") is not None else p["checkpoint"]), (p[measure], p["R@1"]),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(labels.get(measure, measure))
        ax.set_ylabel("instance R@1, plugin -> image")
        ax.set_title(f"{measure} vs retrieval (labels: step)")
        ax.legend(fontsize=8, title="plugin")
    fig.suptitle("Does alignment predict retrieval? One point per checkpoint")
    return _save(fig, path)
