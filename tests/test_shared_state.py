"""State shared by the processes of a run (issue 17, items 3 and 5).

* Training checks at start that every process sees rank 0's ``output_dir`` (a marker with a
  nonce, written by rank 0 and read by every rank after a barrier) and stops every process with
  one message when a node has a folder of its own: two accelerate "nodes" on 127.0.0.1.
* ``anchorbind eval`` under ``accelerate launch`` embeds a share in each process, gathers the
  shares on the main process and writes one ``metrics.json`` over the whole test set, equal to a
  single process's.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from anchorbind.data.shardlist import iter_shard
from anchorbind.errors import ConfigError
from anchorbind.evaluation.extract import EmbeddingSet, embed_share, extract_embeddings, merge_shares
from anchorbind.model import BindModel
from anchorbind.train.rundir import SHARED_MARKER_PREFIX, check_shared_output_dir
from tests.conftest import REPO, free_port, subprocess_env
from tests.train_utils import tiny_config, write_config

LAUNCH = ["accelerate", "launch", "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
# gloo on the CPU whatever the machine: two processes never share one GPU here
CPU_ENV = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _test_samples(world_dir: Path) -> list[str]:
    return [s["__key__"] for shard in sorted((world_dir / "test").glob("*.tar")) for s in iter_shard(shard)]


# ---------------------------------------------------------------------- the marker, in one process
class _OneOfTwo:
    """What check_shared_output_dir reads of an Accelerator: one process of two (collectives are no-ops here)."""

    def __init__(self, rank: int) -> None:
        self.num_processes = 2
        self.process_index = rank
        self.is_main_process = rank == 0
        self.is_local_main_process = True


def test_the_marker_is_read_back_and_removed_and_a_process_that_cannot_see_it_stops(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / f"{SHARED_MARKER_PREFIX}0123").write_text("{}")  # left by a killed start
    check_shared_output_dir(_OneOfTwo(0), out, wait_s=0.5)
    assert list(out.iterdir()) == [], "the main process removes its marker and stale ones"

    # a process whose output_dir never received rank 0's marker (the broadcast is a no-op here)
    start = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        check_shared_output_dir(_OneOfTwo(1), tmp_path / "elsewhere", wait_s=0.5)
    assert time.monotonic() - start < 5
    text = str(caught.value)
    assert text.startswith(f"output_dir {tmp_path / 'elsewhere'} is not shared: rank 1 on host ")
    assert "cannot see the marker rank 0 wrote; put output_dir on storage all nodes mount" in text


# ---------------------------------------------------------------------- two nodes, one folder each
def _node(rank: int, port: int, config: Path, output_dir: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [*LAUNCH, "--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
           "-m", "anchorbind.train", "--config", str(config), "--set", f"output_dir={output_dir}", *extra]
    return subprocess.Popen(cmd, env=subprocess_env(**CPU_ENV), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def two_nodes(config: Path, dirs: tuple[Path, Path], *extra: str, timeout: float) -> list[tuple[int, str]]:
    """Two "nodes" on 127.0.0.1 (one ``accelerate launch --machine_rank R`` each), node R with
    ``output_dir=dirs[R]``: ``[(exit code, output)]`` of both."""
    port = free_port()
    nodes = [_node(rank, port, config, dirs[rank], *extra) for rank in (0, 1)]
    results = []
    try:
        for node in nodes:
            output, _ = node.communicate(timeout=timeout)
            results.append((node.returncode, output))
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.communicate()
    return results


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_with_a_folder_each_stop_with_one_message_and_with_one_folder_train(tmp_path, world_dir):
    cfg = tiny_config(tmp_path / "unused", world_dir / "train", ["steps=2", "checkpoint_every=1", "log_every=1"])
    config = write_config(tmp_path / "config.yaml", cfg)

    node0_dir, node1_dir = tmp_path / "node0" / "run", tmp_path / "node1" / "run"
    start = time.monotonic()
    (code0, out0), (code1, out1) = two_nodes(config, (node0_dir, node1_dir), timeout=300)
    assert time.monotonic() - start < 300
    assert code0 != 0 and code1 != 0, (out0[-3000:], out1[-3000:])
    for output in (out0, out1):
        assert output.count(f"output_dir {node0_dir} is not shared: rank 1 on host ") == 1, output[-3000:]
        assert "cannot see the marker rank 0 wrote; put output_dir on storage all nodes mount" in output
        assert f"(its output_dir: {node1_dir})" in output
        assert f'File "{REPO / "bind"}' not in output, "no traceback through anchorbind (the launcher prints its own)"
    assert "anchorbind train: error: output_dir" in out0, "the main process's CLI prints it"
    assert not (node0_dir / "checkpoints").exists() and not node1_dir.exists(), "stopped before any step"
    assert not list(node0_dir.glob(f"{SHARED_MARKER_PREFIX}*")), "the marker is removed"

    shared = tmp_path / "shared" / "run"
    (code0, out0), (code1, out1) = two_nodes(config, (shared, shared), timeout=600)
    assert code0 == 0 and code1 == 0, (out0[-3000:], out1[-3000:])
    assert "not shared" not in out0 + out1
    summary = json.loads((shared / "train_summary.json").read_text())
    assert summary["step"] == 2 and summary["processes"] == 2
    assert not list(shared.glob(f"{SHARED_MARKER_PREFIX}*"))


# ---------------------------------------------------------------------- shares of a split, merged
@pytest.fixture(scope="module")
def small_model() -> BindModel:
    torch.manual_seed(0)
    return BindModel.from_config({
        "anchor": {"weights": "none", "image_size": 32},
        "modalities": {"text": {}, "audio": {"width": 16, "depth": 1, "num_heads": 1},
                       "depth": {"image_size": 32, "width": 16, "depth": 1, "num_heads": 1}},
    }).eval()


def _assert_same(a: EmbeddingSet, b: EmbeddingSet) -> None:
    assert a.keys == b.keys and a.meta == b.meta and a.modalities == b.modalities
    for m in a.modalities:
        assert torch.equal(a.masks[m], b.masks[m])
        torch.testing.assert_close(a.embeddings[m], b.embeddings[m], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.features[m], b.features[m], atol=1e-5, rtol=1e-4)


def test_shares_of_two_ranks_merge_into_the_single_process_split(small_model, world_dir, monkeypatch):
    test = str(world_dir / "test")
    whole = extract_embeddings(small_model, test, batch_size=5, num_workers=2, progress=False)
    assert whole.keys == _test_samples(world_dir), "shard order, then tar order, whatever the workers"
    _assert_same(whole, extract_embeddings(small_model, test, batch_size=7, num_workers=0, progress=False))

    shares = []
    for rank in (0, 1):  # what the evaluation loader gives each of two processes
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        shares.append(embed_share(small_model, test, batch_size=4, num_workers=1, progress=False))
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert all(share.rows.keys for share in shares) and not set(shares[0].rows.keys) & set(shares[1].rows.keys)
    _assert_same(whole, merge_shares(shares))
    _assert_same(whole, merge_shares(shares[::-1]))  # by shard, not by rank
    _assert_same(whole, merge_shares([*shares, shares[0]]))  # a padded share counts no sample twice


# ---------------------------------------------------------------------- eval under accelerate launch
def _close(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two metrics trees differ (floats within tolerance)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a.keys() ^ b.keys())}"]
        return [d for k in a for d in _close(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _close(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return [] if math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5) else [f"{where}: {a} vs {b}"]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


@pytest.fixture(scope="module")
def eval_runs(world_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A run (untrained tiny model, its config) and a baseline run holding the same model."""
    root = tmp_path_factory.mktemp("eval_runs")
    cfg = tiny_config(root / "run", world_dir / "train")
    torch.manual_seed(0)
    model = BindModel.from_config(cfg["model"])
    for name in ("run", "base"):
        model.save_pretrained(root / name / "model")
        (root / name / "config.yaml").write_text(yaml.safe_dump({**cfg, "output_dir": str(root / name)}))
    return root / "run", root / "base"


