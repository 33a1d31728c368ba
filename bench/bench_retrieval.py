"""Retrieval evaluation at scale: time and peak memory of the exact chunked metrics against the
bare chunked matrix product they are built on, faiss ``IndexFlatIP`` top-10 and a naive
full-matrix sort, as JSON (one run, same data, ratios computed within the run).

    python bench/bench_retrieval.py --sizes 10000 30000 100000   # one run, ~12 min on 2 cores
    python bench/bench_retrieval.py --sizes 30000 --methods matmul full faiss --repeats 2

Methods (queries i -> gallery i, ``--classes`` categories shared by both sides):

* ``matmul``   -- the bare chunked product ``queries[chunk] @ gallery.T`` into one reused buffer,
  with the chunk the full evaluation uses, results discarded: the floor of any exact evaluation.
* ``instance`` -- ``retrieval_metrics(queries, gallery)``: instance R@k, median rank, MRR.
* ``full``     -- ``retrieval_metrics`` with labels: instance metrics plus category R@k, median
  first-relevant rank and mAP (every relevant item's exact rank).
* ``faiss``    -- faiss ``IndexFlatIP`` top-10 (instance R@1/5/10 only).
* ``naive``    -- full matrix + argsort; skipped when it would not fit in ``--naive-limit-gb``.

Each method runs in a fresh subprocess so that its peak RSS is its own; ``extra_rss_mb`` is the
peak minus the RSS once the data exists. Only the method is timed: its imports come before the
clock starts (importing anchorbind takes over a second, faiss almost nothing, which used to
weigh on the small sizes). With ``--repeats R`` the methods run in R interleaved rounds and the
fastest round counts, which damps the noise of a shared machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("matmul", "instance", "full", "faiss", "naive")


def _data(n: int, dim: int, classes: int):
    import torch

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, dim, generator=g)
    noise = torch.randn(n, dim, generator=g)
    gallery = torch.nn.functional.normalize(0.3 * centers[labels] + noise, dim=-1)
    queries = torch.nn.functional.normalize(gallery + 4.5 * torch.randn(n, dim, generator=g) / dim**0.5, dim=-1)
    return queries, gallery, labels


def run_method(method: str, n: int, dim: int, classes: int) -> dict:
    """Runs inside the subprocess. Only the method itself is timed: its imports come first."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    if method == "faiss":
        import faiss
    else:
        from anchorbind.metrics import retrieval_metrics
        from anchorbind.metrics.checks import DEFAULT_MEMORY_BUDGET_BYTES, resolve_chunk_size
        from anchorbind.metrics.retrieval import _CATEGORY_RANK_BYTES

    queries, gallery, labels = _data(n, dim, classes)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out: dict[str, float] = {}
    if method == "matmul":
        chunk = resolve_chunk_size(None, n, _CATEGORY_RANK_BYTES, DEFAULT_MEMORY_BUDGET_BYTES)
        buffer = torch.empty(min(chunk, n), n)  # reused, as the evaluation does
        for first in range(0, n, chunk):
            rows = queries[first : first + chunk]
            torch.mm(rows, gallery.T, out=buffer[: rows.shape[0]])
    elif method in ("instance", "full"):
        label_args = {"query_labels": labels, "gallery_labels": labels} if method == "full" else {}
        out = retrieval_metrics(queries, gallery, ks=(1, 5, 10), **label_args)
    elif method == "naive":
        order = torch.argsort(queries @ gallery.T, dim=1, descending=True)
        ranks = (order == torch.arange(n)[:, None]).float().argmax(1)
        out = {f"instance/R@{k}": float((ranks < k).float().mean()) for k in (1, 5, 10)}
    else:
        index = faiss.IndexFlatIP(dim)
        index.add(gallery.numpy())
        _, found = index.search(queries.numpy(), 10)
        hit = found == np.arange(n)[:, None]
        out = {f"instance/R@{k}": float(hit[:, :k].any(1).mean()) for k in (1, 5, 10)}
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak / 1024, 1),
        "extra_rss_mb": round((peak - base_rss) / 1024, 1),
        "threads": torch.get_num_threads(),
        **{key: round(value, 6) for key, value in out.items() if not key.endswith("num_queries")},
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(run_method(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10, help="categories (the demo world has 10)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; the fastest counts")
    parser.add_argument("--naive-limit-gb", type=float, default=4.0)
    args = parser.parse_args()
    results: dict = {"dim": args.dim, "classes": args.classes, "repeats": args.repeats, "runs": {}, "ratios": {}}
    for n in args.sizes:
        row: dict[str, dict] = {}
        for _ in range(args.repeats):
            for method in args.methods:
                matrix_gb = n * n * (4 + 8) / 1e9  # float32 scores + int64 argsort
                if method == "naive" and matrix_gb > args.naive_limit_gb:
                    row[method] = {"skipped": f"needs ~{matrix_gb:.0f} GB for the full matrix and its argsort"}
                    continue
                done = subprocess.run(
                    [sys.executable, __file__, "--child", method, str(n), str(args.dim), str(args.classes)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(done.stdout.strip().splitlines()[-1])
                if method not in row or result["seconds"] < row[method]["seconds"]:
                    row[method] = result
        results["runs"][str(n)] = row
        seconds = {method: value["seconds"] for method, value in row.items() if "seconds" in value}
        ratios = {}
        for method in ("full", "instance"):
            for base in ("matmul", "faiss"):
                if method in seconds and base in seconds:
                    ratios[f"{method}/{base}"] = round(seconds[method] / seconds[base], 3)
        results["ratios"][str(n)] = ratios
        print(json.dumps({str(n): {"seconds": seconds, "ratios": ratios}}), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
