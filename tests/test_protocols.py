"""Published protocols (zero-shot over folds, multi-caption retrieval) equal a brute-force computation.

The model is real (packaged MiniLM text plugin embedding the prompts and captions); the evaluated
modality's embeddings are fixed random unit vectors, so the brute force below (plain numpy over
the same vectors) is independent of the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anchorbind import BindModel
from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.protocols import declared_protocol, protocol_section
from anchorbind.evaluation.zeroshot import modality_templates

MODEL = {"anchor": {"weights": "none", "image_size": 64},
         "modalities": {"text": {}, "audio": {"width": 32, "depth": 1, "num_heads": 2}}}


@pytest.fixture(scope="module")
def model() -> BindModel:
    torch.manual_seed(0)
    return BindModel.from_config(MODEL).eval()


def _emb_set(model: BindModel, meta: list[dict], seed: int, class_vectors: dict[str, torch.Tensor] | None = None,
             audio_rows: list[int] | None = None) -> EmbeddingSet:
    """Audio embeddings: noise around a class vector (so accuracy is neither 0 nor 1), or pure noise."""
    generator = torch.Generator().manual_seed(seed)
    n, dim = len(meta), model.embed_dim
    audio = torch.randn(n, dim, generator=generator)
    if class_vectors is not None:
        for i, record in enumerate(meta):
            audio[i] = audio[i] * 0.12 + class_vectors[record["attributes"]["category"]]
    audio = F.normalize(audio, dim=1)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[audio_rows if audio_rows is not None else list(range(n))] = True
    audio[~mask] = 0
    return EmbeddingSet(keys=[f"k{i}" for i in range(n)], embeddings={"audio": audio}, features={},
                        masks={"audio": mask}, meta=meta)


def _prompt_classifier(model: BindModel, names: list[str], templates: tuple[str, ...]) -> np.ndarray:
    rows = []
    for name in names:
        with torch.inference_mode():
            text = model.embed({"text": [t.format(name) for t in templates]})["text"].numpy().astype(np.float64)
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        mean = text.mean(0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def test_zero_shot_over_folds_equals_brute_force(model):
    names = ["dog", "rain", "crying baby", "church bells"]
    templates = modality_templates(model, "audio")
    classifier = _prompt_classifier(model, names, templates)
    vectors = {n: torch.from_numpy(classifier[i]).float() * 0.3 for i, n in enumerate(names)}
    rng = np.random.default_rng(0)
    protocol = {"task": "zero_shot", "modality": "audio", "label": "category", "group_by": "fold"}
    meta = [{"attributes": {"category": names[int(rng.integers(4))]},
             "dataset": {"name": "esc50", "split": "all", "fold": 1 + i % 5, "protocol": protocol}} for i in range(60)]
    emb = _emb_set(model, meta, seed=1, class_vectors=vectors)
    notes: list[str] = []
    result = protocol_section(model, emb, notes=notes)["esc50"]

    classes = sorted(names)
    audio = emb.embeddings["audio"].numpy().astype(np.float64)
    scores = audio @ _prompt_classifier(model, classes, templates).T
    truth = np.array([classes.index(r["attributes"]["category"]) for r in meta])
    correct = scores.argmax(1) == truth
    folds = np.array([r["dataset"]["fold"] for r in meta])
    per_fold = [correct[folds == f].mean() for f in range(1, 6)]
    assert result["num_samples"] == 60 and result["num_classes"] == 4
    assert result["top1"] == pytest.approx(correct.mean(), abs=1e-12)
    assert 0.0 < result["top1"] < 1.0, "the fixture should make some mistakes"
    assert [result["by_fold"][str(f)]["top1"] for f in range(1, 6)] == pytest.approx(per_fold, abs=1e-12)
    assert result["top1_mean_over_fold"] == pytest.approx(np.mean(per_fold), abs=1e-12)
    assert result["top1_std_over_fold"] == pytest.approx(np.std(per_fold, ddof=1), abs=1e-12)
    assert list(result["table"].values()) == [round(100 * np.mean(per_fold), 1)]


def test_zero_shot_keeps_only_its_split_and_classes(model):
    protocol = {"task": "zero_shot", "modality": "audio", "label": "category", "split": "test",
                "classes": ["living_room", "bedroom", "kitchen"], "prompts": ["a depth map of a {}."]}
    cats = ["living room", "bedroom", "kitchen", "garage"]
    meta = [{"attributes": {"category": cats[i % 4]},
             "dataset": {"name": "nyuv2", "split": "test" if i % 3 else "train", "protocol": protocol}}
            for i in range(24)]
    emb = _emb_set(model, meta, seed=2)
    notes: list[str] = []
    result = protocol_section(model, emb, notes=notes)["nyuv2"]
    kept = [i for i, r in enumerate(meta)
            if r["dataset"]["split"] == "test" and r["attributes"]["category"] != "garage"]
    assert result["num_samples"] == len(kept) and result["num_classes"] == 3
    assert result["templates"] == ["a depth map of a {}."]
    classes = sorted(["living room", "bedroom", "kitchen"])
    scores = emb.embeddings["audio"].numpy()[kept] @ _prompt_classifier(model, classes, ("a depth map of a {}.",)).T
    truth = np.array([classes.index(meta[i]["attributes"]["category"]) for i in kept])
    assert result["top1"] == pytest.approx((scores.argmax(1) == truth).mean(), abs=1e-6)
    assert any("outside its 'test' split" in n for n in notes) and any("classes outside" in n for n in notes)


def test_caption_retrieval_with_five_captions_per_clip_equals_brute_force(model):
    protocol = {"task": "caption_retrieval", "modality": "audio", "captions": "captions"}
    words = ["dog", "rain", "bell", "car", "bird", "wind", "train", "piano"]
    meta = [{"captions": [f"a {w} sound number {j}" for j in range(5)],
             "dataset": {"name": "clotho", "split": "evaluation", "protocol": protocol}} for w in words]
    meta.append({"dataset": {"name": "clotho", "split": "evaluation", "protocol": protocol}})  # no captions: not a clip
    emb = _emb_set(model, meta, seed=3, audio_rows=list(range(len(words))))
    with torch.inference_mode():  # clips near the mean of their own captions, plus noise
        for i, record in enumerate(meta[:-1]):
            own = model.embed({"text": record["captions"]})["text"].mean(0)
            emb.embeddings["audio"][i] = F.normalize(own + 12.0 * emb.embeddings["audio"][i], dim=0)
    result = protocol_section(model, emb)["clotho"]

    clips = emb.embeddings["audio"].numpy()[: len(words)].astype(np.float64)
    texts = [c for r in meta[:-1] for c in r["captions"]]
    owner = np.repeat(np.arange(len(words)), 5)
    with torch.inference_mode():
        captions = model.embed({"text": texts})["text"].numpy().astype(np.float64)
    sims = captions @ clips.T
    text_ranks = 1 + (sims > sims[np.arange(len(texts)), owner][:, None]).sum(1)
    clip_ranks = []
    for c in range(len(words)):
        order = np.argsort(-sims[:, c], kind="stable")
        clip_ranks.append(1 + int(np.flatnonzero(owner[order] == c)[0]))
    clip_ranks = np.array(clip_ranks)
    assert result["num_clips"] == 8 and result["num_captions"] == 40 and result["captions_per_clip"] == 5
    for k in (1, 5, 10):
        assert result[f"text->audio/R@{k}"] == pytest.approx((text_ranks <= k).mean(), abs=1e-12)
        assert result[f"audio->text/R@{k}"] == pytest.approx((clip_ranks <= k).mean(), abs=1e-12)
    assert 0.0 < result["text->audio/R@1"] < 1.0
    assert result["table"]["clotho text->audio R@1 (%)"] == round(100 * (text_ranks <= 1).mean(), 1)


def test_no_protocol_declared_is_a_note_not_a_guess(model):
    meta = [{"attributes": {"category": "dog"}} for _ in range(4)]
    emb = _emb_set(model, meta, seed=4)
    assert declared_protocol(meta) is None
    assert protocol_section(model, emb) == {}
    notes: list[str] = []
    assert protocol_section(model, emb, protocol="esc50", notes=notes) == {}
    assert "declare no protocol" in notes[0]
