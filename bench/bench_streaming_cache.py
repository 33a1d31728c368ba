"""Training from a local HTTP server with and without the sidecar anchor cache, as one JSON object.

The world's training shards are served by a local HTTP server (a thread of this process); the
anchor cache is built from those URLs (``anchorbind cache URL... --out``, the data only read) into
the ``anchor-cache`` folder the server also serves, where training finds it by itself
(``data.anchor: auto``). Measured in one run, back to back:

- ``train.live_samples_per_s`` / ``train.cache_samples_per_s`` / ``train.cache_over_live``: the
  demo config's training throughput over HTTP (steady windows, after the first), running the
  anchor live on decoded images vs reading the served sidecars; median of ``--rounds`` runs of
  each, alternating;
- ``cache_build``: samples/s of building the sidecars from the URLs, against the bare anchor
  forward on pre-made tensors of the same batch size (``over_bare_forward``; issue 19's goal 0.9).

    python bench/bench_streaming_cache.py
    python bench/bench_streaming_cache.py --scenes 1024 --steps 40
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import demo_config, run_training

REPO = Path(__file__).resolve().parents[1]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a reader that stops at the end of its segment closes the connection early: not an error


@contextmanager
def serve(folder: Path):
    server = _Server(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _png(anchor_cfg: dict) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (anchor_cfg.get("image_size", 224),) * 2, (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def bare_forward_samples_per_s(anchor_cfg: dict, batch_size: int, batches: int) -> float:
    from anchorbind.anchor import AnchorConfig, FrozenAnchor
    from anchorbind.config import from_dict

    anchor = FrozenAnchor(from_dict(AnchorConfig, anchor_cfg, where="anchor")).eval()
    images = anchor.processor.collate([anchor.processor.load(_png(anchor_cfg)) for _ in range(batch_size)])
    with torch.inference_mode():
        anchor(images)
        start = time.perf_counter()
        for _ in range(batches):
            anchor(images)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=512, help="training scenes in the served world")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache-batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="live/cache training runs, alternating (median)")
    args = parser.parse_args()

    from anchorbind.data.cache import build_anchor_cache
    from anchorbind.data.shardlist import expand_shards
    from anchorbind.pipelines.shards.world import write_world_shards

    anchor_cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["model"]["anchor"]
    with tempfile.TemporaryDirectory(prefix="anchorbind-bench-") as tmp:
        work = Path(tmp)
        write_world_shards(work / "world", train=args.scenes, test=0, seed=0, shard_size=128, workers=2)
        folder = work / "world" / "train"
        names = [Path(u).name for u in expand_shards(str(folder))]
        with serve(folder) as base:
            urls = [f"{base}/{name}" for name in names]
            spec = "::".join(urls)
            bare = bare_forward_samples_per_s(anchor_cfg, args.cache_batch_size,
                                              max(2, args.scenes // args.cache_batch_size))
            start = time.perf_counter()
            report = build_anchor_cache(urls, anchor_cfg, out=folder / "anchor-cache",
                                        batch_size=args.cache_batch_size, progress=False)
            build_s = time.perf_counter() - start
            # live and cached runs alternate, so a change of load on a shared machine hits both
            live, cached = [], []
            for round_ in range(args.rounds):
                live.append(run_training(demo_config(work / f"live{round_}", spec, args.steps, "live",
                                                     args.batch_size)))
                cached.append(run_training(demo_config(work / f"cache{round_}", spec, args.steps, "auto",
                                                       args.batch_size)))
            summary = json.loads((work / "cache0" / "train_summary.json").read_text())
            live_sps, cached_sps = statistics.median(live), statistics.median(cached)
        print(json.dumps({
            "scenes": args.scenes, "shards": len(urls), "served_over": "http (local server)",
            "threads": torch.get_num_threads(),
            "train": {"steps": args.steps, "batch_size": args.batch_size, "rounds": args.rounds,
                      "live_samples_per_s": round(live_sps, 1), "cache_samples_per_s": round(cached_sps, 1),
                      "cache_over_live": round(cached_sps / live_sps, 2),
                      "per_round": [[round(a, 1), round(b, 1)] for a, b in zip(live, cached, strict=True)],
                      "anchor_source_with_cache": summary.get("anchor_source")},
            "cache_build": {"samples": report.samples, "seconds": round(build_s, 1),
                            "samples_per_s": round(report.samples / build_s, 1),
                            "bare_forward_samples_per_s": round(bare, 1),
                            "over_bare_forward": round(report.samples / build_s / bare, 2),
                            "failed_shards": len(report.failed_shards)},
        }, indent=2))


if __name__ == "__main__":
    main()
