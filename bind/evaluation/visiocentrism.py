"""Visiocentrism: which information survives binding a modality to an image space?

For every modality and every ground-truth attribute its input carries (``carried_by`` /
``caption_states`` in the data's JSON; every attribute when the data says nothing), a linear
probe reads the attribute from (a) the bound embedding and (b) the native trunk features (for
the anchor: its pooled features), by stratified cross-validation. Binding through a frozen image
anchor rewards keeping what images can show, so attributes images cannot see (the world's beats,
tempo, loudness) should lose more probe accuracy than shared ones (category, size).

Relative probe loss of attribute ``a``::

    lift(a)     = acc_native(a) - chance(a)          # chance = majority-class rate
    rel_loss(a) = clip((acc_native(a) - acc_bound(a)) / lift(a), -1, 1)   if a qualifies
                = undefined (null), with the reason                       otherwise

the share of the *above-chance* information in the native features that the bound embedding
lost: 0 = nothing lost, 1 = down to chance, negative = the embedding reads it better.

An attribute qualifies when its native lift is both *significant* (one-sided binomial test of
the pooled out-of-fold native predictions against the chance rate, p < :data:`ALPHA`) and at
least :data:`MIN_HEADROOM`. A native lift that is noise, or so small that dividing by it only
amplifies probe noise, says nothing about what binding lost: a text index of 0.53 in one run
and -1.00 in the next, on a trunk that did not change, came from a lift of 0.03. Clipping bounds
the weight of one noisy attribute in the mean. The index of a modality::

    index = mean_{a non-visual, qualifying} rel_loss(a) - mean_{a shared, qualifying} rel_loss(a)

Positive: binding destroys non-visual information more than shared information. It is null,
with ``index_undefined_reason``, when the modality carries no qualifying non-visual (or shared)
attribute, e.g. for the image and depth, whose inputs cannot carry sound.

Its 95 % interval resamples the evaluated rows (bootstrap, :data:`BOOTSTRAP_REPLICATES`
replicates drawn from a generator seeded with the analysis seed; all attributes of a modality
share each replicate's rows) over the paired out-of-fold native and bound predictions, so it
reflects the evaluation sample and the fold models; the spread over training seeds is added by
whoever aggregates runs (:func:`anchorbind.metrics.significance.aggregate_over_seeds`). Every
number is a function of the embeddings and the seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.groupwise import PROBE_COMPONENTS, probe_folds
from anchorbind.evaluation.pairs import ordered_pairs
from anchorbind.evaluation.retrieval import chance_recall, shared_rows
from anchorbind.evaluation.schema import GROUP_ORDER, attribute_groups, attribute_labels, carried_mask
from anchorbind.metrics import knn_accuracy, retrieval_metrics
from anchorbind.metrics.probe import cross_validated_probe
from anchorbind.metrics.significance import ALPHA, lift_p_value

__all__ = ["ALPHA", "BOOTSTRAP_REPLICATES", "INDEX_GROUPS", "MIN_HEADROOM", "ModalityProbes", "attribute_probes",
           "emergent_by_attribute", "index_interval", "index_undefined_reason", "lift_exclusion_reason",
           "probe_modality", "relative_probe_loss", "visiocentrism_index", "visiocentrism_section",
           "visiocentrism_summary"]

MIN_HEADROOM = 0.05
"""Smallest native lift over chance an attribute needs (besides significance) to enter the index."""
BOOTSTRAP_REPLICATES = 1000
"""Bootstrap replicates of the index interval: percentiles of 1000 replicates are stable to ~0.01."""
BOOTSTRAP_CHUNK = 100
"""Replicates drawn at once (bounds memory to chunk x rows counts); part of the seeded stream."""
INDEX_GROUPS = ("non-visual", "shared")
"""The index compares these two groups: first minus second."""
KNN_K = 10
MIN_QUERIES = 5


@dataclass(frozen=True)
class _PairedReadout:
    """One attribute's paired out-of-fold correctness, what the bootstrap resamples."""

    positions: np.ndarray
    native: np.ndarray
    bound: np.ndarray
    chance: float


