"""The visiocentrism index means something: significant native lift only, an interval, the same numbers twice.

Synthetic embeddings with known structure: ``category`` (shared) is strongly encoded natively and
kept by the bound embedding; ``beats`` (non-visual) is strongly encoded natively and mostly lost
when bound; ``hidden`` (non-visual) is not encoded anywhere, so its native lift is noise and
must not enter the index. Plus the small statistics the report words its comparisons with.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from threadpoolctl import threadpool_limits

from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.report import _emergent_vs_direct_words, _Figures, _visiocentrism
from anchorbind.evaluation.visiocentrism import (
    index_undefined_reason,
    lift_exclusion_reason,
    probe_modality,
    visiocentrism_section,
    visiocentrism_summary,
)
from anchorbind.metrics.probe import cross_validated_probe, linear_probe
from anchorbind.metrics.significance import (
    aggregate_over_seeds,
    compare_estimates,
    estimate,
    lift_p_value,
    proportion_estimate,
    word_comparison,
    word_correlation,
)

MODALITY = "probe_me"
"""Not an installed plugin: it declares nothing, so it carries every attribute."""
GROUPS = {"category": "shared", "beats": "non-visual", "hidden": "non-visual"}


def synthetic(n: int = 160, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """``(bound, native, meta)``: category kept, beats mostly lost, hidden never encoded."""
    rng = np.random.default_rng(seed)
    category, beats, hidden = rng.integers(0, 3, n), rng.integers(0, 4, n), rng.integers(0, 2, n)
    meta = [{"attributes": {"category": f"c{c}", "beats": f"b{b}", "hidden": f"h{h}"},
             "observability": {"category": "both", "beats": "sound", "hidden": "sound"}}
            for c, b, h in zip(category, beats, hidden, strict=True)]
    c_centres, b_centres = 3 * rng.normal(size=(3, 4)), 3 * rng.normal(size=(4, 4))
    native = np.concatenate([c_centres[category], b_centres[beats], rng.normal(size=(n, 4))], 1)
    bound = np.concatenate([c_centres[category], 0.25 * b_centres[beats], rng.normal(size=(n, 4))], 1)
    native, bound = native + rng.normal(size=native.shape), bound + rng.normal(size=bound.shape)
    return torch.tensor(bound, dtype=torch.float32), torch.tensor(native, dtype=torch.float32), meta


def run_probes(seed: int = 0, n: int = 160):
    bound, native, meta = synthetic(n)
    return probe_modality(bound, native, torch.ones(len(meta), dtype=torch.bool), meta, GROUPS, MODALITY, seed=seed)


@pytest.fixture(scope="module")
def probed():
    return run_probes(seed=0)


def test_index_uses_only_attributes_with_a_significant_native_lift(probed):
    results = probed.results
    assert results["category"]["excluded"] is None and results["beats"]["excluded"] is None
    assert results["category"]["native_p_value"] < 1e-6 and results["beats"]["native_p_value"] < 1e-6
    hidden = results["hidden"]
    assert hidden["relative_loss"] is None and hidden["knn_relative_loss"] is None
    assert "not significant" in hidden["excluded"] and f"/{hidden['num_samples']} correct" in hidden["excluded"]
    assert hidden["native_p_value"] >= 0.05
    assert 0.2 < results["beats"]["relative_loss"] < 1.0
    assert abs(results["category"]["relative_loss"]) < 0.1

    summary = visiocentrism_summary(results, probed.replicates)
    assert summary["index_attributes"] == {"non-visual": ["beats"], "shared": ["category"]}
    assert set(summary["index_excluded"]) == {"hidden"}
    expected = results["beats"]["relative_loss"] - results["category"]["relative_loss"]
    assert summary["index"] == pytest.approx(expected) and 0 < summary["index"] < 1
    assert summary["index_undefined_reason"] is None
    lo, hi = summary["index_ci95"]
    assert lo < summary["index"] < hi and lo > 0 and hi - lo < 0.5
    assert summary["index_std"] > 0 and summary["index_num_bootstrap"] == 1000 and summary["num_folds"] == 5
    assert results["beats"]["relative_loss_ci95"][0] < results["beats"]["relative_loss"]


def test_no_qualifying_attribute_leaves_the_index_undefined_and_says_why(probed):
    results = {a: p for a, p in probed.results.items() if a != "beats"}
    summary = visiocentrism_summary(results, probed.replicates)
    assert summary["index"] is None and summary["index_ci95"] is None
    reason = summary["index_undefined_reason"]
    assert reason.startswith("no non-visual attribute qualifies") and "hidden: native lift" in reason
    assert index_undefined_reason({"beats": {"group": "non-visual", "carried": False}}) == (
        "the inputs carry no non-visual attribute (beats); the data has no shared attribute")


def test_a_small_or_insignificant_lift_is_excluded_with_its_numbers():
    assert lift_exclusion_reason(0.13, 0.10, 0.21, 13, 100) == (
        "native lift 0.030 over chance 0.100 not significant (p=0.21, 13/100 correct)")
    assert lift_exclusion_reason(0.53, 0.50, 0.001, 5300, 10000) == (
        "native lift 0.030 over chance 0.500 below the minimum 0.05 (p=0.001)")
    assert lift_exclusion_reason(0.80, 0.50, 0.001, 80, 100) is None


def test_the_analysis_is_a_function_of_the_embeddings_and_the_seed():
    bound, native, meta = synthetic()
    emb = EmbeddingSet(keys=[f"s{i}" for i in range(len(meta))], embeddings={MODALITY: bound},
                       features={MODALITY: native}, masks={MODALITY: torch.ones(len(meta), dtype=torch.bool)},
                       meta=meta)
    first = json.dumps(visiocentrism_section(emb, {}, seed=3), sort_keys=True)
    assert json.dumps(visiocentrism_section(emb, {}, seed=3), sort_keys=True) == first
    with threadpool_limits(limits=1):
        assert json.dumps(visiocentrism_section(emb, {}, seed=3), sort_keys=True) == first
    other = visiocentrism_section(emb, {}, seed=4)
    assert other["index_rule"]["seed"] == 4
    assert other["summary"][MODALITY]["index_ci95"] != json.loads(first)["summary"][MODALITY]["index_ci95"]


def test_cross_validated_probe_pairs_folds_and_matches_the_summary_probe():
    bound, native, meta = synthetic(90)
    labels = np.array([m["attributes"]["beats"] for m in meta])
    a = cross_validated_probe(native.numpy(), labels, cv_folds=3, seed=1)
    b = cross_validated_probe(bound.numpy(), labels, cv_folds=3, seed=1)
    assert np.array_equal(a.fold, b.fold) and sorted(set(a.fold.tolist())) == [0, 1, 2]
    assert a.num_correct == int((a.predictions == labels).sum())
    summary = linear_probe(native.numpy(), labels, cv_folds=3, seed=1)
    assert summary["accuracy"] == pytest.approx(float(np.mean(a.fold_accuracy)), abs=1e-12)


def test_significance_helpers_match_textbook_values():
    assert lift_p_value(8, 10, 0.5) == pytest.approx(56 / 1024)
    assert lift_p_value(3, 10, 1.0) == 1.0
    seeds = aggregate_over_seeds([1.0, 2.0, None, 3.0])
    assert (seeds["mean"], seeds["std"], seeds["n"], seeds["num_undefined"]) == (2.0, 1.0, 3, 1)
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert seeds["ci95"] == pytest.approx([2 - half, 2 + half])
    single = aggregate_over_seeds([0.4])
    assert single["std"] is None and single["ci95"] is None
    wilson = proportion_estimate(0.8, 10)
    assert wilson["ci95"] == pytest.approx([0.4902, 0.9433], abs=1e-4)


def test_comparisons_claim_a_direction_only_when_a_test_says_so():
    far_a, far_b = aggregate_over_seeds([0.50, 0.52, 0.51]), aggregate_over_seeds([0.20, 0.22, 0.21])
    assert compare_estimates(far_a, far_b)["verdict"] == ">"
    assert word_comparison("A", far_a, "B", far_b).startswith("A > B (p=")
    close_a, close_b = aggregate_over_seeds([0.50, 0.30, 0.40]), aggregate_over_seeds([0.45, 0.25, 0.35])
    sentence = word_comparison("A", close_a, "B", close_b)
    assert sentence.startswith("no significant difference") and "(n=3 seeds)" in sentence
    assert word_comparison("A", aggregate_over_seeds([0.9]), "B", aggregate_over_seeds([0.1])).startswith(
        "not tested, no spread")
    assert compare_estimates(proportion_estimate(0.2, 200), proportion_estimate(0.6, 200))["verdict"] == "<"
    assert word_correlation(0.8, 0.004, 9) == "positively correlated (r=0.80, p=0.004, n=9)"
    assert word_correlation(0.3, 0.4, 9).startswith("no significant correlation")


def test_report_shows_the_interval_the_exclusions_and_worded_comparisons(probed, tmp_path):
    summary = visiocentrism_summary(probed.results, probed.replicates)
    shifted = dict(summary, index=summary["index"] - 0.5,
                   index_ci95=[v - 0.5 for v in summary["index_ci95"]])
    m = {"uses_mitigation": False,
         "visiocentrism": {"probes": {MODALITY: probed.results}, "summary": {MODALITY: summary},
                           "index": {MODALITY: summary["index"]}, "retrieval_by_attribute": {},
                           "index_rule": {"alpha": 0.05, "min_native_lift": 0.05, "bootstrap_replicates": 1000,
                                          "seed": 0}},
         "compare": {"/runs/same": {"uses_mitigation": True, "visiocentrism_summary": {MODALITY: summary}},
                     "/runs/lower": {"uses_mitigation": True, "visiocentrism_summary": {MODALITY: shifted}}}}
    text = "\n".join(p for p in _visiocentrism(m, _Figures(tmp_path), "bound") if p)
    lo, hi = summary["index_ci95"]
    assert f"(index {summary['index']:.3f} [{lo:.3f}, {hi:.3f}])" in text
    assert "Excluded from the index: hidden (native lift" in text
    same = next(line for line in text.splitlines() if "same (mitigation yes)" in line)
    assert "no significant difference" in same and "(n=1 seed)" in same
    lower = next(line for line in text.splitlines() if "lower (mitigation yes)" in line)
    assert "bound (mitigation no) > lower (mitigation yes)" in lower


def test_report_words_emergent_against_direct_with_query_counts():
    m = {"retrieval": {"t->a": {"num_pairs": 200}},
         "baselines": {"/runs/direct": {"retrieval": {"t->a": {"num_pairs": 200}}}},
         "emergent_vs_direct": {"t->a": {"baseline": "/runs/direct", "emergent/category/R@1": 0.55,
                                         "direct/category/R@1": 0.60, "emergent/instance/R@1": 0.10,
                                         "direct/instance/R@1": 0.30}}}
    text = _emergent_vs_direct_words(m)
    assert "t->a, category R@1: no significant difference" in text and "(n=200 queries)" in text
    assert "t->a, instance R@1: emergent < direct (p=" in text
    missing = dict(m, baselines={})
    assert "not tested" in _emergent_vs_direct_words(missing)


def test_seed_aggregate_of_undefined_runs_is_undefined():
    empty = aggregate_over_seeds([None, float("nan")])
    assert empty["mean"] is None and empty["n"] == 0 and empty["num_undefined"] == 2
    assert compare_estimates(empty, estimate(0.1, sem=0.01, n=1, unit="seed"))["verdict"] == "untested"


def test_headline_shows_the_index_interval_and_an_emergent_direct_verdict(probed):
    from anchorbind.evaluation.report import _headline

    summary = visiocentrism_summary(probed.results, probed.replicates)
    m = {"retrieval": {"t->a": {"kind": "emergent", "num_pairs": 50, "category/R@1": 0.5}},
         "baselines": {"/runs/direct": {"retrieval": {"t->a": {"kind": "direct", "num_pairs": 50}}}},
         "emergent_vs_direct": {"t->a": {"baseline": "/runs/direct", "emergent/category/R@1": 0.5,
                                         "direct/category/R@1": 0.56, "ratio/category/R@1": 0.5 / 0.56}},
         "modalities": {MODALITY: 160},
         "visiocentrism": {"summary": {MODALITY: summary}, "index": {MODALITY: summary["index"]}}}
    text = "\n".join(_headline(m, "bound"))
    lo, hi = summary["index_ci95"]
    assert f"| {summary['index']:.3f} [{lo:.3f}, {hi:.3f}] |" in text
    assert "no significant difference (p=" in text and "n=50 vs 50 queries" in text
