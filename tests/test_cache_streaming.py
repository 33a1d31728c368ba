"""The anchor cache for shards anywhere (issue 17, item 4): sidecars built from URLs, read from
URLs, found by training without being told, and bounded in time when their server stalls."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
import torch

from anchorbind.anchor import AnchorConfig, FrozenAnchor
from anchorbind.config import from_dict
from anchorbind.data.anchor_store import identity_digest, sidecar_url
from anchorbind.data.cache import anchor_cache_status
from anchorbind.data.loader import StreamOptions, build_loader
from anchorbind.train.config import load_train_config
from anchorbind.train.loop import train
from tests.conftest import subprocess_env
from tests.stream_utils import http_server, stalled_server
from tests.train_utils import tiny_config, write_config

TINY_ANCHOR = {"weights": "packaged", "image_size": 96}  # the anchor of tests.train_utils.tiny_config
SPEC = "world-{000000..000002}.tar"


@pytest.fixture(scope="module")
def identity() -> str:
    return FrozenAnchor(from_dict(AnchorConfig, TINY_ANCHOR, where="anchor")).identity


def _cache_cli(*args: str, config) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "anchorbind.cli", "cache", *args, "--anchor-config", str(config),
               "--no-progress", "--workers", "1"]
    return subprocess.run(command, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def served_cache(world_dir, tmp_path_factory):
    """The world's training shards with a sidecar cache built over HTTP by the CLI, copied beside them."""
    root = tmp_path_factory.mktemp("served")
    shards = root / "train"
    shutil.copytree(world_dir / "train", shards)
    config = root / "anchor.yaml"
    config.write_text(json.dumps({"anchor": TINY_ANCHOR}))
    before = sorted(p.name for p in shards.iterdir())
    with http_server(shards) as base:
        refused = _cache_cli(f"{base}/{SPEC}", config=config)
        built = _cache_cli(f"{base}/{SPEC}", "--out", str(root / "built"), config=config)
    assert refused.returncode == 2 and "give --out" in refused.stderr and "Traceback" not in refused.stderr
    assert built.returncode == 0, built.stderr[-2000:]
    summary = json.loads(built.stdout.strip().splitlines()[-1])
    assert summary["written"] == 3 and not summary["failed_shards"]
    assert sorted(p.name for p in shards.iterdir()) == before, "nothing written beside remote shards"
    return root


def test_a_cache_built_from_urls_is_read_from_urls(served_cache, identity):
    shutil.copytree(served_cache / "built", served_cache / "train" / "anchor-cache", dirs_exist_ok=True)
    local = anchor_cache_status(str(served_cache / "train"), identity)
    assert local.complete
    with http_server(served_cache / "train") as base:
        status = anchor_cache_status(f"{base}/{SPEC}", identity)
        assert status.complete, "found beside the served shards without being told"
        assert status.sidecars == [sidecar_url(f"{base}/world-00000{i}.tar", identity) for i in range(3)]
        assert f"{base}/anchor-cache/{identity_digest(identity)}/world-000000.tar" == status.sidecars[0]
        remote = build_loader(f"{base}/{SPEC}", {}, train=False, batch_size=8, num_workers=0,
                              use_anchor_cache=True, anchor_identity=identity, anchor_sidecars=status.sidecars)
        over_http = {k: v for b in remote for k, v in zip(b["__key__"], b["image_embedding"], strict=True)}
    from_disk = build_loader(str(served_cache / "train"), {}, train=False, batch_size=8, num_workers=0,
                             use_anchor_cache=True, anchor_identity=identity, anchor_sidecars=local.sidecars)
    on_disk = {k: v for b in from_disk for k, v in zip(b["__key__"], b["image_embedding"], strict=True)}
    assert len(over_http) == 48 and over_http.keys() == on_disk.keys()
    assert all(torch.equal(over_http[k], on_disk[k]) for k in on_disk)


def test_training_over_http_uses_a_cache_found_elsewhere(served_cache, tmp_path):
    """Shards on one server, the cache in a local folder named by data.anchor_cache: training finds it."""
    with http_server(served_cache / "train") as base:
        cfg = tiny_config(tmp_path / "run", f"{base}/{SPEC}", ["steps=2", "data.anchor=auto", "data.num_workers=0",
                                                               f"data.anchor_cache={served_cache / 'built'}"])
        summary = train(load_train_config(write_config(tmp_path / "cfg.yaml", cfg)))
        assert summary["anchor_source"] == "cache"
        elsewhere = tmp_path / "empty"
        cfg["data"].update(anchor="cache", anchor_cache=str(elsewhere))
        cfg["output_dir"] = str(tmp_path / "b")
        looked = rf"has no anchor cache .*looked under data\.anchor_cache {elsewhere}"
        with pytest.raises(FileNotFoundError, match=looked):
            train(load_train_config(write_config(tmp_path / "cfg2.yaml", cfg)))


def test_a_stalled_cache_server_costs_bounded_time(served_cache, identity):
    with http_server(served_cache / "train") as base, stalled_server() as stalled:
        urls = [f"{base}/world-00000{i}.tar" for i in range(3)]
        sidecars = [sidecar_url(u, identity, stalled) for u in urls]
        loader = build_loader(urls, {}, train=False, batch_size=8, num_workers=0, use_anchor_cache=True,
                              anchor_identity=identity, anchor_sidecars=sidecars,
                              stream=StreamOptions(read_timeout_s=1, retries=1, retry_backoff_s=0.1))
        began = time.monotonic()
        batches = list(loader)
        elapsed = time.monotonic() - began
    assert elapsed < 30, f"a stalled cache server held the loader for {elapsed:.0f} s"
    skipped = [e for b in batches for e in b["errors"] if e["key"] is None]
    assert len(skipped) == 3 and all("its anchor cache" in e["reason"] and "no response for 1 s" in e["reason"]
                                     for e in skipped)
    assert sum(len(b["__key__"]) for b in batches) == 0, "no sample is delivered without its cached vector"


def test_building_from_a_stalled_server_reports_the_shard_and_stops(tmp_path):
    config = tmp_path / "anchor.yaml"
    config.write_text(json.dumps({"anchor": TINY_ANCHOR}))
    with stalled_server() as base:
        began = time.monotonic()
        done = _cache_cli(f"{base}/world-000000.tar", "--out", str(tmp_path / "out"), "--read-timeout-s", "1",
                          "--retries", "1", config=config)
        elapsed = time.monotonic() - began
    assert done.returncode == 1 and elapsed < 120
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["written"] == 0 and len(summary["failed_shards"]) == 1
    assert "no response for 1 s" in summary["failed_shards"][0]["reason"]
    assert not [p for p in (tmp_path / "out").rglob("*.tar*")], "no sidecar, no temporary left"
