"""Linear probes: how much label information an embedding exposes to a linear classifier.

The linear probe is the standard read-out of representation quality (Alain & Bengio 2016,
"Understanding intermediate layers using linear classifier probes"; Radford et al. 2021 use it
for CLIP). AnchorBind uses it twice: to measure what non-visual information survives binding
(probing audio or depth embeddings for their own labels) and, with modality identity as the
label, to measure how linearly separable two modalities are (the modality gap).

The classifier is scikit-learn's ``LogisticRegression`` behind a ``StandardScaler``:
standardising makes the L2 penalty ``C`` mean the same thing for every embedding scale.
Optionally a PCA to ``components`` dimensions comes first. A plugin's bound embedding is the
normalised output of a linear head, so it spans at most trunk-width + 1 of the anchor's
dimensions (128 of 1280 for the demo audio); standardising the ~1150 empty directions makes the
logistic regression badly conditioned and L-BFGS 10-30x slower, for nothing a linear probe can
use. Projecting onto the leading components first keeps the probe fast on wide embeddings.

Results are a function of the features, the labels and ``seed`` alone: the folds are shuffled
and the PCA and solver seeded with it, and the features are fitted in float64, so that a
different BLAS thread count (which reorders floating-point sums) cannot flip a prediction at the
precision a float32 fit would leave. :func:`cross_validated_probe` keeps every row's
out-of-fold prediction, which significance tests and bootstrap intervals need.

Fits run with one BLAS thread (``threadpoolctl``). A probe's matrices are a few hundred rows
wide, too small for threads to pay off, and inside an evaluation torch's OpenMP workers keep
spinning after each tensor op: OpenBLAS threads competing with them made the same fit 2-4x
slower (``bench/bench_probe.py``). The predictions are the same either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from anchorbind.errors import InputError
from anchorbind.metrics.checks import ArrayLike, as_label_array, as_matrix

__all__ = ["CrossValidatedProbe", "cross_validated_probe", "linear_probe", "make_linear_probe",
           "stratified_split"]

PROBE_BLAS_THREADS = 1
"""BLAS threads of a probe fit (see the module docstring for why one)."""


def make_linear_probe(*, C: float = 1.0, max_iter: int = 1000, seed: int = 0,
                      components: int | None = None) -> Pipeline:
    """An unfitted ``[PCA ->] StandardScaler -> LogisticRegression`` pipeline (multinomial for >2 classes).

    Args:
        C: inverse L2-regularisation strength of the logistic regression.
        max_iter: solver iterations; embeddings of a few hundred dims converge well within 1000.
        seed: ``random_state`` of the solver (and of the PCA), for reproducible results.
        components: project onto this many principal components first (None: no PCA).
    """
    steps = [PCA(n_components=components, random_state=seed)] if components else []
    return make_pipeline(*steps, StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))


def stratified_split(labels: ArrayLike, test_size: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train/test index arrays with the class proportions of ``labels`` in both parts.

    Stratifying keeps a held-out accuracy comparable across runs and classes balanced even for
    small evaluation sets.

    Raises:
        InputError: a class with fewer than two samples (it cannot appear on both sides).
    """
    label_array = np.asarray(labels)
    _check_class_counts(label_array, minimum=2, why="a stratified train/test split")
    indices = np.arange(len(label_array))
    train, test = train_test_split(indices, test_size=test_size, random_state=seed, stratify=label_array)
    return np.sort(train), np.sort(test)


