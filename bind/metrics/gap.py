"""The modality gap: where two modalities sit on the shared unit sphere, and what moving them does.

Liang et al. 2022 ("Mind the Gap: Understanding the Modality Gap in Multi-modal Contrastive
Representation Learning", NeurIPS) showed that contrastively bound modalities occupy separate
cones of the sphere: the centroids differ by a "gap vector", the two clouds are linearly
separable, and shifting one modality along the gap changes downstream performance. Whether a
frozen image anchor (ImageBind-style binding) produces the same gap is one of AnchorBind's
research questions, so every quantity of the paper is available here:

* centroid distance ``||mean(X) - mean(Y)||`` and the angle between the centroids;
* mean cosine of true pairs, mean similarity within each modality and across modalities;
* linear separability (held-out logistic-regression accuracy at telling the modalities apart);
* uniformity (Wang & Isola 2020, "Understanding Contrastive Representation Learning through
  Alignment and Uniformity on the Hypersphere"): ``log mean exp(-t ||x - y||^2)``;
* the shift experiment: move X by ``lambda * (mean(Y) - mean(X))``, re-normalise, and re-measure
  retrieval for each lambda.

All inputs are L2-normalised ``(N, D)`` embeddings; the means of pairwise similarities use closed
forms (the mean of all pairwise dot products is the dot product of the means), so they cost
O(N D) instead of O(N^2 D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from anchorbind.errors import InputError
from anchorbind.metrics.checks import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    ArrayLike,
    as_matrix,
    resolve_chunk_size,
    resolve_device,
)
from anchorbind.metrics.probe import linear_probe, stratified_split
from anchorbind.metrics.retrieval import TieHandling, retrieval_metrics

__all__ = [
    "centroid_angle",
    "centroid_distance",
    "linear_separability",
    "mean_inter_similarity",
    "mean_intra_similarity",
    "mean_pair_cosine",
    "modality_gap_metrics",
    "shift_along_gap",
    "uniformity",
]


def _unit_rows(values: ArrayLike, name: str, min_rows: int = 1) -> torch.Tensor:
    return as_matrix(values, name, require_normalized=True, min_rows=min_rows, dtype=torch.float64)


def _same_width(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[1] != y.shape[1]:
        raise InputError("y", f"embedding widths differ: x has {x.shape[1]} dims, y has {y.shape[1]}")


def centroid_distance(x: ArrayLike, y: ArrayLike) -> float:
    """Euclidean length of the gap vector ``mean(X) - mean(Y)`` (Liang et al. 2022, Sec. 4).

    Args:
        x: ``(N, D)`` L2-normalised embeddings of one modality.
        y: ``(M, D)`` L2-normalised embeddings of the other.

    Raises:
        InputError: malformed or unnormalised embeddings, or different widths.
    """
    x64, y64 = _unit_rows(x, "x"), _unit_rows(y, "y")
    _same_width(x64, y64)
    return float((x64.mean(dim=0) - y64.mean(dim=0)).norm())


def centroid_angle(x: ArrayLike, y: ArrayLike) -> float:
    """Angle in degrees between the two modality centroids, seen from the origin.

    Complements the distance: two tight clouds far apart on the sphere have a large angle,
    two diffuse clouds (short centroids) can have a small distance and a large angle.

    Raises:
        InputError: malformed embeddings, or a centroid of (near) zero length, whose direction
            is undefined.
    """
    x64, y64 = _unit_rows(x, "x"), _unit_rows(y, "y")
    _same_width(x64, y64)
    centroid_x, centroid_y = x64.mean(dim=0), y64.mean(dim=0)
    for name, centroid in (("x", centroid_x), ("y", centroid_y)):
        if float(centroid.norm()) < 1e-12:
            raise InputError(name, "centroid is the zero vector; its direction (and the angle) is undefined")
    cosine = float(torch.dot(centroid_x, centroid_y) / (centroid_x.norm() * centroid_y.norm()))
    return math.degrees(math.acos(min(1.0, max(-1.0, cosine))))


def mean_pair_cosine(x: ArrayLike, y: ArrayLike) -> float:
    """Mean cosine similarity of true pairs ``(x_i, y_i)`` -- how well binding aligned them.

    Raises:
        InputError: malformed embeddings or different numbers of rows.
    """
    x64, y64 = _unit_rows(x, "x"), _unit_rows(y, "y")
    _same_width(x64, y64)
    if x64.shape[0] != y64.shape[0]:
        raise InputError("y", f"pairs need as many rows as x, got {x64.shape[0]} and {y64.shape[0]}")
    return float((x64 * y64).sum(dim=1).mean())


def mean_intra_similarity(x: ArrayLike) -> float:
    """Mean cosine similarity between distinct embeddings of one modality (off-diagonal mean).

    Computed as ``(||sum_i x_i||^2 - sum_i ||x_i||^2) / (N (N - 1))``, exactly the mean of the
    off-diagonal entries of ``X X^T`` without forming it. A high value means the modality
    occupies a narrow cone (Liang et al. 2022, Sec. 3).

    Raises:
        InputError: malformed embeddings or fewer than two rows.
    """
    x64 = _unit_rows(x, "x", min_rows=2)
    total = x64.sum(dim=0)
    n = x64.shape[0]
    return float((total.dot(total) - (x64 * x64).sum()) / (n * (n - 1)))


def mean_inter_similarity(x: ArrayLike, y: ArrayLike) -> float:
    """Mean cosine similarity over all ``N x M`` cross-modal pairs, ``mean(X) . mean(Y)``.

    Raises:
        InputError: malformed embeddings or different widths.
    """
    x64, y64 = _unit_rows(x, "x"), _unit_rows(y, "y")
    _same_width(x64, y64)
    return float(x64.mean(dim=0).dot(y64.mean(dim=0)))


def linear_separability(x: ArrayLike, y: ArrayLike, *, test_size: float = 0.3, seed: int = 0, C: float = 1.0) -> float:
    """Held-out accuracy of a linear classifier telling modality X from modality Y.

    Liang et al. 2022 report that embeddings of different modalities are almost perfectly
    linearly separable; 0.5 (for balanced inputs) means the modalities are indistinguishable.
    Uses :func:`anchorbind.metrics.probe.linear_probe` on a stratified split.

    Args:
        x: ``(N, D)`` L2-normalised embeddings of one modality.
        y: ``(M, D)`` L2-normalised embeddings of the other.
        test_size: fraction of the rows held out for scoring.
        seed: seed of the split and of the solver.
        C: inverse L2-regularisation strength of the probe.

    Raises:
        InputError: malformed embeddings, or fewer than two rows per modality.
    """
    x64, y64 = _unit_rows(x, "x", min_rows=2), _unit_rows(y, "y", min_rows=2)
    _same_width(x64, y64)
    features = torch.cat([x64, y64]).numpy()
    modality = np.concatenate([np.zeros(len(x64), dtype=np.int64), np.ones(len(y64), dtype=np.int64)])
    train, test = stratified_split(modality, test_size=test_size, seed=seed)
    result = linear_probe(features, modality, train_indices=train, test_indices=test, C=C, seed=seed)
    return result["accuracy"]


def uniformity(
    x: ArrayLike,
    t: float = 2.0,
    *,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: str | torch.device | None = None,
) -> float:
    """Wang & Isola's uniformity ``log E_{i != j} exp(-t ||x_i - x_j||^2)`` (lower = more uniform).

    Their reference code averages over ``torch.pdist`` pairs (i < j); the mean over all ordered
    pairs i != j is the same number. The N^2 pairs are visited in row chunks with a running
    log-sum-exp, so memory stays ``chunk x N``.

    Args:
        x: ``(N, D)`` L2-normalised embeddings, N >= 2.
        t: temperature of the Gaussian potential (2 in the paper).
        chunk_size: rows per chunk; derived from ``memory_budget_bytes`` when None.
        memory_budget_bytes: working-memory budget used to pick ``chunk_size``.
        device: where the distances are computed (CPU when None).

    Raises:
        InputError: malformed embeddings or fewer than two rows.
        ValueError: non-positive ``t``.
    """
    if t <= 0:
        raise ValueError(f"t must be positive, got {t}")
    points = as_matrix(x, "x", device=resolve_device(device), require_normalized=True, min_rows=2)
    n = points.shape[0]
    chunk = resolve_chunk_size(chunk_size, n, 16, memory_budget_bytes)  # distances + potential + temps
    squared_norms = (points * points).sum(dim=1)
    total = torch.tensor(float("-inf"), dtype=torch.float64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        squared_distances = squared_norms[start:stop, None] + squared_norms[None, :] - 2 * points[start:stop] @ points.T
        potential = -t * squared_distances.clamp(min=0)
        rows = torch.arange(stop - start, device=potential.device)
        potential[rows, rows + start] = float("-inf")  # i == j is not a pair
        total = torch.logaddexp(total, torch.logsumexp(potential.flatten(), dim=0).double().cpu())
    return float(total) - math.log(n * (n - 1))


def modality_gap_metrics(
    x: ArrayLike,
    y: ArrayLike,
    *,
    names: tuple[str, str] = ("x", "y"),
    paired: bool | None = None,
    separability: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Every modality-gap statistic of :mod:`anchorbind.metrics.gap` for one pair of modalities.

    Args:
        x: ``(N, D)`` L2-normalised embeddings of the first modality.
        y: ``(M, D)`` L2-normalised embeddings of the second modality.
        names: modality names used in the per-modality keys (``intra_similarity/<name>``).
        paired: whether row i of x and row i of y are a true pair (adds ``mean_pair_cosine``);
            None means "paired when N == M".
        separability: also fit the linear-separability probe (the only non-closed-form part).
        seed: seed of the separability split and solver.
        device: where uniformity's pairwise distances are computed (CPU when None).

    Returns:
        ``centroid_distance``, ``centroid_angle_deg``, ``inter_similarity``,
        ``intra_similarity/<name>`` and ``uniformity/<name>`` for both modalities, plus
        ``mean_pair_cosine`` when paired and ``linear_separability`` when requested.

    Raises:
        InputError: malformed or unnormalised embeddings, fewer than two rows, different widths.
    """
    x_tensor = as_matrix(x, "x", require_normalized=True, min_rows=2)
    y_tensor = as_matrix(y, "y", require_normalized=True, min_rows=2)
    if paired is None:
        paired = x_tensor.shape[0] == y_tensor.shape[0]
    metrics = {
        "centroid_distance": centroid_distance(x_tensor, y_tensor),
        "centroid_angle_deg": centroid_angle(x_tensor, y_tensor),
        "inter_similarity": mean_inter_similarity(x_tensor, y_tensor),
    }
    for name, tensor in zip(names, (x_tensor, y_tensor), strict=True):
        metrics[f"intra_similarity/{name}"] = mean_intra_similarity(tensor)
        metrics[f"uniformity/{name}"] = uniformity(tensor, device=device)
    if paired:
        metrics["mean_pair_cosine"] = mean_pair_cosine(x_tensor, y_tensor)
    if separability:
        metrics["linear_separability"] = linear_separability(x_tensor, y_tensor, seed=seed)
    return metrics


