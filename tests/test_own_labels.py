"""Your own labels: class folders and manifest columns become attributes, a deterministic test split,
evaluation defaults for data without observability, and the headline's levels.

The end-to-end tests (marked slow) convert a labelled folder and a labelled CSV of tiny photos
(one colour per class), captions and spoken captions (one pitch per class), train briefly and
evaluate them with the real CLI.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from PIL import Image

from anchorbind.config import resolve_config
from anchorbind.data.shardlist import iter_shard
from anchorbind.evaluation.arithmetic import arithmetic_section
from anchorbind.evaluation.evaluate import _resolve_label, build_parser, headline
from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.schema import (
    attribute_groups,
    carried_by_omits,
    carried_mask,
    declared_label,
    unobserved_attributes,
)
from anchorbind.evaluation.visiocentrism import visiocentrism_section
from anchorbind.pipelines.shards.convert import SampleRow, convert_to_shards, split_rows
from anchorbind.pipelines.world.config import ATTRIBUTES
from anchorbind.train.config import load_train_config
from anchorbind.train.loop import train
from tests.conftest import REPO
from tests.train_utils import tiny_config, write_config

CLASSES = {"cat": (210, 40, 40), "dog": (40, 60, 210)}
"""Class -> image colour (a linear probe on the anchor separates them)."""
PITCH = {"cat": 300.0, "dog": 1200.0}
PER_CLASS = 12


def _image(path: Path, colour: tuple[int, int, int], index: int) -> None:
    rng = np.random.default_rng(index)
    pixels = np.clip(np.array(colour) + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def _audio(path: Path, pitch: float, index: int) -> None:
    t = np.arange(16000) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * pitch * (1 + 0.01 * index) * t)).astype(np.float32), 16000)


def _samples() -> list[tuple[str, int]]:
    return [(label, i) for label in CLASSES for i in range(PER_CLASS)]


def make_labelled_folder(root: Path, *, audio: bool = True) -> Path:
    """``root/<class>/<i>.jpg`` + ``.txt`` (+ ``.wav``), and one stray caption directly in ``root``."""
    for label, i in _samples():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        _image(folder / f"{i:04d}.jpg", CLASSES[label], i)
        (folder / f"{i:04d}.txt").write_text(f"a {label} photographed at moment {i}")
        if audio:
            _audio(folder / f"{i:04d}.wav", PITCH[label], i)
    (root / "notes.txt").write_text("not a sample of any class")
    return root


def make_labelled_csv(root: Path) -> Path:
    """``root/photos.csv``: image, inline caption, audio, ``species`` (the label) and ``colour``; one unlabelled row."""
    media = root / "media"
    media.mkdir(parents=True)
    lines = ["key,image,text,audio,species,colour"]
    for label, i in _samples():
        key = f"{label}{i:02d}"
        _image(media / f"{key}.jpg", CLASSES[label], i)
        _audio(media / f"{key}.wav", PITCH[label], i)
        colour = "red" if label == "cat" else "blue"
        lines.append(f"{key},media/{key}.jpg,\"a {label}, seen at moment {i}\",media/{key}.wav,{label},{colour}")
    _image(media / "nolabel.jpg", (128, 128, 128), 99)
    lines.append("nolabel,media/nolabel.jpg,a grey photo,,,grey")
    manifest = root / "photos.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``anchorbind ARGS`` in this interpreter; (exit status, stdout, stderr)."""
    from anchorbind.cli import main as cli_main

    capsys.readouterr()
    code = cli_main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def samples_of(folder: Path) -> dict[str, dict[str, Any]]:
    return {s["__key__"]: s for shard in sorted(folder.glob("*.tar")) for s in iter_shard(shard)}


