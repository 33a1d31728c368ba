"""``anchorbind embed`` and ``anchorbind eval`` on unreadable inputs and mismatched or damaged models.

embed skips a bad input, reports it and writes the rest (exit 0), or stops at it with ``--strict``
(exit 1, nothing written); with no readable input it exits 1 and writes nothing. eval refuses a
missing or damaged model and shards that do not match the model's plugins: one line, exit 1.

One case of each command runs the console script; the rest call the same dispatcher
(:func:`anchorbind.cli.main`) in-process, which applies the same error convention.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from anchorbind import BindModel
from anchorbind.errors import ModelFileError
from anchorbind.evaluation.evaluate import evaluate_run
from tests.test_cli_errors import anchorbind, assert_one_line_error, save_small_model
from tests.test_cli_errors import run_in_process as run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_small_model(tmp_path_factory.mktemp("run") / "model")


@pytest.fixture()
def depth_inputs(tmp_path: Path) -> dict[str, Path]:
    """Two readable depth maps and four unreadable ones (missing, empty, truncated, not an array)."""
    rng = np.random.default_rng(0)
    files = {}
    for name in ("good1", "good2"):
        files[name] = tmp_path / f"{name}.npy"
        np.save(files[name], rng.uniform(0.5, 5.0, (40, 48)).astype(np.float32))
    files["missing"] = tmp_path / "missing.npy"
    files["empty"] = tmp_path / "empty.npy"
    files["empty"].write_bytes(b"")
    files["truncated"] = tmp_path / "truncated.npy"
    files["truncated"].write_bytes(files["good1"].read_bytes()[:100])
    files["text"] = tmp_path / "text.npy"
    files["text"].write_text("not a depth map")
    return files


def read_output(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    with safe_open(str(path), "pt") as handle:
        return handle.get_tensor("embeddings"), handle.metadata()


# ---------------------------------------------------------------------- embed
def test_embed_skips_unreadable_inputs_reports_them_and_writes_the_rest(tmp_path, model_dir, depth_inputs):
    f = depth_inputs
    order = [f["good1"], f["missing"], f["empty"], f["good2"], f["truncated"], f["text"]]
    out = tmp_path / "out" / "emb.safetensors"
    done = anchorbind("embed", str(model_dir), "--modality", "depth", *map(str, order), "--out", str(out),
                      "--batch-size", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    skipped = [line for line in done.stderr.splitlines() if line.startswith("anchorbind embed: skipped")]
    assert len(skipped) == 4, done.stderr
    for name, line in zip(("missing", "empty", "truncated", "text"), skipped, strict=True):
        assert str(f[name]) in line, line
    assert "skipped 4 unreadable input(s)" in done.stderr and "(2, " in done.stderr
    embeddings, meta = read_output(out)
    assert embeddings.shape[0] == 2
    assert json.loads(meta["inputs"]) == [str(f["good1"]), str(f["good2"])]
    assert json.loads(meta["skipped"]) == [str(f[n]) for n in ("missing", "empty", "truncated", "text")]
    assert sorted(p.name for p in out.parent.iterdir()) == ["emb.safetensors"]  # no temporary file left
    # the same rows as embedding only the readable inputs
    model = BindModel.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        expected = model.embed({"depth": [str(f["good1"]), str(f["good2"])]})["depth"]
    torch.testing.assert_close(embeddings, expected, rtol=1e-5, atol=1e-6)


def test_embed_strict_stops_at_the_first_bad_input_and_writes_nothing(tmp_path, model_dir, depth_inputs, capsys):
    f = depth_inputs
    out = tmp_path / "strict.safetensors"
    done = run(capsys, "embed", str(model_dir), "--modality", "depth", str(f["good1"]), str(f["truncated"]),
               str(f["missing"]), "--out", str(out), "--strict")
    line = assert_one_line_error(done, 1, "anchorbind embed: error:", str(f["truncated"]))
    assert str(f["missing"]) not in line
    assert not out.exists() and list(tmp_path.glob(".strict*")) == []


def test_embed_with_no_readable_input_exits_1_and_keeps_an_existing_output(tmp_path, model_dir, depth_inputs,
                                                                            capsys):
    f = depth_inputs
    out = tmp_path / "previous.safetensors"
    out.write_bytes(b"an earlier result")
    done = run(capsys, "embed", str(model_dir), "--modality", "depth", str(f["missing"]), str(f["empty"]),
               "--out", str(out))
    assert_one_line_error(done, 1, str(f["missing"]), "none of the 2 inputs could be read", "nothing written")
    assert out.read_bytes() == b"an earlier result"


def test_embed_help_documents_skipping_strict_and_the_exit_status(capsys):
    with pytest.raises(SystemExit) as exit_:
        run(capsys, "embed", "--help")
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--strict" in text and "skipped" in text and "the exit status is then 0" in text
    assert "When no input can be read the exit status is 1" in text


def test_embed_with_a_model_whose_config_no_longer_builds_exits_1(tmp_path, model_dir, depth_inputs, capsys):
    broken = tmp_path / "renamed"
    shutil.copytree(model_dir, broken)
    meta = json.loads((broken / "config.json").read_text())
    meta["modalities"] = {"smell": meta["modalities"]["depth"]}
    (broken / "config.json").write_text(json.dumps(meta))
    done = run(capsys, "embed", str(broken), "--modality", "depth", str(depth_inputs["good1"]),
               "--out", str(tmp_path / "e.safetensors"))
    assert_one_line_error(done, 1, str(broken), "cannot be rebuilt", "smell")
    good = str(depth_inputs["good1"])
    done = run(capsys, "embed", str(model_dir), "--modality", "depth", good, "--out", str(tmp_path))
    assert_one_line_error(done, 2, "--out", "is a directory")
    afile = tmp_path / "afile"
    afile.write_text("x")
    done = run(capsys, "embed", str(model_dir), "--modality", "depth", good, "--out", str(afile / "e.safetensors"))
    assert_one_line_error(done, 2, "--out", "is a file, not a directory")
    done = run(capsys, "embed", str(model_dir), "--modality", "depth", good, "--out", str(tmp_path / "e.safetensors"),
               "--batch-size", "0")
    assert_one_line_error(done, 2, "--batch-size must be an integer >= 1, got 0")


# ---------------------------------------------------------------------- eval
def write_shard(path: Path, samples: int, exts: tuple[str, ...]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for i in range(samples):
            for ext in exts:
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = 1
                archive.addfile(info, io.BytesIO(b"x"))
    return path


@pytest.fixture()
def run_dir(tmp_path: Path, model_dir: Path) -> Path:
    """A training run folder holding only the saved depth model."""
    shutil.copytree(model_dir, tmp_path / "run" / "model")
    return tmp_path / "run"


def test_eval_without_a_model_exits_1(tmp_path):
    shards = write_shard(tmp_path / "test" / "t-000000.tar", 2, ("png", "depth.npy"))
    done = anchorbind("eval", str(tmp_path / "empty_run"), "--shards", str(shards), cwd=tmp_path)
    assert_one_line_error(done, 1, "empty_run", "no trained model")


def test_eval_with_a_damaged_model_exits_1(tmp_path, run_dir, capsys):
    shards = write_shard(tmp_path / "test" / "t-000000.tar", 2, ("png", "depth.npy"))
    meta_path = run_dir / "model" / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["modalities"]["depth"]["widht"] = 3
    meta_path.write_text(json.dumps(meta))
    done = run(capsys, "eval", str(run_dir), "--shards", str(shards))
    assert_one_line_error(done, 1, "cannot be rebuilt", "widht")
    (run_dir / "model" / "config.json").write_text("{not json")
    done = run(capsys, "eval", str(run_dir), "--shards", str(shards))
    assert_one_line_error(done, 1, "config.json", "unreadable config")


def test_eval_with_an_unreadable_run_config_raises_model_file_error(tmp_path, run_dir):
    shards = write_shard(tmp_path / "test" / "t-000000.tar", 2, ("png", "depth.npy"))
    (run_dir / "config.yaml").write_text("loss: [1, 2\n")
    with pytest.raises(ModelFileError, match=r"config\.yaml: unreadable run config"):
        evaluate_run(run_dir, str(shards))


def test_eval_with_shards_that_do_not_match_the_models_plugins_exits_1(tmp_path, run_dir, capsys):
    extra = write_shard(tmp_path / "extra" / "t-000000.tar", 3, ("png", "depth.npy", "txt"))
    done = run(capsys, "eval", str(run_dir), "--shards", str(extra))
    assert_one_line_error(done, 1, "text (3 samples)", "no plugin for", "--ignore-modality text")
    images_only = write_shard(tmp_path / "images" / "t-000000.tar", 3, ("png",))
    done = run(capsys, "eval", str(run_dir), "--shards", str(images_only))
    assert_one_line_error(done, 1, "carry none of the modalities", "depth", "image (3 samples)")
    done = run(capsys, "eval", str(run_dir), "--shards", str(tmp_path / "nowhere"))
    assert_one_line_error(done, 1, "nowhere")
