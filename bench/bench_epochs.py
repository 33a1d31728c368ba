"""Data order: the fraction of unique samples each epoch sees, ``epoch`` vs ``resampled`` sampling, as JSON.

base.yaml-like settings scaled down: 2 training processes (simulated in this process: each
rank's loader is built with ``RANK``/``WORLD_SIZE`` set, as the launcher sets them) x 2 DataLoader
workers, 16 shards of 64 samples (caption only, written by the project's shard writer with its
``manifest.json``), a batch of 16 per process and a shuffle block of 160 (base.yaml: 512 and 5000).
For each sampling mode, over ``--epochs`` epochs:

- ``unique_fraction_per_epoch``: distinct samples seen in each epoch's worth of batches (the
  batches every process takes per epoch) over all samples (goal 1.0);
- ``global_batches_with_a_repeat``: global batches (one batch of each process) holding a sample
  twice, which would be its own negative in the contrastive loss (goal 0);
- ``shard_tails_read``: shards whose last sample was seen at least once (goal 1.0);
- ``batches_per_epoch_per_process``: equal on both processes (no rank can hang).

    python bench/bench_epochs.py
    python bench/bench_epochs.py --epochs 5 --shards 24 --shard-size 100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class CaptionOnly:
    """The processor interface, decoding only the caption: the bench measures order, not decoding."""

    sample_keys = ("txt",)

    def load(self, source, train=False):
        return bytes(source).decode()

    def collate(self, items):
        return list(items)


def write_shards(out: Path, shards: int, size: int) -> list[str]:
    from anchorbind.pipelines.shards.writer import finish_entry, shard_name, write_manifest, write_shard

    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(shards):
        samples = [{"__key__": f"s{i:03d}_{j:05d}", "txt": f"caption {j} of shard {i}".encode()} for j in range(size)]
        entries.append(finish_entry(write_shard(out / shard_name("bench", i), samples)))
    write_manifest(out, entries, created_by="bench_epochs")
    return [str(out / e["name"]) for e in entries]


def rank_batches(urls, rank: int, world: int, args, sampling: str) -> list[list[str]]:
    from anchorbind.data.loader import build_loader

    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world)
    loader = build_loader(urls, {"caption": CaptionOnly()}, train=True, batch_size=args.batch_size,
                          num_workers=args.workers, shuffle_buffer=args.shuffle, seed=args.seed, sampling=sampling,
                          epochs=args.epochs)
    return [list(batch["__key__"]) for batch in loader]


def measure(urls, args, sampling: str, total: int, shard_size: int) -> dict:
    started = time.perf_counter()
    ranks = [rank_batches(urls, rank, args.processes, args, sampling) for rank in range(args.processes)]
    seconds = time.perf_counter() - started
    counts = [len(r) for r in ranks]
    per_epoch = min(counts) // args.epochs
    unique, repeats, tails = [], 0, set()
    for epoch in range(args.epochs):
        window = [r[epoch * per_epoch:(epoch + 1) * per_epoch] for r in ranks]
        keys = [k for r in window for batch in r for k in batch]
        unique.append(round(len(set(keys)) / total, 4))
        for global_batch in zip(*window, strict=True):
            merged = [k for b in global_batch for k in b]
            repeats += len(set(merged)) != len(merged)
        tails.update(k for k in keys if k.endswith(f"_{shard_size - 1:05d}"))
    return {
        "unique_fraction_per_epoch": unique,
        "mean_unique_fraction": round(sum(unique) / len(unique), 4),
        "global_batches_with_a_repeat": repeats,
        "global_batches": per_epoch * args.epochs,
        "shard_tails_read": round(len(tails) / len(urls), 4),
        "batches_per_epoch_per_process": [c // args.epochs for c in counts],
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shuffle", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE")}
    try:
        with tempfile.TemporaryDirectory(prefix="bench_epochs_") as tmp:
            urls = write_shards(Path(tmp) / "train", args.shards, args.shard_size)
            total = args.shards * args.shard_size
            result = {
                "settings": {"processes": args.processes, "workers": args.workers, "shards": args.shards,
                             "shard_size": args.shard_size, "batch_size": args.batch_size,
                             "shuffle_block": args.shuffle, "epochs": args.epochs, "samples": total},
                "epoch": measure(urls, args, "epoch", total, args.shard_size),
                "resampled": measure(urls, args, "resampled", total, args.shard_size),
            }
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
