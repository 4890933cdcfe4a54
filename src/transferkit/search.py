"""`search`: hyperparameter search by k-fold cross-validation of the training split, around `fit`.

    result = search(replace(RunConfig(), data="photos/", model="efficientnet_lite0"), "runs/search", trials=30)

Every trial samples one configuration from the search space (Optuna's TPE sampler) and scores it as
the mean validation metric over stratified k folds of the TRAINING split (each fold: `fit` on k-1
parts, evaluated on the held-out part). The validation / test split is never seen during the search;
it is used once, at the end, when the best configuration is refitted on the whole training split
(`fit(best, DIR/final)`: a normal run directory). Losing trials stop early: every epoch's score is
reported to a median pruner. A time budget ends the search cleanly between folds.

The study lives in a database (an SQLite file in DIR unless `storage` names another, for example a
PostgreSQL server that many workers share, each with its own DIR), so a killed search continues where
it stopped when it is run again with the same DIR; trials left RUNNING by a dead worker are marked
FAIL (at once when the worker ran on this machine, after the heartbeat's grace period otherwise).
A trial that was interrupted (Ctrl-C, SIGTERM, a dead worker) rather than failed by an error runs
again once, with the same configuration, keeping the folds it had finished (they are deterministic).
Finished trials (complete or pruned) count toward `trials`, across workers; a worker whose last
trials run elsewhere waits for them. The time budget covers the search, not the final refit.
With `lr_find`, a learning-rate range test on the training split (`lr_find.py`) centres the lr range
on its suggestion s: [s/10, min(10 s, 1)], log-uniform; the first worker's result is shared with the others.

The search space (`--space FILE.yaml`) maps flat setting names (those of `transferkit fit`, dashes or
underscores) to one of:

    lr: {low: 1.0e-5, high: 1.0e-2, log: true}   # a range: floats, or ints for integer settings;
    epochs: {low: 2, high: 10, step: 2}           #   log: sample log-uniformly; step: a grid
    strategy: {choices: [linear_probe, lp_ft]}    # a list of values
    batch_size: {choices: [16, 32]}
    label_smoothing: 0.1                          # a fixed value

Keys in the file replace the same keys of the default space (`DEFAULT_SPACE`, plus batch sizes that
fit the folds and the memory); the other defaults stay. Give a fixed value to stop searching one of
them. Settings given as flags (`--epochs 3`) or set in the --config file are fixed as well. Settings that only matter to some
strategies (epochs, layer_decay, crop_scale_min for fine-tuning; lp_epochs for the probe; k,
unfreeze_every, ft_lr_scale for their strategy) are sampled only in trials that use them.

DIR holds: search.json (what was searched: data, model, space; a different search in the same DIR
is refused), study.db, trials.csv (every trial: number, state, fold scores, mean, params, duration),
best.yaml (the best configuration, accepted by `transferkit fit --config`), final/ (the refit run),
history.png, lr.png, importance.png and summary.json.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from . import report
from .config import FLAT, RunConfig, absolute_model_name, flat_value, load_config_file, replace
from .rundir import process_alive
from .data import DataSplits
from .inputs import load_splits
from .errors import Diverged, UserError, did_you_mean
from .fit import fit
from .rundir import RunDir, atomic_write_bytes, is_complete
from .strategies import BACKPROP, SETTING_OF, TRAINS_BACKBONE, USED_ONLY_BY

METRICS = ("accuracy", "macro_f1")

# The default search space. `batch_size` is filled in from the data (powers of two that fit).
DEFAULT_SPACE: dict[str, Any] = {
    "strategy": {"choices": ["linear_probe", "lp_ft", "full", "partial", "gradual"]},
    "lr": {"low": 1e-5, "high": 3e-2, "log": True},
    "weight_decay": {"low": 1e-6, "high": 0.1, "log": True},
    "layer_decay": {"low": 0.5, "high": 1.0},
    "epochs": {"low": 3, "high": 15},
    "patience": 5,  # early stopping inside every fit (every phase)
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "crop_scale_min": {"low": 0.08, "high": 1.0},
}
# Text: no image augmentation to search (crop_scale_min), LoRA among the strategies, the rates of
# transformer encoders (transferkit's defaults: 1e-4 whole, 1e-3 heads and adapters) and fewer epochs.
TEXT_SPACE: dict[str, Any] = {
    **{k: v for k, v in DEFAULT_SPACE.items() if k != "crop_scale_min"},
    "strategy": {"choices": ["linear_probe", "lp_ft", "lora", "full", "partial"]},
    "lr": {"low": 1e-5, "high": 3e-3, "log": True},
    "epochs": {"low": 2, "high": 8},
}
BATCH_SIZES = (8, 16, 32, 64, 128)

# Settings that are not hyperparameters: they come from flags, never from the space.
NOT_IN_SPACE = {"data": "--data", "model": "--model", "arch": "--arch", "seed": "--seed", "metric": "--metric", "val_fraction": "--val-fraction"}

# Settings that matter only to some strategies: sampled only in trials of those strategies.
ONLY_FOR = USED_ONLY_BY

STEP_STRIDE = 100_000  # pruner steps: fold * STEP_STRIDE + fine-tuning epoch (0: the probe), so every epoch of every fold has its own step
HEARTBEAT_S = int(os.environ.get("TRANSFERKIT_SEARCH_HEARTBEAT", "60"))  # seconds between a running trial's heartbeats
POLL_S = 1.0  # how often a worker looks again while other workers finish the last trials


# ------------------------------------------------------------------------------------------ space


@dataclass
class Dim:
    """One setting of the space: a range (low..high, optionally log or stepped), choices, or fixed."""

    name: str
    kind: str  # "range" | "choices" | "fixed"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list | None = None
    value: Any = None

    def suggest(self, trial):
        if self.kind == "choices":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "range":
            if _field_type(self.name) == "int":
                return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
            return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        return self.value

    def to_dict(self):
        if self.kind == "fixed":
            return self.value
        if self.kind == "choices":
            return {"choices": list(self.choices)}
        d = {"low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            d["step"] = self.step
        return d

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.value!r}"
        if self.kind == "choices":
            return "one of " + ", ".join(str(c) for c in self.choices)
        extra = " (log)" if self.log else f" (step {self.step:g})" if self.step else ""
        return f"{self.low:g} .. {self.high:g}{extra}"


def _field_type(name: str) -> str:
    """The declared type of a flat setting, without `| None`: int, float, bool, str, list[float], ..."""
    section, fname = FLAT[name].split(".")
    sec = next(f for f in fields(RunConfig) if f.name == section)
    ftype = {f.name: f.type for f in fields(sec.default_factory)}[fname]  # type: ignore[misc]
    return str(ftype).replace(" | None", "")


def load_space_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():  # (exists, not is_file: `--space <(...)` is a pipe)
        raise UserError(f"search space file not found: {p}")
    if p.is_dir():
        raise UserError(f"--space {p} is a folder: give a YAML file")
    try:
        d = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"cannot parse {p} as YAML: {str(e).splitlines()[0]}") from None
    if d is None or d == {}:
        raise UserError(f"{p} is empty: give the settings to search (e.g. `lr: {{low: 1.0e-5, high: 1.0e-2, log: true}}`), or leave out --space for the default space")
    if not isinstance(d, dict):
        raise UserError(f"{p} must map setting names to ranges, choices or values, got a {type(d).__name__}")
    return d


def parse_space(d: dict, *, where: str = "search space") -> dict[str, Dim]:
    """YAML mapping -> {flat name: Dim}; checks the form, not the values (see `check_space`)."""
    out: dict[str, Dim] = {}
    for key, spec in d.items():
        name = str(key).replace("-", "_")
        if name in NOT_IN_SPACE:
            raise UserError(f"{where}: {name} is not a hyperparameter; give it as {NOT_IN_SPACE[name]}")
        if name not in FLAT:
            raise UserError(f"{where}: unknown setting {key!r}{did_you_mean(name, FLAT)}")
        out[name] = _parse_dim(name, spec, where)
    return out


def _parse_dim(name: str, spec, where: str) -> Dim:
    if not isinstance(spec, dict):
        return Dim(name, "fixed", value=spec)
    unknown = set(spec) - {"low", "high", "log", "step", "choices"}
    if unknown:
        bad = sorted(map(str, unknown))[0]
        raise UserError(f"{where}: {name}: unknown key {bad!r}{did_you_mean(bad, ['low', 'high', 'log', 'step', 'choices'])}; use low/high[/log/step] or choices")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise UserError(f"{where}: {name}: give either choices or low/high, not both")
        ch = spec["choices"]
        if not isinstance(ch, list) or not ch:
            raise UserError(f"{where}: {name}: choices must be a non-empty list, got {ch!r}")
        if any(isinstance(c, (list, dict)) for c in ch):
            raise UserError(f"{where}: {name}: choices must be plain values (numbers, words, true/false)")
        if len(set(map(repr, ch))) != len(ch):
            raise UserError(f"{where}: {name}: choices repeat a value: {ch}")
        if len(ch) == 1:  # one choice is a fixed value (it was sampled as a search: trials all alike, lr-find of another strategy)
            return Dim(name, "fixed", value=ch[0])
        return Dim(name, "choices", choices=list(ch))
    if "low" not in spec or "high" not in spec:
        raise UserError(f"{where}: {name}: a range needs both low and high, got {spec}")
    typ = _field_type(name)
    if typ not in ("int", "float"):
        raise UserError(f"{where}: {name} is a {typ} setting: give choices or a fixed value, not a range")
    conv = int if typ == "int" else float

    def num(v, what):
        try:
            x = float(v)  # YAML reads 1e-5 (no dot) as a string
        except (TypeError, ValueError):
            raise UserError(f"{where}: {name}: {what} must be a number, got {v!r}") from None
        if not math.isfinite(x) or (conv is int and not x.is_integer()):
            raise UserError(f"{where}: {name}: {what} must be {'an integer' if conv is int else 'a finite number'}, got {v!r}")
        return conv(x)

    low, high = num(spec["low"], "low"), num(spec["high"], "high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: {name}: log must be true or false, got {log!r}")
    step = num(spec["step"], "step") if spec.get("step") is not None else None
    if low > high:
        raise UserError(f"{where}: {name}: low ({low:g}) is above high ({high:g})")
    if log and low <= 0:
        raise UserError(f"{where}: {name}: a log range needs low > 0, got {low:g}")
    if step is not None and (step <= 0 or log):
        raise UserError(f"{where}: {name}: step must be > 0 and cannot be combined with log")
    if step is not None and abs((high - low) / step - round((high - low) / step)) > 1e-9:  # Optuna lowered high with a raw warning a trial
        top = low + math.floor((high - low) / step + 1e-9) * step
        raise UserError(f"{where}: {name}: step {step:g} does not divide high - low ({high:g} - {low:g}): the highest value reached would be "
                        f"{top:g}; give high {top:g} or {top + step:g}")
    if low == high:  # one value: fixed, not searched
        return Dim(name, "fixed", value=low)
    return Dim(name, "range", low=low, high=high, log=log, step=step)


def check_space(space: dict[str, Dim], base: RunConfig, *, where: str = "search space") -> None:
    """Every value the space can produce must make a valid configuration; something must be searched."""
    for dim in space.values():
        values = [dim.value] if dim.kind == "fixed" else dim.choices if dim.kind == "choices" else [dim.low, dim.high]
        for v in values:
            try:
                replace(base, **{dim.name: v}).validate()
            except UserError as e:
                what = {"fixed": "value", "choices": "choice", "range": "bound"}[dim.kind]
                raise UserError(f"{where}: {dim.name} {what} {v!r}: {e}") from None
    strategies = _values(space, "strategy", base.strategy.name)
    if not sampled_settings(space, base):  # momentum searched for adamw alone: every trial would be the same
        unread = sorted(d.name for d in space.values() if d.kind != "fixed")
        raise UserError(f"{where}: nothing to search: every setting that {', '.join(strategies)} uses is fixed"
                        + (f", and no trial reads {', '.join(unread)} (their strategy, optimizer, schedule or head is not one that uses them)" if unread else "")
                        + " (run `transferkit fit` for one configuration)")


def _values(space: dict[str, Dim], name: str, default) -> list:
    d = space.get(name)
    return [default] if d is None else [d.value] if d.kind == "fixed" else list(d.choices)


def _reads(name: str, chosen: dict) -> bool:
    """Whether a trial whose strategy, optimizer, schedule and head are `chosen` reads setting `name`
    (a chooser the strategy does not read is absent from `chosen`)."""
    strategy = chosen["strategy"]
    if strategy not in ONLY_FOR.get(name, (strategy,)):
        return False
    kind, users = SETTING_OF.get(name, (None, ()))
    if kind is not None and (kind not in chosen or (chosen[kind] is not None and chosen[kind] not in users)):
        return False  # (kind not in chosen: a schedule's setting, and the strategy trains no epochs on a schedule)
    return not (name == "head_hidden" and chosen.get("head") not in (None, "mlp"))


def sampled_settings(space: dict[str, Dim], base: RunConfig) -> set[str]:
    """The settings of the space that some trial samples: every combination of the choosers' values
    (strategy, optimizer, schedule, head) is tried, as `sample` would meet it."""
    import itertools

    out: set[str] = set()
    choosers = {"optimizer": base.optim.name, "schedule": base.schedule.name, "head": base.model.head}
    for strategy in _values(space, "strategy", base.strategy.name):
        names = [n for n in choosers if strategy in ONLY_FOR.get(n, (strategy,))]
        for combo in itertools.product(*(_values(space, n, choosers[n]) for n in names)):
            chosen = {"strategy": strategy, **dict(zip(names, combo))}
            out |= {n for n, d in space.items() if d.kind != "fixed" and (n in chosen or _reads(n, chosen))}
    return out


def resolve_space(user: dict | None, base: RunConfig, *, fixed: set[str] = frozenset(), batch_sizes: list[int] | None = None, lr_center: float | None = None) -> dict[str, Dim]:
    """Default space (TEXT_SPACE for a text model), minus settings fixed by flags, with the user's file laid over it."""
    from .inputs import modality_of

    d = dict(TEXT_SPACE if modality_of(base.model.name) == "text" else DEFAULT_SPACE)
    if batch_sizes:
        d["batch_size"] = {"choices": list(batch_sizes)}
    for name in fixed:
        d.pop(name, None)
    space = parse_space(d, where="default search space")
    if user:
        mine = parse_space(user, where="--space")
        both = sorted(set(mine) & set(fixed))
        if both:
            raise UserError(f"--space names {', '.join(both)}, also given as flag(s) {', '.join('--' + n.replace('_', '-') for n in both)} "
                            "or in the --config file: give each setting in one place")
        space.update(mine)
    if lr_center is not None:
        if user and "lr" in {str(k).replace("-", "_") for k in user}:
            raise UserError("--lr-find centres the learning-rate range itself: leave lr out of --space, or drop --lr-find")
        if "lr" in fixed:
            raise UserError("--lr-find centres the learning-rate range, but --lr fixes the learning rate; give one or the other")
        space["lr"] = Dim("lr", "range", low=float(f"{lr_center / 10:.3g}"), high=float(f"{min(lr_center * 10, 1.0):.3g}"), log=True)
    check_space(space, base)
    return space


