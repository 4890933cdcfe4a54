"""Learning-rate schedules as pure functions of the optimizer step (nanoGPT style).

`lr_factor(cfg, step, total_steps, steps_per_epoch)` is the multiplier of the base rate at a 0-based
optimizer step; each parameter group's rate is `base_lr * factor * lr_scale`. Linear warmup from 0
(`warmup_epochs`, at most half the run's steps: the default 1 epoch of a 1-epoch run would otherwise
be all warmup and no decay) goes in front of any schedule. Cosine, linear and onecycle then run over
the steps after warmup (t: progress from the end of warmup to the end); step, multistep and exponential
count from the first step, warmup included, so that their epochs are the epochs of the run (as torch's
StepLR / MultiStepLR and Keras's ExponentialDecay count them: `--milestones 2` decays after epoch 2):

    constant     1
    cosine       m + (1 - m) * (1 + cos(pi * t)) / 2             t = progress in [0, 1], m = min_lr_ratio
    linear       1 - (1 - m) * t
    step         gamma ** floor(s / (step_size * steps_per_epoch))        s = steps from the start
    multistep    gamma ** (number of milestones (in epochs) reached)
    exponential  decay_rate ** (s / decay_steps), the exponent floored when staircase (Keras ExponentialDecay)
    onecycle     cosine up from 1/div_factor to 1 over pct_start, then cosine down to 1/(div_factor*final_div_factor)
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ._registry import Registry

# name -> f(s, span, steps_per_epoch, cfg): s = steps after warmup (from the start for FROM_START),
# span = steps the schedule covers
SCHEDULES: Registry[Callable[..., float]] = Registry("schedule")
FROM_START = ("step", "multistep", "exponential")


def _t(s: int, span: int) -> float:
    return min(1.0, max(0.0, s / max(1, span)))


@SCHEDULES.register("constant", "the base rate throughout")
def constant(s, span, spe, cfg) -> float:
    return 1.0


@SCHEDULES.register("cosine", "half-cosine from the base rate to base * min_lr_ratio")
def cosine(s, span, spe, cfg) -> float:
    m = cfg.min_lr_ratio
    return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * _t(s, span)))


@SCHEDULES.register("linear", "straight line from the base rate to base * min_lr_ratio")
def linear(s, span, spe, cfg) -> float:
    return 1.0 - (1 - cfg.min_lr_ratio) * _t(s, span)


@SCHEDULES.register("step", "multiply by gamma every step_size epochs")
def step(s, span, spe, cfg) -> float:
    # the formula as written: a period of 1.5 epochs of 45 steps drops at 68, 135, 203 (a rounded
    # period of 68 drifted a step per drop); 1e-9 keeps 0.1 * 30 steps from reading as 3.0000000000000004
    return cfg.gamma ** math.floor(s / max(1.0, cfg.step_size * spe) + 1e-9)


@SCHEDULES.register("multistep", "multiply by gamma at each epoch in milestones")
def multistep(s, span, spe, cfg) -> float:
    return cfg.gamma ** sum(1 for m in cfg.milestones if s >= m * spe - 1e-9)


@SCHEDULES.register("exponential", "decay_rate ** (step / decay_steps), optionally staircase (as Keras)")
def exponential(s, span, spe, cfg) -> float:
    p = s / cfg.decay_steps
    return cfg.decay_rate ** (math.floor(p) if cfg.staircase else p)


@SCHEDULES.register("onecycle", "one-cycle (Smith): cosine up over pct_start, then cosine down")
def onecycle(s, span, spe, cfg) -> float:
    lo, end = 1.0 / cfg.div_factor, 1.0 / (cfg.div_factor * cfg.final_div_factor)
    up = max(1, round(cfg.pct_start * span))
    if s < up:
        return lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi * s / up))
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * _t(s - up, span - up)))


def warmup_steps(cfg, steps_per_epoch: int, total_steps: int) -> int:
    # capped in epochs first: 1e308 epochs times the steps of one overflowed int() (a traceback)
    return min(int(round(min(cfg.warmup_epochs, total_steps) * steps_per_epoch)), total_steps // 2)


def warmup_epochs(cfg, epochs: int) -> float:
    """The warmup a run of `epochs` epochs gets, in epochs (`warmup_steps`' cap, for messages)."""
    return min(cfg.warmup_epochs, epochs / 2)


def lr_factor(cfg, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based) of `total_steps`."""
    w = warmup_steps(cfg, steps_per_epoch, total_steps)
    if step < w:
        return (step + 1) / w
    if cfg.name in FROM_START:
        return SCHEDULES.get(cfg.name)(step, total_steps, steps_per_epoch, cfg)
    return SCHEDULES.get(cfg.name)(step - w, total_steps - w, steps_per_epoch, cfg)


def schedule_curve(cfg, total_steps: int, steps_per_epoch: int) -> list[float]:
    return [lr_factor(cfg, s, total_steps, steps_per_epoch) for s in range(total_steps)]
