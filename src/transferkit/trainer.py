"""The training loop: one phase at a time, top to bottom.

A phase trains `module` (the whole model, or just the head on cached features) on tensors that already
sit on the device: uint8 images, augmented per batch on the device, or float features. Each epoch:
set which groups train, draw the epoch's order, then per batch: learning rate from the schedule,
forward under autocast, loss (+ penalties), backward (in micro-batches with `--accumulate`), clip,
step. Then evaluate on the validation split and keep the best weights (early stopping). No per-step
host synchronisation: the loss and the clipping counter are summed on the device and read once per
epoch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size
from torch import nn

from .config import RunConfig
from .errors import Diverged, ProcessUserError, UserError
from .memory import images_a_pass, in_batches, longest_first, token_lengths
from .model import Group, set_trainable
from .optim import build_param_groups, create_optimizer, set_lr
from .regularizers import Penalty
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
    best: dict  # validation scores of the best epoch: accuracy, macro_f1, loss
    history: list[dict] = field(default_factory=list)
    lr_trace: list[tuple[int, float, float]] = field(default_factory=list)  # (step, head lr, lowest trained group's lr)
    steps: int = 0
    clipped_steps: int = 0
    train_images: int = 0
    local_images: int = 0  # of those, the ones this process forwarded (all of them with one process)
    train_seconds: float = 0.0
    micro_batches: int = 1  # the most forward passes a step took (more than asked after running out of memory, or for images on a CPU)


@torch.no_grad()
def predict_proba(module: nn.Module, x: torch.Tensor, transform: Callable, batch_size: int, autocast, *, log: bool = False) -> torch.Tensor:
    """Class probabilities (log-probabilities with `log`) of `x`, in batches (halved when out of
    memory; images on a CPU at most `memory.CPU_IMAGES_A_PASS` a pass), in eval mode."""

    order = longest_first(x)  # texts: batches of similar lengths pad less; the rows come back in their order
    xs = x if order is None else x[order]

    def one(i: int, j: int) -> torch.Tensor:
        with autocast():
            logits = module(transform(xs[i:j]))
        return logits.float().log_softmax(-1) if log else logits.float().softmax(-1)

    was = module.training
    module.eval()
    out = torch.cat(in_batches(len(x), images_a_pass(x, batch_size), one))
    module.train(was)
    return out if order is None else out[order.argsort()]


def val_scores(proba: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracy, macro-F1 (`metrics.macro_f1`: over the classes that occur) and loss of validation probabilities."""
    from .metrics import macro_f1

    pred = proba.argmax(1)
    loss = F.nll_loss(proba.clamp_min(1e-12).log(), y).item()
    return {"accuracy": (pred == y).float().mean().item(), "macro_f1": macro_f1(y.cpu().numpy(), pred.cpu().numpy()), "loss": loss}


def is_better(new: dict, best: dict | None, metric: str, min_delta: float) -> bool:
    """Improvement by more than min_delta on `metric`. With min_delta 0, an exact tie is broken by
    lower loss (ties are common on small validation splits); with min_delta above 0 only a gain of
    more than it counts, so that ties with a lower loss do not keep resetting --patience."""
    if best is None:
        return True
    if metric == "loss":
        return new["loss"] < best["loss"] - min_delta
    if new[metric] > best[metric] + min_delta:
        return True
    return min_delta == 0 and new[metric] == best[metric] and new["loss"] < best["loss"]


def epoch_order(y: torch.Tensor, sampler: str, gen: torch.Generator) -> torch.Tensor:
    """Indices for one epoch: a permutation, or (balanced) n draws with every class equally likely."""
    n = len(y)
    if sampler == "balanced":
        counts = torch.bincount(y.cpu())
        w = (1.0 / counts.clamp_min(1).double())[y.cpu()]
        return torch.multinomial(w, n, replacement=True, generator=gen)
    return torch.randperm(n, generator=gen)


