"""Small modules every modality shares: the projection head and the logit scale."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LogitScale", "ProjectionHead"]


class ProjectionHead(nn.Module):
    """Projects pooled trunk features to the anchor's width, as ImageBind's heads do.

    LayerNorm -> Dropout -> Linear (no bias). The output is *not* normalised: the plugin
    L2-normalises it so that the trunk, head and normalisation stay separately inspectable.
    ``norm=False`` leaves the LayerNorm out, for trunks whose pooled output is already
    normalised by their own final norm (ImageBind's heads: LayerNorm -> pool -> Linear).
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0, *, norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(self.norm(features)))


class LogitScale(nn.Module):
    """The InfoNCE inverse temperature of one modality, stored as its logarithm.

    Learnable (a parameter, as CLIP and ImageBind's text) or fixed (a buffer, as ImageBind's
    audio = 20 and depth = 5). Clamped at ``max_scale`` (100 in CLIP) so training cannot make
    the softmax arbitrarily sharp.
    """

    def __init__(self, init: float, learnable: bool, max_scale: float = 100.0) -> None:
        super().__init__()
        if init <= 0 or max_scale <= 0:
            raise ValueError(f"logit scale init and max must be positive, got {init} and {max_scale}")
        log_init = torch.tensor(math.log(init), dtype=torch.float32)
        self.learnable = learnable
        self.max_scale = float(max_scale)
        if learnable:
            self.log_scale = nn.Parameter(log_init)
        else:
            self.register_buffer("log_scale", log_init)

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)

    def extra_repr(self) -> str:
        return f"init={self.log_scale.exp().item():.3g}, learnable={self.learnable}, max={self.max_scale:g}"


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension (computed in float32 for stability under autocast)."""
    return F.normalize(x.float(), dim=-1)
