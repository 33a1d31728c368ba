"""World generation speed: samples/s on 1 process and on N processes, as JSON.

    python bench/bench_world.py --samples 200 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.world import WorldConfig, generate


def rate(samples: int, workers: int, cfg: WorldConfig) -> float:
    start = time.perf_counter()
    count = sum(1 for _ in generate(samples, "train", 0, cfg, workers=workers, chunk=16))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--image-size", type=int, default=160)
    args = parser.parse_args()
    cfg = WorldConfig(image_size=args.image_size)
    one = rate(args.samples, 1, cfg)
    many = rate(args.samples, args.workers, cfg)
    print(json.dumps({
        "cpu_count": os.cpu_count(), "image_size": args.image_size, "samples": args.samples,
        "samples_per_s_1_process": one, f"samples_per_s_{args.workers}_processes": many,
        "samples_per_s_per_core": many / args.workers, "parallel_efficiency": many / (one * args.workers),
    }, indent=2))


if __name__ == "__main__":
    main()
