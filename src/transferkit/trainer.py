"""The training loop: one phase at a time, top to bottom.

A phase trains `module` (the whole model, or just the head on cached features) on tensors that already
sit on the device: uint8 images, augmented per batch on the device, or float features. Each epoch:
shuffle, step through batches (learning rate from the schedule, forward under autocast, backward,
step), then evaluate on the validation split and keep the best weights (early stopping). No per-step
host synchronisation: the loss is summed on the device and read once per epoch.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import RunConfig
from .model import Group, set_trainable
from .optim import build_param_groups, create_optimizer, set_lr
from .schedules import lr_factor
from .strategies import Phase


@dataclass
class PhaseData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    train_transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    eval_transform: Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PhaseResult:
    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    train_images: int = 0
    train_seconds: float = 0.0


@torch.no_grad()
def predict_proba(module: nn.Module, x: torch.Tensor, transform: Callable, batch_size: int, autocast) -> torch.Tensor:
    was = module.training
    module.eval()
    out = []
    for i in range(0, len(x), batch_size):
        with autocast():
            logits = module(transform(x[i : i + batch_size]))
        out.append(logits.float().softmax(-1))
    module.train(was)
    return torch.cat(out)


def _score(proba: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    loss = F.nll_loss(proba.clamp_min(1e-12).log(), y).item()
    acc = (proba.argmax(1) == y).float().mean().item()
    return acc, loss


def run_phase(
    name: str,
    phase: Phase,
    module: nn.Module,
    groups: list[Group],
    data: PhaseData,
    cfg: RunConfig,
    accelerator,
    *,
    model_for_freezing=None,
    initial_best: tuple[float, float] | None = None,
    epoch_offset: int = 0,
    progress=None,
) -> PhaseResult:
    """Train `module` for one phase; on return it holds the best weights seen (by validation accuracy,
    ties broken by validation loss), including the starting point when `initial_best` is given."""
    tc = cfg.train
    device = accelerator.device
    n = len(data.x_train)
    bs = min(tc.batch_size, n)
    steps_per_epoch = max(1, n // bs if n % bs < 2 else n // bs + 1)  # a last batch of 1 would break BatchNorm
    total = steps_per_epoch * phase.epochs
    warmup = int(round(cfg.schedule.warmup_epochs * steps_per_epoch)) if phase.kind == "finetune" else 0

    # With a starting score to beat (the probe before fine-tuning), the starting weights are the ones
    # to return if no epoch beats them.
    best_state = copy.deepcopy(module.state_dict()) if initial_best is not None else None
    param_groups = build_param_groups(groups, cfg.optim.weight_decay)
    optimizer = create_optimizer(param_groups, cfg.optim, phase.lr)
    module, optimizer = accelerator.prepare(module, optimizer)
    group_names = [g.name for g in groups]

    gen = torch.Generator().manual_seed(cfg.train.seed + 1000 * epoch_offset)
    best = initial_best if initial_best is not None else (-1.0, math.inf)
    result = PhaseResult(best_epoch=epoch_offset, best_val_accuracy=best[0], best_val_loss=best[1])
    since_best = 0
    step = 0
    t_start = time.perf_counter()
    task = progress.add_task(f"{name}", total=phase.epochs) if progress is not None else None
    for epoch in range(phase.epochs):
        t0 = time.perf_counter()
        module.train()
        if phase.unfrozen is not None and model_for_freezing is not None:
            set_trainable(model_for_freezing, groups, set(phase.unfrozen(epoch, group_names)), train_bn=cfg.strategy.train_bn)
        perm = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros((), device=device)
        for b in range(steps_per_epoch):
            idx = perm[b * bs : (b + 1) * bs] if b < steps_per_epoch - 1 else perm[b * bs :]
            idx_dev = idx.to(device, non_blocking=True)
            x = data.train_transform(data.x_train[idx_dev], gen)
            y = data.y_train[idx_dev]
            set_lr(optimizer, phase.lr, lr_factor(cfg.schedule.name, step, total, warmup, cfg.schedule.min_lr_ratio))
            with accelerator.autocast():
                logits = module(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=tc.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            step += 1
            result.train_images += len(idx)
        train_loss = (loss_sum / n).item()
        result.train_seconds += time.perf_counter() - t0
        proba = predict_proba(module, data.x_val, data.eval_transform, tc.eval_batch_size, accelerator.autocast)
        acc, vloss = _score(proba, data.y_val)
        row = {
            "epoch": epoch_offset + epoch + 1,
            "phase": name,
            "train_loss": train_loss,
            "val_loss": vloss,
            "val_accuracy": acc,
            "lr": optimizer.param_groups[-1]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        result.history.append(row)
        if (acc, -vloss) > (best[0], -best[1]):
            best = (acc, vloss)
            best_state = copy.deepcopy(accelerator.unwrap_model(module).state_dict())
            result.best_epoch, result.best_val_accuracy, result.best_val_loss = row["epoch"], acc, vloss
            since_best = 0
        else:
            since_best += 1
        if progress is not None:
            progress.update(task, advance=1, description=f"{name} val_acc={100 * acc:.1f}%")
        if tc.patience is not None and since_best >= tc.patience:
            break
    result.steps = step
    if best_state is not None:
        accelerator.unwrap_model(module).load_state_dict(best_state)
    return result


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
