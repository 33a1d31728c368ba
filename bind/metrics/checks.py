"""Checks and conversions shared by every metric: arrays in, float32 tensors or label codes out.

Metrics are only as trustworthy as their inputs. A NaN row, a gallery that was never
L2-normalised or a label vector of the wrong length silently produce plausible-looking
numbers, so each metric validates its inputs here and raises :class:`anchorbind.errors.InputError`
naming the argument and the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from anchorbind.errors import InputError

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]
"""Anything :func:`numpy.asarray` or :func:`torch.as_tensor` understands."""

NORM_TOLERANCE = 1e-3
"""How far a row's L2 norm may stray from 1 and still count as normalised (float16 storage is ~1e-3)."""

DEFAULT_MEMORY_BUDGET_BYTES = 512 * 2**20
"""Working memory a chunked similarity computation may use when no chunk size is given (512 MiB)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device heavy computations run on: CPU unless the caller asks otherwise."""
    return torch.device("cpu") if device is None else torch.device(device)


def as_matrix(
    values: ArrayLike,
    name: str,
    *,
    device: str | torch.device | None = None,
    require_normalized: bool = False,
    min_rows: int = 1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Converts ``values`` to a finite ``(N, D)`` floating-point tensor on ``device``.

    Args:
        values: the embeddings or features, tensor or array-like.
        name: the argument's name, used in error messages (``'queries'``, ``'gallery'``...).
        device: where the tensor should live (CPU when None).
        require_normalized: refuse rows whose L2 norm is not 1 within :data:`NORM_TOLERANCE`;
            cosine-similarity metrics are wrong on unnormalised embeddings, and the mistake
            is otherwise invisible.
        min_rows: the fewest rows the metric can work with.
        dtype: float32 for the heavy similarity computations; float64 where a statistic
            (CKA, means of similarities) should not lose the caller's precision.

    Returns:
        A tensor of shape ``(N, D)`` and the requested dtype.

    Raises:
        InputError: wrong rank, too few rows, non-finite values, or (when required) rows
            that are not unit-norm.
    """
    tensor = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if tensor.ndim != 2:
        raise InputError(name, f"expected a 2-D (N, D) matrix, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] < min_rows:
        raise InputError(name, f"needs at least {min_rows} rows, got {tensor.shape[0]}")
    if tensor.shape[1] < 1:
        raise InputError(name, "has zero columns")
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64, torch.bool)):
        raise InputError(name, f"expected real numbers, got dtype {tensor.dtype}")
    tensor = tensor.to(device=resolve_device(device), dtype=dtype)
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad_rows = (~finite).any(dim=1).nonzero().flatten()
        raise InputError(
            name,
            f"{len(bad_rows)} row(s) contain NaN or inf (first: row {int(bad_rows[0])})",
        )
    if require_normalized:
        norms = tensor.norm(dim=1)
        off = (norms - 1.0).abs() > NORM_TOLERANCE
        if bool(off.any()):
            raise InputError(
                name,
                f"{int(off.sum())} row(s) are not L2-normalised (norms range "
                f"{float(norms.min()):.4g}..{float(norms.max()):.4g}); cosine metrics need unit rows, "
                "normalise with anchorbind.heads.l2_normalize first",
            )
    return tensor


def as_label_array(labels: ArrayLike, expected_rows: int, name: str) -> np.ndarray:
    """Converts labels to a numpy array with one entry (or one row of attributes) per sample.

    Raises:
        InputError: when the length does not match ``expected_rows`` or the array is not 1-D/2-D.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim not in (1, 2):
        raise InputError(name, f"expected 1-D labels (or 2-D attribute rows), got shape {array.shape}")
    if array.shape[0] != expected_rows:
        raise InputError(name, f"has {array.shape[0]} entries but there are {expected_rows} samples")
    return array


def encode_labels(*label_arrays: np.ndarray) -> list[torch.Tensor]:
    """Maps labels (ints, strings, or rows of several attributes) to shared integer codes.

    Several arrays are encoded together so that equal labels get equal codes across them,
    e.g. query labels and gallery labels. A 2-D array is treated as one tuple of attributes per
    row: two samples are "the same label" only when every attribute matches, which is what
    the embedding-arithmetic experiment needs.

    Returns:
        One int64 CPU tensor of codes per input array.

    Raises:
        InputError: when the arrays mix 1-D and 2-D labels or have different attribute counts.
    """
    ndims = {array.ndim for array in label_arrays}
    widths = {array.shape[1] for array in label_arrays if array.ndim == 2}
    if len(ndims) != 1 or len(widths) > 1:
        shapes = [array.shape for array in label_arrays]
        raise InputError("labels", f"label arrays must all be 1-D or all have the same width, got {shapes}")
    stacked = np.concatenate(label_arrays, axis=0)
    try:
        if stacked.ndim == 2:
            _, codes = np.unique(stacked, axis=0, return_inverse=True)
        else:
            _, codes = np.unique(stacked, return_inverse=True)
    except TypeError as error:  # e.g. a mix of str and int that numpy cannot order
        raise InputError("labels", f"labels cannot be compared with each other: {error}") from error
    codes = torch.as_tensor(np.asarray(codes).reshape(-1), dtype=torch.int64)
    return list(torch.split(codes, [len(array) for array in label_arrays]))


def resolve_chunk_size(
    chunk_size: int | None,
    columns: int,
    bytes_per_entry: int,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> int:
    """Rows per chunk so that a ``(rows, columns)`` working set stays inside the memory budget.

    Chunked metrics hold only ``chunk x columns`` entries at once (each costing
    ``bytes_per_entry`` across all the temporaries the metric needs), which is what lets a
    100k x 100k evaluation run in bounded memory. An explicit ``chunk_size`` wins.

    Raises:
        ValueError: when ``chunk_size`` or the budget is not positive.
    """
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
        return int(chunk_size)
    if memory_budget_bytes < 1:
        raise ValueError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")
    return max(1, int(memory_budget_bytes // max(1, columns * bytes_per_entry)))


def check_ks(ks: Sequence[int], limit: int, what: str) -> tuple[int, ...]:
    """Validates recall cut-offs: positive and no larger than the number of candidates.

    A k above the number of candidates would report a trivially perfect score, so it is
    refused rather than reported.
    """
    checked = tuple(int(k) for k in ks)
    if not checked:
        raise ValueError("ks must name at least one cut-off")
    for k in checked:
        if k < 1 or k > limit:
            raise ValueError(f"k={k} is outside 1..{limit} ({what})")
    return checked
