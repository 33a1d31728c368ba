"""``anchorbind eval`` and ``anchorbind report`` on real tiny runs, plus the run-level logic."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anchorbind.errors import ConfigError, ModelFileError
from anchorbind.evaluation.checkpoint_alignment import checkpoint_alignment
from anchorbind.evaluation.evaluate import EvalConfig, evaluate_run
from anchorbind.evaluation.extract import EmbeddingSet, Reuse, extract_embeddings
from anchorbind.evaluation.pairs import ordered_pairs, pair_kind
from anchorbind.evaluation.split_cache import SplitAnchorCache
from anchorbind.evaluation.visiocentrism import visiocentrism_index
from anchorbind.model import BindModel
from anchorbind.train.config import load_train_config
from anchorbind.train.loop import train
from tests.conftest import REPO, subprocess_env
from tests.train_utils import tiny_config, write_config


def test_pair_kinds_follow_the_training_config():
    assert pair_kind("image", "audio", {}) == "trained"
    assert pair_kind("text", "audio", {}) == "emergent"
    assert pair_kind("audio", "text", {"direct_pairs": [["text", "audio"]]}) == "direct"
    assert pair_kind("image", "text", {"weights": {"text": 0.0}}) == "untrained"
    pairs = ordered_pairs(["image", "text", "audio"], {})
    assert len(pairs) == 6 and pairs["text->audio"] == {"query": "text", "gallery": "audio", "kind": "emergent"}


def test_visiocentrism_index_on_known_probes():
    probes = {
        "category": {"group": "shared", "relative_loss": 0.1},
        "size": {"group": "shared", "relative_loss": 0.3},
        "beats": {"group": "non-visual", "relative_loss": 0.9},
        "colour": {"group": "visual-only", "relative_loss": 0.5},
    }
    assert visiocentrism_index(probes) == pytest.approx(0.9 - 0.2)
    assert visiocentrism_index({"category": probes["category"]}) is None


@pytest.fixture(scope="module")
def runs(world_dir, tmp_path_factory):
    """A bound run and a direct text-audio baseline, 6 steps each."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, overrides in {
        "bind": [],
        "direct": ["model.modalities={text: {}, audio: {width: 32, depth: 1, num_heads: 2}}",
                   "loss.weights={text: 0.0, audio: 0.0}", "loss.direct_pairs=[[text, audio]]"],
    }.items():
        cfg = tiny_config(root / name, world_dir / "train", overrides)
        train(load_train_config(write_config(root / f"{name}.yaml", cfg)))
        out[name] = root / name
    return out


def test_checkpoints_reuse_the_frozen_anchor_rows_instead_of_embedding_the_images_again(runs, world_dir):
    shards = str(world_dir / "test")
    model = BindModel.from_pretrained(runs["bind"] / "model").eval()
    final = extract_embeddings(model, shards, batch_size=8, num_workers=0, progress=False)
    # rows that differ from what the anchor computes show that they are taken, not recomputed
    marked = EmbeddingSet(keys=final.keys, embeddings={**final.embeddings, "image": -final.embeddings["image"]},
                          features=final.features, masks=final.masks, meta=final.meta, errors=final.errors)
    again = extract_embeddings(model, shards, batch_size=8, num_workers=0, progress=False,
                               reuse=Reuse(marked, model.anchor.identity))
    assert again.keys == final.keys and torch.equal(again.embeddings["image"], -final.embeddings["image"])
    assert torch.allclose(again.embeddings["audio"], final.embeddings["audio"], atol=1e-6)
    assert Reuse(marked, "another anchor").modalities(model) == (), "another anchor embeds its own images"
    live = checkpoint_alignment(runs["bind"], shards, max_samples=16, batch_size=8, num_workers=0)
    reused = checkpoint_alignment(runs["bind"], shards, max_samples=16, batch_size=8, num_workers=0,
                                  reuse=Reuse(final, model.anchor.identity))
    assert [(p["checkpoint"], p["modality"]) for p in live["points"]] == [
        (p["checkpoint"], p["modality"]) for p in reused["points"]]
    for a, b in zip(live["points"], reused["points"], strict=True):
        for measure, value in a.items():
            if isinstance(value, float):
                assert value == pytest.approx(b[measure], abs=1e-4), (a["checkpoint"], measure)


def test_a_split_is_embedded_by_the_anchor_once_per_anchor(runs, world_dir, tmp_path):
    split = tmp_path / "test"
    shutil.copytree(world_dir / "test", split)
    config = EvalConfig(checkpoint_samples=0, num_workers=0, batch_size=16)
    first = evaluate_run(runs["bind"], str(split), config)
    identity = first["anchor_identity"]
    cache = SplitAnchorCache.for_split(str(split), identity)
    reuse = cache.load()
    assert reuse is not None and len(reuse.rows.keys) == first["num_samples"]
    assert cache.path.parent.parent.parent == split / "anchor-cache", "kept with the split's anchor cache"
    again = evaluate_run(runs["bind"], str(split), config)
    for pair, block in first["retrieval"].items():
        for measure in ("instance/R@1", "instance/R@10", "instance/median_rank"):
            assert again["retrieval"][pair][measure] == pytest.approx(block[measure], abs=1e-6), (pair, measure)
    assert again["timings_s"]["load_and_embed"] > 0
    # a changed split is embedded again
    (split / "world-000000.tar").touch()
    assert SplitAnchorCache.for_split(str(split), identity).load() is None


