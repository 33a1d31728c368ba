"""Embedding arithmetic across modalities (ImageBind, Girdhar et al. 2023, Sec. 5.3 / Fig. 5).

ImageBind shows that adding an image embedding and an audio embedding (e.g. a photo of birds
plus the sound of waves) retrieves images showing *both* concepts -- evidence that the modalities
share one compositional space. This module scores that experiment quantitatively, for any second
modality (called *other* here; audio in ImageBind): a query ``normalise(image + other)`` succeeds
at k when one of its k nearest gallery items matches the image's attribute *and* the other
input's attribute. The same score for the image alone and the other input alone is the baseline
the sum must beat.

The functions are generic: the "attributes" are any two label columns of the gallery (scene and
sound source, object and material, ...), and the targets per query say which value each should
take.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from anchorbind.errors import InputError
from anchorbind.metrics.checks import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    ArrayLike,
    as_label_array,
    as_matrix,
    check_ks,
    encode_labels,
    resolve_chunk_size,
    resolve_device,
)
from anchorbind.metrics.retrieval import _CATEGORY_RANK_BYTES, TieHandling, _category_ranking

__all__ = ["combine_embeddings", "embedding_arithmetic"]


def combine_embeddings(
    image_embeddings: ArrayLike, other_embeddings: ArrayLike, *, other_weight: float = 1.0
) -> torch.Tensor:
    """``normalise(image + other_weight * other)`` row by row: the composed query of ImageBind.

    Args:
        image_embeddings: ``(N, D)`` L2-normalised embeddings of the first query modality.
        other_embeddings: ``(N, D)`` L2-normalised embeddings of the second query modality.
        other_weight: relative weight of the second modality (1 in ImageBind).

    Raises:
        InputError: malformed or mismatched embeddings, or a pair that cancels out exactly.
    """
    image = as_matrix(image_embeddings, "image_embeddings", require_normalized=True)
    other = as_matrix(other_embeddings, "other_embeddings", require_normalized=True)
    if image.shape != other.shape:
        raise InputError(
            "other_embeddings", f"shape {tuple(other.shape)} does not match image shape {tuple(image.shape)}"
        )
    summed = image + other_weight * other
    zero_rows = (summed.norm(dim=1) < 1e-6).nonzero().flatten()
    if len(zero_rows):
        raise InputError("other_embeddings", f"row {int(zero_rows[0])} cancels its image exactly; no direction")
    return F.normalize(summed, dim=1)


def embedding_arithmetic(
    image_embeddings: ArrayLike,
    other_embeddings: ArrayLike,
    gallery: ArrayLike,
    *,
    image_targets: ArrayLike,
    other_targets: ArrayLike,
    gallery_image_attribute: ArrayLike,
    gallery_other_attribute: ArrayLike,
    ks: Sequence[int] = (1, 5, 10),
    other_weight: float = 1.0,
    other_name: str = "other",
    ties: TieHandling = "optimistic",
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Accuracy@k of composed (image + other) queries against image-only and other-only queries.

    A gallery item is *correct* for query i when its image attribute equals ``image_targets[i]``
    and its other attribute equals ``other_targets[i]``. accuracy@k is the fraction of queries
    with a correct item among their k best (the category-level R@k of
    :mod:`anchorbind.metrics.retrieval`, with the attribute pair as the label and the same tie rule).
    Queries whose target pair occurs nowhere in the gallery cannot succeed; they are excluded
    and counted in ``num_queries_without_match``.

    Args:
        image_embeddings: ``(N, D)`` L2-normalised image query embeddings.
        other_embeddings: ``(N, D)`` L2-normalised embeddings of the second query modality (e.g.
            audio; row i pairs with image i).
        gallery: ``(M, D)`` L2-normalised gallery embeddings.
        image_targets: ``(N,)`` the attribute value the image of query i contributes.
        other_targets: ``(N,)`` the attribute value the other input of query i contributes.
        gallery_image_attribute: ``(M,)`` the first attribute of each gallery item.
        gallery_other_attribute: ``(M,)`` the second attribute of each gallery item.
        ks: cut-offs, each at most M.
        other_weight: weight of the other embedding in the sum.
        other_name: the second modality's name in the result keys (a plugin name, e.g. ``audio``).
        ties: tie rule of the ranking.
        chunk_size: queries per chunk; derived from ``memory_budget_bytes`` when None.
        memory_budget_bytes: working-memory budget used to pick ``chunk_size``.
        device: where similarities are computed (CPU when None).

    Returns:
        ``image+<other_name>/acc@k``, ``image/acc@k``, ``<other_name>/acc@k`` for every k, plus
        ``num_queries`` (queries scored) and ``num_queries_without_match`` (excluded).

    Raises:
        InputError: malformed embeddings or labels, or no query with a matching gallery item.
        ValueError: an ``other_name`` that is empty, ``image`` or contains ``/``.
    """
    if not other_name or other_name == "image" or "/" in other_name:
        raise ValueError(f"other_name must be a non-empty name other than 'image' without '/', got {other_name!r}")
    device = resolve_device(device)
    image = as_matrix(image_embeddings, "image_embeddings", device=device, require_normalized=True)
    other = as_matrix(other_embeddings, "other_embeddings", device=device, require_normalized=True)
    items = as_matrix(gallery, "gallery", device=device, require_normalized=True)
    composed = combine_embeddings(image, other, other_weight=other_weight).to(device)
    if items.shape[1] != image.shape[1]:
        raise InputError("gallery", f"gallery has {items.shape[1]} dims, queries {image.shape[1]}")
    num_queries, num_gallery = image.shape[0], items.shape[0]
    ks = check_ks(ks, num_gallery, f"the gallery has {num_gallery} items")
    query_pairs = np.stack(
        [
            as_label_array(image_targets, num_queries, "image_targets"),
            as_label_array(other_targets, num_queries, "other_targets"),
        ],
        axis=1,
    )
    gallery_pairs = np.stack(
        [
            as_label_array(gallery_image_attribute, num_gallery, "gallery_image_attribute"),
            as_label_array(gallery_other_attribute, num_gallery, "gallery_other_attribute"),
        ],
        axis=1,
    )
    query_codes, gallery_codes = encode_labels(query_pairs, gallery_pairs)
    chunk = resolve_chunk_size(chunk_size, num_gallery, _CATEGORY_RANK_BYTES, memory_budget_bytes)
    matchable = torch.isin(query_codes, gallery_codes)
    if not bool(matchable.any()):
        raise InputError("image_targets", f"no query's (image, {other_name}) target pair occurs in the gallery")
    results: dict[str, float] = {}
    for name, queries in ((f"image+{other_name}", composed), ("image", image), (other_name, other)):
        ranking = _category_ranking(queries, items, query_codes, gallery_codes, ties, chunk)
        first = ranking.first_relevant_rank[matchable]
        for k in ks:
            results[f"{name}/acc@{k}"] = float((first <= k).to(torch.float64).mean())
    results["num_queries"] = float(matchable.sum())
    results["num_queries_without_match"] = float((~matchable).sum())
    return results