def sample(trial, space: dict[str, Dim], base_strategy: str, base: RunConfig | None = None) -> dict:
    """The trial's settings: the strategy first, then the optimizer, schedule and head it uses, then
    what those read. A setting the trial's optimizer, schedule or head does not read (momentum for
    adamw, head_hidden for a linear head) is not sampled: it was, and trials.csv and best.yaml showed
    a momentum for an adamw trial. `base` gives the choosers' values where the space leaves them out."""
    params: dict[str, Any] = {}

    def value(name: str, default):
        d = space.get(name)
        if d is None:
            return default
        if d.kind == "fixed":
            return d.value
        params[name] = d.suggest(trial)
        return params[name]

    strategy = value("strategy", base_strategy)
    chosen = {"strategy": strategy}
    for name, default in (("optimizer", base and base.optim.name), ("schedule", base and base.schedule.name), ("head", base and base.model.head)):
        if strategy in ONLY_FOR.get(name, (strategy,)):
            chosen[name] = value(name, default)
    for name, dim in space.items():
        if name not in chosen and dim.kind != "fixed" and _reads(name, chosen):
            params[name] = dim.suggest(trial)
    return params


def trial_config(base: RunConfig, space: dict[str, Dim], params: dict) -> RunConfig:
    fixed = {n: d.value for n, d in space.items() if d.kind == "fixed"}
    return replace(base, **{**fixed, **params}).validate()


