"""Cross-modal retrieval metrics (R@k, median rank, mAP) computed in bounded memory.

Retrieval from modality A (queries) to modality B (gallery) is the headline evaluation of
ImageBind-style binding (Girdhar et al. 2023, "ImageBind: One Embedding Space To Bind Them
All"): emergent text->audio retrieval is measured exactly like CLIP's image->text retrieval.

Two notions of relevance are supported:

* **Instance level** -- the queries and the gallery are paired, the true match of query ``i`` is
  gallery item ``i``. The *rank* of the true item is ``1 + (number of other gallery items that
  score strictly higher)``. R@k is the fraction of queries with rank <= k, the median rank is
  ``numpy.median`` of the ranks (the "MdR" of retrieval papers) and the mAP is the mean
  reciprocal rank, because each query has exactly one relevant item and its average precision
  is then ``1 / rank``.
* **Category level** -- every gallery item that shares the query's label is relevant (for a
  paired set this is instance-level retrieval with labels as relevance). R@k is the fraction of
  queries with at least one relevant item among the top k, the median rank is taken over the
  rank of the first relevant item and mAP is the mean over queries of the usual (non-
  interpolated) average precision ``(1/R) * sum_m m / position_m`` over the R relevant items
  (``position_m`` being the position of the m-th best relevant item).

**Ties.** Scores that are exactly equal must be ordered somehow, and a collapsed encoder (all
outputs identical) makes *every* score tie. ``ties="optimistic"`` (the default, "count of
scores strictly greater") places relevant items before equally scored irrelevant ones;
``ties="pessimistic"`` places them after. Under the optimistic rule a fully collapsed model
scores perfectly, so compare with the pessimistic rule when collapse is possible; the two
agree whenever no relevant item ties with an irrelevant one.

**Memory.** Similarities are computed for a chunk of queries against the whole gallery at a
time (``chunk x M`` entries, the chunk chosen from ``memory_budget_bytes`` unless given), so a
100k x 100k evaluation never materialises the 10^10-entry similarity matrix (the ``(M, D)``
gallery itself is held in addition). Every statistic is per query, so chunking changes nothing
beyond the float32 scores themselves: a BLAS may round a product differently for a chunk of a
few rows than inside a large one (MKL does, for chunks of fewer than about 16 rows), which only
matters between scores that agree to the last bit. Instance ranks are counted in place in the score buffer (one pass,
no sort). Category positions need one sort per score row: on CPU the scores of a block of rows
become integer keys that order exactly like the floats and carry relevance in their lowest bit,
each row is sorted once (numpy's vectorised integer sort) and the relevant items are read off
the sorted row, with the instance rank from the same row. The sort dominates: about half the
matrix product per entry at D=256 on a 2-core x86 CPU (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

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

__all__ = [
    "CategoryRanking",
    "TieHandling",
    "category_ranking",
    "chunked_topk",
    "retrieval_metrics",
    "summarize_category",
    "summarize_ranks",
    "target_ranks",
]

TieHandling = Literal["optimistic", "pessimistic"]

# Bytes each (query, gallery) entry costs in the working set of one chunk, counting every
# temporary (peak RSS measured on 30k x 30k and 100k x 100k): target ranks hold the scores (4),
# compared and summed in place, plus allocator slack; category ranking the scores (4, turned into
# sort keys and sorted in place) plus slack for the per-block scratch below; top-k the scores and
# the concatenated candidate values (4) and indices (8).
_TARGET_RANK_BYTES = 8
_CATEGORY_RANK_BYTES = 6
_TOPK_BYTES = 24
# Score entries a worker keys, sorts and reads at once (1 MiB of int32): small enough for the
# block to stay in a core's cache between the passes, large enough to amortise the Python calls.
# Its scratch (int32 flags, and int64/float64 arrays of the relevant items) is a few MiB at most.
_KEY_BLOCK_ENTRIES = 1 << 18


def _row_chunks(num_rows: int, chunk_size: int) -> Iterator[slice]:
    for start in range(0, num_rows, chunk_size):
        yield slice(start, min(start + chunk_size, num_rows))


def _check_ties(ties: str) -> None:
    if ties not in ("optimistic", "pessimistic"):
        raise ValueError(f"ties must be 'optimistic' or 'pessimistic', got {ties!r}")


# --------------------------------------------------------------------------- top-k


def _chunked_topk(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    query_chunk: int,
    gallery_chunk: int,
    exclude_self: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    num_queries = queries.shape[0]
    values_out = torch.empty(num_queries, k, dtype=torch.float32)
    indices_out = torch.empty(num_queries, k, dtype=torch.int64)
    for rows in _row_chunks(num_queries, query_chunk):
        query_block = queries[rows]
        best_values = torch.full((query_block.shape[0], k), float("-inf"), device=queries.device)
        best_indices = torch.full((query_block.shape[0], k), -1, dtype=torch.int64, device=queries.device)
        for cols in _row_chunks(gallery.shape[0], gallery_chunk):
            scores = query_block @ gallery[cols].T
            first, last = max(rows.start, cols.start), min(rows.stop, cols.stop)
            if exclude_self and first < last:
                overlap = torch.arange(first, last, device=scores.device)
                scores[overlap - rows.start, overlap - cols.start] = float("-inf")
            column_indices = torch.arange(cols.start, cols.stop, device=queries.device)
            candidate_values = torch.cat([best_values, scores], dim=1)
            candidate_indices = torch.cat([best_indices, column_indices.expand(scores.shape[0], -1)], dim=1)
            best_values, position = torch.topk(candidate_values, k, dim=1)
            best_indices = candidate_indices.gather(1, position)
        values_out[rows] = best_values.cpu()
        indices_out[rows] = best_indices.cpu()
    return values_out, indices_out


def chunked_topk(
    queries: ArrayLike,
    gallery: ArrayLike,
    k: int,
    chunk_size: int | None = None,
    *,
    gallery_chunk_size: int | None = None,
    exclude_self: bool = False,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k highest inner-product scores of every query over the gallery, in bounded memory.

    Why chunked on both axes: a query chunk is scored against one gallery chunk at a time and
    the running top-k is merged with each new chunk, so memory is ``chunk x (gallery_chunk + k)``
    whatever the gallery size. Scores are cosine similarities when both inputs are L2-normalised.

    Args:
        queries: ``(N, D)`` query embeddings.
        gallery: ``(M, D)`` gallery embeddings.
        k: how many neighbours to keep per query.
        chunk_size: queries per chunk; derived from ``memory_budget_bytes`` when None.
        gallery_chunk_size: gallery items per chunk (default ``min(M, 16384)``).
        exclude_self: queries and gallery are the same set; never return item ``i`` for query ``i``
            (k-nearest-neighbour graphs).
        memory_budget_bytes: working-memory budget used to pick ``chunk_size``.
        device: where the similarities are computed (CPU when None).

    Returns:
        ``(values, indices)``, both ``(N, k)`` CPU tensors sorted by decreasing score. The values
        equal the full-matrix ``torch.topk``; among exactly tied scores the order of indices is
        unspecified, as in ``torch.topk``.

    Raises:
        InputError: malformed embeddings.
        ValueError: ``k`` outside ``1..M`` (``1..M-1`` with ``exclude_self``), or
            ``exclude_self`` with ``N != M``.
    """
    device = resolve_device(device)
    query_tensor = as_matrix(queries, "queries", device=device)
    gallery_tensor = as_matrix(gallery, "gallery", device=device)
    _check_same_width(query_tensor, gallery_tensor)
    num_gallery = gallery_tensor.shape[0]
    if exclude_self and query_tensor.shape[0] != num_gallery:
        raise ValueError(
            f"exclude_self needs queries and gallery to be the same set, got {query_tensor.shape[0]} "
            f"queries and {num_gallery} gallery items"
        )
    available = num_gallery - 1 if exclude_self else num_gallery
    if not 1 <= k <= available:
        raise ValueError(f"k={k} is outside 1..{available} (gallery items available per query)")
    if gallery_chunk_size is None:
        gallery_chunk = min(num_gallery, 16384)
    else:
        gallery_chunk = resolve_chunk_size(gallery_chunk_size, num_gallery, 1)
    query_chunk = resolve_chunk_size(chunk_size, gallery_chunk + k, _TOPK_BYTES, memory_budget_bytes)
    return _chunked_topk(query_tensor, gallery_tensor, k, query_chunk, gallery_chunk, exclude_self)


