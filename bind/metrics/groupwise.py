"""Group-wise structure of the joint space: do embeddings group by meaning or by modality?

When image, audio, depth and text embeddings of the same classes are stacked into one set, a
well-bound space groups them by class whatever their modality, while a space with a large
modality gap (Liang et al. 2022) groups them by modality. Two standard read-outs measure this,
both through scikit-learn:

* **k-means V-measure** (Rosenberg & Hirschberg 2007, "V-Measure: A Conditional Entropy-Based
  External Cluster Evaluation Measure"): cluster the stacked set with k-means into as many
  clusters as classes, then score the clusters against the class labels (semantic grouping)
  and against the modality labels (modality grouping).
* **k-NN accuracy** with cosine distance, leave-one-out over the stacked set or on a given
  train/test split -- how often a sample's neighbours, of any modality, share its class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import homogeneity_completeness_v_measure
from sklearn.neighbors import KNeighborsClassifier

from anchorbind.errors import InputError
from anchorbind.metrics.checks import ArrayLike, as_label_array, as_matrix

__all__ = [
    "StackedEmbeddings",
    "groupwise_metrics",
    "kmeans_clusters",
    "kmeans_v_measure",
    "knn_accuracy",
    "stack_modalities",
]


@dataclass(frozen=True)
class StackedEmbeddings:
    """Several modalities' embeddings in one matrix, with per-row class and modality labels.

    Attributes:
        features: ``(sum N_m, D)`` float32 embeddings, modalities in the order given.
        labels: ``(sum N_m,)`` class labels.
        modalities: ``(sum N_m,)`` modality name of each row.
    """

    features: np.ndarray
    labels: np.ndarray
    modalities: np.ndarray


def stack_modalities(embeddings: Mapping[str, ArrayLike], labels: Mapping[str, ArrayLike]) -> StackedEmbeddings:
    """Stacks ``{modality: (N_m, D)}`` embeddings and their labels into one labelled set.

    Args:
        embeddings: embeddings per modality name; all of one width.
        labels: class labels per modality, same keys as ``embeddings``.

    Raises:
        InputError: missing or extra label entries, mismatched lengths or widths.
    """
    if not embeddings:
        raise InputError("embeddings", "no modalities given")
    if set(embeddings) != set(labels):
        raise InputError(
            "labels", f"modalities differ: embeddings have {sorted(embeddings)}, labels have {sorted(labels)}"
        )
    features, label_parts, modality_parts = [], [], []
    for name, values in embeddings.items():
        matrix = as_matrix(values, f"embeddings[{name!r}]").numpy()
        features.append(matrix)
        label_parts.append(as_label_array(labels[name], matrix.shape[0], f"labels[{name!r}]"))
        modality_parts.append(np.full(matrix.shape[0], name, dtype=object))
    widths = {matrix.shape[1] for matrix in features}
    if len(widths) != 1:
        raise InputError("embeddings", f"modalities have different widths {sorted(widths)}; not one joint space")
    return StackedEmbeddings(
        features=np.concatenate(features),
        labels=np.concatenate(label_parts),
        modalities=np.concatenate(modality_parts),
    )


def kmeans_clusters(features: ArrayLike, n_clusters: int, *, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """Cluster assignment of every row by scikit-learn's ``KMeans``.

    Args:
        features: ``(N, D)`` embeddings (L2-normalised embeddings make this spherical k-means
            in effect, the natural choice for cosine spaces).
        n_clusters: number of clusters, ``1..N``.
        seed: ``random_state`` of the initialisation.
        n_init: restarts; the best inertia wins.

    Raises:
        InputError: malformed features.
        ValueError: ``n_clusters`` out of range.
    """
    matrix = as_matrix(features, "features").numpy()
    if not 1 <= n_clusters <= matrix.shape[0]:
        raise ValueError(f"n_clusters={n_clusters} is outside 1..{matrix.shape[0]}")
    return KMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init).fit_predict(matrix)


def kmeans_v_measure(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    n_clusters: int | None = None,
    seed: int = 0,
    n_init: int = 10,
) -> dict[str, float]:
    """V-measure (with homogeneity and completeness) of k-means clusters against ``labels``.

    Args:
        features: ``(N, D)`` embeddings.
        labels: ``(N,)`` ground-truth groups.
        n_clusters: defaults to the number of distinct labels.
        seed: ``random_state`` of k-means.
        n_init: k-means restarts.

    Returns:
        ``v_measure``, ``homogeneity``, ``completeness`` in [0, 1] and ``n_clusters``.

    Raises:
        InputError: malformed features or labels.
        ValueError: more clusters than rows.
    """
    matrix = as_matrix(features, "features").numpy()
    label_array = _one_label_per_row(labels, matrix.shape[0])
    clusters_wanted = len(np.unique(label_array)) if n_clusters is None else n_clusters
    clusters = kmeans_clusters(matrix, clusters_wanted, seed=seed, n_init=n_init)
    homogeneity, completeness, v_measure = homogeneity_completeness_v_measure(label_array, clusters)
    return {
        "v_measure": float(v_measure),
        "homogeneity": float(homogeneity),
        "completeness": float(completeness),
        "n_clusters": float(clusters_wanted),
    }


def knn_accuracy(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    k: int = 10,
    train_indices: Sequence[int] | np.ndarray | None = None,
    test_indices: Sequence[int] | np.ndarray | None = None,
) -> dict[str, float]:
    """Cosine k-NN classification accuracy: leave-one-out, or train/test when a split is given.

    Leave-one-out uses ``KNeighborsClassifier.fit(X, y).predict(None)``, which scikit-learn
    defines as predicting every training point without counting it as its own neighbour --
    exactly leave-one-out, without N refits. Votes are uniform; scikit-learn breaks vote ties
    towards the smallest label.

    Args:
        features: ``(N, D)`` embeddings.
        labels: ``(N,)`` class labels.
        k: neighbours that vote.
        train_indices: rows that form the neighbour index (with ``test_indices``).
        test_indices: rows that are classified; must not overlap the training rows.

    Returns:
        ``accuracy`` in [0, 1], ``k`` and ``num_evaluated``.

    Raises:
        InputError: malformed features or labels.
        ValueError: k larger than the available neighbours, or a bad split.
    """
    matrix = as_matrix(features, "features", min_rows=2).numpy()
    label_array = _one_label_per_row(labels, matrix.shape[0])
    if (train_indices is None) != (test_indices is None):
        raise ValueError("pass both train_indices and test_indices, or neither for leave-one-out")
    classifier = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    if train_indices is None or test_indices is None:
        if not 1 <= k <= matrix.shape[0] - 1:
            raise ValueError(f"k={k} is outside 1..{matrix.shape[0] - 1} for leave-one-out on {matrix.shape[0]} rows")
        predicted = classifier.fit(matrix, label_array).predict(None)
        truth = label_array
    else:
        train = np.asarray(train_indices, dtype=np.int64).reshape(-1)
        test = np.asarray(test_indices, dtype=np.int64).reshape(-1)
        if len(np.intersect1d(train, test)):
            raise ValueError("train_indices and test_indices overlap; the evaluation would not be held out")
        if not 1 <= k <= len(train):
            raise ValueError(f"k={k} is outside 1..{len(train)} (training rows)")
        predicted = classifier.fit(matrix[train], label_array[train]).predict(matrix[test])
        truth = label_array[test]
    return {
        "accuracy": float(np.mean(predicted == truth)),
        "k": float(k),
        "num_evaluated": float(len(truth)),
    }


def groupwise_metrics(
    embeddings: Mapping[str, ArrayLike],
    labels: Mapping[str, ArrayLike],
    *,
    k: int = 10,
    seed: int = 0,
    n_init: int = 10,
) -> dict[str, float]:
    """k-means V-measure and leave-one-out k-NN accuracy on several modalities stacked together.

    One k-means clustering (as many clusters as classes) is scored twice: against the class
    labels (high = the space groups by meaning) and against the modality labels (high = the
    space groups by modality, i.e. a modality gap dominates).

    Args:
        embeddings: ``{modality: (N_m, D)}`` embeddings in one joint space.
        labels: ``{modality: (N_m,)}`` class labels, shared vocabulary across modalities.
        k: neighbours of the k-NN classifier.
        seed: ``random_state`` of k-means.
        n_init: k-means restarts.

    Returns:
        ``kmeans/v_measure``, ``kmeans/homogeneity``, ``kmeans/completeness``,
        ``kmeans/v_measure_vs_modality``, ``knn/accuracy`` and the counts ``num_samples``,
        ``num_classes``, ``num_modalities``.

    Raises:
        InputError: malformed or mismatched embeddings and labels (see :func:`stack_modalities`).
        ValueError: k not smaller than the number of stacked rows.
    """
    stacked = stack_modalities(embeddings, labels)
    num_classes = len(np.unique(stacked.labels))
    clusters = kmeans_clusters(stacked.features, num_classes, seed=seed, n_init=n_init)
    homogeneity, completeness, v_measure = homogeneity_completeness_v_measure(stacked.labels, clusters)
    _, _, v_modality = homogeneity_completeness_v_measure(stacked.modalities, clusters)
    knn = knn_accuracy(stacked.features, stacked.labels, k=k)
    return {
        "kmeans/v_measure": float(v_measure),
        "kmeans/homogeneity": float(homogeneity),
        "kmeans/completeness": float(completeness),
        "kmeans/v_measure_vs_modality": float(v_modality),
        "knn/accuracy": knn["accuracy"],
        "num_samples": float(len(stacked.labels)),
        "num_classes": float(num_classes),
        "num_modalities": float(len(embeddings)),
    }


def _one_label_per_row(labels: ArrayLike, num_rows: int) -> np.ndarray:
    label_array = as_label_array(labels, num_rows, "labels")
    if label_array.ndim != 1:
        raise InputError("labels", f"expected one label per row, got shape {label_array.shape}")
    return label_array
