"""Cost at two sizes: wall seconds of each pipeline stage at ``--small`` and ``--large`` samples, as JSON.

Issue 19 asks that cost grow linearly with the data. One run measures, at both sizes, back to
back on the same machine:

- ``world``: ``write_world_shards(train=N, test=N)``, the procedural world's two splits (``2N``
  samples; the test split is what ``eval`` reads);
- ``convert``: ``convert_to_shards`` (``anchorbind shards MANIFEST``) of a JSONL manifest of ``N``
  samples (image, depth and audio files, the caption inline, the world's attributes,
  ``--label-column category``) exported from the world's training split beforehand (not timed);
- ``cache``: ``build_anchor_cache`` (``anchorbind cache``, sidecars) over the ``N`` training
  samples, with the demo config's ``model.anchor``;
- ``eval``: ``evaluate_run(RUN, TEST, EvalConfig(checkpoint_samples=0))`` on the ``N``-sample
  test split, for one model trained once (``--steps``, demo config, on the small training split:
  not timed); ``eval.<stage>`` is each entry of ``metrics.json`` ``timings_s``, so a super-linear
  stage of the evaluation shows by itself.

Only the stage is timed: a warm-up pass runs every stage once at ``--warmup`` samples first
(imports, the anchor's weights, the text backbone, worker start-up code paths), and the exports
and training happen outside the clocks. What each call still pays once (process pools starting,
models built from their weights) stays in it: that is what a user pays too.

    python bench/bench_scaling.py                               # 500 and 4000 samples
    python bench/bench_scaling.py --small 64 --large 256        # a quick check (minutes)
    python bench/bench_scaling.py --small 250 --large 2000 --out scaling_out   # keep the files
    python bench/bench_scaling.py --threads 1                   # load-proof CPU seconds, one thread

Reading it: per stage, ``seconds`` and ``s_per_sample`` at each size, and
``growth = (t_large / t_small) / (n_large / n_small)``: 1.0 is linear, below 1 means a fixed
cost per call is spread over more samples (``marginal_s_per_sample``, ``(t_large - t_small) /
(n_large - n_small)``, is the per-sample cost without it), above 1 means each sample costs more
when there are more of them. ``cpu_s`` / ``cpu_growth`` are the same for the CPU seconds of this
process and of its exited children (the workers of the stage): on a shared machine the wall
seconds of a stage swing with the other jobs' load, its CPU seconds less, though torch's OpenMP
threads spin while they wait, so an oversubscribed machine inflates CPU seconds too
(``--threads 1`` removes that, at the price of measuring one-thread stages). A stage whose wall
*and* CPU growth are over ``--threshold`` (default 1.3) is listed in ``super_linear``; one with
only one of the two over it in ``disputed``. Not judged (``not_judged``): retrieval, which
compares every query with every gallery item (N x N by design), and a stage under
``--min-seconds`` at the large size (noise).

The shard size defaults to ``min(500, ceil(small / workers))`` so that the small size also keeps
every worker busy: with fewer shards than workers it would run serially and ``growth`` would
read low (pass ``--shard-size 500`` for the demo's shards). On a shared machine the seconds
drift with the load: ``load_average_1min`` is sampled before each timed call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NOT_JUDGED_BY_DESIGN = {
    "eval.retrieval": "every query against every gallery item: N x N similarities by design (docs/benchmarks.md, "
                      "retrieval evaluation)",
}
EVAL_TOTAL = "total"


def log(message: str) -> None:
    print(f"[bench_scaling {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process's threads and of its children that have exited."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    """``(wall seconds, result)`` of ``call()``."""
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def cpu_stage_times() -> tuple[type, list[Any]]:
    """A ``StageTimes`` that also records CPU seconds per stage (``.cpu``), and the list of its instances.

    Patched into the evaluation for the timed calls only, so that each ``timings_s`` entry gets
    its CPU time too: on a shared machine the wall seconds of a short stage swing with the load.
    """
    from anchorbind.evaluation.evaluate import StageTimes

    made: list[Any] = []

    class CpuStageTimes(StageTimes):
        def __init__(self) -> None:
            super().__init__()
            self.cpu: dict[str, float] = {}
            made.append(self)

        @contextlib.contextmanager
        def stage(self, name: str, progress: str | None = None) -> Iterator[None]:
            start = cpu_seconds()
            try:
                with super().stage(name, progress):
                    yield
            finally:
                self.cpu[name] = self.cpu.get(name, 0.0) + cpu_seconds() - start

    return CpuStageTimes, made


def world_shards(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.tar"))


def export_manifest(train: Path, out: Path) -> Path:
    """The samples of the world's training shards as files plus ``manifest.jsonl`` (what a user brings)."""
    from anchorbind.data.shardlist import iter_shard

    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    with manifest.open("w") as handle:
        for shard in world_shards(train):
            for sample in iter_shard(shard):
                key = sample["__key__"]
                record = json.loads(sample["json"])
                image = "png" if "png" in sample else "jpg"  # WorldConfig.image_format
                members = {"image": image, "depth": "depth.png", "audio": "flac"}
                files = {column: f"{key}.{member}" for column, member in members.items()}
                for column, member in members.items():
                    (out / files[column]).write_bytes(sample[member])
                row = {"key": key, **files, "text": sample["txt"].decode("utf-8"),
                       **{k: record[k] for k in ("attributes", "observability", "carried_by", "caption_states")}}
                handle.write(json.dumps(row) + "\n")
    return manifest