# --------------------------------------------------------------------------- instance level


def _target_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    targets: torch.Tensor,
    ties: TieHandling,
    chunk: int,
) -> torch.Tensor:
    ranks = torch.empty(queries.shape[0], dtype=torch.int64)
    targets = targets.to(queries.device)
    buffer: torch.Tensor | None = None  # one score buffer for every chunk: no page faults per chunk
    for rows in _row_chunks(queries.shape[0], chunk):
        size = rows.stop - rows.start
        if buffer is None:
            buffer = torch.empty(size, gallery.shape[0], dtype=queries.dtype, device=queries.device)
        scores = torch.mm(queries[rows], gallery.T, out=buffer[:size])
        # The true score is read from the same matrix product as its competitors, so rounding
        # can never make the true item beat (or lose to) itself, nor split it from an exact copy.
        true_scores = scores.gather(1, targets[rows, None])
        # Counted in place (1.0 where a competitor is placed before the true item): one pass
        # over the scores, no mask or int64 copy.
        if ties == "optimistic":
            beaten_by = _count_ones(scores.gt_(true_scores))
        else:
            beaten_by = _count_ones(scores.ge_(true_scores)) - 1  # minus the true item itself
        ranks[rows] = (beaten_by + 1).cpu()
    return ranks


def _count_ones(flags: torch.Tensor) -> torch.Tensor:
    """Row sums of a 0/1 float32 matrix as int64, exact (float32 sums are exact below 2**24)."""
    step = 2**23
    total = torch.zeros(flags.shape[0], dtype=torch.int64, device=flags.device)
    for first in range(0, flags.shape[1], step):
        total += flags[:, first : first + step].sum(dim=1).to(torch.int64)
    return total


