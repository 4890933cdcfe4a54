"""Penalties added to the loss: L1, explicit L2, and L2-SP (Li et al. 2018).

    L1     l1 * sum |w|           over trainable weights (biases and norm parameters excluded)
    L2     l2 * sum w^2           same set; coupled to the loss, unlike decoupled weight decay
    L2-SP  alpha * ||w - w0||^2   over trainable backbone parameters, w0 = their pretrained values
         + beta * ||w||^2         over trainable head weights
Frozen parameters add only a constant, so they are skipped.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import RegConfig


class Penalty:
    def __init__(self, cfg: RegConfig, named_params: list[tuple[str, nn.Parameter]]):
        self.cfg = cfg
        self.weights = [p for n, p in named_params if p.ndim >= 2]
        self.backbone = [(n, p) for n, p in named_params if not n.startswith("head.")]
        self.head_weights = [p for n, p in named_params if n.startswith("head.") and p.ndim >= 2]
        # w0 is a snapshot taken when the penalty is built, before any step of this phase.
        self.w0 = {n: p.detach().clone() for n, p in self.backbone} if cfg.l2sp_alpha > 0 else {}

    @property
    def active(self) -> bool:
        c = self.cfg
        return any(v > 0 for v in (c.l1, c.l2, c.l2sp_alpha, c.l2sp_beta))

    def __call__(self) -> torch.Tensor | None:
        if not self.active:
            return None
        c, terms = self.cfg, []
        live = [p for p in self.weights if p.requires_grad]
        if c.l1 > 0 and live:
            terms.append(c.l1 * sum(p.abs().sum() for p in live))
        if c.l2 > 0 and live:
            terms.append(c.l2 * sum(p.pow(2).sum() for p in live))
        if c.l2sp_alpha > 0:
            sp = [(p - self.w0[n]).pow(2).sum() for n, p in self.backbone if p.requires_grad]
            if sp:
                terms.append(c.l2sp_alpha * sum(sp))
        if c.l2sp_beta > 0:
            hw = [p.pow(2).sum() for p in self.head_weights if p.requires_grad]
            if hw:
                terms.append(c.l2sp_beta * sum(hw))
        return sum(terms) if terms else None