# ------------------------------------------------------------------------------------------ folds


def stratified_folds(labels: np.ndarray, classes: list[str], k: int, seed: int, *, keys: list | None = None,
                     unit: str = "images") -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, held-out indices) of k stratified folds of `labels` (scikit-learn, seeded).
    `keys`: each example's content fingerprint; where two examples share one (a copy), the copies are
    kept on one side of every fold (StratifiedGroupKFold). Split by position, a copy on both sides
    scored a fold on an example it trained on: 100 texts each listed twice with random labels gave a
    cross-validated accuracy of 0.77 against 0.52 on the held-out split. Without copies the folds are
    StratifiedKFold's, as they always were."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if k < 2:
        raise UserError(f"--folds must be at least 2, got {k}")
    one = unit[:-1]
    counts = np.bincount(labels, minlength=len(classes))
    if counts.min() < k:
        i = int(counts.argmin())
        hint = f"use --folds {int(counts.min())} or fewer" if counts.min() >= 2 else f"add {unit} to it (cross-validation needs 2 or more per class)"
        raise UserError(
            f"class {classes[i]!r} has only {int(counts[i])} training {one}(s), fewer than --folds {k}: "
            f"every fold must hold out at least one {one} of each class; {hint}"
        )
    groups = _copy_groups(keys) if keys is not None else None
    if groups is None:
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return [(np.sort(tr), np.sort(va)) for tr, va in skf.split(np.zeros(len(labels)), labels)]
    distinct = np.array([len(set(groups[labels == c])) for c in range(len(classes))])
    if distinct.min() < k:
        i = int(distinct.argmin())
        raise UserError(
            f"class {classes[i]!r} has {int(counts[i])} training {unit} but only {int(distinct[i])} different ones (the others are copies, "
            f"kept together in one fold), fewer than --folds {k}: use --folds {max(2, int(distinct.min()))} or fewer, or give more {unit}"
        )
    sgk = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = [(np.sort(tr), np.sort(va)) for tr, va in sgk.split(np.zeros(len(labels)), labels, groups)]
    for tr, va in folds:  # copies of one content with different labels can leave a side without a class
        for side in (tr, va):
            absent = sorted(set(range(len(classes))) - set(labels[side].tolist()))
            if absent:
                raise UserError(f"with copies kept together, a fold of --folds {k} has no {unit} of class {classes[absent[0]]!r} on one side "
                                f"(copies of the same content carry different labels here): use fewer --folds, or give more {unit}")
    return folds


def _copy_groups(keys: list) -> np.ndarray | None:
    """A group number per example, copies (the same fingerprint) sharing one; None when there are no
    copies. An example whose fingerprint is unknown (an unreadable file) is its own group."""
    ids: dict = {}
    groups = np.array([ids.setdefault(key, len(ids)) if key is not None else -1 - i for i, key in enumerate(keys)])
    return groups if len(set(groups.tolist())) < len(keys) else None


def fold_splits(splits: DataSplits, train_idx, val_idx, i: int, k: int) -> DataSplits:
    """A fold as DataSplits: both sides come from the training split; the real val/test stay out."""
    return DataSplits(
        splits.train.subset(train_idx), splits.train.subset(val_idx), None, splits.classes,
        f"{splits.source} (fold {i + 1} of {k} of the training split)", val_given=False, flip_ok=splits.flip_ok,
    )


def batch_sizes_that_fit(cfg: RunConfig, n_train: int, num_classes: int) -> list[int]:
    """Powers of two up to the smallest fold's training size; on a GPU, only those whose forward and
    backward pass of the whole model fits in its memory."""
    fit_data = [b for b in BATCH_SIZES if b <= n_train] or [1 << max(0, int(math.log2(max(1, n_train))))]
    import torch

    from .inputs import modality_of

    if cfg.train.cpu or not torch.cuda.is_available() or modality_of(cfg.model.name) == "text":
        return fit_data
    from .inputs import ImageInputs
    from .fit import resolve_precision
    from .model import create_model

    model = create_model(cfg.model, num_classes, pretrained=False).cuda().train()
    size = ImageInputs(cfg, model.backbone).size
    bf16 = resolve_precision(cfg.train.precision) == "bf16" and torch.cuda.is_bf16_supported()  # as fit trains
    ok = []
    for b in fit_data:
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = model(torch.randn(b, 3, size, size, device="cuda")).float().logsumexp(-1).mean()
            loss.backward()
            ok.append(b)
        except torch.OutOfMemoryError:
            break
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    del model
    torch.cuda.empty_cache()
    if not ok:
        raise UserError(f"not even a batch of {fit_data[0]} fits in GPU memory with {cfg.model.name}; choose a smaller model or --input-size")
    return ok


# --------------------------------------------------------------------------------------- storage


def redact(url: str) -> str:
    """The URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def _with_driver(url: str) -> str:
    """`postgresql://` names no driver, and SQLAlchemy 2.1 then wants psycopg 3: use psycopg2 when that
    is the one installed (psycopg2-binary is transferkit's PostgreSQL driver)."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") and not importlib.util.find_spec("psycopg"):
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def open_storage(url: str, *, heartbeat_s: int = HEARTBEAT_S):
    """An Optuna RDB storage; an unreachable or malformed URL is an error, never a silent fallback."""
    import optuna

    shown, url = redact(url), _with_driver(url)
    kw: dict = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        kw["connect_args"] = {"connect_timeout": 10}
    elif url.startswith("sqlite"):
        kw["connect_args"] = {"timeout": 60}  # the heartbeat thread writes beside the trial
    try:
        for attempt in range(6):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, engine_kwargs=kw, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s)
            except Exception as e:
                # Workers that start together on a fresh database race to create its tables; the loser
                # sees "already exists" / "duplicate key" and finds them there on the next try.
                text = str(e).lower()
                if attempt == 5 or not ("already exists" in text or "duplicate key" in text):
                    raise
                time.sleep(0.2 + np.random.default_rng().random())
    except ImportError as e:  # optuna wraps the driver's ModuleNotFoundError
        name = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "?"
        hint = " (pip install psycopg2-binary)" if "psycopg" in name else ""
        raise UserError(f"the database driver for {shown} is not installed: no module {name}{hint}") from None
    except Exception as e:  # sqlalchemy / driver errors: unreachable server, bad URL, wrong password
        msg = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise UserError(f"cannot use the study database {shown}: {msg[0] if msg else type(e).__name__}. Check that the server is running and the URL is right") from None


