"""``anchorbind eval``: turn a trained run into findings, written to ``RUN_DIR/metrics.json``.

    anchorbind eval runs/demo/bind --shards runs/demo/world/test \\
        --baseline runs/demo/direct --compare runs/demo/bind_mitigated

Sections (the schema is documented in ``docs/metrics.md``): retrieval for every ordered
modality pair labelled trained / emergent / direct, the emergent-vs-direct comparison,
zero-shot classification through text prompts, embedding arithmetic, group-wise metrics, the
modality gap and the shift experiment, alignment (also across checkpoints) and visiocentrism.
The embeddings are stored beside the metrics (``embeddings_test.safetensors``) for the report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bind.analysis.checkpoints import checkpoint_alignment
from bind.analysis.pairs import ordered_pairs
from bind.analysis.visiocentrism import attribute_probes, emergent_by_attribute, visiocentrism_index
from bind.errors import ConfigError
from bind.eval import (
    MODALITY_TEMPLATES,
    alignment_metrics,
    build_prompts,
    embedding_arithmetic,
    groupwise_metrics,
    modality_gap_metrics,
    retrieval_metrics,
    shift_along_gap,
    zero_shot_accuracy,
    zero_shot_classifier,
)
from bind.extract import EmbeddingSet, extract_embeddings
from bind.model import BindModel
from bind.registry import ANCHOR_MODALITY

__all__ = ["evaluate_run", "main"]

EMBEDDINGS_FILE = "embeddings_test.safetensors"
SHIFT_LAMBDAS = (-0.5, 0.0, 0.25, 0.5, 0.75, 1.0)
ALIGNMENT_SAMPLES = 1000


def _run_config(run_dir: Path) -> dict[str, Any]:
    if not (run_dir / "model" / "config.json").is_file():
        raise ConfigError(f"{run_dir}: no trained model (expected {run_dir / 'model' / 'config.json'})")
    path = run_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def _labels(emb: EmbeddingSet, rows: torch.Tensor, attribute: str = "category") -> np.ndarray | None:
    meta = [emb.meta[i] for i in rows.tolist()]
    if any(m is None or attribute not in m.get("attributes", {}) for m in meta):
        return None
    return np.array([m["attributes"][attribute] for m in meta])


def _chance(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float((p**2).sum())


def retrieval_section(emb: EmbeddingSet, loss_cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """R@1/5/10, median rank, mAP for every ordered pair, instance and category level."""
    out = {}
    for name, pair in ordered_pairs(emb.modalities, loss_cfg).items():
        q, g = pair["query"], pair["gallery"]
        both = (emb.masks[q] & emb.masks[g]).nonzero().squeeze(1)
        if len(both) < 10:
            continue
        labels = _labels(emb, both)
        metrics = retrieval_metrics(emb.embeddings[q][both], emb.embeddings[g][both],
                                    query_labels=labels, gallery_labels=labels)
        metrics = {"kind": pair["kind"], "num_pairs": len(both), **metrics}
        if labels is not None:
            metrics["chance/category/R@1"] = _chance(labels)
            metrics["chance/instance/R@1"] = 1.0 / len(both)
        out[name] = metrics
    return out


def zero_shot_section(model: BindModel, emb: EmbeddingSet) -> dict[str, Any]:
    """Classify every modality's category through text prompts (ImageBind's emergent protocol)."""
    if "text" not in model.plugins:
        return {}
    all_rows = torch.arange(len(emb.keys))
    labels = _labels(emb, all_rows)
    if labels is None:
        return {}
    classes = sorted(set(labels.tolist()))
    out: dict[str, Any] = {"classes": classes}
    for name in emb.modalities:
        if name == "text":
            continue
        templates = MODALITY_TEMPLATES.get(name, MODALITY_TEMPLATES["image"])
        prompts = build_prompts(classes, templates)
        with torch.inference_mode():
            text = [model.embed({"text": group})["text"] for group in prompts]
        classifier = zero_shot_classifier(text)
        rows = emb.masks[name].nonzero().squeeze(1)
        targets = np.array([classes.index(c) for c in labels[rows.numpy()]])
        out[name] = {**zero_shot_accuracy(emb.embeddings[name][rows], targets, classifier, ks=(1, 3)),
                     "chance": 1.0 / len(classes), "templates": list(templates)}
    return out


def arithmetic_section(emb: EmbeddingSet, seed: int = 0) -> dict[str, Any]:
    """image of scene i + audio of scene j (another category) -> images with i's colour and j's category."""
    if "audio" not in emb.modalities:
        return {}
    rows = (emb.masks[ANCHOR_MODALITY] & emb.masks["audio"]).nonzero().squeeze(1)
    category, colour = _labels(emb, rows, "category"), _labels(emb, rows, "colour")
    if category is None or colour is None or len(rows) < 20:
        return {}
    rng = np.random.default_rng(seed)
    partner = rng.permutation(len(rows))
    keep = category[partner] != category
    image_q, audio_q = rows[np.nonzero(keep)[0]], rows[partner[keep]]
    result = embedding_arithmetic(
        emb.embeddings[ANCHOR_MODALITY][image_q], emb.embeddings["audio"][audio_q],
        emb.embeddings[ANCHOR_MODALITY][rows],
        image_targets=colour[keep], audio_targets=category[partner][keep],
        gallery_image_attribute=colour, gallery_audio_attribute=category, ks=(1, 5, 10),
    )
    return {"rule": "hit = retrieved image has the query image's colour and the query audio's category", **result}


def groupwise_section(emb: EmbeddingSet) -> dict[str, Any]:
    embeddings, labels = {}, {}
    for name in emb.modalities:
        rows = emb.masks[name].nonzero().squeeze(1)
        label = _labels(emb, rows)
        if label is not None and len(rows) >= 20:
            embeddings[name], labels[name] = emb.embeddings[name][rows], label
    return groupwise_metrics(embeddings, labels) if len(embeddings) >= 2 else {}


def gap_section(emb: EmbeddingSet) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gap statistics for the anchor vs each plugin, and the shift experiment."""
    gaps, shifts = {}, {}
    for name in emb.modalities:
        if name == ANCHOR_MODALITY:
            continue
        both = (emb.masks[name] & emb.masks[ANCHOR_MODALITY]).nonzero().squeeze(1)
        if len(both) < 20:
            continue
        x, y = emb.embeddings[name][both], emb.embeddings[ANCHOR_MODALITY][both]
        gaps[f"{ANCHOR_MODALITY}-{name}"] = modality_gap_metrics(y, x, names=(ANCHOR_MODALITY, name), paired=True)
        labels = _labels(emb, both)
        shifts[f"{name}->{ANCHOR_MODALITY}"] = shift_along_gap(x, y, SHIFT_LAMBDAS, x_labels=labels, y_labels=labels)
    return gaps, shifts