def train_once(root: Path, train_shards: Path, test_shards: Path, steps: int, workers: int, batch_size: int) -> Path:
    """A model of the demo config trained for ``steps`` (the evaluation needs one; its quality does not matter)."""
    from anchorbind.config import packaged_config
    from anchorbind.train.config import load_train_config
    from anchorbind.train.loop import train

    run_dir = root / "run"
    overrides = [f"output_dir={run_dir}", f"data.train_shards={train_shards}", f"data.eval_shards={test_shards}",
                 f"steps={steps}", "seed=0", f"data.num_workers={workers}", f"data.batch_size={batch_size}",
                 f"log_every={steps}", f"checkpoint_every={steps}"]
    train(load_train_config(packaged_config("demo"), overrides), overwrite=True)
    return run_dir


class Pass:
    """One size's pass over the stages; records seconds (and the load before each call) per stage."""

    def __init__(self, name: str, root: Path, n: int, args: argparse.Namespace, anchor_cfg: dict[str, Any]) -> None:
        self.name, self.root, self.n, self.args, self.anchor_cfg = name, root / name, n, args, anchor_cfg
        self.world = self.root / "world"
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.load: dict[str, float] = {}
        self.shards: dict[str, int] = {}
        self.setup: dict[str, float] = {}

    def _time(self, stage: str, call: Callable[[], Any]) -> Any:
        self.load[stage] = round(os.getloadavg()[0], 2)
        log(f"{stage}: {self.name}, {self.n} samples")
        cpu = cpu_seconds()
        seconds, result = timed(call)
        self.seconds[stage], self.cpu[stage] = seconds, cpu_seconds() - cpu
        return result

    def world_stage(self) -> None:
        from anchorbind.pipelines.shards.world import write_world_shards

        self._time("world", lambda: write_world_shards(self.world, train=self.n, test=self.n, seed=0,
                                                       shard_size=self.args.shard_size, workers=self.args.workers))
        self.shards["world"] = len(world_shards(self.world / "train")) + len(world_shards(self.world / "test"))

    def convert_stage(self) -> None:
        from anchorbind.pipelines.shards.convert import convert_to_shards

        export = self.root / "export"
        self.setup["export_manifest"], manifest = timed(lambda: export_manifest(self.world / "train", export))
        out = self.root / "converted"
        report = self._time("convert", lambda: convert_to_shards(
            manifest, out, shard_size=self.args.shard_size, workers=self.args.workers, progress=False,
            label_column="category"))
        if report.samples_written != self.n:
            raise SystemExit(f"conversion wrote {report.samples_written} of {self.n} samples: {report.summary()}")
        self.shards["convert"] = len(report.shards)

    def cache_stage(self) -> None:
        from anchorbind.data.cache import build_anchor_cache

        shards = world_shards(self.world / "train")
        report = self._time("cache", lambda: build_anchor_cache(shards, self.anchor_cfg, batch_size=64,
                                                                num_workers=self.args.workers, progress=False))
        if report.samples != self.n or report.failed_shards:
            raise SystemExit(f"the anchor cache holds {report.samples} of {self.n} samples "
                             f"(failed shards: {report.failed_shards})")
        self.shards["cache"] = len(shards)

    def eval_stage(self, run_dir: Path) -> None:
        from anchorbind.evaluation import evaluate
        from anchorbind.evaluation.evaluate import EvalConfig, evaluate_run

        config = EvalConfig(checkpoint_samples=0, num_workers=self.args.workers)
        stage_times, made = cpu_stage_times()
        with mock.patch.object(evaluate, "StageTimes", stage_times):
            metrics = self._time("eval", lambda: evaluate_run(run_dir, str(self.world / "test"), config))
        if metrics.get("num_samples") != self.n:
            raise SystemExit(f"the evaluation read {metrics.get('num_samples')} of {self.n} samples")
        for name, seconds in metrics["timings_s"].items():
            if name != EVAL_TOTAL:
                self.seconds[f"eval.{name}"] = float(seconds)
                self.cpu[f"eval.{name}"] = made[0].cpu.get(name, 0.0) if made else float("nan")
                self.load[f"eval.{name}"] = self.load["eval"]
        self.shards["eval"] = len(world_shards(self.world / "test"))