def group_by_length(order: torch.Tensor, lengths: torch.Tensor, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """`order` rearranged so that each batch of `batch_size` holds texts of similar length, and pads
    less: transformers' `group_by_length` (its LengthGroupedSampler). Consecutive megabatches of
    max(1, min(n // (4 x batch), 50)) batches are each sorted longest first, so a batch's texts still
    come from a random sample of the data; then the full batches are shuffled, the short one (if any)
    kept last, where the epoch's batching expects it."""
    n = len(order)
    size = batch_size * max(1, min(n // (4 * batch_size), 50))
    lens = lengths[order]
    grouped = torch.cat([order[i : i + size][lens[i : i + size].argsort(descending=True, stable=True)] for i in range(0, n, size)])
    full = n // batch_size
    batches = grouped[: full * batch_size].view(full, batch_size)[torch.randperm(full, generator=gen)]
    return torch.cat([batches.reshape(-1), grouped[full * batch_size :]])


def class_weights(y: torch.Tensor, num_classes: int, mode: str) -> torch.Tensor | None:
    if mode != "balanced":
        return None
    counts = torch.bincount(y, minlength=num_classes).float()
    return len(y) / (num_classes * counts.clamp_min(1))


STOP_CHECK_EVERY = 8  # with several processes, the steps between two (collective) stop checks


class StopRequested(Exception):
    """The user asked the run to stop (Ctrl-C, SIGTERM). Raised after a checkpoint was written
    (`checkpointed`), or at once while the data is encoded or features computed, when there is no
    training state to keep yet."""

    def __init__(self, checkpointed: bool = True):
        super().__init__()
        self.checkpointed = checkpointed


def beats_start(history: list[dict], best_moved: bool, initial_loss: float | None) -> bool:
    """Whether a phase's epochs so far beat its starting point (lp_ft: the probe): on the selection
    metric (`best_moved`), or on validation loss, below the lowest before the phase. The loss is the
    steadier signal: on digits, fine-tuning's loss fell below the probe's within two epochs in every
    seed measured, while its accuracy once needed more than three to pass a strong probe; on
    hymenoptera neither ever happened in 8 epochs."""
    return best_moved or (initial_loss is not None and any(r["val_loss"] < initial_loss for r in history))


def run_phase(
    name: str,
    phase: Phase,
    module: nn.Module,
    groups: list[Group],
    data: PhaseData,
    cfg: RunConfig,
    accelerator,
    num_classes: int,
    *,
    model_for_freezing=None,
    always_frozen: set[str] = frozenset(),
    initial_best: dict | None = None,
    initial_loss: float | None = None,
    epoch_offset: int = 0,
    step_offset: int = 0,
    progress=None,
    resume: dict | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    checkpoint_every_s: float | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    micro_batches: int | None = None,
    notify: Callable[[str], None] | None = None,
    l2sp_reference: dict | None = None,
) -> PhaseResult:
    """Train `module` for one phase; on return it holds the best weights seen by the selection metric,
    the starting point included when `initial_best` (its validation scores) is given.
    `initial_loss` is the lowest validation loss before this phase (`phase.give_up_after` reads it).

    `l2sp_reference`: L2-SP's pretrained weights by name (see regularizers.pretrained_reference);
    without it, the weights as the phase starts. `always_frozen` parameters never train, in a probe
    of the head too.

    `on_checkpoint(state)` receives the phase's full state at the end of every epoch (and every
    `checkpoint_every_s` seconds inside long epochs, and when `should_stop()` turns true, after which
    StopRequested is raised); `resume=state` continues from such a state exactly. `on_epoch(row)`
    sees each epoch's history row after validation (a search prunes losing trials from it by raising).
    """
    tc = cfg.train
    device = accelerator.device
    n = len(data.x_train)
    bs = min(tc.batch_size, n)
    # a last batch of 1 would break BatchNorm, and one of fewer than 2 examples a process left some
    # process 1 or none (a tensor_split traceback): either joins the batch before it
    steps_per_epoch = max(1, n // bs if n % bs < 2 * accelerator.num_processes else n // bs + 1)
    total = steps_per_epoch * phase.epochs
    sched = cfg.schedule if phase.kind == "finetune" else _probe_schedule(cfg)

    # With a score to beat (the probe before fine-tuning), the starting weights are returned if no
    # epoch beats them.
    best_state = copy.deepcopy(module.state_dict()) if initial_best is not None else None
    penalty = Penalty(cfg.reg, [(n_, p) for g in groups for n_, p in g.params], w0=l2sp_reference)
    param_groups = build_param_groups(groups, cfg.optim.weight_decay)
    optimizer = create_optimizer(param_groups, cfg.optim, phase.lr)
    world, rank = accelerator.num_processes, accelerator.process_index
    if phase.unfrozen is not None and model_for_freezing is not None:
        # what trains is set before the model is wrapped for several processes (DDP syncs exactly those)
        first = resume["epoch"] if resume is not None else 0
        set_trainable(model_for_freezing, groups, set(phase.unfrozen(first)), bn_stats=phase.bn_stats, always_frozen=always_frozen)
    elif always_frozen:  # a probe trains its groups whole, except what --freeze names
        for g in groups:
            for n_, p in g.params:
                p.requires_grad_(n_ not in always_frozen)
    if always_frozen and not any(p.requires_grad for g in groups for _, p in g.params):  # backward would fail with a RuntimeError
        raise UserError(f"--freeze {','.join(cfg.strategy.freeze)} freezes every parameter that phase {name} would train: "
                        "nothing is left to train; freeze fewer parameters")
    module, optimizer = accelerator.prepare(module, optimizer)
    weights = class_weights(data.y_train, num_classes, tc.class_weight)
    ema = None
    if tc.ema and phase.kind == "finetune":
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(accelerator.unwrap_model(module), decay=tc.ema, use_warmup=True)
    scored = module if ema is None else ema.module  # what is validated, selected and kept

    micro = max(1, micro_batches or tc.accumulate)  # forward passes a step; more after running out of memory
    most = micro  # the most a step used (more for images on a CPU, or after running out of memory)
    gen = torch.Generator().manual_seed(tc.seed + 1000 * epoch_offset)
    lengths = token_lengths(data.x_train) if tc.group_by_length else None  # texts: None for images and features
    lengths = lengths.cpu() if lengths is not None else None
    result = PhaseResult(best_epoch=epoch_offset, best=initial_best or {})
    best = initial_best
    since_best = step = start_epoch = start_batch = 0
    clipped = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    order = None
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        gen.set_state(resume["gen"])
        torch.set_rng_state(resume["torch_rng"])
        best, best_state = resume["best"], resume["best_state"]
        since_best, step, start_epoch, start_batch = resume["since_best"], resume["step"], resume["epoch"], resume["batch"]
        if resume.get("steps_per_epoch", steps_per_epoch) != steps_per_epoch:  # another process count can batch an epoch otherwise
            raise UserError(f"this run was checkpointed at {resume['steps_per_epoch']} steps an epoch and would go on at {steps_per_epoch} "
                            f"(another number of processes splits the last batch otherwise): resume it with the number of processes it ran with")
        clipped += resume["clipped"]
        loss_sum += resume["loss_sum"]
        order = resume["order"] if start_batch else None
        result.history, result.lr_trace = list(resume["history"]), [tuple(t) for t in resume["lr_trace"]]
        result.best_epoch, result.best = resume["best_epoch"], best or {}
        result.train_images, result.train_seconds = resume["train_images"], resume["train_seconds"]
        result.local_images = resume.get("local_images", resume["train_images"])
        micro = max(micro, resume.get("micro", 1))
        if ema is not None:
            ema.module.load_state_dict(resume["ema"])

    def state(epoch: int, batch: int) -> dict:
        return {
            "epoch": epoch, "batch": batch, "step": step, "since_best": since_best, "order": order if batch else None, "steps_per_epoch": steps_per_epoch,
            "optimizer": optimizer.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "best": best, "best_state": best_state, "best_epoch": result.best_epoch, "clipped": clipped.cpu(),
            "loss_sum": loss_sum.cpu(), "history": result.history, "lr_trace": result.lr_trace,
            "train_images": result.train_images, "train_seconds": result.train_seconds, "local_images": result.local_images, "micro": micro,
            **({"ema": ema.module.state_dict()} if ema is not None else {}),
        }

    def gave_up(epochs_done: int) -> bool:
        """`phase.give_up_after` epochs done and none beat the starting point (lp_ft: the probe)."""
        if not phase.give_up_after or initial_best is None or epochs_done < phase.give_up_after:
            return False
        return not beats_start(result.history, result.best_epoch != epoch_offset, initial_loss)

    task = progress.add_task(name, total=phase.epochs, completed=start_epoch) if progress is not None else None
    last_ckpt = time.monotonic()
    for epoch in range(start_epoch, phase.epochs):
        if (tc.patience is not None and since_best >= tc.patience) or gave_up(epoch) or (result.history and result.history[-1].get("diverged")):
            break  # resumed after the early stop (or the divergence) had already ended the phase
        t0 = time.perf_counter()
        module.train()
        if phase.unfrozen is not None and model_for_freezing is not None:
            set_trainable(model_for_freezing, groups, set(phase.unfrozen(epoch)), bn_stats=phase.bn_stats, always_frozen=always_frozen)
        trainable = [p for g in groups for _, p in g.params if p.requires_grad]
        # lr.csv's second rate: the lowest group that trains this epoch (the stem's rate, frozen under partial, said nothing)
        low = next((i for i, g in enumerate(optimizer.param_groups) if any(p.requires_grad for p in g["params"])), 0)
        # images on a CPU train faster in small passes (memory.CPU_IMAGES_A_PASS); the step stays the
        # same only while no BatchNorm layer normalises with its batch's statistics, so only then
        bn_trains = any(m.training for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
        per_pass = None if bn_trains else images_a_pass(data.x_train, len(data.x_train))
        if order is None:
            order = epoch_order(data.y_train, tc.sampler, gen)
            if lengths is not None:
                order = group_by_length(order, lengths, bs, gen)
            loss_sum.zero_()
        for b in range(start_batch, steps_per_epoch):
            idx = order[b * bs : (b + 1) * bs] if b < steps_per_epoch - 1 else order[b * bs :]
            idx_dev = idx.to(device, non_blocking=True)
            x = data.train_transform(data.x_train[idx_dev], gen)
            y = data.y_train[idx_dev]
            if world > 1:  # this process's share of the global batch, augmented as one batch: the same draws as one process
                x, y = x[rank::world], y[rank::world]
            set_lr(optimizer, phase.lr, lr_factor(sched, step, total, steps_per_epoch))
            parts = max(micro, -(-len(y) // per_pass)) if per_pass else micro
            step_loss, used = gradients_in_memory(
                accelerator, optimizer, module, x, y, parts, weights=weights, label_smoothing=tc.label_smoothing, penalty=penalty,
                batch_size=tc.batch_size, notify=notify,
            )
            if used > parts:  # ran out of memory: more from now on
                micro = used
            most = max(most, used)
            loss_sum += step_loss
            clipped += _clip(accelerator, trainable, cfg)
            optimizer.step()
            if ema is not None:
                ema.update(accelerator.unwrap_model(module), step=step)
            result.lr_trace.append((step_offset + step, optimizer.param_groups[-1]["lr"], optimizer.param_groups[low]["lr"]))
            step += 1
            result.train_images += len(idx)
            result.local_images += len(y)
            # several processes ask together (should_stop is then a collective: fit's) every few steps,
            # not every step, to keep the hot loop free of host synchronisation
            if b + 1 < steps_per_epoch and (world == 1 or (b + 1) % STOP_CHECK_EVERY == 0):
                stop = should_stop()
                if on_checkpoint is None:
                    if stop:  # a fit without a run directory (a --baseline comparison's): nothing to keep
                        raise StopRequested(checkpointed=False)
                elif stop or (checkpoint_every_s is not None and time.monotonic() - last_ckpt > checkpoint_every_s):
                    result.train_seconds += time.perf_counter() - t0
                    on_checkpoint(state(epoch, b + 1))
                    t0, last_ckpt = time.perf_counter(), time.monotonic()
                    if stop:
                        raise StopRequested
        start_batch, order = 0, None
        train_loss = ((accelerator.reduce(loss_sum, "sum") if world > 1 else loss_sum) / n).item()
        result.train_seconds += time.perf_counter() - t0
        proba = predict_proba(scored, data.x_val, data.eval_transform, tc.eval_batch_size, accelerator.autocast)
        scores = val_scores(proba, data.y_val)
        row = {
            "epoch": epoch_offset + epoch + 1, "phase": name, "train_loss": train_loss, "val_loss": scores["loss"],
            "val_accuracy": scores["accuracy"], "val_macro_f1": scores["macro_f1"], "lr": optimizer.param_groups[-1]["lr"],
            "trainable_groups": len({g.name for g in groups if any(p.requires_grad for _, p in g.params)}),
            "seconds": time.perf_counter() - t0,
        }
        # a loss that is NaN or infinite: the weights have diverged (a far too high --lr), and no later
        # epoch of this phase comes back from it; such an epoch is never the best one
        diverged = not (math.isfinite(train_loss) and math.isfinite(scores["loss"]))
        if diverged:
            row["diverged"] = True
        result.history.append(row)
        if not diverged and is_better(scores, best, tc.metric, tc.min_delta):
            best = scores
            best_state = copy.deepcopy(accelerator.unwrap_model(scored).state_dict())
            result.best_epoch, result.best = row["epoch"], scores
            since_best = 0
        else:
            since_best += 1
        if progress is not None:
            progress.update(task, advance=1, description=f"{name} val_acc={100 * scores['accuracy']:.1f}%")
        if on_epoch is not None:
            on_epoch(row)
        if phase.kind == "finetune":
            if on_checkpoint is not None:
                on_checkpoint(state(epoch + 1, 0))
                last_ckpt = time.monotonic()
            if epoch + 1 < phase.epochs and should_stop():
                raise StopRequested(checkpointed=on_checkpoint is not None)
        if (tc.patience is not None and since_best >= tc.patience) or gave_up(epoch + 1) or diverged:
            break
    if best_state is None and result.history and result.history[-1].get("diverged"):
        row = result.history[-1]
        raise Diverged(
            f"training diverged in phase {name}: epoch {row['epoch']}'s loss is {row['train_loss']:.3g} (validation {row['val_loss']:.3g}) at a "
            f"learning rate of {phase.lr:.3g}, and no epoch before it had a finite one to keep: lower --lr (try {phase.lr / 100:g}), "
            "or clip the gradients (--clip-norm 1)")
    result.steps = step
    result.micro_batches = most
    result.clipped_steps = int(clipped.item())
    if best_state is not None:
        accelerator.unwrap_model(module).load_state_dict(best_state)
    # `prepare` wrapped the module's forward in the mixed-precision autocast; take that off again, so
    # that the fitted model computes as the same model loaded from its run directory does
    accelerator.unwrap_model(module, keep_fp32_wrapper=False)
    return result


def class_weighted_cross_entropy(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy with each example weighted by its true class's weight (PyTorch's weighted mean),
    and label smoothing toward the uniform distribution, unweighted. PyTorch's `weight=` also weighs the
    smoothing term class by class, which pulls every example toward the heavily weighted class: with
    --class-weight balanced and the default smoothing 0.1, a linear probe on 440 ham / 60 spam SMS said
    spam for 12% of ham (spam precision 0.52; 0.85 without smoothing). Without smoothing the two agree."""
    if weights is None:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    w = weights[y]
    return (F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing) * w).sum() / w.sum()


def accumulate_gradients(accelerator, module: nn.Module, x: torch.Tensor, y: torch.Tensor, parts: int, *, weights: torch.Tensor | None = None,
                         label_smoothing: float = 0.0, penalty: Callable[[], torch.Tensor | None] | None = None) -> torch.Tensor:
    """Gradients of one step's loss, forwarded in `parts` micro-batches (gradient accumulation). Each
    part's mean loss counts by its share of the batch (by class weight when there are class weights)
    and the penalty once, so the summed gradients are those of the whole batch (up to float rounding:
    other sums in another order): only memory changes.
    (BatchNorm layers whose statistics train see the smaller batches; with frozen statistics, lp_ft's
    default, the step is the same.) Several processes synchronise gradients on the last part only
    (`no_sync`). Adds to the parameters' gradients; returns the batch's loss x its examples, on the
    device, as one forward would."""
    whole = weights[y].sum() if weights is not None else len(y)
    seen = torch.zeros((), device=y.device)
    xs, ys = x.tensor_split(min(parts, len(y))), y.tensor_split(min(parts, len(y)))
    for j, (xc, yc) in enumerate(zip(xs, ys)):
        with accelerator.no_sync(module) if j < len(xs) - 1 else contextlib.nullcontext():
            with accelerator.autocast():
                logits = module(xc)
                loss = class_weighted_cross_entropy(logits.float(), yc, weights, label_smoothing)
                part = loss if len(xs) == 1 else loss * ((weights[yc].sum() if weights is not None else len(yc)) / whole)
                extra = penalty() if penalty is not None and j == 0 else None
                total_loss = part + extra if extra is not None else part
            accelerator.backward(total_loss)
        seen += part.detach() * len(y)
    return seen


def gradients_in_memory(accelerator, optimizer, module: nn.Module, x: torch.Tensor, y: torch.Tensor, parts: int, *, batch_size: int,
                        notify: Callable[[str], None] | None = None, **loss) -> tuple[torch.Tensor, int]:
    """`accumulate_gradients`; a step that runs out of memory is tried again at once in twice as many
    micro-batches (the same step). Returns the loss x examples and the parts used."""
    while True:
        optimizer.zero_grad(set_to_none=True)
        try:
            return accumulate_gradients(accelerator, module, x, y, parts, **loss), parts
        except RuntimeError as e:
            if not should_reduce_batch_size(e):  # accelerate's test: CUDA, MPS, XPU or CPU allocator out of memory
                raise
        # out of the `except`, so that its traceback (and the activations it holds) can be freed
        optimizer.zero_grad(set_to_none=True)
        clear_device_cache(garbage_collection=True)
        n, world = len(y), accelerator.num_processes
        if world > 1:  # every process must split alike; one that ran out cannot tell the others
            raise ProcessUserError(f"out of memory at {-(-n // parts)} examples a forward pass in each of {world} processes: "
                            f"--accumulate {2 * parts} forwards each step in {2 * parts} micro-batches (the same steps in less memory)")
        if parts >= n:
            raise UserError(f"out of memory even at 1 example a forward pass (--batch-size {batch_size}): use a smaller "
                            "--input-size or --max-length, a smaller model, or bf16 (--precision bf16) where it is not on yet")
        before, parts = parts, min(2 * parts, n)
        if notify is not None:
            notify(f"out of memory at {-(-n // before)} examples a forward pass: each step now runs in {parts} micro-batches "
                   f"of at most {-(-n // parts)} (gradient accumulation: the same optimizer steps)")


def _probe_schedule(cfg: RunConfig):
    """The probe on cached features uses a plain cosine without warmup: it is a convex-ish problem on
    fixed inputs, and the user's fine-tuning schedule (step sizes in epochs) does not fit 100 epochs."""
    from .config import ScheduleConfig

    return ScheduleConfig(name="cosine", warmup_epochs=0.0)


def _clip(accelerator, params: list[torch.Tensor], cfg: RunConfig) -> torch.Tensor:
    """Clip by value and/or global norm; returns 1 (on the device) when clipping changed anything."""
    fired = torch.zeros((), device=accelerator.device)
    oc = cfg.optim
    if oc.clip_value is None and oc.clip_norm is None:
        return fired
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return fired
    accelerator.unscale_gradients()  # no-op unless fp16 loss scaling is on; then clip true gradients
    if oc.clip_value is not None:
        peak = torch.stack(torch._foreach_norm(grads, math.inf)).max()
        fired = torch.maximum(fired, (peak > oc.clip_value).float())
        torch.nn.utils.clip_grad_value_(params, oc.clip_value)
    if oc.clip_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, oc.clip_norm)
        fired = torch.maximum(fired, (norm > oc.clip_norm).float())
    return fired


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
