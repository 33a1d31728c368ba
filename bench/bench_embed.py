"""``anchorbind embed`` throughput against the bare encoder forward, as JSON.

For each modality (default: ``image`` through the anchor, and ``audio``), with the default
configs (EfficientNet-Lite0 anchor with its packaged weights, the audio plugin's defaults):

- ``forward_samples_per_s``: the encoder alone on one pre-made collated batch of
  ``--batch-size`` (tensors already on the device), repeated, under ``torch.inference_mode()``:
  the ceiling;
- ``embed_samples_per_s``: ``anchorbind embed``'s path on a folder of ``--n`` files
  (:func:`anchorbind.pipelines.embed.run_embedding`: DataLoader workers reading and decoding,
  forward, writing the store's parts), model already loaded, worker start-up included;
- ``ratio``: the second over the first (the goal is >= 0.9: decoding hidden behind the forward);
- ``steady_samples_per_s`` / ``steady_ratio``: the same after the first batch is written
  (worker start-up and the first decode excluded), what a long job sees;
- ``decode_samples_per_s``: the processor's ``load`` alone, one process, one thread (what one
  worker can feed; on a CPU-only machine workers and the forward share the cores, so the ratio
  there is bounded by how much CPU the decoding takes from the forward);
- ``cli_wall_s``: the whole command (``anchorbind embed MODEL --folder ...``) in this process,
  model loading included.

    python bench/bench_embed.py                         # 256 files each, batch 32, 2 workers, auto device
    python bench/bench_embed.py --n 2048 --workers 8 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_inputs(folder: Path, modality: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    if modality == "image":
        from PIL import Image

        base = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        for i in range(n):  # smooth-ish photos-sized JPEGs: decoding costs what a real photo costs
            image = Image.fromarray(np.roll(base, i, axis=1)).resize((480, 360), Image.BILINEAR)
            image.save(folder / f"{i:06d}.jpg", quality=90)
    elif modality == "audio":
        import soundfile

        t = np.arange(16000 * 4) / 16000
        for i in range(n):  # 4 s, 16 kHz mono: two clips a file at the default config
            wave = 0.3 * np.sin(2 * np.pi * (220 + 3 * i) * t) + 0.01 * rng.standard_normal(t.shape)
            soundfile.write(folder / f"{i:06d}.wav", wave.astype(np.float32), 16000)
    else:
        raise SystemExit(f"bench_embed: no input generator for {modality!r} (image, audio)")


def forward_rate(model, modality: str, folder: Path, batch_size: int, repeats: int) -> float:
    from anchorbind.processor import move_to_device

    files = sorted(str(p) for p in folder.iterdir())[:batch_size]
    processor, encoder = model.processor(modality), model.encoder(modality)
    batch = move_to_device(processor.load_batch(files), model.device)
    with torch.inference_mode():
        encoder(batch)  # warm-up
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            out = encoder(batch)
        out.cpu()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
    return batch_size * repeats / (time.perf_counter() - start)


class TimedWriter:
    """Wraps a store writer and records when each batch is added."""

    def __init__(self, writer) -> None:
        self.writer, self.times = writer, []

    def __getattr__(self, name):
        return getattr(self.writer, name)

    def add(self, keys, embeddings) -> None:
        self.writer.add(keys, embeddings)
        self.times.append((time.perf_counter(), len(keys)))


def decode_rate(model, modality: str, folder: Path, count: int) -> float:
    files = sorted(str(p) for p in folder.iterdir())[:count]
    processor = model.processor(modality)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        processor.load(files[0])
        start = time.perf_counter()
        for f in files:
            processor.load(f)
        return len(files) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modalities", nargs="+", default=["image", "audio"])
    parser.add_argument("--n", type=int, default=256, help="files per modality")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from anchorbind import BindModel
    from anchorbind.cli import main as cli_main
    from anchorbind.embedding_store import EmbeddingStoreWriter
    from anchorbind.pipelines.embed import folder_items, run_embedding

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    work = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    try:
        torch.manual_seed(args.seed)
        plugins = {m: {} for m in args.modalities if m != "image"}
        model_dir = BindModel.from_config({"modalities": plugins}).save_pretrained(work / "model")
        model = BindModel.from_pretrained(model_dir, map_location=device).eval()
        results = []
        for modality in args.modalities:
            folder = work / f"in_{modality}"
            write_inputs(folder, modality, args.n, args.seed)
            repeats = max(1, args.n // args.batch_size)
            forward = forward_rate(model, modality, folder, args.batch_size, repeats)
            decode = decode_rate(model, modality, folder, args.batch_size)
            keys = {name: tuple(model.processor(name).sample_keys) for name in model.modalities}
            job = folder_items(folder, modality, keys)
            writer = TimedWriter(EmbeddingStoreWriter(work / f"store_{modality}", modality, model.embed_dim,
                                                      str(model_dir)))
            start = time.perf_counter()
            result = run_embedding(model, modality, job, writer, batch_size=args.batch_size,
                                   num_workers=args.workers, progress=False)
            writer.close()
            embed = result.written / (time.perf_counter() - start)
            (first, _), (last, _) = writer.times[0], writer.times[-1]
            steady = sum(n for _, n in writer.times[1:]) / (last - first) if len(writer.times) > 1 else float("nan")
            start = time.perf_counter()
            code = cli_main(["embed", str(model_dir), "--modality", modality, "--folder", str(folder), "--out",
                             str(work / f"cli_{modality}"), "--batch-size", str(args.batch_size), "--num-workers",
                             str(args.workers), "--device", device, "--no-progress"])
            cli_wall = time.perf_counter() - start
            assert code == 0 and result.written == args.n and not result.skipped
            results.append({
                "modality": modality,
                "n": args.n,
                "forward_samples_per_s": round(forward, 1),
                "embed_samples_per_s": round(embed, 1),
                "ratio": round(embed / forward, 3),
                "steady_samples_per_s": round(steady, 1),
                "steady_ratio": round(steady / forward, 3),
                "decode_samples_per_s": round(decode, 1),
                "cli_wall_s": round(cli_wall, 2),
            })
        print(json.dumps({
            "device": device,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "results": results,
        }, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