@pytest.mark.slow
def test_eval_and_report_cli(runs, world_dir):
    env = subprocess_env()
    cmd = [sys.executable, "-m", "anchorbind.cli", "eval", str(runs["bind"]), "--shards", str(world_dir / "test"),
           "--baseline", str(runs["direct"]), "--num-workers", "1", "--checkpoint-samples", "32"]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((runs["bind"] / "metrics.json").read_text())
    assert m["num_samples"] == 32 and m["decode_errors"]["count"] == 0
    assert m["retrieval"]["image->text"]["kind"] == "trained"
    assert m["retrieval"]["text->audio"]["kind"] == "emergent"
    assert m["baselines"][str(runs["direct"])]["retrieval"]["text->audio"]["kind"] == "direct"
    assert "text->audio" in m["emergent_vs_direct"]
    for block in m["retrieval"].values():
        recalls = [block[f"instance/R@{k}"] for k in (1, 5, 10)]
        assert all(0 <= r <= 1 for r in recalls) and recalls == sorted(recalls)
    assert set(m["zero_shot"]) >= {"image", "audio", "depth", "classes"}
    # anchor pairs (how far binding brought each plugin) and plugin pairs (what emergent retrieval bridges)
    unordered = {frozenset(pair.split("-")) for pair in m["gap"]}
    assert len(m["gap"]) == 6 and unordered == {frozenset(p) for p in itertools.combinations(
        ["image", "text", "audio", "depth"], 2)}
    assert {"text->image", "audio->image", "depth->image"} <= set(m["gap_shift"])
    assert 0 <= m["gap"]["image-audio"]["centroid_distance"] <= 2
    # the last checkpoint holds the final step, so the final model is not embedded twice
    assert {p["checkpoint"] for p in m["alignment_across_checkpoints"]["points"]} == {
        "step-00000002", "step-00000004", "step-00000006"}
    probes = m["visiocentrism"]["probes"]["audio"]
    assert probes["beats"]["group"] == "non-visual" and probes["category"]["group"] == "shared"
    assert "text->audio" in m["visiocentrism"]["retrieval_by_attribute"]
    assert m["headline"]
    stages = m["timings_s"]
    assert set(stages) >= {"load_and_embed", "retrieval", "baselines", "zero_shot", "gap", "visiocentrism",
                           "alignment_across_checkpoints", "total"}
    assert all(v >= 0 for v in stages.values()) and stages["load_and_embed"] > 0
    assert sum(v for k, v in stages.items() if k != "total") <= stages["total"] + 1e-3, "stages do not overlap"
    _assert_documented(m)

    done = subprocess.run([sys.executable, "-m", "anchorbind.cli", "report", str(runs["bind"])], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (runs["bind"] / "report.md").read_text()
    linked = [line.split("](")[1].rstrip(")\n") for line in report.splitlines() if line.startswith("![")]
    assert len(linked) >= 6 and all((runs["bind"] / p).is_file() for p in linked)
    for section in ("## Retrieval", "## Visiocentrism", "## Modality gap", "## Zero-shot"):
        assert section in report


def _assert_documented(m: dict) -> None:
    """docs/metrics.md names every top-level key and every statistic of the fixed-shape blocks."""
    doc = (REPO / "docs" / "metrics.md").read_text()
    blocks = [m, next(iter(m["retrieval"].values())), next(iter(m["gap"].values())),
              next(iter(m["emergent_vs_direct"].values())), m["visiocentrism"],
              next(iter(m["visiocentrism"]["probes"]["audio"].values())), m["visiocentrism"]["summary"]["audio"],
              m["alignment_across_checkpoints"]["points"][0], m["groupwise"]["stacked"]]
    missing = {key for block in blocks for key in block if key.split("/")[0] not in doc}
    assert not missing, f"keys of metrics.json missing from docs/metrics.md: {sorted(missing)}"


def test_eval_refuses_a_directory_without_a_model(tmp_path, world_dir):
    with pytest.raises(ModelFileError, match="no trained model"):  # a data problem: exit 1
        evaluate_run(tmp_path, str(world_dir / "test"))


def test_report_needs_metrics(tmp_path):
    from anchorbind.evaluation.report import write_report

    with pytest.raises(ConfigError, match="anchorbind eval"):
        write_report(Path(tmp_path))
