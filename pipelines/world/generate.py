"""One scene -> one WebDataset sample (image, depth, caption, audio, ground truth)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image

from pipelines.world.caption import caption
from pipelines.world.config import ATTRIBUTES, WorldConfig
from pipelines.world.render import render
from pipelines.world.scene import Scene, make_scene
from pipelines.world.sound import synthesise

__all__ = ["depth_png_bytes", "generate", "render_sample"]


def depth_png_bytes(depth_m: np.ndarray) -> bytes:
    """Metric depth (metres) as a 16-bit PNG in millimetres (the NYU / SUN RGB-D convention)."""
    millimetres = np.clip(np.round(depth_m * 1000), 1, 65535).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(millimetres).save(buffer, format="PNG")
    return buffer.getvalue()


def render_sample(scene: Scene, cfg: WorldConfig) -> dict[str, Any]:
    """The WebDataset sample of ``scene``: ``png``/``jpg``, ``depth.png``, ``txt``, ``flac``, ``json``."""
    image, depth = render(scene, cfg)
    image_bytes = io.BytesIO()
    image.save(image_bytes, format="PNG" if cfg.image_format == "png" else "JPEG", quality=92)
    audio_bytes = io.BytesIO()
    sf.write(audio_bytes, synthesise(scene, cfg), cfg.sample_rate, format="FLAC")
    text, family, states = caption(scene, cfg)
    record = {
        "key": scene.key, "split": scene.split, "seed": scene.seed, "index": scene.index,
        "attributes": scene.attributes,
        "observability": {name: spec.observability for name, spec in ATTRIBUTES.items()},
        "caption_states": states,
        "caption_family": family,
        "objects": [vars(o) for o in scene.objects],
    }
    return {
        "__key__": scene.key,
        cfg.image_format: image_bytes.getvalue(),
        "depth.png": depth_png_bytes(depth),
        "txt": text,
        "flac": audio_bytes.getvalue(),
        "json": record,
    }


def _render_range(seed: int, split: str, start: int, stop: int, cfg: WorldConfig) -> list[dict[str, Any]]:
    return [render_sample(make_scene(seed, i, split, cfg), cfg) for i in range(start, stop)]


def generate(n: int, split: str, seed: int, cfg: WorldConfig | None = None, workers: int = 1,
             chunk: int = 64) -> Iterator[dict[str, Any]]:
    """Samples ``0..n-1`` of ``split`` in index order; identical output for any ``workers``."""
    cfg = cfg or WorldConfig()
    ranges = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    if workers <= 1:
        for start, stop in ranges:
            yield from _render_range(seed, split, start, stop, cfg)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for samples in pool.map(_render_range, *zip(*[(seed, split, s, e, cfg) for s, e in ranges], strict=True)):
            yield from samples
