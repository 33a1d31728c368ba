"""Group-wise metrics reproduce direct scikit-learn calls and read constructed spaces correctly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import v_measure_score
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier

from anchorbind.errors import InputError
from anchorbind.metrics import groupwise_metrics, kmeans_v_measure, knn_accuracy, stack_modalities


def clustered(seed: int, rows: int = 60, dim: int = 8, classes: int = 4, spread: float = 0.6):
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % classes
    centres = rng.normal(size=(classes, dim))
    points = centres[labels] + spread * rng.normal(size=(rows, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32), labels


def test_v_measure_matches_direct_sklearn_kmeans():
    features, labels = clustered(0, spread=1.2)
    result = kmeans_v_measure(features, labels, seed=1)
    clusters = KMeans(n_clusters=4, random_state=1, n_init=10).fit_predict(features)
    assert result["v_measure"] == pytest.approx(v_measure_score(labels, clusters), abs=1e-12)
    assert result["n_clusters"] == 4
    assert 0.0 < result["v_measure"] <= 1.0


@pytest.mark.parametrize("k", [1, 5])
def test_leave_one_out_knn_matches_sklearn_cross_val_predict(k):
    features, labels = clustered(1, rows=40, spread=1.5)
    result = knn_accuracy(features, labels, k=k)
    classifier = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    predicted = cross_val_predict(classifier, features, labels, cv=LeaveOneOut())
    assert result["accuracy"] == pytest.approx(np.mean(predicted == labels), abs=1e-12)
    assert result["num_evaluated"] == 40


def test_train_test_knn_matches_direct_sklearn():
    features, labels = clustered(2, spread=1.5)
    train, test = np.arange(0, 40), np.arange(40, 60)
    result = knn_accuracy(torch.from_numpy(features), labels, k=3, train_indices=train, test_indices=test)
    classifier = KNeighborsClassifier(n_neighbors=3, metric="cosine", algorithm="brute")
    expected = classifier.fit(features[train], labels[train]).score(features[test], labels[test])
    assert result["accuracy"] == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="overlap"):
        knn_accuracy(features, labels, train_indices=train, test_indices=[39, 40])
    with pytest.raises(ValueError, match="k=60"):
        knn_accuracy(features, labels, k=60)


def test_well_bound_space_groups_by_class_and_gapped_space_by_modality():
    rng = np.random.default_rng(3)
    dim, classes, per_class = 16, 4, 10
    centres = 3 * rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)

    def modality(offset: np.ndarray) -> np.ndarray:
        points = centres[labels] + offset + 0.3 * rng.normal(size=(len(labels), dim))
        return points / np.linalg.norm(points, axis=1, keepdims=True)

    bound = groupwise_metrics({"image": modality(0), "audio": modality(0)}, {"image": labels, "audio": labels}, k=5)
    assert bound["kmeans/v_measure"] > 0.9 and bound["kmeans/v_measure_vs_modality"] < 0.1
    assert bound["knn/accuracy"] > 0.9
    gap = 40 * np.eye(dim)[0]
    gapped = groupwise_metrics(
        {"image": modality(gap), "audio": modality(-gap)}, {"image": labels, "audio": labels}, k=5
    )
    assert gapped["kmeans/v_measure_vs_modality"] > bound["kmeans/v_measure_vs_modality"] + 0.3
    assert gapped["num_samples"] == 80 and gapped["num_classes"] == 4 and gapped["num_modalities"] == 2


def test_stack_modalities_labels_each_row_and_refuses_mismatches():
    stacked = stack_modalities(
        {"image": np.eye(3, dtype=np.float32), "audio": np.ones((2, 3))}, {"image": [0, 1, 2], "audio": ["a", "b"]}
    )
    assert stacked.features.shape == (5, 3)
    assert stacked.modalities.tolist() == ["image"] * 3 + ["audio"] * 2
    with pytest.raises(InputError, match="modalities differ"):
        stack_modalities({"image": np.eye(3)}, {"audio": [0, 1, 2]})
    with pytest.raises(InputError, match="different widths"):
        stack_modalities({"image": np.eye(3), "audio": np.eye(2)}, {"image": [0, 1, 2], "audio": [0, 1]})
    with pytest.raises(InputError, match="audio"):
        stack_modalities({"image": np.eye(3), "audio": np.eye(3)}, {"image": [0, 1, 2], "audio": [0, 1]})
