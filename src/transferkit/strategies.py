"""Strategies: which parameter groups train, in which phase, at what learning-rate scale. Nothing else.

A strategy turns its config and the model's ordered groups (stem ... top block, head) into phases:
- `probe`: the backbone is frozen and only the head trains, on backbone features computed once and
  cached (milliseconds, not epochs of backbone passes);
- `finetune`: images go through the backbone, and `unfrozen(epoch)` names the groups that train in
  that epoch, a pure function of the epoch (so a resumed run unfreezes exactly as an uninterrupted one).
The parameter groups are built once, frozen ones included (`optim.build_param_groups`); a strategy
only toggles `requires_grad` (through `unfrozen`) and sets each group's `lr_scale` (`assign_lr_scales`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._registry import Registry
from .config import RunConfig, StrategyConfig, check_layer_lr_min
from .errors import UserError

if TYPE_CHECKING:  # the command line lists the strategies without importing PyTorch
    from .model import Group


# Settings that only some strategies read: `fit` notes a flag its strategy ignores, `search` samples
# them only in trials of those strategies.
TRAINS_BACKBONE = ("full", "partial", "gradual", "lp_ft")
BACKPROP = TRAINS_BACKBONE + ("lora",)  # epochs of forward and backward passes through the backbone
USED_ONLY_BY: dict[str, tuple[str, ...]] = {
    "epochs": BACKPROP, "crop_scale_min": BACKPROP, "augment": BACKPROP, "flip": BACKPROP, "bn_stats": BACKPROP,
    "schedule": BACKPROP, "warmup_epochs": BACKPROP, "min_lr_ratio": BACKPROP,
    "ema": BACKPROP, "accumulate": BACKPROP, "grad_checkpointing": BACKPROP,  # a head on cached features: no fine-tuning, no backbone pass to save
    "group_by_length": BACKPROP,  # batches of texts through the backbone; cached features have no lengths
    "layer_decay": TRAINS_BACKBONE, "layer_lr_min": TRAINS_BACKBONE, "l2sp_alpha": TRAINS_BACKBONE,
    "lp_epochs": ("linear_probe", "lp_ft"), "k": ("partial",), "unfreeze_every": ("gradual",), "ft_lr_scale": ("lp_ft",), "ft_patience": ("lp_ft",),
    "lora_r": ("lora",), "lora_alpha": ("lora",), "lora_dropout": ("lora",), "lora_targets": ("lora",),
}


def unused_settings(strategy: str, names) -> list[str]:
    """Of the setting names given, those `strategy` does not read."""
    return sorted(n for n in names if strategy not in USED_ONLY_BY.get(n, (strategy,)))


# settings read by some schedules or optimizers only: name -> (the setting that chooses, the choices that read it)
SETTING_OF = {
    "min_lr_ratio": ("schedule", ("cosine", "linear")), "step_size": ("schedule", ("step",)),
    "gamma": ("schedule", ("step", "multistep")), "milestones": ("schedule", ("multistep",)),
    "decay_rate": ("schedule", ("exponential",)), "decay_steps": ("schedule", ("exponential",)),
    "staircase": ("schedule", ("exponential",)), "pct_start": ("schedule", ("onecycle",)),
    "momentum": ("optimizer", ("sgd",)), "nesterov": ("optimizer", ("sgd",)),
}


def ignored_settings(cfg: RunConfig, given) -> dict[str, tuple[str, str, str]]:
    """Of the settings given (flat names, from flags, a config file or keyword arguments), those this
    run would ignore: name -> (what chooses, its value, who reads the setting). The command line says
    them as notes and the Python API as warnings, so that none is silently dropped."""
    out = {}
    names = unused_settings(cfg.strategy.name, given)
    if "scratch" in cfg.train.baselines:  # the from-scratch baseline trains with strategy full and reads those
        names = unused_settings("full", names)
    for n in names:
        out[n] = ("strategy", cfg.strategy.name, ", ".join(USED_ONLY_BY[n]))
    for n in ("candidates", "rank_score"):
        if n in given and cfg.model.name != "auto":
            out[n] = ("model", cfg.model.name, "model auto, to choose among models")
    if "head_hidden" in given and cfg.model.head != "mlp":  # a linear head has no hidden layer (said nothing, recorded 512)
        out["head_hidden"] = ("head", cfg.model.head, "head mlp")
    for n, (kind, users) in SETTING_OF.items():
        own = cfg.schedule.name if kind == "schedule" else cfg.optim.name
        if n in given and n not in out and own not in users:
            out[n] = (kind, own, ", ".join(users))
    return out


@dataclass(frozen=True)
class Phase:
    kind: str  # "probe" or "finetune"
    epochs: int
    lr: float
    unfrozen: Callable[[int], list[str]] | None = None  # finetune: names of the groups that train at an epoch
    bn_stats: str = "trainable"  # BatchNorm running statistics in this phase (model.set_trainable)
    give_up_after: int | None = None  # end the phase when none of its first N epochs beats the starting point (lp_ft: the probe)


def _bn(cfg: RunConfig, auto: str) -> str:
    return auto if cfg.strategy.bn_stats == "auto" else cfg.strategy.bn_stats


STRATEGIES: Registry[Callable[[RunConfig, list[str]], list[Phase]]] = Registry("strategy")


def _backbone(names: list[str]) -> list[str]:
    return [n for n in names if n != "head"]


@STRATEGIES.register("linear_probe", "frozen backbone; a head trained on cached features")
def linear_probe(cfg: RunConfig, names: list[str]) -> list[Phase]:
    return [Phase("probe", cfg.strategy.lp_epochs, cfg.optim.lr)]


@STRATEGIES.register("full", "fine-tune every parameter")
def full(cfg: RunConfig, names: list[str]) -> list[Phase]:
    return [Phase("finetune", cfg.train.epochs, cfg.optim.lr, lambda epoch: list(names), _bn(cfg, "trainable"))]


@STRATEGIES.register("partial", "train the head and the last k backbone block groups")
def partial(cfg: RunConfig, names: list[str]) -> list[Phase]:
    bb, k = _backbone(names), cfg.strategy.k
    if k > len(bb):
        raise UserError(f"k={k} is larger than the number of block groups of this backbone ({len(bb)}: {', '.join(bb)})")
    chosen = bb[len(bb) - k :] + ["head"]
    return [Phase("finetune", cfg.train.epochs, cfg.optim.lr, lambda epoch: list(chosen), _bn(cfg, "trainable"))]


@STRATEGIES.register("gradual", "unfreeze one more block group every unfreeze_every epochs, top down (ULMFiT)")
def gradual(cfg: RunConfig, names: list[str]) -> list[Phase]:
    bb, every = _backbone(names), cfg.strategy.unfreeze_every

    def unfrozen(epoch: int) -> list[str]:
        n = min(len(bb), epoch // every)  # epochs [0, every): head only; then one more group each time
        return bb[len(bb) - n :] + ["head"] if n else ["head"]

    return [Phase("finetune", cfg.train.epochs, cfg.optim.lr, unfrozen, _bn(cfg, "trainable"))]


@STRATEGIES.register("lp_ft", "linear probe on cached features, then fine-tune everything at a lower rate (Kumar et al. 2022)")
def lp_ft(cfg: RunConfig, names: list[str]) -> list[Phase]:
    # The probe fits the head to eval-mode features. Batch statistics in the fine-tuning phase would
    # hand that head different features from the first step (on digits: 94% -> 13% after one epoch),
    # so BatchNorm statistics stay frozen by default; the low rate keeps that stable.
    return [
        Phase("probe", cfg.strategy.lp_epochs, cfg.optim.lr),
        Phase("finetune", cfg.train.epochs, cfg.optim.lr * cfg.strategy.ft_lr_scale, lambda epoch: list(names), _bn(cfg, "frozen"),
              give_up_after=cfg.strategy.ft_patience or None),
    ]


@STRATEGIES.register("lora", "low-rank adapters (PEFT) on --lora-targets and the head; the backbone frozen, adapters merged at the end")
def lora(cfg: RunConfig, names: list[str]) -> list[Phase]:
    if "lora" not in names:
        raise UserError("strategy lora: the model has no LoRA adapters (fit injects them; build the model with lora.apply_lora)")
    return [Phase("finetune", cfg.train.epochs, cfg.optim.lr, lambda epoch: ["lora", "head"], _bn(cfg, "frozen"))]


def create_phases(cfg: RunConfig, groups: list[Group]) -> list[Phase]:
    from .config import with_default_lr

    return STRATEGIES.get(cfg.strategy.name)(with_default_lr(cfg), [g.name for g in groups])


def assign_lr_scales(groups: list[Group], cfg: StrategyConfig, lr: float) -> None:
    """Discriminative learning rates. The head keeps scale 1; backbone group i of n (0 = stem) gets
    layer_decay ** (n - i) with `layer_decay`, or, with `layer_lr_min`, a geometric ramp from
    layer_lr_min / lr at the stem to 1 at the head (fastai's slice(lo, hi))."""
    bb = [g for g in groups if g.name not in ("head", "lora")]  # LoRA's adapters train at lr
    n = len(bb)
    for i, g in enumerate(bb):
        if cfg.layer_decay is not None:
            g.lr_scale = cfg.layer_decay ** (n - i)
        elif cfg.layer_lr_min is not None:
            check_layer_lr_min(cfg.layer_lr_min, lr)  # lr may have been the default, unknown to the config's check
            lo = cfg.layer_lr_min / lr
            g.lr_scale = lo ** ((n - i) / n)
        else:
            g.lr_scale = 1.0


def frozen_by_pattern(groups: list[Group], patterns: list[str]) -> set[str]:
    """Parameter names matched by any `freeze` regex; a pattern that matches nothing is an error."""
    names = [n for g in groups for n, _ in g.params]
    out: set[str] = set()
    for pat in patterns:
        rx = re.compile(pat)
        hit = {n for n in names if rx.search(n)}
        if not hit:
            sample = ", ".join(names[:3] + names[-2:])
            raise UserError(f"freeze pattern {pat!r} matches no parameter (names look like: {sample})")
        out |= hit
    return out