def shift_along_gap(
    x: ArrayLike,
    y: ArrayLike,
    lambdas: Sequence[float],
    *,
    x_labels: ArrayLike | None = None,
    y_labels: ArrayLike | None = None,
    ks: Sequence[int] = (1, 5, 10),
    ties: TieHandling = "optimistic",
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: str | torch.device | None = None,
) -> list[dict[str, float]]:
    """Liang et al.'s embedding-shift experiment: close (or widen) the gap and re-measure retrieval.

    For each ``lambda`` the X embeddings become ``normalise(x + lambda * (mean(Y) - mean(X)))``
    (lambda = 1 moves X's centroid onto Y's before re-normalisation, lambda < 0 widens the gap)
    and X -> Y retrieval is measured again with :func:`anchorbind.metrics.retrieval.retrieval_metrics`.
    The gap vector is computed once from the unshifted inputs. If retrieval barely moves while
    the gap closes, the gap is not what limits cross-modal performance.

    Args:
        x: ``(N, D)`` L2-normalised query embeddings (the modality that is moved).
        y: ``(M, D)`` L2-normalised gallery embeddings; paired with x when N == M.
        lambdas: shift strengths; include 0 for the unshifted baseline.
        x_labels: labels of x, with ``y_labels`` adds category-level retrieval.
        y_labels: labels of y.
        ks: recall cut-offs.
        ties: tie rule of the retrieval metrics.
        chunk_size: queries per chunk of the retrieval computation.
        memory_budget_bytes: working-memory budget used to pick ``chunk_size``.
        device: where similarities are computed (CPU when None).

    Returns:
        One dict per lambda, in order: ``lambda``, ``centroid_distance`` and
        ``centroid_angle_deg`` after the shift, and every key of ``retrieval_metrics``
        (``instance/R@1``, ``category/R@1``, ...).

    Raises:
        InputError: malformed embeddings, or a shift that sends a row to the origin.
    """
    if not lambdas:
        raise ValueError("lambdas is empty")
    x_tensor = as_matrix(x, "x", require_normalized=True)
    y_tensor = as_matrix(y, "y", require_normalized=True)
    _same_width(x_tensor, y_tensor)
    gap_vector = (y_tensor.double().mean(dim=0) - x_tensor.double().mean(dim=0)).float()
    results = []
    for lam in lambdas:
        moved = x_tensor + float(lam) * gap_vector
        if bool((moved.norm(dim=1) < 1e-6).any()):
            raise InputError("x", f"lambda={lam} moves a row to the origin; it has no direction to re-normalise")
        shifted = F.normalize(moved, dim=1)
        entry = {
            "lambda": float(lam),
            "centroid_distance": centroid_distance(shifted, y_tensor),
            "centroid_angle_deg": centroid_angle(shifted, y_tensor),
        }
        entry.update(
            retrieval_metrics(
                shifted,
                y_tensor,
                query_labels=x_labels,
                gallery_labels=y_labels,
                ks=ks,
                ties=ties,
                chunk_size=chunk_size,
                memory_budget_bytes=memory_budget_bytes,
                device=device,
            )
        )
        results.append(entry)
    return results
