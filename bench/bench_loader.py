"""Loader throughput: samples/s of ``build_loader`` decoding image + audio + depth + text, as JSON.

Builds the demo config's processors (``configs/demo.yaml``: the anchor and the text, audio and
depth plugins), then measures, after the workers have started:

- ``loader_samples_per_s``: the training loader (resampled, shuffled, ``train=True``
  augmentations) with ``--workers`` workers decoding all four modalities;
- ``loader_cached_samples_per_s``: the same with the anchor cache (``anchor.npy`` read, images not
  decoded), which is how training reads data once ``anchorbind cache`` has run;
- ``decode_ms_per_sample``: each modality's ``load(train=True)`` alone, in this process, one thread;
- ``collate_ms_per_batch``: each modality's ``collate`` of one batch.

Compare ``loader_*`` with the trainer's consumption rate (``bench/bench_train.py``): the loader
is not the bottleneck when it is higher.

    python bench/bench_loader.py                       # a temporary 512-scene world
    python bench/bench_loader.py --shards runs/demo/world/train --workers 4
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


def loader_rate(loader, batches: int) -> tuple[float, int]:
    """Samples/s over ``batches`` batches after the first (worker start-up excluded); and errors seen."""
    iterator = iter(loader)
    first = next(iterator)
    errors = len(first["errors"])
    start, samples = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(iterator)
        samples += len(batch["__key__"])
        errors += len(batch["errors"])
    rate = samples / (time.perf_counter() - start)
    del iterator
    return rate, errors


def main() -> None:
    from anchorbind.anchor import FrozenAnchor
    from anchorbind.data.cache import build_anchor_cache, shards_have_anchor_cache
    from anchorbind.data.loader import build_loader
    from anchorbind.data.shardlist import expand_shards, iter_shard
    from anchorbind.registry import create_processor

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, help="shards to read (default: generate a temporary world)")
    parser.add_argument("--make-world", type=int, default=512, help="scenes of the temporary world")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per loader")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-cache", action="store_true", help="skip the anchor-cache measurement")
    args = parser.parse_args()

    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["model"]
    work = Path(tempfile.mkdtemp(prefix="anchorbind-loader-"))
    try:
        shards = args.shards
        if shards is None:
            from anchorbind.pipelines.shards.world import write_world_shards

            shards = work / "world" / "train"
            write_world_shards(work / "world", train=args.make_world, test=0, seed=0, shard_size=128, workers=2)
        anchor = FrozenAnchor(cfg["anchor"])
        processors = {"image": anchor.processor}  # processors only: no model reaches the workers
        for name, plugin_cfg in cfg["modalities"].items():
            processors[name] = create_processor(name, plugin_cfg or {})

        result: dict = {"cpu_count": os.cpu_count(), "workers": args.workers, "batch_size": args.batch_size,
                        "modalities": sorted(processors)}
        loader = build_loader(str(shards), processors, train=True, batch_size=args.batch_size,
                              num_workers=args.workers, shuffle_buffer=256)
        result["loader_samples_per_s"], result["decode_errors"] = loader_rate(loader, args.batches)

        if not args.no_cache:
            cached_dir = shards
            if not shards_have_anchor_cache(str(shards), anchor.identity):
                cached_dir = work / "cached"  # never rewrite the user's shards from a benchmark
                cached_dir.mkdir()
                for url in expand_shards(str(shards)):
                    shutil.copy(url, cached_dir)
                build_anchor_cache(str(cached_dir), cfg["anchor"], batch_size=64, progress=False)
            plugins = {m: p for m, p in processors.items() if m != "image"}
            cached = build_loader(str(cached_dir), plugins, train=True, batch_size=args.batch_size,
                                  num_workers=args.workers, shuffle_buffer=256, use_anchor_cache=True,
                                  anchor_identity=anchor.identity)
            result["loader_cached_samples_per_s"], _ = loader_rate(cached, args.batches)

        torch.set_num_threads(1)  # what each loader worker uses
        raw = [s for _, s in zip(range(args.batch_size), iter_shard(expand_shards(str(shards))[0]), strict=False)]
        decode, collate = {}, {}
        for name, proc in processors.items():
            members = [s[next(k for k in proc.sample_keys if k in s)] for s in raw
                       if any(k in s for k in proc.sample_keys)]
            if not members:
                continue
            start = time.perf_counter()
            loaded = [proc.load(m, train=True) for m in members]
            decode[name] = 1000 * (time.perf_counter() - start) / len(members)
            start = time.perf_counter()
            proc.collate(loaded)
            collate[name] = 1000 * (time.perf_counter() - start)
        result["decode_ms_per_sample"] = decode
        result["decode_ms_per_sample_all_modalities"] = sum(decode.values())
        result["collate_ms_per_batch"] = collate
        result["single_thread_decode_samples_per_s"] = 1000 / sum(decode.values())
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