def linear_probe(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    train_indices: Sequence[int] | np.ndarray | None = None,
    test_indices: Sequence[int] | np.ndarray | None = None,
    cv_folds: int = 5,
    C: float = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
    components: int | None = None,
) -> dict[str, float]:
    """Accuracy of a standardised logistic-regression probe, on a given split or by stratified CV.

    Args:
        features: ``(N, D)`` embeddings.
        labels: ``(N,)`` class labels (ints or strings).
        train_indices: rows to fit on; with ``test_indices`` selects held-out evaluation.
        test_indices: rows to score; must not overlap the training rows.
        cv_folds: folds of ``StratifiedKFold`` (shuffled with ``seed``) when no split is given.
        C: inverse L2-regularisation strength.
        max_iter: solver iterations.
        seed: seed of the fold shuffling and of the solver.
        components: at most this many principal components (fitted on each training part) feed
            the classifier; fewer when the features or the training rows are fewer. None: all
            features, no PCA.

    Returns:
        With a split: ``accuracy``, ``balanced_accuracy``, ``num_train``, ``num_test``.
        With CV: ``accuracy`` and ``balanced_accuracy`` (means over folds), ``accuracy_std``,
        ``num_folds``. Accuracies are fractions in [0, 1].

    Raises:
        InputError: malformed features or labels, fewer than two classes, or a class too small
            for the requested folds.
        ValueError: only one of the index arrays, overlapping or out-of-range indices.
    """
    matrix = as_matrix(features, "features", dtype=torch.float64).numpy()
    label_array = _one_label_per_row(labels, matrix.shape[0])
    if (train_indices is None) != (test_indices is None):
        raise ValueError("pass both train_indices and test_indices, or neither for cross-validation")
    if train_indices is not None and test_indices is not None:
        train, test = _check_split(train_indices, test_indices, matrix.shape[0])
        probe = make_linear_probe(C=C, max_iter=max_iter, seed=seed,
                                  components=_pca_size(components, matrix.shape[1], len(train)))
        _check_class_counts(label_array[train], minimum=1, why="training a classifier")
        with threadpool_limits(PROBE_BLAS_THREADS, user_api="blas"):
            probe.fit(matrix[train], label_array[train])
            predicted = probe.predict(matrix[test])
        return {
            "accuracy": float(accuracy_score(label_array[test], predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(label_array[test], predicted)),
            "num_train": float(len(train)),
            "num_test": float(len(test)),
        }
    cv = cross_validated_probe(matrix, label_array, cv_folds=cv_folds, C=C, max_iter=max_iter, seed=seed,
                               components=components)
    return {
        "accuracy": float(np.mean(cv.fold_accuracy)),
        "accuracy_std": float(np.std(cv.fold_accuracy)),
        "balanced_accuracy": float(np.mean(cv.fold_balanced_accuracy)),
        "num_folds": float(cv_folds),
    }


@dataclass(frozen=True)
class CrossValidatedProbe:
    """Out-of-fold predictions of a stratified cross-validated probe, per row and per fold.

    Attributes:
        predictions: ``(N,)`` the label each row got from the probe fitted without its fold.
        correct: ``(N,)`` whether that prediction is right.
        fold: ``(N,)`` the fold (0-based) each row was held out in.
        fold_accuracy: ``(folds,)`` accuracy on each held-out fold.
        fold_balanced_accuracy: ``(folds,)`` balanced accuracy on each held-out fold.
    """

    predictions: np.ndarray
    correct: np.ndarray
    fold: np.ndarray
    fold_accuracy: np.ndarray
    fold_balanced_accuracy: np.ndarray

    @property
    def num_correct(self) -> int:
        """Correct out-of-fold predictions, the count a binomial test against chance takes."""
        return int(self.correct.sum())


def cross_validated_probe(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    cv_folds: int = 5,
    C: float = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
    components: int | None = None,
) -> CrossValidatedProbe:
    """Stratified k-fold probe that keeps each row's out-of-fold prediction.

    The folds (``StratifiedKFold`` shuffled with ``seed``) depend only on the labels and the
    seed, so two feature sets of the same rows (native features, bound embeddings) are split
    identically and their per-row predictions are paired. Fold scores equal scikit-learn's
    ``cross_validate`` with the same pipeline and folds.

    Raises:
        InputError: malformed features or labels, fewer than two classes, or a class with
            fewer than ``cv_folds`` samples.
        ValueError: ``cv_folds`` < 2.
    """
    matrix = as_matrix(features, "features", dtype=torch.float64).numpy()
    label_array = _one_label_per_row(labels, matrix.shape[0])
    if cv_folds < 2:
        raise ValueError(f"cv_folds must be at least 2, got {cv_folds}")
    _check_class_counts(label_array, minimum=cv_folds, why=f"{cv_folds}-fold stratified cross-validation")
    folds = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    smallest_train = matrix.shape[0] - -(-matrix.shape[0] // cv_folds)
    template = make_linear_probe(C=C, max_iter=max_iter, seed=seed,
                                 components=_pca_size(components, matrix.shape[1], smallest_train))
    predictions = np.empty(len(label_array), dtype=label_array.dtype)
    fold_of_row = np.empty(len(label_array), dtype=np.int64)
    accuracy, balanced = [], []
    for index, (train, test) in enumerate(folds.split(matrix, label_array)):
        with threadpool_limits(PROBE_BLAS_THREADS, user_api="blas"):
            predicted = clone(template).fit(matrix[train], label_array[train]).predict(matrix[test])
        predictions[test], fold_of_row[test] = predicted, index
        accuracy.append(accuracy_score(label_array[test], predicted))
        balanced.append(balanced_accuracy_score(label_array[test], predicted))
    return CrossValidatedProbe(predictions=predictions, correct=predictions == label_array, fold=fold_of_row,
                               fold_accuracy=np.asarray(accuracy, dtype=np.float64),
                               fold_balanced_accuracy=np.asarray(balanced, dtype=np.float64))


def _one_label_per_row(labels: ArrayLike, num_rows: int) -> np.ndarray:
    label_array = as_label_array(labels, num_rows, "labels")
    if label_array.ndim != 1:
        raise InputError("labels", f"expected one label per sample, got shape {label_array.shape}")
    return label_array


def _pca_size(components: int | None, dims: int, train_rows: int) -> int | None:
    """The PCA size that fits the data, or None when a PCA would not reduce anything."""
    if components is None:
        return None
    if components < 1:
        raise ValueError(f"components must be at least 1, got {components}")
    size = min(components, train_rows)
    return size if size < dims else None


def _check_split(
    train_indices: Sequence[int] | np.ndarray, test_indices: Sequence[int] | np.ndarray, num_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    train = np.asarray(train_indices, dtype=np.int64).reshape(-1)
    test = np.asarray(test_indices, dtype=np.int64).reshape(-1)
    if len(train) == 0 or len(test) == 0:
        raise ValueError("train_indices and test_indices must both be non-empty")
    for name, part in (("train_indices", train), ("test_indices", test)):
        if part.min() < 0 or part.max() >= num_rows:
            raise ValueError(f"{name} must lie in 0..{num_rows - 1}, got {part.min()}..{part.max()}")
    overlap = np.intersect1d(train, test)
    if len(overlap):
        raise ValueError(f"{len(overlap)} row(s) are in both train and test (first: {overlap[0]}); not held out")
    return train, test


def _check_class_counts(labels: np.ndarray, minimum: int, why: str) -> None:
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise InputError("labels", f"{why} needs at least two classes, got {len(classes)}")
    if counts.min() < minimum:
        smallest = classes[np.argmin(counts)]
        raise InputError(
            "labels", f"{why} needs at least {minimum} samples per class; class {smallest!r} has {counts.min()}"
        )