WORKER = f"{socket.gethostname()}:{os.getpid()}"


def fail_dead_trials(study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone: at once for workers on this machine (their
    process no longer exists), by Optuna's heartbeat for the others. Returns the numbers marked here."""
    import optuna
    from optuna.trial import TrialState

    host, marked = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        h, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if h == host and pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            marked.append(t.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return marked


def requeue_interrupted(study, trials: int) -> list[tuple[int, int]]:
    """Enqueue again, once, every trial that was stopped rather than failed: FAIL without an `error`
    (Ctrl-C, SIGTERM, a dead worker), with sampled params. The new trial has the same params and the
    fold scores the old one had finished (`continues`, `fold_scores`); the objective carries those folds
    over. Only while fewer than `trials` are finished or running. Returns (old number, folds carried)."""
    from optuna.trial import TrialState

    ts = study.get_trials(deepcopy=False)
    taken = {t.user_attrs.get("continues") for t in ts}
    done, running = _counts(study)
    free = trials - done - running - sum(t.state == TrialState.WAITING for t in ts)
    queued = []
    for t in ts:
        if free <= 0:
            break
        if t.state != TrialState.FAIL or "error" in t.user_attrs or "surplus" in t.user_attrs.get("note", "") or not t.params or t.number in taken:
            continue
        carried = list(t.user_attrs.get("fold_scores", []))
        study.enqueue_trial(t.params, user_attrs={"continues": t.number, "fold_scores": carried})
        queued.append((t.number, len(carried)))
        free -= 1
    return queued


def _counts(study) -> tuple[int, int]:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states), sum(s == TrialState.RUNNING for s in states)


class RefitInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during the final refit, after every trial finished."""


class _BudgetStop(Exception):
    """The time budget ran out between two folds of a trial: it is recorded as stopped (FAIL without
    an error) and runs again, its finished folds carried over, when the search continues."""


class _Surplus(Exception):
    """Another worker took the last trial slot in the same instant: this trial does not run."""


# ------------------------------------------------------------------------------------------ search


@dataclass
class SearchResult:
    out: Path
    study_name: str
    best_number: int
    best_value: float
    best_params: dict
    best_config: RunConfig
    fold_scores: list[float]
    final_metrics: dict
    states: dict[str, int] = field(default_factory=dict)
    stopped_by: str = "trials"  # "trials" | "time budget"


def _normalise_paths(cfg: RunConfig) -> RunConfig:
    """Absolute data and checkpoint paths, so best.yaml works from any directory."""
    flat = {}
    if cfg.data.path.split(":")[0] != "digits" and Path(cfg.data.path).exists():
        flat["data"] = str(Path(cfg.data.path).resolve())
    if absolute_model_name(cfg.model.name) != cfg.model.name:  # file:, dir: and run: (only file: was)
        flat["model"] = absolute_model_name(cfg.model.name)
    return replace(cfg, **flat)


def search(
    base: RunConfig, out: str | Path, *, space: dict | None = None, trials: int = 20, folds: int = 5, time_budget: float | None = None,
    storage: str | None = None, study_name: str | None = None, metric: str = "accuracy", lr_find: bool = False,
    fixed: set[str] | frozenset | None = None, console=None,
) -> SearchResult:
    """Search `space` (a mapping as in a --space file; None: the default space) around `base`, write
    DIR (`out`), refit the best configuration and return what was found. `fixed` names settings that
    were given explicitly (flags): they leave the default space; None: those `base` changes from the
    defaults, as the command line takes a --config file's (in Python, strategy='linear_probe', lr=0.01
    in `base` were searched over in silence). The time budget covers the search (lr-find and trials);
    the final refit comes after it."""
    import optuna

    if fixed is None:
        from .config import changed_settings, default_lr
        from .inputs import modality_of

        fixed = set(changed_settings(base)) - {"data", "model", "arch", "seed", "metric"}  # as the command line leaves them
        fixed -= {str(k).replace("-", "_") for k in (space or {})}  # what `space` names, it searches (or sets)
        if base.optim.lr is not None and base.optim.lr == default_lr(modality_of(base.model.name), base.strategy.name):
            fixed.discard("lr")  # a run's config.yaml records the default rate it resolved: no one chose it

    con = console or report.console()
    t_start = time.monotonic()
    deadline = t_start + time_budget if time_budget is not None else None
    # ---- everything that can be wrong with the input, before any heavy work
    if trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    if time_budget is not None and time_budget <= 0:
        raise UserError(f"--time-budget must be > 0 seconds, got {time_budget:g}")
    if metric not in METRICS:
        raise UserError(f"--metric for a search must be accuracy or macro_f1, got {metric!r}")
    if storage and not study_name:
        raise UserError("--storage needs --study NAME: the name every worker of this search uses")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if (out / "manifest.json").exists():
        raise UserError(f"{out} holds a finished `transferkit fit` run, not a search; choose another --out")
    base = _normalise_paths(replace(base, metric=metric)).validate()
    if base.model.name == "auto":  # one backbone for every trial, chosen on the training split
        from .ranking import resolve_auto_model

        base = resolve_auto_model(base, con, show_table=False)
    splits = load_splits(base)
    from .data import fingerprints
    from .text_data import TextSet

    text = isinstance(splits.train, TextSet)
    unit = "texts" if text else "images"
    keys = fingerprints(splits.train.sources, text)  # copies stay on one side of every fold; and what the data is, for a rerun
    fold_idx = stratified_folds(splits.train.labels, splits.classes, folds, base.train.seed, keys=keys, unit=unit)
    groups = _copy_groups(keys)
    copies = 0 if groups is None else len(keys) - len(set(groups.tolist()))
    user_space = parse_space(space, where="--space") if space else None
    if lr_find and ("lr" in (user_space or {}) or "lr" in fixed):
        raise UserError("--lr-find centres the learning-rate range itself: leave lr out of --space and --lr, or drop --lr-find")
    study_name = study_name or "transferkit-search"
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    request = json.loads(json.dumps({  # what makes two searches the same one (JSON's form: as read back)
        "data": base.data.path, "model": base.model.name, "arch": base.model.arch, "folds": folds, "metric": metric, "seed": base.train.seed,
        "space": {n: d.to_dict() for n, d in user_space.items()} if user_space else "default", "lr_find": bool(lr_find),
        "fixed": sorted(fixed), "config": base.to_dict(), "storage": redact(url) if storage else "DIR/study.db", "study": study_name,
        # the examples themselves (their content and labels): a rerun into this DIR after the data changed
        # added trials on 400 texts to trials on 200, and the bigger data "won"
        "examples": {"train": len(splits.train), "held_out": len(splits.val), "digest": _examples_digest(keys, splits)},
    }))
    previous = _read_search_json(out)
    afresh = None  # a different search in DIR with nothing to keep: begun afresh (once DIR is locked)
    if previous is not None:
        try:
            _check_same_search(previous.get("request", {}), request, str(out))
        except UserError as e:
            # a search that has nothing to keep (its first trial failed on a mistake the corrected command
            # fixes) is begun afresh: it was refused as "a different search" for good. Only a search of
            # DIR's own study.db with no refit (a shared study's DIR has no study.db to judge by)
            own = previous.get("request", {}).get("storage") == "DIR/study.db"
            if storage is not None or not own or (out / "final").exists() or (out / "summary.json").exists() or _holds_results(url):
                raise
            afresh = e
    if user_space is not None:  # every value the space can produce, checked before DIR or its study exists
        check_space(resolve_space(space, base, fixed=fixed), base)
    store = open_storage(url) if storage else None  # an unreachable server fails before DIR is touched

    made = not out.exists()  # a search refused before its first trial leaves no empty folder behind
    from .rundir import refuse_out_in_data

    refuse_out_in_data(out, base.data.path, base.model.name)
    rd = RunDir(out).create()  # one process per DIR (a lock that a dead process left is taken over)
    if afresh is not None:
        if _holds_results(url):  # looked at again under the lock: another process may have run a trial since
            rd.release()
            raise afresh
        from rich.markup import escape

        con.print("[yellow]note[/]: " + escape(f"{out} held a different search ({getattr(afresh, 'details', '')}) without a finished fold; starting this one afresh"))
        for f in ("study.db", "study.db-journal", "search.json", "trials.csv"):
            (out / f).unlink(missing_ok=True)
        previous = None
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial comes from here instead
    try:
        study = _open_study(store or open_storage(url), study_name, request, base.train.seed, trials, shared=storage is not None)
        if copies and "examples" not in study.user_attrs.get("transferkit_request", request):
            # a study begun before copies were kept together: its trials were scored on folds by position,
            # and go on so (grouped folds would set new trials' scores against the old ones' leaky ones)
            fold_idx = stratified_folds(splits.train.labels, splits.classes, folds, base.train.seed, unit=unit)
            con.print(f"[yellow]note[/]: {copies} of the training {unit} are copies of others; this search began before copies were kept on "
                      "one side of every fold and goes on with its folds by position, which score a little high (a new --out keeps them together)")
            copies = 0
        # ---- the space: as this DIR or the shared study first resolved it, else resolved now
        if previous is not None:
            space_d, lr_info = previous["space"], previous.get("lr_find")
        elif "transferkit_space" in study.user_attrs:
            space_d, lr_info = study.user_attrs["transferkit_space"], study.user_attrs.get("transferkit_lr_find")
        else:
            try:
                space_d, lr_info = _resolve_for(base, user_space, splits, fold_idx, fixed, lr_find, out, con)
            except UserError:
                if storage is None and previous is None and not study.get_trials(deepcopy=False):
                    # refused before any trial (a space value no model takes): leave no study behind, so
                    # that the corrected search into this DIR is not taken for "a different search"
                    for f in ("study.db", "study.db-journal"):
                        (out / f).unlink(missing_ok=True)
                    if made:
                        rd.release()
                        shutil.rmtree(out, ignore_errors=True)
                raise
            study.set_user_attr("transferkit_space", space_d)
            study.set_user_attr("transferkit_lr_find", lr_info)
        space = parse_space(space_d, where=str(out / "search.json"))
        rd.write_json("search.json", {
            "format": "transferkit-search/1", "study": study_name, "request": request, "space": space_d, "lr_find": lr_info,
            "held_out": {"split": "val (given)" if splits.val_given else f"val (stratified {base.data.val_fraction:.0%}, seed {base.train.seed})", "n": len(splits.val)},
        })
        dead = fail_dead_trials(study)
        requeued = requeue_interrupted(study, trials)
        _print_plan(con, base, splits, fold_idx, space, trials, study, dead, requeued, url, metric, deadline, t_start, fixed, copies=copies)

        # ---- trials, until `trials` of them finished (here and in other workers) or the time is up
        objective = _objective(study, space, base, splits, fold_idx, trials, metric, deadline)
        try:
            stopped_by = _run_trials(study, objective, trials, deadline, t_start, len(fold_idx), out, metric, con)
        except KeyboardInterrupt:  # the interrupted trial is in the study now: trials.csv shows it too
            write_trials_csv(study, out / "trials.csv", len(fold_idx))
            raise
        write_trials_csv(study, out / "trials.csv", len(fold_idx))
        write_plots(rd, study, metric)
        return _refit_best(rd, study, base, space, splits, len(fold_idx), metric, stopped_by, t_start, con)
    finally:
        optuna.logging.set_verbosity(level)
        rd.release()


def _holds_results(url: str) -> bool:
    """Whether the study database at `url` (DIR/study.db) holds anything worth keeping: a finished
    or running trial, or a finished fold of an interrupted one. A database that cannot be read is kept."""
    import optuna

    path = Path(url[len("sqlite:///"):])
    if not path.is_file():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
            trials = [t for sid in (s._study_id for s in storage.get_all_studies()) for t in storage.get_all_trials(sid, deepcopy=False)]
    except Exception:
        return True
    from optuna.trial import TrialState

    return any(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) or t.user_attrs.get("fold_scores") for t in trials)


def _examples_digest(train_keys: list, splits: DataSplits) -> str:
    """The training and held-out examples' content fingerprints with their labels, and the classes."""
    import hashlib

    from .data import fingerprints
    from .text_data import TextSet

    val_keys = fingerprints(splits.val.sources, isinstance(splits.val, TextSet))
    pairs = [list(train_keys), [int(v) for v in splits.train.labels], val_keys, [int(v) for v in splits.val.labels], list(splits.classes)]
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def _read_search_json(out: Path) -> dict | None:
    p = out / "search.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise UserError(f"{p} is damaged ({e}); choose another --out or remove it") from None


