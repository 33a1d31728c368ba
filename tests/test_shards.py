"""Writing shards: the world CLI, and converting users' folders and manifests with bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import soundfile as sf
from PIL import Image

from bind.data.shardlist import iter_shard
from pipelines.shards.convert import convert_to_shards
from tests.conftest import REPO
from tests.data_utils import processors


def run_cli(*args: str, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "bind.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_world_cli_writes_shards_and_manifests(tmp_path):
    done = run_cli("world", "--out", str(tmp_path), "--train", "12", "--test", "5", "--seed", "3",
                   "--shard-size", "5", "--workers", "2")
    assert done.returncode == 0, done.stderr
    train = json.loads((tmp_path / "train" / "manifest.json").read_text())
    assert train["total"] == 12 and [s["samples"] for s in train["shards"]] == [5, 5, 2]
    assert train["keys"]["flac"] == 12 and train["keys"]["depth.png"] == 12 and train["keys"]["png"] == 12
    assert json.loads((tmp_path / "test" / "manifest.json").read_text())["total"] == 5
    assert not list(tmp_path.rglob(".*.writing"))


def _make_user_folder(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / f"s{i}.jpg")
        (root / f"s{i}.txt").write_text(f"sample number {i}")
        sf.write(root / f"s{i}.flac", 0.2 * np.sin(np.arange(16000) / 5), 16000)
        np.save(root / f"s{i}.depth.npy", np.full((20, 20), 1.5, dtype=np.float32))
    (root / "s3.jpg").write_bytes(b"definitely not a jpeg")          # unreadable image
    (root / "s3.txt").write_text("the image of this one is broken")
    sf.write(root / "s4.wav", np.zeros((0,), dtype=np.float32), 16000)  # empty audio
    (root / "s5.xyz").write_text("?")                                 # unknown format


def test_folder_conversion_skips_counts_and_reports_bad_files(tmp_path):
    _make_user_folder(tmp_path / "data")
    report = convert_to_shards(tmp_path / "data", tmp_path / "out", shard_size=2, processors=processors(),
                               progress=False)
    assert report.samples_written == 4 and report.samples_skipped == 1  # s4 had only empty audio
    assert report.modalities == {"image": 3, "text": 4, "audio": 3, "depth": 3}
    reasons = {(r["source"].split("/")[-1], r["reason"]) for r in json.loads(
        (tmp_path / "out" / "report.json").read_text())["skipped"]}
    assert ("s5.xyz", "unknown format") in reasons
    assert any(name == "s3.jpg" for name, _ in reasons) and any(name == "s4.wav" for name, _ in reasons)
    samples = [s for shard in sorted((tmp_path / "out").glob("*.tar")) for s in iter_shard(shard)]
    assert [s["__key__"] for s in samples] == ["s0", "s1", "s2", "s3"]
    assert set(samples[0]) >= {"jpg", "txt", "flac", "depth.npy"} and set(samples[3]) & {"jpg"} == set()


def test_manifest_conversion_and_cli_summary(tmp_path):
    _make_user_folder(tmp_path / "data")
    rows = [
        {"image": "data/s0.jpg", "text": "a caption written inline", "audio": "data/s0.flac"},
        {"depth": "data/s1.depth.npy", "text": "data/s1.txt"},
        {"image": "data/missing.png", "text": "a row whose image is missing"},
        {"audio": "data/s4.wav"},
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    done = run_cli("shards", str(manifest), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "wrote 3 samples" in done.stdout and "skipped 2 files and 1 samples" in done.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {r["reason"] for r in report["skipped"]} >= {"missing file"}
    samples = list(iter_shard(tmp_path / "out" / "data-000000.tar"))
    assert samples[0]["txt"] == b"a caption written inline"
    assert samples[1]["txt"] == b"sample number 1"
