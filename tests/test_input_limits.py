"""Input cost and values (issue 13): pixel and size limits, absurd depth values.

Images, depth maps and captions over their configured limits are refused with an ``InputError``
naming the input and the limit, before they are decoded (a file's header says how big it is);
absurd but finite depth is clipped the same way whatever its dtype. Audio's limits (duration,
amplitude, windowed reading) are tested in ``test_audio.py``. Processors only: no model is built.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from anchorbind.errors import ConfigError, InputError
from anchorbind.registry import create_processor

DEPTH = {"image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "num_heads": 2}


def header_only_png(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG whose header declares ``width x height`` but that holds no pixel data: what a
    decompression bomb looks like to a reader before it decodes (a few dozen bytes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def header_only_npy(shape: tuple[int, ...]) -> bytes:
    """A float32 ``.npy`` whose header declares ``shape`` followed by only a few bytes of data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\0" * 64


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image():
    return create_processor("image", {"weights": "none", "image_size": 32})


# ---------------------------------------------------------------------------------- images
def test_images_over_max_pixels_are_refused_from_the_header(image, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(header_only_png(9000, 9000))  # 81 Mpx: under Pillow's own limit, over ours
    huge = tmp_path / "huge.png"
    huge.write_bytes(header_only_png(20000, 10000))  # 200 Mpx: over Pillow's hard limit too
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no DecompressionBombWarning leaks out
        with pytest.raises(InputError, match=r"bomb\.png.*9000x9000 = 81000000 pixels > max_pixels 67108864"):
            image.load(bomb)
        with pytest.raises(InputError, match=r"huge\.png.*image too large"):
            image.load(huge)
        with pytest.raises(InputError, match=r"<\d+ bytes>.*max_pixels"):
            image.load(bomb.read_bytes())
    assert image.config.max_pixels == 1 << 26


def test_the_image_pixel_limit_is_a_config_field(tmp_path):
    small = create_processor("image", {"weights": "none", "image_size": 32, "max_pixels": 40 * 40})
    picture = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    (tmp_path / "picture.png").write_bytes(png_bytes(picture))
    for source in (tmp_path / "picture.png", picture, Image.fromarray(picture)):
        with pytest.raises(InputError, match=r"40x48 = 1920 pixels > max_pixels 1600") as info:
            small.load(source)
        assert info.value.modality == "image" and info.value.source is source
    assert small.load(picture[:40]).shape == (3, 32, 32)
    unlimited = create_processor("image", {"weights": "none", "image_size": 32, "max_pixels": None})
    assert unlimited.load(tmp_path / "picture.png").shape == (3, 32, 32)
    with pytest.raises(ConfigError, match="max_pixels"):
        create_processor("image", {"weights": "none", "max_pixels": 0})


# ----------------------------------------------------------------------------- depth maps
def test_depth_maps_over_max_pixels_are_refused_before_decoding(tmp_path):
    depth = create_processor("depth", DEPTH)
    cases = {
        "bomb.png": (header_only_png(9000, 9000, bit_depth=16, colour_type=0), r"\(9000, 9000\) holds 81000000"),
        "huge.png": (header_only_png(20000, 10000, bit_depth=16, colour_type=0), r"too large"),  # Pillow's bomb
        "huge.npy": (header_only_npy((9000, 9000)), r"\(9000, 9000\) holds 81000000 values > max_pixels"),
        "volume.npy": (header_only_npy((1000, 1000, 100)), r"\(1000, 1000, 100\) holds 100000000 values"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(InputError, match=rf"{name.replace('.', r'.')}.*{reason}") as info:
                depth.load(tmp_path / name)
            with pytest.raises(InputError, match=reason):
                depth.load(data)
        assert info.value.modality == "depth"
    assert depth.config.max_pixels == 1 << 26


def test_the_depth_pixel_limit_is_a_config_field(tmp_path):
    depth = create_processor("depth", {**DEPTH, "max_pixels": 50 * 50})
    metres = np.full((60, 80), 2.0, dtype=np.float32)
    np.save(tmp_path / "map.npy", metres)
    (tmp_path / "map.png").write_bytes(png_bytes((metres * 1000).astype(np.uint16)))
    for source in (tmp_path / "map.npy", tmp_path / "map.png", metres, torch.from_numpy(metres)):
        with pytest.raises(InputError, match=r"\(60, 80\) holds 4800 values > max_pixels 2500"):
            depth.load(source)
    assert depth.load(metres[:50, :50]).shape == (1, 32, 32)
    with pytest.raises(ConfigError, match="max_pixels"):
        create_processor("depth", {**DEPTH, "max_pixels": -1})


def test_absurd_finite_depth_is_clipped_the_same_whatever_the_dtype(tmp_path):
    """1e30 m reads as max_depth and 1e-30 m as min_depth, from float32 or float64, file or array;
    float64 values beyond float32's range were refused as 'infinite' and tiny ones read as holes."""
    depth = create_processor("depth", DEPTH)
    far, near = depth.config.max_depth, depth.config.min_depth
    scene = 1.0 + np.linspace(0, 4, 60 * 80, dtype=np.float32).reshape(60, 80)
    absurd_far, absurd_near = scene.copy(), scene.copy()
    absurd_far[:10] = far
    absurd_near[:10] = near
    expected_far, expected_near = depth.load(absurd_far), depth.load(absurd_near)
    for value, expected in ((1e30, expected_far), (1e300, expected_far), (1e-30, expected_near),
                            (1e-300, expected_near)):
        for dtype in (np.float32, np.float64):
            limits = np.finfo(dtype)
            if not float(limits.tiny) <= value <= float(limits.max):  # 1e300 and 1e-300 exist only as float64
                continue
            array = scene.astype(dtype)
            array[:10] = value
            np.save(tmp_path / "map.npy", array)
            for source in (array, tmp_path / "map.npy", torch.from_numpy(array)):
                torch.testing.assert_close(depth.load(source), expected, rtol=0, atol=0,
                                           msg=f"{value} as {np.dtype(dtype)} from {type(source).__name__}")
    reading = depth.read(np.where(scene > 3, 1e-300, scene.astype(np.float64)))
    assert not reading.invalid.any(), "a tiny positive depth is a measurement, not a hole"
    with pytest.raises(InputError, match="NaN"):
        depth.load(np.where(scene > 3, np.nan, scene))  # non-finite values stay refused


# ------------------------------------------------------------------------------- captions
def test_captions_over_max_bytes_are_refused(tmp_path):
    text = create_processor("text", {})
    (tmp_path / "log.txt").write_bytes(b"a" * 70000)
    (tmp_path / "caption.txt").write_bytes(b"a red cube " * 5000)  # 55 kB: long but allowed
    cases = [
        ("a" * 70000, r"'aaa.*at least 70000 bytes > max_bytes 65536"),
        ("é" * 20000 + "x" * 30000, r"70000 bytes > max_bytes 65536"),  # 50000 characters, 70000 bytes
        (b"b" * 70000, r"<70000 bytes>.*70000 bytes > max_bytes"),
        (tmp_path / "log.txt", r"log\.txt.*70000 bytes > max_bytes"),
    ]
    for source, reason in cases:
        with pytest.raises(InputError, match=reason) as info:
            text.load(source)
        assert info.value.modality == "text"
    assert text.load(tmp_path / "caption.txt").startswith("a red cube")
    assert text.config.max_bytes == 65536
    assert create_processor("text", {"max_bytes": None}).load("a" * 70000) == "a" * 70000
    with pytest.raises(ConfigError, match="max_bytes"):
        create_processor("text", {"max_bytes": 0})


# ------------------------------------------------------------------- evaluation: skip, count
def test_evaluation_skips_and_counts_bad_files(world_dir, tmp_path):
    """A truncated FLAC and a NaN depth map inside an evaluation shard: each loses only that
    modality of its sample, is counted with its key and reason, and the other rows embed."""
    import webdataset as wds

    from anchorbind.data.shardlist import iter_shard
    from anchorbind.evaluation.extract import EmbeddingSet, extract_embeddings
    from anchorbind.model import BindModel

    samples = [{k: v for k, v in s.items() if k not in ("__url__", "__local_path__")}
               for s in iter_shard(world_dir / "test" / "world-000000.tar")]
    cut, nan = samples[2]["__key__"], samples[5]["__key__"]
    samples[2]["flac"] = samples[2]["flac"][: len(samples[2]["flac"]) // 2]
    depth_npy = io.BytesIO()
    np.save(depth_npy, np.full((40, 40), np.nan, dtype=np.float32))
    samples[5]["depth.npy"] = depth_npy.getvalue()  # depth.npy is read before depth.png
    shard = tmp_path / "eval-000000.tar"
    with wds.TarWriter(str(shard)) as writer:
        for sample in samples:
            writer.write(sample)

    model = BindModel.from_config({
        "anchor": {"weights": "none", "image_size": 32},
        "modalities": {"audio": {"width": 16, "depth": 1, "num_heads": 1},
                       "depth": {**DEPTH, "width": 16, "num_heads": 1}},
    }).eval()
    for workers in (0, 1):
        emb = extract_embeddings(model, str(shard), batch_size=4, num_workers=workers, progress=False)
        assert emb.keys == [s["__key__"] for s in samples], "every sample is embedded, in order"
        assert sorted((e["key"], e["modality"]) for e in emb.errors) == sorted([(cut, "audio"), (nan, "depth")])
        reasons = {e["modality"]: e["reason"] for e in emb.errors}
        assert "truncated" in reasons["audio"] and "NaN" in reasons["depth"], reasons
        assert all(e["url"] == str(shard) for e in emb.errors)
        rows = {key: i for i, key in enumerate(emb.keys)}
        assert not emb.masks["audio"][rows[cut]] and emb.masks["audio"].sum() == len(samples) - 1
        assert not emb.masks["depth"][rows[nan]] and emb.masks["depth"].sum() == len(samples) - 1
        assert emb.masks["image"].all() and emb.masks["depth"][rows[cut]] and emb.masks["audio"][rows[nan]]
        for name in ("image", "audio", "depth"):
            assert torch.isfinite(emb.embeddings[name]).all()
            torch.testing.assert_close(emb.subset(name).norm(dim=-1), torch.ones(int(emb.masks[name].sum())))
    emb.save(tmp_path / "embeddings.safetensors")  # the counts travel to `anchorbind eval`'s metrics
    assert EmbeddingSet.load(tmp_path / "embeddings.safetensors").errors == emb.errors
