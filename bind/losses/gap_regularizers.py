"""Modality-gap regularisers added to the binding objective (all off by default).

InfoNCE only ranks true pairs above negatives; it does not make them *close*. Binding to a frozen
anchor therefore leaves each plug-in modality in its own region of the sphere (the modality, or
"contrastive", gap). Two published recipes close it by adding geometric terms to the loss:

* Fahim, Murphy & Fyshe 2024, "It's Not a Modality Gap: Characterizing and Addressing the
  Contrastive Gap" (arXiv 2405.18570): Wang & Isola's alignment and uniformity, in-modal and
  cross-modal (their ``L_CUA = L_CLIP + L_align + L_uniform`` and ``L_CUAXU``, which adds the
  cross-modal uniformity ``L_XUniform``).
* Grassucci, Cicchetti, Frasca, Uncini & Comminiello 2026, "Closing the Modality Gap Aligns
  Group-Wise Semantics" (ICLR 2026, arXiv 2601.18525, code github.com/ispamm/ModGap): *Align True
  Pairs* (the alignment loss on true pairs) plus *Centroid Uniformity* (the uniformity loss on the
  L2-normalised per-sample centroids of the modalities' embeddings).

Every term is a pure function of L2-normalised embeddings ``(N, D)`` with optional boolean row masks
``(N,)`` (rows whose modality is missing are ignored), written without host synchronisation or
data-dependent shapes so it runs identically on every process. A term with too few present rows to
be defined (no pair for an alignment, fewer than two rows for a uniformity) is ``0`` and still
depends on its inputs, so backward passes and DDP's gradient reduction see every parameter.

In AnchorBind the image anchor is frozen, so the loss can only move plug-in modalities; the
n-modal forms below are written with that in mind and reduce to the papers' two-modal forms for an
(image, text) batch. :func:`gap_regularizer_terms` builds the enabled terms for
:class:`anchorbind.losses.binding.BindingLoss`, which passes it the *gathered* (global-batch) embeddings.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from anchorbind.config import from_dict
from anchorbind.errors import ConfigError

__all__ = [
    "GapRegularizerConfig",
    "align_true_pairs",
    "alignment",
    "centroid_uniformity",
    "cross_uniformity",
    "gap_regularizer_terms",
    "in_modal_uniformity",
    "uniformity",
]

# A finite stand-in for -inf in masked log-sum-exps: exp() of it is exactly 0 next to any real
# entry, and, unlike -inf, an all-masked row still has a finite (unused) value and gradient.
_MASKED = -1e9


@dataclass
class GapRegularizerConfig:
    """Weights of the modality-gap regularisers (0 disables a term; all 0 by default).

    Attributes:
        align: Fahim et al. ``L_align``: mean squared distance between each plug-in embedding and
            its anchor (image) embedding, averaged over plug-in modalities.
        uniformity_in: Fahim et al. in-modal uniformity ``L_uniform``, averaged over plug-in
            modalities (the frozen anchor's own uniformity is a constant and is left out).
        uniformity_cross: Fahim et al. cross-modal uniformity ``L_XUniform`` between the anchor and
            each plug-in modality, averaged over plug-in modalities.
        atp: Grassucci et al. Align True Pairs: mean squared distance over every pair of
            modalities present in the same sample.
        centroid_uniformity: Grassucci et al. Centroid Uniformity: uniformity of the normalised
            per-sample centroids.
        uniformity_t: the uniformity temperature ``t`` (Wang & Isola: 2).
        align_alpha: the alignment exponent ``alpha`` (Wang & Isola: 2), for ``align`` and ``atp``.

    Fahim et al.'s ``L_CUA`` is ``align=1, uniformity_in=1``, ``L_CUAXU`` adds
    ``uniformity_cross=1``; Grassucci et al.'s objective is ``atp=lambda1, centroid_uniformity=lambda2``.

    With a *frozen* anchor the uniformity terms cannot spread the image embeddings: repulsion then
    only pushes a plug-in modality out of the anchor's region, and ``uniformity_cross`` or
    ``uniformity_in`` alone *widen* the gap (``tests/test_gap_losses.py`` shows it on a toy problem);
    the alignment terms (``align``, ``atp``) are what close it. Both papers train both towers.
    """

    align: float = 0.0
    uniformity_in: float = 0.0
    uniformity_cross: float = 0.0
    atp: float = 0.0
    centroid_uniformity: float = 0.0
    uniformity_t: float = 2.0
    align_alpha: float = 2.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"gap regulariser '{f.name}' must be a finite number, got {value!r}")
            setattr(self, f.name, float(value))
        for name in WEIGHT_NAMES:
            if getattr(self, name) < 0:
                raise ConfigError(f"gap regulariser weight '{name}' must be >= 0, got {getattr(self, name)}")
        if self.uniformity_t <= 0 or self.align_alpha <= 0:
            raise ConfigError(
                f"uniformity_t and align_alpha must be > 0, got {self.uniformity_t} and {self.align_alpha}"
            )

    @property
    def enabled(self) -> dict[str, float]:
        """``{term name: weight}`` of the terms with a positive weight."""
        return {name: getattr(self, name) for name in WEIGHT_NAMES if getattr(self, name) > 0}

    @classmethod
    def build(cls, value: GapRegularizerConfig | Mapping[str, Any] | None) -> GapRegularizerConfig:
        """A config from itself, a mapping (unknown keys refused) or ``None`` (all off)."""
        if isinstance(value, cls):
            return value
        return from_dict(cls, value, where="loss.gap")


WEIGHT_NAMES = ("align", "uniformity_in", "uniformity_cross", "atp", "centroid_uniformity")
"""The regulariser terms, in the order they are computed; ``BindingLoss`` names them ``reg/<name>``."""


# --------------------------------------------------------------------------- helpers
def _all_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if x.ndim != 2:
        raise ValueError(f"expected embeddings of shape (N, D), got {tuple(x.shape)}")
    if mask is None:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    if mask.shape != (x.shape[0],) or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor of shape ({x.shape[0]},), got {mask.dtype} {tuple(mask.shape)}"
        )
    return mask.to(x.device)


def _zero_absent(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Zeros in unused rows, whatever they held (a NaN row would leak NaN into gradients)."""
    return torch.where(keep[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def _squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||x_i - y_j||^2`` for all i, j, smooth at zero distance (unlike ``cdist``/``pdist``)."""
    with torch.autocast(device_type=x.device.type, enabled=False):  # no bf16 cancellation near 0
        sq = x.pow(2).sum(-1)[:, None] + y.pow(2).sum(-1)[None, :] - 2.0 * x @ y.T
    return sq.clamp_min(0.0)


def _log_mean_exp(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``log mean_{keep} exp(values)``; 0 (still attached to ``values``) when nothing is kept."""
    count = keep.sum()
    lse = torch.logsumexp(values.masked_fill(~keep, _MASKED).flatten(), dim=0)
    defined = lse - torch.log(count.clamp_min(1).to(values.dtype))
    return torch.where(count > 0, defined, values.sum() * 0.0)


def _masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[keep]`` (0, still attached, when nothing is kept); no host sync."""
    keep_f = keep.to(values.dtype)
    return (values * keep_f).sum() / keep_f.sum().clamp_min(1.0)


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# --------------------------------------------------------------------------- Wang & Isola terms
def uniformity(x: torch.Tensor, mask: torch.Tensor | None = None, *, t: float = 2.0) -> torch.Tensor:
    """Uniformity loss of Wang & Isola 2020 (ICML, arXiv 2005.10242), eq. for ``L_uniform``.

    ``L_unif(x) = log( 1/(n(n-1)) * sum_{i != j} exp(-t * ||x_i - x_j||^2) )`` over the present rows.
    Lower is more uniform on the sphere; the minimum for unit vectors in ``D >= n-1`` dims is
    ``-t * 2n/(n-1)`` (a regular simplex). Equal to the reference ``pdist`` implementation (mean over
    ``i < j``) because the summand is symmetric.

    Args:
        x: ``(N, D)`` L2-normalised embeddings.
        mask: ``(N,)`` bool, rows to use (default all).
        t: the temperature (2 in the paper).

    Returns:
        A scalar; 0 when fewer than two rows are present.
    """
    x = _float(x)
    keep = _all_rows(x, mask)
    x = _zero_absent(x, keep)
    pair = keep[:, None] & keep[None, :] & ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return _log_mean_exp(-t * _squared_distances(x, x), pair)


def cross_uniformity(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, *, t: float = 2.0
) -> torch.Tensor:
    """Cross-modal uniformity ``L_XUniform`` of Fahim et al. 2024 (arXiv 2405.18570).

    ``L_xunif(x, y) = log( 1/(n(n-1)) * sum_{i != j} exp(-t * ||x_i - y_j||^2) )`` over rows present
    in both (``x_i``, ``y_i`` are a true pair, so ``i != j`` ranges over the non-pairs). It spreads
    each modality over the other's region, which pulls the two modalities' distributions together.
    The form symmetrised in ``x`` and ``y`` is identical (swap ``i`` and ``j``).

    Args:
        x, y: ``(N, D)`` L2-normalised embeddings, row ``i`` of each a true pair.
        mask: ``(N,)`` bool, pairs to use (default all).
        t: the temperature.

    Returns:
        A scalar; 0 when fewer than two pairs are present.
    """
    x, y = _float(x), _float(y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    keep = _all_rows(x, mask)
    x, y = _zero_absent(x, keep), _zero_absent(y, keep)
    pair = keep[:, None] & keep[None, :] & ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return _log_mean_exp(-t * _squared_distances(x, y), pair)


def alignment(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, *, alpha: float = 2.0
) -> torch.Tensor:
    """Alignment loss of Wang & Isola 2020, as used by Fahim et al. 2024 and as Grassucci et al.'s ATP.

    ``L_align(x, y) = 1/n * sum_i ||x_i - y_i||_2^alpha`` over the present true pairs.

    Args:
        x, y: ``(N, D)`` embeddings, row ``i`` of each a true pair.
        mask: ``(N,)`` bool, pairs to use (default all).
        alpha: the exponent (2 in both papers).

    Returns:
        A scalar; 0 when no pair is present.
    """
    x, y = _float(x), _float(y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    keep = _all_rows(x, mask)
    return _masked_mean(_pair_distance(_zero_absent(x, keep), _zero_absent(y, keep), alpha), keep)


def _pair_distance(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    sq = (x - y).pow(2).sum(-1)
    if alpha == 2.0:
        return sq
    # d^alpha = (d^2)^(alpha/2); the clamp keeps the gradient finite at d = 0 for alpha < 2
    return sq.clamp_min(1e-12).pow(alpha / 2.0)


# --------------------------------------------------------------------------- n-modal forms
def _masks_for(
    embeddings: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    return {m: _all_rows(x, None if masks is None else masks.get(m)) for m, x in embeddings.items()}


def _mean_over_defined(values: Sequence[torch.Tensor], defined: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean of the per-modality ``values`` whose ``defined`` flag is set (0 if none); no host sync."""
    flags = torch.stack(list(defined)).to(values[0].dtype)
    return (torch.stack(list(values)) * flags).sum() / flags.sum().clamp_min(1.0)


def in_modal_uniformity(
    embeddings: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    modalities: Sequence[str],
    t: float = 2.0,
) -> torch.Tensor:
    """Fahim et al.'s in-modal uniformity, n-modal: ``mean_m L_unif(x^m)`` over ``modalities``.

    Fahim et al. average the image's and the text's uniformity; with a frozen anchor the image's
    term is a constant, so AnchorBind averages over the plug-in ``modalities`` only, and only over
    those with at least two present rows (a modality absent from the batch does not dilute it).
    """
    keep = _masks_for(embeddings, masks)
    values = [uniformity(embeddings[m], keep[m], t=t) for m in modalities]
    return _mean_over_defined(values, [keep[m].sum() >= 2 for m in modalities])


def anchored_pair_terms(
    embeddings: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None,
    *,
    anchor: str,
    modalities: Sequence[str],
    term: str,
    t: float = 2.0,
    alpha: float = 2.0,
) -> torch.Tensor:
    """``mean_m term(x^anchor, x^m)`` over ``modalities``, on rows where both are present.

    ``term`` is ``"align"`` (:func:`alignment`) or ``"uniformity_cross"`` (:func:`cross_uniformity`):
    Fahim et al.'s two-modal terms applied to each (image, plug-in) pair of an anchored model. The
    mean runs over the modalities for which the term is defined in this batch (at least one
    present pair for ``align``, two for ``uniformity_cross``).
    """
    keep = _masks_for(embeddings, masks)
    values, defined = [], []
    for m in modalities:
        both = keep[anchor] & keep[m]
        if term == "align":
            values.append(alignment(embeddings[m], embeddings[anchor], both, alpha=alpha))
            defined.append(both.sum() >= 1)
        elif term == "uniformity_cross":
            values.append(cross_uniformity(embeddings[anchor], embeddings[m], both, t=t))
            defined.append(both.sum() >= 2)
        else:
            raise ValueError(f"unknown anchored term {term!r}")
    return _mean_over_defined(values, defined)


def align_true_pairs(
    embeddings: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    alpha: float = 2.0,
) -> torch.Tensor:
    """Align True Pairs (ATP) of Grassucci et al. 2026 (arXiv 2601.18525), n-modal form.

    Two-modal ATP is the alignment loss on true pairs, ``1/N sum_i ||x_i - y_i||^2`` (ModGap's
    ``lalign_loss``). For n modalities, every pair of modalities present in the same sample is a
    true pair, and ATP is their mean:

    ``L_ATP = 1/|T| * sum_{(i, p, q) in T} ||x_i^p - x_i^q||^alpha``,
    ``T = {(i, p, q): p < q, sample i has both modality p and modality q}``.

    With image-anchored data (each sample: the image plus one plug-in modality) this is the mean
    distance of each plug-in embedding to its image; it is not a contrastive term (no negatives), so
    pulling two plug-in modalities of one sample together does not contrast them with each other.

    Args:
        embeddings: ``{modality: (N, D)}`` L2-normalised embeddings, rows aligned across modalities.
        masks: ``{modality: (N,) bool}``; a modality without a mask is present in every row.
        alpha: the alignment exponent (2 in the paper).

    Returns:
        A scalar; 0 when no sample has two modalities.
    """
    keep = _masks_for(embeddings, masks)
    names = list(embeddings)
    first = _float(embeddings[names[0]])
    total = first.sum() * 0.0
    count = torch.zeros((), device=first.device, dtype=first.dtype)
    for p, q in itertools.combinations(names, 2):
        both = keep[p] & keep[q]
        xp, xq = _zero_absent(_float(embeddings[p]), both), _zero_absent(_float(embeddings[q]), both)
        both = both.to(first.dtype)
        total = total + (_pair_distance(xp, xq, alpha) * both).sum()
        count = count + both.sum()
    return total / count.clamp_min(1.0)


def sample_centroids(
    embeddings: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample centroids ``c_i = normalize(mean_{m present at i} x_i^m)`` and where they are defined.

    Returns:
        ``(centroids (N, D), defined (N,) bool)``: a centroid is defined where the sample has at
        least two modalities (a single embedding is not a multimodal centroid).
    """
    keep = _masks_for(embeddings, masks)
    names = list(embeddings)
    first = _float(embeddings[names[0]])
    total = torch.zeros_like(first)
    count = torch.zeros(first.shape[0], device=first.device, dtype=first.dtype)
    for m in names:
        total = total + _zero_absent(_float(embeddings[m]), keep[m])
        present = keep[m].to(first.dtype)
        count = count + present
    mean = total / count.clamp_min(1.0)[:, None]
    # normalise, as ModGap does (F.normalize on the centroids); the eps guards the zero vectors of
    # rows without a centroid
    centroids = mean / mean.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return centroids, count >= 2


def centroid_uniformity(
    embeddings: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    t: float = 2.0,
) -> torch.Tensor:
    """Centroid Uniformity (CU) of Grassucci et al. 2026 (arXiv 2601.18525), n-modal form.

    ``L_CU = L_unif({c_i})``, ``c_i = (sum_{m present at i} x_i^m / n_i) / ||...||``: the Wang & Isola
    uniformity of the L2-normalised centroids of each sample's modality embeddings (ModGap
    normalises the two-modal centroid ``(x_i + y_i) / 2`` before ``lunif_loss``). Spreading the
    centroids instead of each modality separately keeps the repulsion from reopening the gap that
    ATP closes. Samples with a single modality have no centroid and are left out.

    Args:
        embeddings: ``{modality: (N, D)}`` L2-normalised embeddings, rows aligned across modalities.
        masks: ``{modality: (N,) bool}``; a modality without a mask is present in every row.
        t: the uniformity temperature (2).

    Returns:
        A scalar; 0 when fewer than two samples have a centroid.
    """
    centroids, defined = sample_centroids(embeddings, masks)
    return uniformity(centroids, defined, t=t)


# --------------------------------------------------------------------------- assembly
def gap_regularizer_terms(
    config: GapRegularizerConfig,
    embeddings: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None,
    *,
    anchor: str,
    modalities: Sequence[str],
) -> dict[str, torch.Tensor]:
    """The *unweighted* value of every enabled regulariser, ``{name: scalar}``.

    Args:
        config: which terms are enabled (weight > 0) and their ``t`` / ``alpha``.
        embeddings: ``{modality: (N, D)}`` including the anchor, rows aligned (the global batch
            when training on several processes).
        masks: ``{modality: (N,) bool}`` or ``None``.
        anchor: the anchor modality's key (``"image"``).
        modalities: the plug-in modalities the loss may move, in a fixed order.

    Returns:
        ``{name: value}`` for the names in :attr:`GapRegularizerConfig.enabled`; the caller
        multiplies by the weights.
    """
    if anchor not in embeddings:
        raise ValueError(f"the gap regularisers need the anchor's embeddings ('{anchor}')")
    if not modalities:
        return {}
    present = {m: embeddings[m] for m in (anchor, *modalities)}
    t, alpha = config.uniformity_t, config.align_alpha
    terms: dict[str, torch.Tensor] = {}
    for name in config.enabled:
        if name == "align":
            terms[name] = anchored_pair_terms(
                present, masks, anchor=anchor, modalities=modalities, term="align", alpha=alpha
            )
        elif name == "uniformity_in":
            terms[name] = in_modal_uniformity(present, masks, modalities=modalities, t=t)
        elif name == "uniformity_cross":
            terms[name] = anchored_pair_terms(
                present, masks, anchor=anchor, modalities=modalities, term="uniformity_cross", t=t
            )
        elif name == "atp":
            terms[name] = align_true_pairs(present, masks, alpha=alpha)
        elif name == "centroid_uniformity":
            terms[name] = centroid_uniformity(present, masks, t=t)
    return terms
