"""Writing shards: the world CLI and writer, and converting users' folders and manifests with bad files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from anchorbind.data.shardlist import iter_shard
from anchorbind.evaluation.shard_check import member_readers
from anchorbind.pipelines.shards import cli as shards_cli
from anchorbind.pipelines.shards.convert import classify_file, convert_to_shards
from anchorbind.pipelines.shards.world import write_world_shards
from anchorbind.pipelines.shards.writer import PlanMismatchError
from anchorbind.pipelines.world import WorldConfig
from tests.conftest import REPO, subprocess_env
from tests.data_utils import processors

TINY_WORLD = WorldConfig(image_size=32, supersample=1)


def run_cli(*args: str):
    env = subprocess_env()
    return subprocess.run([sys.executable, "-m", "anchorbind.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def shard_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


# ------------------------------------------------------------------------------ the world
@pytest.mark.slow
def test_world_cli_writes_shards_and_manifests_identical_for_any_worker_count(tmp_path):
    done = run_cli("world", "--out", str(tmp_path / "a"), "--train", "12", "--test", "5", "--seed", "3",
                   "--shard-size", "5", "--workers", "2", "--image-size", "32")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["train"] == {
        "shards": 3, "samples": 12, "dir": str(tmp_path / "a" / "train")}
    train = json.loads((tmp_path / "a" / "train" / "manifest.json").read_text())
    assert train["total"] == 12 and [s["samples"] for s in train["shards"]] == [5, 5, 2]
    assert [s["name"] for s in train["shards"]] == ["world-000000.tar", "world-000001.tar", "world-000002.tar"]
    assert train["modalities"] == {"audio": 12, "depth": 12, "image": 12, "text": 12}
    assert train["shards"][2]["modalities"] == {"audio": 2, "depth": 2, "image": 2, "text": 2}
    assert train["keys"] == {"depth.png": 12, "flac": 12, "json": 12, "png": 12, "txt": 12}
    assert train["plan"]["seed"] == 3 and train["plan"]["world"]["image_size"] == 32
    assert train["created_by"] == "anchorbind world"
    assert json.loads((tmp_path / "a" / "test" / "manifest.json").read_text())["total"] == 5
    assert not [p for p in tmp_path.rglob("*") if "writing" in p.name]
    write_world_shards(tmp_path / "b", train=12, test=5, seed=3, shard_size=5, workers=1,
                       world_cfg=WorldConfig(image_size=32))
    for split in ("train", "test"):
        assert shard_bytes(tmp_path / "a" / split) == shard_bytes(tmp_path / "b" / split), "byte-identical shards"


def test_world_resumes_and_refuses_other_settings(tmp_path):
    manifests = write_world_shards(tmp_path, train=5, test=0, seed=1, shard_size=2, world_cfg=TINY_WORLD)
    assert manifests["test"]["total"] == 0 and manifests["train"]["total"] == 5
    complete = shard_bytes(tmp_path / "train")
    (tmp_path / "train" / "world-000001.tar").unlink()  # as if the run had stopped there
    write_world_shards(tmp_path, train=5, test=0, seed=1, shard_size=2, world_cfg=TINY_WORLD)
    assert shard_bytes(tmp_path / "train") == complete
    with pytest.raises(PlanMismatchError, match="seed: 1 there, 2 now"):
        write_world_shards(tmp_path, train=5, test=0, seed=2, shard_size=2, world_cfg=TINY_WORLD)
    done = run_cli("world", "--out", str(tmp_path), "--train", "5", "--test", "0", "--shard-size", "3")
    assert done.returncode == 2 and "other settings" in done.stderr
    assert shard_bytes(tmp_path / "train") == complete, "a refused run changes nothing"


# ------------------------------------------------------------------------------ users' data
def test_file_naming_rules():
    keys = {m: tuple(k.lower() for k in ks) for m, ks in member_readers().items()}
    assert classify_file("0001.jpg", keys) == ("0001", "image", "jpg")
    assert classify_file("0001.JPEG", keys) == ("0001", "image", "jpeg")
    assert classify_file("0001.png", keys) == ("0001", "image", "png")
    assert classify_file("0001_depth.png", keys) == ("0001", "depth", "depth.png")
    assert classify_file("0001.depth.png", keys) == ("0001", "depth", "depth.png")
    assert classify_file("0001.npy", keys) == "ambiguous format (.npy could be ['depth', 'imu'])"  # say which
    assert classify_file("0001.tif", keys) == ("0001", "thermal", "thermal.tif")  # the extension alone
    assert classify_file("0001_depth.npy", keys) == ("0001", "depth", "depth.npy")
    assert classify_file("0001.txt", keys) == ("0001", "text", "txt")
    assert classify_file("0001.wav", keys) == ("0001", "audio", "wav")
    assert classify_file("my_image.jpg", keys) == ("my_image", "image", "jpg"), "a suffix saying what it is anyway"
    assert classify_file("0001.xyz", keys) == "unknown format (.xyz)"
    assert classify_file("README", keys) == "unknown format (no extension)"


def _make_user_folder(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / f"s{i}.jpg")
        (root / f"s{i}.txt").write_text(f"sample number {i}")
        sf.write(root / f"s{i}.flac", 0.2 * np.sin(np.arange(16000) / 5), 16000)
    np.save(root / "s0.depth.npy", np.full((20, 20), 1.5, dtype=np.float32))
    np.save(root / "s1_depth.npy", np.full((20, 20), 2.5, dtype=np.float32))
    Image.fromarray(np.full((20, 20), 3000, dtype=np.uint16)).save(root / "s2_depth.png")
    (root / "s3.jpg").write_bytes(b"definitely not a jpeg")             # unreadable image
    (root / "s3.txt").write_text("the image of this one is broken")
    sf.write(root / "s4.wav", np.zeros((0,), dtype=np.float32), 16000)  # empty audio
    (root / "s5.xyz").write_text("?")                                    # unknown format
    (root / "sub").mkdir()
    (root / "sub" / "s6.txt").write_text("in a subfolder")
    (root / ".hidden.txt").write_text("ignored")


def test_folder_conversion_skips_counts_and_reports_bad_files(tmp_path):
    _make_user_folder(tmp_path / "data")
    report = convert_to_shards(tmp_path / "data", tmp_path / "out", shard_size=2, processors=processors(),
                               progress=False)
    assert report.samples_written == 5 and report.samples_skipped == 1  # s4 had only empty audio
    assert report.files_skipped == 3
    assert report.modalities == {"image": 3, "text": 5, "audio": 3, "depth": 3}
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    reasons = {(r["source"].split("/")[-1], r["reason"]) for r in saved["skipped"]}
    assert ("s5.xyz", "unknown format (.xyz)") in reasons
    assert ("s3.jpg", "not an image (no known image format)") in reasons or any(n == "s3.jpg" for n, _ in reasons)
    assert any(name == "s4.wav" and "empty" in reason for name, reason in reasons)
    assert ("s4", "no valid file") in reasons
    assert saved["samples_written"] == 5 and saved["files_skipped"] == 3
    samples = [s for shard in sorted((tmp_path / "out").glob("*.tar")) for s in iter_shard(shard)]
    assert [s["__key__"] for s in samples] == ["s0", "s1", "s2", "s3", "sub_s6"]
    assert set(samples[0]) >= {"jpg", "txt", "flac", "depth.npy"} and "depth.npy" in samples[1]
    assert "depth.png" in samples[2] and "jpg" in samples[2], "s2_depth.png is the depth of s2"
    assert "jpg" not in samples[3]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["total"] == 5 and manifest["modalities"] == report.modalities
    assert len(manifest["shards"]) == 3 and not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_to_shards(tmp_path / "data", tmp_path / "out", processors=processors(), progress=False)


@pytest.mark.slow
def test_parallel_conversion_writes_the_same_shards(tmp_path):
    _make_user_folder(tmp_path / "data")
    serial = convert_to_shards(tmp_path / "data", tmp_path / "one", shard_size=2, processors=processors(),
                               progress=False)
    parallel = convert_to_shards(tmp_path / "data", tmp_path / "two", shard_size=2, workers=2, progress=False)
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")
    assert parallel.skipped == serial.skipped and parallel.modalities == serial.modalities


def test_manifest_conversion_and_cli_summary(tmp_path):
    _make_user_folder(tmp_path / "data")
    rows = [
        {"image": "data/s0.jpg", "text": "a caption written inline", "audio": "data/s0.flac", "label": "cat"},
        {"depth": "data/s1_depth.npy", "text": "data/s1.txt", "key": "custom"},
        {"image": "data/missing.png", "text": "a row whose image is missing"},
        {"audio": "data/s4.wav"},
        {"text": "data/missing.txt"},
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    done = run_cli("shards", str(manifest), "--out", str(tmp_path / "out"), "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert "wrote 3 samples in 1 shards (audio: 1, depth: 1, image: 1, text: 3)" in done.stdout
    assert "skipped 3 files and 2 samples" in done.stdout and "report.json" in done.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {(r["key"], r["modality"], r["reason"]) for r in report["skipped"]} >= {
        ("000000002", "image", "missing file"), ("000000004", "text", "missing file")}
    samples = list(iter_shard(tmp_path / "out" / "data-000000.tar"))
    assert [s["__key__"] for s in samples] == ["000000000", "custom", "000000002"]
    assert samples[0]["txt"] == b"a caption written inline"
    assert json.loads(samples[0]["json"]) == {"attributes": {"label": "cat"}}, "other columns are attributes"
    assert samples[1]["txt"] == b"sample number 1" and "depth.npy" in samples[1]


def test_cli_exits_non_zero_only_when_nothing_is_written(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    assert shards_cli.main([str(tmp_path / "bad"), "--out", str(tmp_path / "out"), "--workers", "1"]) == 1
    assert "wrote 0 samples" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "report.json").read_text())["files_skipped"] == 1
    assert shards_cli.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err