# ------------------------------------------------------------------------------ conversion
def test_class_folders_become_labels_and_the_split_is_stratified(tmp_path, capsys):
    source = make_labelled_folder(tmp_path / "photos", audio=False)
    code, out, err = cli(capsys, "shards", str(source), "--out", str(tmp_path / "shards"), "--workers", "1",
                         "--label-from-folder", "--test-fraction", "0.25")
    assert code == 0, err
    assert "train: wrote 18 samples" in out and "test: wrote 6 samples" in out
    assert "2 category labels (cat: 3, dog: 3)" in out
    train, test = samples_of(tmp_path / "shards" / "train"), samples_of(tmp_path / "shards" / "test")
    assert set(train) | set(test) == {f"{label}_{i:04d}" for label, i in _samples()}, "keys keep the folder"
    assert not set(train) & set(test)
    for key, sample in {**train, **test}.items():
        assert json.loads(sample["json"]) == {"attributes": {"category": key.split("_")[0]},
                                              "label_attribute": "category"}
    report = json.loads((tmp_path / "shards" / "train" / "report.json").read_text())
    assert report["labels"] == {"cat": 9, "dog": 9} and report["label_attribute"] == "category"
    assert [(Path(r["source"]).name, r["reason"]) for r in report["skipped"]] == [
        ("notes.txt", "not in a class folder (--label-from-folder): no label")]
    manifest = json.loads((tmp_path / "shards" / "test" / "manifest.json").read_text())
    assert manifest["split"]["name"] == "test" and manifest["split"]["test_fraction"] == 0.25
    # the same source gives the same split
    code, _, err = cli(capsys, "shards", str(source), "--out", str(tmp_path / "again"), "--workers", "1",
                       "--label-from-folder", "--test-fraction", "0.25")
    assert code == 0, err
    assert set(samples_of(tmp_path / "again" / "test")) == set(test)


def test_a_class_folder_layout_without_the_flag_is_only_noted(tmp_path, capsys):
    source = make_labelled_folder(tmp_path / "photos", audio=False)
    (source / "notes.txt").unlink()
    code, out, err = cli(capsys, "shards", str(source), "--out", str(tmp_path / "shards"), "--workers", "1")
    assert code == 0, err
    assert "note: every sample lies in one subfolder" in out and "--label-from-folder" in out
    assert all("json" not in s for s in samples_of(tmp_path / "shards").values()), "no label unless asked"
    # a named attribute for the folder's classes
    report = convert_to_shards(source, tmp_path / "named", label_from_folder=True, label_column="animal",
                               progress=False)
    assert report.labels == {"cat": PER_CLASS, "dog": PER_CLASS} and not report.notes
    sample = samples_of(tmp_path / "named")["dog_0003"]
    assert json.loads(sample["json"]) == {"attributes": {"animal": "dog"}, "label_attribute": "animal"}


def test_manifest_columns_are_attributes_and_the_label_column_is_recorded(tmp_path, capsys):
    manifest = make_labelled_csv(tmp_path)
    code, out, err = cli(capsys, "shards", str(manifest), "--out", str(tmp_path / "shards"), "--workers", "1",
                         "--label-column", "species")
    assert code == 0, err
    assert "2 species labels (cat: 12, dog: 12)" in out
    samples = samples_of(tmp_path / "shards")
    assert len(samples) == 2 * PER_CLASS and "nolabel" not in samples
    assert json.loads(samples["dog05"]["json"]) == {"attributes": {"species": "dog", "colour": "blue"},
                                                    "label_attribute": "species"}
    report = json.loads((tmp_path / "shards" / "report.json").read_text())
    assert any(r["key"] == "nolabel" and "'species' column" in r["reason"] for r in report["skipped"])
    # without --label-column every other column is still an attribute, and no row is refused
    convert_to_shards(manifest, tmp_path / "plain", progress=False)
    plain = samples_of(tmp_path / "plain")
    assert json.loads(plain["nolabel"]["json"]) == {"attributes": {"colour": "grey"}}
    assert json.loads(plain["cat00"]["json"]) == {"attributes": {"species": "cat", "colour": "red"}}