@dataclass(frozen=True)
class ModalityProbes:
    """The probes of one modality: the JSON results and the bootstrap replicates behind their intervals.

    Attributes:
        results: ``{attribute: {...}}`` as :func:`attribute_probes` returns.
        replicates: ``{attribute: (B,) relative losses}`` of the attributes whose relative loss
            is defined, one value per bootstrap replicate (NaN where a replicate drew none of the
            attribute's rows); replicate ``b`` of every attribute used the same resampled rows.
    """

    results: dict[str, dict[str, Any]]
    replicates: dict[str, np.ndarray] = field(default_factory=dict)


def relative_probe_loss(native: float, bound: float, chance: float, min_headroom: float = MIN_HEADROOM) -> float | None:
    """``clip((native - bound) / (native - chance), -1, 1)``; None when native is < ``min_headroom`` above chance."""
    headroom = native - chance
    if headroom < min_headroom:
        return None
    return float(np.clip((native - bound) / headroom, -1.0, 1.0))


def lift_exclusion_reason(accuracy: float, chance: float, p_value: float, correct: int, total: int, *,
                          alpha: float = ALPHA, min_lift: float = MIN_HEADROOM) -> str | None:
    """Why an attribute's native read-out is too weak to divide by, or None when it qualifies.

    Both conditions matter: significance alone admits a lift of 0.01 on a large evaluation set,
    and a minimum lift alone admits a lucky 0.06 on a small one.
    """
    lift = accuracy - chance
    if p_value >= alpha:
        return (f"native lift {lift:.3f} over chance {chance:.3f} not significant "
                f"(p={p_value:.2g}, {correct}/{total} correct)")
    if lift < min_lift:
        return f"native lift {lift:.3f} over chance {chance:.3f} below the minimum {min_lift:.2f} (p={p_value:.2g})"
    return None


def probe_modality(
    embeddings: torch.Tensor,
    features: torch.Tensor,
    mask: torch.Tensor,
    meta: Sequence[Mapping[str, Any] | None],
    groups: Mapping[str, str],
    modality: str,
    *,
    knn_k: int = KNN_K,
    seed: int = 0,
    replicates: int = BOOTSTRAP_REPLICATES,
) -> ModalityProbes:
    """Probe accuracy per attribute from bound embeddings and from native features, two read-outs.

    ``native``/``bound``: a linear probe (standardised logistic regression, stratified
    cross-validation), which reads information from any direction, however little variance it
    has. ``knn_native``/``knn_bound``: leave-one-out cosine k-NN, which only sees what the
    geometry exposes to similarity search, the way retrieval and zero-shot use an embedding.
    Native and bound probes of an attribute use the same folds, so their per-row predictions pair
    up for the bootstrap.

    Args:
        embeddings: ``(N, D)`` bound embeddings of the modality (all rows of the split).
        features: ``(N, F)`` native features of the same rows.
        mask: ``(N,)`` rows that have the modality.
        meta: per-row JSON records.
        groups: ``{attribute: group}`` (see :func:`anchorbind.evaluation.schema.attribute_groups`).
        modality: the modality's name (decides which rows carry which attribute).
        knn_k: neighbours of the k-NN read-out (fewer when there are fewer samples).
        seed: fold shuffling, solver and bootstrap seed.
        replicates: bootstrap replicates of the intervals (0: none).

    Returns:
        :class:`ModalityProbes`; ``results[attribute]`` is ``{group, carried, num_samples, folds,
        left_out_rare_samples, chance, native, native_std, native_correct, native_p_value,
        excluded, bound, bound_std, relative_loss, relative_loss_ci95, knn_native,
        knn_native_p_value, knn_excluded, knn_bound, knn_relative_loss}``; attributes the input
        does not carry have ``carried: False`` and no probe; ones with too few samples per value
        say why under ``skipped``. ``excluded`` is None or why ``relative_loss`` is null.
    """
    rows = np.array([i for i in mask.nonzero().squeeze(1).tolist() if meta[i] is not None], dtype=int)
    results: dict[str, dict[str, Any]] = {}
    readouts: dict[str, _PairedReadout] = {}
    for attribute, group in groups.items():
        carried = carried_mask(meta, rows, modality, attribute)
        if not carried.any():
            results[attribute] = {"group": group, "carried": False}
            continue
        positions = np.flatnonzero(carried)
        labels = attribute_labels(meta, rows[positions], attribute)
        if labels is None:
            results[attribute] = {"group": group, "carried": True, "skipped": "some records lack the attribute"}
            continue
        folds, keep = probe_folds(labels)
        if folds == 0:
            results[attribute] = {"group": group, "carried": True, "num_samples": len(positions),
                                  "skipped": "fewer than two values with two samples each"}
            continue
        results[attribute], readout = _probe_attribute(
            embeddings[rows[positions[keep]]], features[rows[positions[keep]]], labels[keep], group, folds,
            knn_k=knn_k, seed=seed)
        results[attribute]["left_out_rare_samples"] = int((~keep).sum())
        if results[attribute]["relative_loss"] is not None:
            readouts[attribute] = _PairedReadout(positions[keep], *readout)
    boot = _bootstrap_relative_losses(readouts, len(rows), seed=seed, replicates=replicates)
    for attribute, values in boot.items():
        results[attribute]["relative_loss_ci95"] = _percentile_interval(values)
    return ModalityProbes(results=results, replicates=boot)