def _check_same_search(old: dict, new: dict, where: str) -> None:
    # (a search begun before its examples were recorded is taken as on the same ones)
    diff = [k for k in new if old.get(k) != new[k] and not (k == "examples" and k not in old)]
    if not diff:
        return
    shown = []
    for k in diff:
        if k == "examples":
            a, b = old[k] or {}, new[k]
            counts = "" if (a.get("train"), a.get("held_out")) == (b["train"], b["held_out"]) else (
                f": {a.get('train')} training / {a.get('held_out')} held out then, {b['train']} / {b['held_out']} now")
            shown.append(f"its data changed since the search began (the examples or their labels{counts})")
        elif k == "config":  # settings other than the ones shown on their own
            a, b = old.get(k) or {}, new[k]
            own = {"data.path", "model.name", "model.arch", "train.seed", "train.metric"}
            keys = [f"{s}.{f}" for s in b for f in b[s] if (a.get(s) or {}).get(f) != b[s][f] and f"{s}.{f}" not in own]
            if keys:
                shown.append(f"settings {', '.join(keys[:4])}" + (" ..." if len(keys) > 4 else ""))
        else:
            shown.append(f"{k} {old.get(k)!r} (now {new[k]!r})")
    e = UserError(
        f"{where} holds a different search ({'; '.join(shown)}). "
        "Run it again with the same data, model and space to continue it, or choose another --out"
    )
    e.details = "; ".join(shown)  # type: ignore[attr-defined]
    raise e


