"""Optimizer and schedule for binding: AdamW + linear warmup + cosine decay."""

from __future__ import annotations

import torch
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from anchorbind.train.config import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "param_groups"]


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # Norm weights, biases and logit scales are scalars/vectors whose decay only hurts (CLIP recipe).
    return param.ndim < 2 or "logit_scale" in name or "norm" in name.lower() or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed and a non-decayed group."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only; the frozen anchor never enters it."""
    groups = param_groups(model, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """Linear warmup for ``warmup_steps`` then cosine decay to zero at ``total_steps``."""
    return get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, total_steps), total_steps)
