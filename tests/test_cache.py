"""The anchor cache: equal to live embeddings, refused for another anchor, resumable, distributed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch

from bind.anchor import AnchorConfig, FrozenAnchor
from bind.data.cache import build_anchor_cache, shard_cache_identity, shards_have_anchor_cache
from bind.data.loader import build_loader
from bind.data.stages import AnchorCacheMismatch
from tests.conftest import REPO, free_port

ANCHOR = {"weights": "packaged", "image_size": 64}


@pytest.fixture
def shards(world_dir, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(world_dir / "test", out)
    return out


def test_cached_embeddings_equal_live_ones(shards):
    anchor = FrozenAnchor(AnchorConfig(**ANCHOR))
    report = build_anchor_cache(str(shards), ANCHOR, batch_size=8, progress=False)
    assert len(report.written) == 2 and report.samples == 32 and not report.failures
    assert shards_have_anchor_cache(str(shards), anchor.identity)
    loader = build_loader(str(shards), {"image": anchor}, train=False, batch_size=16, num_workers=0,
                          use_anchor_cache=True, anchor_identity=anchor.identity)
    for batch in loader:
        live = anchor(batch["image"])
        cosine = torch.nn.functional.cosine_similarity(live, batch["image_embedding"], dim=-1)
        assert cosine.min() >= 0.999 and batch["mask"]["image_embedding"].all()


def test_cache_of_another_anchor_is_refused(shards):
    build_anchor_cache(str(shards), {"weights": "none", "image_size": 64}, batch_size=16, progress=False)
    anchor = FrozenAnchor(AnchorConfig(**ANCHOR))
    assert not shards_have_anchor_cache(str(shards), anchor.identity)
    loader = build_loader(str(shards), {}, train=False, batch_size=16, num_workers=0, use_anchor_cache=True,
                          anchor_identity=anchor.identity)
    with pytest.raises(AnchorCacheMismatch, match="anchorbind cache"):
        next(iter(loader))


def test_rerun_skips_finished_shards_and_keeps_data(shards):
    before = {p.name: p.stat().st_size for p in shards.glob("*.tar")}
    build_anchor_cache(str(shards), ANCHOR, batch_size=16, progress=False)
    first = {p.name: p.read_bytes() for p in shards.glob("*.tar")}
    assert all(len(first[n]) > before[n] for n in before), "embeddings were added, nothing removed"
    again = build_anchor_cache(str(shards), ANCHOR, batch_size=16, progress=False)
    assert sorted(again.skipped) == sorted(str(p) for p in shards.glob("*.tar")) and not again.written
    assert first == {p.name: p.read_bytes() for p in shards.glob("*.tar")}
    assert not list(shards.glob(".*")), "no temporary files left behind"


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_cache_disjoint_shards(shards):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    config = shards.parent / "cfg.yaml"
    config.write_text(json.dumps({"model": {"anchor": ANCHOR}}))
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "bind.cli", "cache", str(shards), "--config", str(config)]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["process"] for r in reports) == [0, 1]
    assert [r["written"] for r in reports] == [1, 1]
    identity = FrozenAnchor(AnchorConfig(**ANCHOR)).identity
    assert all(shard_cache_identity(p) == identity for p in shards.glob("*.tar"))
