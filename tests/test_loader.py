"""The WebDataset loader: round trips, exactly-once evaluation, bad members, bad tars, other layouts."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds
from PIL import Image

from anchorbind.data.loader import build_loader
from anchorbind.data.shardlist import expand_shards, iter_shard
from anchorbind.errors import InputError
from tests.conftest import REPO, free_port, subprocess_env
from tests.data_utils import processors


def eval_batches(shards, batch_size=8, num_workers=0, procs=None, **kw):
    return list(build_loader(shards if isinstance(shards, list) else str(shards), procs or processors(),
                             train=False, batch_size=batch_size, num_workers=num_workers, **kw))


def all_errors(batches):
    return [e for b in batches for e in b["errors"]]


def assert_same(actual, expected):
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for field, value in expected.items():
            torch.testing.assert_close(actual[field], value, rtol=0, atol=0)
    else:
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


# ------------------------------------------------------------------------------ hand-made shards
def _png(rng) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _flac(rng, seconds=1.5) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * rng.standard_normal(int(16000 * seconds)), 16000, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _depth_png(rng) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(500, 6000, (30, 30)).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_handmade(path: Path, count: int, seed: int = 0, edit=None) -> list[dict]:
    """``count`` samples of real PNG, 16-bit depth PNG, FLAC and text; ``edit(i, sample)`` may change one."""
    rng = np.random.default_rng(seed)
    samples = []
    with wds.TarWriter(str(path)) as writer:
        for i in range(count):
            sample = {"__key__": f"{path.stem}_{i:04d}", "png": _png(rng), "depth.png": _depth_png(rng),
                      "flac": _flac(rng), "txt": f"sample {i} of {path.stem}".encode(), "json": {"index": i}}
            if edit is not None:
                sample = edit(i, sample)
            writer.write(sample)
            samples.append(sample)
    return samples


def test_handmade_shard_round_trip_and_missing_modalities(tmp_path):
    def edit(i, sample):
        if i == 2:
            del sample["flac"]          # a sample without audio keeps its other modalities
        if i == 4:
            sample = {"__key__": sample["__key__"], "cls": b"7"}  # nothing any processor reads
        return sample

    written = write_handmade(tmp_path / "hand.tar", 6, edit=edit)
    procs = processors()
    (batch,) = eval_batches(tmp_path / "hand.tar", batch_size=16)
    keys = [s["__key__"] for s in written]
    assert batch["__key__"] == keys[:4] + keys[5:]
    assert batch["mask"]["audio"].tolist() == [True, True, False, True, True]
    assert batch["mask"]["image"].all() and batch["mask"]["depth"].all() and batch["mask"]["text"].all()
    for name, member in (("image", "png"), ("depth", "depth.png"), ("audio", "flac"), ("text", "txt")):
        rows = [s for s in written if member in s]
        assert_same(batch[name], procs[name].collate([procs[name].load(s[member]) for s in rows]))
    assert batch["json"][0] == {"index": 0}
    (error,) = batch["errors"]
    assert error["key"] == keys[4] and error["modality"] is None and "no member" in error["reason"]


# ------------------------------------------------------------------------------ world shards
def test_world_round_trip_gives_identical_tensors(world_dir):
    procs = processors()
    shard = world_dir / "test" / "world-000000.tar"
    raw = {s["__key__"]: s for s in iter_shard(shard)}
    (batch,) = eval_batches(shard, batch_size=16)
    assert batch["__key__"] == list(raw) and not batch["errors"]
    for name, proc in procs.items():
        member = next(k for k in proc.sample_keys if k in raw[batch["__key__"][0]])
        assert batch["mask"][name].all()
        assert_same(batch[name], proc.collate([proc.load(raw[k][member]) for k in batch["__key__"]]))
    assert batch["json"][0]["attributes"]["category"] in raw[batch["__key__"][0]]["txt"].decode()


def test_evaluation_yields_every_sample_once_in_a_fixed_order(world_dir):
    shards = expand_shards(str(world_dir / "test"))
    in_shard_order = [s["__key__"] for url in shards for s in iter_shard(url)]
    single = [k for b in eval_batches(world_dir / "test", batch_size=5) for k in b["__key__"]]
    assert single == in_shard_order, "one process: shard order, then tar order"
    runs = []
    for _ in range(2):
        batches = eval_batches(world_dir / "test", batch_size=5, num_workers=2)
        keys = [k for b in batches for k in b["__key__"]]
        assert sorted(keys) == sorted(in_shard_order) and len(set(keys)) == len(keys), "every sample exactly once"
        assert [len(b["__key__"]) for b in batches].count(1) == 2, "each worker's final partial batch is kept"
        runs.append(keys)
    assert runs[0] == runs[1], "deterministic order"
    # two workers, one shard each: batches alternate between the shards
    assert runs[0][:5] == in_shard_order[:5] and runs[0][5:10] == in_shard_order[16:21]


def test_training_mode_is_infinite_shuffled_seeded_and_whole_batches(world_dir):
    def keys(seed, epoch=0, resampled=None, batches=10):
        loader = build_loader(str(world_dir / "train"), {"text": processors()["text"]}, train=True, batch_size=8,
                              num_workers=0, shuffle_buffer=16, seed=seed, epoch=epoch, resampled=resampled)
        out = []
        for batch in loader:
            assert len(batch["__key__"]) == 8
            out.append(batch["__key__"])
            if len(out) == batches:
                break
        return [k for b in out for k in b]

    first = keys(0, batches=20)
    assert len(first) == 160 > 48, "resampled: batches forever"
    assert first[:80] == keys(0) and first[:80] != keys(1) and first[:80] != keys(0, epoch=1)

    one_epoch = keys(0, resampled=False, batches=100)
    assert len(one_epoch) == 48 and sorted(one_epoch) != one_epoch, "one shuffled epoch"
    assert keys(0, resampled=False, batches=100) == one_epoch and keys(0, epoch=1, resampled=False) != one_epoch


def test_training_drops_the_last_partial_batch(world_dir):
    loader = build_loader(str(world_dir / "test"), {"depth": processors()["depth"]}, train=True, batch_size=10,
                          num_workers=0, resampled=False)
    assert [len(b["__key__"]) for b in loader] == [10, 10, 10]


def _rewrite(src: Path, dst: Path, edit) -> None:
    with wds.TarWriter(str(dst)) as writer:
        for sample in iter_shard(src):
            sample = edit({k: v for k, v in sample.items() if k not in ("__url__", "__local_path__")})
            if sample is not None:
                writer.write(sample)


def test_corrupt_member_and_truncated_audio_are_skipped_counted_reported(world_dir, tmp_path):
    src = world_dir / "test" / "world-000000.tar"
    keys = [s["__key__"] for s in iter_shard(src)]
    bad = {keys[1]: b"not a flac file at all", keys[2]: None}

    def edit(sample):
        if sample["__key__"] in bad:
            sample["flac"] = bad[sample["__key__"]] or sample["flac"][: len(sample["flac"]) // 3]
        return sample

    _rewrite(src, tmp_path / "bad.tar", edit)
    batches = eval_batches(tmp_path / "bad.tar", batch_size=16)
    errors = all_errors(batches)
    assert {(e["key"], e["modality"]) for e in errors} == {(keys[1], "audio"), (keys[2], "audio")}
    assert all(e["url"].endswith("bad.tar") and e["reason"] for e in errors)
    batch = batches[0]
    assert len(batch["__key__"]) == 16, "samples keep their other modalities"
    assert batch["mask"]["audio"].sum() == 14 and batch["mask"]["image"].all()
    assert batch["audio"].shape[0] == 14
    with pytest.raises(InputError, match=keys[1]):
        eval_batches(tmp_path / "bad.tar", batch_size=16, handler="raise")


def test_raise_mode_keeps_the_error_type_across_workers(world_dir, tmp_path):
    src = world_dir / "test" / "world-000000.tar"

    def edit(sample):
        sample["flac"] = b"garbage"
        return sample

    _rewrite(src, tmp_path / "bad.tar", edit)
    with pytest.raises(InputError, match=r"bad\.tar"):
        eval_batches(tmp_path / "bad.tar", num_workers=1, handler="raise", procs={"audio": processors()["audio"]})


def test_failures_after_the_last_batch_still_reach_the_caller(world_dir, tmp_path):
    """A broken last sample, and a worker whose only shard yields nothing: both reported."""
    src = world_dir / "test" / "world-000000.tar"
    last = [s["__key__"] for s in iter_shard(src)][-1]

    def break_last(sample):
        if sample["__key__"] == last:
            sample["txt"] = b"\xff\xfe not utf-8"
        return sample

    _rewrite(src, tmp_path / "a.tar", break_last)
    _rewrite(src, tmp_path / "b.tar", lambda s: {**s, "txt": b""} if s["__key__"] == last else None)
    text = {"text": processors()["text"]}
    batches = eval_batches([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")], batch_size=5, num_workers=2,
                           procs=text)
    errors = all_errors(batches)
    assert sorted((e["url"].endswith("a.tar"), e["modality"] or "") for e in errors) == [
        (False, ""), (False, "text"), (True, ""), (True, "text")]
    assert sum(len(b["__key__"]) for b in batches) == 15
    assert any(len(b["__key__"]) == 0 and b["errors"] for b in batches), "an errors-only batch from worker 2"


def test_truncated_tar_is_reported(world_dir, tmp_path):
    data = (world_dir / "test" / "world-000000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 + 777])
    batches = eval_batches(tmp_path / "cut.tar", batch_size=32)
    errors = all_errors(batches)
    seen = sum(len(b["__key__"]) for b in batches)
    assert 0 < seen < 16
    assert errors and all(e["url"] == str(tmp_path / "cut.tar") for e in errors), errors
    assert any(e["key"] is None and "unreadable shard or tar member" in e["reason"] for e in errors)
    with pytest.raises(InputError, match=r"cut\.tar"):
        eval_batches(tmp_path / "cut.tar", batch_size=32, handler="raise")


def test_missing_shards_are_reported_and_an_endless_stream_of_them_stops(tmp_path):
    write_handmade(tmp_path / "ok.tar", 3)
    text = {"text": processors()["text"]}
    batches = eval_batches([str(tmp_path / "ok.tar"), str(tmp_path / "gone.tar")], procs=text)
    assert sum(len(b["__key__"]) for b in batches) == 3
    assert [e["url"] for e in all_errors(batches)] == [str(tmp_path / "gone.tar")]
    loader = build_loader([str(tmp_path / "gone.tar")], text, train=True, batch_size=2, num_workers=0)
    with pytest.raises(InputError, match="without one usable sample"):
        next(iter(loader))


def test_img2dataset_layout_is_read(tmp_path):
    """img2dataset writes 00000.tar with keys 000000000.. and jpg + txt + json members."""
    from skimage import data

    image = io.BytesIO()
    Image.fromarray(data.chelsea()).save(image, format="JPEG")
    with wds.TarWriter(str(tmp_path / "00000.tar")) as writer:
        for i in range(3):
            meta = {"url": f"http://example.com/{i}.jpg", "caption": "a cat", "key": f"{i:09d}", "status": "success",
                    "error_message": None, "width": 451, "height": 300, "original_width": 451,
                    "original_height": 300, "exif": "{}", "sha256": "0" * 64}
            writer.write({"__key__": f"{i:09d}", "jpg": image.getvalue(), "txt": "a cat", "json": meta})
    procs = {k: processors()[k] for k in ("image", "text")}
    (batch,) = list(build_loader(str(tmp_path / "00000.tar"), procs, train=False, batch_size=8, num_workers=0))
    assert batch["__key__"] == ["000000000", "000000001", "000000002"]
    assert batch["image"].shape[0] == 3 and batch["text"]["input_ids"].shape[0] == 3
    assert batch["json"][0]["status"] == "success" and not batch["errors"]


def test_shard_specs(world_dir):
    train = sorted(str(p) for p in (world_dir / "train").glob("*.tar"))
    assert expand_shards(str(world_dir / "train")) == train
    assert expand_shards(str(world_dir / "train" / "world-{000000..000002}.tar")) == train
    assert expand_shards(str(world_dir / "train" / "*.tar")) == train
    assert expand_shards("::".join(train[:2])) == train[:2]
    assert expand_shards([world_dir / "train", train[0]]) == [*train, train[0]]
    pipe = f"pipe:cat {world_dir / 'test' / 'world-000000.tar'}"
    (batch,) = list(build_loader(pipe, {"text": processors()["text"]}, train=False, batch_size=64, num_workers=0))
    assert len(batch["__key__"]) == 16
    with pytest.raises(FileNotFoundError, match=r"no \.tar"):
        expand_shards(str(world_dir))  # a directory without shards directly inside
    with pytest.raises(ValueError, match="every sample exactly once"):
        build_loader(pipe, {}, train=False, batch_size=4, resampled=True)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_split_shards_without_duplicates(world_dir, tmp_path):
    """tests/dist_loader_check.py under accelerate (2 gloo processes): eval and one-epoch training
    split shards by rank, disjoint and complete; resampled training is endless and differs per rank."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(REPO / "tests" / "dist_loader_check.py"),
               str(world_dir), str(tmp_path)]
    env = subprocess_env(REPO, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")  # REPO: for tests.data_utils
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    test_keys = sorted(s["__key__"] for url in expand_shards(str(world_dir / "test")) for s in iter_shard(url))
    train_keys = sorted(s["__key__"] for url in expand_shards(str(world_dir / "train")) for s in iter_shard(url))
    assert all(r["world_size"] == 2 and r["env_rank_removed"] for r in ranks)
    for mode, expected in (("eval", test_keys), ("epoch", train_keys)):
        a, b = ranks[0][mode], ranks[1][mode]
        assert a and b and not set(a) & set(b), f"{mode}: ranks overlap"
        assert sorted(a + b) == expected, f"{mode}: every sample exactly once over both ranks"
    a, b = ranks[0]["resampled"], ranks[1]["resampled"]
    assert len(a) == len(b) == 96 > len(train_keys) and a != b
