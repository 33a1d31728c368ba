"""Does alignment predict performance? Alignment and retrieval of every saved checkpoint.

Each checkpoint's ``bind_model`` embeds the same evaluation samples; for every plugin we record
its mutual-kNN alignment and linear CKA with the anchor, and its retrieval R@1 against images.
The Pearson correlation over all (checkpoint, plugin) points answers the question the seed
paper (arXiv 2502.16282) asks: alignment does not always predict downstream performance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bind.errors import InputError
from bind.eval import linear_cka, mutual_knn, pearson_alignment_vs_performance, retrieval_metrics
from bind.extract import extract_embeddings
from bind.model import BindModel
from bind.registry import ANCHOR_MODALITY

__all__ = ["checkpoint_alignment"]


def checkpoint_alignment(run_dir: Path, shards: str, *, max_samples: int, batch_size: int,
                         num_workers: int) -> dict[str, Any]:
    """Alignment vs retrieval across ``run_dir/checkpoints/*/bind_model`` and the final model."""
    models = sorted((run_dir / "checkpoints").glob("step-*/bind_model"))
    if (run_dir / "model").is_dir():
        models.append(run_dir / "model")
    points: list[dict[str, Any]] = []
    for path in models:
        model = BindModel.from_pretrained(path)
        emb = extract_embeddings(model, shards, batch_size=batch_size, num_workers=num_workers,
                                 max_samples=max_samples, progress=False)
        for name in model.plugins:
            both = emb.masks[name] & emb.masks[ANCHOR_MODALITY]
            if both.sum() < 12:
                continue
            x, y = emb.embeddings[name][both], emb.embeddings[ANCHOR_MODALITY][both]
            points.append({
                "checkpoint": path.parent.name if path.name == "bind_model" else "final",
                "modality": name,
                "mutual_knn": mutual_knn(x, y, k=10),
                "cka": linear_cka(emb.features[name][both], emb.features[ANCHOR_MODALITY][both]),
                "R@1": retrieval_metrics(x, y, ks=(1,))["instance/R@1"],
            })
    result: dict[str, Any] = {"points": points}
    if len(points) >= 3:
        for measure in ("mutual_knn", "cka"):
            try:
                r, p = pearson_alignment_vs_performance([q[measure] for q in points], [q["R@1"] for q in points])
                result[f"pearson/{measure}_vs_R@1"] = {"r": r, "p": p}
            except InputError as err:
                result[f"pearson/{measure}_vs_R@1"] = {"r": None, "p": None, "undefined": err.reason}
    return result
