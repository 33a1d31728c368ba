"""Modality-gap statistics on constructed inputs with known answers, and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from anchorbind.errors import InputError
from anchorbind.metrics import (
    centroid_angle,
    centroid_distance,
    linear_separability,
    mean_inter_similarity,
    mean_intra_similarity,
    mean_pair_cosine,
    modality_gap_metrics,
    retrieval_metrics,
    shift_along_gap,
    uniformity,
)


def unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def cone(axis: int, half_angle: float, dim: int = 4) -> torch.Tensor:
    """Four unit vectors at ``half_angle`` around a coordinate axis; their mean is cos(angle) * axis."""
    others = [i for i in range(dim) if i != axis][:2]
    rows = []
    for other in others:
        for sign in (1.0, -1.0):
            row = torch.zeros(dim, dtype=torch.float64)
            row[axis] = math.cos(half_angle)
            row[other] = sign * math.sin(half_angle)
            rows.append(row)
    return torch.stack(rows)


def test_centroid_distance_and_angle_of_cones_with_known_centroids():
    a, b = 0.3, 0.7
    x, y = cone(0, a), cone(1, b)
    assert centroid_distance(x, y) == pytest.approx(math.hypot(math.cos(a), math.cos(b)), abs=1e-6)
    assert centroid_angle(x, y) == pytest.approx(90.0, abs=1e-4)
    opposite = -cone(0, b)
    assert centroid_distance(x, opposite) == pytest.approx(math.cos(a) + math.cos(b), abs=1e-6)
    assert centroid_angle(x, opposite) == pytest.approx(180.0, abs=1e-3)
    assert centroid_distance(x, x) == pytest.approx(0.0, abs=1e-7)


def test_centroid_angle_is_refused_for_a_zero_centroid():
    balanced = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    with pytest.raises(InputError, match="zero vector"):
        centroid_angle(balanced, torch.tensor([[0.0, 1.0]]))


def test_mean_pair_cosine_of_pairs_at_a_known_angle():
    theta = 0.4
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    y = torch.tensor(
        [
            [math.cos(theta), math.sin(theta), 0.0],
            [0.0, math.cos(theta), math.sin(theta)],
            [math.sin(theta), 0.0, math.cos(theta)],
        ]
    )
    assert mean_pair_cosine(x, y) == pytest.approx(math.cos(theta), abs=1e-6)


def test_closed_form_similarities_match_explicit_pair_loops():
    x, y = unit(17, 6, 0).double(), unit(11, 6, 1).double()
    intra = [float(x[i] @ x[j]) for i in range(17) for j in range(17) if i != j]
    inter = [float(x[i] @ y[j]) for i in range(17) for j in range(11)]
    assert mean_intra_similarity(x) == pytest.approx(sum(intra) / len(intra), abs=1e-6)
    assert mean_inter_similarity(x, y) == pytest.approx(sum(inter) / len(inter), abs=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 5, None])
def test_uniformity_matches_wang_and_isola_pdist_formula(chunk_size):
    x = unit(40, 8, 2)
    reference = torch.pdist(x.double(), p=2).pow(2).mul(-2).exp().mean().log().item()
    assert uniformity(x, chunk_size=chunk_size) == pytest.approx(reference, abs=1e-5)
    clumped = F.normalize(torch.ones(40, 8) + 0.01 * unit(40, 8, 3), dim=1)
    assert uniformity(clumped) > uniformity(x)  # less uniform = higher value


def test_linear_separability_reproduces_a_direct_sklearn_fit():
    x, y = unit(60, 8, 4), F.normalize(unit(50, 8, 5) + 0.8 * torch.eye(8)[0], dim=1)
    features = torch.cat([x, y]).numpy()
    modality = np.array([0] * 60 + [1] * 50)
    train, test = train_test_split(np.arange(110), test_size=0.3, random_state=0, stratify=modality)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    expected = model.fit(features[train], modality[train]).score(features[test], modality[test])
    assert linear_separability(x, y) == pytest.approx(expected, abs=1e-12)
    assert linear_separability(cone(0, 0.1).float().repeat(5, 1), cone(1, 0.1).float().repeat(5, 1)) == 1.0


def test_modality_gap_metrics_reports_every_statistic():
    x, y = unit(30, 8, 6), unit(30, 8, 7)
    metrics = modality_gap_metrics(x, y, names=("image", "audio"))
    assert set(metrics) == {
        "centroid_distance",
        "centroid_angle_deg",
        "inter_similarity",
        "intra_similarity/image",
        "intra_similarity/audio",
        "uniformity/image",
        "uniformity/audio",
        "mean_pair_cosine",
        "linear_separability",
    }
    assert metrics["centroid_distance"] == pytest.approx(centroid_distance(x, y))
    assert metrics["uniformity/audio"] == pytest.approx(uniformity(y))


def test_shift_at_lambda_zero_reproduces_unshifted_retrieval():
    x, y = unit(40, 8, 8), F.normalize(unit(40, 8, 9) + 0.5 * unit(40, 8, 8) + torch.eye(8)[2], dim=1)
    labels = np.arange(40) % 5
    baseline = retrieval_metrics(x, y, query_labels=labels, gallery_labels=labels)
    results = shift_along_gap(x, y, [0.0, 0.5, 1.0], x_labels=labels, y_labels=labels, chunk_size=7)
    assert [entry["lambda"] for entry in results] == [0.0, 0.5, 1.0]
    for key, value in baseline.items():
        assert results[0][key] == pytest.approx(value, abs=1e-12), key
    assert results[0]["centroid_distance"] == pytest.approx(centroid_distance(x, y), abs=1e-6)
    assert results[2]["centroid_distance"] < results[1]["centroid_distance"] < results[0]["centroid_distance"]


def test_shift_moves_x_along_the_gap_then_renormalises():
    x, y = unit(20, 6, 10), F.normalize(unit(20, 6, 11) + torch.eye(6)[0], dim=1)
    gap = y.mean(dim=0) - x.mean(dim=0)
    expected = retrieval_metrics(F.normalize(x + 0.7 * gap, dim=1), y, ks=(1, 5))
    (entry,) = shift_along_gap(x, y, [0.7], ks=(1, 5))
    for key, value in expected.items():
        assert entry[key] == pytest.approx(value, abs=1e-12), key


def test_unnormalised_embeddings_are_refused():
    with pytest.raises(InputError, match="not L2-normalised"):
        centroid_distance(torch.ones(3, 4), unit(3, 4, 12))
    with pytest.raises(InputError, match="at least 2 rows"):
        mean_intra_similarity(unit(1, 4, 13))
