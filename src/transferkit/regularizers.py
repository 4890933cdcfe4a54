"""Penalties added to the loss: L1, explicit L2, and L2-SP (Li et al. 2018).

    L1     l1 * sum |w|           over trainable weights (biases and norm parameters excluded)
    L2     l2 * sum w^2           same set; coupled to the loss, unlike decoupled weight decay
    L2-SP  alpha * ||w - w0||^2   over trainable backbone parameters, w0 = their pretrained values
         + beta * ||w||^2         over trainable head weights
Frozen parameters add only a constant, so they are skipped. Li et al. write alpha/2 and beta/2: a
value taken from the paper is twice as strong here. LoRA's adapters are not backbone weights with
pretrained values (they start from a random A and a zero B): L2-SP leaves them alone.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import RegConfig


def pretrained_reference(named_params, cfg: RegConfig) -> dict[str, torch.Tensor]:
    """L2-SP's w0: a copy of the backbone's parameters, taken before training (and before a resumed
    run loads its checkpoint, whose weights have already moved); {} when L2-SP is off."""
    if cfg.l2sp_alpha <= 0:
        return {}
    return {n: p.detach().clone() for n, p in named_params if not n.startswith("head.") and ".lora_" not in n}


class Penalty:
    def __init__(self, cfg: RegConfig, named_params: list[tuple[str, nn.Parameter]], w0: dict[str, torch.Tensor] | None = None):
        """`w0`: L2-SP's reference (`pretrained_reference`); without it, the parameters as they are now."""
        self.cfg = cfg
        self.weights = [p for n, p in named_params if p.ndim >= 2]
        self.backbone = [(n, p) for n, p in named_params if not n.startswith("head.") and ".lora_" not in n]
        self.head_weights = [p for n, p in named_params if n.startswith("head.") and p.ndim >= 2]
        if w0 is None:
            w0 = pretrained_reference(self.backbone, cfg)
        self.w0 = {n: w0[n].to(p.device) for n, p in self.backbone} if cfg.l2sp_alpha > 0 else {}

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
