"""The WebDataset loader: round trip, exactly-once evaluation, bad members, other layouts."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from bind.data.loader import build_loader
from bind.data.shardlist import expand_shards
from bind.errors import InputError
from tests.conftest import REPO, free_port
from tests.data_utils import processors


def eval_batches(shards, batch_size=8, num_workers=0, **kw):
    return list(build_loader(str(shards), processors(), train=False, batch_size=batch_size,
                             num_workers=num_workers, **kw))


def test_world_round_trip_gives_identical_tensors(world_dir):
    procs = processors()
    raw = {s["__key__"]: s for s in wds.WebDataset(str(world_dir / "test" / "world-000000.tar"), shardshuffle=False)}
    (batch,) = eval_batches(world_dir / "test" / "world-000000.tar", batch_size=16)
    assert batch["__key__"] == sorted(raw) and not batch["errors"]
    for name, proc in procs.items():
        member = next(k for k in proc.sample_keys if k in raw[batch["__key__"][0]])
        expected = proc.collate([proc.load(raw[k][member]) for k in batch["__key__"]])
        assert batch["mask"][name].all()
        if isinstance(expected, dict):
            for field, value in expected.items():
                torch.testing.assert_close(batch[name][field], value, rtol=0, atol=0)
        else:
            torch.testing.assert_close(batch[name], expected, rtol=0, atol=0)
    assert batch["json"][0]["attributes"]["category"] in raw[batch["__key__"][0]]["txt"].decode()


def test_evaluation_yields_every_sample_once_in_a_fixed_order(world_dir):
    expected = sorted(s["__key__"] for s in wds.WebDataset(expand_shards(str(world_dir / "test")), shardshuffle=False))
    runs = []
    for _ in range(2):
        batches = eval_batches(world_dir / "test", batch_size=5, num_workers=2)
        keys = [k for b in batches for k in b["__key__"]]
        assert sorted(keys) == expected, "every sample exactly once"
        assert any(len(b["__key__"]) < 5 for b in batches), "the final partial batch is kept"
        runs.append(keys)
    assert runs[0] == runs[1]


def test_training_mode_is_infinite_shuffled_and_seeded(world_dir):
    def keys(seed):
        loader = build_loader(str(world_dir / "train"), {"text": processors()["text"]}, train=True, batch_size=8,
                              num_workers=0, shuffle_buffer=16, seed=seed)
        it = iter(loader)
        return [k for _ in range(10) for k in next(it)["__key__"]]

    first = keys(0)
    assert len(first) == 80 > 48, "resampled: more batches than samples"
    assert first == keys(0) and first != keys(1)
    assert all(len(b) == 8 for b in [first[i:i + 8] for i in range(0, 80, 8)])


def _rewrite(src: Path, dst: Path, edit) -> None:
    with wds.TarWriter(str(dst)) as writer:
        for sample in wds.WebDataset(str(src), shardshuffle=False):
            writer.write(edit({k: v for k, v in sample.items() if k not in ("__url__", "__local_path__")}))


def test_corrupt_member_and_truncated_audio_are_skipped_counted_reported(world_dir, tmp_path):
    src = world_dir / "test" / "world-000000.tar"
    keys = [s["__key__"] for s in wds.WebDataset(str(src), shardshuffle=False)]
    bad = {keys[1]: b"not a flac file at all", keys[2]: None}

    def edit(sample):
        if sample["__key__"] in bad:
            sample["flac"] = bad[sample["__key__"]] or sample["flac"][: len(sample["flac"]) // 3]
        return sample

    _rewrite(src, tmp_path / "bad.tar", edit)
    batches = eval_batches(tmp_path / "bad.tar", batch_size=16)
    errors = [e for b in batches for e in b["errors"]]
    assert {(e["key"], e["modality"]) for e in errors} == {(keys[1], "audio"), (keys[2], "audio")}
    assert all(e["url"].endswith("bad.tar") and e["reason"] for e in errors)
    batch = batches[0]
    assert len(batch["__key__"]) == 16, "samples keep their other modalities"
    assert batch["mask"]["audio"].sum() == 14 and batch["mask"]["image"].all()
    with pytest.raises(InputError, match=keys[1]):
        eval_batches(tmp_path / "bad.tar", batch_size=16, handler="raise")


def test_truncated_tar_is_reported(world_dir, tmp_path):
    data = (world_dir / "test" / "world-000000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 + 777])
    batches = eval_batches(tmp_path / "cut.tar", batch_size=32)
    errors = [e for b in batches for e in b["errors"]]
    seen = sum(len(b["__key__"]) for b in batches)
    assert 0 < seen < 16
    assert errors, "the broken tail must be reported, not silently dropped"


def test_img2dataset_layout_is_read(tmp_path):
    """img2dataset writes 00000.tar with keys 000000000.. and jpg + txt + json members."""
    from skimage import data

    image = io.BytesIO()
    Image.fromarray(data.chelsea()).save(image, format="JPEG")
    with wds.TarWriter(str(tmp_path / "00000.tar")) as writer:
        for i in range(3):
            meta = {"url": f"http://example.com/{i}.jpg", "caption": "a cat", "key": f"{i:09d}", "status": "success",
                    "error_message": None, "width": 451, "height": 300, "original_width": 451,
                    "original_height": 300, "exif": "{}", "sha256": "0" * 64}
            writer.write({"__key__": f"{i:09d}", "jpg": image.getvalue(), "txt": "a cat", "json": meta})
    procs = {k: processors()[k] for k in ("image", "text")}
    (batch,) = list(build_loader(str(tmp_path / "00000.tar"), procs, train=False, batch_size=8, num_workers=0))
    assert batch["__key__"] == ["000000000", "000000001", "000000002"]
    assert batch["image"].shape[0] == 3 and batch["text"]["input_ids"].shape[0] == 3
    assert batch["json"][0]["status"] == "success"


def test_shard_specs(world_dir):
    assert expand_shards(str(world_dir / "train")) == sorted(str(p) for p in (world_dir / "train").glob("*.tar"))
    braces = str(world_dir / "train" / "world-{000000..000002}.tar")
    assert expand_shards(braces) == expand_shards(str(world_dir / "train"))
    pipe = f"pipe:cat {world_dir / 'test' / 'world-000000.tar'}"
    (batch,) = list(build_loader(pipe, {"text": processors()["text"]}, train=False, batch_size=64, num_workers=0))
    assert len(batch["__key__"]) == 16
    with pytest.raises(FileNotFoundError, match=r"no \.tar"):
        expand_shards(str(world_dir))  # a directory without shards directly inside


DIST_SCRIPT = """
import json, sys
from accelerate import Accelerator
from bind.data.loader import build_loader
from tests.data_utils import processors
acc = Accelerator(cpu=True)
assert acc.num_processes == 2
loader = build_loader(sys.argv[1], {"text": processors()["text"]}, train=False, batch_size=4, num_workers=1)
keys = [k for b in loader for k in b["__key__"]]
with open(f"{sys.argv[2]}/rank{acc.process_index}.json", "w") as f:
    json.dump(keys, f)
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_evaluation_splits_by_rank_without_duplicates(world_dir, tmp_path):
    script = tmp_path / "keys.py"
    script.write_text(DIST_SCRIPT)
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(script), str(world_dir / "test"), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] and ranks[1] and not set(ranks[0]) & set(ranks[1])
    assert len(ranks[0]) + len(ranks[1]) == 32
