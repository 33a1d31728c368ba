"""Representational alignment between two embeddings of the same N samples.

"How similar are the geometries of two representations?" -- e.g. a bound audio encoder and the
frozen image anchor, or the anchor and a language model -- is measured with the kernel and
neighbourhood metrics used by the Platonic Representation Hypothesis (Huh et al. 2024, "The
Platonic Representation Hypothesis", ICML). The two representations may have different widths.

* **Mutual k-NN** (Huh et al. 2024): mean over samples of ``|kNN_A(i) & kNN_B(i)| / k``,
  neighbours by cosine similarity, excluding the sample itself.
* **Linear CKA** (Kornblith et al. 2019, "Similarity of Neural Network Representations
  Revisited"): ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with linear kernels, using the biased
  HSIC estimator (Gretton et al. 2005) or the unbiased one (Song et al. 2012, "Feature Selection
  via Dependence Maximization", Eq. 5; recommended by Nguyen et al. 2021, "Do Wide and Deep
  Networks Learn the Same Things?" because the biased one drifts with N and D).
* **CKNNA** (Huh et al. 2024): CKA restricted to pairs that are k-nearest neighbours in *both*
  representations, which measures local rather than global agreement. Implemented after the
  definition in the authors' ``metrics.py`` (github.com/minyoungg/platonic-rep): kernels of the
  L2-normalised features, each kernel masked by the intersection of both kNN graphs, unbiased
  HSIC by default.
* :func:`pearson_alignment_vs_performance` correlates alignment scores with task performance
  across models, the paper's central plot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats

from anchorbind.errors import InputError
from anchorbind.metrics.checks import DEFAULT_MEMORY_BUDGET_BYTES, ArrayLike, as_matrix, resolve_device
from anchorbind.metrics.retrieval import chunked_topk

__all__ = [
    "alignment_metrics",
    "cknna",
    "hsic_biased",
    "hsic_unbiased",
    "linear_cka",
    "mutual_knn",
    "nearest_neighbors",
    "pearson_alignment_vs_performance",
]


def _paired_features(
    a: ArrayLike, b: ArrayLike, min_rows: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    a_tensor = as_matrix(a, "a", min_rows=min_rows, dtype=dtype)
    b_tensor = as_matrix(b, "b", min_rows=min_rows, dtype=dtype)
    if a_tensor.shape[0] != b_tensor.shape[0]:
        raise InputError(
            "b", f"alignment compares the same samples, got {a_tensor.shape[0]} rows in a and {b_tensor.shape[0]} in b"
        )
    return a_tensor, b_tensor


def _unit_rows(features: torch.Tensor, name: str) -> torch.Tensor:
    """Rows scaled to unit length; a zero row has no direction, so cosine neighbours are undefined."""
    norms = features.norm(dim=1)
    if bool((norms == 0).any()):
        raise InputError(name, f"row {int((norms == 0).nonzero()[0])} is all zeros; its cosine similarity is undefined")
    return features / norms[:, None]


def _check_k(k: int, num_samples: int) -> None:
    if not 1 <= k <= num_samples - 1:
        raise ValueError(f"k={k} is outside 1..{num_samples - 1} (neighbours other than the sample itself)")


def nearest_neighbors(
    features: ArrayLike,
    k: int = 10,
    *,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Indices of the k most cosine-similar other samples of every sample, ``(N, k)``.

    Computed with :func:`anchorbind.metrics.retrieval.chunked_topk` (self excluded), so memory stays
    bounded for large N. Order among exactly tied similarities is unspecified.

    Raises:
        InputError: malformed features.
        ValueError: k outside ``1..N-1``.
    """
    normalized = _unit_rows(as_matrix(features, "features", device=resolve_device(device), min_rows=2), "features")
    _check_k(k, normalized.shape[0])
    _, indices = chunked_topk(
        normalized,
        normalized,
        k,
        chunk_size,
        exclude_self=True,
        memory_budget_bytes=memory_budget_bytes,
        device=device,
    )
    return indices


