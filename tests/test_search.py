"""``anchorbind index`` and ``anchorbind search`` over an embedding store of real embeddings.

A tiny real model (untrained anchor and depth plugin) embeds a few depth maps into a store; the
index built over it must return a stored item first, with score ~1, when queried with that item's
own input; the approximate types print and store their recall@10; every user mistake is one line.
The main paths run the console script as a user would; the error cases call the same dispatcher
in-process (:func:`anchorbind.cli.main`), which applies the same error convention.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anchorbind import BindModel
from anchorbind.cli import main as cli_main
from anchorbind.embedding_store import EmbeddingStoreWriter
from anchorbind.search import IndexFileError, build_index, load_index
from tests.test_cli_errors import SMALL, anchorbind, assert_one_line_error

N_ITEMS = 40


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A saved model, depth maps, an image, and a store of the depth maps' embeddings (3 parts)."""
    root = tmp_path_factory.mktemp("search")
    torch.manual_seed(0)
    model = BindModel.from_config(SMALL).eval()
    model.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    files = []
    for i in range(N_ITEMS):
        path = root / f"depth{i:02d}.npy"
        np.save(path, rng.uniform(0.5, 5.0, (40, 48)).astype(np.float32))
        files.append(path)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "query.png")
    embeddings = model.embed({"depth": [str(f) for f in files]})["depth"]
    with EmbeddingStoreWriter(root / "store", "depth", model.embed_dim, str(root / "model"), part_size=16) as store:
        store.add([f.name for f in files], embeddings)
    return {"root": root, "model": root / "model", "store": root / "store", "query": files[7],
            "image": root / "query.png"}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli_main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_exact_index_finds_the_query_item_first_from_any_modality(collection, tmp_path, capsys):
    index = tmp_path / "index"
    done = anchorbind("index", str(collection["store"]), "--out", str(index), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"flat index of {N_ITEMS} depth embeddings" in done.stdout
    meta = json.loads((index / "index.json").read_text())
    assert meta["format"] == "anchorbind-index" and meta["type"] == "flat"
    assert meta["modality"] == "depth" and meta["count"] == N_ITEMS and meta["model"] == str(collection["model"])
    assert "recall@10" not in meta  # exact search: nothing to measure
    keys = [json.loads(line) for line in (index / "keys.jsonl").read_text().splitlines()]
    assert keys == [f"depth{i:02d}.npy" for i in range(N_ITEMS)]

    # the model recorded with the index embeds the query; the item's own input comes first
    done = anchorbind("search", str(index), "--depth", str(collection["query"]), "-k", "3", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert [r["rank"] for r in found["results"]] == [1, 2, 3]
    assert found["results"][0]["key"] == collection["query"].name
    assert found["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert found["results"][1]["score"] < 0.999

    # another modality of the model queries the same index (emergent retrieval), in the text form
    code, out, err = cli(capsys, "search", index, "--modality", "image", "--input", collection["image"], "-k", "5",
                         "--model", collection["model"])
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert all(r[2] in keys for r in rows)
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_indexes_measure_and_store_their_recall(collection, tmp_path, capsys, index_type):
    index = tmp_path / index_type
    code, out, err = cli(capsys, "index", collection["store"], "--out", index, "--type", index_type,
                         "--recall-queries", "25")
    assert code == 0, err
    meta = json.loads((index / "index.json").read_text())
    assert meta["type"] == index_type and meta["recall_queries"] == 25
    assert 0.0 <= meta["recall@10"] <= 1.0
    assert f"recall@10 against exact search: {meta['recall@10']:.4f} (on 25 of the store's vectors)" in out
    if index_type == "ivf":
        assert meta["params"]["nlist"] >= 1 and 1 <= meta["params"]["nprobe"] <= meta["params"]["nlist"]
    else:
        assert meta["params"]["m"] == 32 and meta["params"]["ef_search"] == 64

    # probing every list (or a wide beam) is exact: the query item first, score ~1
    loaded = load_index(index)
    loaded.set_search_params(nprobe=meta["params"].get("nlist"), ef_search=N_ITEMS)
    query = BindModel.from_pretrained(collection["model"]).embed({"depth": [str(collection["query"])]})["depth"]
    (key, score), *_ = loaded.search(query.numpy(), k=5)[0]
    assert key == collection["query"].name and score == pytest.approx(1.0, abs=1e-4)


def test_ivf_lists_can_be_chosen_and_are_checked(collection, tmp_path):
    meta = build_index(collection["store"], tmp_path / "ivf", index_type="ivf", nlist=2, nprobe=2, recall_queries=10)
    assert meta["params"] == {"nlist": 2, "nprobe": 2} and meta["recall@10"] == 1.0  # every list probed
    from anchorbind.errors import ConfigError

    with pytest.raises(ConfigError, match="--nlist 400 exceeds the 40 vectors"):
        build_index(collection["store"], tmp_path / "ivf2", index_type="ivf", nlist=400)
    assert not (tmp_path / "ivf2").exists()


def test_index_is_replaced_atomically_and_never_clobbers_other_folders(collection, tmp_path, capsys):
    index = tmp_path / "index"
    assert cli(capsys, "index", collection["store"], "--out", index)[0] == 0
    assert cli(capsys, "index", collection["store"], "--out", index, "--type", "hnsw")[0] == 0  # replaces it
    assert json.loads((index / "index.json").read_text())["type"] == "hnsw"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no temporaries left behind

    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.jpg").write_bytes(b"x")
    code, _, err = cli(capsys, "index", collection["store"], "--out", other)
    assert code == 2 and "not an AnchorBind index" in err and (other / "keep.jpg").exists()


def test_index_and_search_mistakes_are_one_line(collection, tmp_path, capsys):
    index = tmp_path / "index"
    assert cli(capsys, "index", collection["store"], "--out", index)[0] == 0
    cases = [
        # unknown modality, and one the model lacks: usage (2)
        (["search", index, "--modality", "smell", "--input", "x"], 2, ["unknown modality 'smell'"]),
        (["search", index, "--modality", "audio", "--input", "x.wav"], 2, ["'audio' is not part of this model"]),
        (["search", index, "--modality", "depth"], 2, ["--modality needs --input"]),
        (["search", index, "--depth", collection["query"], "-k", "0"], 2, ["-k must be"]),
        # unreadable query, missing model, missing store or index: data (1)
        (["search", index, "--depth", tmp_path / "missing.npy"], 1, ["missing.npy", "unreadable file"]),
        (["search", index, "--depth", collection["query"], "--model", tmp_path / "nowhere"], 1,
         ["nowhere", "no such model folder"]),
        (["search", tmp_path / "noindex", "--depth", collection["query"]], 1, ["noindex", "no such index"]),
        (["search", collection["store"], "--depth", collection["query"]], 1, ["not an AnchorBind index"]),
        (["index", tmp_path / "nostore", "--out", tmp_path / "x"], 1, ["nostore", "no such embedding store"]),
        (["index", collection["store"], "--out", tmp_path / "x", "--m", "0"], 2, ["--m must be"]),
    ]
    for args, code, needles in cases:
        got, _, err = cli(capsys, *args)
        assert_one_line_error(_Done(got, err), code, *needles)

    # an index of another width than the model's
    narrow = tmp_path / "narrow"
    with EmbeddingStoreWriter(narrow, "depth", 8, str(collection["model"])) as store:
        store.add(["a", "b", "c"], np.eye(3, 8, dtype=np.float32))
    build_index(narrow, tmp_path / "narrow_index")
    got, _, err = cli(capsys, "search", tmp_path / "narrow_index", "--depth", collection["query"])
    assert_one_line_error(_Done(got, err), 1, "8-dim depth embeddings", "1280 dims")

    # a damaged faiss file, through the console script
    (index / "index.faiss").write_bytes(b"\x00" * 64)
    done = anchorbind("search", str(index), "--depth", str(collection["query"]), cwd=tmp_path)
    assert_one_line_error(done, 1, "index.faiss", "unreadable faiss index")
    with pytest.raises(IndexFileError, match="unreadable faiss index"):
        load_index(index)


class _Done:
    def __init__(self, returncode: int, stderr: str) -> None:
        self.returncode, self.stderr, self.stdout = returncode, stderr, ""
