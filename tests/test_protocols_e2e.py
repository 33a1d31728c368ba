"""A standard dataset end to end: its official layout -> shards -> a tiny trained model -> eval's protocol.

The protocol numbers in ``metrics.json`` must equal a brute-force computation on the embeddings
``anchorbind eval`` saved next to them (``embeddings_test.safetensors``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anchorbind import BindModel
from anchorbind.evaluation.evaluate import EMBEDDINGS_FILE
from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.zeroshot import modality_templates
from tests.test_cli_errors import anchorbind
from tests.test_formats_audio import CLOTHO_HEADER, ESC50_HEADER, tone, write_csv
from tests.train_utils import tiny_config, write_config

CLASSES = ["dog", "rain", "crying_baby", "church_bells"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, world_dir) -> Path:
    """A tiny run (text + audio, 4 steps) on the session's world shards."""
    tmp = tmp_path_factory.mktemp("protocol-run")
    cfg = tiny_config(tmp / "run", world_dir / "train", steps=4, checkpoint_every=4)
    cfg["model"]["modalities"] = {"text": {}, "audio": {"width": 32, "depth": 1, "num_heads": 2}}
    done = anchorbind("train", "--config", str(write_config(tmp / "cfg.yaml", cfg)), cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp / "run"


def _esc50(root: Path) -> Path:
    rows = []
    for i in range(20):
        category = CLASSES[i % 4]
        name = f"{1 + i % 5}-{1000 + i}-A-{i % 4}.wav"
        rows.append(f"{name},{1 + i % 5},{i % 4},{category},False,{1000 + i},A")
        tone(root / "audio" / name, seconds=0.6, freq=200.0 + 40 * (i % 4) + 3 * i)
    write_csv(root / "meta" / "esc50.csv", [ESC50_HEADER, *rows])
    return root


def _clotho(root: Path) -> Path:
    rows = [CLOTHO_HEADER]
    for i in range(6):
        rows.append(f"clip {i}.wav," + ",".join(f"sound {i} described a {j} way" for j in range(5)))
        tone(root / "evaluation" / f"clip {i}.wav", seconds=0.6, freq=250.0 + 60 * i)
    write_csv(root / "clotho_captions_evaluation.csv", rows)
    return root


def _evaluate(run: Path, shards: Path) -> tuple[dict, EmbeddingSet, BindModel]:
    done = anchorbind("eval", str(run), "--shards", str(shards), "--max-samples", "0", "--num-workers", "0",
                      cwd=run.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    return metrics, EmbeddingSet.load(run / EMBEDDINGS_FILE), BindModel.from_pretrained(run / "model").eval()


def _text(model: BindModel, texts: list[str]) -> np.ndarray:
    with torch.inference_mode():
        out = model.embed({"text": texts})["text"].numpy().astype(np.float64)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.slow
def test_esc50_protocol_on_a_trained_model_equals_brute_force(tmp_path, trained_run):
    root = _esc50(tmp_path / "ESC-50-master")
    assert anchorbind("shards", str(root), "--format", "esc50", "--out", str(tmp_path / "esc50"), "--workers", "1",
                      cwd=tmp_path).returncode == 0
    metrics, emb, model = _evaluate(trained_run, tmp_path / "esc50")
    result = metrics["protocols"]["esc50"]
    names = sorted(c.replace("_", " ") for c in CLASSES)
    templates = modality_templates(model, "audio")
    classifier = np.stack([(lambda m: m / np.linalg.norm(m))(_text(model, [t.format(n) for t in templates]).mean(0))
                           for n in names])
    rows = np.flatnonzero(emb.masks["audio"].numpy())
    scores = emb.embeddings["audio"].numpy()[rows].astype(np.float64) @ classifier.T
    truth = np.array([names.index(emb.meta[i]["attributes"]["category"]) for i in rows])
    folds = np.array([emb.meta[i]["dataset"]["fold"] for i in rows])
    correct = scores.argmax(1) == truth
    per_fold = [correct[folds == f].mean() for f in sorted(set(folds))]
    assert result["num_samples"] == 20 and result["num_classes"] == 4
    assert result["top1"] == pytest.approx(correct.mean(), abs=1e-6)
    assert result["top1_mean_over_fold"] == pytest.approx(np.mean(per_fold), abs=1e-6)
    assert list(result["table"].values()) == [round(100 * float(np.mean(per_fold)), 1)]


@pytest.mark.slow
def test_clotho_protocol_on_a_trained_model_equals_brute_force(tmp_path, trained_run):
    root = _clotho(tmp_path / "clotho")
    assert anchorbind("shards", str(root), "--format", "clotho", "--out", str(tmp_path / "clotho-shards"),
                      "--workers", "1", cwd=tmp_path).returncode == 0
    metrics, emb, model = _evaluate(trained_run, tmp_path / "clotho-shards")
    result = metrics["protocols"]["clotho"]
    rows = np.flatnonzero(emb.masks["audio"].numpy())
    clips = emb.embeddings["audio"].numpy()[rows].astype(np.float64)
    texts = [c for i in rows for c in emb.meta[i]["captions"]]
    owner = np.repeat(np.arange(len(rows)), 5)
    sims = _text(model, texts) @ clips.T
    ranks = 1 + (sims > sims[np.arange(len(texts)), owner][:, None] + 1e-7).sum(1)
    assert result["num_clips"] == 6 and result["num_captions"] == 30
    for k in (1, 5, 10):
        assert result[f"text->audio/R@{k}"] == pytest.approx((ranks <= k).mean(), abs=1e-9)