def mutual_knn(
    a: ArrayLike,
    b: ArrayLike,
    k: int = 10,
    *,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: str | torch.device | None = None,
) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024), in [0, 1].

    For every sample the k cosine nearest neighbours (itself excluded) are found in each
    representation; the score is the mean fraction they share. 1 means identical
    neighbourhoods, about ``k / (N - 1)`` is chance.

    Args:
        a: ``(N, D_a)`` features of the first representation.
        b: ``(N, D_b)`` features of the same samples in the second representation.
        k: neighbourhood size (10 in the paper).
        chunk_size: queries per chunk of the neighbour search.
        memory_budget_bytes: working-memory budget used to pick ``chunk_size``.
        device: where similarities are computed (CPU when None).

    Raises:
        InputError: malformed features or different numbers of samples.
        ValueError: k outside ``1..N-1``.
    """
    a_tensor, b_tensor = _paired_features(a, b, min_rows=2)
    _check_k(k, a_tensor.shape[0])
    options = {"chunk_size": chunk_size, "memory_budget_bytes": memory_budget_bytes, "device": device}
    knn_a = nearest_neighbors(a_tensor, k, **options)
    knn_b = nearest_neighbors(b_tensor, k, **options)
    shared = (knn_a[:, :, None] == knn_b[:, None, :]).any(dim=2).sum(dim=1)
    return float(shared.to(torch.float64).mean() / k)


def hsic_biased(K: torch.Tensor, L: torch.Tensor) -> float:
    """Biased HSIC estimator ``trace(K H L H) / (n - 1)^2`` with ``H = I - 11^T / n`` (Gretton 2005).

    ``H K H`` is formed by subtracting row and column means (no n x n ``H`` product), in float64.

    Args:
        K: ``(n, n)`` kernel (Gram) matrix of the first representation.
        L: ``(n, n)`` kernel matrix of the second representation.

    Raises:
        InputError: kernels that are not square, differ in size, or have fewer than 2 samples.
    """
    K64, L64 = _square_pair(K, L, min_size=2)
    n = K64.shape[0]
    centered = K64 - K64.mean(dim=0, keepdim=True) - K64.mean(dim=1, keepdim=True) + K64.mean()
    return float((centered * L64.T).sum() / (n - 1) ** 2)


def hsic_unbiased(K: torch.Tensor, L: torch.Tensor) -> float:
    """Unbiased HSIC estimator of Song et al. 2012 (Eq. 5), as used for unbiased CKA and CKNNA.

    With ``K~``, ``L~`` the kernels with zeroed diagonals::

        HSIC = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3))

    ``1^T K~ L~ 1`` is evaluated as (column sums of K~) . (row sums of L~), which is O(n^2)
    instead of the O(n^3) matrix product and also correct for the non-symmetric masked kernels
    of CKNNA.

    Args:
        K: ``(n, n)`` kernel matrix, n >= 4.
        L: ``(n, n)`` kernel matrix.

    Raises:
        InputError: kernels that are not square, differ in size, or have fewer than 4 samples.
    """
    K64, L64 = _square_pair(K, L, min_size=4)
    n = K64.shape[0]
    K_tilde = K64.clone().fill_diagonal_(0)
    L_tilde = L64.clone().fill_diagonal_(0)
    trace_term = (K_tilde * L_tilde.T).sum()
    sums_term = K_tilde.sum() * L_tilde.sum() / ((n - 1) * (n - 2))
    cross_term = 2 * K_tilde.sum(dim=0).dot(L_tilde.sum(dim=1)) / (n - 2)
    return float((trace_term + sums_term - cross_term) / (n * (n - 3)))


def _square_pair(K: torch.Tensor, L: torch.Tensor, min_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    K64 = torch.as_tensor(K).detach().to(torch.float64)
    L64 = torch.as_tensor(L).detach().to(torch.float64)
    if K64.ndim != 2 or K64.shape[0] != K64.shape[1] or K64.shape != L64.shape:
        raise InputError("K", f"expected two square kernels of one size, got {tuple(K64.shape)} and {tuple(L64.shape)}")
    if K64.shape[0] < min_size:
        raise InputError("K", f"the estimator needs at least {min_size} samples, got {K64.shape[0]}")
    return K64, L64


def linear_cka(a: ArrayLike, b: ArrayLike, *, unbiased: bool = False) -> float:
    """Linear centred kernel alignment between two representations (Kornblith et al. 2019).

    Invariant to orthogonal transforms and isotropic scaling of either representation, not to
    arbitrary invertible linear maps -- the property that makes it a similarity of geometry.
    Evaluated in feature space without n x n kernels (Kornblith et al., Sec. 3): with centred
    features, biased ``HSIC(K, L) ∝ ||A^T B||_F^2``; the unbiased estimator is expanded into
    ``||A^T B||_F^2``, row norms and column sums, so memory is ``O(D_a D_b)`` for any N. The
    unbiased estimator is invariant to centring, which is done first for numerical accuracy.

    Args:
        a: ``(N, D_a)`` features of the first representation (not normalised here: CKA is
            defined on the raw features).
        b: ``(N, D_b)`` features of the same samples.
        unbiased: use Song et al.'s unbiased HSIC (needs N >= 4) instead of the biased one.

    Returns:
        CKA; in [0, 1] for the biased estimator (the unbiased one can dip slightly below 0).

    Raises:
        InputError: malformed features, different sample counts, or a representation with no
            variance left after centring (CKA undefined).
    """
    a64, b64 = _paired_features(a, b, min_rows=4 if unbiased else 2, dtype=torch.float64)
    a64, b64 = a64 - a64.mean(dim=0), b64 - b64.mean(dim=0)
    hsic = _unbiased_linear_hsic if unbiased else _biased_linear_hsic
    self_a, self_b = hsic(a64, a64), hsic(b64, b64)
    for name, value in (("a", self_a), ("b", self_b)):
        if value <= 0:
            raise InputError(name, "has no variance after centring (HSIC(K, K) <= 0); CKA is undefined")
    return hsic(a64, b64) / float(np.sqrt(self_a * self_b))


def _biased_linear_hsic(a: torch.Tensor, b: torch.Tensor) -> float:
    # For centred features trace(K H L H) = trace(A A^T B B^T) = ||A^T B||_F^2.
    n = a.shape[0]
    return float((a.T @ b).square().sum() / (n - 1) ** 2)


def _unbiased_linear_hsic(a: torch.Tensor, b: torch.Tensor) -> float:
    # Song et al. Eq. 5 with K = A A^T, L = B B^T and their diagonals removed:
    #   tr(K~ L~)   = ||A^T B||_F^2 - sum_i ||a_i||^2 ||b_i||^2
    #   1^T K~ 1    = ||A^T 1||^2 - sum_i ||a_i||^2
    #   1^T K~ L~ 1 = (K~ 1) . (L~ 1),  K~ 1 = A (A^T 1) - ||a_i||^2
    n = a.shape[0]
    norms_a, norms_b = a.square().sum(dim=1), b.square().sum(dim=1)
    trace_term = (a.T @ b).square().sum() - (norms_a * norms_b).sum()
    row_sums_a = a @ a.sum(dim=0) - norms_a
    row_sums_b = b @ b.sum(dim=0) - norms_b
    sums_term = row_sums_a.sum() * row_sums_b.sum() / ((n - 1) * (n - 2))
    cross_term = 2 * row_sums_a.dot(row_sums_b) / (n - 2)
    return float((trace_term + sums_term - cross_term) / (n * (n - 3)))


def cknna(a: ArrayLike, b: ArrayLike, k: int = 10, *, unbiased: bool = True) -> float:
    """Centred kernel nearest-neighbour alignment (CKNNA, Huh et al. 2024).

    Both representations are L2-normalised and their cosine kernels ``K``, ``L`` formed. Each
    HSIC term only keeps the entries (i, j) where j is among i's k nearest neighbours in both
    kernels involved (self excluded when unbiased)::

        CKNNA = HSIC(M_KL * K, M_KL * L) / sqrt(HSIC(M_K * K, M_K * K) HSIC(M_L * L, M_L * L))

    with ``M_KL = M_K * M_L`` the mutual-kNN mask. This follows ``AlignmentMetrics.cknna`` of the
    authors' code, except that it has no ``1e-6`` in the denominator and raises on an undefined
    value instead of returning a meaningless one. Forms n x n kernels: intended for the
    thousands of samples used in alignment studies (memory about ``6 * 8 * N^2`` bytes).

    Args:
        a: ``(N, D_a)`` features of the first representation.
        b: ``(N, D_b)`` features of the same samples.
        k: neighbourhood size, ``2 <= k <= N - 1`` (10 in the paper).
        unbiased: use the unbiased HSIC and exclude self-neighbours (the paper's default).

    Raises:
        InputError: malformed features, or a degenerate neighbourhood kernel (denominator <= 0).
        ValueError: k out of range.
    """
    a_tensor, b_tensor = _paired_features(a, b, min_rows=4 if unbiased else 3, dtype=torch.float64)
    n = a_tensor.shape[0]
    if not 2 <= k <= n - 1:
        raise ValueError(f"CKNNA needs 2 <= k <= {n - 1}, got {k}")
    a_unit = _unit_rows(a_tensor, "a")
    b_unit = _unit_rows(b_tensor, "b")
    K, L = a_unit @ a_unit.T, b_unit @ b_unit.T
    mask_k, mask_l = _knn_mask(K, k, unbiased), _knn_mask(L, k, unbiased)
    hsic = hsic_unbiased if unbiased else hsic_biased
    mask_kl = mask_k * mask_l
    cross = hsic(mask_kl * K, mask_kl * L)
    self_k = hsic(mask_k * K, mask_k * K)
    self_l = hsic(mask_l * L, mask_l * L)
    if self_k * self_l <= 0:
        raise InputError("a", f"neighbourhood kernels are degenerate (HSIC products {self_k:.3g}, {self_l:.3g})")
    return cross / float(np.sqrt(self_k * self_l))


def _knn_mask(kernel: torch.Tensor, k: int, exclude_self: bool) -> torch.Tensor:
    """0/1 matrix with ones at the k largest entries of each row (diagonal excluded if asked)."""
    scores = kernel.clone().fill_diagonal_(float("-inf")) if exclude_self else kernel
    _, indices = torch.topk(scores, k, dim=1)
    return torch.zeros_like(kernel).scatter_(1, indices, 1.0)


def pearson_alignment_vs_performance(
    alignments: Sequence[float] | np.ndarray, performances: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """Pearson correlation between alignment scores and task performance across models.

    Huh et al. 2024 (Fig. 3) show alignment to a reference model rising with competence; this
    is the statistic and its two-sided p-value (``scipy.stats.pearsonr``).

    Args:
        alignments: one alignment score per model.
        performances: the matching performance (accuracy, R@1, ...) per model.

    Returns:
        ``(r, p_value)``.

    Raises:
        InputError: different lengths, fewer than three models, non-finite or constant values.
    """
    x = np.asarray(alignments, dtype=np.float64).reshape(-1)
    y = np.asarray(performances, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise InputError("performances", f"got {len(y)} performances for {len(x)} alignment scores")
    if len(x) < 3:
        raise InputError("alignments", f"a correlation needs at least three models, got {len(x)}")
    for name, values in (("alignments", x), ("performances", y)):
        if not np.isfinite(values).all():
            raise InputError(name, "contains NaN or inf")
        if np.ptp(values) == 0:
            raise InputError(name, "is constant; the correlation is undefined")
    result = stats.pearsonr(x, y)
    return float(result.statistic), float(result.pvalue)


def alignment_metrics(a: ArrayLike, b: ArrayLike, k: int = 10) -> dict[str, float]:
    """All alignment scores of this module for one pair of representations.

    Returns:
        ``mutual_knn@k``, ``cka_linear``, ``cka_linear_unbiased`` and ``cknna@k``.
    """
    return {
        f"mutual_knn@{k}": mutual_knn(a, b, k),
        "cka_linear": linear_cka(a, b),
        "cka_linear_unbiased": linear_cka(a, b, unbiased=True),
        f"cknna@{k}": cknna(a, b, k),
    }
