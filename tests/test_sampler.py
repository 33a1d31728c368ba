"""The epoch sampler: every sample once per epoch over ranks and workers, equal batch counts with
uneven shards, exact resume mid-epoch, per-sample augmentation seeds (docs/training.md, Data order)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from anchorbind.data.loader import build_loader
from anchorbind.data.sampler import LoaderState, epoch_order, reader_segments
from anchorbind.data.shardlist import shard_sizes
from tests.conftest import REPO, free_port, subprocess_env
from tests.stream_utils import PROCESSORS, RandomProcessor, all_keys, batches_of, write_caption_shards

SIZES = [64] * 16  # base.yaml-like, scaled down: 16 shards of 64 samples


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    return write_caption_shards(tmp_path_factory.mktemp("caps") / "train", SIZES)


def loader_for(shards, rank, world_size, monkeypatch, **kw):
    """A training loader as rank ``rank`` of ``world_size`` would build it (the launcher's env)."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    options = {"train": True, "batch_size": 16, "num_workers": 2, "shuffle_buffer": 40, "seed": 7, **kw}
    return build_loader(shards, PROCESSORS, **options)


# ------------------------------------------------------------------------------------ the split
def test_reader_ranges_split_an_epoch_without_overlap():
    rng = random.Random(0)
    for _ in range(200):
        sizes = [rng.randint(0, 90) for _ in range(rng.randint(1, 12))]
        slots, batch = rng.randint(1, 9), rng.randint(1, 8)
        order = epoch_order(len(sizes), seed=rng.randint(0, 99), epoch=rng.randint(0, 5), sampling="epoch")
        assert sorted(order) == list(range(len(sizes)))
        if sum(sizes) < slots * batch:
            with pytest.raises(ValueError, match="fewer than one batch"):
                reader_segments(order, sizes, slot=0, slots=slots, batch_size=batch)
            continue
        taken, per_reader = Counter(), []
        for slot in range(slots):
            segments = reader_segments(order, sizes, slot=slot, slots=slots, batch_size=batch)
            count = 0
            for seg in segments:
                assert 0 <= seg.start < seg.stop <= sizes[seg.shard] and order[seg.order_index] == seg.shard
                taken.update((seg.shard, i) for i in range(seg.start, seg.stop))
                count += seg.stop - seg.start
            per_reader.append(count)
        assert max(taken.values()) == 1, "a sample read twice in one epoch"
        assert len(set(per_reader)) == 1 and per_reader[0] % batch == 0, "every reader: the same whole batches"
        assert 0 <= sum(sizes) - sum(per_reader) < slots * batch, "at most one global batch left over"


def test_without_counts_whole_shards_are_dealt_round_robin():
    order = epoch_order(10, seed=1, epoch=0, sampling="epoch")
    segments = [reader_segments(order, None, slot=s, slots=4, batch_size=8) for s in range(4)]
    assert all(len(s) == 2 for s in segments), "10 shards, 4 readers: 2 each, 2 left for another epoch"
    dealt = [seg.shard for s in segments for seg in s]
    assert len(set(dealt)) == 8 and all(seg.start == 0 and seg.stop is None for s in segments for seg in s)
    with pytest.raises(ValueError, match="sample counts are unknown"):
        reader_segments(order[:3], None, slot=0, slots=4, batch_size=8)


def test_epoch_orders_are_seeded_and_resampling_draws_with_replacement():
    assert epoch_order(16, seed=3, epoch=0, sampling="epoch") == epoch_order(16, seed=3, epoch=0, sampling="epoch")
    assert epoch_order(16, seed=3, epoch=0, sampling="epoch") != epoch_order(16, seed=3, epoch=1, sampling="epoch")
    drawn = epoch_order(64, seed=3, epoch=0, sampling="resampled")
    assert len(drawn) == 64 and len(set(drawn)) < 64


# ------------------------------------------------------------------------------------ loaders
def _per_epoch(rank_batches: list[list[list[str]]], epochs: int) -> list[list[list[list[str]]]]:
    """``[epoch][rank]`` -> that rank's batches of that epoch (each rank yields equal halves)."""
    out = []
    for e in range(epochs):
        out.append([b[e * len(b) // epochs:(e + 1) * len(b) // epochs] for b in rank_batches])
    return out


def test_two_ranks_two_workers_see_every_sample_once_per_epoch(shards, monkeypatch):
    ranks = [batches_of(loader_for(shards, r, 2, monkeypatch, epochs=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2 * 1024 // (2 * 16), "same batch count on both ranks"
    expected = all_keys(SIZES)
    orders = []
    for epoch in _per_epoch(ranks, 2):
        keys = [k for rank in epoch for batch in rank for k in batch]
        assert sorted(keys) == expected, "every sample exactly once in the epoch"
        for global_batch in zip(*epoch, strict=True):
            merged = [k for b in global_batch for k in b]
            assert len(set(merged)) == len(merged), "a sample twice in one global batch"
        orders.append([k for rank in epoch for batch in rank for k in batch])
    assert orders[0] != orders[1], "each epoch has its own order"


def test_resampling_repeats_samples_within_an_epoch(shards, monkeypatch):
    ranks = [batches_of(loader_for(shards, r, 2, monkeypatch, sampling="resampled", epochs=1)) for r in (0, 1)]
    keys = [k for rank in ranks for batch in rank for k in batch]
    assert len(keys) == 1024 and len(set(keys)) < 0.8 * len(keys)


def test_uneven_shards_give_every_rank_the_same_number_of_batches(tmp_path, monkeypatch):
    sizes = [10, 37, 64, 3, 50, 1, 29]
    paths = write_caption_shards(tmp_path / "uneven", sizes)
    ranks = [batches_of(loader_for(paths, r, 2, monkeypatch, batch_size=8, epochs=3)) for r in (0, 1)]
    per_epoch = 2 * (sum(sizes) // (4 * 8))  # batches per rank and epoch: 2 workers x 6 (194 samples, 4 readers x 8)
    assert len(ranks[0]) == len(ranks[1]) == 3 * per_epoch == 36
    for epoch in _per_epoch(ranks, 3):
        keys = [k for rank in epoch for batch in rank for k in batch]
        assert len(keys) == len(set(keys)), "no sample twice in an epoch"
        assert sum(sizes) - len(keys) < 4 * 8, "at most one global batch (4 readers x 8) left over"
        assert all(len(b) == 8 for rank in epoch for b in rank)


def test_resume_mid_epoch_continues_the_same_sequence(shards, monkeypatch):
    def run(stop_at=None, state=None, **kw):
        loader = loader_for(shards, 1, 2, monkeypatch, state=state, **kw)
        return batches_of(loader, stop_at), loader

    straight, _ = run(80)  # 2.5 epochs of this rank (32 batches per epoch)
    for cut in (1, 7, 45):  # after the first batch; mid-block, odd (the other worker is next); second epoch
        head, loader = run(cut)
        state = json.loads(json.dumps(loader.state_dict()))  # as saved in a checkpoint
        tail, _ = run(80 - cut, state=state)
        assert head + tail == straight, f"resumed after {cut} batches"
    # without workers (decoding in the calling process) as well
    straight0, _ = run(40, num_workers=0)
    head, loader = run(13, num_workers=0)
    tail, _ = run(27, num_workers=0, state=loader.state_dict())
    assert head + tail == straight0


def test_a_state_from_other_settings_is_refused(shards, monkeypatch):
    loader = loader_for(shards, 0, 2, monkeypatch)
    batches_of(loader, 3)
    state = loader.state_dict()
    assert LoaderState.from_dict(state).batches == 3
    with pytest.raises(ValueError, match="batch_size 16 -> 8"):
        loader_for(shards, 0, 2, monkeypatch, batch_size=8, state=state)
    with pytest.raises(ValueError, match="world_size 2 -> 4"):
        loader_for(shards, 0, 4, monkeypatch, state=state)


def test_augmentation_is_seeded_per_sample_whoever_decodes_it(shards, monkeypatch):
    """The same sample draws the same random numbers with 0 or 2 workers and 1 or 2 processes."""
    def draws(world_size, num_workers):
        out = {}
        for rank in range(world_size):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(world_size))
            loader = build_loader(shards, {"caption": PROCESSORS["caption"], "noise": RandomProcessor()}, train=True,
                                  batch_size=16, num_workers=num_workers, shuffle_buffer=40, seed=7, epochs=1)
            for batch in loader:
                out.update(zip(batch["__key__"], batch["noise"], strict=True))
        return out

    single = draws(1, 0)
    assert len(single) == 1024 and len(set(single.values())) == 1024
    assert draws(2, 2) == single


def test_shard_sizes_come_from_the_manifest_else_the_tar_headers(tmp_path):
    with_manifest = write_caption_shards(tmp_path / "a", [5, 7])
    without = write_caption_shards(tmp_path / "b", [5, 7], manifest=False)
    assert shard_sizes(with_manifest) == shard_sizes(without) == [5, 7]
    assert shard_sizes([f"pipe:cat {without[0]}"]) is None


# ------------------------------------------------------------------------------------ training
def test_checkpoints_hold_every_process_loader_position(tmp_path, world_dir):
    from anchorbind.train.config import load_train_config
    from anchorbind.train.loop import train
    from tests.train_utils import tiny_config, write_config

    cfg = tiny_config(tmp_path / "run", world_dir / "train", ["steps=3", "checkpoint_every=2"])
    train(load_train_config(write_config(tmp_path / "cfg.yaml", cfg)))
    for step in (2, 3):
        saved = json.loads((tmp_path / "run" / "checkpoints" / f"step-{step:08d}" / "loader_state.json").read_text())
        assert saved["world_size"] == 1
        (state,) = saved["ranks"]
        assert state["batches"] == step and state["signature"]["sampling"] == "epoch"
        assert len(state["positions"]) == 1  # one worker
    # 48 samples, batch 8: 6 batches per epoch; after 3 the reader is half-way through epoch 0
    assert state["positions"][0]["epoch"] == 0


# ------------------------------------------------------------------------------------ two processes
@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_two_workers_each_sample_once_per_epoch_and_resume(shards, tmp_path):
    """tests/dist_sampler_check.py under accelerate (2 gloo processes x 2 workers, spawn): two
    epochs, every sample exactly once per epoch, no sample twice in a global batch; a loader rebuilt
    from each rank's state after 21 batches continues the same sequence."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(REPO / "tests" / "dist_sampler_check.py"),
               str(Path(shards[0]).parent), str(tmp_path)]
    env = subprocess_env(REPO, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    straight = [r["straight"] for r in ranks]
    assert len(straight[0]) == len(straight[1]) == 64
    for epoch in _per_epoch(straight, 2):
        keys = [k for rank in epoch for batch in rank for k in batch]
        assert sorted(keys) == all_keys(SIZES), "every sample exactly once per epoch over both processes"
        for global_batch in zip(*epoch, strict=True):
            merged = [k for b in global_batch for k in b]
            assert len(set(merged)) == len(merged)
    for rank in ranks:
        assert rank["head"] + rank["tail"] == rank["straight"], "resumed mid-epoch: the same sequence"


def test_training_lowers_the_loader_workers_for_a_small_epoch_and_refuses_one_without_a_batch(tmp_path, caplog):
    """96 samples in batches of 64 give one batch an epoch: one reader, not two (the tiny demo); an
    epoch without one batch per process is one config error, not a sampler traceback."""
    from types import SimpleNamespace

    from anchorbind.errors import ConfigError
    from anchorbind.train.loop import _workers_that_fit

    def cfg(batch: int, workers: int) -> SimpleNamespace:
        return SimpleNamespace(data=SimpleNamespace(batch_size=batch, num_workers=workers,
                                                    train_shards=str(tmp_path / "a-{000000..000002}.tar")))

    one = SimpleNamespace(num_processes=1, is_main_process=True)
    assert _workers_that_fit(cfg(64, 2), [32, 32, 32], one) == 1
    assert "lowered from 2 to 1" in caplog.text
    assert _workers_that_fit(cfg(16, 2), [32, 32, 32], one) == 2
    assert _workers_that_fit(cfg(16, 0), [32, 32, 32], one) == 0
    two = SimpleNamespace(num_processes=2, is_main_process=True)
    with pytest.raises(ConfigError, match="fewer than one for each of the 2 process"):
        _workers_that_fit(cfg(64, 2), [32, 32, 32], two)
    assert _workers_that_fit(cfg(64, 4), None, one) == 3  # counts unknown: one whole shard per reader
