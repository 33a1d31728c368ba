"""Can the default anchor tell the world's categories apart? A linear probe on its embeddings.

    python -m anchorbind.pipelines.world.probe --train 800 --test 400

Fits a logistic regression on frozen-anchor embeddings of train-split scenes and reports the
test-split accuracy for each visual attribute (category first) as JSON. Binding only works if
the anchor sees the categories: the renderer is tuned until category accuracy is >= 0.9.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import recall_score

from anchorbind.anchor import AnchorConfig, FrozenAnchor
from anchorbind.metrics.probe import linear_probe, make_linear_probe
from anchorbind.pipelines.world.config import ATTRIBUTES, WorldConfig
from anchorbind.pipelines.world.generate import generate

__all__ = ["anchor_probe"]


def _embed(anchor: FrozenAnchor, n: int, split: str, seed: int, cfg: WorldConfig, workers: int):
    images, labels = [], []
    for sample in generate(n, split, seed, cfg, workers=workers):
        images.append(sample[cfg.image_format])
        labels.append(sample["json"]["attributes"])
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            chunks.append(anchor(anchor.processor.load_batch(images[start:start + 64])).numpy())
    return np.concatenate(chunks), labels


def anchor_probe(train: int = 800, test: int = 400, seed: int = 0, workers: int = 1,
                 anchor: AnchorConfig | None = None, cfg: WorldConfig | None = None) -> dict[str, Any]:
    """Test-split linear-probe accuracy of visual attributes from the anchor's embeddings.

    Args:
        train: train-split scenes to fit on.
        test: test-split scenes to score.
        seed: world seed.
        workers: world generation processes.
        anchor: the image anchor (default: the packaged EfficientNet-Lite0).
        cfg: world settings.

    Returns:
        ``{attr}/accuracy`` and ``{attr}/chance`` for every attribute an image can show, and
        ``category/recall`` per category (which categories the anchor confuses).
    """
    cfg = cfg or WorldConfig()
    model = FrozenAnchor(anchor or AnchorConfig())
    x_train, a_train = _embed(model, train, "train", seed, cfg, workers)
    x_test, a_test = _embed(model, test, "test", seed, cfg, workers)
    features = np.concatenate([x_train, x_test])
    train_idx, test_idx = np.arange(train), np.arange(train, train + test)
    result: dict[str, Any] = {"anchor": model.identity, "train": train, "test": test}
    for name, spec in ATTRIBUTES.items():
        if spec.observability == "audio":
            continue
        labels = np.array([a[name] for a in a_train + a_test])
        probe = linear_probe(features, labels, train_indices=train_idx, test_indices=test_idx)
        result[f"{name}/accuracy"] = probe["accuracy"]
        result[f"{name}/chance"] = 1 / len(spec.values)
    labels = np.array([a["category"] for a in a_train + a_test])
    classifier = make_linear_probe().fit(x_train, labels[:train])
    classes = list(ATTRIBUTES["category"].values)
    recalls = recall_score(labels[train:], classifier.predict(x_test), labels=classes, average=None, zero_division=0)
    result["category/recall"] = dict(zip(classes, (float(r) for r in recalls), strict=True))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="world generation processes")
    parser.add_argument("--min-category-accuracy", type=float, default=0.0,
                        help="exit with status 1 when the category accuracy is below this")
    args = parser.parse_args(argv)
    result = anchor_probe(args.train, args.test, args.seed, args.workers)
    print(json.dumps(result, indent=2))
    return 0 if result["category/accuracy"] >= args.min_category_accuracy else 1


if __name__ == "__main__":
    raise SystemExit(main())
