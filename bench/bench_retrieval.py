"""Retrieval evaluation at scale: time and peak memory of our chunked metrics, against a naive
full-matrix sort and against faiss ``IndexFlatIP``, as JSON (one run, same data).

    python bench/bench_retrieval.py --sizes 10000 100000 --dim 256

Each method runs in a fresh subprocess so that its peak RSS is its own. The naive method builds
the whole N x N similarity matrix and argsorts it; it is skipped when that matrix would not fit
in --naive-limit-gb.
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


def _data(n: int, dim: int):
    import torch

    g = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    queries = torch.nn.functional.normalize(gallery + 0.9 * torch.randn(n, dim, generator=g), dim=-1)
    return queries, gallery


def run_method(method: str, n: int, dim: int) -> dict:
    """Runs inside the subprocess: R@1/5/10 of queries i -> gallery i."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    queries, gallery = _data(n, dim)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if method == "anchorbind":
        from anchorbind.metrics import retrieval_metrics

        out = retrieval_metrics(queries, gallery, ks=(1, 5, 10))
        recalls = [out[f"instance/R@{k}"] for k in (1, 5, 10)]
    elif method == "naive":
        order = torch.argsort(queries @ gallery.T, dim=1, descending=True)
        ranks = (order == torch.arange(n)[:, None]).float().argmax(1)
        recalls = [float((ranks < k).float().mean()) for k in (1, 5, 10)]
    else:
        import faiss

        index = faiss.IndexFlatIP(dim)
        index.add(gallery.numpy())
        _, found = index.search(queries.numpy(), 10)
        hit = found == np.arange(n)[:, None]
        recalls = [float(hit[:, :k].any(1).mean()) for k in (1, 5, 10)]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_rss_mb": peak / 1024, "extra_rss_mb": (peak - base_rss) / 1024,
            "R@1": recalls[0], "R@5": recalls[1], "R@10": recalls[2]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(run_method(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--naive-limit-gb", type=float, default=4.0)
    args = parser.parse_args()
    results = {"dim": args.dim, "runs": {}}
    for n in args.sizes:
        row = {}
        for method in ("anchorbind", "faiss", "naive"):
            matrix_gb = n * n * (4 + 8) / 1e9  # float32 scores + int64 argsort
            if method == "naive" and matrix_gb > args.naive_limit_gb:
                row[method] = {"skipped": f"needs ~{matrix_gb:.0f} GB for the full matrix and its argsort"}
                continue
            done = subprocess.run([sys.executable, __file__, "--child", method, str(n), str(args.dim)],
                                  capture_output=True, text=True, check=True)
            row[method] = json.loads(done.stdout.strip().splitlines()[-1])
        results["runs"][str(n)] = row
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
