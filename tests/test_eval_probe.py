"""Linear probes reproduce direct scikit-learn calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from anchorbind.errors import InputError
from anchorbind.metrics import linear_probe, stratified_split


def dataset(seed: int, rows: int = 90, dim: int = 10, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % classes
    centres = rng.normal(size=(classes, dim))
    return (centres[labels] * 0.8 + rng.normal(size=(rows, dim))).astype(np.float32), labels


def reference_probe():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))


def test_held_out_split_matches_direct_sklearn_fit():
    features, labels = dataset(0)
    train, test = stratified_split(labels, test_size=0.3, seed=0)
    result = linear_probe(features, labels, train_indices=train, test_indices=test)
    expected = reference_probe().fit(features[train], labels[train]).score(features[test], labels[test])
    assert result["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert result["num_train"] == len(train) and result["num_test"] == len(test)
    assert 0.34 < result["accuracy"] < 1.0  # informative but not trivial


def test_cross_validation_matches_direct_sklearn_cv():
    features, labels = dataset(1)
    result = linear_probe(torch.from_numpy(features), labels, cv_folds=4, seed=3)
    folds = StratifiedKFold(n_splits=4, shuffle=True, random_state=3)
    expected = cross_val_score(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=3)),
        features,
        labels,
        cv=folds,
    )
    assert result["accuracy"] == pytest.approx(expected.mean(), abs=1e-12)
    assert result["accuracy_std"] == pytest.approx(expected.std(), abs=1e-12)
    assert result["num_folds"] == 4


def test_pca_components_match_the_sklearn_pipeline():
    features, labels = dataset(4)
    result = linear_probe(features, labels, cv_folds=3, seed=1, components=5)
    expected = cross_val_score(
        make_pipeline(PCA(n_components=5, random_state=1), StandardScaler(),
                      LogisticRegression(max_iter=1000, random_state=1)),
        features, labels, cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=1))
    assert result["accuracy"] == pytest.approx(expected.mean(), abs=1e-12)
    # more components than features (or training rows) means no PCA at all
    assert linear_probe(features, labels, cv_folds=3, seed=1, components=10_000) == linear_probe(
        features, labels, cv_folds=3, seed=1)
    with pytest.raises(ValueError, match="components"):
        linear_probe(features, labels, cv_folds=3, components=0)


def test_string_labels_and_separable_data():
    features = np.concatenate([np.full((10, 2), -1.0), np.full((10, 2), 1.0)]) + np.random.default_rng(2).normal(
        scale=0.05, size=(20, 2)
    )
    labels = np.array(["dog"] * 10 + ["bell"] * 10)
    assert linear_probe(features, labels, cv_folds=2)["accuracy"] == 1.0


def test_stratified_split_keeps_class_proportions():
    labels = np.array([0] * 40 + [1] * 20)
    train, test = stratified_split(labels, test_size=0.25, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 60
    assert np.mean(labels[test] == 1) == pytest.approx(1 / 3, abs=0.05)


def test_bad_inputs_are_refused():
    features, labels = dataset(4, rows=12)
    with pytest.raises(InputError, match="at least two classes"):
        linear_probe(features, np.zeros(12, dtype=int))
    with pytest.raises(InputError, match="at least 5 samples per class"):
        linear_probe(features, labels, cv_folds=5)  # 4 per class
    with pytest.raises(ValueError, match="both train and test"):
        linear_probe(features, labels, train_indices=[0, 1, 2, 3], test_indices=[3, 4])
    with pytest.raises(ValueError, match="both train_indices"):
        linear_probe(features, labels, train_indices=[0, 1, 2])
    with pytest.raises(InputError, match="12 samples"):
        linear_probe(features, labels[:5])