def target_ranks(
    queries: ArrayLike,
    gallery: ArrayLike,
    targets: ArrayLike | None = None,
    *,
    ties: TieHandling = "optimistic",
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """The 1-based rank of each query's single true gallery item.

    The rank is ``1 + #{gallery items j != target with score_j > score_target}`` (optimistic)
    or ``1 + #{j != target with score_j >= score_target}`` (pessimistic). Only the per-query
    count is kept, so memory is ``chunk x M``.

    Args:
        queries: ``(N, D)`` L2-normalised query embeddings.
        gallery: ``(M, D)`` L2-normalised gallery embeddings.
        targets: index of the true gallery item of each query; ``arange(N)`` (paired data) when None.
        ties: how exactly tied scores are ordered (see the module docstring).
        chunk_size: queries per chunk; derived from ``memory_budget_bytes`` when None.
        memory_budget_bytes: working-memory budget used to pick ``chunk_size``.
        device: where the similarities are computed (CPU when None).

    Returns:
        ``(N,)`` int64 CPU tensor of ranks in ``1..M``.

    Raises:
        InputError: malformed embeddings or targets.
    """
    _check_ties(ties)
    device = resolve_device(device)
    query_tensor, gallery_tensor = _normalized_pair(queries, gallery, device)
    target_tensor = _as_targets(targets, query_tensor.shape[0], gallery_tensor.shape[0])
    chunk = resolve_chunk_size(chunk_size, gallery_tensor.shape[0], _TARGET_RANK_BYTES, memory_budget_bytes)
    return _target_ranks(query_tensor, gallery_tensor, target_tensor, ties, chunk)


def _as_targets(targets: ArrayLike | None, num_queries: int, num_gallery: int) -> torch.Tensor:
    if targets is None:
        if num_queries != num_gallery:
            raise InputError(
                "targets",
                f"paired retrieval needs as many queries as gallery items, got {num_queries} and "
                f"{num_gallery}; pass targets or labels",
            )
        return torch.arange(num_queries)
    array = as_label_array(targets, num_queries, "targets")
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise InputError("targets", f"expected 1-D integer gallery indices, got {array.dtype} {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= num_gallery):
        raise InputError("targets", f"indices must lie in 0..{num_gallery - 1}, got {array.min()}..{array.max()}")
    return torch.as_tensor(array, dtype=torch.int64)


def summarize_ranks(ranks: torch.Tensor, ks: Sequence[int], prefix: str) -> dict[str, float]:
    """R@k, median rank and mean reciprocal rank of 1-based ranks, keyed ``{prefix}/R@k`` etc.

    With one relevant item per query the average precision is ``1 / rank``, so the reported
    ``mAP`` is the mean reciprocal rank.
    """
    ranks_float = ranks.to(torch.float64)
    summary = {f"{prefix}/R@{k}": float((ranks <= k).to(torch.float64).mean()) for k in ks}
    summary[f"{prefix}/median_rank"] = float(np.median(ranks.numpy()))
    summary[f"{prefix}/mAP"] = float((1.0 / ranks_float).mean())
    summary[f"{prefix}/num_queries"] = float(len(ranks))
    return summary


# --------------------------------------------------------------------------- category level


@dataclass(frozen=True)
class CategoryRanking:
    """Per-query results of label-relevance retrieval (CPU tensors of length N).

    Attributes:
        first_relevant_rank: 1-based position of the best-ranked relevant item (0 when the
            query has no relevant item in the gallery).
        average_precision: non-interpolated AP (NaN when the query has no relevant item).
        num_relevant: how many gallery items share the query's label.
    """

    first_relevant_rank: torch.Tensor
    average_precision: torch.Tensor
    num_relevant: torch.Tensor

    @property
    def has_relevant(self) -> torch.Tensor:
        """Boolean mask of the queries whose label occurs in the gallery."""
        return self.num_relevant > 0


def _sort_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Each row sorted ascending (values only).

    On CPU numpy's vectorised sort is about 25x faster than ``torch.sort`` for float32 rows
    (measured on 500 x 100k), and sorting dominates category retrieval; other devices use torch.
    """
    if matrix.device.type == "cpu":
        return torch.from_numpy(np.sort(matrix.numpy(), axis=1))
    return torch.sort(matrix, dim=1).values


def _category_ranking(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_codes: torch.Tensor,
    gallery_codes: torch.Tensor,
    ties: TieHandling,
    chunk: int,
) -> CategoryRanking:
    return _full_row_ranking(queries, gallery, query_codes, gallery_codes, None, ties, chunk)[1]


def _full_row_ranking(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_codes: torch.Tensor,
    gallery_codes: torch.Tensor,
    targets: torch.Tensor | None,
    ties: TieHandling,
    chunk: int,
) -> tuple[torch.Tensor | None, CategoryRanking]:
    """Category ranking, plus the instance ranks of ``targets`` from the same scores when given."""
    if queries.device.type != "cpu":
        ranking = _category_ranking_torch(queries, gallery, query_codes, gallery_codes, ties, chunk)
        ranks = None if targets is None else _target_ranks(queries, gallery, targets, ties, chunk)
        return ranks, ranking
    return _full_row_ranking_cpu(queries, gallery, query_codes, gallery_codes, targets, ties, chunk)


def _full_row_ranking_cpu(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_codes: torch.Tensor,
    gallery_codes: torch.Tensor,
    targets: torch.Tensor | None,
    ties: TieHandling,
    chunk: int,
) -> tuple[torch.Tensor | None, CategoryRanking]:
    # Every statistic is read off one integer sort per score row, with no binary search over the
    # row and no Python loop over rows: the float32 scores of a block of rows become sort keys
    # that carry relevance in their lowest bit, each row of keys is sorted in place and the
    # relevant items are the odd keys of the sorted row (_SortedKeyRanker). Blocks are small
    # enough to stay in a core's cache across these passes and are split over threads (numpy
    # releases the GIL). Rows and columns keep their order, so every score is the same float32
    # product (same chunk, same BLAS call) as before this path existed.
    _check_key_range(queries, gallery)
    num_queries, num_gallery = queries.shape[0], gallery.shape[0]
    ranker = _SortedKeyRanker.create(query_codes, gallery_codes, targets, ties)
    workers = max(1, min(torch.get_num_threads(), num_queries))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        buffer = torch.empty(min(chunk, num_queries), num_gallery, dtype=queries.dtype)  # reused
        for rows in _row_chunks(num_queries, chunk):
            scores = torch.mm(queries[rows], gallery.T, out=buffer[: rows.stop - rows.start])
            keys = scores.numpy().view(np.int32)  # the scores become their sort keys in place
            step = -(-keys.shape[0] // workers)
            parts = [
                pool.submit(ranker.rank_rows, keys[part], rows.start + part.start)
                for part in _row_chunks(keys.shape[0], step)
            ]
            for part in parts:
                part.result()
    return ranker.results()


def _check_key_range(queries: torch.Tensor, gallery: torch.Tensor) -> None:
    """Refuses inputs whose scores could reach 2 in magnitude, which the int32 sort keys cannot hold."""
    bound = float(queries.norm(dim=1).max()) * float(gallery.norm(dim=1).max())  # |q.g| <= |q||g|
    if bound >= 1.99:
        raise ValueError(f"category ranking needs unit-normalised embeddings (scores up to {bound:.3g})")


def _sort_keys(scores: np.ndarray, scratch: np.ndarray) -> None:
    """Turns float32 scores, viewed as int32, in place into even integer keys that order like them.

    The key of ``s`` is ``2 * k(s)``, where ``k`` maps the float32 bit pattern ``(sign,
    magnitude)`` to ``+magnitude`` or ``-magnitude``. Positive floats order like their bit
    patterns, so the keys compare exactly as the scores do: no rounding, exact ties stay ties,
    and ``-0.0`` and ``+0.0`` both map to 0. Scores below 2 in magnitude have a magnitude below
    ``2**30``, so the doubled key fits in int32 and leaves the lowest bit free for a tag.

    Args:
        scores: ``(rows, M)`` int32 view of float32 scores, overwritten with the keys.
        scratch: int32 array of the same shape, overwritten.
    """
    sign = np.right_shift(scores, 31, out=scratch)  # -1 where the score is negative, else 0
    unsigned = scores.view(np.uint32)
    np.left_shift(unsigned, 1, out=unsigned)  # 2 * magnitude: the sign bit falls off
    np.bitwise_xor(scores, sign, out=scores)
    np.subtract(scores, sign, out=scores)  # (x ^ -1) - (-1) == -x: negative scores, negative keys


@dataclass(frozen=True)
class _SortedKeyRanker:
    """Category (and instance) ranking of blocks of score rows through relevance-tagged sort keys.

    Relevant items get the key ``2 * k(s) + 1`` (optimistic: after equally scored irrelevant
    items in ascending order, i.e. before them in the ranking) or ``2 * k(s) - 1`` (pessimistic),
    irrelevant ones ``2 * k(s)`` (see :func:`_sort_keys`). The relevant keys are then exactly the
    odd ones, and a row sorted ascending is its ranking under the tie rule, reversed.

    The per-query outputs are filled block by block, from several threads; each thread writes
    only the rows it was given, so the arrays need no lock.
    """

    query_codes: np.ndarray
    gallery_codes: np.ndarray
    targets: np.ndarray | None
    ties: TieHandling
    num_relevant: np.ndarray
    first_rank: np.ndarray
    average_precision: np.ndarray
    ranks: np.ndarray | None

    @classmethod
    def create(
        cls,
        query_codes: torch.Tensor,
        gallery_codes: torch.Tensor,
        targets: torch.Tensor | None,
        ties: TieHandling,
    ) -> _SortedKeyRanker:
        query_array = query_codes.numpy().astype(np.int32)  # compared with every entry: narrow
        gallery_array = gallery_codes.numpy().astype(np.int32)
        size = int(max(query_array.max(initial=-1), gallery_array.max(initial=-1))) + 1
        num_queries = len(query_array)
        return cls(
            query_codes=query_array,
            gallery_codes=gallery_array,
            targets=None if targets is None else targets.numpy(),
            ties=ties,
            num_relevant=np.bincount(gallery_array, minlength=size)[query_array].astype(np.int64),
            first_rank=np.zeros(num_queries, dtype=np.int64),
            average_precision=np.full(num_queries, np.nan, dtype=np.float64),
            ranks=None if targets is None else np.empty(num_queries, dtype=np.int64),
        )

    def rank_rows(self, scores: np.ndarray, first_row: int) -> None:
        """Ranks queries ``first_row, first_row + 1, ...`` from their float32 ``scores`` viewed as int32.

        ``scores`` is overwritten (keys, then sorted keys), a block of rows at a time.
        """
        num_gallery = scores.shape[1]
        block_rows = max(1, _KEY_BLOCK_ENTRIES // num_gallery)
        scratch = np.empty((min(block_rows, scores.shape[0]), num_gallery), dtype=np.int32)
        flags = np.empty(scratch.shape, dtype=bool)
        for part in _row_chunks(scores.shape[0], block_rows):
            rows = slice(first_row + part.start, first_row + part.stop)
            size = part.stop - part.start
            block = scores[part]
            true_keys = self._tag(block, scratch[:size], flags[:size], rows)
            block.sort(axis=1)
            self._read(block, scratch[:size], flags[:size], rows, true_keys)

    def _tag(self, block: np.ndarray, scratch: np.ndarray, flags: np.ndarray, rows: slice) -> np.ndarray | None:
        """Scores to tagged keys in place; returns the untagged keys of the true items, if any."""
        _sort_keys(block, scratch)
        true_keys = None
        if self.targets is not None:
            true_keys = block[np.arange(block.shape[0]), self.targets[rows]].astype(np.int64)
        relevant = np.equal(self.query_codes[rows, None], self.gallery_codes[None, :], out=flags)
        if self.ties == "optimistic":
            np.add(block, relevant, out=block)
        else:
            np.subtract(block, relevant, out=block)
        return true_keys

    def _read(
        self, block: np.ndarray, scratch: np.ndarray, flags: np.ndarray, rows: slice, true_keys: np.ndarray | None
    ) -> None:
        """Instance ranks, first relevant ranks and AP of rows of sorted tagged keys."""
        num_gallery = block.shape[1]
        if true_keys is not None and self.ranks is not None:
            # Scores strictly above the true score have keys >= 2k + 2 (optimistic); scores at
            # least as high have keys >= 2k - 1 (pessimistic, counting the true item itself).
            threshold = true_keys + 2 if self.ties == "optimistic" else true_keys - 1
            below = torch.searchsorted(torch.from_numpy(block), torch.from_numpy(threshold.astype(np.int32))[:, None])
            placed_before = num_gallery - below[:, 0].numpy()
            self.ranks[rows] = placed_before + 1 if self.ties == "optimistic" else placed_before
        num_relevant = self.num_relevant[rows]
        total = int(num_relevant.sum())
        if total == 0:
            return
        # The odd keys in ascending flat order: each row's relevant items, worst first. The item
        # in column c sits at position num_gallery - c (1 = top) and is the m-th best relevant
        # item of its row with m = (end of the row's run of found items) - (its index among them).
        found = np.flatnonzero(np.not_equal(np.bitwise_and(block, 1, out=scratch), 0, out=flags))
        ends = np.cumsum(num_relevant)
        row_ends = num_gallery * np.arange(1, block.shape[0] + 1, dtype=np.int64)
        position = np.repeat(row_ends, num_relevant) - found
        m = np.repeat(ends, num_relevant) - np.arange(total)
        has_any = num_relevant > 0
        sums = np.add.reduceat(m / position, (ends - num_relevant)[has_any])
        self.average_precision[rows][has_any] = sums / num_relevant[has_any]
        self.first_rank[rows][has_any] = position[ends[has_any] - 1]

    def results(self) -> tuple[torch.Tensor | None, CategoryRanking]:
        ranking = CategoryRanking(
            torch.from_numpy(self.first_rank),
            torch.from_numpy(self.average_precision),
            torch.from_numpy(self.num_relevant),
        )
        return (None if self.ranks is None else torch.from_numpy(self.ranks)), ranking


def _category_ranking_torch(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_codes: torch.Tensor,
    gallery_codes: torch.Tensor,
    ties: TieHandling,
    chunk: int,
) -> CategoryRanking:
    # With the relevant scores of a query sorted in decreasing order, the m-th relevant item
    # sits at position m + (irrelevant items placed before it). Placed before it are the
    # irrelevant items scoring strictly higher (optimistic) or at least as high (pessimistic),
    # counted by binary search in the sorted row: two row sorts instead of an argsort, with
    # exactly the same positions as the tie-ordered full ranking.
    num_queries, num_gallery = queries.shape[0], gallery.shape[0]
    first_rank = torch.zeros(num_queries, dtype=torch.int64)
    average_precision = torch.full((num_queries,), float("nan"), dtype=torch.float64)
    num_relevant = torch.zeros(num_queries, dtype=torch.int64)
    query_codes = query_codes.to(queries.device)
    gallery_codes = gallery_codes.to(queries.device)
    after_ties = ties == "optimistic"  # searchsorted(right=True) skips past values equal to v
    for rows in _row_chunks(num_queries, chunk):
        scores = queries[rows] @ gallery.T
        relevant = query_codes[rows, None] == gallery_codes[None, :]
        count = relevant.count_nonzero(dim=1)
        most = int(count.max())
        num_relevant[rows] = count.cpu()
        if most == 0:
            continue
        all_sorted = _sort_rows(scores)
        # Relevant scores ascending, left-padded with -inf for queries with fewer than `most`.
        relevant_sorted = _sort_rows(scores.masked_fill(~relevant, float("-inf")))[:, -most:].contiguous()
        del scores, relevant
        higher_all = num_gallery - torch.searchsorted(all_sorted, relevant_sorted, right=after_ties)
        higher_relevant = most - torch.searchsorted(relevant_sorted, relevant_sorted, right=after_ties)
        del all_sorted
        # Column j of relevant_sorted holds the m-th best relevant score with m = most - j.
        m = torch.arange(most, 0, -1, device=queries.device, dtype=torch.float64)
        positions = m + (higher_all - higher_relevant).to(torch.float64)
        valid = m[None, :] <= count[:, None]
        precision = torch.where(valid, m / positions, torch.zeros_like(positions))
        ap = precision.sum(dim=1) / count.clamp(min=1)
        has_any = count > 0
        first = positions[:, -1].round().to(torch.int64)
        first_rank[rows] = torch.where(has_any, first, torch.zeros_like(first)).cpu()
        average_precision[rows] = torch.where(has_any, ap, torch.full_like(ap, float("nan"))).cpu()
    return CategoryRanking(first_rank, average_precision, num_relevant)


def category_ranking(
    queries: ArrayLike,
    gallery: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    *,
    ties: TieHandling = "optimistic",
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: str | torch.device | None = None,
) -> CategoryRanking:
    """Per-query first-relevant rank and average precision with label relevance.

    Why full rows: mAP needs the position of *every* relevant item, so each query chunk is
    scored against the whole gallery (``chunk x M`` entries, bounded by ``memory_budget_bytes``)
    and each row is sorted once, on relevance-tagged keys that place every relevant item under
    the documented tie rule (see the module docstring).

    Args:
        queries: ``(N, D)`` L2-normalised query embeddings.
        gallery: ``(M, D)`` L2-normalised gallery embeddings.
        query_labels: ``(N,)`` labels (ints or strings), or ``(N, A)`` attribute rows; a gallery
            item is relevant when its label (every attribute) equals the query's.
        gallery_labels: ``(M,)`` or ``(M, A)`` labels of the gallery.
        ties: how exactly tied scores are ordered (see the module docstring).
        chunk_size: queries per chunk; derived from ``memory_budget_bytes`` when None.
        memory_budget_bytes: working-memory budget used to pick ``chunk_size``.
        device: where the similarities are computed (CPU when None).

    Returns:
        A :class:`CategoryRanking`.

    Raises:
        InputError: malformed embeddings or labels.
    """
    _check_ties(ties)
    device = resolve_device(device)
    query_tensor, gallery_tensor = _normalized_pair(queries, gallery, device)
    query_codes, gallery_codes = encode_labels(
        as_label_array(query_labels, query_tensor.shape[0], "query_labels"),
        as_label_array(gallery_labels, gallery_tensor.shape[0], "gallery_labels"),
    )
    chunk = resolve_chunk_size(chunk_size, gallery_tensor.shape[0], _CATEGORY_RANK_BYTES, memory_budget_bytes)
    return _category_ranking(query_tensor, gallery_tensor, query_codes, gallery_codes, ties, chunk)


def summarize_category(ranking: CategoryRanking, ks: Sequence[int], prefix: str) -> dict[str, float]:
    """R@k, median first-relevant rank and mAP over the queries that have a relevant item.

    Queries whose label never occurs in the gallery have no defined AP; they are excluded and
    counted under ``{prefix}/queries_without_relevant`` rather than dropped silently.

    Raises:
        InputError: when no query has a relevant gallery item.
    """
    mask = ranking.has_relevant
    if not bool(mask.any()):
        raise InputError("query_labels", "no query label occurs among the gallery labels; nothing to retrieve")
    first = ranking.first_relevant_rank[mask]
    summary = {f"{prefix}/R@{k}": float((first <= k).to(torch.float64).mean()) for k in ks}
    summary[f"{prefix}/median_rank"] = float(np.median(first.numpy()))
    summary[f"{prefix}/mAP"] = float(ranking.average_precision[mask].mean())
    summary[f"{prefix}/num_queries"] = float(mask.sum())
    summary[f"{prefix}/queries_without_relevant"] = float((~mask).sum())
    return summary


# --------------------------------------------------------------------------- both


def retrieval_metrics(
    queries: ArrayLike,
    gallery: ArrayLike,
    *,
    query_labels: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    paired: bool | None = None,
    ks: Sequence[int] = (1, 5, 10),
    ties: TieHandling = "optimistic",
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Instance- and category-level retrieval metrics for one ordered modality pair.

    Args:
        queries: ``(N, D)`` L2-normalised embeddings of the query modality.
        gallery: ``(M, D)`` L2-normalised embeddings of the gallery modality.
        query_labels: labels of the queries; with ``gallery_labels`` enables category metrics.
        gallery_labels: labels of the gallery items.
        paired: whether query ``i`` and gallery item ``i`` are a true pair (instance metrics).
            None means "paired when N == M".
        ks: recall cut-offs; each must be at most M.
        ties: how exactly tied scores are ordered (see the module docstring).
        chunk_size: queries per chunk; derived from ``memory_budget_bytes`` when None.
        memory_budget_bytes: working-memory budget used to pick ``chunk_size``.
        device: where the similarities are computed (CPU when None).

    Returns:
        Floats keyed ``instance/R@k``, ``instance/median_rank``, ``instance/mAP`` (mean
        reciprocal rank), ``instance/num_queries`` when paired, and ``category/R@k``,
        ``category/median_rank`` (of the first relevant item), ``category/mAP``,
        ``category/num_queries``, ``category/queries_without_relevant`` when labelled.
        Recalls are fractions in [0, 1].

    Raises:
        InputError: malformed embeddings or labels, or neither pairing nor labels.
        ValueError: only one of the label arrays, a bad ``k``, ``ties`` or chunk size.
    """
    _check_ties(ties)
    if (query_labels is None) != (gallery_labels is None):
        raise ValueError("category retrieval needs both query_labels and gallery_labels")
    device = resolve_device(device)
    query_tensor, gallery_tensor = _normalized_pair(queries, gallery, device)
    num_queries, num_gallery = query_tensor.shape[0], gallery_tensor.shape[0]
    ks = check_ks(ks, num_gallery, f"the gallery has {num_gallery} items")
    if paired is None:
        paired = num_queries == num_gallery
    if paired and num_queries != num_gallery:
        raise InputError("gallery", f"paired retrieval needs N == M, got {num_queries} queries and {num_gallery}")
    if not paired and query_labels is None:
        raise InputError("query_labels", "unpaired retrieval needs labels to know which items are relevant")

    metrics: dict[str, float] = {}
    targets = torch.arange(num_queries) if paired else None
    if query_labels is not None and gallery_labels is not None:
        query_codes, gallery_codes = encode_labels(
            as_label_array(query_labels, num_queries, "query_labels"),
            as_label_array(gallery_labels, num_gallery, "gallery_labels"),
        )
        chunk = resolve_chunk_size(chunk_size, num_gallery, _CATEGORY_RANK_BYTES, memory_budget_bytes)
        # One pass over the scores serves both levels: the instance rank is read from the same
        # sorted rows as the category positions.
        ranks, ranking = _full_row_ranking(
            query_tensor, gallery_tensor, query_codes, gallery_codes, targets, ties, chunk
        )
        if ranks is not None:
            metrics.update(summarize_ranks(ranks, ks, "instance"))
        metrics.update(summarize_category(ranking, ks, "category"))
    elif targets is not None:
        chunk = resolve_chunk_size(chunk_size, num_gallery, _TARGET_RANK_BYTES, memory_budget_bytes)
        ranks = _target_ranks(query_tensor, gallery_tensor, targets, ties, chunk)
        metrics.update(summarize_ranks(ranks, ks, "instance"))
    return {key: metrics[key] for key in sorted(metrics, key=lambda key: not key.startswith("instance/"))}


def _normalized_pair(queries: ArrayLike, gallery: ArrayLike, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Both matrices as float tensors on ``device``, checked unit-norm and of one width."""
    query_tensor = as_matrix(queries, "queries", device=device, require_normalized=True)
    gallery_tensor = as_matrix(gallery, "gallery", device=device, require_normalized=True)
    _check_same_width(query_tensor, gallery_tensor)
    return query_tensor, gallery_tensor


def _check_same_width(queries: torch.Tensor, gallery: torch.Tensor) -> None:
    if queries.shape[1] != gallery.shape[1]:
        raise InputError(
            "gallery",
            f"embedding widths differ: queries have {queries.shape[1]} dims, gallery {gallery.shape[1]}",
        )
