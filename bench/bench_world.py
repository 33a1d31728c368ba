"""World generation speed: where one sample's time goes, and samples/s on 1 and N processes, as JSON.

    python bench/bench_world.py --samples 200 --workers 2

``stage_ms`` is CPU time per sample of each stage in this process (scene sampling, ray casting,
audio synthesis, encoding PNG/depth PNG/FLAC); ``samples_per_s_per_core`` is the N-process wall
rate divided by N. On a shared machine wall rates fall with the load: ``cpu_samples_per_s`` (one
sample's total CPU time, inverted) is the load-independent per-core figure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import soundfile as sf

from anchorbind.pipelines.world import WorldConfig, depth_png_bytes, generate, make_scene, render
from anchorbind.pipelines.world.caption import caption
from anchorbind.pipelines.world.generate import PNG_COMPRESS_LEVEL
from anchorbind.pipelines.world.sound import synthesise


def stage_times(samples: int, cfg: WorldConfig) -> dict[str, float]:
    """Mean CPU milliseconds per sample of each generation stage."""
    totals = dict.fromkeys(("scene", "render", "audio", "caption", "encode_image", "encode_depth", "encode_flac"), 0.0)
    for index in range(samples):
        clock = time.process_time()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.process_time()
            totals[stage] += now - clock
            clock = now

        scene = make_scene(0, index, "train", cfg)
        lap("scene")
        rendering = render(scene, cfg)
        lap("render")
        wave, _ = synthesise(scene, cfg)
        lap("audio")
        caption(scene, cfg)
        lap("caption")
        rendering.image.save(io.BytesIO(), format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        lap("encode_image")
        depth_png_bytes(rendering.depth)
        lap("encode_depth")
        sf.write(io.BytesIO(), wave, cfg.sample_rate, format="FLAC", subtype="PCM_16")
        lap("encode_flac")
    return {stage: 1000 * total / samples for stage, total in totals.items()}


def rate(samples: int, workers: int, cfg: WorldConfig) -> float:
    """Wall-clock samples per second of :func:`generate` (process start-up included)."""
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
    stages = stage_times(min(args.samples, 100), cfg)
    one = rate(args.samples, 1, cfg)
    many = rate(args.samples, args.workers, cfg)
    print(json.dumps({
        "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0], "image_size": args.image_size,
        "supersample": cfg.supersample, "samples": args.samples,
        "stage_ms": stages, "cpu_samples_per_s": 1000 / sum(stages.values()),
        "samples_per_s_1_process": one, f"samples_per_s_{args.workers}_processes": many,
        "samples_per_s_per_core": many / args.workers, "parallel_efficiency": many / (one * args.workers),
    }, indent=2))


if __name__ == "__main__":
    main()
