"""The anchor pass at the speed of the anchor: caching and evaluation against the bare forward.

Every image the project touches goes through the frozen anchor once per use: ``anchorbind cache``
before training, and evaluation's embedding of the test split. Both read shards, decode and
preprocess images in DataLoader workers and run the anchor in the main process, so on a machine
where decoding keeps up they should run at the speed of the anchor's forward alone. This bench
measures, in one run on the same shards and batch size:

* ``bare``: the anchor's ``forward_with_features`` on pre-made batches, nothing else, in the
  configured memory layout and in the contiguous one (``layout_speedup``);
* ``cache``: ``build_anchor_cache`` (sidecars into a temporary folder), ``ratio`` = its
  samples/s over the bare forward's (goal >= 0.9);
* ``eval_embed``: ``extract_embeddings`` of an anchor-only model (what ``anchorbind eval`` runs
  for the image column), same ratio.

    python bench/bench_anchor_pass.py --make-world 512            # ~3 min on 2 cores
    python bench/bench_anchor_pass.py --shards demo_out/world/test --batch-size 128

The anchor is the demo's (EfficientNet-Lite0, packaged weights, 160 px). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _anchor_config(memory_format: str = "auto") -> dict:
    from anchorbind.config import load_yaml, packaged_config

    return {**load_yaml(packaged_config("demo"))["model"]["anchor"], "memory_format": memory_format}


def _premade_batches(shards: list[str], processor, batch_size: int, count: int) -> list[torch.Tensor]:
    from anchorbind.data.loader import build_loader

    batches = []
    loader = build_loader(shards, {"image": processor}, train=False, batch_size=batch_size, num_workers=0)
    for batch in loader:
        if len(batch["__key__"]) == batch_size:
            batches.append(batch["image"])
        if len(batches) == count:
            break
    return batches


def bare_forward(shards: list[str], batch_size: int, memory_format: str, count: int = 3) -> dict[str, float]:
    """samples/s of the anchor forward alone (inference mode) on ``count`` pre-made batches, best of 3 rounds."""
    from anchorbind.anchor import FrozenAnchor

    anchor = FrozenAnchor(_anchor_config(memory_format))
    batches = _premade_batches(shards, anchor.processor, batch_size, count)
    with torch.inference_mode():
        anchor.forward_with_features(batches[0])  # warm-up: oneDNN picks its kernels
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for images in batches:
                anchor.forward_with_features(images)
            best = min(best, time.perf_counter() - start)
    return {"samples_per_s": len(batches) * batch_size / best, "layout": str(anchor.memory_format)}


def cache_build(shards: list[str], out: Path, batch_size: int, workers: int, samples: int) -> float:
    from anchorbind.data.cache import build_anchor_cache

    start = time.perf_counter()
    build_anchor_cache(shards, _anchor_config(), out=out, batch_size=batch_size, num_workers=workers,
                       progress=False)
    return samples / (time.perf_counter() - start)


def eval_embed(folder: Path, batch_size: int, workers: int) -> float:
    from anchorbind.evaluation.extract import extract_embeddings
    from anchorbind.model import BindModel

    model = BindModel.from_config({"anchor": _anchor_config(), "modalities": {}})
    start = time.perf_counter()
    rows = extract_embeddings(model, str(folder), batch_size=batch_size, num_workers=workers, progress=False)
    return len(rows.keys) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, help="a directory of .tar shards (default: generate a world)")
    parser.add_argument("--make-world", type=int, default=512, help="scenes to generate when --shards is not given")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from anchorbind.data.shardlist import count_samples

    work = Path(tempfile.mkdtemp(prefix="anchorbind-anchor-pass-"))
    try:
        folder = args.shards
        if folder is None:
            from anchorbind.pipelines.shards.world import write_world_shards

            write_world_shards(work / "world", train=0, test=args.make_world, seed=0, shard_size=128, workers=2)
            folder = work / "world" / "test"
        shards = sorted(str(p) for p in Path(folder).glob("*.tar"))
        samples = count_samples(shards)
        bare = bare_forward(shards, args.batch_size, "auto")
        contiguous = bare_forward(shards, args.batch_size, "contiguous")
        cache = cache_build(shards, work / "cache", args.batch_size, args.workers, samples)
        embed = eval_embed(Path(folder), args.batch_size, args.workers)
        result = {
            "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
            "samples": samples, "batch_size": args.batch_size, "workers": args.workers,
            "bare": {"samples_per_s": bare["samples_per_s"], "layout": bare["layout"],
                     "contiguous_samples_per_s": contiguous["samples_per_s"],
                     "layout_speedup": bare["samples_per_s"] / contiguous["samples_per_s"]},
            "cache": {"samples_per_s": cache, "ratio": cache / bare["samples_per_s"]},
            "eval_embed": {"samples_per_s": embed, "ratio": embed / bare["samples_per_s"]},
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
