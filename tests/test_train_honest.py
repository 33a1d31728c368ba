"""Honest training output (issue 15, item 2): a plugin without data is named, not trained and not
logged as a loss of 0; a cache built for another anchor is reported (docs/reliability.md, Training)."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from accelerate.utils import set_seed
from PIL import Image
from safetensors.torch import load_file

from anchorbind.anchor import AnchorConfig, FrozenAnchor
from anchorbind.data.cache import main as cache_main
from anchorbind.data.inventory import data_modalities
from anchorbind.errors import ConfigError, run_command
from anchorbind.image_processor import IMAGE_SAMPLE_KEYS
from anchorbind.model import BindModel
from anchorbind.registry import get_plugin_class
from anchorbind.train.config import load_train_config
from anchorbind.train.data_check import resolve_anchor_source
from anchorbind.train.loop import main
from tests.train_utils import TINY_MODALITIES, tiny_config, write_config

TRAIN = "anchorbind train"
READERS = {"image": IMAGE_SAMPLE_KEYS, **{n: get_plugin_class(n).sample_keys for n in ("text", "audio", "depth")}}


def rewrite(src: Path, dst: Path, keep: Callable[[int, str], bool]) -> Path:
    """Copies of ``src``'s shards (no manifest) keeping the members for which ``keep(index of the
    sample in its shard, extension)`` is true."""
    dst.mkdir(parents=True)
    for tar in sorted(src.glob("*.tar")):
        keys: list[str] = []
        with tarfile.open(tar) as fin, tarfile.open(dst / tar.name, "w") as fout:
            for member in fin.getmembers():
                key, ext = member.name.split(".", 1)
                if key not in keys:
                    keys.append(key)
                if keep(len(keys) - 1, ext):
                    fout.addfile(member, io.BytesIO(fin.extractfile(member).read()))
    return dst


@pytest.fixture(scope="module")
def image_text_shards(tmp_path_factory) -> Path:
    """16 photos with captions, converted by `anchorbind shards` (2 shards and a manifest)."""
    from anchorbind.pipelines.shards.convert import convert_to_shards

    root = tmp_path_factory.mktemp("image_text")
    rng = np.random.default_rng(0)
    (root / "src").mkdir()
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / "src" / f"{i:04d}.png")
        (root / "src" / f"{i:04d}.txt").write_text(f"photo number {i}")
    report = convert_to_shards(root / "src", root / "shards", shard_size=8, progress=False)
    assert report.modalities == {"image": 16, "text": 16}
    return root / "shards"


def make_config(tmp_path: Path, shards: Path, modalities: tuple[str, ...], *overrides: str) -> Path:
    cfg = tiny_config(tmp_path / "run", shards, ["steps=2", "checkpoint_every=2", *overrides])
    cfg["model"]["modalities"] = {name: TINY_MODALITIES[name] for name in modalities}
    return write_config(tmp_path / "cfg.yaml", cfg)


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"{TRAIN}: error")]


def read_log(run: Path) -> list[dict[str, str]]:
    with (run / "train_log.csv").open() as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- which modalities the data has
def test_data_modalities_reads_the_manifest_else_looks_ahead_a_bounded_number_of_samples(world_dir, tmp_path):
    manifest = data_modalities(world_dir / "train", READERS)
    assert manifest.source == "manifest" and manifest.complete and manifest.samples == 48
    assert manifest.counts == {"image": 48, "text": 48, "audio": 48, "depth": 48} and not manifest.missing()

    bare = rewrite(world_dir / "train", tmp_path / "bare", lambda i, ext: True)  # no manifest.json
    found = data_modalities(bare, READERS)
    assert found.source == "lookahead" and found.samples == 1, "stops at the first sample that has them all"

    absent = {**READERS, "thermal": ("tif",)}
    bounded = data_modalities(bare, absent, lookahead=5)
    assert bounded.samples == 5 and not bounded.complete and bounded.missing() == ["thermal"]
    assert "first 5 samples" in bounded.where()
    whole = data_modalities(bare, absent)
    assert whole.samples == 48 and whole.complete and whole.missing() == ["thermal"]

    # a URL is streamed, also bounded; one that cannot be opened is passed over (the loader reports it)
    urls = [f"pipe:cat {tmp_path / 'nowhere.tar'} 2>/dev/null", f"pipe:cat {bare / 'world-000001.tar'}"]
    streamed = data_modalities(urls, absent, lookahead=7)
    assert streamed.source == "lookahead" and streamed.samples == 7 and streamed.missing() == ["thermal"]
    assert streamed.unreadable == [urls[0]]

    # a manifest that does not list the shards given is not trusted
    other = tmp_path / "other"
    shutil.copytree(world_dir / "train", other)
    (other / "world-000000.tar").rename(other / "renamed-000000.tar")
    assert data_modalities(other, READERS).source == "lookahead"


# --------------------------------------------------------------------------- a plugin without data
def test_a_plugin_without_data_stops_training_with_one_line_naming_it(image_text_shards, tmp_path, capsys):
    config = make_config(tmp_path, image_text_shards, ("text", "audio"))
    assert run_command(TRAIN, main, ["--config", str(config)]) == 2
    (line,) = error_lines(capsys)
    assert "no training sample carries audio:" in line and "holds image (16), text (16)" in line
    assert "manifest.json" in line and "model.modalities" in line and "data.missing_modalities: ignore" in line
    assert "remove audio from model.modalities" in line, "only the plugin without data is named"
    run = tmp_path / "run"
    assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists(), "nothing counts as a run"


def test_ignore_trains_the_others_and_logs_no_term_for_the_plugin_without_data(image_text_shards, tmp_path,
                                                                                 capsys, caplog):
    config = make_config(tmp_path, image_text_shards, ("text", "audio"), "data.missing_modalities=ignore")
    with caplog.at_level(logging.INFO, logger="anchorbind.train"):
        assert run_command(TRAIN, main, ["--config", str(config)]) == 0
    said = [r.getMessage() for r in caplog.records if "not training" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("not training audio: no training sample carries it"), said
    assert "not trained: audio" in capsys.readouterr().out

    run = tmp_path / "run"
    rows = read_log(run)
    assert len(rows) == 2 and "contrastive/text" in rows[0]
    assert not [column for column in rows[0] if "audio" in column], list(rows[0])
    assert all(row["contrastive/text"] != "" and float(row["contrastive/text"]) > 0 for row in rows)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["untrained_modalities"] == ["audio"]

    # audio is left exactly as built (and saved so); text was trained
    set_seed(0)
    initial = BindModel.from_config(load_train_config(config).model).persistent_state_dict()
    final = load_file(str(run / "model" / "model.safetensors"))
    audio = [k for k in initial if k.startswith("plugins.audio.")]
    assert audio and all(torch.equal(initial[k], final[k]) for k in audio)
    assert any(not torch.equal(initial[k], final[k]) for k in initial if k.startswith("plugins.text."))


def test_a_list_names_the_plugins_that_may_be_missing(image_text_shards, tmp_path, capsys):
    three = ("text", "audio", "depth")
    config = make_config(tmp_path, image_text_shards, three, "data.missing_modalities=[audio]")
    assert run_command(TRAIN, main, ["--config", str(config)]) == 2
    (line,) = error_lines(capsys)
    assert "no training sample carries depth:" in line and "audio" not in line, "audio may be missing"

    for overrides, needle in ((["data.missing_modalities=[audio, smell]"], "names smell, which the model has no"),
                              (["data.missing_modalities=ignore", "loss.direct_pairs=[[text, audio]]"],
                               "loss.direct_pairs entry ['text', 'audio'] names audio"),
                              (["data.missing_modalities=sometimes"], "must be one of ('error', 'ignore')")):
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
        config = make_config(tmp_path, image_text_shards, three, *overrides)
        assert run_command(TRAIN, main, ["--config", str(config)]) == 2
        (line,) = error_lines(capsys)
        assert needle in line, line
    with pytest.raises(ConfigError, match="no training sample carries any plugin's modality"):
        from anchorbind.train.loop import train

        shutil.rmtree(tmp_path / "run", ignore_errors=True)
        train(load_train_config(make_config(tmp_path, image_text_shards, ("audio", "depth"),
                                            "data.missing_modalities=ignore")))


def test_shards_without_an_anchor_image_are_refused(world_dir, tmp_path, capsys):
    shards = rewrite(world_dir / "train", tmp_path / "no_image", lambda i, ext: ext != "png")
    config = make_config(tmp_path, shards, ("text", "audio", "depth"))
    assert run_command(TRAIN, main, ["--config", str(config)]) == 2
    (line,) = error_lines(capsys)
    assert "has no image sample" in line and "all 48 samples, read from the shards" in line


def test_a_lookahead_that_stops_early_says_how_to_read_further(world_dir, tmp_path, capsys):
    # depth only in the last sample of each shard, no manifest: 10 samples are not enough to find it
    shards = rewrite(world_dir / "train", tmp_path / "late", lambda i, ext: ext != "depth.png" or i == 15)
    config = make_config(tmp_path, shards, ("text", "depth"), "data.modality_lookahead=10")
    assert run_command(TRAIN, main, ["--config", str(config)]) == 2
    (line,) = error_lines(capsys)
    assert "no training sample carries depth" in line and "first 10 samples" in line
    assert "raise data.modality_lookahead" in line
    with pytest.raises(ConfigError, match=r"data\.modality_lookahead must be >= 1"):
        load_train_config(make_config(tmp_path, shards, ("text",), "data.modality_lookahead=0"))


@pytest.mark.slow
def test_a_sparse_modality_is_trained_and_steps_without_it_log_an_empty_cell(world_dir, tmp_path):
    """Audio in 2 of every 16 samples: the data has it (trained, no error), some batches do not."""
    shards = rewrite(world_dir / "train", tmp_path / "sparse", lambda i, ext: ext != "flac" or i in (0, 9))
    config = make_config(tmp_path, shards, ("text", "audio"), "steps=8", "checkpoint_every=4")
    assert run_command(TRAIN, main, ["--config", str(config)]) == 0
    rows = read_log(tmp_path / "run")
    cells = [row["contrastive/audio"] for row in rows]
    assert len(rows) == 8 and "" in cells, f"no step without audio rows; change the seed: {cells}"
    assert any(cell and float(cell) > 0 for cell in cells), f"no step with audio rows: {cells}"
    assert all(row["contrastive/text"] for row in rows)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["untrained_modalities"] == []


# --------------------------------------------------------------------------- a cache built for another anchor
@pytest.fixture(scope="module")
def other_anchor_cache(world_dir, tmp_path_factory) -> tuple[Path, str, str]:
    """World training shards cached in place by `anchorbind cache` at 64 px (the tiny config's anchor is 96 px);
    returns them with the cached and the model's anchor identities."""
    root = tmp_path_factory.mktemp("other_cache")
    shutil.copytree(world_dir / "train", root / "shards")
    (root / "anchor.yaml").write_text(yaml.safe_dump({"anchor": {"weights": "packaged", "image_size": 64}}))
    assert cache_main([str(root / "shards"), "--anchor-config", str(root / "anchor.yaml"), "--no-progress",
                       "--in-place"]) == 0
    cached = json.loads((root / "shards" / "world-000000.tar.anchor.json").read_text())["identity"]
    model = FrozenAnchor(AnchorConfig(weights="packaged", image_size=96)).identity
    assert cached != model
    return root / "shards", cached, model


def _cfg(shards: Path, anchor: str) -> SimpleNamespace:
    return SimpleNamespace(data=SimpleNamespace(anchor=anchor, train_shards=str(shards), anchor_cache=None,
                                                read_timeout_s=5, batch_timeout_s=None))


def _model(identity: str) -> SimpleNamespace:
    return SimpleNamespace(anchor=SimpleNamespace(identity=identity))


def test_resolve_anchor_source_reports_a_cache_for_another_anchor(other_anchor_cache, tmp_path):
    shards, cached, model = other_anchor_cache
    assert resolve_anchor_source(_cfg(shards, "auto"), _model(cached)) == (True, None, [None, None, None])
    assert resolve_anchor_source(_cfg(shards, "live"), _model(model)) == (False, None, [])
    use, note, _ = resolve_anchor_source(_cfg(shards, "auto"), _model(model))
    assert not use and note.startswith(f"cache built for {cached}, model anchor is {model}: running the anchor live")
    with pytest.raises(ConfigError, match=r"cache built for .*64x64, model anchor is .*96x96") as refused:
        resolve_anchor_source(_cfg(shards, "cache"), _model(model))
    assert "\n" not in str(refused.value)

    # partly cached with this anchor: said too, and still run live
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(shards / "world-000000.tar", partial)
    shutil.copy(shards / "world-000000.tar.anchor.json", partial)
    for name in ("world-000001.tar", "world-000002.tar"):
        with tarfile.open(shards / name) as fin, tarfile.open(partial / name, "w") as fout:
            for member in fin.getmembers():
                if not member.name.endswith((".anchor.npy", ".anchor_id.txt")):
                    fout.addfile(member, io.BytesIO(fin.extractfile(member).read()))
    use, note, _ = resolve_anchor_source(_cfg(partial, "auto"), _model(cached))
    assert not use and "covers the first 1 shard(s) but not" in note and "world-000001.tar and the 1 shard" in note
    assert resolve_anchor_source(_cfg(partial / "world-000000.tar", "auto"), _model(cached)) == (True, None, [None])
    with pytest.raises(FileNotFoundError, match="has no anchor cache"):
        resolve_anchor_source(_cfg(partial, "cache"), _model(cached))


@pytest.mark.slow
def test_training_on_a_cache_for_another_anchor(other_anchor_cache, tmp_path, capsys, caplog):
    shards, cached, model = other_anchor_cache
    config = make_config(tmp_path, shards, ("text",), "steps=1", "data.anchor=cache")
    assert run_command(TRAIN, main, ["--config", str(config)]) == 2
    (line,) = error_lines(capsys)
    assert f"cache built for {cached}, model anchor is {model}" in line and "data.anchor=live" in line

    config = make_config(tmp_path, shards, ("text",), "steps=1", "data.anchor=auto")
    with caplog.at_level(logging.INFO, logger="anchorbind.train"):
        assert run_command(TRAIN, main, ["--config", str(config)]) == 0
    said = [r.getMessage() for r in caplog.records if "cache built for" in r.getMessage()]
    assert len(said) == 1 and f"cache built for {cached}, model anchor is {model}: running the anchor live" in said[0]
    assert "anchor: live" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["anchor_source"] == "live"


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_with_a_native_objective_on_sparse_data_log_the_same_terms(world_dir, tmp_path):
    """A native loss exists only where a batch has the modality: every rank must still log (all-reduce)
    the same terms in the same order, or the run hangs at its first log step."""
    from tests.test_train_faults import _launch

    shards = rewrite(world_dir / "train", tmp_path / "sparse", lambda i, ext: ext != "flac" or i in (0, 9))
    cfg = tiny_config(tmp_path / "run", shards, ["steps=4", "checkpoint_every=4"])
    cfg["model"]["modalities"] = {"text": TINY_MODALITIES["text"],
                                  "audio": {**TINY_MODALITIES["audio"], "native_loss_weight": 0.5}}
    done = _launch(write_config(tmp_path / "cfg.yaml", cfg))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rows = read_log(tmp_path / "run")
    assert len(rows) == 4 and "native/audio" in rows[0], rows[0]
    cells = [row["native/audio"] for row in rows]
    assert any(cell != "" for cell in cells), cells  # logged where a batch had audio (1 row: a loss of 0)