def _open_study(store, name: str, request: dict, seed: int, trials: int, *, shared: bool):
    """Create or load the study; a shared study must have been made for the same search. A database
    that cannot be written (read-only, a full disk, a role without INSERT) is said, by name."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return _open_study_in(store, name, request, seed, trials, shared=shared)
    except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as e:
        cause = e.__cause__ or e.__context__ or e
        msg = str(getattr(cause, "orig", None) or cause).strip().splitlines()
        hint = " (check that it and its folder are writable, and the disk is not full)" if str(store.url).startswith("sqlite") else ""
        raise UserError(f"cannot use the study database {redact(str(store.url))}: {msg[0] if msg else type(cause).__name__}{hint}") from None


def _open_study_in(store, name: str, request: dict, seed: int, trials: int, *, shared: bool):
    import optuna

    try:
        existing = len(optuna.load_study(study_name=name, storage=store).trials)
    except KeyError:
        existing = 0
    # Seeded, yet no repeated draws after a resume (the sampler's random start would begin again) or
    # between workers (each would draw the same startup trials).
    sampler_seed = seed + existing + ((os.getpid() * 7919) % 100_003 if shared else 0)
    study = optuna.create_study(
        storage=store, study_name=name, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=max(2, min(10, trials // 3))),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, trials // 4)), n_warmup_steps=2),  # never on fold 1's first epoch
    )
    mine = {k: v for k, v in request.items() if k != "storage"}
    theirs = study.user_attrs.get("transferkit_request")
    if theirs is None:
        study.set_user_attr("transferkit_request", mine)
    elif theirs != mine:
        _check_same_search(theirs, mine, f"study {name!r} in {redact(store.url)}")
    return study


def _resolve_for(base, user_space, splits, fold_idx, fixed, lr_find, out, con) -> tuple[dict, dict | None]:
    """The space of a new search: defaults, the user's file, batch sizes that fit, an lr-find's range."""
    lr_info = _run_lr_find(base, user_space, splits, out, con) if lr_find else None
    user = {n: d.to_dict() for n, d in user_space.items()} if user_space else None
    n_fold_train = min(len(tr) for tr, _ in fold_idx)
    bs = None if (user and "batch_size" in user) or "batch_size" in fixed else batch_sizes_that_fit(base, n_fold_train, len(splits.classes))
    space = resolve_space(user, base, fixed=set(fixed), batch_sizes=bs, lr_center=lr_info["suggestion"] if lr_info else None)
    _preflight(base, space, len(splits.classes))
    return {n: d.to_dict() for n, d in space.items()}, lr_info


def _objective(study, space, base, splits, fold_idx, trials, metric, deadline):
    """One trial: sample, then fit each fold, reporting every epoch to the pruner; the mean fold score."""
    import optuna
    from optuna.trial import TrialState

    quiet = report.console(quiet=True)
    k = len(fold_idx)

    def objective(trial):
        trial.set_user_attr("worker", WORKER)
        live = sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))
        if trial.number in live and live.index(trial.number) >= trials:
            trial.set_user_attr("note", "surplus: another worker started the last trial at the same moment")
            raise _Surplus
        params = sample(trial, space, base.strategy.name, base)
        cfg = replace(trial_config(base, space, params), baseline="none")  # --baseline's comparison: the final refit's, not every fold's
        scores = [float(s) for s in trial.user_attrs.get("fold_scores", [])]  # folds an interrupted trial had finished
        continued = ""

        def note(text: str) -> None:  # after "continues trial N", which a later note replaced (trials.csv lost the link)
            trial.set_user_attr("note", f"{continued}; {text}" if continued else text)

        if "continues" in trial.user_attrs:
            old = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.user_attrs["continues"])
            for step, v in sorted(old.intermediate_values.items()):
                if step < len(scores) * STEP_STRIDE:  # the pruner sees the carried folds' epochs again
                    trial.report(v, step)
            continued = f"continues trial {old.number}" + (f": {len(scores)} of {k} folds carried over" if scores else "")
            trial.set_user_attr("note", continued)
        for f, (tr, va) in enumerate(fold_idx):
            if f < len(scores):
                continue
            if f and deadline is not None and time.monotonic() > deadline:
                # not pruned: a pruned trial counts as finished and never ran again, so a rerun of a search
                # whose budget ended every trial between folds started another trial, cut off alike, forever
                note(f"stopped by the time budget after {f} of {k} folds; runs again, its folds carried over, when the search continues")
                raise _BudgetStop

            seen = {"probe": None, "finetune": 0}  # this fold's best probe score, and its fine-tuning epochs so far

            def on_epoch(row, _f=f):
                """Steps the pruner compares across trials: 0 for the probe (its best score, reported when
                fine-tuning starts), then 1, 2, ... for fine-tuning's epochs. They were the run's epoch
                numbers, which put one trial's first fine-tuning epoch beside another's sixth wherever
                the probe had stopped early (and never reported the probe)."""
                v = row[f"val_{metric}"]
                if row["phase"].endswith("probe"):
                    seen["probe"] = v if seen["probe"] is None else max(seen["probe"], v)
                    return  # probe epochs take milliseconds
                if seen["finetune"] == 0 and seen["probe"] is not None:
                    trial.report(seen["probe"], _f * STEP_STRIDE)
                seen["finetune"] += 1
                trial.report(v, _f * STEP_STRIDE + seen["finetune"])
                if trial.should_prune():
                    note(f"pruned in fold {_f + 1}, fine-tuning epoch {seen['finetune']} (epoch {row['epoch']} of the run)")
                    raise optuna.TrialPruned

            try:
                r = fit(cfg, None, console=quiet, splits=fold_splits(splits, tr, va, f, k), on_epoch=on_epoch)
            except optuna.TrialPruned:
                raise
            except Diverged:  # a rate far too high: this trial loses, the search goes on
                note(f"diverged in fold {f + 1} (loss NaN or infinite): pruned")
                raise optuna.TrialPruned from None
            except KeyboardInterrupt:
                note(f"interrupted in fold {f + 1} of {k}; runs again when the search continues")
                raise
            except Exception as e:  # an error (out of memory, a bug): running it again would fail again
                trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:300])
                note(f"failed in fold {f + 1}: {type(e).__name__}")
                raise
            scores.append(float(r.metrics[metric]))
            trial.set_user_attr("fold_scores", scores)
        return float(np.mean(scores))

    return objective


def _run_trials(study, objective, trials, deadline, t_start, k, out, metric, con) -> str:
    """Run trials one at a time until `trials` are finished in the study or the deadline passes;
    returns what stopped it: "trials" or "time budget"."""
    import torch
    from optuna.trial import TrialState

    fails = 0

    def on_trial(study_, t):
        nonlocal fails
        fails = fails + 1 if t.state == TrialState.FAIL and "error" in t.user_attrs else 0  # (not one the time budget stopped)
        _print_trial(con, study_, t, metric)
        write_trials_csv(study_, out / "trials.csv", k)  # kept current: a killed search leaves it up to date

    waiting = False
    while True:
        fail_dead_trials(study)
        done, running = _counts(study)
        if done >= trials:
            return "trials"
        if deadline is not None and time.monotonic() >= deadline:  # (a trial it stopped is queued again by the next run)
            con.print(f"time budget reached after {time.monotonic() - t_start:.0f} s: {done} of {trials} trials finished")
            return "time budget"
        for n, c in requeue_interrupted(study, trials):  # a worker that died while this one ran
            con.print(f"trial {n} was interrupted: it runs again" + (f", its {c} finished fold(s) carried over" if c else ""), markup=False)
        if fails >= 3:
            raise UserError("3 trials in a row failed (out of memory?); see trials.csv. Narrow the space (batch_size, input_size) and run again to continue")
        if done + running >= trials:  # the last trials run in other workers: wait for them (or for them to be declared dead)
            if not waiting:
                con.print(f"waiting for {running} trial(s) of other workers to finish")
                waiting = True
            time.sleep(POLL_S)
            continue
        waiting = False
        remaining = None if deadline is None else max(1.0, deadline - time.monotonic())
        try:
            study.optimize(objective, n_trials=1, timeout=remaining, catch=(torch.OutOfMemoryError, _BudgetStop), callbacks=[on_trial])
        except _Surplus:
            continue
        except BaseException:  # an error (a bug) or Ctrl-C ends the search: the trial it ended is in trials.csv too (no callback ran)
            write_trials_csv(study, out / "trials.csv", k)
            raise


def _refit_best(rd, study, base, space, splits, k, metric, stopped_by, t_start, con) -> SearchResult:
    """best.yaml, then the best configuration refitted on the whole training split and evaluated once
    on the held-out split (DIR/final, a normal run directory), then summary.json."""
    from optuna.trial import TrialState

    out = rd.path
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        trials = study.get_trials(deepcopy=False)
        if trials and all("diverged" in str(t.user_attrs.get("note", "")) for t in trials):  # running it again would diverge again
            raise UserError(f"every trial diverged (its loss turned NaN or infinite): the learning rates searched are too high; "
                            f"lower the lr range (--space) and search again in a new folder (trials.csv in {out} lists them)")
        raise UserError(
            "no trial finished all its folds" + (" within the time budget: give a larger --time-budget" if stopped_by == "time budget" else "")
            + f"; run the same command again to continue the search in {out}"
        )
    best = study.best_trial
    best_cfg = trial_config(base, space, best.params)
    rd.write_yaml("best.yaml", best_cfg.to_dict())
    if load_config_file(out / "best.yaml").to_dict() != best_cfg.to_dict():
        raise RuntimeError("best.yaml does not read back as the best configuration")  # a bug, not a user error
    folds = best.user_attrs.get("fold_scores", [])
    con.print(f"\n[bold]best[/]: trial {best.number}, mean {metric} {best.value:.4f} over {k} folds (" + ", ".join(f"{s:.3f}" for s in folds) + "): " + _fmt_params(best.params))
    final_dir = out / "final"
    if is_complete(final_dir) and (final_dir / "config.yaml").is_file() and load_config_file(final_dir / "config.yaml").to_dict() == best_cfg.to_dict():
        con.print(f"{final_dir} already holds the refit of this configuration")
        final_metrics = json.loads((final_dir / "metrics.json").read_text())
    else:
        from .text_data import TextSet

        unit = "texts" if isinstance(splits.train, TextSet) else "images"
        # a refit stopped before (Ctrl-C) goes on from its last checkpoint: it started from scratch
        again = ((final_dir / "checkpoints").is_dir() and (final_dir / "config.yaml").is_file() and not is_complete(final_dir)
                 and load_config_file(final_dir / "config.yaml").to_dict() == best_cfg.to_dict())
        con.print(f"{'resuming the refit of' if again else 'refitting'} the best configuration on the whole training split ({len(splits.train)} {unit}); "
                  f"validated on the {len(splits.val)} held-out {unit} (its best epoch and temperature are chosen on them) -> {final_dir}")
        if not again:  # another configuration's checkpoints (an earlier best's refit, stopped) must not be resumed later as this one's
            shutil.rmtree(final_dir / "checkpoints", ignore_errors=True)
        try:
            final_metrics = fit(best_cfg, final_dir, overwrite=not again, resume=again, console=con).metrics
        except KeyboardInterrupt:  # no trial runs again: the message for a stopped search said one did
            raise RefitInterrupted from None
    states = _state_counts(study)
    held = (f"validation {metric} {final_metrics[metric]:.4f} (unseen by the search; the refit chose its best epoch on it, so a little optimistic)"
            + (f", test {metric} {final_metrics['test'][metric]:.4f}" if "test" in final_metrics else ""))
    rd.write_json("summary.json", {
        "study": study.study_name, "best_trial": best.number, "cv_mean": best.value, "cv_folds": folds, "params": best.params, "metric": metric,
        "final": {m: final_metrics.get(m) for m in ("accuracy", "macro_f1", "auroc", "n_train", "n_val", "wall_s")}, "test": final_metrics.get("test"),
        "trials": states, "stopped_by": stopped_by, "wall_s": round(time.monotonic() - t_start, 2),
    })
    wrote = ["trials.csv", "best.yaml", "final/"] + [f for f in ("history.png", "lr.png", "importance.png", "lr_find.png") if (out / f).is_file()]
    con.print(f"search done ({', '.join(f'{n} {s}' for s, n in states.items())}; stopped by {stopped_by}): {held}. Wrote {out}/{', '.join(wrote)}")
    return SearchResult(out, study.study_name, best.number, best.value, dict(best.params), best_cfg, list(folds), final_metrics, states, stopped_by)


def _run_lr_find(base: RunConfig, user_space: dict | None, splits: DataSplits, out: Path, con) -> dict:
    """The learning-rate range test on the whole training split (never the held-out one)."""
    from . import plots
    from .lr_find import lr_find, lr_find_figure

    sd = (user_space or {}).get("strategy")
    cfg = replace(base, strategy=sd.value) if sd is not None and sd.kind == "fixed" else base
    train_only = DataSplits(splits.train, splits.train.subset([]), None, splits.classes, splits.source, False, splits.flip_ok)
    res = lr_find(cfg, splits=train_only, console=con)
    fig = lr_find_figure(res)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plots.close(fig)
    atomic_write_bytes(out / "lr_find.png", buf.getvalue())
    if res.suggestion is None:
        raise UserError(f"--lr-find: the loss never fell over the sweep ({out / 'lr_find.png'}), so there is no rate to centre the search on; "
                        "drop --lr-find (the default lr range is searched) or give an lr range in --space")
    con.print(f"lr-find ({cfg.strategy.name}): suggested lr {res.suggestion:.2e}; the search samples lr in [{res.suggestion / 10:.2e}, {min(res.suggestion * 10, 1.0):.2e}] (log)")
    return {"suggestion": res.suggestion, "steepest": res.steepest, "min_div10": res.min_div10, "strategy": cfg.strategy.name}


def _preflight(base: RunConfig, space: dict[str, Dim], num_classes: int) -> None:
    """Every strategy the space can choose must work with this backbone (partial's k, for example)."""
    from .model import create_model, model_groups
    from .strategies import create_phases

    sd = space.get("strategy")
    names = [base.strategy.name] if sd is None else [sd.value] if sd.kind == "fixed" else sd.choices
    kd = space.get("k")
    k = max(kd.choices) if kd is not None and kd.kind == "choices" else kd.high if kd is not None and kd.kind == "range" else kd.value if kd is not None else base.strategy.k
    model = create_model(base.model, num_classes, pretrained=False)
    if "lora" in names:  # the adapters fit injects, so that lora's phases (and a bad --lora-targets) are checked too
        from .lora import apply_lora

        apply_lora(model.backbone, base.strategy)
    groups = model_groups(model)
    if base.strategy.freeze:  # found by the first trial's fit, it left a study that the corrected command was refused as "different"
        from .strategies import frozen_by_pattern

        frozen_by_pattern(groups, base.strategy.freeze)
    for s in names:
        try:
            create_phases(replace(base, strategy=s, k=k), groups)
        except UserError as e:
            raise UserError(f"search space: strategy {s}: {e}") from None


def state_name(t) -> str:
    """A trial's state as the summary and trials.csv say it: Optuna's, in lower case, except a FAIL
    without an `error`: "stopped" (the time budget, Ctrl-C or a dead worker cut it off; it runs again,
    its folds carried over), or "surplus" (another worker took the last slot: it never ran). Neither is
    a configuration that failed."""
    from optuna.trial import TrialState

    if t.state == TrialState.FAIL and "error" not in t.user_attrs:
        return "surplus" if "surplus" in str(t.user_attrs.get("note", "")) else "stopped"
    return t.state.name.lower()


def _state_counts(study) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(state_name(t) for t in study.get_trials(deepcopy=False)))


