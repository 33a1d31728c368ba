"""Does alignment predict performance? Alignment and retrieval of every saved checkpoint.

Each checkpoint's ``bind_model`` embeds the same first ``max_samples`` evaluation samples. For
every plugin we record its alignment with the anchor (mutual kNN and CKNNA of the embeddings,
linear CKA of the native features and of the embeddings) and its retrieval R@1 against images.
The Pearson correlation between each alignment measure and R@1, over every (checkpoint,
plugin) point and per plugin over its checkpoints, answers the question the seed paper
(arXiv 2502.16282) asks: alignment does not always predict downstream performance.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from anchorbind.errors import InputError
from anchorbind.evaluation.extract import EmbeddingSet, Reuse, extract_embeddings
from anchorbind.evaluation.retrieval import shared_rows
from anchorbind.evaluation.schema import attribute_labels
from anchorbind.metrics import cknna, linear_cka, mutual_knn, pearson_alignment_vs_performance, retrieval_metrics
from anchorbind.model import BindModel
from anchorbind.registry import ANCHOR_MODALITY

__all__ = ["MEASURES", "checkpoint_alignment", "checkpoint_models", "checkpoint_points"]

MEASURES = ("mutual_knn", "cknna", "cka_embeddings", "cka_features")
K = 10


def checkpoint_models(run_dir: Path) -> list[tuple[str, int | None, Path]]:
    """``(name, step, bind_model dir)`` of every saved checkpoint in step order."""
    found = []
    for path in (run_dir / "checkpoints").glob("*/bind_model"):
        match = re.search(r"(\d+)$", path.parent.name)
        found.append((path.parent.name, int(match.group(1)) if match else None, path))
    return sorted(found, key=lambda item: (item[1] is None, item[1] or 0, item[0]))


def checkpoint_points(emb: EmbeddingSet, checkpoint: str, step: int | None, *,
                      label_attribute: str = "category") -> list[dict[str, Any]]:
    """One point per plugin of one model's embeddings: alignment with the anchor and R@1 vs images."""
    points = []
    for name in emb.modalities:
        if name == ANCHOR_MODALITY:
            continue
        rows = shared_rows(emb, name, ANCHOR_MODALITY)
        if len(rows) <= K + 1:
            continue
        x, y = emb.embeddings[name][rows], emb.embeddings[ANCHOR_MODALITY][rows]
        labels = attribute_labels(emb.meta, rows, label_attribute)
        retrieval = retrieval_metrics(x, y, query_labels=labels, gallery_labels=labels, paired=True, ks=(1,))
        points.append({
            "checkpoint": checkpoint, "step": step, "modality": name, "num_samples": len(rows),
            "mutual_knn": mutual_knn(x, y, k=K),
            "cknna": cknna(x, y, k=K),
            "cka_embeddings": linear_cka(x, y),
            "cka_features": linear_cka(emb.features[name][rows], emb.features[ANCHOR_MODALITY][rows]),
            "R@1": retrieval["instance/R@1"],
            "category/R@1": retrieval.get("category/R@1"),
        })
    return points


def _correlations(points: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for measure in MEASURES:
        try:
            r, p = pearson_alignment_vs_performance([q[measure] for q in points], [q["R@1"] for q in points])
            out[measure] = {"r": r, "p": p, "num_points": len(points)}
        except InputError as err:  # fewer than 3 points, or a constant series: undefined, say why
            out[measure] = {"r": None, "p": None, "num_points": len(points), "undefined": err.reason}
    return out


def checkpoint_alignment(
    run_dir: Path,
    shards: str,
    *,
    max_samples: int,
    batch_size: int,
    num_workers: int,
    device: str | torch.device = "cpu",
    label_attribute: str = "category",
    reuse: Reuse | None = None,
) -> dict[str, Any]:
    """Points and Pearson correlations across ``run_dir/checkpoints/*/bind_model``.

    The trainer also checkpoints its last step, so ``run_dir/model`` is only added (as
    ``final``) when no checkpoint holds the run's last step (``train_summary.json``).

    Args:
        run_dir: the training run.
        shards: evaluation shards.
        max_samples: samples embedded per checkpoint (the same first samples for each).
        batch_size: loader batch size.
        num_workers: loader workers.
        device: where the checkpoints run.
        label_attribute: JSON attribute for the category-level R@1 that is also recorded.
        reuse: the final model's anchor rows (the anchor is frozen: the same for every
            checkpoint), so the test images are not decoded and encoded again per checkpoint.

    Returns:
        ``{"max_samples", "points": [...], "pearson": {"all": {measure: {r, p, num_points}},
        "<plugin>": {...}}}``.
    """
    models = checkpoint_models(run_dir)
    summary = run_dir / "train_summary.json"
    last_step = json.loads(summary.read_text()).get("step") if summary.is_file() else None
    if (run_dir / "model").is_dir() and (not models or last_step not in {step for _, step, _ in models}):
        models.append(("final", last_step, run_dir / "model"))
    points: list[dict[str, Any]] = []
    for name, step, path in models:
        model = BindModel.from_pretrained(path).to(device).eval()
        emb = extract_embeddings(model, shards, batch_size=min(batch_size, max_samples), num_workers=num_workers,
                                 max_samples=max_samples, progress=False, reuse=reuse)
        points += checkpoint_points(_head(emb, max_samples), name, step, label_attribute=label_attribute)
        del model
    pearson = {"all": _correlations(points)}
    for modality in sorted({p["modality"] for p in points}):
        pearson[modality] = _correlations([p for p in points if p["modality"] == modality])
    return {"max_samples": max_samples, "points": points, "pearson": pearson}


def _head(emb: EmbeddingSet, n: int) -> EmbeddingSet:
    """The first ``n`` rows (``extract_embeddings`` stops at a batch boundary, maybe past ``n``)."""
    return EmbeddingSet(
        keys=emb.keys[:n],
        embeddings={m: t[:n] for m, t in emb.embeddings.items()},
        features={m: t[:n] for m, t in emb.features.items()},
        masks={m: t[:n] for m, t in emb.masks.items()},
        meta=emb.meta[:n],
        errors=emb.errors,
    )
