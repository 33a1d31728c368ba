"""Loader throughput against what a training step consumes, measured in one run, as JSON.

Decodes image + audio + depth + text from world shards with the demo config's plugins
(``configs/demo.yaml``), with N workers; then times training steps of the same model on
batches already in memory (anchor from the cache, as the demo trains). ``headroom`` > 1 means
the loader is not the bottleneck.

    python bench/bench_loader.py --shards runs/demo/world/train
    python bench/bench_loader.py --make-world 512
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from bind.data.cache import build_anchor_cache
    from bind.data.loader import build_loader
    from bind.data.shardlist import expand_shards, iter_shard
    from bind.loss import BindingLoss
    from bind.model import BindModel
    from bind.optim import build_optimizer
    from bind.train_config import OptimConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path)
    parser.add_argument("--make-world", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    work = Path(tempfile.mkdtemp(prefix="anchorbind-loader-"))
    try:
        shards = args.shards
        if shards is None:
            from pipelines.shards.world import write_world_shards

            write_world_shards(work / "world", train=args.make_world, test=0, seed=0, shard_size=128, workers=2)
            shards = work / "world" / "train"
            build_anchor_cache(str(shards), cfg["model"]["anchor"], batch_size=64, progress=False)
        model = BindModel.from_config(cfg["model"])
        processors = {m: model.processor(m) for m in model.modalities}

        loader = build_loader(str(shards), processors, train=True, batch_size=args.batch_size,
                              num_workers=args.workers, shuffle_buffer=256)
        it = iter(loader)
        next(it)  # workers started
        start = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        loader_rate = args.batches * args.batch_size / (time.perf_counter() - start)
        del it

        per_modality = {}
        raw = next(iter_shard(expand_shards(str(shards))[0]))
        for name, proc in processors.items():
            member = next((k for k in proc.sample_keys if k in raw), None)
            if member is None:
                continue
            start = time.perf_counter()
            for _ in range(20):
                proc.load(raw[member], train=True)
            per_modality[name] = 20 / (time.perf_counter() - start)

        # the training step as the demo runs it: anchor embeddings from the cache, images not decoded
        plugins = {m: model.processor(m) for m in model.plugins}
        cached = iter(build_loader(str(shards), plugins, train=True, batch_size=args.batch_size, num_workers=0,
                                   use_anchor_cache=True, anchor_identity=model.anchor.identity))
        steps = [next(cached) for _ in range(6)]
        loss_fn = BindingLoss(weights=dict.fromkeys(model.plugins, 1.0))
        optimizer = build_optimizer(model, OptimConfig())
        model.train()
        start = 0.0
        for index, batch in enumerate(steps):
            if index == 2:  # two warm-up steps
                start = time.perf_counter()
            out = model(batch)
            loss_fn(out["embeddings"], out["logit_scales"], out["masks"])["loss"].backward()
            optimizer.step()
            optimizer.zero_grad()
        train_rate = (len(steps) - 2) * args.batch_size / (time.perf_counter() - start)
        print(json.dumps({
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "workers": args.workers,
            "batch_size": args.batch_size,
            "loader_samples_per_s": loader_rate,
            "decode_samples_per_s_single_process": per_modality,
            "train_step_samples_per_s": train_rate,
            "headroom": loader_rate / train_rate,
        }, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
