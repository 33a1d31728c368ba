"""The binding objective: symmetric InfoNCE of each plug-in modality against the frozen anchor.

ImageBind trains every plug-in modality ``m`` only against the image anchor, with a symmetric
InfoNCE loss and the modality's own temperature; plug-in modalities are never contrasted with each
other, yet become comparable through the anchor (emergent alignment). :class:`BindingLoss` computes
exactly that, optionally adds explicit plug-in/plug-in pairs (the *direct* baseline) and the
modality-gap regularisers of :mod:`anchorbind.losses.gap_regularizers`.

Distributed semantics (open_clip's ``ClipLoss`` style, made exact)
------------------------------------------------------------------
With several processes, embeddings are all-gathered *with gradients*
(:func:`torch.distributed.nn.functional.all_gather`, whose backward sums, over processes, the
gradients every process computed for a shard, and returns the sum to the shard's owner), so the
negatives of every row are the whole global batch. Let ``L`` be the loss of one process holding the
whole global batch, ``W`` the number of processes and ``x_r`` the shard of process ``r``:

* ``local_loss=False``: every process computes the full global ``L`` (a ``(WB, WB)`` logit matrix).
  Backward hands ``x_r`` the sum of the ``W`` identical contributions, ``W * dL/dx_r``; DDP then
  *averages* parameter gradients over processes: ``1/W * sum_r W * dL/dx_r * dx_r/dθ = dL/dθ``.
* ``local_loss=True``: process ``r`` computes logits of its ``B`` rows against the ``WB`` gathered
  columns only (memory linear in the global batch), and returns ``L_r`` with ``sum_r L_r = W * L``;
  backward again gives ``x_r`` the gradient ``d(sum_k L_k)/dx_r = W * dL/dx_r``, and DDP's average
  gives ``dL/dθ``. Each process's *value* is its shard's share: the mean over processes is ``L``.

So in both modes one optimizer step with ``W`` processes x ``B`` samples equals one step on a single
process with ``W*B`` samples (``tests/dist_loss_check.py`` checks loss and gradients under a real
2-process launch). The simpler open_clip recipe (gather without gradients, put the local tensor
back) would give ``dL/dθ / W`` after DDP's average: a silently smaller learning rate.

The gap regularisers are batch-level (pairwise) terms: they always use the gathered global batch,
in both modes, and every process computes their full value (their pairwise matrices are
``(WB, WB)`` even with ``local_loss``). With ``local_loss=True`` the returned ``"loss"`` is therefore
the process's contrastive share plus the full regularisers; its mean over processes is the global
loss. Log the mean (``accelerator.reduce(loss, "mean")``).

Every process must call the loss with the same modalities in the same order, and the same local
batch size: all-gather needs equal shapes, which :func:`gather_with_grad` checks (the last partial
batch of an epoch must be dropped or padded with masked rows; the loaders drop it). Missing
samples are expressed with masks, never with shorter tensors, so a process whose batch lacks a
modality entirely still takes part in every collective.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from anchorbind.errors import ConfigError
from anchorbind.losses.gap_regularizers import GapRegularizerConfig, gap_regularizer_terms
from anchorbind.registry import ANCHOR_MODALITY

__all__ = ["BindingLoss", "distributed_rank_world", "gather_with_grad", "info_nce"]

# Logit given to absent columns: exp() of it is exactly 0 next to any real logit (|logit| <= scale),
# and, unlike -inf, it keeps all-absent rows finite (their loss is multiplied by 0, not NaN).
_MASKED_LOGIT = -1e9


# --------------------------------------------------------------------------- collectives
def distributed_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, read now; ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_equal_shapes(x: torch.Tensor, world: int) -> None:
    shape = torch.tensor(list(x.shape), dtype=torch.int64, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    found = [tuple(s.tolist()) for s in shapes]
    if any(s != found[0] for s in found):
        raise ValueError(
            f"all-gather needs the same tensor shape on every process, got {found} (by rank); "
            "use equal per-process batch sizes (drop or mask the last partial batch)"
        )


def gather_with_grad(x: torch.Tensor, *, check_shapes: bool = True) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0, keeping gradients to each local shard.

    Rank ``r``'s rows are ``[r*B, (r+1)*B)`` of the result. The backward pass sums, over processes,
    the gradient each computed for rank ``r``'s rows and returns it to rank ``r``
    (:func:`torch.distributed.nn.functional.all_gather`; a reduce-scatter on NCCL, an all-to-all on
    gloo). Rank and world size are read from :mod:`torch.distributed` at call time.

    Args:
        x: ``(B, ...)``, the same shape on every process.
        check_shapes: first all-gather the shapes and raise a clear error if they differ (one
            tiny extra collective; without it, unequal shapes fail obscurely or hang on NCCL).

    Returns:
        ``(W*B, ...)``; ``x`` itself when not distributed (or a single process).

    Raises:
        ValueError: the shapes differ across processes.
    """
    _, world = distributed_rank_world()
    if world == 1:
        return x
    if check_shapes:
        _check_equal_shapes(x, world)
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def _gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather a tensor that needs no gradient (masks); bools travel as uint8 (NCCL-safe)."""
    _, world = distributed_rank_world()
    if world == 1:
        return x
    wire = x.to(torch.uint8) if x.dtype == torch.bool else x
    parts = [torch.empty_like(wire) for _ in range(world)]
    dist.all_gather(parts, wire.contiguous())
    out = torch.cat(parts, dim=0)
    return out.bool() if x.dtype == torch.bool else out


# --------------------------------------------------------------------------- InfoNCE
def _symmetric_ce(
    rows_a: torch.Tensor,
    rows_b: torch.Tensor,
    cols_a: torch.Tensor,
    cols_b: torch.Tensor,
    *,
    row_mask: torch.Tensor,
    col_mask: torch.Tensor,
    row_offset: int,
    scale: torch.Tensor,
    factor: float,
) -> torch.Tensor:
    """``factor/(2n) * sum_{present rows i} [CE(s a_i·B^T, i) + CE(s b_i·A^T, i)]`` over present columns.

    Row ``i`` of ``rows_*`` is column ``row_offset + i`` of ``cols_*``; ``n`` counts present columns.
    Absent columns are masked out of every softmax, absent rows weigh 0: no host synchronisation and
    no data-dependent shapes, so every process runs the same kernels whatever its mask.
    """
    dtype = _loss_dtype(rows_a, rows_b, cols_a, cols_b)
    rows_a, rows_b, cols_a, cols_b = (t.to(dtype) for t in (rows_a, rows_b, cols_a, cols_b))
    scale = scale.to(dtype)
    labels = torch.arange(rows_a.shape[0], device=rows_a.device) + row_offset
    absent = ~col_mask[None, :]
    # logits in full precision even under autocast: at scale 100 a bf16 logit is off by ~0.4
    with torch.autocast(device_type=rows_a.device.type, enabled=False):
        logits_ab = (scale * rows_a @ cols_b.T).masked_fill(absent, _MASKED_LOGIT)
        logits_ba = (scale * rows_b @ cols_a.T).masked_fill(absent, _MASKED_LOGIT)
    per_row = F.cross_entropy(logits_ab, labels, reduction="none") + F.cross_entropy(
        logits_ba, labels, reduction="none"
    )
    n = col_mask.sum().clamp_min(1).to(per_row.dtype)
    return factor * (per_row * row_mask.to(per_row.dtype)).sum() / (2.0 * n)


def _zero_absent(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Zeros in absent rows, whatever they held (even NaN): masked logits would still pass a NaN
    row's gradient on through the matmul (0 * NaN)."""
    return torch.where(present[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def _loss_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32: logits and softmax never run in half precision."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _as_scale(logit_scale: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    scale = torch.as_tensor(logit_scale, device=device)
    if scale.numel() != 1:
        raise ValueError(f"a logit scale must be a scalar, got shape {tuple(scale.shape)}")
    return scale.reshape(())


def _check_pair(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None, what: str) -> torch.Tensor:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"{what}: expected two (B, D) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if mask is None:
        return torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
    if mask.dtype != torch.bool or mask.shape != (a.shape[0],):
        raise ValueError(
            f"{what}: mask must be bool of shape ({a.shape[0]},), got {mask.dtype} {tuple(mask.shape)}"
        )
    return mask.to(a.device)


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    mask: torch.Tensor | None = None,
    local_loss: bool = False,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP's loss) between paired, L2-normalised embeddings.

    ``logits = s * A @ B^T``; the loss is the mean of the row-wise cross-entropy (``a -> b``) and the
    column-wise one (``b -> a``) with the diagonal as targets:
    ``L = 1/(2n) * sum_i [-log softmax_j(s a_i·b_j)_i - log softmax_j(s b_i·a_j)_i]``.
    The scale is used as given (clamping is :class:`anchorbind.heads.LogitScale`'s job).

    Args:
        a, b: ``(B, D)`` L2-normalised embeddings; row ``i`` of each is a true pair.
        logit_scale: the inverse temperature ``s`` (a scalar tensor, gradients flow into it).
        mask: ``(B,)`` bool, pairs that exist; absent rows are neither queries nor negatives, so the
            result equals the loss on the present subset. ``None``: all present.
        local_loss: with several processes, compute logits for the local rows against the gathered
            columns only (see the module docstring: the value is this process's share).
        gather: use the global batch across processes (negatives from every process); ``False``
            uses the local batch only (no collectives).

    Returns:
        A scalar; 0 (still attached to the inputs) when no pair is present.
    """
    mask = _check_pair(a, b, mask, "info_nce")
    a, b = _zero_absent(a, mask), _zero_absent(b, mask)
    scale = _as_scale(logit_scale, a.device)
    rank, world = distributed_rank_world() if gather else (0, 1)
    if world == 1:
        return _symmetric_ce(a, b, a, b, row_mask=mask, col_mask=mask, row_offset=0, scale=scale, factor=1.0)
    dtype = _loss_dtype(a, b)
    both = gather_with_grad(torch.stack([a.to(dtype), b.to(dtype)], dim=1))  # one collective for a and b
    all_mask = _gather_no_grad(mask)
    all_a, all_b = both[:, 0], both[:, 1]
    if local_loss:
        return _symmetric_ce(
            a,
            b,
            all_a,
            all_b,
            row_mask=mask,
            col_mask=all_mask,
            row_offset=rank * a.shape[0],
            scale=scale,
            factor=float(world),
        )
    return _symmetric_ce(
        all_a,
        all_b,
        all_a,
        all_b,
        row_mask=all_mask,
        col_mask=all_mask,
        row_offset=0,
        scale=scale,
        factor=1.0,
    )


# --------------------------------------------------------------------------- the objective
def _check_weight(name: str, value: Any) -> float:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value < 0:
        raise ConfigError(f"loss weight of '{name}' must be a finite number >= 0, got {value!r}")
    return float(value)


class BindingLoss(nn.Module):
    """ImageBind's objective: each plug-in modality against the frozen image anchor, plus options.

    Terms (all scalars, unweighted; ``"loss"`` is the weighted total):

    * ``contrastive/<m>``: :func:`info_nce` between the anchor and ``m`` on rows having both, with
      ``m``'s logit scale; weighted by ``weights[m]`` (default 1).
    * ``direct/<a>-<b>``: :func:`info_nce` between two plug-in modalities, only for pairs listed in
      ``direct_pairs`` (the *direct* baseline), with ``a``'s logit scale, weight 1. Plug-in
      modalities are never contrasted with each other otherwise.
    * ``reg/<name>``: the enabled modality-gap regularisers (:mod:`anchorbind.losses.gap_regularizers`), weighted by
      their config weights, on the gathered global batch.

    Which plug-in modalities exist: ``modalities`` if given, else the keys of ``weights``, else
    whatever each call's ``embeddings`` hold (then every process must pass the same keys). With a
    known set, a modality missing from a call's ``embeddings`` is treated as present in no row
    (zeros, mask False), so processes whose batch lacks it still join the same collectives; its
    term is then 0 and its parameters get zero gradients.

    Example::

        loss_fn = BindingLoss(weights={"text": 1.0, "audio": 1.0})
        out = model(batch)  # BindModel.forward
        terms = loss_fn(out["embeddings"], out["logit_scales"], out["masks"])
        accelerator.backward(terms["loss"])
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        direct_pairs: Sequence[Sequence[str]] = (),
        local_loss: bool = False,
        gap: GapRegularizerConfig | Mapping[str, Any] | None = None,
        *,
        modalities: Sequence[str] | None = None,
        anchor: str = ANCHOR_MODALITY,
        gather: bool = True,
    ) -> None:
        """Configure the terms; names are checked here when the plug-in modalities are known.

        Args:
            weights: ``{plug-in modality: weight}`` of its contrastive term (missing: 1).
            direct_pairs: plug-in/plug-in pairs to contrast directly, e.g. ``[("text", "audio")]``.
            local_loss: open_clip's ``local_loss`` for the contrastive terms (module docstring).
            gap: :class:`~anchorbind.losses.gap_regularizers.GapRegularizerConfig` or a mapping of it (default: off).
            modalities: the plug-in modalities, in a fixed order (default: ``weights``' keys).
            anchor: the anchor modality's key in ``embeddings``.
            gather: gather embeddings across processes (global negatives); ``False`` keeps every
                process's loss on its own batch.

        Raises:
            ConfigError: a weight or pair names an unknown modality or the anchor, a pair is not two
                different modalities or is repeated, a weight is negative or not finite.
        """
        super().__init__()
        self.anchor = anchor
        self.local_loss = bool(local_loss)
        self.gather = bool(gather)
        self.gap = GapRegularizerConfig.build(gap)
        weights = dict(weights or {})
        if modalities is not None:
            known: list[str] | None = list(dict.fromkeys(modalities))
            if anchor in known:
                raise ConfigError(f"modalities lists the anchor '{anchor}'; list plug-in modalities only")
        else:
            known = list(weights) or None
        self.modalities = known
        for name, value in weights.items():
            if name == anchor:
                raise ConfigError(f"loss.weights names the anchor '{anchor}', which has no term of its own")
            if known is not None and name not in known:
                raise ConfigError(f"loss.weights names unknown modality {name!r}; known: {known}")
            weights[name] = _check_weight(name, value)
        self.weights = weights
        pairs: list[tuple[str, str]] = []
        for pair in direct_pairs:
            if isinstance(pair, str) or len(pair) != 2 or pair[0] == pair[1]:
                raise ConfigError(f"loss.direct_pairs entry {pair!r} must be two different modalities")
            first, second = str(pair[0]), str(pair[1])
            if anchor in (first, second):
                raise ConfigError(
                    f"loss.direct_pairs entry {pair!r} includes the anchor '{anchor}'; anchor terms are "
                    "always on (contrastive/<m>), direct pairs are plug-in/plug-in"
                )
            if known is not None and not {first, second} <= set(known):
                raise ConfigError(
                    f"loss.direct_pairs entry {pair!r} names an unknown modality; known: {known}"
                )
            if any({first, second} == set(p) for p in pairs):
                raise ConfigError(f"loss.direct_pairs lists {pair!r} twice")
            pairs.append((first, second))
        self.direct_pairs = pairs

    def extra_repr(self) -> str:
        return (
            f"anchor={self.anchor!r}, modalities={self.modalities}, weights={self.weights}, "
            f"direct_pairs={self.direct_pairs}, local_loss={self.local_loss}, gather={self.gather}, "
            f"gap={self.gap.enabled}"
        )

    # ------------------------------------------------------------------ input checks
    def _plugin_modalities(self, embeddings: Mapping[str, torch.Tensor]) -> list[str]:
        if self.modalities is not None:
            unknown = [m for m in embeddings if m != self.anchor and m not in self.modalities]
            if unknown:
                raise ConfigError(
                    f"embeddings hold modalities {unknown} that the loss does not know; "
                    f"known: {self.modalities}"
                )
            return list(self.modalities)
        names = sorted(m for m in embeddings if m != self.anchor)  # sorted: same order on every process
        for name in [*self.weights, *(m for p in self.direct_pairs for m in p)]:
            if name not in names:
                raise ConfigError(f"the loss config names modality {name!r}, absent from embeddings {names}")
        return names

    def _inputs(
        self, embeddings: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None
    ) -> tuple[list[str], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if self.anchor not in embeddings:
            raise ValueError(f"embeddings must include the anchor '{self.anchor}', got {sorted(embeddings)}")
        anchor = embeddings[self.anchor]
        if anchor.ndim != 2:
            raise ValueError(f"anchor embeddings must be (B, D), got {tuple(anchor.shape)}")
        names = self._plugin_modalities(embeddings)
        masks = dict(masks or {})
        unknown_masks = sorted(set(masks) - set(embeddings))
        if unknown_masks:
            raise ValueError(f"masks given for {unknown_masks}, which have no embeddings")
        dtype = _loss_dtype(*(embeddings[m] for m in (self.anchor, *names) if m in embeddings))
        emb: dict[str, torch.Tensor] = {}
        keep: dict[str, torch.Tensor] = {}
        for name in (self.anchor, *names):
            if name in embeddings:
                x = embeddings[name]
                if x.shape != anchor.shape:
                    raise ValueError(
                        f"embeddings of '{name}' have shape {tuple(x.shape)}, "
                        f"the anchor's {tuple(anchor.shape)}; "
                        "rows must be aligned (absent rows are zeros with mask False)"
                    )
                mask = masks.get(name)
                if mask is None:
                    mask = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
                elif mask.dtype != torch.bool or mask.shape != (x.shape[0],):
                    raise ValueError(
                        f"mask of '{name}' must be bool of shape ({x.shape[0]},), "
                        f"got {mask.dtype} {tuple(mask.shape)}"
                    )
                mask = mask.to(x.device)
                emb[name], keep[name] = _zero_absent(x.to(dtype), mask), mask
            else:  # a known modality absent from this batch: present in no row
                emb[name] = anchor.new_zeros(anchor.shape, dtype=dtype)
                keep[name] = torch.zeros(anchor.shape[0], dtype=torch.bool, device=anchor.device)
        return names, emb, keep

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        embeddings: Mapping[str, torch.Tensor],
        logit_scales: Mapping[str, torch.Tensor | float],
        masks: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute every term.

        Args:
            embeddings: ``{modality: (B, D)}`` L2-normalised, rows aligned; must include the anchor
                (frozen, no gradient needed). Absent rows (mask False) may hold anything, even NaN.
            logit_scales: ``{plug-in modality: scalar}`` (``LogitScale()`` outputs).
            masks: ``{modality: (B,) bool}``, which rows have the modality (default: all).

        Returns:
            ``{"loss": total, "contrastive/<m>": ..., "direct/<a>-<b>": ..., "reg/<name>": ...}``.

        Raises:
            ConfigError: the embeddings and the configured modalities disagree.
            ValueError: shapes or masks are inconsistent, or a logit scale is missing.
        """
        names, local, local_keep = self._inputs(embeddings, masks)
        order = [self.anchor, *names]
        rank, world = distributed_rank_world() if self.gather else (0, 1)
        if world > 1:
            # one collective for all embeddings and one for all masks, in a fixed order
            gathered = gather_with_grad(torch.stack([local[m] for m in order], dim=1))
            gathered_keep = _gather_no_grad(torch.stack([local_keep[m] for m in order], dim=1))
            glob = {m: gathered[:, i] for i, m in enumerate(order)}
            glob_keep = {m: gathered_keep[:, i] for i, m in enumerate(order)}
        else:
            glob, glob_keep = local, local_keep
        device = local[self.anchor].device

        def scale_of(name: str) -> torch.Tensor:
            if name not in logit_scales:
                raise ValueError(f"no logit scale for '{name}'; got scales for {sorted(logit_scales)}")
            return _as_scale(logit_scales[name], device)

        def contrast(p: str, q: str, scale: torch.Tensor) -> torch.Tensor:
            col_mask = glob_keep[p] & glob_keep[q]
            if self.local_loss and world > 1:
                return _symmetric_ce(
                    local[p],
                    local[q],
                    glob[p],
                    glob[q],
                    row_mask=local_keep[p] & local_keep[q],
                    col_mask=col_mask,
                    row_offset=rank * local[p].shape[0],
                    scale=scale,
                    factor=float(world),
                )
            return _symmetric_ce(
                glob[p],
                glob[q],
                glob[p],
                glob[q],
                row_mask=col_mask,
                col_mask=col_mask,
                row_offset=0,
                scale=scale,
                factor=1.0,
            )

        terms: dict[str, torch.Tensor] = {}
        total = local[self.anchor].sum() * 0.0
        for m in names:
            value = contrast(self.anchor, m, scale_of(m))
            terms[f"contrastive/{m}"] = value
            total = total + self.weights.get(m, 1.0) * value
        for a, b in self.direct_pairs:
            value = contrast(a, b, scale_of(a))
            terms[f"direct/{a}-{b}"] = value
            total = total + value
        if self.gap.enabled:
            regs = gap_regularizer_terms(self.gap, glob, glob_keep, anchor=self.anchor, modalities=names)
            for name, value in regs.items():
                terms[f"reg/{name}"] = value
                total = total + self.gap.enabled[name] * value
        return {"loss": total, **terms}
