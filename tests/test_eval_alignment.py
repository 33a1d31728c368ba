"""Alignment metrics against textbook formulas (explicit centering matrix) and brute-force loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anchorbind.errors import InputError
from anchorbind.metrics import (
    alignment_metrics,
    cknna,
    hsic_biased,
    hsic_unbiased,
    linear_cka,
    mutual_knn,
    nearest_neighbors,
    pearson_alignment_vs_performance,
)


def features(rows: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthogonal(dim: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(features(dim, dim, seed))
    return q


def textbook_hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H) / (n - 1) ** 2)


def textbook_hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. 2012, Eq. 5, with the O(n^3) matrix product written out."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    one = np.ones(n)
    value = (
        np.trace(Kt @ Lt)
        + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ Kt @ Lt @ one)
    )
    return float(value / (n * (n - 3)))


def textbook_cka(a: np.ndarray, b: np.ndarray, hsic) -> float:
    K, L = a @ a.T, b @ b.T
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def brute_knn(x: np.ndarray, k: int) -> list[set[int]]:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    neighbours = []
    for i in range(len(x)):
        sims = [(float(unit[i] @ unit[j]), j) for j in range(len(x)) if j != i]
        sims.sort(reverse=True)
        neighbours.append({j for _, j in sims[:k]})
    return neighbours


@pytest.mark.parametrize("k", [1, 3, 10])
def test_mutual_knn_matches_brute_force_loops(k):
    a, b = features(40, 6, 0), features(40, 9, 1)
    b[:20] += 2 * a[:20, :1]  # partial agreement so the score is neither 0 nor 1
    knn_a, knn_b = brute_knn(a.numpy(), k), brute_knn(b.numpy(), k)
    expected = np.mean([len(knn_a[i] & knn_b[i]) / k for i in range(40)])
    assert mutual_knn(a, b, k, chunk_size=7) == pytest.approx(expected, abs=1e-12)
    assert [set(row) for row in nearest_neighbors(a, k, chunk_size=3).tolist()] == knn_a


def test_mutual_knn_is_one_for_rotated_and_scaled_copies():
    a = features(30, 8, 2)
    assert mutual_knn(a, 4.0 * a @ orthogonal(8, 3), k=5) == 1.0


@pytest.mark.parametrize("n", [5, 12, 40])
def test_hsic_estimators_match_textbook_formulas(n):
    K = (features(n, 4, 4) @ features(n, 4, 4).T).numpy()
    L_features = features(n, 7, 5)
    L = (L_features @ L_features.T).numpy()
    assert hsic_biased(torch.from_numpy(K), torch.from_numpy(L)) == pytest.approx(textbook_hsic_biased(K, L), rel=1e-10)
    assert hsic_unbiased(torch.from_numpy(K), torch.from_numpy(L)) == pytest.approx(
        textbook_hsic_unbiased(K, L), rel=1e-9
    )
    # Non-symmetric (masked) kernels as CKNNA produces them.
    mask = (np.random.default_rng(n).random((n, n)) < 0.5).astype(float)
    assert hsic_unbiased(torch.from_numpy(mask * K), torch.from_numpy(mask * L)) == pytest.approx(
        textbook_hsic_unbiased(mask * K, mask * L), rel=1e-9, abs=1e-12
    )


@pytest.mark.parametrize(("rows", "dim_a", "dim_b"), [(10, 3, 5), (50, 20, 8), (30, 40, 40)])
def test_linear_cka_matches_textbook_formula(rows, dim_a, dim_b):
    a, b = features(rows, dim_a, 6) + 1.5, features(rows, dim_b, 7)  # uncentred on purpose
    b[:, 0] += a[:, 0]
    assert linear_cka(a, b) == pytest.approx(textbook_cka(a.numpy(), b.numpy(), textbook_hsic_biased), rel=1e-8)
    assert linear_cka(a, b, unbiased=True) == pytest.approx(
        textbook_cka(a.numpy(), b.numpy(), textbook_hsic_unbiased), rel=1e-7
    )


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_invariances(unbiased):
    a, b = features(25, 6, 8), features(25, 6, 9)
    q = orthogonal(6, 10)
    assert linear_cka(a, a @ q, unbiased=unbiased) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(a, 3.7 * a, unbiased=unbiased) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(2.0 * a, 0.5 * b @ q, unbiased=unbiased) == pytest.approx(
        linear_cka(a, b, unbiased=unbiased), abs=1e-9
    )
    stretched = a @ torch.diag(torch.tensor([10.0, 1, 1, 1, 1, 0.1], dtype=torch.float64))
    assert linear_cka(a, stretched, unbiased=unbiased) < 0.99  # not invariant to anisotropic scaling


def reference_cknna(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """The platonic-rep definition (unbiased, self excluded), with loops for the kNN masks."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    K, L = a @ a.T, b @ b.T

    def mask(kernel):
        result = np.zeros_like(kernel)
        for i in range(len(kernel)):
            others = sorted((j for j in range(len(kernel)) if j != i), key=lambda j: -kernel[i, j])
            result[i, others[:k]] = 1.0
        return result

    mask_k, mask_l = mask(K), mask(L)
    both = mask_k * mask_l
    cross = textbook_hsic_unbiased(both * K, both * L)
    self_k = textbook_hsic_unbiased(mask_k * K, mask_k * K)
    self_l = textbook_hsic_unbiased(mask_l * L, mask_l * L)
    return cross / np.sqrt(self_k * self_l)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_cknna_matches_reference_definition(k):
    a, b = features(30, 5, 11), features(30, 8, 12)
    b[:, :5] += a
    assert cknna(a, b, k) == pytest.approx(reference_cknna(a.numpy(), b.numpy(), k), rel=1e-8)


