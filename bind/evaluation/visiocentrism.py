"""Visiocentrism: which information survives binding a modality to an image space?

For every modality and every ground-truth attribute its input carries (``carried_by`` /
``caption_states`` in the data's JSON; every attribute when the data says nothing), a linear
probe reads the attribute from (a) the bound embedding and (b) the native trunk features (for
the anchor: its pooled features), by stratified cross-validation. Binding through a frozen image
anchor rewards keeping what images can show, so attributes images cannot see (the world's beats,
tempo, loudness) should lose more probe accuracy than shared ones (category, size).

Relative probe loss of attribute ``a``::

    headroom(a) = acc_native(a) - chance(a)          # chance = majority-class rate
    rel_loss(a) = clip((acc_native(a) - acc_bound(a)) / headroom(a), -1, 1)   if headroom(a) >= 0.05
                = undefined (null)                                            otherwise

the share of the *above-chance* information in the native features that the bound embedding
lost: 0 = nothing lost, 1 = down to chance, negative = the embedding reads it better. An
attribute whose native features barely beat chance has nothing to lose, and dividing by a
near-zero headroom would only amplify probe noise, so it is left out rather than clamped;
clipping bounds the weight of one noisy attribute in the mean. The index of a modality::

    index = mean_{a non-visual, defined} rel_loss(a) - mean_{a shared, defined} rel_loss(a)

Positive: binding destroys non-visual information more than shared information. It is null
when the modality carries no non-visual (or no shared) attribute with native information,
e.g. for the image and depth, whose inputs cannot carry sound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.groupwise import PROBE_COMPONENTS, probe_folds
from anchorbind.evaluation.pairs import ordered_pairs
from anchorbind.evaluation.retrieval import chance_recall, shared_rows
from anchorbind.evaluation.schema import GROUP_ORDER, attribute_groups, attribute_labels, carried_mask
from anchorbind.metrics import knn_accuracy, linear_probe, retrieval_metrics

__all__ = ["MIN_HEADROOM", "attribute_probes", "emergent_by_attribute", "relative_probe_loss",
           "visiocentrism_index", "visiocentrism_section", "visiocentrism_summary"]

MIN_HEADROOM = 0.05
KNN_K = 10
MIN_QUERIES = 5


def relative_probe_loss(native: float, bound: float, chance: float, min_headroom: float = MIN_HEADROOM) -> float | None:
    """``clip((native - bound) / (native - chance), -1, 1)``; None when native is < ``min_headroom`` above chance."""
    headroom = native - chance
    if headroom < min_headroom:
        return None
    return float(np.clip((native - bound) / headroom, -1.0, 1.0))


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
    """Probe accuracy per attribute from bound embeddings and from native features, two read-outs.

    ``native``/``bound``: a linear probe (standardised logistic regression, stratified
    cross-validation), which reads information from any direction, however little variance it
    has. ``knn_native``/``knn_bound``: leave-one-out cosine k-NN, which only sees what the
    geometry exposes to similarity search, the way retrieval and zero-shot use an embedding.

    Args:
        embeddings: ``(N, D)`` bound embeddings of the modality (all rows of the split).
        features: ``(N, F)`` native features of the same rows.
        mask: ``(N,)`` rows that have the modality.
        meta: per-row JSON records.
        groups: ``{attribute: group}`` (see :func:`anchorbind.evaluation.schema.attribute_groups`).
        modality: the modality's name (decides which rows carry which attribute).
        knn_k: neighbours of the k-NN read-out (fewer when there are fewer samples).
        seed: fold shuffling and solver seed.

    Returns:
        ``{attribute: {group, carried, num_samples, folds, left_out_rare_samples, chance,
        native, native_std, bound, bound_std, relative_loss, knn_native, knn_bound,
        knn_relative_loss}}``; attributes the input does not carry have ``carried: False`` and
        no probe; ones with too few samples per value say why under ``skipped``.
    """
    rows = np.array([i for i in mask.nonzero().squeeze(1).tolist() if meta[i] is not None], dtype=int)
    out: dict[str, dict[str, Any]] = {}
    for attribute, group in groups.items():
        carried = carried_mask(meta, rows, modality, attribute)
        if not carried.any():
            out[attribute] = {"group": group, "carried": False}
            continue
        attr_rows = rows[carried]
        labels = attribute_labels(meta, attr_rows, attribute)
        if labels is None:
            out[attribute] = {"group": group, "carried": True, "skipped": "some records lack the attribute"}
            continue
        folds, keep = probe_folds(labels)
        if folds == 0:
            out[attribute] = {"group": group, "carried": True, "num_samples": len(attr_rows),
                              "skipped": "fewer than two values with two samples each"}
            continue
        labels, attr_rows = labels[keep], attr_rows[keep]
        _, counts = np.unique(labels, return_counts=True)
        result: dict[str, Any] = {
            "group": group, "carried": True, "num_samples": len(attr_rows), "folds": folds,
            "left_out_rare_samples": int((~keep).sum()), "chance": float(counts.max() / counts.sum()),
        }
        k = min(knn_k, len(attr_rows) - 1)
        for name, x in (("native", features[attr_rows]), ("bound", embeddings[attr_rows])):
            probe = linear_probe(x.numpy(), labels, cv_folds=folds, seed=seed, components=PROBE_COMPONENTS)
            result[name], result[f"{name}_std"] = probe["accuracy"], probe["accuracy_std"]
            result[f"knn_{name}"] = knn_accuracy(x.numpy(), labels, k=k)["accuracy"]
        result["relative_loss"] = relative_probe_loss(result["native"], result["bound"], result["chance"])
        result["knn_relative_loss"] = relative_probe_loss(result["knn_native"], result["knn_bound"],
                                                          result["chance"])
        out[attribute] = result
    return out


def visiocentrism_summary(probes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per group: mean relative loss (both read-outs), mean accuracy above chance; and the indices."""
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
    summary["index_knn"] = visiocentrism_index(probes, key="knn_relative_loss")
    return summary


def visiocentrism_index(probes: Mapping[str, Mapping[str, Any]], key: str = "relative_loss") -> float | None:
    """Mean ``key`` over non-visual attributes minus its mean over shared ones (None if either is absent)."""
    by_group: dict[str, list[float]] = {}
    for result in probes.values():
        if result.get(key) is not None:
            by_group.setdefault(result["group"], []).append(result[key])
    if not by_group.get("non-visual") or not by_group.get("shared"):
        return None
    return float(np.mean(by_group["non-visual"]) - np.mean(by_group["shared"]))


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
                          notes: list[str] | None = None) -> dict[str, Any]:
    """Probes and index of every modality, and retrieval by attribute for every ordered pair.

    Args:
        emb: the run's :class:`anchorbind.evaluation.extract.EmbeddingSet`.
        loss_config: the run's ``loss`` config (labels the pairs' kinds).
        notes: collects what was skipped and why.

    Returns:
        ``{"groups", "probes", "summary", "index", "retrieval_by_attribute"}`` (docs/metrics.md);
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
        probes[name] = attribute_probes(emb.embeddings[name], emb.features[name], emb.masks[name], emb.meta,
                                        groups, name)
        summary[name] = visiocentrism_summary(probes[name])
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
            "retrieval_by_attribute": by_attribute}
