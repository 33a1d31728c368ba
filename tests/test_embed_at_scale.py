"""``anchorbind embed`` at scale: folder / manifest / shard inputs into an embedding store.

The store (``anchorbind.embedding_store``) round-trips and refuses damaged or mismatched folders
with one error naming the path; the command gives the same rows as ``BindModel.embed`` on the
same inputs, with the right keys, skips and lists bad inputs (or stops with ``--strict``), and
resumes an interrupted store without duplicates. ``BindModel.embed`` batches long lists.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from anchorbind import BindModel
from anchorbind.embedding_store import (
    EmbeddingStoreError,
    EmbeddingStoreWriter,
    iter_embedding_parts,
    load_embedding_store,
)
from anchorbind.pipelines.embed import manifest_items
from tests.test_cli_errors import anchorbind, assert_one_line_error, save_small_model
from tests.test_cli_errors import run_in_process as run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_small_model(tmp_path_factory.mktemp("scale") / "model")


@pytest.fixture(scope="module")
def model(model_dir: Path) -> BindModel:
    return BindModel.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/``: 5 depth maps (``.depth.npy``, one in a subfolder), 3 PNG images, a stray README."""
    root = tmp_path_factory.mktemp("collection") / "data"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        where = root / "sub" if i == 4 else root
        np.save(where / f"d{i}.depth.npy", rng.uniform(0.5, 5.0, (40, 48)).astype(np.float32))
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    (root / "README").write_text("not an input")
    return root


DEPTH_KEYS = ["d0.depth.npy", "d1.depth.npy", "d2.depth.npy", "d3.depth.npy", "sub/d4.depth.npy"]


def expected(model: BindModel, modality: str, sources: list) -> np.ndarray:
    return model.embed({modality: sources}, batch_size=2)[modality].numpy()


# ---------------------------------------------------------------------- the store
def test_store_round_trips_in_parts_and_iterates_them(tmp_path):
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((7, 4)).astype(np.float32)
    keys = [f"k{i}" for i in range(7)]
    with EmbeddingStoreWriter(tmp_path / "s", "audio", 4, "m", part_size=3) as writer:
        writer.add(keys[:2], torch.from_numpy(rows[:2]))
        writer.add(keys[2:], rows[2:])
        writer.skip("bad.wav", "truncated", key="bad")
    meta = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert meta["format"] == "anchorbind-embeddings" and meta["version"] == 1 and meta["complete"]
    assert [p["count"] for p in meta["parts"]] == [3, 3, 1] and meta["count"] == 7 and meta["dim"] == 4
    assert meta["skipped"] == [{"key": "bad", "input": "bad.wav", "reason": "truncated"}]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(
        ["manifest.json"] + [f"part-00000{i}.{x}" for i in range(3) for x in ("safetensors", "keys.jsonl")])
    store = load_embedding_store(tmp_path / "s")
    assert store.keys == keys and store.embeddings.dtype == np.float32
    np.testing.assert_array_equal(store.embeddings, rows)
    assert (store.modality, store.model, store.dim, store.complete) == ("audio", "m", 4, True)
    parts = list(iter_embedding_parts(tmp_path / "s"))
    assert [k for k, _ in parts] == [keys[:3], keys[3:6], keys[6:]]
    np.testing.assert_array_equal(np.concatenate([e for _, e in parts]), rows)
    with pytest.raises(ValueError, match="already in the embedding store"):
        EmbeddingStoreWriter(tmp_path / "s", "audio", 4, "m").add(["k1"], rows[:1])


