"""Training benchmarks, printed as one JSON object (ratios measured within one run).

* ``cache_vs_live``: samples/s of the trainer reading cached anchor embeddings against running
  the frozen anchor live on decoded images (same config, same shards, back to back).
* ``mfu``: achieved FLOP/s of one training step (forward + backward, counted by
  ``torch.utils.flop_counter``) against the matmul peak measured on this machine in this run.
* ``processes``: samples/s with 1 and 2 processes (``accelerate launch``; gloo on a CPU).
* ``cache_vs_ideal``: the trainer's cached-anchor samples/s against the *ideal step*: forward,
  loss, backward, gradient clipping and the AdamW step of the same model on one pre-made cached
  batch, no loader, no logging (what the trainer would reach if everything around the step were
  free). The goal is >= 0.9; the rest is the loader hand-off, per-step Python and logging.

Usage::

    python bench/bench_train.py --shards runs/demo/world/train --steps 30
    python bench/bench_train.py --make-world 512          # generate a small world first
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def demo_config(out: Path, shards: Path, steps: int, anchor: str, batch_size: int) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg.update(output_dir=str(out), steps=steps, log_every=max(1, steps // 3), checkpoint_every=10 * steps)
    cfg["data"].update(train_shards=str(shards), anchor=anchor, batch_size=batch_size, eval_shards=None)
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def steady_samples_per_s(run_dir: Path) -> float:
    """samples/s of the logged windows after the first (which includes start-up)."""
    with (run_dir / "train_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    rows = rows[1:] or rows
    return sum(float(r["samples_per_s"]) for r in rows) / len(rows)


def run_training(config: Path, processes: int = 1) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if processes == 1:
        cmd = [sys.executable, "-m", "anchorbind.train", "--config", str(config)]
    else:
        cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "anchorbind.train", "--config", str(config)]
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    out = yaml.safe_load(config.read_text())["output_dir"]
    return steady_samples_per_s(Path(out))


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def step_flops_and_time(shards: Path, batch_size: int) -> dict[str, float]:
    """FLOPs of one forward+backward of the demo model on a cached batch, and its wall time."""
    from torch.utils.flop_counter import FlopCounterMode

    from anchorbind.data.loader import build_loader
    from anchorbind.losses.binding import BindingLoss
    from anchorbind.model import BindModel

    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    model = BindModel.from_config(cfg["model"]).train()
    processors = {m: model.processor(m) for m in model.modalities}
    batch = next(iter(build_loader(str(shards), processors, train=True, batch_size=batch_size, num_workers=0)))
    loss_fn = BindingLoss(weights=dict.fromkeys(model.plugins, 1.0))

    def step() -> None:
        out = model(batch)
        loss_fn(out["embeddings"], out["logit_scales"], out["masks"])["loss"].backward()

    step()
    with FlopCounterMode(display=False) as counter:
        step()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"flops_per_step": float(counter.get_total_flops()), "seconds_per_step": min(times)}


def ideal_cached_step(shards: Path, batch_size: int, repeats: int = 5) -> dict[str, float]:
    """samples/s of the bare training step on one pre-made batch with cached anchor embeddings."""
    from anchorbind.data.cache import anchor_cache_status
    from anchorbind.data.loader import build_loader
    from anchorbind.losses.binding import BindingLoss
    from anchorbind.model import BindModel
    from anchorbind.train.config import OptimConfig
    from anchorbind.train.optim import build_optimizer

    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    model = BindModel.from_config(cfg["model"]).train()
    processors = {m: model.processor(m) for m in model.plugins}
    shard_list = sorted(str(p) for p in shards.glob("*.tar"))
    sidecars = anchor_cache_status(shard_list, model.anchor.identity).sidecars
    batch = next(iter(build_loader(shard_list, processors, train=True, batch_size=batch_size, num_workers=0,
                                   use_anchor_cache=True, anchor_identity=model.anchor.identity,
                                   anchor_sidecars=sidecars)))
    loss_fn = BindingLoss(weights=dict.fromkeys(model.plugins, 1.0))
    optim_cfg = OptimConfig(**cfg.get("optim", {}))
    optimizer = build_optimizer(model, optim_cfg)

    def step() -> None:
        out = model(batch)
        loss = loss_fn(out["embeddings"], out["logit_scales"], out["masks"])["loss"]
        for value in out["native"].values():
            loss = loss + value
        loss.backward()
        if optim_cfg.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim_cfg.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    return {"seconds_per_step": seconds, "samples_per_s": batch_size / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, help="training shards (a directory of .tar)")
    parser.add_argument("--make-world", type=int, default=0, help="generate this many scenes into a temp dir")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="anchorbind-bench-"))
    try:
        shards = args.shards
        if shards is None:
            from anchorbind.pipelines.shards.world import write_world_shards

            write_world_shards(work / "world", train=args.make_world or 512, test=0, seed=0, shard_size=128,
                               workers=2)
            shards = work / "world" / "train"
        cached = work / "cached"
        shutil.copytree(shards, cached)
        from anchorbind.data.cache import build_anchor_cache

        anchor_cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["model"]["anchor"]
        build_anchor_cache(sorted(str(p) for p in cached.glob("*.tar")), anchor_cfg, batch_size=64)

        live = run_training(demo_config(work / "live", cached, args.steps, "live", args.batch_size))
        cache = run_training(demo_config(work / "cache", cached, args.steps, "cache", args.batch_size))
        one = cache
        two = run_training(demo_config(work / "two", cached, args.steps, "cache", args.batch_size), processes=2)
        ideal = ideal_cached_step(cached, args.batch_size)
        peak = matmul_peak_flops()
        step = step_flops_and_time(cached, args.batch_size)
        achieved = step["flops_per_step"] / step["seconds_per_step"]
        result = {
            "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()},
            "cache_vs_live": {"live_samples_per_s": live, "cache_samples_per_s": cache, "speedup": cache / live},
            "processes": {"1_samples_per_s": one, "2_samples_per_s": two, "scaling": two / one},
            "cache_vs_ideal": {"trainer_samples_per_s": cache, "ideal_samples_per_s": ideal["samples_per_s"],
                               "ideal_seconds_per_step": ideal["seconds_per_step"],
                               "ratio": cache / ideal["samples_per_s"]},
            "mfu": {"matmul_peak_flops": peak, "step_flops": step["flops_per_step"],
                    "step_seconds": step["seconds_per_step"], "achieved_flops": achieved, "mfu": achieved / peak},
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
