"""Retrieval metrics against brute-force Python loops over the full similarity matrix."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from anchorbind.errors import InputError
from anchorbind.metrics import category_ranking, chunked_topk, retrieval_metrics, target_ranks
from anchorbind.metrics import retrieval as retrieval_module
from anchorbind.metrics.checks import resolve_chunk_size


def unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def axis_vectors(indices: list[int], dim: int) -> torch.Tensor:
    """Signed one-hot rows (index >= dim means the negative axis): all dot products are exact."""
    rows = torch.zeros(len(indices), dim)
    for row, index in enumerate(indices):
        rows[row, index % dim] = 1.0 if index < dim else -1.0
    return rows


def brute_ranks(scores: list[list[float]], targets: list[int], ties: str) -> list[int]:
    ranks = []
    for i, row in enumerate(scores):
        true = row[targets[i]]
        if ties == "optimistic":
            beaten = sum(1 for j, s in enumerate(row) if j != targets[i] and s > true)
        else:
            beaten = sum(1 for j, s in enumerate(row) if j != targets[i] and s >= true)
        ranks.append(1 + beaten)
    return ranks


def brute_category(scores: list[list[float]], q_labels: list, g_labels: list, ties: str):
    """(first relevant position, AP) per query from an explicitly tie-ordered ranking list."""
    results = []
    for i, row in enumerate(scores):
        relevant = [g == q_labels[i] for g in g_labels]
        if not any(relevant):
            results.append(None)
            continue
        # The secondary key implements the documented tie rule: relevant first when optimistic.
        relevant_rank = 0 if ties == "optimistic" else 1
        order = sorted(
            range(len(row)),
            key=lambda j, row=row, relevant=relevant: (-row[j], relevant_rank if relevant[j] else 1 - relevant_rank),
        )
        hits, precision_sum, first = 0, 0.0, None
        for position, j in enumerate(order, start=1):
            if relevant[j]:
                hits += 1
                precision_sum += hits / position
                first = first or position
        results.append((first, precision_sum / hits))
    return results


def brute_metrics(queries, gallery, q_labels=None, g_labels=None, ks=(1, 5, 10), ties="optimistic", paired=True):
    scores = (queries @ gallery.T).tolist()  # the full matrix
    expected = {}
    if paired:
        ranks = brute_ranks(scores, list(range(len(scores))), ties)
        for k in ks:
            expected[f"instance/R@{k}"] = sum(r <= k for r in ranks) / len(ranks)
        expected["instance/median_rank"] = statistics.median(ranks)
        expected["instance/mAP"] = sum(1 / r for r in ranks) / len(ranks)
        expected["instance/num_queries"] = len(ranks)
    if q_labels is not None:
        per_query = brute_category(scores, list(q_labels), list(g_labels), ties)
        valid = [r for r in per_query if r is not None]
        for k in ks:
            expected[f"category/R@{k}"] = sum(first <= k for first, _ in valid) / len(valid)
        expected["category/median_rank"] = statistics.median(first for first, _ in valid)
        expected["category/mAP"] = sum(ap for _, ap in valid) / len(valid)
        expected["category/num_queries"] = len(valid)
        expected["category/queries_without_relevant"] = len(per_query) - len(valid)
    return expected


def assert_metrics_equal(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 16, 50, 64, None])
def test_random_inputs_match_brute_force_for_every_chunk_size(chunk_size):
    queries, gallery = unit(50, 8, 0), unit(50, 8, 1)
    labels = torch.randint(0, 6, (50,), generator=torch.Generator().manual_seed(2)).tolist()
    actual = retrieval_metrics(queries, gallery, query_labels=labels, gallery_labels=labels, chunk_size=chunk_size)
    assert_metrics_equal(actual, brute_metrics(queries, gallery, labels, labels))


@pytest.mark.parametrize("ties", ["optimistic", "pessimistic"])
@pytest.mark.parametrize("chunk_size", [1, 4, 9, None])
def test_ties_follow_the_documented_rule(ties, chunk_size):
    rng = np.random.default_rng(3)
    dim = 3  # six signed axes for 40 items: many exact ties
    queries = axis_vectors(rng.integers(0, 2 * dim, 40).tolist(), dim)
    gallery = axis_vectors(rng.integers(0, 2 * dim, 40).tolist(), dim)
    q_labels = rng.integers(0, 4, 40).tolist()
    g_labels = rng.integers(0, 4, 40).tolist()
    actual = retrieval_metrics(
        queries, gallery, query_labels=q_labels, gallery_labels=g_labels, ties=ties, chunk_size=chunk_size
    )
    assert_metrics_equal(actual, brute_metrics(queries, gallery, q_labels, g_labels, ties=ties))


def test_optimistic_and_pessimistic_bracket_a_collapsed_model():
    collapsed = F.normalize(torch.ones(10, 4), dim=1)
    optimistic = retrieval_metrics(collapsed, collapsed, ks=(1,))
    pessimistic = retrieval_metrics(collapsed, collapsed, ks=(1,), ties="pessimistic")
    assert optimistic["instance/R@1"] == 1.0  # why the pessimistic rule exists
    assert pessimistic["instance/R@1"] == 0.0
    assert pessimistic["instance/median_rank"] == 10


def test_unpaired_gallery_with_missing_labels_counts_queries_without_relevant():
    queries, gallery = unit(30, 16, 4), unit(45, 16, 5)
    q_labels = [f"class{i % 7}" for i in range(30)]  # class5, class6 never occur in the gallery
    g_labels = [f"class{i % 5}" for i in range(45)]
    actual = retrieval_metrics(queries, gallery, query_labels=q_labels, gallery_labels=g_labels, chunk_size=4)
    expected = brute_metrics(queries, gallery, q_labels, g_labels, paired=False)
    assert_metrics_equal(actual, expected)
    assert actual["category/queries_without_relevant"] == 8


def test_category_average_precision_matches_sklearn_without_ties():
    queries, gallery = unit(20, 12, 6), unit(60, 12, 7)
    q_labels = np.arange(20) % 4
    g_labels = np.arange(60) % 4
    ranking = category_ranking(queries, gallery, q_labels, g_labels, chunk_size=3)
    scores = (queries @ gallery.T).numpy()
    for i in range(20):
        expected = average_precision_score(g_labels == q_labels[i], scores[i])
        assert ranking.average_precision[i].item() == pytest.approx(expected, abs=1e-9)


def test_attribute_rows_are_relevant_only_when_every_attribute_matches():
    queries, gallery = unit(12, 6, 8), unit(30, 6, 9)
    rng = np.random.default_rng(10)
    q_attrs, g_attrs = rng.integers(0, 2, (12, 2)), rng.integers(0, 2, (30, 2))
    ranking = category_ranking(queries, gallery, q_attrs, g_attrs)
    combined_q = [tuple(row) for row in q_attrs.tolist()]
    combined_g = [tuple(row) for row in g_attrs.tolist()]
    expected = brute_category((queries @ gallery.T).tolist(), combined_q, combined_g, "optimistic")
    for i, result in enumerate(expected):
        first, ap = result
        assert ranking.first_relevant_rank[i].item() == first
        assert ranking.average_precision[i].item() == pytest.approx(ap, abs=1e-9)


def test_target_ranks_with_explicit_targets_and_tiny_memory_budget():
    queries, gallery = unit(25, 8, 11), unit(9, 8, 12)
    targets = np.arange(25) % 9
    ranks = target_ranks(queries, gallery, targets, memory_budget_bytes=1)  # one query per chunk
    expected = brute_ranks((queries @ gallery.T).tolist(), targets.tolist(), "optimistic")
    assert ranks.tolist() == expected


def test_memory_budget_sets_the_chunk():
    assert resolve_chunk_size(None, columns=100_000, bytes_per_entry=8, memory_budget_bytes=8 * 100_000 * 37) == 37
    assert resolve_chunk_size(None, columns=100_000, bytes_per_entry=8, memory_budget_bytes=1) == 1
    assert resolve_chunk_size(5, columns=100_000, bytes_per_entry=8) == 5
    with pytest.raises(ValueError):
        resolve_chunk_size(0, columns=10, bytes_per_entry=8)


@pytest.mark.parametrize(("chunk_size", "gallery_chunk_size"), [(1, 1), (3, 7), (8, 64), (None, None)])
def test_chunked_topk_equals_full_topk(chunk_size, gallery_chunk_size):
    queries, gallery = unit(23, 8, 13), unit(41, 8, 14)
    values, indices = chunked_topk(queries, gallery, 5, chunk_size, gallery_chunk_size=gallery_chunk_size)
    full_values, full_indices = torch.topk(queries @ gallery.T, 5, dim=1)
    torch.testing.assert_close(values, full_values, atol=1e-6, rtol=0)
    assert torch.equal(indices, full_indices)


def test_chunked_topk_can_exclude_self():
    points = unit(30, 8, 15)
    _, indices = chunked_topk(points, points, 4, 7, gallery_chunk_size=5, exclude_self=True)
    full = (points @ points.T).fill_diagonal_(float("-inf"))
    assert torch.equal(indices, torch.topk(full, 4, dim=1).indices)
    with pytest.raises(ValueError, match="outside"):
        chunked_topk(points, points, 30, exclude_self=True)


def test_numpy_inputs_and_explicit_device_give_the_same_result():
    queries, gallery = unit(15, 8, 16), unit(15, 8, 17)
    from_tensors = retrieval_metrics(queries, gallery, ks=(1, 5))
    from_numpy = retrieval_metrics(queries.numpy(), gallery.numpy(), ks=(1, 5), device="cpu")
    assert from_tensors == from_numpy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    queries, gallery = unit(40, 16, 18), unit(40, 16, 19)
    labels = list(range(8)) * 5
    cpu = retrieval_metrics(queries, gallery, query_labels=labels, gallery_labels=labels, chunk_size=6)
    cuda = retrieval_metrics(queries, gallery, query_labels=labels, gallery_labels=labels, chunk_size=6, device="cuda")
    assert cuda.keys() == cpu.keys()
    for key in cpu:
        assert cuda[key] == pytest.approx(cpu[key], abs=1e-9), key


def test_bad_inputs_are_refused_with_the_argument_named():
    good = unit(5, 4, 20)
    with pytest.raises(InputError, match=r"gallery.*not L2-normalised"):
        retrieval_metrics(good, good * 2)
    nan = good.clone()
    nan[2, 1] = float("nan")
    with pytest.raises(InputError, match=r"queries.*row 2"):
        retrieval_metrics(nan, good)
    with pytest.raises(InputError, match="widths differ"):
        retrieval_metrics(good, unit(5, 3, 21))
    with pytest.raises(InputError, match=r"gallery_labels.*3 entries"):
        retrieval_metrics(good, good, query_labels=[0] * 5, gallery_labels=[0] * 3, ks=(1,))
    with pytest.raises(ValueError, match="both"):
        retrieval_metrics(good, good, query_labels=[0] * 5, ks=(1,))
    with pytest.raises(ValueError, match="k=10"):
        retrieval_metrics(good, good)  # default ks include 10 > 5 gallery items
    with pytest.raises(InputError, match="needs labels"):
        retrieval_metrics(good, unit(7, 4, 22), ks=(1,))
    with pytest.raises(InputError, match="no query label"):
        retrieval_metrics(good, good, query_labels=[1] * 5, gallery_labels=[2] * 5, paired=False, ks=(1,))


# --------------------------------------------------------------------------- counting and one-sort paths


@pytest.mark.parametrize("ties", ["optimistic", "pessimistic"])
@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 11, None])
def test_counted_target_ranks_match_brute_force_with_ties(ties, paired, chunk_size):
    rng = np.random.default_rng(30)
    dim = 3
    queries = axis_vectors(rng.integers(0, 2 * dim, 43).tolist(), dim)
    gallery = axis_vectors(rng.integers(0, 2 * dim, 43 if paired else 31).tolist(), dim)
    targets = np.arange(43) if paired else rng.integers(0, 31, 43)
    ranks = target_ranks(queries, gallery, None if paired else targets, ties=ties, chunk_size=chunk_size)
    assert ranks.tolist() == brute_ranks((queries @ gallery.T).tolist(), targets.tolist(), ties)


@pytest.mark.parametrize("ties", ["optimistic", "pessimistic"])
def test_duplicated_gallery_items_tie_with_the_true_item(ties):
    queries, gallery = unit(40, 8, 31), unit(40, 8, 32)
    gallery[[5, 17, 33]] = gallery[2].clone()  # three exact copies of query 2's true item in other tiles
    labels = list(range(40))
    expected = brute_metrics(queries, gallery, labels, labels, ks=(1, 5), ties=ties)
    for query_labels in (None, labels):  # instance only (tiled counting) and with the category sort
        actual = retrieval_metrics(
            queries, gallery, query_labels=query_labels, gallery_labels=query_labels, ks=(1, 5), ties=ties
        )
        assert_metrics_equal(actual, {k: v for k, v in expected.items() if k in actual})
    optimistic, pessimistic = (target_ranks(queries, gallery, ties=rule) for rule in ("optimistic", "pessimistic"))
    assert pessimistic[2].item() == optimistic[2].item() + 3  # the copies tie with the true item


@pytest.mark.parametrize("ties", ["optimistic", "pessimistic"])
@pytest.mark.parametrize(("num_labels", "chunk_size"), [(1, 5), (2, 7), (3, None)])
def test_many_relevant_items_per_query_with_ties(ties, num_labels, chunk_size):
    # Half, a third or all of the gallery relevant to each query, six distinct scores in all.
    rng = np.random.default_rng(33)
    dim = 3
    queries = axis_vectors(rng.integers(0, 2 * dim, 36).tolist(), dim)
    gallery = axis_vectors(rng.integers(0, 2 * dim, 36).tolist(), dim)
    q_labels = rng.integers(0, num_labels, 36).tolist()
    g_labels = rng.integers(0, num_labels, 36).tolist()
    actual = retrieval_metrics(
        queries, gallery, query_labels=q_labels, gallery_labels=g_labels, ties=ties, chunk_size=chunk_size
    )
    assert_metrics_equal(actual, brute_metrics(queries, gallery, q_labels, g_labels, ties=ties))


@pytest.mark.parametrize("ties", ["optimistic", "pessimistic"])
@pytest.mark.parametrize("exact_ties", [False, True])
def test_one_sort_cpu_path_equals_the_two_sort_implementation(ties, exact_ties):
    # The previous implementation (kept for non-CPU devices) as the reference: same first ranks,
    # same AP up to the order of a float64 sum.
    rng = np.random.default_rng(34)
    if exact_ties:
        queries = axis_vectors(rng.integers(0, 8, 200).tolist(), 4)
        gallery = axis_vectors(rng.integers(0, 8, 300).tolist(), 4)
    else:
        queries, gallery = unit(200, 16, 35), unit(300, 16, 36)
    q_codes = torch.as_tensor(rng.integers(0, 6, 200))  # label 5 never occurs in the gallery
    g_codes = torch.as_tensor(rng.integers(0, 5, 300))
    g_codes[:150] = 0  # one label holds half the gallery
    fast = retrieval_module._category_ranking(queries, gallery, q_codes, g_codes, ties, 17)
    reference = retrieval_module._category_ranking_torch(queries, gallery, q_codes, g_codes, ties, 17)
    assert torch.equal(fast.num_relevant, reference.num_relevant)
    assert torch.equal(fast.first_relevant_rank, reference.first_relevant_rank)
    torch.testing.assert_close(fast.average_precision, reference.average_precision, rtol=0, atol=1e-12, equal_nan=True)
    ranks, _ = retrieval_module._full_row_ranking(
        queries[:200], gallery[:200], q_codes, g_codes[:200], torch.arange(200), ties, 17
    )
    assert ranks.tolist() == brute_ranks((queries @ gallery[:200].T).tolist(), list(range(200)), ties)


# --------------------------------------------------------------------------- sorted-key CPU path


def half_vectors(codes: np.ndarray) -> torch.Tensor:
    """Unit rows from {+-0.5}^4 (codes 0..15) and the signed axes (16..23) of R^4.

    Every dot product is a multiple of 0.25, exact in float32 whatever order a BLAS kernel sums
    in, so the scores are the same in every chunk and exact ties (also at 0, and negative) abound.
    """
    rows = torch.zeros(len(codes), 4)
    for row, code in enumerate(codes.tolist()):
        if code < 16:
            rows[row] = torch.tensor([0.5 if code >> bit & 1 else -0.5 for bit in range(4)])
        else:
            rows[row, (code - 16) % 4] = 1.0 if code < 20 else -1.0
    return rows


def test_sort_keys_compare_exactly_like_the_float_scores():
    special = [-1.001, -1.0, -0.75, -1e-38, -1e-45, -0.0, 0.0, 1e-45, 1e-38, 2**-30, 0.25, 0.5, 1.0, 1.001]
    special.append(float(np.nextafter(np.float32(0.5), np.float32(1))))  # one ulp above 0.5
    rng = np.random.default_rng(41)
    values = np.concatenate([special, rng.uniform(-1, 1, 60), rng.choice(special, 20)]).astype(np.float32)
    keys = values[None, :].view(np.int32).copy()
    retrieval_module._sort_keys(keys, np.empty_like(keys))
    assert (keys % 2 == 0).all()  # the lowest bit stays free for the relevance tag
    scores, key_values = values.astype(np.float64), keys[0].astype(np.int64)
    assert np.array_equal(
        np.sign(scores[:, None] - scores[None, :]), np.sign(key_values[:, None] - key_values[None, :])
    )  # same order, same ties (-0.0 == +0.0), nothing rounded


@pytest.mark.parametrize("ties", ["optimistic", "pessimistic"])
@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 6, 16, None])
def test_sorted_key_path_matches_a_sorting_brute_force_with_ties(monkeypatch, ties, paired, chunk_size):
    # Blocks of two rows and three threads per chunk, so that rows end up in every position of a
    # block and of a thread's share.
    monkeypatch.setattr(retrieval_module, "_KEY_BLOCK_ENTRIES", 90)
    monkeypatch.setattr(retrieval_module.torch, "get_num_threads", lambda: 3)
    rng = np.random.default_rng(42)
    num_queries, num_gallery = 45, 45 if paired else 38
    queries = half_vectors(rng.integers(0, 24, num_queries))
    gallery = half_vectors(rng.integers(0, 24, num_gallery))
    q_labels = rng.integers(0, 5, num_queries)  # label 4 never occurs in the gallery
    g_labels = rng.integers(0, 4, num_gallery)
    targets = np.arange(num_queries) if paired else rng.integers(0, num_gallery, num_queries)
    chunk = chunk_size or num_queries
    ranks, ranking = retrieval_module._full_row_ranking(
        queries, gallery, torch.as_tensor(q_labels), torch.as_tensor(g_labels), torch.as_tensor(targets), ties, chunk
    )

    scores = (queries @ gallery.T).tolist()
    assert ranks.tolist() == brute_ranks(scores, targets.tolist(), ties)
    expected = brute_category(scores, q_labels.tolist(), g_labels.tolist(), ties)
    assert ranking.num_relevant.tolist() == [int((g_labels == label).sum()) for label in q_labels]
    for i, result in enumerate(expected):
        if result is None:
            assert ranking.first_relevant_rank[i].item() == 0
            assert np.isnan(ranking.average_precision[i].item())
        else:
            assert ranking.first_relevant_rank[i].item() == result[0]
            assert ranking.average_precision[i].item() == pytest.approx(result[1], abs=1e-12)
    # The data must exercise the tie rule: relevant items tie with irrelevant ones.
    other = "pessimistic" if ties == "optimistic" else "optimistic"
    assert expected != brute_category(scores, q_labels.tolist(), g_labels.tolist(), other)


def test_sorted_key_path_refuses_scores_its_keys_cannot_hold():
    queries = half_vectors(np.arange(6))
    codes = torch.zeros(6, dtype=torch.int64)
    with pytest.raises(ValueError, match="unit-normalised"):
        retrieval_module._full_row_ranking(queries * 2, queries, codes, codes, None, "optimistic", 4)