def attribute_probes(
    embeddings: torch.Tensor,
    features: torch.Tensor,
    mask: torch.Tensor,
    meta: Sequence[Mapping[str, Any] | None],
    groups: Mapping[str, str],
    modality: str,
    *,
    knn_k: int = KNN_K,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """The JSON results of :func:`probe_modality` (same arguments), without the bootstrap replicates."""
    return probe_modality(embeddings, features, mask, meta, groups, modality, knn_k=knn_k, seed=seed).results


def _probe_attribute(bound_x: torch.Tensor, native_x: torch.Tensor, labels: np.ndarray, group: str, folds: int, *,
                     knn_k: int, seed: int) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray, float]]:
    """One attribute's result dict and its paired out-of-fold correctness ``(native, bound, chance)``."""
    _, counts = np.unique(labels, return_counts=True)
    chance = float(counts.max() / counts.sum())
    total = len(labels)
    result: dict[str, Any] = {"group": group, "carried": True, "num_samples": total, "folds": folds,
                              "chance": chance}
    k = min(knn_k, total - 1)
    correct: dict[str, np.ndarray] = {}
    for name, x in (("native", native_x), ("bound", bound_x)):
        probe = cross_validated_probe(x.numpy(), labels, cv_folds=folds, seed=seed, components=PROBE_COMPONENTS)
        result[name] = float(np.mean(probe.fold_accuracy))
        result[f"{name}_std"] = float(np.std(probe.fold_accuracy))
        correct[name] = probe.correct
        knn = knn_accuracy(x.numpy(), labels, k=k)
        result[f"knn_{name}"] = knn["accuracy"]
        if name == "native":
            result["native_correct"] = probe.num_correct
            result["native_p_value"] = lift_p_value(probe.num_correct, total, chance)
            knn_correct = round(knn["accuracy"] * knn["num_evaluated"])
            result["knn_native_p_value"] = lift_p_value(knn_correct, int(knn["num_evaluated"]), chance)
            result["knn_excluded"] = lift_exclusion_reason(knn["accuracy"], chance, result["knn_native_p_value"],
                                                           knn_correct, int(knn["num_evaluated"]))
    result["excluded"] = lift_exclusion_reason(result["native"], chance, result["native_p_value"],
                                               result["native_correct"], total)
    result["relative_loss"] = (None if result["excluded"] else
                               relative_probe_loss(result["native"], result["bound"], chance, min_headroom=0.0))
    result["relative_loss_ci95"] = None
    result["knn_relative_loss"] = (None if result["knn_excluded"] else relative_probe_loss(
        result["knn_native"], result["knn_bound"], chance, min_headroom=0.0))
    return result, (correct["native"], correct["bound"], chance)