def test_label_options_that_do_not_fit_the_source_are_refused(tmp_path, capsys):
    manifest = make_labelled_csv(tmp_path)
    folder = make_labelled_folder(tmp_path / "photos", audio=False)
    for args, needle in [
        ((str(manifest), "--label-column", "breed"), "no such column"),
        ((str(manifest), "--label-column", "image"), "a modality's column"),
        ((str(manifest), "--label-from-folder"), "is a manifest"),
        ((str(folder), "--label-column", "animal"), "--label-from-folder"),
        ((str(folder), "--test-fraction", "1.5"), "between 0 and 1"),
        ((str(folder), "--format", "esc50", "--test-fraction", "0.2"), "apply to a folder or a manifest"),
    ]:
        code, _, err = cli(capsys, "shards", *args, "--out", str(tmp_path / "out"), "--workers", "1")
        assert code == 2 and needle in err, (args, err)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.tar"))


def test_schema_columns_of_a_jsonl_manifest_go_to_the_top_level(tmp_path):
    _image(tmp_path / "a.jpg", CLASSES["cat"], 0)
    rows = [
        {"key": "a", "image": "a.jpg", "category": "cat", "attributes": {"category": "dog", "room": "kitchen"},
         "observability": {"category": "both", "room": "visual"}, "captions": ["one", "two"]},
        {"key": "b", "image": "a.jpg", "observability": "visual"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    report = convert_to_shards(tmp_path / "m.jsonl", tmp_path / "out", progress=False)
    samples = samples_of(tmp_path / "out")
    assert json.loads(samples["a"]["json"]) == {
        "attributes": {"category": "cat", "room": "kitchen"},  # the row's own column wins
        "observability": {"category": "both", "room": "visual"}, "captions": ["one", "two"]}
    assert "b" not in samples
    assert any(r["key"] == "b" and "must hold a JSON object" in r["reason"] for r in report.skipped)


def _rows(labels: dict[str, int]) -> list[SampleRow]:
    return [SampleRow(f"{label}-{i}", meta={"attributes": {"kind": label}, "label_attribute": "kind"})
            for label, n in labels.items() for i in range(n)]


def test_split_rows_is_exact_stratified_and_depends_only_on_keys_and_labels():
    rows = _rows({"a": 10, "b": 5, "c": 2})
    split = split_rows(rows, 0.2)
    assert len(split["test"]) == 3 and len(split["train"]) == 14  # round(0.2 * 17)
    counts = {label: sum(r.meta["attributes"]["kind"] == label for r in split["test"]) for label in "abc"}
    assert counts == {"a": 2, "b": 1, "c": 0}, "each label in proportion, as far as its size allows"
    assert [r.key for r in split["train"]] == [r.key for r in rows if r not in split["test"]], "input order kept"
    shuffled = list(rows)
    random.Random(3).shuffle(shuffled)
    assert {r.key for r in split_rows(shuffled, 0.2)["test"]} == {r.key for r in split["test"]}
    # another label's rows do not move this label's
    more = split_rows(rows + _rows({"d": 20}), 0.2)
    assert {r.key for r in more["test"] if r.key.startswith("a-")} == {r.key for r in split["test"]
                                                                         if r.key.startswith("a-")}
    unlabelled = [SampleRow(f"s{i}") for i in range(10)]
    assert len(split_rows(unlabelled, 0.3)["test"]) == 3
    assert len(split_rows(unlabelled[:2], 0.01)["test"]) == 1, "at least one test sample"
    assert len(split_rows(unlabelled[:2], 0.99)["train"]) == 1, "at least one training sample"
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_rows(rows, 0.0)


# ------------------------------------------------------------------------------ evaluation defaults
USER_META = [{"attributes": {"category": label, "colour": colour}, "label_attribute": "category"}
             for label, colour in [("cat", "red"), ("dog", "blue")] * 10]


def test_attributes_without_observability_are_shared_and_carried_by_every_modality():
    assert attribute_groups(USER_META) == {"category": "shared", "colour": "shared"}
    assert unobserved_attributes(USER_META) == ["category", "colour"]
    assert declared_label(USER_META) == "category"
    assert declared_label([{"label_attribute": "a"}, {"label_attribute": "b"}]) is None
    for modality in ("image", "text", "audio", "depth", "thermal", "no_such_plugin"):
        assert carried_mask(USER_META, range(len(USER_META)), modality, "colour").all(), modality
    assert attribute_groups([{"key": "x"}, None]) is None
    # a world record plus a user attribute: the world's groups stay, the new one is shared
    world = {"attributes": {**{name: spec.values[0] for name, spec in ATTRIBUTES.items()}, "photographer": "me"},
             "observability": {name: spec.observability for name, spec in ATTRIBUTES.items()},
             "carried_by": {name: list(spec.carried_by) for name, spec in ATTRIBUTES.items()}}
    groups = attribute_groups([world])
    assert groups["photographer"] == "shared" and groups["beats"] == "non-visual" and groups["colour"] == "visual-only"


def test_a_modality_carried_by_never_names_falls_back_on_observability():
    world = {"attributes": {name: spec.values[0] for name, spec in ATTRIBUTES.items()},
             "observability": {name: spec.observability for name, spec in ATTRIBUTES.items()},
             "carried_by": {name: list(spec.carried_by) for name, spec in ATTRIBUTES.items()},
             "caption_states": {name: name == "category" for name in ATTRIBUTES}}
    carried = {a for a in ATTRIBUTES if carried_mask([world], [0], "thermal", a)[0]}
    # thermal perceives what is visible: the shared and visual attributes, not the sound's
    assert carried == {a for a, s in ATTRIBUTES.items() if s.observability in ("both", "visual")}
    assert carried_by_omits([world], "thermal")
    assert not carried_by_omits([world], "audio") and not carried_by_omits([world], "text")
    assert {a for a in ATTRIBUTES if carried_mask([world], [0], "audio", a)[0]} == {
        a for a, s in ATTRIBUTES.items() if "audio" in s.carried_by}, "a named modality keeps its list"


def _embedding_set(meta: list[dict[str, Any]], modalities=("image", "text", "audio")) -> EmbeddingSet:
    torch.manual_seed(0)
    n = len(meta)
    signal = torch.tensor([1.0 if m["attributes"]["category"] == "cat" else -1.0 for m in meta])
    embeddings, features = {}, {}
    for name in modalities:
        x = torch.randn(n, 8) * 0.3
        x[:, 0] += signal
        features[name] = x
        embeddings[name] = torch.nn.functional.normalize(x + 0.1 * torch.randn(n, 8), dim=1)
    return EmbeddingSet(keys=[f"s{i}" for i in range(n)], embeddings=embeddings, features=features,
                        masks={m: torch.ones(n, dtype=torch.bool) for m in modalities}, meta=meta)


def test_probes_run_on_user_attributes_and_the_assumption_is_noted_once():
    emb = _embedding_set(USER_META)
    notes: list[str] = []
    label, source = _resolve_label(emb, None, notes)
    assert (label, source) == ("category", "data")
    assumed = [n for n in notes if "no observability" in n]
    assert len(assumed) == 1 and "category, colour" in assumed[0] and "every modality" in assumed[0]
    section = visiocentrism_section(emb, {}, notes=notes)
    for name in ("image", "text", "audio"):
        probe = section["probes"][name]["category"]
        assert probe["group"] == "shared" and probe["carried"] and probe["native"] >= 0.8 > probe["chance"]
    assert "text->audio" in section["retrieval_by_attribute"]
    assert arithmetic_section(emb, notes=notes) == {}
    assert any(n.startswith("arithmetic: skipped, no attribute is visual-only") for n in notes)
    assert not any("declares no attribute observability" in n for n in notes)
    # a label the data lacks: said, with the attributes every sample has
    notes = []
    assert _resolve_label(emb, "species", notes) == ("species", "option")
    assert any("not every sample's JSON has attributes.species" in n and "category, colour" in n for n in notes)
    notes = []
    unlabelled = _embedding_set([{"attributes": {"category": m["attributes"]["category"]}} for m in USER_META])
    assert _resolve_label(unlabelled, None, notes) == ("category", "default")


def test_the_headline_shows_instance_numbers_when_there_is_no_label():
    metrics = {"modalities": {"image": 4, "text": 4, "audio": 4},
               "retrieval": {"text->image": {"kind": "trained", "instance/R@1": 0.5},
                             "audio->text": {"kind": "emergent", "instance/R@1": 0.25},
                             "text->audio": {"kind": "emergent", "instance/R@1": 0.75}},
               "emergent_vs_direct": {"text->audio": {"emergent/instance/R@1": 0.75, "direct/instance/R@1": 1.0,
                                                      "ratio/instance/R@1": 0.75, "chance/instance/R@1": 0.25}}}
    shown = headline(metrics)
    assert shown["trained text->image instance R@1"] == 0.5
    assert shown["emergent text->audio instance R@1"] == 0.75
    assert shown["emergent/direct text->audio instance R@1"] == 0.75
    assert not any("category" in key for key in shown) and None not in shown.values()
    metrics["retrieval"]["text->image"]["category/R@1"] = 0.9
    assert headline(metrics)["trained text->image category R@1"] == 0.9


def test_eval_takes_label_and_the_old_spelling():
    parser = build_parser()
    assert parser.parse_args(["run", "--shards", "s", "--label", "species"]).label_attribute == "species"
    assert parser.parse_args(["run", "--shards", "s", "--label-attribute", "species"]).label_attribute == "species"
    assert parser.parse_args(["run", "--shards", "s"]).label_attribute is None


# ------------------------------------------------------------------------------ the own_data config and README
def test_own_data_config_runs_the_anchor_at_its_native_resolution(tmp_path):
    raw = yaml.safe_load(resolve_config("own_data").read_text())
    assert "image_size" not in raw["model"]["anchor"], "the anchor's native 224 px, not demo.yaml's 160"
    make_labelled_folder(tmp_path / "photos", audio=False)
    convert_to_shards(tmp_path / "photos", tmp_path / "shards", label_from_folder=True, progress=False)
    cfg = load_train_config(resolve_config("own_data"), [f"data.train_shards={tmp_path / 'shards'}",
                                                         "data.batch_size=8", f"output_dir={tmp_path / 'run'}"])
    from anchorbind.anchor import FrozenAnchor

    assert FrozenAnchor(cfg.model.anchor).identity.endswith("|224x224")
    assert cfg.steps >= 500 and raw["data"]["batch_size"] >= 32
    assert set(cfg.model.modalities) == {"text"}


def _readme_recipe() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Train on your own data", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def test_readme_recipe_goes_from_a_labelled_folder_to_a_report_with_options_that_exist(capsys):
    commands = _readme_recipe()
    assert [c.split()[1] for c in commands] == ["shards", "cache", "train", "eval", "report"]
    assert "--label-from-folder" in commands[0] and "--test-fraction" in commands[0]
    assert "--config own_data" in commands[2]
    for command in commands:
        name = command.split()[1]
        with pytest.raises(SystemExit):
            cli(capsys, name, "--help")
        usage = capsys.readouterr().out
        for option in re.findall(r"(--[a-z][a-z-]*)", command):
            assert option in usage, (name, option)


# ------------------------------------------------------------------------------ end to end
TINY_TEXT_AUDIO = ["model.modalities={text: {}, audio: {width: 32, depth: 1, num_heads: 2}}"]


def _train(run: Path, shards: Path) -> Path:
    cfg = tiny_config(run, shards, TINY_TEXT_AUDIO, steps=4, checkpoint_every=4)
    train(load_train_config(write_config(run.parent / f"{run.name}.yaml", cfg)))
    return run


def _eval(run: Path, shards: Path, *extra: str) -> tuple[dict[str, Any], str]:
    import subprocess
    import sys

    from tests.conftest import subprocess_env

    done = subprocess.run([sys.executable, "-m", "anchorbind.cli", "eval", str(run), "--shards", str(shards),
                           "--num-workers", "0", "--checkpoint-samples", "0", *extra], env=subprocess_env(),
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run / "metrics.json").read_text()), done.stdout


def _assert_category_metrics(m: dict[str, Any], label: str) -> None:
    assert m["label_attribute"] == label
    for pair in ("text->image", "audio->image", "text->audio", "audio->text"):
        block = m["retrieval"][pair]
        assert 0 <= block["category/R@1"] <= 1 and block["chance/category/R@1"] == pytest.approx(0.5, abs=0.1)
    assert m["zero_shot"]["classes"] == ["cat", "dog"]
    for name in ("image", "audio"):
        assert 0 <= m["zero_shot"][name]["acc@1"] <= 1 and m["zero_shot"][name]["chance"] == 0.5
    probes = m["visiocentrism"]["probes"]
    for name in ("image", "text", "audio"):
        assert probes[name][label]["group"] == "shared" and "native" in probes[name][label], name
    assert probes["image"][label]["native"] > probes["image"][label]["chance"], "the colours separate the classes"
    assert {frozenset(pair.split("-")) for pair in m["gap"]} == {
        frozenset(p) for p in (("image", "text"), ("image", "audio"), ("text", "audio"))}
    assert m["groupwise"]["stacked"]["num_classes"] == 2
    keys = [k for k in m["headline"] if " R@1" in k]
    assert keys and all("category R@1" in k for k in keys)
    assumed = [n for n in m["notes"] if "no observability" in n]
    assert len(assumed) == 1 and label in assumed[0]


@pytest.mark.slow
def test_a_labelled_folder_trains_and_evaluates_at_category_level_and_unlabelled_at_instance_level(tmp_path, capsys):
    source = make_labelled_folder(tmp_path / "photos")
    code, _, err = cli(capsys, "shards", str(source), "--out", str(tmp_path / "shards"), "--workers", "1",
                       "--label-from-folder", "--test-fraction", "0.5")
    assert code == 0, err
    run = _train(tmp_path / "run", tmp_path / "shards" / "train")
    m, out = _eval(run, tmp_path / "shards" / "test")
    assert m["label_source"] == "data" and m["num_samples"] == 12
    _assert_category_metrics(m, "category")
    assert "label: category (named by the shards); category R@1:" in out
    code, _, err = cli(capsys, "report", str(run))
    assert code == 0, err
    assert "no observability" in (run / "report.md").read_text(), "the report says what it assumed"

    # the same photos without labels: the headline shows instance-level numbers, not dashes
    (source / "notes.txt").unlink()
    convert_to_shards(source, tmp_path / "plain", progress=False)
    m, out = _eval(run, tmp_path / "plain")
    assert m["label_source"] == "default" and "category/R@1" not in m["retrieval"]["text->image"]
    shown = {k: v for k, v in m["headline"].items() if " R@1" in k}
    assert shown and all("instance R@1" in k and v is not None for k, v in shown.items())
    assert shown["trained text->image instance R@1"] == m["retrieval"]["text->image"]["instance/R@1"]
    assert "instance R@1: only the query's own pair" in out
    assert re.search(r"trained text->image instance R@1\s+\d\.\d{3}", out), out


@pytest.mark.slow
def test_a_labelled_csv_trains_and_evaluates_at_category_level(tmp_path, capsys):
    manifest = make_labelled_csv(tmp_path)
    code, _, err = cli(capsys, "shards", str(manifest), "--out", str(tmp_path / "shards"), "--workers", "1",
                       "--label-column", "species", "--test-fraction", "0.5")
    assert code == 0, err
    run = _train(tmp_path / "run", tmp_path / "shards" / "train")
    m, _ = _eval(run, tmp_path / "shards" / "test", "--label", "species")
    assert m["label_source"] == "option" and m["num_samples"] == 12
    _assert_category_metrics(m, "species")
    assert m["visiocentrism"]["groups"] == {"species": "shared", "colour": "shared"}