def stage_samples(stage: str, n: int) -> int:
    return 2 * n if stage == "world" else n


def growth_of(t_small: float, t_large: float, n_small: int, n_large: int) -> float | None:
    """``(t_large / t_small) / (n_large / n_small)``; None without a small time to divide by."""
    if not t_small > 0 or math.isnan(t_large):
        return None
    return (t_large / t_small) / (n_large / n_small)


def summarise(small: Pass, large: Pass, args: argparse.Namespace) -> dict[str, Any]:
    """Per stage: seconds, seconds per sample, marginal seconds per sample and growth; the verdicts.

    A stage is ``super_linear`` when its wall growth and its CPU growth are both over the
    threshold; when only one is, it is in ``disputed`` (on a loaded machine, most often the wall
    time of a short stage that the load slowed at one size).
    """
    stages: dict[str, Any] = {}
    super_linear, disputed, not_judged = [], {}, {}
    for stage, t_small in small.seconds.items():
        t_large = large.seconds[stage]
        n_small, n_large = stage_samples(stage, small.n), stage_samples(stage, large.n)
        growth = growth_of(t_small, t_large, n_small, n_large)
        cpu_growth = growth_of(small.cpu[stage], large.cpu[stage], n_small, n_large)
        stages[stage] = {
            "samples": {"small": n_small, "large": n_large},
            "seconds": {"small": round(t_small, 3), "large": round(t_large, 3)},
            "s_per_sample": {"small": round(t_small / n_small, 6), "large": round(t_large / n_large, 6)},
            "marginal_s_per_sample": round((t_large - t_small) / (n_large - n_small), 6),
            "growth": None if growth is None else round(growth, 3),
            "cpu_s": {"small": round(small.cpu[stage], 3), "large": round(large.cpu[stage], 3)},
            "cpu_growth": None if cpu_growth is None else round(cpu_growth, 3),
            "load_average_1min": {"small": small.load.get(stage), "large": large.load.get(stage)},
        }
        if stage.split(".")[0] in small.shards:
            stages[stage]["shards"] = {"small": small.shards[stage.split(".")[0]],
                                       "large": large.shards[stage.split(".")[0]]}
        if stage in NOT_JUDGED_BY_DESIGN:
            not_judged[stage] = NOT_JUDGED_BY_DESIGN[stage]
        elif t_large < args.min_seconds or growth is None:
            not_judged[stage] = f"{t_large:.3f} s at the large size: under --min-seconds {args.min_seconds:g}, noise"
        elif growth > args.threshold and (cpu_growth is None or cpu_growth > args.threshold):
            super_linear.append(stage)
        elif growth > args.threshold or (cpu_growth is not None and cpu_growth > args.threshold):
            disputed[stage] = f"growth {growth:.2f} (wall), {cpu_growth:.2f} (CPU)"
    return {"stages": stages, "super_linear": super_linear, "disputed": disputed, "not_judged": not_judged}