def _bootstrap_relative_losses(readouts: Mapping[str, _PairedReadout], num_rows: int, *, seed: int,
                               replicates: int) -> dict[str, np.ndarray]:
    """Relative loss of every attribute in each of ``replicates`` row resamples of the modality.

    Rows are resampled once per replicate for the whole modality (as multiplicities), so
    attributes measured on the same rows move together, as they do between evaluation sets.
    The draws come from ``default_rng(seed)`` in fixed chunks: the same seed, the same numbers.
    """
    if not readouts or replicates <= 0 or num_rows == 0:
        return {}
    rng = np.random.default_rng(seed)
    out = {attribute: np.empty(replicates, dtype=np.float64) for attribute in readouts}
    for start in range(0, replicates, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, replicates - start)
        draws = rng.integers(0, num_rows, size=(size, num_rows)) + num_rows * np.arange(size)[:, None]
        weights = np.bincount(draws.ravel(), minlength=size * num_rows).reshape(size, num_rows).astype(np.float64)
        for attribute, r in readouts.items():
            w = weights[:, r.positions]
            total = w.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                native = w @ r.native.astype(np.float64) / total
                bound = w @ r.bound.astype(np.float64) / total
                # a resample whose native accuracy falls to chance lost everything it had: the sign
                # of (native - bound) decides, the clip bounds it
                loss = np.clip((native - bound) / np.maximum(native - r.chance, 1e-12), -1.0, 1.0)
            out[attribute][start:start + size] = np.where(total > 0, loss, np.nan)
    return out


def _percentile_interval(values: np.ndarray) -> list[float] | None:
    """The central 95 % of the finite replicate values, None when there are fewer than two."""
    finite = values[np.isfinite(values)]
    if len(finite) < 2:
        return None
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [float(lo), float(hi)]


