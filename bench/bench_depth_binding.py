"""How fast the demo's depth trunk binds to the anchor, per trunk setting, printed as JSON.

Trains the demo's depth plugin alone (``configs/demo.yaml`` with only ``depth`` under
``model.modalities``) on a demo world's training split, once per variant, then reads
category-level depth->image and image->depth R@1 on its test split. It is the measurement behind
the depth defaults (mean pooling, a learnable logit scale from 14.3) and behind the README's
note that depth is under-trained at the demo's 150 steps rather than limited by its input.

Usage (after ``anchorbind demo --out demo_out``, which also cached the anchor's embeddings)::

    python bench/bench_depth_binding.py --world demo_out/world
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> (steps, depth-plugin overrides on top of configs/demo.yaml)
VARIANTS: dict[str, tuple[int, dict[str, Any]]] = {
    "class token, learnable scale 14.3": (150, {"global_pool": "token"}),
    "mean pooling, learnable scale 14.3 (demo)": (150, {}),
    "mean pooling, fixed scale 5 (ImageBind)": (150, {"logit_scale_init": 5.0, "logit_scale_learnable": False}),
    "mean pooling, learnable scale 14.3, 600 steps": (600, {}),
}


def depth_only_config(out: Path, train_shards: Path, steps: int, depth: dict[str, Any], seed: int) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["model"]["modalities"] = {"depth": {**cfg["model"]["modalities"]["depth"], **depth}}
    cfg["data"]["train_shards"] = str(train_shards)
    cfg["data"].pop("eval_shards", None)
    cfg.update(output_dir=str(out), steps=steps, seed=seed, checkpoint_every=steps)
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def category_r1(run_dir: Path, test_shards: Path) -> dict[str, float]:
    import numpy as np

    from anchorbind.evaluation.extract import extract_embeddings
    from anchorbind.evaluation.retrieval import chance_recall
    from anchorbind.metrics.retrieval import category_ranking, summarize_category
    from anchorbind.model import BindModel

    emb = extract_embeddings(BindModel.from_pretrained(run_dir / "model"), str(test_shards), progress=False)
    both = emb.masks["depth"] & emb.masks["image"]
    labels = [meta["attributes"]["category"] for meta, keep in zip(emb.meta, both.tolist(), strict=True) if keep]
    depth, image = emb.embeddings["depth"][both], emb.embeddings["image"][both]
    result = {"chance category R@1": chance_recall(np.array(labels), np.array(labels), (1,))[1]}
    for name, queries, gallery in (("depth->image", depth, image), ("image->depth", image, depth)):
        summary = summarize_category(category_ranking(queries, gallery, labels, labels), (1,), name)
        result[f"{name} category R@1"] = summary[f"{name}/R@1"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True, help="a world directory with train/ and test/ shards")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    work = Path(tempfile.mkdtemp(prefix="anchorbind-bench-depth-"))
    try:
        results = {}
        for index, (name, (steps, depth)) in enumerate(VARIANTS.items()):
            out = work / f"variant{index}"
            config = depth_only_config(out, args.world / "train", steps, depth, args.seed)
            subprocess.run([sys.executable, "-m", "anchorbind.train", "--config", str(config)], check=True, env=env,
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results[name] = {"steps": steps, "depth": depth, **category_r1(out, args.world / "test")}
        print(json.dumps({"seed": args.seed, "variants": results}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