def test_store_errors_name_the_path(tmp_path):
    with pytest.raises(EmbeddingStoreError, match="no such embedding store folder"):
        load_embedding_store(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbeddingStoreError, match=r"no manifest\.json"):
        load_embedding_store(tmp_path / "empty")
    with EmbeddingStoreWriter(tmp_path / "s", "depth", 3, "m", part_size=2) as writer:
        writer.add(["a", "b", "c"], np.ones((3, 3), np.float32))
    part = tmp_path / "s" / "part-000001.safetensors"
    good = part.read_bytes()
    part.write_bytes(good[:20])
    with pytest.raises(EmbeddingStoreError, match=r"part-000001\.safetensors: unreadable"):
        load_embedding_store(tmp_path / "s")
    part.write_bytes(good)
    (tmp_path / "s" / "part-000000.keys.jsonl").write_text('"a"\n')
    with pytest.raises(EmbeddingStoreError, match=r"part-000000\.keys\.jsonl: 1 keys for 2 embeddings"):
        load_embedding_store(tmp_path / "s")
    with pytest.raises(EmbeddingStoreError, match="holds depth embeddings"):
        EmbeddingStoreWriter(tmp_path / "s", "audio", 3, "m")
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(EmbeddingStoreError, match=r"manifest\.json: unreadable manifest"):
        load_embedding_store(tmp_path / "s")


def test_writer_without_rows_creates_nothing_until_closed(tmp_path):
    writer = EmbeddingStoreWriter(tmp_path / "s", "depth", 3, "m")
    writer.skip("x", "bad")
    writer.abandon()
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------- inputs
def test_folder_gives_the_rows_of_bindmodel_embed_with_relative_keys(tmp_path, model_dir, model, collection,
                                                                      capsys):
    out = tmp_path / "store"
    done = run(capsys, "embed", str(model_dir), "--modality", "depth", "--folder", str(collection), "--out",
               str(out), "--batch-size", "2", "--part-size", "3", "--num-workers", "1")
    assert done.returncode == 0, done.stderr
    store = load_embedding_store(out)
    assert store.keys == DEPTH_KEYS and store.complete and store.skipped == []
    assert (store.modality, store.model, store.dim) == ("depth", str(model_dir), model.embed_dim)
    np.testing.assert_allclose(store.embeddings, expected(model, "depth", [str(collection / k) for k in DEPTH_KEYS]),
                               rtol=0, atol=1e-6)
    # images through the anchor: PNGs only (not the .depth files, not README)
    done = run(capsys, "embed", str(model_dir), "--modality", "image", "--folder", str(collection), "--out",
               str(tmp_path / "img"), "--batch-size", "2", "--num-workers", "0")
    assert done.returncode == 0, done.stderr
    images = load_embedding_store(tmp_path / "img")
    assert images.keys == ["img0.png", "img1.png", "img2.png"]
    np.testing.assert_allclose(images.embeddings, expected(model, "image", [str(collection / k) for k in images.keys]),
                               rtol=0, atol=1e-6)


def test_manifest_csv_and_jsonl_columns_and_keys(tmp_path, model_dir, model, collection, capsys):
    csv_path = collection.parent / "list.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "depth", "note"])
        writer.writerow(["a", "data/d1.depth.npy", "x"])
        writer.writerow(["b", str(collection / "d3.depth.npy"), "y"])  # an absolute path
    done = run(capsys, "embed", str(model_dir), "--modality", "depth", "--manifest", str(csv_path), "--out",
               str(tmp_path / "csv"), "--num-workers", "0")
    assert done.returncode == 0, done.stderr
    store = load_embedding_store(tmp_path / "csv")
    assert store.keys == ["a", "b"]
    sources = [str(collection / "d1.depth.npy"), str(collection / "d3.depth.npy")]
    np.testing.assert_allclose(store.embeddings, expected(model, "depth", sources), rtol=0, atol=1e-6)
    jsonl = collection.parent / "list.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"file": "data/d0.depth.npy", "id": "x0"},
                                                        {"file": "data/d2.depth.npy", "id": "x2"}]) + "\n")
    done = run(capsys, "embed", str(model_dir), "--modality", "depth", "--manifest", str(jsonl), "--column", "file",
               "--key-column", "id", "--out", str(tmp_path / "j.safetensors"), "--num-workers", "0")
    assert done.returncode == 0, done.stderr
    from safetensors import safe_open

    with safe_open(str(tmp_path / "j.safetensors"), "np") as handle:
        rows, meta = handle.get_tensor("embeddings"), handle.metadata()
    assert json.loads(meta["inputs"]) == ["x0", "x2"]
    np.testing.assert_allclose(
        rows, expected(model, "depth", [str(collection / "d0.depth.npy"), str(collection / "d2.depth.npy")]),
        rtol=0, atol=1e-6)
    done = run(capsys, "embed", str(model_dir), "--modality", "depth", "--manifest", str(jsonl), "--out",
               str(tmp_path / "none"))
    assert_one_line_error(done, 2, "no row has a 'depth' column", "--column")