def visiocentrism_summary(probes: Mapping[str, Mapping[str, Any]],
                          replicates: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Per group: mean relative loss (both read-outs), mean accuracy above chance; the indices and why not.

    Args:
        probes: ``{attribute: result}`` of one modality (:func:`attribute_probes`).
        replicates: the bootstrap replicates of :func:`probe_modality`; without them the index
            has no interval.
    """
    summary: dict[str, Any] = {}
    for group in GROUP_ORDER:
        mine = [p for p in probes.values() if p.get("group") == group and "native" in p]
        for key, name in (("relative_loss", "mean_relative_loss"), ("knn_relative_loss", "mean_knn_relative_loss")):
            values = [p[key] for p in mine if p.get(key) is not None]
            summary[f"{name}/{group}"] = float(np.mean(values)) if values else None
            summary[f"num_defined/{name}/{group}"] = len(values)
        for source in ("native", "bound"):
            summary[f"mean_{source}_lift/{group}"] = (float(np.mean([p[source] - p["chance"] for p in mine]))
                                                      if mine else None)
    summary["index"] = visiocentrism_index(probes)
    summary["index_undefined_reason"] = index_undefined_reason(probes)
    summary.update(index_interval(probes, replicates or {}))
    summary["index_attributes"] = {group: [a for a, p in probes.items()
                                           if p.get("group") == group and p.get("relative_loss") is not None]
                                   for group in INDEX_GROUPS}
    summary["index_excluded"] = {a: p["excluded"] for a, p in probes.items() if p.get("excluded")}
    summary["index_knn"] = visiocentrism_index(probes, key="knn_relative_loss")
    summary["index_knn_undefined_reason"] = index_undefined_reason(probes, key="knn_relative_loss",
                                                                   excluded_key="knn_excluded")
    return summary


def visiocentrism_index(probes: Mapping[str, Mapping[str, Any]], key: str = "relative_loss") -> float | None:
    """Mean ``key`` over non-visual attributes minus its mean over shared ones (None if either is absent)."""
    by_group: dict[str, list[float]] = {}
    for result in probes.values():
        if result.get(key) is not None:
            by_group.setdefault(result["group"], []).append(result[key])
    first, second = INDEX_GROUPS
    if not by_group.get(first) or not by_group.get(second):
        return None
    return float(np.mean(by_group[first]) - np.mean(by_group[second]))


def index_undefined_reason(probes: Mapping[str, Mapping[str, Any]], key: str = "relative_loss",
                           excluded_key: str = "excluded") -> str | None:
    """Why :func:`visiocentrism_index` is null, group by group and attribute by attribute; None when defined.

    A null index without a reason reads like a bug; with one it tells apart "this modality cannot
    carry sound" from "the native trunk did not learn it" from "too few samples to probe".
    """
    if visiocentrism_index(probes, key) is not None:
        return None
    reasons = []
    for group in INDEX_GROUPS:
        mine = {a: p for a, p in probes.items() if p.get("group") == group}
        if any(p.get(key) is not None for p in mine.values()):
            continue
        carried = {a: p for a, p in mine.items() if p.get("carried", True)}
        if not mine:
            reasons.append(f"the data has no {group} attribute")
        elif not carried:
            reasons.append(f"the inputs carry no {group} attribute ({', '.join(mine)})")
        else:
            why = [f"{a}: {p.get(excluded_key) or p.get('skipped') or 'not probed'}" for a, p in carried.items()]
            reasons.append(f"no {group} attribute qualifies ({'; '.join(why)})")
    return "; ".join(reasons)


def index_interval(probes: Mapping[str, Mapping[str, Any]],
                   replicates: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``index_ci95``, ``index_std``, ``index_num_bootstrap`` and ``num_folds`` of the index.

    Each bootstrap replicate's index is computed from the same attributes as the point estimate
    (those with a defined relative loss), so the interval answers "how much would this number
    move on another evaluation sample", not "which attributes would qualify".
    """
    empty = {"index_ci95": None, "index_std": None, "index_num_bootstrap": 0, "num_folds": None}
    if visiocentrism_index(probes) is None:
        return empty
    members = {g: [a for a, p in probes.items() if p.get("group") == g and p.get("relative_loss") is not None]
               for g in INDEX_GROUPS}
    used = [a for names in members.values() for a in names]
    out = dict(empty, num_folds=min(int(probes[a]["folds"]) for a in used))
    if not all(a in replicates for a in used):
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate that drew no row of a group: NaN
        per_group = [np.nanmean(np.stack([replicates[a] for a in members[g]]), axis=0) for g in INDEX_GROUPS]
    values = per_group[0] - per_group[1]
    finite = values[np.isfinite(values)]
    if len(finite) < 2:
        return out
    return dict(out, index_ci95=_percentile_interval(finite), index_std=float(np.std(finite, ddof=1)),
                index_num_bootstrap=len(finite))


def emergent_by_attribute(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    meta: Sequence[Mapping[str, Any] | None],
    groups: Mapping[str, str],
    query_modality: str,
    gallery_modality: str,
) -> dict[str, Any]:
    """R@1/R@5 where a gallery item is relevant when it shares the query's value of attribute a.

    Only queries and gallery items whose input carries the attribute take part (a caption that
    does not mention the rhythm can neither ask for it nor be found by it; depth maps carry no
    colour). The chance level of a random ranking (see
    :func:`anchorbind.evaluation.retrieval.chance_recall`) is beside each number, and ``by_group``
    averages R@1 and its lift over chance per observability group.

    Args:
        queries: ``(N, D)`` query embeddings, row-aligned with ``gallery`` and ``meta``.
        gallery: ``(N, D)`` gallery embeddings.
        meta: per-row JSON records.
        groups: ``{attribute: group}``.
        query_modality: the queries' modality (decides which rows carry which attribute).
        gallery_modality: the gallery's modality.
    """
    out: dict[str, Any] = {}
    all_rows = np.arange(len(meta))
    for attribute, group in groups.items():
        q_rows = all_rows[carried_mask(meta, all_rows, query_modality, attribute)]
        g_rows = all_rows[carried_mask(meta, all_rows, gallery_modality, attribute)]
        if len(q_rows) < MIN_QUERIES or len(g_rows) < MIN_QUERIES:
            continue
        q_labels = attribute_labels(meta, q_rows, attribute)
        g_labels = attribute_labels(meta, g_rows, attribute)
        if q_labels is None or g_labels is None or len(set(g_labels.tolist())) < 2:
            continue
        if not np.isin(q_labels, g_labels).any():
            continue
        ks = tuple(k for k in (1, 5) if k <= len(g_rows))
        metrics = retrieval_metrics(queries[q_rows], gallery[g_rows], query_labels=q_labels, gallery_labels=g_labels,
                                    paired=False, ks=ks)
        chance = chance_recall(q_labels, g_labels, ks)
        out[attribute] = {"group": group, "R@1": metrics["category/R@1"], "R@5": metrics.get("category/R@5"),
                          "chance_R@1": chance[1], "chance_R@5": chance.get(5), "num_queries": len(q_rows),
                          "num_gallery": len(g_rows)}
    by_group: dict[str, Any] = {}
    for group in GROUP_ORDER:
        mine = [b for b in out.values() if b["group"] == group]
        if mine:
            by_group[group] = {"mean_R@1": float(np.mean([b["R@1"] for b in mine])),
                               "mean_lift_over_chance": float(np.mean([b["R@1"] - b["chance_R@1"] for b in mine])),
                               "attributes": [a for a, b in out.items() if b["group"] == group]}
    return {"attributes": out, "by_group": by_group}


def visiocentrism_section(emb: EmbeddingSet, loss_config: Mapping[str, Any], *,
                          notes: list[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """Probes and index of every modality, and retrieval by attribute for every ordered pair.

    Args:
        emb: the run's :class:`anchorbind.evaluation.extract.EmbeddingSet`.
        loss_config: the run's ``loss`` config (labels the pairs' kinds).
        notes: collects what was skipped and why.
        seed: folds, solvers and bootstrap; the section is a function of the embeddings and it.

    Returns:
        ``{"groups", "probes", "summary", "index", "index_rule", "retrieval_by_attribute"}``
        (docs/metrics.md);
        empty when the data's JSON declares neither attributes nor their observability. An
        attribute without observability is ``shared``, carried by every modality
        (:func:`anchorbind.evaluation.schema.attribute_groups`).
    """
    groups = attribute_groups(emb.meta)
    if groups is None:
        if notes is not None:
            notes.append("visiocentrism: skipped, the samples' JSON has no attributes")
        return {}
    probes, summary = {}, {}
    for name in emb.modalities:
        probed = probe_modality(emb.embeddings[name], emb.features[name], emb.masks[name], emb.meta, groups, name,
                                seed=seed)
        probes[name] = probed.results
        summary[name] = visiocentrism_summary(probed.results, probed.replicates)
    by_attribute = {}
    for name, pair in ordered_pairs(emb.modalities, loss_config).items():
        rows = shared_rows(emb, pair["query"], pair["gallery"])
        if len(rows) < MIN_QUERIES:
            continue
        meta = [emb.meta[i] for i in rows.tolist()]
        if any(m is None for m in meta):
            continue
        by_attribute[name] = {"kind": pair["kind"], **emergent_by_attribute(
            emb.embeddings[pair["query"]][rows], emb.embeddings[pair["gallery"]][rows], meta, groups,
            pair["query"], pair["gallery"])}
    return {"groups": groups, "probes": probes, "summary": summary,
            "index": {name: block["index"] for name, block in summary.items()},
            "index_rule": {"alpha": ALPHA, "min_native_lift": MIN_HEADROOM,
                           "bootstrap_replicates": BOOTSTRAP_REPLICATES, "seed": seed},
            "retrieval_by_attribute": by_attribute}
