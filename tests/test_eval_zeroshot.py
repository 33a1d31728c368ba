"""Zero-shot classification: CLIP prompt ensembling and top-k accuracy against sklearn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import top_k_accuracy_score

from anchorbind.errors import InputError
from anchorbind.metrics import (
    ANCHOR_TEMPLATES,
    DEFAULT_TEMPLATES,
    build_prompts,
    zero_shot_accuracy,
    zero_shot_classifier,
    zero_shot_predict,
)


def random(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_build_prompts_fills_every_template():
    prompts = build_prompts(["dog", "church bell"], ["a {}.", "the sound of a {}."])
    assert prompts == [["a dog.", "the sound of a dog."], ["a church bell.", "the sound of a church bell."]]
    assert DEFAULT_TEMPLATES == ("a {}.",)  # names no modality: plugins declare their own
    for templates in (ANCHOR_TEMPLATES, DEFAULT_TEMPLATES):
        build_prompts(["x"], templates)  # every template of the core is well-formed
    with pytest.raises(ValueError, match="placeholder"):
        build_prompts(["dog"], ["a photo"])
    with pytest.raises(ValueError, match="empty"):
        build_prompts([], DEFAULT_TEMPLATES)


def test_classifier_is_the_renormalised_mean_of_normalised_prompts():
    prompts = random((5, 4, 16), 0).numpy()
    expected = []
    for class_prompts in prompts:
        unit = class_prompts / np.linalg.norm(class_prompts, axis=1, keepdims=True)
        mean = unit.mean(axis=0)
        expected.append(mean / np.linalg.norm(mean))
    classifier = zero_shot_classifier(torch.from_numpy(prompts))
    np.testing.assert_allclose(classifier.numpy(), np.stack(expected), atol=1e-6)


def test_classifier_ignores_prompt_norms_and_accepts_ragged_lists():
    prompts = [random((3, 8), 1), random((5, 8), 2)]
    rescaled = [prompts[0] * torch.tensor([[1.0], [7.0], [0.1]]), prompts[1] * 3.0]
    torch.testing.assert_close(zero_shot_classifier(prompts), zero_shot_classifier(rescaled))
    assert zero_shot_classifier(prompts).shape == (2, 8)
    with pytest.raises(InputError, match="different embedding widths"):
        zero_shot_classifier([random((3, 8), 3), random((3, 4), 4)])


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_accuracy_matches_sklearn_top_k(chunk_size):
    classifier = zero_shot_classifier(random((10, 3, 12), 5))
    embeddings = random((60, 12), 6)
    labels = np.random.default_rng(7).integers(0, 10, 60)
    result = zero_shot_accuracy(embeddings, labels, classifier, ks=(1, 3, 5), chunk_size=chunk_size)
    scores = (embeddings @ classifier.T).numpy()
    for k in (1, 3, 5):
        expected = top_k_accuracy_score(labels, scores, k=k, labels=np.arange(10))
        assert result[f"acc@{k}"] == pytest.approx(expected, abs=1e-12)
    assert result["num_samples"] == 60
    predicted = zero_shot_predict(embeddings, classifier, chunk_size=chunk_size)
    assert result["acc@1"] == pytest.approx(float(np.mean(predicted.numpy() == labels)), abs=1e-12)


def test_accuracy_separates_a_constructed_solvable_problem():
    classifier = torch.eye(4)
    embeddings = torch.eye(4).repeat(3, 1) + 0.1 * random((12, 4), 8)
    labels = np.tile(np.arange(4), 3)
    assert zero_shot_accuracy(embeddings, labels, classifier, ks=(1,))["acc@1"] == 1.0
    shuffled = (labels + 1) % 4
    assert zero_shot_accuracy(embeddings, shuffled, classifier, ks=(1,))["acc@1"] == 0.0


def test_bad_labels_and_ks_are_refused():
    classifier = torch.eye(3)
    embeddings = random((4, 3), 9)
    with pytest.raises(InputError, match=r"0\.\.2"):
        zero_shot_accuracy(embeddings, [0, 1, 2, 3], classifier, ks=(1,))
    with pytest.raises(InputError, match="integer"):
        zero_shot_accuracy(embeddings, ["a", "b", "c", "a"], classifier, ks=(1,))
    with pytest.raises(ValueError, match="k=5"):
        zero_shot_accuracy(embeddings, [0, 1, 2, 0], classifier)  # default ks=(1, 5), only 3 classes
    with pytest.raises(InputError, match="widths differ"):
        zero_shot_accuracy(random((4, 5), 10), [0, 1, 2, 0], classifier, ks=(1,))
