"""Linear-probe cost inside an evaluation process: one BLAS thread against the library default.

The visiocentrism analysis fits dozens of cross-validated probes per evaluation. Each fit works
on matrices of a few hundred rows, and in an evaluation process torch's OpenMP workers keep
spinning for a while after every tensor op; OpenBLAS threads started next to them wait for cores.
This bench reproduces that setting (a torch matmul right before each probe) and times
``cross_validated_probe`` at the sizes evaluations use, with ``PROBE_BLAS_THREADS`` (one) and
with no limit, interleaved in one run, and checks that the predictions are identical.

    python bench/bench_probe.py                       # ~1 min on 2 cores
    python bench/bench_probe.py --sizes 64x1280 800x1280 --repeats 5

Prints one JSON object: per size the best-of-``repeats`` seconds of each setting and
``speedup_one_thread`` (default / one thread).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from anchorbind.metrics import probe as probe_module
from anchorbind.metrics.probe import cross_validated_probe


def _wake_torch_threads() -> None:
    """A tensor op like the evaluation's embedding pass, which leaves torch's OpenMP workers spinning."""
    a = torch.randn(512, 512)
    float((a @ a).sum())


def _time_probe(x: np.ndarray, y: np.ndarray, threads: int | None) -> tuple[float, np.ndarray]:
    probe_module.PROBE_BLAS_THREADS = threads
    _wake_torch_threads()
    start = time.perf_counter()
    result = cross_validated_probe(x, y, cv_folds=5, components=256)
    return time.perf_counter() - start, result.predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["64x1280", "200x1280", "800x1280", "800x128"],
                        help="ROWSxDIMS of the probed embeddings (1280: the anchor; 128: a plugin trunk)")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    default_threads = probe_module.PROBE_BLAS_THREADS
    rng = np.random.default_rng(0)
    results = {}
    for size in args.sizes:
        rows, dims = (int(v) for v in size.split("x"))
        # low-rank features with a readable label, like trunk features of a few factors
        factors = rng.standard_normal((rows, 16))
        x = (factors @ rng.standard_normal((16, dims)) + 0.3 * rng.standard_normal((rows, dims))).astype(np.float32)
        y = np.digitize(factors[:, 0], np.quantile(factors[:, 0], np.linspace(0, 1, args.classes + 1)[1:-1]))
        best = {"one_thread": float("inf"), "default": float("inf")}
        same = True
        for _ in range(args.repeats):
            t_one, p_one = _time_probe(x, y, default_threads)
            t_default, p_default = _time_probe(x, y, None)
            best["one_thread"] = min(best["one_thread"], t_one)
            best["default"] = min(best["default"], t_default)
            same = same and bool((p_one == p_default).all())
        results[size] = {"seconds_one_thread": round(best["one_thread"], 4),
                         "seconds_default": round(best["default"], 4),
                         "speedup_one_thread": round(best["default"] / best["one_thread"], 2),
                         "same_predictions": same}
    probe_module.PROBE_BLAS_THREADS = default_threads
    print(json.dumps({"torch_threads": torch.get_num_threads(), "repeats": args.repeats, "sizes": results},
                     indent=2))


if __name__ == "__main__":
    main()
