"""One typed dataclass per concern, composed into `RunConfig`.

The same config comes from the Python API (keyword arguments), a YAML file (nested by section, as
written to every run's `config.yaml`, or flat with flag names) and CLI flags; flags override the file,
the file overrides the defaults. `validate()` runs before any heavy work.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError, did_you_mean


@dataclass
class DataConfig:
    path: str = "digits"  # folder, folder with train/val[/test], CSV (path,label), or `digits`
    val_fraction: float = 0.2  # used only when no validation split is given
    augment: bool = True  # random resized crop (+ flip) during training
    crop_scale_min: float = 0.25  # smallest crop area fraction of the random resized crop
    flip: bool | None = None  # horizontal flips; None: on unless the data says flips change labels
    skip_bad_images: bool = False  # drop unreadable images instead of failing
    input_size: int | None = None  # override the backbone's input size
    shots: int | None = None  # train on this many examples per class (stratified, seeded); the validation split stays whole
    test_fraction: float | None = None  # data without a test split: hold out this fraction of each class as one (seeded), scored once at the end
    # text data (CSV / TSV): columns and delimiter are detected unless given
    text_column: str | None = None
    label_column: str | None = None
    delimiter: str | None = None  # "," "\t" ";" "|" (or "tab")
    encoding: str = "auto"  # auto: UTF-8 (BOM or not), or UTF-16 with a BOM; else a Python codec name such as latin-1
    max_length: int = 128  # tokens per text; longer texts are cut (the summary says how many)
    group_column: str | None = None  # CSV / TSV data: a column of groups (site, device, ...): metrics per group and the worst group

    def validate(self) -> None:
        _check(self.shots is None or self.shots >= 1, f"shots must be >= 1, got {self.shots}")
        _check(self.max_length >= 4, f"max_length must be >= 4 tokens, got {self.max_length}")
        _check(0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        _check(self.test_fraction is None or 0 < self.test_fraction < 1, f"test_fraction must be in (0, 1), got {self.test_fraction}")
        _check(0 < self.crop_scale_min <= 1, f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        _check(self.input_size is None or self.input_size >= 8, f"input_size must be >= 8, got {self.input_size}")
        _check(known_encoding(self.encoding), f"encoding must be auto or a codec Python knows (utf-8, latin-1, cp1252, ...), got {self.encoding!r}")


def known_encoding(name: str) -> bool:
    """`auto`, or a codec name Python knows; checked before any file is read (it was found only when one was)."""
    import codecs

    try:
        return name == "auto" or bool(codecs.lookup(name))
    except (LookupError, TypeError):
        return False


@dataclass
class ModelConfig:
    name: str = "efficientnet_lite0"  # see `transferkit models`; or timm:NAME, file:PATH; or auto
    arch: str | None = None  # architecture for file:PATH checkpoints
    candidates: list[str] = field(default_factory=lambda: ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])  # auto
    rank_score: str = "logme"  # auto: the transferability score that picks the model
    head: str = "linear"  # linear | mlp
    head_hidden: int = 512  # mlp head: hidden units
    head_dropout: float = 0.0  # dropout before the head's last layer
    pooling: str = "mean"  # text: mean over tokens | cls (the first token) | last (the last token; for GPT-style models)

    def validate(self) -> None:
        _check(self.pooling in ("mean", "cls", "last"), f"pooling must be mean, cls or last, got {self.pooling!r}")
        _check(self.head in ("linear", "mlp"), f"unknown head {self.head!r}; choose linear or mlp")
        _check(self.head_hidden > 0, f"head_hidden must be > 0, got {self.head_hidden}")
        _check(0 <= self.head_dropout < 1, f"head_dropout must be in [0, 1), got {self.head_dropout}")


@dataclass
class StrategyConfig:
    name: str = "lp_ft"  # see `transferkit strategies`
    k: int = 2  # partial: train the last k backbone block groups (and the head)
    unfreeze_every: int = 1  # gradual: unfreeze one more block group, top down, every this many epochs
    layer_decay: float | None = None  # each group down from the head gets lr x layer_decay^depth
    layer_lr_min: float | None = None  # or: rates geometric from this (first group) up to lr (head)
    freeze: list[str] = field(default_factory=list)  # regexes of parameter names kept frozen throughout
    bn_stats: str = "auto"  # BatchNorm running statistics: auto | frozen | trainable | all (model.set_trainable); auto: frozen for lp_ft and lora, else trainable
    lp_epochs: int = 100  # linear-probe epochs on cached features (linear_probe, lp_ft)
    ft_lr_scale: float = 0.1  # lp_ft: fine-tuning rate as a fraction of --lr
    # lp_ft: end fine-tuning when none of its first ft_patience epochs beats the probe, neither on the
    # selection metric nor on validation loss (on hymenoptera the probe beat all 8 fine-tuning epochs
    # on both in every seed: ~90% of the wall time for nothing; on digits the loss fell below the
    # probe's within 2 epochs in every seed); once an epoch has beaten it, every epoch runs (unless
    # --patience says otherwise). 0: always every epoch.
    ft_patience: int = 3
    # lora (PEFT): low-rank adapters on the named modules, the backbone itself frozen
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=list)  # module names (suffixes); empty: the query and value projections (lora.default_targets)

    def validate(self) -> None:
        _check(self.lora_r >= 1, f"lora_r must be >= 1, got {self.lora_r}")
        _check(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        _check(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _check(self.k >= 1, f"k must be >= 1, got {self.k}")
        _check(self.bn_stats in ("auto", "frozen", "trainable", "all"), f"bn_stats must be auto, frozen, trainable or all, got {self.bn_stats!r}")
        _check(self.unfreeze_every >= 1, f"unfreeze_every must be >= 1, got {self.unfreeze_every}")
        _check(self.layer_decay is None or 0 < self.layer_decay <= 1, f"layer_decay must be in (0, 1], got {self.layer_decay}")
        _check(self.layer_lr_min is None or self.layer_lr_min > 0, f"layer_lr_min must be > 0, got {self.layer_lr_min}")
        _check(not (self.layer_decay and self.layer_lr_min), "give layer_decay or layer_lr_min, not both")
        _check(self.lp_epochs >= 1, f"lp_epochs must be >= 1, got {self.lp_epochs}")
        _check(0 < self.ft_lr_scale <= 1, f"ft_lr_scale must be in (0, 1], got {self.ft_lr_scale}")
        _check(self.ft_patience >= 0, f"ft_patience must be >= 0 (0: all epochs), got {self.ft_patience}")
        for pat in self.freeze:
            try:
                re.compile(pat)
            except re.error as e:
                raise UserError(f"freeze pattern {pat!r} is not a valid regular expression: {e}") from None


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adam | sgd
    lr: float | None = None  # None: default_lr() for the model's modality and the strategy (1e-3; 1e-4 to fine-tune a text encoder)
    weight_decay: float = 0.01  # decoupled (AdamW) or coupled (SGD, Adam); never on biases and norms
    momentum: float = 0.9  # SGD
    nesterov: bool = True  # SGD
    clip_value: float | None = None  # clip every gradient element to [-clip_value, clip_value]
    clip_norm: float | None = None  # rescale gradients whose global L2 norm exceeds clip_norm

    def validate(self) -> None:
        # inf: no clipping at all, accepted in silence (leave the flag out for that)
        _check(self.clip_value is None or 0 < self.clip_value < math.inf, f"clip_value must be a finite number > 0, got {self.clip_value}")
        _check(self.clip_norm is None or 0 < self.clip_norm < math.inf, f"clip_norm must be a finite number > 0, got {self.clip_norm}")
        _check(self.lr is None or (self.lr > 0 and math.isfinite(self.lr)), f"lr must be > 0, got {self.lr}" if self.lr is None or math.isfinite(self.lr) else f"lr must be a finite number > 0, got {self.lr}")
        _check(self.weight_decay >= 0 and math.isfinite(self.weight_decay), f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # see `transferkit schedules`
    warmup_epochs: float = 1.0  # linear warmup in front of any schedule
    min_lr_ratio: float = 0.0  # cosine / linear end at lr * min_lr_ratio
    step_size: float = 3.0  # step: epochs between decays
    gamma: float = 0.1  # step / multistep: decay factor
    milestones: list[float] = field(default_factory=lambda: [5.0, 8.0])  # multistep: epochs
    decay_rate: float = 0.9  # exponential
    decay_steps: int = 100  # exponential: optimizer steps per decay_rate factor
    staircase: bool = False  # exponential: decay in discrete jumps
    pct_start: float = 0.3  # onecycle: fraction of steps rising
    div_factor: float = 25.0  # onecycle: start at lr / div_factor
    final_div_factor: float = 1e4  # onecycle: end at lr / (div_factor * final_div_factor)

    def validate(self) -> None:
        _check(0 <= self.warmup_epochs < math.inf, f"warmup_epochs must be a finite number >= 0, got {self.warmup_epochs}")  # inf: a traceback
        _check(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(0 < self.gamma <= 1, f"gamma (a decay rate) must be in (0, 1], got {self.gamma}")
        _check(0 < self.decay_rate <= 1, f"decay_rate must be in (0, 1], got {self.decay_rate}")
        _check(self.decay_steps >= 1, f"decay_steps must be >= 1, got {self.decay_steps}")
        _check(0 < self.step_size < math.inf, f"step_size must be a finite number > 0, got {self.step_size}")
        _check(all(0 < m < math.inf for m in self.milestones), f"milestones must be finite numbers > 0 (epochs), got {self.milestones}")
        _check(0 < self.pct_start < 1, f"pct_start must be in (0, 1), got {self.pct_start}")
        _check(1 <= self.div_factor < math.inf and 1 <= self.final_div_factor < math.inf,
               f"div_factor and final_div_factor must be finite numbers >= 1, got {self.div_factor} and {self.final_div_factor}")


@dataclass
class RegConfig:
    l1: float = 0.0  # l1 * sum |w| over trainable weights (not biases / norms)
    l2: float = 0.0  # explicit l2 * sum w^2 penalty in the loss (coupled, unlike weight_decay)
    l2sp_alpha: float = 0.0  # L2-SP: alpha * ||w - w0||^2 on the backbone, w0 = pretrained weights
    l2sp_beta: float = 0.0  # L2-SP: beta * ||w||^2 on the head

    def validate(self) -> None:
        for k, v in asdict(self).items():
            _check(v >= 0 and math.isfinite(v), f"{k} must be {'a finite number ' if not math.isnan(v) and v > 0 else ''}>= 0, got {v}")


@dataclass
class TrainConfig:
    epochs: int = 8  # backbone epochs (full, and the fine-tuning phase of lp_ft)
    batch_size: int = 32
    # forward each batch in this many micro-batches and add up their gradients (gradient accumulation):
    # the same optimizer steps with less memory. More are used, once, after running out of memory.
    accumulate: int = 1
    # recompute each block's activations in the backward pass instead of keeping them (timm and Hugging
    # Face backbones): less memory for about a third more compute; BatchNorm statistics that train are
    # updated twice a step (lp_ft freezes them)
    grad_checkpointing: bool = False
    eval_batch_size: int = 32
    seed: int = 0
    patience: int | None = None  # early stopping: epochs without improvement; None: run all epochs
    metric: str = "accuracy"  # model selection and early stopping: accuracy | macro_f1 | loss
    min_delta: float = 0.0  # an improvement must exceed this to count
    label_smoothing: float = 0.1
    class_weight: str = "none"  # none | balanced (loss weights inversely proportional to class counts)
    sampler: str = "shuffle"  # shuffle | balanced (draw classes equally often)
    # texts: batches of texts of similar length (transformers' group_by_length: random megabatches
    # sorted by length, the batches shuffled), so they pad less. Off by default: MiniLM on 2,000 texts
    # trained 1.9-2.1x faster, SMS spam as accurate, SST-2 1.3 points less accurate over 5 seeds (not
    # significant; bench/results/group_by_length.md). Images: no effect
    group_by_length: bool = False
    precision: str = "auto"  # auto (bf16 where the GPU or CPU computes in bf16 natively, else fp32) | bf16 | fp16 | no
    cpu: bool = False  # force the CPU even when a GPU is present
    checkpoint_minutes: float | None = 10.0  # also checkpoint inside epochs longer than this; 0 (or None): at epoch ends only
    # none, or comparison fits on the same split, comma-separated: scratch (the same architecture from
    # random weights, strategy full, same epochs); base (for --model run:DIR: the same recipe from the
    # model that run started from, without its source stage: did the source stage help?)
    baseline: str = "none"
    # temperature | none. temperature: after training, the head's last layer is divided by the T that
    # minimises the validation NLL (Guo et al. 2017); classes never change, probabilities become honest
    # (digits, held-out test ECE 0.09-0.10 -> 0.016-0.021 over 3 seeds; SST-2 0.085 -> 0.028)
    calibrate: str = "temperature"
    # fine-tuning phases: validate, select and keep an exponential moving average of the weights with
    # this decay (timm's ModelEmaV3, with its warmup: early steps average over few updates); 0: off
    ema: float = 0.0

    @property
    def baselines(self) -> tuple[str, ...]:
        """The comparison fits asked for: () for none, else scratch and/or base."""
        return () if self.baseline == "none" else tuple(self.baseline.split(","))

    def validate(self) -> None:
        # negative: a full checkpoint after every step; nan: none inside epochs (both accepted in silence)
        _check(self.checkpoint_minutes is None or 0 <= self.checkpoint_minutes < math.inf,
               f"checkpoint_minutes must be a finite number >= 0 (0: at the end of each epoch only), got {self.checkpoint_minutes}")
        _check(0 <= self.ema < 1, f"ema must be a decay in [0, 1) (0: off), got {self.ema}")
        _check(0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}")  # numpy's range (a traceback at -1)
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.accumulate >= 1, f"accumulate must be >= 1 (micro-batches a step; more than the batch's examples act as one each), got {self.accumulate}")
        _check(self.patience is None or self.patience >= 1, f"patience must be >= 1, got {self.patience}")
        _check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.precision == "fp32":  # the name the README and most users say for "no" mixed precision
            self.precision = "no"
        _check(self.precision in ("auto", "bf16", "fp16", "no"), f"precision must be auto, bf16, fp16 or no (fp32), got {self.precision!r}")
        _check(self.metric in ("accuracy", "macro_f1", "loss"), f"metric must be accuracy, macro_f1 or loss, got {self.metric!r}")
        # inf: no epoch after the first could count as better, so --patience stopped the run at once
        _check(0 <= self.min_delta < math.inf, f"min_delta must be a finite number >= 0, got {self.min_delta}")
        _check(self.class_weight in ("none", "balanced"), f"class_weight must be none or balanced, got {self.class_weight!r}")
        _check(self.sampler in ("shuffle", "balanced"), f"sampler must be shuffle or balanced, got {self.sampler!r}")
        parts = self.baseline.split(",")
        _check(self.baseline == "none" or (all(p in ("scratch", "base") for p in parts) and len(set(parts)) == len(parts)),
               f"baseline must be none, scratch, base or scratch,base, got {self.baseline!r}")
        _check(self.calibrate in ("none", "temperature"), f"calibrate must be temperature or none, got {self.calibrate!r}")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunConfig:
        for f in fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        from .schedules import SCHEDULES
        from .strategies import STRATEGIES

        STRATEGIES.get(self.strategy.name)
        SCHEDULES.get(self.schedule.name)
        if self.optim.lr is not None and self.strategy.layer_lr_min is not None:
            check_layer_lr_min(self.strategy.layer_lr_min, self.optim.lr)
        _check(self.optim.name in OPTIMIZERS, f"unknown optimizer {self.optim.name!r}{did_you_mean(self.optim.name, OPTIMIZERS)}; choose from: {', '.join(OPTIMIZERS)}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def set(self, dotted: str, value: Any) -> None:
        section, name = dotted.split(".")
        setattr(getattr(self, section), name, _coerce(getattr(self, section), name, value))


OPTIMIZERS = ("adamw", "adam", "sgd")


def check_layer_lr_min(layer_lr_min: float, lr: float) -> None:
    _check(layer_lr_min < lr, f"layer_lr_min ({layer_lr_min:g}) must be below lr ({lr:g}): the rates rise from it at the first "
           "block group to lr at the head, so a larger value would train the stem faster than the head")


def default_lr(modality: str, strategy: str) -> float:
    """The base learning rate when none is given. 1e-3 for heads, adapters and image backbones (AdamW);
    a text encoder fine-tuned whole (full, partial, gradual) takes 1e-4, as BERT-family recipes do:
    1e-3 breaks its pretrained attention within an epoch. lp_ft fine-tunes at lr x ft_lr_scale (1e-4)."""
    return 1e-4 if modality == "text" and strategy in ("full", "partial", "gradual") else 1e-3


def with_default_lr(cfg: RunConfig) -> RunConfig:
    if cfg.optim.lr is not None:
        return cfg
    from .inputs import modality_of

    return replace(cfg, lr=default_lr(modality_of(cfg.model.name), cfg.strategy.name))

# Flat names (CLI flags without the dashes, and flat YAML keys) -> section.field.
FLAT: dict[str, str] = {}
for _sec in fields(RunConfig):
    for _f in fields(_sec.default_factory):  # type: ignore[misc]
        FLAT.setdefault(_f.name, f"{_sec.name}.{_f.name}")
FLAT.update({"data": "data.path", "model": "model.name", "strategy": "strategy.name", "optimizer": "optim.name", "schedule": "schedule.name"})
for _ambiguous in ("name", "path"):
    FLAT.pop(_ambiguous, None)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise UserError(msg)


def _coerce(section, name: str, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's declared type, with a clear error."""
    ftype = {f.name: f.type for f in fields(section)}[name]
    if value is None:
        if "None" in str(ftype):
            return None
        raise UserError(f"{name} cannot be empty")
    base = str(ftype).replace(" | None", "")
    if base.startswith("list["):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise UserError(f"{name} must be a list, got {value!r}")
        conv = float if base == "list[float]" else str
        try:
            return [conv(v.strip() if isinstance(v, str) else v) for v in items if not (isinstance(v, str) and not v.strip())]
        except (TypeError, ValueError):
            raise UserError(f"{name} must be a list of {base[5:-1]}, got {value!r}") from None
    try:
        if base == "bool":
            if isinstance(value, str):
                low = value.lower()
                if low not in ("true", "false", "yes", "no", "1", "0"):
                    raise ValueError
                return low in ("true", "yes", "1")
            return bool(value)
        if base in ("int", "float") and isinstance(value, bool):  # YAML's `epochs: true` was 1, `lr: yes` 1.0
            raise ValueError
        if base == "str" and isinstance(value, bool):  # YAML reads an unquoted no, off, yes, on as a boolean
            if name == "precision" and value is False:  # `precision: no`, as the README writes it
                return "no"
            raise UserError(f"{name}: YAML read the value as {str(value).lower()} (an unquoted no, off, yes or on is one): put the word in quotes")
        if base == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be {base}, got {value!r}") from None


