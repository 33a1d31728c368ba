"""``anchorbind demo``: the whole AnchorBind pipeline, offline, on a CPU, in minutes.

1. generate the procedural world (train and test shards);
2. cache the frozen anchor's embeddings of the training shards (sidecars in ``world/train/anchor-cache``);
3. bind text, audio and depth to the anchor (``configs/demo.yaml``);
4. train the *direct* text–audio baseline (text and audio contrasted with each other only);
5. bind again with the visiocentrism mitigation (the audio plugin's native objective);
6. evaluate every run on the test split and write the report;
7. print a headline table, the seconds each stage took and the path of ``report.md``.

Every step is resumable: rerunning the command skips what is already complete. The stage times
(``timings_s`` in ``demo_summary.json``) are the demo's own measurement of where its minutes go;
a resumed stage shows the seconds its check took.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anchorbind.config import load_yaml, packaged_config

__all__ = ["DemoConfig", "main", "run_demo"]

CONFIG_NAME = "demo"
"""The packaged ``anchorbind/configs/demo.yaml``, whatever the working directory holds."""


@dataclass
class DemoConfig:
    """Sizes of the demo; the defaults fit in about 15 minutes on 2 CPU cores."""

    out: Path = Path("demo_out")
    train_scenes: int = 2500
    test_scenes: int = 1000
    seed: int = 0
    steps: int = 150
    workers: int = 2
    mitigation_weight: float = 0.5
    checkpoint_samples: int = 200


def _log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _fresh_metrics(run_dir: Path, sources: Sequence[Path]) -> dict[str, Any] | None:
    """The run's ``metrics.json`` (written atomically, so complete) when it is newer than the
    training of every run it was computed from; None when the evaluation must run (again)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    written = path.stat().st_mtime
    if any((d / "train_summary.json").stat().st_mtime > written for d in sources):
        return None
    return json.loads(path.read_text())


def _train_run(name: str, cfg: DemoConfig, overrides: list[str]) -> Path:
    from anchorbind.train.config import load_train_config
    from anchorbind.train.loop import train

    run_dir = cfg.out / name
    if (run_dir / "train_summary.json").is_file():
        _log(f"{name}: already trained, skipping")
        return run_dir
    base = [
        f"output_dir={run_dir}",
        f"data.train_shards={cfg.out / 'world' / 'train'}",
        f"data.eval_shards={cfg.out / 'world' / 'test'}",
        f"steps={cfg.steps}",
        f"seed={cfg.seed}",
    ]
    train_cfg = load_train_config(packaged_config(CONFIG_NAME), base + overrides)
    _log(f"{name}: training {sorted(train_cfg.model.modalities)} for {train_cfg.steps} steps")
    train(train_cfg, resume=run_dir.is_dir())  # an interrupted run continues; its config must match
    return run_dir


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run every stage; returns the headline numbers."""
    from anchorbind.data.cache import build_anchor_cache
    from anchorbind.evaluation.evaluate import EvalConfig, StageTimes, evaluate_run
    from anchorbind.evaluation.report import write_report
    from anchorbind.pipelines.shards.world import write_world_shards

    timer = StageTimes()
    world = cfg.out / "world"
    with timer.stage("world"):
        if not (world / "test" / "manifest.json").is_file():
            _log(f"generating the world: {cfg.train_scenes} train + {cfg.test_scenes} test scenes")
            write_world_shards(world, train=cfg.train_scenes, test=cfg.test_scenes, seed=cfg.seed,
                               shard_size=500, workers=cfg.workers)
    with timer.stage("anchor_cache"):
        _log("caching anchor embeddings")
        demo_yaml = load_yaml(packaged_config(CONFIG_NAME))
        build_anchor_cache(sorted(str(p) for p in (world / "train").glob("*.tar")), demo_yaml["model"]["anchor"],
                           batch_size=64)

    with timer.stage("train_bind"):
        bound = _train_run("bind", cfg, [])
    with timer.stage("train_direct"):
        direct = _train_run("direct", cfg, [
            "model.modalities={text: {}, audio: {}}",
            "loss.weights={text: 0.0, audio: 0.0}",
            "loss.direct_pairs=[[text, audio]]",
        ])
    with timer.stage("train_mitigated"):
        mitigated = _train_run("bind_mitigated", cfg, [
            f"model.modalities.audio.native_loss_weight={cfg.mitigation_weight}",
        ])

    test = str(world / "test")
    with timer.stage("eval_mitigated"):
        if _fresh_metrics(mitigated, [mitigated]) is not None:
            _log("bind_mitigated: already evaluated, skipping")
        else:
            _log("evaluating the mitigated run (visiocentrism only)")
            evaluate_run(mitigated, test, EvalConfig(checkpoint_samples=0, num_workers=cfg.workers))
    with timer.stage("eval_bind"):
        metrics = _fresh_metrics(bound, [bound, direct, mitigated])
        if metrics is not None:
            _log("bind: already evaluated, skipping")
        else:
            _log("evaluating the bound run against the direct baseline and the mitigated run")
            metrics = evaluate_run(bound, test, EvalConfig(baselines=(direct,), compare=(mitigated,),
                                                           checkpoint_samples=cfg.checkpoint_samples,
                                                           num_workers=cfg.workers))
    with timer.stage("report"):
        report = write_report(bound)
    headline = metrics.get("headline", {})
    timings = timer.summary()
    _log(f"done in {timings['total'] / 60:.1f} min")
    return {"headline": headline, "report": str(report), "timings_s": timings}


def _print_timings(timings: dict[str, float]) -> None:
    print("\nseconds per stage: " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in timings.items()))


def _print_headline(headline: dict[str, Any]) -> None:
    width = max((len(k) for k in headline), default=10)
    print("\n" + "=" * (width + 14))
    for key, value in headline.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown:>10}")
    print("=" * (width + 14))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anchorbind demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DemoConfig.out)
    parser.add_argument("--train-scenes", type=int, default=DemoConfig.train_scenes)
    parser.add_argument("--test-scenes", type=int, default=DemoConfig.test_scenes)
    parser.add_argument("--steps", type=int, default=DemoConfig.steps)
    parser.add_argument("--seed", type=int, default=DemoConfig.seed)
    parser.add_argument("--workers", type=int, default=DemoConfig.workers)
    args = parser.parse_args(argv)
    result = run_demo(DemoConfig(out=args.out, train_scenes=args.train_scenes, test_scenes=args.test_scenes,
                                 seed=args.seed, steps=args.steps, workers=args.workers))
    _print_headline(result["headline"])
    _print_timings(result["timings_s"])
    print(f"report: {result['report']}")
    summary = args.out / "demo_summary.json"
    tmp = summary.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(summary)
    return 0
