"""The trainer end to end on real shards: loss falls, exact resume, 2 processes, anchor sources."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anchorbind.errors import AnchorBindError, ConfigError, exit_code
from anchorbind.train.config import load_train_config
from anchorbind.train.loop import NonFiniteLossError, train
from tests.conftest import REPO, free_port, subprocess_env
from tests.train_utils import tiny_config, write_config


def run_train(tmp_path: Path, world_dir: Path, *overrides: str, **top) -> tuple[dict, Path]:
    cfg = tiny_config(tmp_path / "run", world_dir / "train", list(overrides), **top)
    path = write_config(tmp_path / "cfg.yaml", cfg)
    return train(load_train_config(path)), Path(cfg["output_dir"])


def read_log(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "train_log.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_one_process_binds_three_modalities_and_loss_falls(tmp_path, world_dir):
    summary, run_dir = run_train(tmp_path, world_dir, "steps=24", "checkpoint_every=12")
    rows = read_log(run_dir)
    assert summary["step"] == 24 and summary["processes"] == 1 and summary["anchor_source"] == "live"
    assert summary["parameters"]["trainable"] > 0 and summary["parameters"]["frozen"] > 0
    for name in ("contrastive/text", "contrastive/audio", "contrastive/depth"):
        assert name in rows[0]
    first = sum(float(r["loss"]) for r in rows[:4]) / 4
    last = sum(float(r["loss"]) for r in rows[-4:]) / 4
    assert last < first * 0.9, (first, last)
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000012", "step-00000024"]
    assert any((run_dir / "anchorbind").rglob("events.out.tfevents*")), "no TensorBoard log"


def test_unknown_config_key_is_refused(tmp_path, world_dir):
    with pytest.raises(ConfigError, match="lerning_rate"):
        run_train(tmp_path, world_dir, "optim.lerning_rate=1")
    with pytest.raises(ConfigError, match="bogus"):
        run_train(tmp_path, world_dir, "loss.weights.bogus=1")


def test_direct_pair_adds_a_plugin_plugin_term(tmp_path, world_dir):
    run_train(tmp_path, world_dir, "steps=2", "loss.direct_pairs=[[text, audio]]")
    assert "direct/text-audio" in read_log(tmp_path / "run")[0]


def test_nonfinite_losses_are_skipped_then_stop(tmp_path, world_dir):
    with pytest.raises(NonFiniteLossError, match="consecutive") as stopped:
        run_train(tmp_path, world_dir, "steps=20", "optim.lr=1e30", "optim.grad_clip_norm=null",
                  "optim.warmup_steps=0", "max_nonfinite_steps=2")
    assert isinstance(stopped.value, AnchorBindError) and exit_code(stopped.value) == 1, "one line, exit 1"
    events = [json.loads(line) for line in (tmp_path / "run" / "train_events.jsonl").read_text().splitlines()]
    assert len(events) == 2 and all(e["event"] == "nonfinite_loss" for e in events)


def test_anchor_cache_path(tmp_path, world_dir):
    from anchorbind.data.cache import build_anchor_cache

    shards = tmp_path / "cached"
    shutil.copytree(world_dir / "train", shards)
    with pytest.raises(FileNotFoundError, match="anchorbind cache"):
        run_train(tmp_path, world_dir, "steps=1", f"data.train_shards={shards}", "data.anchor=cache")
    build_anchor_cache(sorted(str(p) for p in shards.glob("*.tar")), {"weights": "packaged", "image_size": 96},
                       batch_size=16)
    summary, _ = run_train(tmp_path, world_dir, "steps=2", f"data.train_shards={shards}", "data.anchor=auto")
    assert summary["anchor_source"] == "cache"


def _train_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "anchorbind.cli", "train", "--config", str(config), *extra]


def _env() -> dict[str, str]:
    return subprocess_env(OMP_NUM_THREADS="1")


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path, world_dir):
    steps = ["steps=8", "checkpoint_every=2"]
    straight = write_config(tmp_path / "a.yaml", tiny_config(tmp_path / "a", world_dir / "train", steps))
    subprocess.run(_train_cmd(straight), check=True, env=_env(), cwd=REPO, timeout=600)

    resumed = write_config(tmp_path / "b.yaml", tiny_config(tmp_path / "b", world_dir / "train", steps))
    proc = subprocess.Popen(_train_cmd(resumed), env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "b" / "checkpoints" / "step-00000002"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "model").exists(), "the run finished before it could be killed"
    assert (tmp_path / "b" / "train.lock").exists(), "the killed run's lock is left behind"
    again = subprocess.run(_train_cmd(resumed, "--resume"), env=_env(), cwd=REPO, timeout=600,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "taking over the stale lock" in again.stderr, "the dead run's lock is taken over, saying so"
    steps = [row["step"] for row in read_log(tmp_path / "b")]
    assert steps == [str(s) for s in range(1, 9)], f"train_log.csv repeats or misses steps: {steps}"

    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_gloo_processes_train_the_demo_modalities(tmp_path, world_dir):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run", world_dir / "train", ["steps=4"]))
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "anchorbind.train", "--config", str(cfg)]
    result = subprocess.run(cmd, env=_env(), cwd=REPO, timeout=900, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["samples"] == 4 * 8 * 2