def test_cknna_properties():
    a, b = features(20, 5, 13), features(20, 7, 14)
    assert cknna(a, a, 5) == pytest.approx(1.0, abs=1e-12)
    # With every other sample a neighbour, CKNNA is unbiased linear CKA of the normalised features.
    unit_a, unit_b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    assert cknna(a, b, 19) == pytest.approx(linear_cka(unit_a, unit_b, unbiased=True), abs=1e-10)
    with pytest.raises(ValueError, match="2 <= k"):
        cknna(a, b, 1)


def test_pearson_correlation_is_scipys():
    alignment = [0.1, 0.2, 0.35, 0.4, 0.6]
    performance = [0.3, 0.35, 0.5, 0.48, 0.7]
    r, p = pearson_alignment_vs_performance(alignment, performance)
    assert r == pytest.approx(np.corrcoef(alignment, performance)[0, 1], abs=1e-12)
    assert 0 < p < 0.05
    assert pearson_alignment_vs_performance([1, 2, 3], [2, 4, 6])[0] == pytest.approx(1.0)
    with pytest.raises(InputError, match="constant"):
        pearson_alignment_vs_performance([1, 2, 3], [5, 5, 5])
    with pytest.raises(InputError, match="3 alignment scores"):
        pearson_alignment_vs_performance([1, 2, 3], [5, 5])


def test_alignment_metrics_bundle_and_input_errors():
    a, b = features(24, 6, 15), features(24, 4, 16)
    metrics = alignment_metrics(a, b, k=5)
    assert set(metrics) == {"mutual_knn@5", "cka_linear", "cka_linear_unbiased", "cknna@5"}
    assert metrics["cka_linear"] == pytest.approx(linear_cka(a, b))
    with pytest.raises(InputError, match="same samples"):
        linear_cka(a, b[:10])
    with pytest.raises(InputError, match="no variance"):
        linear_cka(a, torch.ones(24, 3))
    zero_row = a.clone()
    zero_row[3] = 0
    with pytest.raises(InputError, match="row 3 is all zeros"):
        mutual_knn(zero_row, b, k=3)
