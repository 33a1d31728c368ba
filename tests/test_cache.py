"""The anchor cache: equal to live embeddings, refused for another anchor, atomic, resumable, distributed."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import webdataset as wds

from anchorbind.anchor import FrozenAnchor
from anchorbind.data.cache import (
    build_anchor_cache,
    main,
    shard_cache_identity,
    shards_have_anchor_cache,
    sidecar_path,
)
from anchorbind.data.loader import AnchorCacheMismatch, build_loader
from anchorbind.data.shardlist import iter_shard
from tests.conftest import REPO, free_port, subprocess_env
from tests.data_utils import anchor as data_anchor
from tests.data_utils import processors

ANCHOR = {"weights": "packaged", "image_size": 64}


@pytest.fixture(scope="module")
def anchor() -> FrozenAnchor:
    return data_anchor()  # the packaged anchor at 64 px, as ANCHOR describes


@pytest.fixture
def shards(world_dir, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(world_dir / "test", out)
    return out


def test_cached_embeddings_equal_live_ones(shards, anchor):
    report = build_anchor_cache(str(shards), ANCHOR, batch_size=8, device="cpu", progress=False)
    assert len(report.written) == 2 and report.samples == 32 and not report.failures
    assert shards_have_anchor_cache(str(shards), anchor.identity)
    sample = next(iter_shard(shards / "world-000000.tar"))
    vector = np.load(io.BytesIO(sample["anchor.npy"]))
    assert vector.dtype == np.float16 and vector.shape == (anchor.embed_dim,)
    assert sample["anchor_id.txt"].decode() == anchor.identity
    side = json.loads(sidecar_path(shards / "world-000000.tar").read_text())
    assert side["identity"] == anchor.identity and side["cached"] == side["samples"] == 16
    loader = build_loader(str(shards), {"image": anchor}, train=False, batch_size=16, num_workers=0,
                          use_anchor_cache=True, anchor_identity=anchor.identity)
    for batch in loader:
        assert batch["image_embedding"].dtype == torch.float32 and batch["mask"]["image_embedding"].all()
        cosine = torch.nn.functional.cosine_similarity(anchor(batch["image"]), batch["image_embedding"], dim=-1)
        assert cosine.min() >= 0.999


def test_cache_of_another_anchor_is_refused(shards, anchor):
    other = build_anchor_cache(str(shards), {"weights": "none", "image_size": 64}, batch_size=16, device="cpu",
                               progress=False)
    assert len(other.written) == 2
    assert not shards_have_anchor_cache(str(shards), anchor.identity)
    loader = build_loader(str(shards), {}, train=False, batch_size=16, num_workers=0, use_anchor_cache=True,
                          anchor_identity=anchor.identity)
    with pytest.raises(AnchorCacheMismatch) as caught:
        next(iter(loader))
    message = str(caught.value)
    assert "world-000000.tar" in message and "test0000000" in message, "names the shard and the key"
    assert anchor.identity in message and shard_cache_identity(shards / "world-000000.tar") in message
    # recaching with the right anchor replaces the stale vectors
    build_anchor_cache(str(shards), ANCHOR, batch_size=16, device="cpu", progress=False)
    assert shards_have_anchor_cache(str(shards), anchor.identity)


def test_rerun_skips_finished_shards_and_keeps_data(shards):
    before = {p.name: [sorted(s) for s in iter_shard(p)] for p in shards.glob("*.tar")}
    build_anchor_cache(str(shards), ANCHOR, batch_size=16, device="cpu", progress=False)
    first = {p.name: p.read_bytes() for p in shards.glob("*.tar")}
    for name, layouts in before.items():
        after = [sorted(s) for s in iter_shard(shards / name)]
        assert after == [sorted([*keys, "anchor.npy", "anchor_id.txt"]) for keys in layouts], "nothing removed"
    again = build_anchor_cache(str(shards), ANCHOR, batch_size=16, device="cpu", progress=False)
    assert sorted(again.skipped) == sorted(str(p) for p in shards.glob("*.tar")) and not again.written
    assert first == {p.name: p.read_bytes() for p in shards.glob("*.tar")}
    assert not [p for p in shards.iterdir() if "caching" in p.name or "writing" in p.name], "no temporary files"


def test_a_replaced_shard_is_cached_again_and_a_broken_one_is_left_alone(world_dir, shards, anchor):
    build_anchor_cache(str(shards), ANCHOR, batch_size=16, device="cpu", progress=False)
    shutil.copy(world_dir / "test" / "world-000001.tar", shards / "world-000001.tar")  # regenerated: no cache
    assert shard_cache_identity(shards / "world-000001.tar") is None, "a stale sidecar is not trusted"
    data = (world_dir / "test" / "world-000000.tar").read_bytes()
    (shards / "world-000000.tar").write_bytes(data[: len(data) // 2])  # truncated
    report = build_anchor_cache(str(shards), ANCHOR, batch_size=16, device="cpu", progress=False)
    assert report.written == [str(shards / "world-000001.tar")]
    assert [f["shard"] for f in report.failed_shards] == [str(shards / "world-000000.tar")]
    assert (shards / "world-000000.tar").read_bytes() == data[: len(data) // 2], "the original is untouched"
    assert not [p for p in shards.iterdir() if "caching" in p.name]


def test_samples_without_a_cached_embedding_are_reported(shards, anchor):
    path = shards / "world-000000.tar"
    samples = [{k: v for k, v in s.items() if k not in ("__url__", "__local_path__")} for s in iter_shard(path)]
    samples[3]["png"] = b"not an image"
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    report = build_anchor_cache(str(path), ANCHOR, batch_size=16, device="cpu", progress=False)
    assert [f["key"] for f in report.failures] == [samples[3]["__key__"]] and report.samples == 15
    text = {"text": processors()["text"]}
    (batch,) = list(build_loader(str(path), text, train=False, batch_size=16, num_workers=0, use_anchor_cache=True,
                                 anchor_identity=anchor.identity))
    mask = batch["mask"]
    assert mask["text"].all() and mask["image_embedding"].sum() == 15 and not mask["image_embedding"][3]
    assert batch["image_embedding"][3].abs().sum() == 0
    assert [(e["key"], e["modality"]) for e in batch["errors"]] == [(samples[3]["__key__"], "image_embedding")]


def test_cli_reads_the_anchor_from_a_training_config(shards, tmp_path, anchor, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({"model": {"anchor": ANCHOR}}))
    assert main([str(shards / "world-000000.tar"), "--anchor-config", str(config), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 1 and summary["samples"] == 16
    assert shard_cache_identity(shards / "world-000000.tar") == anchor.identity
    config.write_text(json.dumps({"anchor": {"weights": "none", "imagesize": 64}}))
    assert main([str(shards), "--anchor-config", str(config)]) == 2
    assert "imagesize" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_cache_disjoint_shards(shards, anchor):
    env = subprocess_env(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    config = shards.parent / "cfg.yaml"
    config.write_text(json.dumps({"model": {"anchor": ANCHOR}}))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()),
               "-m", "anchorbind.cli", "cache", str(shards), "--anchor-config", str(config), "--no-progress"]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")),
                     key=lambda r: r["process"])
    assert [r["process"] for r in reports] == [0, 1]
    assert [r["written"] for r in reports] == [1, 1] and [r["samples"] for r in reports] == [16, 16]
    assert all(shard_cache_identity(p) == anchor.identity for p in shards.glob("*.tar"))
    records = [json.loads(sidecar_path(p).read_text()) for p in sorted(shards.glob("*.tar"))]
    assert [r["cached"] for r in records] == [16, 16]
