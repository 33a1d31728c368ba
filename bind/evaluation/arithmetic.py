"""Embedding arithmetic scored against the world's ground truth (ImageBind Fig. 5, made measurable).

Query = image of scene *i* + plugin input (e.g. the audio) of scene *j*, where *j* has another
category. A retrieved image is a *hit* when it shows scene *j*'s category (from the plugin
input) **and** keeps scene *i*'s value of a visual-only attribute A (colour, background, ...;
only the image could have contributed it). The same targets queried with the image alone or
the plugin input alone are the baselines the sum must beat: the image alone finds A but not the
category, the plugin input (e.g. the audio) alone the category but not A. Results are keyed by the
plugin's own name (``image+<plugin>/acc@k``, ``<plugin>/acc@k``).

Scoring is :func:`anchorbind.metrics.embedding_arithmetic`; this module picks the scene pairs and the
targets from the data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anchorbind.errors import InputError
from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.retrieval import shared_rows
from anchorbind.evaluation.schema import attribute_groups, attribute_labels, carried_mask
from anchorbind.metrics import embedding_arithmetic
from anchorbind.registry import ANCHOR_MODALITY

__all__ = ["HIT_RULE", "arithmetic_section", "composition_partners"]

HIT_RULE = ("hit = a retrieved image with the plugin input's {label} and the query image's {attribute}")
MIN_QUERIES = 10


def composition_partners(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """For each row i, a partner row j with a different label (-1 when every row shares i's label).

    Partners are drawn uniformly among the rows of other labels, reproducibly from ``seed``: for
    row i, one ``rng.integers(0, n_other)`` draw picks the k-th row (in row order) whose label
    differs. That row is found by binary search over the rows of i's own label, so the cost is
    O(N log N) and no list of the other rows is built per row (that was O(N^2), measurable from a
    few thousand rows on).
    """
    rng = np.random.default_rng(seed)
    values, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1)
    rows_of = [np.flatnonzero(codes == c) for c in range(len(values))]
    # for label c: rows_of[c][m] - m = rows of other labels before its m-th own row
    others_before = [rows - np.arange(len(rows)) for rows in rows_of]
    partners = np.full(len(labels), -1, dtype=int)
    for i, code in enumerate(codes.tolist()):
        n_other = len(labels) - len(rows_of[code])
        if n_other:
            k = int(rng.integers(0, n_other))
            partners[i] = k + int(np.searchsorted(others_before[code], k, side="right"))
    return partners


def arithmetic_section(emb: EmbeddingSet, *, label_attribute: str = "category", seed: int = 0,
                       notes: list[str] | None = None) -> dict[str, Any]:
    """Composed-query accuracy@k for every plugin and every visual-only attribute the image carries.

    Returns:
        ``{"<plugin>": {"<attribute>": {image+<plugin>/acc@k, image/acc@k, <plugin>/acc@k,
        num_queries, num_queries_without_match, rule}}}`` (empty when the data has no ground truth).
    """
    groups = attribute_groups(emb.meta)
    visual_only = [a for a, g in (groups or {}).items() if g == "visual-only"]
    if not visual_only:
        if notes is not None:
            notes.append("arithmetic: skipped, no attribute is visual-only (observability 'visual' in the "
                         "samples' JSON): nothing only the image could contribute")
        return {}
    out: dict[str, Any] = {}
    for plugin in emb.modalities:
        if plugin == ANCHOR_MODALITY:
            continue
        rows = shared_rows(emb, ANCHOR_MODALITY, plugin).numpy()
        category = attribute_labels(emb.meta, rows, label_attribute)
        if category is None or len(rows) < MIN_QUERIES:
            if notes is not None:
                notes.append(f"arithmetic image+{plugin}: skipped, {len(rows)} rows with labels (need {MIN_QUERIES})")
            continue
        # the plugin input must carry the category it is asked to contribute (a caption may not state it)
        partners = composition_partners(category, seed=seed)
        usable = (partners >= 0) & carried_mask(emb.meta, rows[np.maximum(partners, 0)], plugin, label_attribute)
        ks = tuple(k for k in (1, 5, 10) if k <= len(rows))
        gallery = emb.embeddings[ANCHOR_MODALITY][rows]
        per_attribute: dict[str, Any] = {}
        for attribute in visual_only:
            if not carried_mask(emb.meta, rows, ANCHOR_MODALITY, attribute).all():
                continue
            values = attribute_labels(emb.meta, rows, attribute)
            # the attribute must come from the image alone: drop partners whose input also states it
            alone = usable & ~carried_mask(emb.meta, rows[np.maximum(partners, 0)], plugin, attribute)
            if values is None or alone.sum() < MIN_QUERIES:
                if notes is not None:
                    notes.append(f"arithmetic image+{plugin} {attribute}: skipped, {int(alone.sum())} queries "
                                 f"whose {plugin} input does not carry {attribute} (need {MIN_QUERIES})")
                continue
            try:
                result: dict[str, Any] = embedding_arithmetic(
                    emb.embeddings[ANCHOR_MODALITY][rows[alone]], emb.embeddings[plugin][rows[partners[alone]]],
                    gallery, image_targets=values[alone], other_targets=category[partners[alone]],
                    gallery_image_attribute=values, gallery_other_attribute=category, ks=ks, other_name=plugin,
                )
            except InputError as err:  # no (attribute, category) target occurs in this gallery
                if notes is not None:
                    notes.append(f"arithmetic image+{plugin} {attribute}: skipped, {err.reason}")
                continue
            result["rule"] = HIT_RULE.format(label=label_attribute, attribute=attribute)
            per_attribute[attribute] = result
        if per_attribute:
            out[plugin] = per_attribute
    return out