def test_manifest_text_cells_are_the_text_and_keys_default_to_row_numbers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,key\na red cube,\nthe sound of rain,r\n,e\n")
    job = manifest_items(path, "text", column=None, key_column=None, encodes_text=True)
    assert job.items == [("000000000", "a red cube"), ("r", "the sound of rain")]
    assert [(k, reason) for k, _, reason in job.refused] == [("e", "empty 'text' cell")]


def test_shards_give_the_rows_of_bindmodel_embed_keyed_by_sample(tmp_path, model_dir, model, collection, capsys):
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    for s in range(2):
        with wds.TarWriter(str(shard_dir / f"s-{s:06d}.tar")) as sink:
            for i in range(s * 3, s * 3 + 3):
                sample = {"__key__": f"k{i}"}
                if i < 5:
                    src = collection / DEPTH_KEYS[i]
                    sample["depth.npy"] = src.read_bytes()
                if i == 2:
                    buf = io.BytesIO()
                    Image.new("RGB", (30, 30)).save(buf, format="PNG")
                    sample["png"] = buf.getvalue()
                if i == 5:
                    sample["depth.npy"] = b"broken"
                sink.write(sample)
    done = run(capsys, "embed", str(model_dir), "--modality", "depth", "--shards", str(shard_dir), "--out",
               str(tmp_path / "store"), "--batch-size", "2", "--num-workers", "1")
    assert done.returncode == 0, done.stderr
    store = load_embedding_store(tmp_path / "store")
    assert store.keys == ["k0", "k1", "k2", "k3", "k4"]
    np.testing.assert_allclose(store.embeddings, expected(model, "depth", [str(collection / k) for k in DEPTH_KEYS]),
                               rtol=0, atol=1e-6)
    assert [s["key"] for s in store.skipped] == ["k5"] and "k5" in done.stderr