def config_from_dict(d: dict, *, where: str = "config") -> RunConfig:
    """Nested sections ({data: {path: ...}}) or flat keys (epochs: 5, batch-size: 16), or both."""
    cfg = RunConfig()
    if not isinstance(d, dict):
        raise UserError(f"{where} must be a mapping of settings, got {type(d).__name__}")
    sections = {f.name for f in fields(RunConfig)}
    for key, value in d.items():
        if key in sections and isinstance(value, dict):
            section = getattr(cfg, key)
            names = [f.name for f in fields(section)]
            for k, v in value.items():
                k = str(k).replace("-", "_")
                if k not in names:
                    raise UserError(f"{where}: unknown setting {key}.{k}{did_you_mean(k, names)}")
                _set_from(cfg, f"{key}.{k}", v, where)
        else:
            flat = str(key).replace("-", "_")
            if flat not in FLAT:
                raise UserError(f"{where}: unknown setting {key!r}{did_you_mean(flat, list(FLAT) + list(sections))}")
            _set_from(cfg, FLAT[flat], value, where)
    return cfg


def _set_from(cfg: RunConfig, dotted: str, value: Any, where: str) -> None:
    """A value of the wrong type in a file is said with the file's name, in the file's words (`epochs:
    1.5` in a --config file was blamed on a valid --epochs 1 flag that overrode it)."""
    try:
        cfg.set(dotted, value)
    except UserError as e:
        if where == "config":
            raise
        err = UserError(f"{where}: {e}")
        err.in_file_words = True  # type: ignore[attr-defined]  # not rewritten into flags by the CLI
        raise err from None


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """A YAML file through the safe loader (no Python objects), with a clear error; {} when empty."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {p}")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)  # where PyYAML found it: the first line of its message never said
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"cannot parse {p} as YAML{where}: {problem}") from None


def absolute_model_name(name: str) -> str:
    """`name` with the path of a file:, dir: or run: model (after any random:) made absolute, so that a
    run's config.yaml works from any folder: `fit --resume` and `fit --config RUN/config.yaml` from
    another folder failed on a relative run:runs/source. Hub and registered names are left alone."""
    control = "random:" if name.startswith("random:") else ""
    rest = name[len(control):]
    for prefix in ("file:", "dir:", "run:"):
        if rest.startswith(prefix) and Path(rest[len(prefix):]).exists():
            return control + prefix + str(Path(rest[len(prefix):]).resolve())
    return name


def load_config_file(path: str | Path) -> RunConfig:
    return config_from_dict(read_yaml(path), where=str(path))


def flat_value(cfg: RunConfig, flat: str) -> Any:
    """The value of the setting of flat name `flat` (`lr` -> cfg.optim.lr)."""
    section, name = FLAT[flat].split(".")
    return getattr(getattr(cfg, section), name)


def changed_settings(cfg: RunConfig, names=None) -> dict:
    """The settings of `cfg` (of `names`, else every flat name) whose values differ from the
    defaults, by their flat names: what `replace(RunConfig(), **them)` needs to rebuild them."""
    default = RunConfig()
    return {k: flat_value(cfg, k) for k in (names if names is not None else FLAT) if flat_value(cfg, k) != flat_value(default, k)}


def replace(cfg: RunConfig, **flat: Any) -> RunConfig:
    """A copy of `cfg` with flat-name overrides applied (None values are ignored)."""
    out = config_from_dict(cfg.to_dict())
    for k, v in flat.items():
        if v is None:
            continue
        if k not in FLAT:
            raise UserError(f"unknown setting {k!r}{did_you_mean(k, FLAT)}")
        out.set(FLAT[k], v)
    return out


__all__ = [
    "DataConfig", "ModelConfig", "StrategyConfig", "OptimConfig", "ScheduleConfig", "RegConfig", "TrainConfig", "RunConfig",
    "config_from_dict", "load_config_file", "replace", "FLAT",
]