@pytest.mark.slow
@pytest.mark.distributed
def test_eval_under_two_processes_writes_one_metrics_over_the_whole_test_set(eval_runs, world_dir):
    run, base = eval_runs
    args = ["eval", str(run), "--shards", str(world_dir / "test"), "--baseline", str(base), "--max-samples", "20"]
    env = subprocess_env(**CPU_ENV)
    one = subprocess.run([sys.executable, "-m", "anchorbind.cli", *args], env=env, cwd=REPO, timeout=900,
                         capture_output=True, text=True)
    assert one.returncode == 0, (one.stdout + one.stderr)[-4000:]
    single = json.loads((run / "metrics.json").read_text())
    single_rows = load_file(str(run / "embeddings_test.safetensors"))
    single_keys = EmbeddingSet.load(run / "embeddings_test.safetensors").keys
    (run / "metrics.json").unlink()

    two = subprocess.run([*LAUNCH, "--num_processes", "2", "--num_machines", "1", "--main_process_port",
                          str(free_port()), "-m", "anchorbind.cli", *args],
                         env=env, cwd=REPO, timeout=900, capture_output=True, text=True)
    output = two.stdout + two.stderr
    assert two.returncode == 0, output[-4000:]
    assert output.count(f"wrote {run / 'metrics.json'}") == 1, "one process writes metrics.json"
    metrics = json.loads((run / "metrics.json").read_text())

    samples = _test_samples(world_dir)
    assert metrics["num_samples"] == single["num_samples"] == len(samples) == 32
    assert EmbeddingSet.load(run / "embeddings_test.safetensors").keys == single_keys == samples
    rows = load_file(str(run / "embeddings_test.safetensors"))
    for name, tensor in single_rows.items():
        torch.testing.assert_close(rows[name], tensor, atol=1e-5, rtol=1e-4)
    assert metrics["retrieval"] and not _close(metrics["retrieval"], single["retrieval"])
    assert metrics["baselines"][str(base)]["retrieval"]
    assert not _close(metrics["baselines"], single["baselines"])
    points = metrics["alignment_across_checkpoints"]["points"]  # the main process reads past its own share
    assert points and not _close(points, single["alignment_across_checkpoints"]["points"])
    timed = {k: v for k, v in metrics.items() if k != "timings_s"}  # wall-clock seconds differ by nature
    assert not _close(timed, {k: v for k, v in single.items() if k != "timings_s"}), _close(timed, single)[:10]
    assert metrics["timings_s"]["embed_baselines"] >= 0 and "embed_baselines" not in single["timings_s"]
