"""The anchor cache (sidecars by default, in place on request): equal to live embeddings, refused for
another anchor or other data, atomic, resumable, distributed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
import webdataset as wds

from anchorbind.anchor import FrozenAnchor
from anchorbind.data.anchor_store import identity_digest
from anchorbind.data.cache import (
    anchor_cache_status,
    build_anchor_cache,
    main,
    shard_cache_identity,
    shards_have_anchor_cache,
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


def _sidecar(shards, anchor, name="world-000000.tar"):
    return shards / "anchor-cache" / identity_digest(anchor.identity) / name


def test_sidecar_cache_equals_live_embeddings_and_leaves_the_shards_alone(shards, anchor):
    before = {p.name: p.read_bytes() for p in shards.glob("*.tar")}
    report = build_anchor_cache(str(shards), ANCHOR, batch_size=8, device="cpu", progress=False)
    assert len(report.written) == 2 and report.samples == 32 and not report.failures
    assert before == {p.name: p.read_bytes() for p in shards.glob("*.tar")}, "the data shards are not rewritten"
    status = anchor_cache_status(str(shards), anchor.identity)
    assert status.complete and status.sidecars == [str(_sidecar(shards, anchor, n)) for n in sorted(before)]
    record = json.loads(_sidecar(shards, anchor).with_suffix(".tar.json").read_text())
    assert record["identity"] == anchor.identity and record["cached"] == record["samples"] == 16
    assert record["source_bytes"] == len(before["world-000000.tar"])
    keys = [s["__key__"] for s in iter_shard(shards / "world-000000.tar")]
    assert [s["__key__"] for s in iter_shard(_sidecar(shards, anchor))] == keys, "one entry per sample, in order"
    cached = {}
    for batch in build_loader(str(shards), {"image": anchor}, train=False, batch_size=8, num_workers=0,
                              use_anchor_cache=True, anchor_identity=anchor.identity, anchor_sidecars=status.sidecars):
        assert batch["image_embedding"].dtype == torch.float32 and batch["mask"]["image_embedding"].all()
        cosine = torch.nn.functional.cosine_similarity(anchor(batch["image"]), batch["image_embedding"], dim=-1)
        assert cosine.min() >= 0.999
        cached.update(zip(batch["__key__"], batch["image_embedding"], strict=True))
    assert len(cached) == 32
    # the training stream (shuffled; 3 readers of 8 samples, two of them starting inside a shard) pairs each
    # sample with its own vector
    loader = build_loader(str(shards), {}, train=True, batch_size=4, num_workers=3, seed=3, epochs=1,
                          use_anchor_cache=True, anchor_identity=anchor.identity, anchor_sidecars=status.sidecars)
    seen = [(key, vector) for batch in loader for key, vector in zip(batch["__key__"], batch["image_embedding"],
                                                                     strict=True)]
    assert len(seen) == 24 and all(torch.equal(vector, cached[key]) for key, vector in seen)


def test_caches_of_two_anchors_live_side_by_side_and_a_stale_one_is_refused(shards, anchor):
    other = {"weights": "none", "image_size": 64}
    build_anchor_cache(str(shards), other, batch_size=16, device="cpu", progress=False)
    other_identity = json.loads(next((shards / "anchor-cache").glob("*/anchor.json")).read_text())["identity"]
    status = anchor_cache_status(str(shards), anchor.identity)
    assert not status.complete and status.matching == 0 and status.found == other_identity, "says whose cache it is"
    build_anchor_cache(str(shards), ANCHOR, batch_size=16, device="cpu", progress=False)
    assert shards_have_anchor_cache(str(shards), anchor.identity)
    assert shards_have_anchor_cache(str(shards), other_identity), "the first anchor's cache is kept"
    # a sidecar that does not follow its shard (here: the other shard's) is never used silently
    sidecar = _sidecar(shards, anchor)
    own = sidecar.read_bytes()
    shutil.copy(_sidecar(shards, anchor, "world-000001.tar"), sidecar)
    loader = build_loader(str(shards), {}, train=False, batch_size=16, num_workers=0, use_anchor_cache=True,
                          anchor_identity=anchor.identity,
                          anchor_sidecars=anchor_cache_status(str(shards), anchor.identity).sidecars)
    with pytest.raises(AnchorCacheMismatch, match=r"does not follow shard .*world-000000.tar.*anchorbind cache"):
        next(iter(loader))
    # a damaged sidecar (cut inside a member) is said to be damaged, not read as a shorter one
    sidecar.write_bytes(own[: len(own) // 2 + 100])
    with pytest.raises(AnchorCacheMismatch, match=r"anchor cache .*world-000000.tar is damaged"):
        list(loader)


def test_rerun_skips_finished_sidecars_and_a_replaced_or_broken_shard_is_handled(world_dir, shards, anchor):
    build_anchor_cache(str(shards), ANCHOR, batch_size=16, device="cpu", progress=False)
    written = {p: p.read_bytes() for p in _sidecar(shards, anchor).parent.iterdir()}
    again = build_anchor_cache(str(shards), ANCHOR, batch_size=16, device="cpu", progress=False)
    assert len(again.skipped) == 2 and not again.written
    assert written == {p: p.read_bytes() for p in _sidecar(shards, anchor).parent.iterdir()}
    # a shard of another size (regenerated) has no cache until it is cached again
    data = (shards / "world-000000.tar").read_bytes()
    (shards / "world-000000.tar").write_bytes(data + bytes(10240))
    assert anchor_cache_status(str(shards), anchor.identity).first_without == str(shards / "world-000000.tar")
    (shards / "world-000001.tar").write_bytes(data[: len(data) // 2])  # truncated
    report = build_anchor_cache(str(shards), ANCHOR, batch_size=16, device="cpu", progress=False)
    assert report.written == [str(shards / "world-000000.tar")]
    assert [f["shard"] for f in report.failed_shards] == [str(shards / "world-000001.tar")]
    assert (shards / "world-000001.tar").read_bytes() == data[: len(data) // 2], "the data is only read"
    assert not [p for p in _sidecar(shards, anchor).parent.iterdir() if p.name.startswith(".")], "no temporaries"


def test_cache_of_another_anchor_is_refused_in_place(shards, anchor):
    other = build_anchor_cache(str(shards), {"weights": "none", "image_size": 64}, batch_size=16, device="cpu",
                               progress=False, in_place=True)
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
    build_anchor_cache(str(shards), ANCHOR, batch_size=16, device="cpu", progress=False, in_place=True)
    assert shards_have_anchor_cache(str(shards), anchor.identity)


def test_rerun_skips_finished_shards_and_keeps_data_in_place(shards):
    before = {p.name: [sorted(s) for s in iter_shard(p)] for p in shards.glob("*.tar")}
    build_anchor_cache(str(shards), ANCHOR, batch_size=16, device="cpu", progress=False, in_place=True)
    first = {p.name: p.read_bytes() for p in shards.glob("*.tar")}
    for name, layouts in before.items():
        after = [sorted(s) for s in iter_shard(shards / name)]
        assert after == [sorted([*keys, "anchor.npy", "anchor_id.txt"]) for keys in layouts], "nothing removed"
    again = build_anchor_cache(str(shards), ANCHOR, batch_size=16, device="cpu", progress=False, in_place=True)
    assert sorted(again.skipped) == sorted(str(p) for p in shards.glob("*.tar")) and not again.written
    assert first == {p.name: p.read_bytes() for p in shards.glob("*.tar")}
    assert not [p for p in shards.iterdir() if "caching" in p.name or "writing" in p.name], "no temporary files"


def test_a_replaced_shard_is_cached_again_and_a_broken_one_is_left_alone_in_place(world_dir, shards, anchor):
    build_anchor_cache(str(shards), ANCHOR, batch_size=16, device="cpu", progress=False, in_place=True)
    shutil.copy(world_dir / "test" / "world-000001.tar", shards / "world-000001.tar")  # regenerated: no cache
    assert shard_cache_identity(shards / "world-000001.tar") is None, "a stale sidecar is not trusted"
    data = (world_dir / "test" / "world-000000.tar").read_bytes()
    (shards / "world-000000.tar").write_bytes(data[: len(data) // 2])  # truncated
    report = build_anchor_cache(str(shards), ANCHOR, batch_size=16, device="cpu", progress=False, in_place=True)
    assert report.written == [str(shards / "world-000001.tar")]
    assert [f["shard"] for f in report.failed_shards] == [str(shards / "world-000000.tar")]
    assert (shards / "world-000000.tar").read_bytes() == data[: len(data) // 2], "the original is untouched"
    assert not [p for p in shards.iterdir() if "caching" in p.name]


@pytest.mark.parametrize("in_place", [False, True], ids=["sidecar", "in_place"])
def test_samples_without_a_cached_embedding_are_reported(shards, anchor, in_place):
    path = shards / "world-000000.tar"
    samples = [{k: v for k, v in s.items() if k not in ("__url__", "__local_path__")} for s in iter_shard(path)]
    samples[3]["png"] = b"not an image"
    del samples[5]["png"]  # no image: nothing to embed, and nothing to report
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    report = build_anchor_cache(str(path), ANCHOR, batch_size=4, device="cpu", progress=False, in_place=in_place)
    assert [f["key"] for f in report.failures] == [samples[3]["__key__"]] and report.samples == 14
    text = {"text": processors()["text"]}
    status = anchor_cache_status(str(path), anchor.identity)
    (batch,) = list(build_loader(str(path), text, train=False, batch_size=16, num_workers=0, use_anchor_cache=True,
                                 anchor_identity=anchor.identity, anchor_sidecars=status.sidecars))
    mask = batch["mask"]
    assert mask["text"].all() and mask["image_embedding"].sum() == 14 and not mask["image_embedding"][3]
    assert batch["image_embedding"][3].abs().sum() == 0
    assert [(e["key"], e["modality"]) for e in batch["errors"]] == [(samples[3]["__key__"], "image_embedding")]
    if not in_place:
        assert "image does not decode" in batch["errors"][0]["reason"], "the reason recorded when caching"


def test_cli_reads_the_anchor_from_a_training_config(shards, tmp_path, anchor, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({"model": {"anchor": ANCHOR}}))
    assert main([str(shards / "world-000000.tar"), "--anchor-config", str(config), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 1 and summary["samples"] == 16
    assert _sidecar(shards, anchor).is_file()
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
    assert shards_have_anchor_cache(str(shards), anchor.identity)
    records = [json.loads(_sidecar(shards, anchor, p.name + ".json").read_text()) for p in sorted(shards.glob("*.tar"))]
    assert [r["cached"] for r in records] == [16, 16]
