"""Optimizer parameter groups, built once, and the optimizer itself.

Each model group becomes up to two optimizer groups: `NAME` (with weight decay) and `NAME.no_decay`
(biases and normalisation weights: every parameter with fewer than 2 dimensions, and what the model's
`no_weight_decay()` names, such as a ViT's position embedding and class token: timm's rule). Frozen
groups are included: a parameter whose `requires_grad` is off gets no gradient, and PyTorch's
optimizers skip parameters without gradients, so freezing and unfreezing never add or remove groups.
"""

from __future__ import annotations

import torch

from .config import OptimConfig
from .model import Group


def build_param_groups(groups: list[Group], weight_decay: float) -> list[dict]:
    out = []
    for g in groups:
        decay = [p for n, p in g.params if p.ndim >= 2 and n not in g.no_decay]
        no_decay = [p for n, p in g.params if p.ndim < 2 or n in g.no_decay]
        if decay:
            out.append({"params": decay, "name": g.name, "lr_scale": g.lr_scale, "weight_decay": weight_decay})
        if no_decay:
            out.append({"params": no_decay, "name": f"{g.name}.no_decay", "lr_scale": g.lr_scale, "weight_decay": 0.0})
    return out


def create_optimizer(param_groups: list[dict], cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    for g in param_groups:
        g["lr"] = lr * g["lr_scale"]
    fast = {"foreach": True}
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, **fast)
    if cfg.name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, **fast)
    if cfg.name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, **fast)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = base_lr * factor * g["lr_scale"]
