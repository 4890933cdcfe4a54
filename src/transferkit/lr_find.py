"""Learning-rate range test (Smith 2017, "Cyclical learning rates", section 3.3; fastai's lr_find).

Train the configured setup for about 100 steps while the learning rate grows exponentially from
`start_lr` to `end_lr`, and record the loss. Stop once the median of the last 3 losses exceeds
`diverge` times the lowest such median so far (fastai compares a debiased exponential moving average;
its lag made a short sweep look as if it never diverged while the raw loss rose 10-38x). The curve is
then smoothed without lag (a centred moving median, `smooth_centred`), and the suggestion is the rate
where it falls fastest (steepest descent, on a log-lr axis, before its minimum); `min_div10`, the rate
at the minimum divided by 10, is the more conservative alternative. A loss that never fell below its
start gives no suggestion (None), rather than a rate below the sweep.

What trains is the strategy's last phase with every group it will unfreeze (gradual: all of them, not
only the head of its first epoch): the head on cached features for `linear_probe`, the unfrozen groups
(with their layer-decay scales) for the others; for `lp_ft`, from the head its probe phase trains first. The swept value
is the base learning rate (`--lr`): for `lp_ft` the applied rate is lr x ft_lr_scale, as in `fit`,
so the suggestion can be passed to `--lr` as it is. Only the training split is used.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import report
from .config import RunConfig
from .data import DataSplits
from .errors import UserError


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed (centred moving median)
    raw_losses: list[float]
    suggestion: float | None  # None: the loss never fell
    steepest: float | None
    min_div10: float
    stopped_early: bool  # the loss diverged before end_lr
    strategy: str = ""
    trained: str = ""  # what the test trained
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def lr_schedule(start_lr: float, end_lr: float, steps: int) -> np.ndarray:
    """Exponentially increasing rates, start_lr at step 0 and end_lr at the last step."""
    return start_lr * (end_lr / start_lr) ** (np.arange(steps) / max(1, steps - 1))


def smooth_centred(losses, window: int) -> np.ndarray:
    """Moving median over `window` points centred on each (fewer at the ends): no lag, unlike an EMA,
    and one spike does not spread over its neighbours as it would in a mean."""
    v = np.asarray(losses, float)
    h = max(0, window // 2)
    return np.array([np.median(v[max(0, i - h) : i + h + 1]) for i in range(len(v))])


def never_fell(smoothed, raw=None) -> bool:
    """The smoothed loss never went clearly below where it started: no rate to suggest. With the raw
    losses: never below the very first loss (a loss that rose from 0.72 to 63 at once: the centred
    median at the start already held the later points, and its 25 read as a fall), or never below the
    first points' level by more than their noise (a flat loss's wander read as a fall); the noise is
    the spread of the step-to-step changes over the first quarter (median absolute deviation)."""
    sm = np.asarray(smoothed, float)
    if len(sm) < 3:
        return True
    if raw is None:
        return float(np.nanmin(sm[1:])) > 0.98 * float(sm[0])
    r = np.asarray(raw, float)
    low = float(np.nanmin(sm[1:]))
    if low >= r[0]:
        return True
    start = float(np.median(r[: max(5, len(r) // 10)]))
    d = np.diff(r[: max(6, len(r) // 4)])
    noise = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / np.sqrt(2) if len(d) > 2 else 0.0
    return low > start - max(0.02 * start, 1.5 * noise)


def suggest(lrs, smoothed) -> tuple[float | None, float]:
    """(steepest, min_div10): the rate of the steepest fall of the smoothed loss before its minimum
    (None when fewer than 3 points lead to the minimum), and the rate at the minimum / 10."""
    lrs, sm = np.asarray(lrs, float), np.asarray(smoothed, float)
    i_min = int(np.nanargmin(sm))
    min_div10 = float(lrs[i_min] / 10)
    skip = min(5, len(sm) // 10)  # the first points carry the EMA's start-up, not the curve
    seg = slice(skip, i_min + 1)
    if i_min + 1 - skip < 3:
        return None, min_div10
    grad = np.gradient(sm[seg], np.log10(lrs[seg]))
    return float(lrs[seg][int(np.argmin(grad))]), min_div10


def lr_find(
    cfg: RunConfig, *, splits: DataSplits | None = None, steps: int = 100, start_lr: float = 1e-7, end_lr: float = 10.0,
    diverge: float = 4.0, window: int | None = None, console=None,
) -> LRFindResult:
    from .features import cached_features
    from .config import with_default_lr
    from .fit import make_accelerator
    from .inputs import inputs_for, load_splits
    from .model import create_model, enable_grad_checkpointing, model_groups, set_trainable
    from .optim import build_param_groups, create_optimizer, set_lr
    from .strategies import assign_lr_scales, create_phases, frozen_by_pattern
    from .trainer import PhaseData, gradients_in_memory, run_phase, seed_everything

    con = console or report.console()
    cfg.validate()
    if steps < 10:
        raise UserError(f"lr-find needs at least 10 steps, got {steps}")
    if not (math.isfinite(start_lr) and math.isfinite(end_lr)):  # inf swept 2 points and wrote "end_lr": Infinity, not JSON
        raise UserError(f"lr-find needs finite rates, got start_lr {start_lr:g} and end_lr {end_lr:g}")
    if not 0 < start_lr < end_lr:
        raise UserError(f"lr-find needs 0 < start_lr < end_lr, got {start_lr:g} and {end_lr:g}")
    t0 = time.perf_counter()
    seed_everything(cfg.train.seed)
    if cfg.model.name == "auto":  # the candidate `fit --model auto` would choose
        from .ranking import resolve_auto_model

        cfg = resolve_auto_model(cfg, con, show_table=False)
    cfg = with_default_lr(cfg)
    if splits is None:
        splits = load_splits(cfg)
    model = create_model(cfg.model, len(splits.classes))
    if cfg.strategy.name == "lora":
        from .lora import apply_lora

        apply_lora(model.backbone, cfg.strategy)
    if cfg.train.grad_checkpointing:
        enable_grad_checkpointing(model, cfg.model.name)
    inputs = inputs_for(cfg, model.backbone)
    x_u8, train, _ = inputs.encode(splits.train)
    groups = model_groups(model)
    phases = create_phases(cfg, groups)
    phase = phases[-1]
    assign_lr_scales(groups, cfg.strategy, cfg.optim.lr)
    accelerator = make_accelerator(cfg)
    device = accelerator.device
    y = torch.as_tensor(train.labels, device=device)
    flip = cfg.data.flip if cfg.data.flip is not None else splits.flip_ok
    model.to(device, memory_format=inputs.memory_format)
    after = ""
    if phase.kind != "probe" and phases[0].kind == "probe":
        # lp_ft: fine-tuning starts from the head the probe trained, as in `fit`; from a random head the
        # first steps' large gradients made the sweep suggest a rate at which real fine-tuning diverged
        f, _ = cached_features(model.backbone, x_u8, inputs.size, device=device, autocast=accelerator.autocast, precision=accelerator.mixed_precision,
                               batch_size=cfg.train.eval_batch_size)
        f = f.to(device)
        run_phase("probe", phases[0], model.head, [g for g in groups if g.name == "head"], PhaseData(f, y, f, y, lambda xb, g: xb, lambda xb: xb),
                  cfg, accelerator, len(splits.classes))
        after = f", from the head {phases[0].epochs} probe epochs trained"

    if phase.kind == "probe":
        x, _ = cached_features(model.backbone, x_u8, inputs.size, device=device, autocast=accelerator.autocast, precision=accelerator.mixed_precision,
                               batch_size=cfg.train.eval_batch_size)
        x = x.to(device)
        module, train_groups = model.head.train(), [g for g in groups if g.name == "head"]
        transform = lambda xb, g: xb  # noqa: E731
        trained = "the head on cached backbone features"
    else:
        model.train()
        unfrozen = set(phase.unfrozen(phase.epochs - 1))  # gradual: the rate must also suit the groups it unfreezes later
        set_trainable(model, groups, unfrozen, bn_stats=cfg.strategy.bn_stats, always_frozen=frozen_by_pattern(groups, cfg.strategy.freeze))
        module, train_groups, x = model, groups, x_u8.to(device)
        transform = inputs.train_transform(flip)

        trained = f"{len(unfrozen)} of {len(groups)} parameter groups ({phase.kind} phase, applied lr = lr x {phase.lr / cfg.optim.lr:g}{after})"
    lr_mult = phase.lr / cfg.optim.lr  # lp_ft fine-tunes at lr x ft_lr_scale
    optimizer = create_optimizer(build_param_groups(train_groups, cfg.optim.weight_decay), cfg.optim, start_lr * lr_mult)
    optimizer = accelerator.prepare(optimizer)  # steps as `fit` does (fp16: unscaled gradients, overflowing steps skipped)
    micro = cfg.train.accumulate  # micro-batches a step, as `fit` forwards them (more after running out of memory)
    n, bs = len(x), min(cfg.train.batch_size, len(x))
    gen = torch.Generator().manual_seed(cfg.train.seed)
    con.print(f"lr-find: {cfg.model.name} ({cfg.strategy.name}), training {trained}; {steps} steps, lr {start_lr:.0e} -> {end_lr:.0e}, batch {bs}, {n} training {inputs.unit}")

    lrs, raw = [], []
    best, stopped = math.inf, False
    order, pos = torch.randperm(n, generator=gen), 0
    for lr in lr_schedule(start_lr, end_lr, steps):
        if pos + bs > n and pos > 0:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + bs].to(device)
        pos += bs
        set_lr(optimizer, float(lr) * lr_mult, 1.0)
        loss_sum, micro = gradients_in_memory(accelerator, optimizer, module, transform(x[idx], gen), y[idx], micro, batch_size=bs,
                                              label_smoothing=cfg.train.label_smoothing, notify=lambda m: con.print(f"[yellow]{m}[/]"))
        optimizer.step()
        v = float(loss_sum.item()) / len(idx)
        lrs.append(float(lr))
        raw.append(v)
        m3 = float(np.median(raw[-3:]))  # robust to one spike or one dip, one step behind
        if not math.isfinite(v) or (len(raw) >= 3 and m3 > diverge * best):
            stopped = True
            break
        if len(raw) >= 3:
            best = min(best, m3)
    finite = [i for i, v in enumerate(raw) if math.isfinite(v)]
    lrs_f = [lrs[i] for i in finite]
    sm_f = smooth_centred([raw[i] for i in finite], window or max(3, 2 * (steps // 20) + 1)).tolist()
    steepest, min_div10 = suggest(lrs_f, sm_f)
    notes = []
    per_step = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    if steps < 50:  # 10 steps from 1e-7 to 10 move the rate x6 a step: a noisy step's rate was suggested
        notes.append(f"with {steps} steps the rate grows x{per_step:.2g} a step: the curve is coarse and the suggestion rough; "
                     "--steps 100 (the default) or more gives a finer one")
    if not stopped and raw and min(raw) > 0 and raw[-1] > 4 * min(raw):  # its last step only: the rule waits for 3
        notes.append(f"the loss rose to {raw[-1]:.3g} at the sweep's last step ({min(raw):.3g} at its lowest): it was starting to diverge")
    elif not stopped:
        notes.append(f"the loss did not diverge up to {end_lr:g}: the suggestion may be conservative")
    raw_f = [raw[i] for i in finite]
    if never_fell(sm_f, raw_f):
        suggestion, steepest = None, None
        notes = [n for n in notes if "conservative" not in n]  # nothing is suggested to be conservative
        notes.append(f"the loss never fell clearly below where it started ({raw_f[0]:.3g}; the lowest smoothed loss was {min(sm_f):.3g}): "
                     "no learning rate to suggest. "
                     + ("Every rate of the sweep made it worse: start lower (--start-lr)" if min(sm_f) > 1.5 * raw_f[0] else
                        "Try a wider sweep (--end-lr), more --steps, or another --optimizer"))
    elif steepest is None:
        suggestion = min_div10
        notes.append("too few points before the minimum to find the steepest descent: suggesting min/10")
    else:
        suggestion = steepest
    return LRFindResult(lrs_f, sm_f, [raw[i] for i in finite], suggestion, steepest, min_div10, stopped, cfg.strategy.name, trained,
                        time.perf_counter() - t0, notes)


def lr_find_figure(res: LRFindResult):
    import matplotlib.pyplot as plt

    from . import plots  # noqa: F401  (selects the Agg backend)

    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(res.lrs, res.raw_losses, color="0.8", lw=1, label="loss")
    ax.plot(res.lrs, res.losses, color="C0", label="smoothed loss")
    ax.set_xscale("log")
    if res.steepest is not None:
        ax.axvline(res.steepest, color="C3", ls="--", label=f"steepest descent {res.steepest:.1e}")
    ax.axvline(res.min_div10, color="C2", ls=":", label=f"min / 10 {res.min_div10:.1e}")
    fin = [v for v in res.losses if math.isfinite(v)]
    if fin:
        lo = min(fin + [v for v in res.raw_losses if math.isfinite(v)])
        hi = min(max(fin), 4 * min(fin) + 1e-9)
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
    said = f"suggested lr {res.suggestion:.1e}" if res.suggestion is not None else "no suggestion: the loss never fell"
    ax.set(xlabel="learning rate (base lr, log scale)", ylabel="training loss", title=f"learning-rate range test ({res.strategy}): {said}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["lr_find", "LRFindResult", "lr_find_figure", "lr_schedule", "never_fell", "smooth_centred", "suggest"]
