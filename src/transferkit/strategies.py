"""Strategies: which parameter groups train, in which phase, at what learning-rate scale. Nothing else.

A strategy turns its config into a list of phases. A phase is either
- `probe`: the backbone is frozen and only the head trains, on backbone features computed once and
  cached (so it costs milliseconds, not epochs of backbone passes); or
- `finetune`: images go through the backbone, and `unfrozen(epoch, group_names)` says which groups
  train in that epoch (all of them for `full`).
The parameter groups themselves are built once, frozen ones included (see `optim.build_param_groups`);
a strategy only toggles `requires_grad` and sets `lr_scale`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._registry import Registry
from .config import RunConfig


@dataclass(frozen=True)
class Phase:
    kind: str  # "probe" or "finetune"
    epochs: int
    lr: float
    unfrozen: Callable[[int, list[str]], list[str]] | None = None  # finetune: groups that train at an epoch


def _all_groups(epoch: int, groups: list[str]) -> list[str]:
    return list(groups)


STRATEGIES: Registry[Callable[[RunConfig], list[Phase]]] = Registry("strategy")


@STRATEGIES.register("linear_probe", "frozen backbone; a head trained on cached features")
def linear_probe(cfg: RunConfig) -> list[Phase]:
    return [Phase("probe", cfg.strategy.lp_epochs, cfg.optim.lr)]


@STRATEGIES.register("full", "fine-tune every parameter")
def full(cfg: RunConfig) -> list[Phase]:
    return [Phase("finetune", cfg.train.epochs, cfg.optim.lr, _all_groups)]


@STRATEGIES.register("lp_ft", "linear probe on cached features, then fine-tune everything at a lower rate (Kumar et al. 2022)")
def lp_ft(cfg: RunConfig) -> list[Phase]:
    return [
        Phase("probe", cfg.strategy.lp_epochs, cfg.optim.lr),
        Phase("finetune", cfg.train.epochs, cfg.optim.lr * cfg.strategy.ft_lr_scale, _all_groups),
    ]


def create_phases(cfg: RunConfig) -> list[Phase]:
    return STRATEGIES.get(cfg.strategy.name)(cfg)