# ---------------------------------------------------------------------- bad inputs, strict, resume
def test_bad_files_are_skipped_listed_and_the_rest_written(tmp_path, model_dir, model, collection, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("d0.depth.npy", "d1.depth.npy"):
        (folder / name).write_bytes((collection / name).read_bytes())
    (folder / "e_bad.depth.npy").write_bytes((collection / "d2.depth.npy").read_bytes()[:100])
    (folder / "empty.depth.npy").write_bytes(b"")
    out = tmp_path / "store"
    done = anchorbind("embed", str(model_dir), "--modality", "depth", "--folder", str(folder), "--out", str(out),
                      "--batch-size", "3", cwd=tmp_path)  # the console script, default workers
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "skipped 2 unreadable input(s)" in done.stderr
    store = load_embedding_store(out)
    assert store.keys == ["d0.depth.npy", "d1.depth.npy"]
    assert [s["key"] for s in store.skipped] == ["e_bad.depth.npy", "empty.depth.npy"]
    assert all(s["reason"] and s["input"].endswith(s["key"]) for s in store.skipped)
    np.testing.assert_allclose(store.embeddings, expected(model, "depth", [str(folder / k) for k in store.keys]),
                               rtol=0, atol=1e-6)
    strict = tmp_path / "strict"
    done = run(capsys, "embed", str(model_dir), "--modality", "depth", "--folder", str(folder), "--out", str(strict),
               "--batch-size", "1", "--num-workers", "0", "--strict")
    assert_one_line_error(done, 1, "e_bad.depth.npy")
    kept = load_embedding_store(strict)  # the rows before it are kept, for a resume
    assert kept.keys == ["d0.depth.npy", "d1.depth.npy"] and not kept.complete
    done = run(capsys, "embed", str(model_dir), "--modality", "depth", "--folder", str(folder), "--out",
               str(tmp_path / "s.safetensors"), "--strict")
    assert_one_line_error(done, 1, "e_bad.depth.npy")
    assert not (tmp_path / "s.safetensors").exists()


def test_resume_completes_an_interrupted_store_without_duplicates(tmp_path, model_dir, model, collection, capsys):
    out = tmp_path / "store"
    args = ["embed", str(model_dir), "--modality", "depth", "--folder", str(collection), "--out", str(out),
            "--batch-size", "2", "--part-size", "2", "--num-workers", "0"]
    assert run(capsys, *args).returncode == 0
    full = load_embedding_store(out)
    # an interrupted run: the manifest lists one part of three, the later parts' files are left over
    meta = json.loads((out / "manifest.json").read_text())
    meta.update(parts=meta["parts"][:1], count=2, complete=False)
    (out / "manifest.json").write_text(json.dumps(meta))
    (out / "part-000002.keys.jsonl").write_text('"stale"\n')
    first = collection / "d0.depth.npy"
    good = first.read_bytes()
    first.write_bytes(b"unreadable now")  # a done input is not read again
    try:
        done = run(capsys, *args)
    finally:
        first.write_bytes(good)
    assert done.returncode == 0, done.stderr
    assert "2 already there, 3 new" in done.stderr
    resumed = load_embedding_store(out)
    assert resumed.keys == full.keys and resumed.complete and resumed.skipped == []
    np.testing.assert_array_equal(resumed.embeddings, full.embeddings)
    # a complete store: nothing to do; another modality into it: refused
    done = run(capsys, *args)
    assert done.returncode == 0 and "5 already there, 0 new" in done.stderr
    other = run(capsys, "embed", str(model_dir), "--modality", "image", "--folder", str(collection), "--out", str(out))
    assert_one_line_error(other, 1, str(out), "holds depth embeddings")
    assert run(capsys, *args[:-2], "--overwrite").returncode == 0


@pytest.mark.slow
def test_resume_after_killing_the_command(tmp_path, model_dir, collection):
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import subprocess_env

    out = tmp_path / "store"
    script = ("import time, anchorbind.pipelines.embed as r\n"
              "orig = r._LoadBatch.__call__\n"
              "def slow(self, items):\n    time.sleep(0.5)\n    return orig(self, items)\n"
              "r._LoadBatch.__call__ = slow\n"
              "from anchorbind.cli import main\n"
              f"raise SystemExit(main(['embed', {str(model_dir)!r}, '--modality', 'depth', '--folder', "
              f"{str(collection)!r}, '--out', {str(out)!r}, '--batch-size', '1', '--part-size', '1', "
              "'--num-workers', '0']))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env=subprocess_env(), stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out / "part-000001.keys.jsonl").exists():
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1].decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = load_embedding_store(out)
    assert not partial.complete and 1 <= len(partial.keys) < 5
    done = anchorbind("embed", str(model_dir), "--modality", "depth", "--folder", str(collection), "--out", str(out),
                      "--batch-size", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    store = load_embedding_store(out)
    assert sorted(store.keys) == sorted(DEPTH_KEYS) and len(set(store.keys)) == 5 and store.complete


# ---------------------------------------------------------------------- BindModel.embed
def test_bindmodel_embed_batches_long_lists(model, collection):
    sources = [str(collection / k) for k in DEPTH_KEYS]
    whole = model.embed({"depth": sources}, batch_size=2)["depth"]
    assert whole.shape == (5, model.embed_dim) and not whole.requires_grad
    one_by_one = torch.cat([model.embed({"depth": [s]})["depth"] for s in sources])
    torch.testing.assert_close(whole, one_by_one, rtol=0, atol=1e-6)
    assert model.embed({"depth": []})["depth"].shape == (0, model.embed_dim)
