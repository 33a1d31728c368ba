"""Training under faults: resume edge cases, one run per output directory, decode errors named,
distributed hygiene (docs/reliability.md, section Training)."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anchorbind.errors import ConfigError, run_command
from anchorbind.model import BindModel
from anchorbind.train.config import load_train_config
from anchorbind.train.loop import main, train
from anchorbind.train.rundir import LOCK_NAME, RunLock, config_differences
from tests.conftest import REPO, free_port, subprocess_env
from tests.train_utils import TINY_MODALITIES, tiny_config, write_config

CORRUPT_PER_SHARD = 2


def rewrite_shards(src: Path, dst: Path, *, drop_depth: bool) -> Path:
    """Copies of ``src``'s shards with the audio of the first samples of each shard made undecodable
    (and, with ``drop_depth``, no depth member at all)."""
    dst.mkdir(parents=True)
    for tar in sorted(src.glob("*.tar")):
        corrupted = 0
        with tarfile.open(tar) as fin, tarfile.open(dst / tar.name, "w") as fout:
            for member in fin.getmembers():
                data = fin.extractfile(member).read()
                if drop_depth and member.name.endswith(".depth.png"):
                    continue
                if member.name.endswith(".flac") and corrupted < CORRUPT_PER_SHARD:
                    data, corrupted = b"this is not audio", corrupted + 1
                info = tarfile.TarInfo(member.name)
                info.size = len(data)
                fout.addfile(info, io.BytesIO(data))
    return dst


@pytest.fixture(scope="module")
def corrupt_shards(world_dir, tmp_path_factory) -> Path:
    return rewrite_shards(world_dir / "train", tmp_path_factory.mktemp("corrupt") / "train", drop_depth=False)


def make_config(tmp_path: Path, shards: Path, *overrides: str) -> Path:
    cfg = tiny_config(tmp_path / "run", shards, ["steps=4", "checkpoint_every=2", *overrides])
    return write_config(tmp_path / "cfg.yaml", cfg)


def read_log(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "train_log.csv").open() as handle:
        return list(csv.DictReader(handle))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(str(a)), load_file(str(b))
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


# ---------------------------------------------------------------------- output_dir, before any model
def test_output_dir_that_is_a_file_is_one_config_error_line(tmp_path, world_dir, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    config = write_config(tmp_path / "cfg.yaml", tiny_config(taken, world_dir / "train"))
    with pytest.raises(ConfigError, match="file, not a directory"):
        train(load_train_config(config))
    assert run_command("anchorbind train", main, ["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "file, not a directory" in err[0] and "Traceback" not in err[0]


def test_a_directory_in_use_by_a_live_run_is_refused(tmp_path, world_dir, monkeypatch):
    config = load_train_config(write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run", world_dir / "train")))
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(BindModel, "from_config", lambda *a, **k: pytest.fail("a model was built"))
    with RunLock.acquire(tmp_path / "run"):  # another run holds it (flock: a second open conflicts)
        with pytest.raises(ConfigError, match=rf"in use by another training run \(pid {os.getpid()} on host"):
            train(config)
        with pytest.raises(ConfigError, match="in use"):
            train(config, resume=True)
    assert not (tmp_path / "run" / LOCK_NAME).exists(), "release() removes the lock file"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []


def test_resume_and_overwrite_exclude_each_other(tmp_path, world_dir):
    config = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run", world_dir / "train"))
    with pytest.raises(ConfigError, match="exclude each other"):
        train(load_train_config(config), resume=True, overwrite=True)
    with pytest.raises(SystemExit):
        main(["--config", str(config), "--resume", "--overwrite"])


def test_config_differences_ignore_steps_and_cosmetic_keys(tmp_path, world_dir):
    base = tiny_config(tmp_path / "run", world_dir / "train")
    changed = tiny_config(tmp_path / "elsewhere" / ".." / "run", world_dir / "train",
                          ["steps=99", "log_every=5", "keep_checkpoints=1", "data.eval_shards=x"])
    assert config_differences(base, changed) == []
    spelled_out = tiny_config(tmp_path / "run", world_dir / "train", ["model.modalities.audio.patch_size=16"])
    assert config_differences(base, spelled_out) == [], "a plugin default written out is no difference"
    other = tiny_config(tmp_path / "run", world_dir / "train", ["seed=1", "optim.lr=0.1", "checkpoint_every=3"])
    assert [d.split(" ")[0] for d in config_differences(base, other)] == ["checkpoint_every", "optim.lr", "seed"]


# ---------------------------------------------------------------------- resume: finish, no-op, logs
@pytest.mark.slow
def test_resume_finishes_a_killed_run_then_is_a_noop(tmp_path, corrupt_shards, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="anchorbind.train")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    config = load_train_config(make_config(tmp_path, corrupt_shards))
    summary = train(config)
    assert "taking over the stale lock" in caplog.text, "a lock left by a dead process is taken over, saying so"
    assert not (run / LOCK_NAME).exists()
    reference = tmp_path / "reference.safetensors"
    shutil.copy(run / "model" / "model.safetensors", reference)
    rows = read_log(run)
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]

    # checkpoints: the trainable part and the optimiser, not the frozen anchor and backbones
    ckpt = run / "checkpoints" / "step-00000004"
    assert not (ckpt / "model.safetensors").exists(), "accelerate's whole-model file is not written"
    weights = (ckpt / "bind_model" / "model.safetensors").stat().st_size
    total = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    assert total < 4 * weights, (total, weights)

    # decode errors: counted in the summary and named (shard, key, reason) in decode_errors.json
    errors = json.loads((run / "decode_errors.json").read_text())
    assert summary["decode_errors"] == errors["count"] > 0
    assert errors["by_modality"] == {"audio": errors["count"]}
    assert len(errors["examples"]) == errors["count"]
    for example in errors["examples"]:
        assert Path(example["shard"]).parent == corrupt_shards and example["key"].startswith("train")
        assert example["modality"] == "audio" and example["reason"]
    assert int(float(rows[-1]["decode_errors"])) == errors["count"]

    # killed between the final checkpoint and the model write: --resume writes the model
    shutil.rmtree(run / "model")
    (run / "train_summary.json").unlink()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    again = train(config, resume=True)
    assert_same_weights(reference, run / "model" / "model.safetensors")
    assert again["step"] == 4 and again["decode_errors"] == errors["count"]
    assert again["final_loss"] == summary["final_loss"]

    # killed after step 3 was logged: the log restarts after the checkpoint, without repeating a step
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    shutil.rmtree(run / "model")
    (run / "train_summary.json").unlink()
    train(config, resume=True)
    assert_same_weights(reference, run / "model" / "model.safetensors")
    untimed = [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]
    assert [{k: v for k, v in r.items() if k != "samples_per_s"} for r in read_log(run)] == untimed, \
        "the resumed log equals the uninterrupted one, each step once"
    assert json.loads((run / "decode_errors.json").read_text())["count"] == errors["count"]

    # a finished run: --resume does nothing (no model is built) and says so once
    caplog.clear()
    monkeypatch.setattr(BindModel, "from_config", lambda *a, **k: pytest.fail("a model was built"))
    assert train(config, resume=True)["step"] == 4
    assert caplog.text.count("already finished") == 1


def test_one_run_per_output_dir(tmp_path, world_dir, monkeypatch, capsys):
    config_path = make_config(tmp_path, world_dir / "train", "steps=2")
    run = tmp_path / "run"
    train(load_train_config(config_path))
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    capsys.readouterr()

    with monkeypatch.context() as patched:
        patched.setattr(BindModel, "from_config", lambda *a, **k: pytest.fail("a model was built"))
        # a fresh start over an existing run: refused, one line, exit 2, nothing touched
        assert run_command("anchorbind train", main, ["--config", str(config_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "already holds a run" in err[0] and "--resume" in err[0] and "--overwrite" in err[0]
        # --resume with a config that differs: refused, naming the keys
        with pytest.raises(ConfigError, match=r"in optim\.lr \(0\.002 -> 0\.5\); seed \(0 -> 7\); only steps"):
            train(load_train_config(config_path, ["seed=7", "optim.lr=0.5"]), resume=True)
        # steps below a step already reached
        with pytest.raises(ConfigError, match="already at step 2"):
            train(load_train_config(config_path, ["steps=1"]), resume=True)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before

    # --resume with more steps continues the same run
    summary = train(load_train_config(config_path, ["steps=3"]), resume=True)
    assert summary["step"] == 3 and [r["step"] for r in read_log(run)] == ["1", "2", "3"]

    # --overwrite clears the previous run's files first
    (run / "notes.txt").write_text("mine")
    train(load_train_config(config_path, ["checkpoint_every=1", "steps=1"]), overwrite=True)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]
    assert [r["step"] for r in read_log(run)] == ["1"]
    assert (run / "notes.txt").read_text() == "mine", "only the trainer's own files are removed"


# ---------------------------------------------------------------------- the model
def test_embed_runs_in_inference_mode():
    from anchorbind.modalities.depth import DepthPlugin

    model = BindModel.from_config({"anchor": {"weights": "none", "image_size": 96},
                                   "modalities": {"depth": TINY_MODALITIES["depth"]}})
    out = model.embed({"depth": DepthPlugin.example_inputs()})["depth"]
    assert not out.requires_grad and out.grad_fn is None and torch.is_inference(out)


# ---------------------------------------------------------------------- two processes
def _launch(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "anchorbind.train", "--config", str(config), *extra]
    return subprocess.run(cmd, env=subprocess_env(OMP_NUM_THREADS="1"), cwd=REPO, timeout=900,
                          capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_quiet_secondary_rank_no_unused_parameters_and_resume(tmp_path, world_dir):
    """A modality missing from every batch (depth, allowed by data.missing_modalities) without
    find_unused_parameters; decode errors gathered from both ranks; --resume on the finished run
    and a refused fresh start, once each."""
    from accelerate.utils import set_seed

    shards = rewrite_shards(world_dir / "train", tmp_path / "shards", drop_depth=True)
    config = make_config(tmp_path, shards, "steps=2", "data.missing_modalities=[depth]")
    result = _launch(config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "find_unused_parameters" not in output
    assert output.count("INFO anchorbind.anchor: anchor weights") == 1, "info lines from the main process only"
    assert output.count("parameters: ") == 1
    assert output.count("not training depth: no training sample carries it") == 1, "said once, by the main process"
    run = tmp_path / "run"
    summary = json.loads((run / "train_summary.json").read_text())
    errors = json.loads((run / "decode_errors.json").read_text())
    assert summary["processes"] == 2 and summary["decode_errors"] == errors["count"] > 0
    assert len({e["shard"] for e in errors["examples"]}) > 1

    # the depth plugin saw no sample: it is left exactly as initialised (no decay, no momentum)
    set_seed(0)
    initial = BindModel.from_config(load_train_config(config).model).persistent_state_dict()
    final = load_file(str(run / "model" / "model.safetensors"))
    depth = [k for k in initial if k.startswith("plugins.depth.")]
    assert depth and all(torch.equal(initial[k], final[k]) for k in depth)
    assert any(not torch.equal(initial[k], final[k]) for k in initial if k.startswith("plugins.audio."))

    finished = _launch(config, "--resume")
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output[-4000:]
    assert output.count("already finished") == 1 and "UnboundLocalError" not in output

    refused = _launch(config)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert output.count("anchorbind train: error: output_dir") == 1 and "already holds a run" in output
