"""Learning-rate schedules as pure functions of the step (nanoGPT style).

`lr_factor(cfg, step, total_steps, warmup_steps)` returns the multiplier applied to the base rate;
each parameter group's rate is then `base_lr * factor * lr_scale`. Warmup (linear from 0) goes in
front of any schedule, and the schedule proper runs over the steps after warmup.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ._registry import Registry

# name -> f(t, min_ratio) with t in [0, 1] the fraction of post-warmup steps done
SCHEDULES: Registry[Callable[[float, float], float]] = Registry("schedule")


@SCHEDULES.register("constant", "the base rate throughout")
def constant(t: float, min_ratio: float) -> float:
    return 1.0


@SCHEDULES.register("cosine", "half-cosine from the base rate to base * min_lr_ratio")
def cosine(t: float, min_ratio: float) -> float:
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@SCHEDULES.register("linear", "straight line from the base rate to base * min_lr_ratio")
def linear(t: float, min_ratio: float) -> float:
    return 1.0 - (1 - min_ratio) * t


def lr_factor(name: str, step: int, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    return SCHEDULES.get(name)(t, min_ratio)