def alignment_section(emb: EmbeddingSet) -> dict[str, Any]:
    """Mutual kNN, CKA and CKNNA of each plugin with the anchor (native features and bound embeddings)."""
    out = {}
    for name in emb.modalities:
        if name == ANCHOR_MODALITY:
            continue
        both = (emb.masks[name] & emb.masks[ANCHOR_MODALITY]).nonzero().squeeze(1)[:ALIGNMENT_SAMPLES]
        if len(both) < 20:
            continue
        out[name] = {
            "features_vs_anchor_features": alignment_metrics(emb.features[name][both],
                                                             emb.features[ANCHOR_MODALITY][both]),
            "embeddings_vs_anchor_embeddings": alignment_metrics(emb.embeddings[name][both],
                                                                 emb.embeddings[ANCHOR_MODALITY][both]),
            "features_vs_own_embeddings": alignment_metrics(emb.features[name][both], emb.embeddings[name][both]),
        }
    return out


def visiocentrism_section(emb: EmbeddingSet, loss_cfg: dict[str, Any]) -> dict[str, Any]:
    observability = next((m["observability"] for m in emb.meta if m and "observability" in m), None)
    if observability is None:
        return {}
    probes, index = {}, {}
    for name in emb.modalities:
        probes[name] = attribute_probes(emb.embeddings[name], emb.features[name], emb.masks[name], emb.meta,
                                        observability)
        index[name] = visiocentrism_index(probes[name])
    by_attribute = {}
    for name, pair in ordered_pairs(emb.modalities, loss_cfg).items():
        if pair["kind"] in ("emergent", "direct"):
            q, g = pair["query"], pair["gallery"]
            both = (emb.masks[q] & emb.masks[g]).nonzero().squeeze(1)
            meta = [emb.meta[i] for i in both.tolist()]
            by_attribute[name] = {"kind": pair["kind"], **emergent_by_attribute(
                emb.embeddings[q][both], emb.embeddings[g][both], meta, observability, query_is_text=q == "text")}
    return {"probes": probes, "index": index, "retrieval_by_attribute": by_attribute}


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The handful of numbers the demo prints."""
    out: dict[str, float] = {}
    retrieval = metrics["retrieval"]
    for pair in ("text->image", "audio->image", "depth->image", "text->audio"):
        if pair in retrieval:
            out[f"{retrieval[pair]['kind']} {pair} category R@1"] = retrieval[pair].get("category/R@1", math.nan)
    if "text->audio" in retrieval:
        out["chance text->audio category R@1"] = retrieval["text->audio"].get("chance/category/R@1", math.nan)
    for pair, block in metrics.get("emergent_vs_direct", {}).items():
        out[f"direct {pair} category R@1"] = block["direct/category/R@1"]
        out[f"emergent/direct {pair}"] = block["ratio/category/R@1"]
    for name, block in metrics.get("zero_shot", {}).items():
        if isinstance(block, dict):
            out[f"zero-shot {name} acc@1"] = block["acc@1"]
    for name, block in metrics.get("gap", {}).items():
        out[f"gap {name} centroid distance"] = block["centroid_distance"]
    for name, value in metrics.get("visiocentrism", {}).get("index", {}).items():
        if value is not None:
            out[f"visiocentrism index {name}"] = value
    for run, block in metrics.get("compare", {}).items():
        for name, value in block.get("visiocentrism_index", {}).items():
            if value is not None:
                out[f"visiocentrism index {name} ({Path(run).name})"] = value
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


def evaluate_run(
    run_dir: str | Path,
    shards: str,
    *,
    baselines: Sequence[str | Path] = (),
    compare: Sequence[str | Path] = (),
    batch_size: int = 128,
    num_workers: int = 2,
    checkpoint_samples: int = 300,
) -> dict[str, Any]:
    """Evaluate ``run_dir`` on ``shards``; writes and returns ``metrics.json``'s content."""
    run_dir = Path(run_dir)
    config = _run_config(run_dir)
    loss_cfg = config.get("loss", {})
    model = BindModel.from_pretrained(run_dir / "model").eval()
    emb = extract_embeddings(model, shards, batch_size=batch_size, num_workers=num_workers)
    if not emb.keys:
        raise ConfigError(f"{shards}: no samples could be read")
    emb.save(run_dir / EMBEDDINGS_FILE)

    metrics: dict[str, Any] = {
        "run": str(run_dir), "shards": str(shards), "num_samples": len(emb.keys),
        "decode_errors": {"count": len(emb.errors), "examples": emb.errors[:20]},
        "modalities": {m: int(emb.masks[m].sum()) for m in emb.modalities},
        "anchor_identity": model.anchor.identity,
        "loss": loss_cfg,
        "native_loss_weights": {m: p.config.native_loss_weight for m, p in model.plugins.items()},
    }
    metrics["retrieval"] = retrieval_section(emb, loss_cfg)
    metrics["baselines"] = {}
    comparison = {}
    for base in baselines:
        base_dir = Path(base)
        base_cfg = _run_config(base_dir).get("loss", {})
        base_model = BindModel.from_pretrained(base_dir / "model").eval()
        base_emb = extract_embeddings(base_model, shards, batch_size=batch_size, num_workers=num_workers)
        base_retrieval = retrieval_section(base_emb, base_cfg)
        metrics["baselines"][str(base_dir)] = {"retrieval": base_retrieval}
        for pair, block in base_retrieval.items():
            ours = metrics["retrieval"].get(pair)
            if block["kind"] == "direct" and ours is not None and ours["kind"] == "emergent":
                comparison[pair] = {
                    "baseline": str(base_dir),
                    **{f"{who}/{level}/R@1": src.get(f"{level}/R@1") for who, src in (("emergent", ours),
                                                                                       ("direct", block))
                       for level in ("category", "instance")},
                    "ratio/category/R@1": ours["category/R@1"] / max(block["category/R@1"], 1e-9),
                    "ratio/instance/R@1": ours["instance/R@1"] / max(block["instance/R@1"], 1e-9),
                    "chance/category/R@1": ours.get("chance/category/R@1"),
                }
    metrics["emergent_vs_direct"] = comparison
    metrics["zero_shot"] = zero_shot_section(model, emb)
    metrics["arithmetic"] = arithmetic_section(emb)
    metrics["groupwise"] = groupwise_section(emb)
    metrics["gap"], metrics["gap_shift"] = gap_section(emb)
    metrics["alignment"] = alignment_section(emb)
    metrics["alignment_across_checkpoints"] = checkpoint_alignment(
        run_dir, shards, max_samples=checkpoint_samples, batch_size=batch_size, num_workers=num_workers,
    ) if checkpoint_samples > 0 else {}
    metrics["visiocentrism"] = visiocentrism_section(emb, loss_cfg)
    metrics["compare"] = {}
    for other in compare:
        other_dir = Path(other)
        other_metrics = other_dir / "metrics.json"
        if not other_metrics.is_file():
            evaluate_run(other_dir, shards, batch_size=batch_size, num_workers=num_workers,
                         checkpoint_samples=checkpoint_samples)
        data = json.loads(other_metrics.read_text())
        metrics["compare"][str(other_dir)] = {
            "native_loss_weights": data.get("native_loss_weights", {}),
            "visiocentrism_index": data.get("visiocentrism", {}).get("index", {}),
            "probes": data.get("visiocentrism", {}).get("probes", {}),
        }
    metrics["headline"] = headline(metrics)
    _write_json(run_dir / "metrics.json", metrics)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anchorbind eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--shards", required=True, help="evaluation shards (directory, braces or URLs)")
    parser.add_argument("--baseline", action="append", default=[], help="a run trained with direct pairs")
    parser.add_argument("--compare", action="append", default=[],
                        help="a run to compare visiocentrism with (e.g. with/without the mitigation)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--checkpoint-samples", type=int, default=300,
                        help="samples embedded per checkpoint for the alignment-vs-performance sweep (0: skip it)")
    args = parser.parse_args(argv)
    metrics = evaluate_run(args.run_dir, args.shards, baselines=args.baseline, compare=args.compare,
                           batch_size=args.batch_size, num_workers=args.num_workers,
                           checkpoint_samples=args.checkpoint_samples)
    for key, value in metrics["headline"].items():
        print(f"{key:<48} {value:8.3f}")
    print(f"wrote {args.run_dir / 'metrics.json'}")
    return 0