def measure(root: Path, args: argparse.Namespace, anchor_cfg: dict[str, Any]) -> dict[str, Any]:
    """Every stage at the warm-up, small and large sizes (stage by stage); the JSON result."""
    began, load_start = time.perf_counter(), os.getloadavg()
    passes = ([Pass("warmup", root, args.warmup, args, anchor_cfg)] if args.warmup else []) + [
        Pass("small", root, args.small, args, anchor_cfg), Pass("large", root, args.large, args, anchor_cfg)]
    for stage in ("world_stage", "convert_stage", "cache_stage"):
        for one in passes:  # the sizes back to back, so both see about the same load
            getattr(one, stage)()
    small = passes[-2]
    train_s, run_dir = timed(lambda: train_once(root, small.world / "train", small.world / "test", args.steps,
                                                args.workers, min(64, args.small)))
    for one in passes:
        one.eval_stage(run_dir)
    return {
        "sizes": {"small": args.small, "large": args.large},
        "workers": args.workers, "threads": args.threads, "shard_size": args.shard_size,
        "warmup_samples": args.warmup,
        "threshold": args.threshold, "cpu_count": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        **summarise(passes[-2], passes[-1], args),
        "untimed_s": {"train_once": round(train_s, 1),
                      "export_manifest": {"small": round(passes[-2].setup["export_manifest"], 1),
                                          "large": round(passes[-1].setup["export_manifest"], 1)}},
        "wall_s": round(time.perf_counter() - began, 1),
        "out": str(root) if args.out is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=500, help="samples at the small size (default 500)")
    parser.add_argument("--large", type=int, default=4000, help="samples at the large size (default 4000)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes of every stage (world, conversion, cache and evaluation loaders)")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="samples per shard (default: min(500, ceil(small / workers)))")
    parser.add_argument("--warmup", type=int, default=64, help="samples of the untimed warm-up pass (0: none)")
    parser.add_argument("--steps", type=int, default=2, help="training steps of the evaluated model (default 2)")
    parser.add_argument("--threshold", type=float, default=1.3, help="growth above this is super-linear")
    parser.add_argument("--min-seconds", type=float, default=1.0,
                        help="a stage shorter than this at the large size is not judged (noise)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch / BLAS threads of this process and its workers (default: the libraries' own)")
    parser.add_argument("--out", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    args = parser.parse_args()
    if args.threads is not None:  # before torch is imported (every import of it is below), inherited by workers
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = str(args.threads)
    if not 0 < args.small < args.large:
        parser.error("need 0 < --small < --large")
    if args.shard_size is None:
        args.shard_size = min(500, math.ceil(args.small / max(1, args.workers)))
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty: give a new folder (every stage starts from nothing)")

    from anchorbind.config import load_yaml, packaged_config

    anchor_cfg = load_yaml(packaged_config("demo"))["model"]["anchor"]
    root = args.out or Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the stages' own prints: stdout is the JSON alone
            result = measure(root, args, anchor_cfg)
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