# ---------------------------------------------------------------------------------------- reporting


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) >= 1e-2 or v == 0 else f"{v:.2e}"
    return str(v)


def _fmt_params(params: dict) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _print_plan(con, base, splits, fold_idx, space, trials, study, dead, requeued, url, metric, deadline, t_start, flags=(), *, copies: int = 0) -> None:
    """What the search is about to do: data, folds, held-out split, study, space."""
    K = len(fold_idx)
    done, running = _counts(study)
    n_tr = [len(tr) for tr, _ in fold_idx]
    from .text_data import TextSet

    unit = "texts" if isinstance(splits.train, TextSet) else "images"
    con.print(
        f"[bold]transferkit search[/]: {base.model.name} on {splits.source}; {trials} trial{'s' if trials != 1 else ''}"
        + (f" ({done} already finished" + (f", {running} running elsewhere" if running else "") + ")" if done or running else "")
        + f", each the mean {metric} over {K} stratified folds of the training split "
        f"({len(splits.train)} {unit}; {min(n_tr)}-{max(n_tr)} train / {len(splits.train) - max(n_tr)}-{len(splits.train) - min(n_tr)} held out per fold). "
        f"The held-out split ({len(splits.val)} {unit}" + (f", test {len(splits.test)}" if splits.test is not None else "")
        + ") is left to the final refit, which picks its best epoch on it."
        + (f" {copies} of the training {unit} are copies of others: each stays on the same side of every fold as its original." if copies else "")
    )
    con.print(f"study {study.study_name!r} in {redact(url)}" + (f"; time budget {deadline - t_start:.0f} s" if deadline else ""), markup=False)
    if dead:
        # (optuna's FAIL, but stopped, as trials.csv says: not a configuration that failed)
        con.print(f"trial(s) {', '.join(map(str, dead))} stopped: left running by a worker that is gone", markup=False)
    for n, c in requeued:
        why = "was stopped by the time budget" if "time budget" in str(study.trials[n].user_attrs.get("note", "")) else "was interrupted"
        con.print(f"trial {n} {why}: it runs again first" + (f", its {c} finished fold(s) carried over" if c else ""), markup=False)
    w = max(len(n) for n in space)
    searched = [d for d in space.values() if d.kind != "fixed"]
    fixed = [d for d in space.values() if d.kind == "fixed"]
    def only(name):
        users = ONLY_FOR.get(name)
        return "" if users is None else "  (fine-tuning strategies only)" if users in (TRAINS_BACKBONE, BACKPROP) else f"  (only {', '.join(users)})"

    sampled = sampled_settings(space, base)  # linear_probe fixed: epochs and layer_decay were listed as searched

    unread = [d.name for d in searched if d.name not in sampled]
    searched = [d for d in searched if d.name in sampled]
    w = max([len(d.name) for d in searched] + [1])
    lines = [f"  {d.name:<{w}}  {d.describe()}{only(d.name)}" for d in searched]
    if unread:
        lines.append(f"  not searched, as no trial reads them here: {', '.join(unread)}")
    # settings given as flags or in --config are fixed too (they leave the space): said with the space's own fixed ones
    said = [f"{d.name}={d.value}" for d in fixed] + [f"{n}={flat_value(base, n)} (given)" for n in sorted(flags) if n in FLAT]
    con.print("space:\n" + "\n".join(lines) + ("\n  fixed: " + ", ".join(said) if said else ""), markup=False)


def _print_trial(con, study, t, metric) -> None:
    from optuna.trial import TrialState

    folds = t.user_attrs.get("fold_scores", [])
    score = f"{t.value:.4f}" if t.state == TrialState.COMPLETE else "-"
    dur = f"{t.duration.total_seconds():.1f} s" if t.duration else ""
    try:
        best = f"best {study.best_value:.4f} (#{study.best_trial.number})"
    except ValueError:
        best = ""
    note = t.user_attrs.get("note", "")
    con.print(
        f"trial {t.number:>3} {state_name(t):<8} {metric} {score}  folds " + (" ".join(f"{s:.3f}" for s in folds) or "-")
        + f"  {_fmt_params(t.params)}  {dur}  {best}" + (f"  ({note})" if note else ""),
        markup=False,
    )


def write_trials_csv(study, path: Path, k: int) -> None:
    """Every trial: number, state, mean (complete trials), fold scores, params, duration, worker, note."""
    from optuna.trial import TrialState

    ts = study.get_trials(deepcopy=False)
    pnames = sorted({p for t in ts for p in t.params})
    cols = ["number", "state", "mean"] + [f"fold_{i + 1}" for i in range(k)] + pnames + ["duration_s", "worker", "note"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")  # Unix line ends (the csv default is CRLF)
    w.writerow(cols)
    for t in ts:
        folds = list(t.user_attrs.get("fold_scores", []))
        w.writerow(
            [t.number, state_name(t).upper(), f"{t.value:.6f}" if t.state == TrialState.COMPLETE else ""] + [f"{s:.6f}" for s in folds] + [""] * (k - len(folds))
            + [t.params.get(p, "") for p in pnames]
            + ["" if t.duration is None else f"{t.duration.total_seconds():.2f}", t.user_attrs.get("worker", ""), t.user_attrs.get("note", "")]
        )
    atomic_write_bytes(path, buf.getvalue().encode())


def write_plots(rd: RunDir, study, metric: str) -> None:
    from . import plots

    for name, make in (("history.png", history_figure), ("lr.png", lr_figure), ("importance.png", importance_figure)):
        fig = make(study, metric)
        rd.write_figure(name, fig)
        plots.close(fig)


def history_figure(study, metric: str):
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ts = study.get_trials(deepcopy=False)
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    pruned = [t for t in ts if t.state == TrialState.PRUNED and t.user_attrs.get("fold_scores")]
    ax.plot([t.number for t in done], [t.value for t in done], "o", color="C0", label="complete (mean over folds)")
    if pruned:
        ax.plot([t.number for t in pruned], [np.mean(t.user_attrs["fold_scores"]) for t in pruned], "x", color="0.5", label="pruned (folds done)")
    if done:
        order = sorted(done, key=lambda t: t.number)
        best = np.maximum.accumulate([t.value for t in order])
        ax.step([t.number for t in order], best, where="post", color="C3", label="best so far")
    ax.set(xlabel="trial", ylabel=f"cross-validated {metric}", title="optimization history")
    ax.grid(alpha=0.3)
    if ts:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def lr_figure(study, metric: str):
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    fig, ax = plt.subplots(figsize=(7, 3.6))
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "lr" in t.params]
    groups: dict[str, list] = {}
    for t in done:
        groups.setdefault(str(t.params.get("strategy", "")), []).append(t)
    for i, (s, g) in enumerate(sorted(groups.items())):
        ax.scatter([t.params["lr"] for t in g], [t.value for t in g], color=f"C{i}", label=s or None)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel=f"cross-validated {metric}", title="score against learning rate")
    if not done:
        ax.text(0.5, 0.5, "no complete trial sampled lr", ha="center", va="center", transform=ax.transAxes)
    elif any(groups):
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def importance_figure(study, metric: str):
    """Optuna's parameter importances (its default evaluator) over the complete trials; a figure that
    says why when there are too few trials to tell."""
    import matplotlib.pyplot as plt
    import optuna

    fig, ax = plt.subplots(figsize=(7, 3.6))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError) as e:
        imp, why = {}, str(e).splitlines()[0] if str(e) else type(e).__name__
    else:
        why = "fewer than two complete trials with parameters that vary"
    if imp:
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names], color="C0")
        ax.set(xlabel="importance (normalised to sum 1; Optuna's default evaluator)", title=f"parameter importances for {metric}")
    else:
        ax.text(0.5, 0.5, f"parameter importances need more trials:\n{why}", ha="center", va="center", transform=ax.transAxes, wrap=True)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


__all__ = [
    "search", "SearchResult", "DEFAULT_SPACE", "TEXT_SPACE", "Dim", "load_space_file", "parse_space", "resolve_space", "check_space",
    "stratified_folds", "fold_splits", "open_storage", "fail_dead_trials", "write_trials_csv",
]
