"""`fit`: data -> model -> phases -> metrics -> run directory. The CLI and the Python API call this."""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import os
import shutil
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .backbones import Preprocess
from .config import ModelConfig, RunConfig, StrategyConfig, absolute_model_name, with_default_lr
from .data import DataSplits, check_counts, is_builtin
from .inputs import inputs_for, load_splits
from .errors import UserError, first_process
from .features import cached_features
from .metrics import classification_metrics, in_short, paired_bootstrap, verdict, verdict_kind
from .model import Group, TransferModel, create_model, enable_grad_checkpointing, model_groups, set_trainable
from .regularizers import pretrained_reference
from .rundir import MANIFEST, RunDir, is_complete, refuse_if_in_use, releases_lock_on_failure, verify
from .strategies import assign_lr_scales, create_phases, frozen_by_pattern
from .checkpoint import Checkpointer
from .trainer import PhaseData, StopRequested, predict_proba, run_phase, seed_everything
from . import report


@dataclass
class FitResult:
    model: TransferModel
    classes: list[str]
    preprocess: Preprocess
    config: RunConfig
    metrics: dict
    history: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    lr_trace: list[tuple] = field(default_factory=list)  # (step, head lr, lowest trained group's lr, phase)
    inputs: object = None  # inputs.ImageInputs / TextInputs the run used
    val_proba: np.ndarray | None = None
    mistakes: object = None  # mistakes.Mistakes: the wrong validation examples, most confident first
    train_fingerprints: list = field(default_factory=list)  # data.fingerprints of the training split
    val_fingerprints: list = field(default_factory=list)  # and of the validation split (it chose the best epoch)
    label_values: dict | None = None  # fit(X, y): each class name's label as y gave it (an int stays an int), kept in model.json
    warnings: list[str] = field(default_factory=list)  # what the run said in yellow of the data (copies across splits, ...)


def make_accelerator(cfg: RunConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mp = resolve_precision(cfg.train.precision, cpu=cfg.train.cpu)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mp):
        # Accelerate keeps one mixed precision per process and refuses another (a ValueError). One
        # Python process may fit several models with different precisions (the Python API, a notebook,
        # a search); the process-wide part (devices, process group: PartialState) is kept, only the
        # precision setting is dropped, as Accelerate's own tests do between cases.
        AcceleratorState._reset_state()
    # Without a GPU (or another accelerator), say cpu: Accelerate then forms a CPU process group under
    # torchrun / accelerate launch; otherwise each of the processes took itself for the only one.
    return Accelerator(cpu=cfg.train.cpu or not _has_accelerator(), mixed_precision=mp)


def _has_accelerator() -> bool:
    """A CUDA, XPU or MPS device is present (Accelerate's own tests)."""
    from accelerate.utils import is_mps_available, is_xpu_available

    return torch.cuda.is_available() or is_xpu_available() or is_mps_available()


def resolve_precision(precision: str, *, cpu: bool = False) -> str:
    """`auto`: bf16 autocast where the hardware computes in bf16 natively (a GPU that supports it, or a
    CPU with AVX512-BF16 / AMX, as oneDNN reports), otherwise fp32 ("no"). On the 2-core EPYC here,
    bf16 made the default hymenoptera fit 1.2x faster at the same accuracy (bench/results/gpu_bench_cpu.md)."""
    if precision == "fp16" and (cpu or not torch.cuda.is_available()):
        return "no"  # Accelerate's fp16 autocast does nothing on a CPU (float32 out): said as fp32, not as fp16
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and not cpu:
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    try:
        native = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private oneDNN query: absent from some builds
        native = False
    return "bf16" if native else "no"


@releases_lock_on_failure
def fit(
    cfg: RunConfig, out: str | Path | None = None, *, overwrite: bool = False, console=None, resume: bool = False, should_stop=None, should_abort=None,
    splits: DataSplits | None = None, on_epoch=None, label_values: dict | None = None, data_name: str | None = None, source_name=None,
) -> FitResult:
    """Fine-tune `cfg.model.name` on `cfg.data.path` as `cfg.strategy.name` says; write `out` if given.

    With `resume`, `out` is an interrupted run: training continues from its last intact checkpoint
    and ends with the same weights and metrics as an uninterrupted run. `should_stop()` turning true
    makes the run write a checkpoint and raise StopRequested; `should_abort()` is asked while the data
    is encoded and features computed (no training state yet) and stops the run at once
    (StopRequested(checkpointed=False)). `splits` replaces loading
    `cfg.data.path` (cross-validation folds, for example); `on_epoch(row)` sees every epoch's
    validation scores. `label_values` (the Python API's fit(X, y)): each class name's label as y gave
    it, kept in model.json so that a loaded model predicts y's own values; `data_name`: what the
    plan, report.html and data.json call the data (fit(X, y)'s temporary CSV is gone when they are read);
    `source_name(source)`: what mistakes.csv, metrics.json and the report call an example (fit(X, y)'s
    images in memory, read from temporary PNG files, as X[i]).
    """
    cfg.validate()
    if resume and out is None:
        raise UserError("resume needs the run directory")
    if resume and first_process():  # (the first process only: it takes the lock, and another would find it taken)
        refuse_if_in_use(out)  # a run still training or writing its report is neither interrupted nor finished
    if resume and is_complete(out):
        raise UserError(f"{out} is a finished run: there is nothing to resume")
    if resume and (Path(out) / MANIFEST).is_file():  # finished (its checkpoints gone), then a file changed: it was deleted and trained again
        problems = verify(out)
        raise UserError(f"{out} finished, but its files changed since ({'; '.join(problems[:3])}): there is nothing to resume (a finished "
                        f"run keeps no checkpoint). Restore its files from a copy, or train it again with --overwrite")
    # Several processes (`accelerate launch` / `torchrun`): each trains on its share of every global
    # batch; only the main one prints and writes the run directory and its checkpoints.
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    console = (console or report.console()) if main else report.console(quiet=True)
    if cfg.train.class_weight == "balanced" and cfg.train.sampler == "balanced":  # QA AE: 97% with either alone, 78% with both on SMS spam
        console.print("[yellow]note[/]: --class-weight balanced and --sampler balanced each correct for imbalance; together they correct twice "
                      "and favour the rare classes (use one)")
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # `accelerate launch --mixed_precision bf16`: not what decides here
    if launched not in ("", "no") and launched != accelerator.mixed_precision:
        console.print(f"[yellow]note[/]: accelerate launch's --mixed_precision {launched} is not read: transferkit's --precision "
                      f"({cfg.train.precision}) decides, and this run trains in {accelerator.mixed_precision if accelerator.mixed_precision != 'no' else 'fp32'}")
    if cfg.train.precision == "fp16" and accelerator.mixed_precision == "no":
        console.print("[yellow]note[/]: fp16 autocast runs on a GPU only: this run trains in fp32 (a CPU's half precision is --precision bf16)")
    if cfg.train.precision == "bf16" and accelerator.device.type == "cpu" and resolve_precision("auto", cpu=True) == "no":
        # emulated: QA AL's MiniLM fine-tuning took 110 s in bf16 against 14 s in fp32, at the same accuracy
        console.print("[yellow]note[/]: this CPU has no native bf16 (AVX512-BF16 / AMX): bf16 is emulated and can be several times slower "
                      "than fp32; --precision auto picks fp32 here")
    if cfg.train.batch_size < accelerator.num_processes:  # each process's share of a batch was 0 examples: a traceback from every process
        raise UserError(f"--batch-size {cfg.train.batch_size} is smaller than the {accelerator.num_processes} processes, which share each batch; "
                        f"give --batch-size {accelerator.num_processes} or more")
    if accelerator.num_processes > 1 and cfg.strategy.name == "gradual":
        raise UserError("strategy gradual changes what trains inside a phase, which one process per device cannot follow; use partial or full with several processes")
    if splits is None and not resume:
        from .rundir import refuse_out_in_data

        refuse_out_in_data(out, cfg.data.path, cfg.model.name)
    rundir = RunDir(out, overwrite=overwrite or resume) if out is not None and main else None  # refuse a finished run before work
    t_start = time.perf_counter()
    def stop() -> bool:
        """should_stop(), agreed by every process: a signal reaches them at different moments, and one
        process stopping alone leaves the others waiting in a collective (a gloo / NCCL error)."""
        flag = bool(should_stop is not None and should_stop())
        if accelerator.num_processes == 1:
            return flag
        return bool(accelerator.gather(torch.tensor([int(flag)], device=accelerator.device)).max().item())

    def stop_now(_n: int = 0) -> None:  # encoding and features: no training state yet, so stop at once
        if should_abort is not None and should_abort():
            raise StopRequested(checkpointed=False)

    seed_everything(cfg.train.seed)

    model_choice = None  # --model auto: the ranking and the reason for the pick, kept in metrics.json and the report
    if cfg.model.name == "auto":
        from .ranking import auto_model

        cfg, model_choice = auto_model(cfg, console)
    cfg = with_default_lr(cfg).validate()  # with the default lr known, layer_lr_min is checked against it
    if splits is None and cfg.data.path and not is_builtin(cfg.data.path) and Path(cfg.data.path).exists():
        # kept absolute in config.yaml: `fit --resume` from another folder found no csvdata/clean.csv
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=os.path.abspath(cfg.data.path)))
    if absolute_model_name(cfg.model.name) != cfg.model.name:  # and the model's path (run:runs/source failed from another folder)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=absolute_model_name(cfg.model.name)))
    # the content hashes of the examples (copy notes, train_fingerprints.json): for a run of its own data
    # or with a run directory, not for a search's folds or a --baseline comparison fit, which are
    # given splits already hashed and keep nothing (every fold of every trial hashed every image)
    hash_examples = main and (splits is None or out is not None)
    if splits is None:
        splits = load_splits(cfg)
        splits.source = data_name or splits.source
    else:
        splits = copy.copy(splits)  # encoding below replaces its sets; leave the caller's intact
    model = create_model(cfg.model, len(splits.classes), classes=splits.classes)
    kept = getattr(model.backbone, "pooling", None)
    if cfg.model.name.startswith("run:") and kept is not None and kept != cfg.model.pooling:
        # a text run's encoder pools as it was trained (its head, if kept, was fitted to that); config.yaml said --pooling's value
        if cfg.model.pooling != ModelConfig().pooling:
            console.print(f"[yellow]note[/]: {cfg.model.name} keeps the pooling it was trained with ({kept}): --pooling {cfg.model.pooling} is not used")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pooling=kept))
    # --baseline base's model, found (or refused) before training
    base_model = _base_of(model, cfg) if "base" in cfg.train.baselines else None
    if "scratch" in cfg.train.baselines and str(model.backbone.weights_id).startswith("random"):
        raise UserError(
            f"--baseline scratch trains the same architecture from random weights to compare with the pretrained one, "
            f"but --model {cfg.model.name} has no pretrained weights: the comparison would be the model with itself. "
            "Use it with a pretrained model, or a run: of this model trained on a source task"
        )
    if model.head_note:  # the plan prints the data's notes (it was printed here too, twice in all)
        splits.notes = list(splits.notes) + [f"--model {cfg.model.name}: {model.head_note}"]
    if cfg.strategy.name == "lora":
        from .lora import apply_lora, short_name

        adapted = apply_lora(model.backbone, cfg.strategy)
        kinds = sorted({short_name(n) for n in adapted})
        splits.notes = list(splits.notes) + [f"LoRA r={cfg.strategy.lora_r} on {', '.join(kinds)}: {len(adapted)} modules"]
    if cfg.train.grad_checkpointing and cfg.strategy.name != "linear_probe":  # a probe never backpropagates through the backbone (the flag is noted unused)
        enable_grad_checkpointing(model, cfg.model.name)
    inputs = inputs_for(cfg, model.backbone)
    pre = inputs.pre if inputs.modality == "image" else model.backbone.preprocess
    with report.progress(console) as prog:
        task = prog.add_task(f"encoding {inputs.unit}", total=len(splits.train) + len(splits.val) + (len(splits.test) if splits.test else 0))
        def step(k):
            prog.update(task, advance=k)
            stop_now()
        train_u8, splits.train, bad_tr = inputs.encode(splits.train, progress=step)
        val_u8, splits.val, bad_va = inputs.encode(splits.val, progress=step)
        test_u8 = None
        if splits.test is not None:
            test_u8, splits.test, _ = inputs.encode(splits.test, progress=step)
    if bad_tr or bad_va:
        console.print(f"[yellow]skipped {len(bad_tr) + len(bad_va)} unreadable image(s):[/] " + "; ".join((bad_tr + bad_va)[:5]))
        check_counts(splits.train, splits.source)
        if len(splits.val) == 0:
            raise UserError(f"{splits.source}: no readable validation images left")
    warnings = []  # about the data, said once in yellow before the plan, and kept with the plan's notes in metrics.json
    absent = [c for c, n in splits.val.counts().items() if n == 0]
    if absent:  # a val/ folder or file without some class: its per-class scores would read as a model that never finds it
        note = (f"the validation split has no {inputs.unit} of {', '.join(absent)}: the per-class scores of "
                f"{'that class' if len(absent) == 1 else 'those classes'} are empty, and the best epoch is chosen without {'it' if len(absent) == 1 else 'them'}")
        console.print(f"[yellow]{note}[/]")
        warnings.append(note)
    few = {c: n for c, n in splits.train.counts().items() if n < FEW_TO_TRAIN}
    if few and not cfg.data.shots:  # --shots asks for few; a split that leaves few (--test-fraction 0.9) is said
        note = (f"the training split has only {', '.join(f'{n} {inputs.unit[:-1]}(s) of {c}' for c, n in list(few.items())[:5])}: "
                "a model or a verdict on so few is fragile (a smaller --val-fraction / --test-fraction, or more data)")
        console.print(f"[yellow]{note}[/]")
        warnings.append(note)
    from .data import copy_notes, fingerprints

    text = inputs.modality == "text"  # fingerprints: the main process's alone (it writes the run; the others return a bare result)
    prints = {k: fingerprints(getattr(splits, k).sources, text) if hash_examples and getattr(splits, k) is not None else [] for k in ("train", "val", "test")}
    if hash_examples:  # copies across the splits (a CSV listing an image twice, SMS spam's repeated messages): said, not silently scored
        sources = [*splits.train.sources, *splits.val.sources, *(splits.test.sources if splits.test is not None else [])]
        for note in copy_notes(prints["train"], prints["val"], splits.train.labels, splits.val.labels, splits.classes, sources, inputs.unit,
                               prints["test"] or None, splits.test.labels if splits.test is not None else None):
            console.print(f"[yellow]{note}[/]")
            warnings.append(note)

    groups = model_groups(model)
    phases = create_phases(cfg, groups)
    assign_lr_scales(groups, cfg.strategy, cfg.optim.lr)
    always_frozen = frozen_by_pattern(groups, cfg.strategy.freeze)
    ft = [ph for ph in phases if ph.kind == "finetune"]
    if cfg.strategy.name == "gradual" and ft and set(ft[-1].unfrozen(ft[-1].epochs - 1)) <= {"head"}:  # a slow linear probe, named gradual
        every = cfg.strategy.unfreeze_every
        note = (f"gradual unfreezes its first backbone group at epoch {every + 1}, and this run has {ft[-1].epochs} epoch{'s' if ft[-1].epochs != 1 else ''}: "
                f"only the head trains; give more --epochs or a smaller --unfreeze-every (or --strategy linear_probe, which trains the head on cached features)")
        console.print(f"[yellow]{note}[/]")
        warnings.append(note)
    flip = cfg.data.flip if cfg.data.flip is not None else splits.flip_ok
    report.print_summary(console, cfg, splits, model, groups, phases, inputs.describe(flip), always_frozen, processes=accelerator.num_processes)
    ckpt = None
    if rundir is not None:
        rundir.create()
        rundir.write_yaml("config.yaml", cfg.to_dict())  # first: it is what --resume reads
        ckpt = Checkpointer(rundir.path / "checkpoints")
    accelerator.wait_for_everyone()  # the run directory exists before any process reads it
    device = accelerator.device
    y_train = torch.as_tensor(splits.train.labels, device=device)
    y_val = torch.as_tensor(splits.val.labels, device=device)
    k = len(splits.classes)
    # Everything the run has learned so far besides the weights; a checkpoint stores it whole.
    st = {
        "phase": 0, "history": [], "lr_trace": [], "feature_cache_hit": None, "clipped": 0, "steps": 0, "best": None, "best_epoch": 0,
        "timing": {"probe_s": 0.0, "finetune_s": 0.0, "features_s": 0.0, "train_images": 0, "train_seconds": 0.0},
    }
    if prints["train"]:  # what was trained on, by content: a resume onto other data is refused
        import hashlib

        test = [prints["test"], [int(v) for v in splits.test.labels]] if splits.test is not None else []
        labelled = [prints["train"], [int(v) for v in splits.train.labels], prints["val"], [int(v) for v in splits.val.labels], list(splits.classes), *test]
        st["data"] = {"digest": hashlib.sha256(json.dumps(labelled).encode()).hexdigest(), "train": len(splits.train), "val": len(splits.val)}
    if model_choice:  # in the checkpoint: a resumed run's config names the model picked, and ranks nothing
        st["model_choice"] = model_choice
    # L2-SP's reference: the backbone as created, before a resumed run loads weights that have moved
    l2sp_w0 = pretrained_reference(model.named_parameters(), cfg.reg)
    phase_resume = None
    resumed = None  # where a resumed run went on from: metrics.json said nothing of it (its wall time covers this part only)
    if resume:
        reader = ckpt or Checkpointer(Path(out) / "checkpoints")  # every process resumes from the same checkpoint
        saved = reader.load_latest(log=lambda m: console.print(f"[yellow]{m}[/]"))
        if saved is None:
            console.print("no intact checkpoint in the run directory: starting from the beginning")
        else:
            then, now = saved["fit"].get("data"), st.get("data")
            if then and now and then["digest"] != now["digest"]:  # it went on in silence: a run of two datasets, not the one it started as
                sizes = (f"{then['train']} training and {then['val']} validation {inputs.unit} then, {now['train']} and {now['val']} now"
                         if (then["train"], then["val"]) != (now["train"], now["val"]) else f"as many training and validation {inputs.unit}, "
                         "other contents or labels" + (", or another test split" if splits.test is not None else ""))
                raise UserError(f"the data at {cfg.data.path} changed since {out} was checkpointed ({sizes}): a resumed run would not be "
                                f"the run it started as; put the data back as it was, or start over with its settings: "
                                f"transferkit fit --config {Path(out) / 'config.yaml'} --out {out} --overwrite")
            model.load_state_dict(saved["model"])
            st, phase_resume = saved["fit"], saved["phase_state"]
            ps = phase_resume or {}
            done = len(st["history"]) + len(ps.get("history", []))  # earlier phases' epochs and this phase's (as the checkpoint's tag counts)
            where = f"inside epoch {done + 1} (batch {ps['batch']})" if ps.get("batch") else f"after epoch {done}"
            resumed = f"from the checkpoint {where}; wall_s, probe_s and finetune_s cover the resumed part only"
            console.print(f"resuming from the checkpoint {where} (phase {st['phase'] + 1} of {len(phases)})" if st["phase"] < len(phases) else
                          f"resuming from the checkpoint after training ({done} epochs): evaluating, then the --baseline comparison fits")
    model.to(device, memory_format=inputs.memory_format)

    def save_checkpoint(phase_state):
        ckpt.save({"model": model.state_dict(), "fit": st, "phase_state": phase_state}, tag=f"{len(st['history']) + len((phase_state or {}).get('history', [])):04d}")

    with report.progress(console) as prog:
        for i, phase in enumerate(phases):
            if i < st["phase"]:
                continue
            pname = f"{phase.kind}" if len(phases) == 1 else f"{i + 1}:{phase.kind}"
            t0 = time.perf_counter()
            common = dict(epoch_offset=len(st["history"]), step_offset=st["steps"], progress=prog, resume=phase_resume, on_epoch=on_epoch,
                          micro_batches=st.get("micro_batches"), notify=lambda m: console.print(f"[yellow]{m}[/]"), l2sp_reference=l2sp_w0,
                          always_frozen=always_frozen)
            if phase.kind == "probe":
                tf = time.perf_counter()
                ftask = prog.add_task("backbone features", total=len(train_u8) + len(val_u8))

                def feature_step(n):
                    prog.update(ftask, advance=n)
                    stop_now()

                how = dict(device=device, autocast=accelerator.autocast, precision=accelerator.mixed_precision, batch_size=cfg.train.eval_batch_size, progress=feature_step)
                f_train, hit_tr = cached_features(model.backbone, train_u8, inputs.size, **how)
                f_val, hit_va = cached_features(model.backbone, val_u8, inputs.size, **how)
                prog.remove_task(ftask)
                st["feature_cache_hit"] = hit_tr and hit_va
                st["timing"]["features_cached"] = {(True, True): "all", (True, False): "training split only",
                                                   (False, True): "validation split only", (False, False): "none"}[(hit_tr, hit_va)]
                st["timing"]["features_s"] += time.perf_counter() - tf
                data = PhaseData(f_train.to(device), y_train, f_val.to(device), y_val, lambda x, g: x, lambda x: x)
                head_group = [g for g in groups if g.name == "head"]
                common["micro_batches"] = 1  # a linear head on cached features: no memory to save
                res = run_phase(pname, phase, model.head, head_group, data, cfg, accelerator, k, **common)
            else:
                model.train()
                x_train, x_val = train_u8.to(device), val_u8.to(device)
                train_tf, eval_tf = inputs.train_transform(flip), inputs.eval_transform()
                data = PhaseData(x_train, y_train, x_val, y_val, train_tf, eval_tf)
                res = run_phase(
                    pname, phase, model, groups, data, cfg, accelerator, k, model_for_freezing=model,
                    initial_best=st["best"], initial_loss=min((r["val_loss"] for r in st["history"]), default=None),
                    on_checkpoint=save_checkpoint if ckpt else (lambda _s: None) if out is not None else None, should_stop=stop,
                    checkpoint_every_s=cfg.train.checkpoint_minutes * 60 if cfg.train.checkpoint_minutes else None, **common,
                )
                st["timing"]["train_images"] += res.train_images
                st["timing"]["local_images"] = st["timing"].get("local_images", 0) + res.local_images
                st["timing"]["train_seconds"] += res.train_seconds
                st["micro_batches"] = res.micro_batches  # the next phase starts with as many (more, after running out of memory)
            phase_resume = None
            note = _phase_note(pname, phase, res, common["epoch_offset"], had_best=i > 0 and st["best"] is not None, cfg=cfg,
                               prev_loss=st["history"][-1]["train_loss"] if st["history"] else None, kept=st["best_epoch"])
            if note:
                console.print(f"[yellow]{note}[/]")
                st.setdefault("notes", []).append(note)
            st["timing"][f"{phase.kind}_s"] += time.perf_counter() - t0
            if res.best_epoch > common["epoch_offset"]:  # this phase improved on what came before it
                st["best_epoch"] = res.best_epoch
            st["history"] = st["history"] + res.history
            st["lr_trace"] = st["lr_trace"] + [(s_, h, f, pname) for s_, h, f in res.lr_trace]
            st["clipped"] += res.clipped_steps
            st["steps"] += res.steps
            st["best"] = res.best
            st["phase"] = i + 1
            # between phases, and after the last when --baseline fits follow (a stop during them resumes
            # with this model trained)
            if out is not None and (i + 1 < len(phases) or cfg.train.baselines):
                if ckpt is not None:
                    save_checkpoint(None)
                if stop():  # every process asks, the main one after its checkpoint
                    raise StopRequested
    history, lr_trace, timing = st["history"], [tuple(t) for t in st["lr_trace"]], st["timing"]
    steps, clipped, best_epoch = st["steps"], st["clipped"], st["best_epoch"]
    model = accelerator.unwrap_model(model).eval()
    set_trainable(model, groups, {g.name for g in groups}, bn_stats="all")
    if cfg.train.grad_checkpointing and cfg.strategy.name != "linear_probe":  # a training setting: the fitted model computes plainly (predict, export)
        model.backbone.set_grad_checkpointing(False)

    # ---- evaluation, baseline, verdict: on the training device (the model moves to the CPU after), in
    # fp32, as `evaluate` and `predict` compute with the saved model
    autocast = contextlib.nullcontext
    eval_tf = inputs.eval_transform()
    val_logp = predict_proba(model, val_u8.to(device), eval_tf, cfg.train.eval_batch_size, autocast, log=True).cpu()
    # --calibrate none is said as a skip (it left no trace: no line, no key, no sentence in the report)
    calibrated = calibrate_head(model, val_logp, splits.val.labels) if cfg.train.calibrate == "temperature" else {"skipped": "--calibrate none"}
    val_proba = (val_logp / (calibrated or {}).get("temperature", 1.0)).softmax(-1).numpy()  # what the scaled head gives
    metrics = classification_metrics(splits.val.labels, val_proba, splits.classes)
    base_proba, base_name = inputs.baseline(splits.train, train_u8, splits.val, val_u8, cfg.train.seed)
    base = classification_metrics(splits.val.labels, base_proba, splits.classes)
    boot = paired_bootstrap(splits.val.labels, val_proba.argmax(1), base_proba.argmax(1), seed=cfg.train.seed, metric=verdict_metric(cfg))
    wall = time.perf_counter() - t_start
    metrics.update(
        n_train=len(splits.train), n_val=len(splits.val), wall_s=round(wall, 3),
        val_split="given" if splits.val_given else f"stratified {cfg.data.val_fraction:.0%} of the data, seed {cfg.train.seed}",
        best_epoch=best_epoch, selection=f"best validation {cfg.train.metric} over epochs (weights restored)",
        optimizer_steps=steps, micro_batches=st.get("micro_batches", 1), clipped_steps=clipped, clip_fraction=round(clipped / steps, 4) if steps else 0.0,
        baseline={"name": base_name, "accuracy": base["accuracy"], "macro_f1": base["macro_f1"], "auroc": base["auroc"]},
        transfer_vs_baseline=boot, verdict=verdict(boot, base_name, transferred=transferred(model)),
        feature_cache_hit=st["feature_cache_hit"], timing={k: round(v, 3) if isinstance(v, float) else v for k, v in timing.items()},
        device=str(device), precision=accelerator.mixed_precision, modality=inputs.modality, processes=accelerator.num_processes,
    )
    # training throughput, named for what was trained on: train_images_per_s or train_texts_per_s
    metrics[f"train_{'texts' if inputs.modality == 'text' else 'images'}_per_s"] = (
        round(timing["train_images"] / timing["train_seconds"], 1) if timing["train_seconds"] else None)
    if calibrated:
        metrics["temperature_scaling"] = calibrated
    if st.get("model_choice"):
        metrics["model_choice"] = st["model_choice"]
    if resumed:
        metrics["resumed"] = resumed
    if getattr(splits.val, "groups", None) is not None:
        from .metrics import group_metrics

        metrics["groups"] = group_metrics(splits.val.labels, val_proba, splits.val.groups, splits.classes)
    from .mistakes import Mistakes, add_text_evidence, image_mistakes, summary, top_mistakes

    wrong = top_mistakes(splits.val.labels, val_proba, splits.classes, splits.val.sources, getattr(splits.val, "rows", None), name=source_name)
    mistakes = Mistakes(wrong)
    if rundir is not None and inputs.modality == "image":  # thumbnails and Grad-CAM maps: for the run's report
        # Grad-CAM keeps a forward's activations for its backward, as a training step: as many images
        # as a training forward held (fewer after running out of memory)
        cam_batch = -(-cfg.train.batch_size // st.get("micro_batches", 1))
        mistakes = image_mistakes(model, val_u8, wrong, splits.classes, inputs.size, eval_tf, device, cam_batch)
    elif rundir is not None:  # which words pushed the first ones to the wrong class

        def text_proba(texts):
            x = model.backbone.tokenize(texts, inputs.max_length)[0].to(device)
            return predict_proba(model, x, eval_tf, cfg.train.eval_batch_size, autocast).cpu().numpy()

        add_text_evidence(wrong, splits.val.sources, splits.classes, text_proba)
    metrics["mistakes"] = summary(wrong)
    compared = {}  # --baseline scratch / base: the comparison fits' models and verdict labels, by key
    for kind in cfg.train.baselines:
        try:  # a stop: this run's model is in its last checkpoint, and a resume evaluates it and runs the comparisons again
            if stop():
                raise StopRequested
            # abort (encoding, features: no collective there) is asked alone only where one process runs
            add, cmodel, clabel = _comparison_fit(kind, cfg, model, inputs, splits, val_proba, console, base_model, stop,
                                                  should_stop if accelerator.num_processes == 1 else None)
        except StopRequested:
            raise StopRequested(checkpointed=ckpt is not None or (out is not None and not main)) from None
        metrics.update(add)
        compared[kind] = (cmodel, clabel)
    if inputs.modality == "text":
        metrics["truncated_texts"] = inputs.truncated
    if splits.notes or warnings:
        metrics["data_notes"] = list(splits.notes) + warnings
    if st.get("notes"):
        metrics["phase_notes"] = list(st["notes"])
    if test_u8 is not None and len(test_u8):
        test_logp = predict_proba(model, test_u8.to(device), eval_tf, cfg.train.eval_batch_size, autocast, log=True).cpu()
        metrics["test"] = classification_metrics(splits.test.labels, test_logp.softmax(-1).numpy(), splits.classes)
        metrics["n_test"] = len(splits.test)
        if getattr(splits.test, "groups", None) is not None:  # the verdict's split: the groups on it (only validation's were given)
            from .metrics import group_metrics

            metrics["test"]["groups"] = group_metrics(splits.test.labels, test_logp.softmax(-1).numpy(), splits.test.groups, splits.classes)
        if calibrated and "temperature" in calibrated:  # the honest check: examples the temperature was not fitted on
            calibrated["test_before"] = calibration_stats(test_logp * calibrated["temperature"], splits.test.labels)
            calibrated["test_after"] = calibration_stats(test_logp, splits.test.labels)
        test_pred = test_logp.argmax(1).numpy()

        def headline(proba) -> dict:
            return {k: v for k, v in classification_metrics(splits.test.labels, proba, splits.classes).items() if k in ("accuracy", "macro_f1", "auroc")}

        tb = inputs.baseline(splits.train, train_u8, splits.test, test_u8, cfg.train.seed)[0]
        metrics["test"]["baseline"] = headline(tb)
        # the verdict on examples neither training nor the choice of epoch saw; validation's is kept beside it
        tboot = paired_bootstrap(splits.test.labels, test_pred, tb.argmax(1), seed=cfg.train.seed, metric=verdict_metric(cfg))
        metrics.update(validation_verdict=metrics["verdict"], transfer_vs_baseline_validation=metrics["transfer_vs_baseline"],
                       transfer_vs_baseline=tboot, verdict=verdict(tboot, base_name, transferred=transferred(model), split="test"))
        for kind, (cmodel, clabel) in compared.items():  # on the test split too, so that "in short" joins verdicts of one split
            c_proba = predict_proba(cmodel.to(device), test_u8.to(device), eval_tf, cfg.train.eval_batch_size, autocast).cpu().numpy()
            cboot = paired_bootstrap(splits.test.labels, test_pred, c_proba.argmax(1), seed=cfg.train.seed, metric=verdict_metric(cfg))
            metrics["test"][kind] = headline(c_proba)
            metrics.update({f"validation_verdict_{kind}": metrics[f"verdict_{kind}"], f"transfer_vs_{kind}_validation": metrics[f"transfer_vs_{kind}"],
                            f"transfer_vs_{kind}": cboot, f"verdict_{kind}": verdict(cboot, clabel, transferred=transferred(model), split="test")})
    if "verdict_scratch" in metrics or "verdict_base" in metrics:
        metrics["in_short"] = in_short(metrics["verdict"], metrics.get("verdict_scratch"), metrics.get("verdict_base"))
    caveat = _undertrained(history, best_epoch, steps)
    if caveat and verdict_kind(metrics["verdict"]) != "helped":  # "transfer did not help" may only mean "not trained enough"
        metrics["verdict_caveat"] = caveat
    for kind in compared:
        if (c := _comparison_caveat(kind, metrics[kind], metrics[f"verdict_{kind}"])) is not None:
            metrics[f"verdict_{kind}_caveat"] = c
    notes = [_one_class(splits.val.labels, val_proba.argmax(1), splits.classes, "the model", advise=True),
             _one_class(splits.val.labels, base_proba.argmax(1), splits.classes, f"the baseline ({base_name})")]
    notes += [metrics[k].pop("one_class_note", None) for k in compared]  # a comparison fit's, said as the run's
    if any(notes):
        metrics["one_class_notes"] = [n for n in notes if n]

    model = model.cpu()  # a FitResult holds its model on the CPU, as a loaded one is
    if cfg.strategy.name == "lora":
        from .lora import merge_lora

        merge_lora(model.backbone)  # the saved model is a plain backbone: no PEFT needed to load it
    result = FitResult(model, splits.classes, pre, cfg, metrics, history, lr_trace=lr_trace, inputs=inputs, val_proba=val_proba, mistakes=mistakes,
                       train_fingerprints=prints["train"], val_fingerprints=prints["val"], label_values=label_values, warnings=list(warnings))
    if rundir is not None:
        write_run(rundir, result, splits)
        result.run_dir = rundir.path
    report.print_results(console, result)
    return result


FEW_TO_TRAIN = 5  # fewer training examples of a class than this, and the run says so
MIN_CALIBRATION_EXAMPLES = 50  # below this, one example moves the fitted temperature a lot


def calibrate_head(model: TransferModel, val_logp: torch.Tensor, y_val) -> dict:
    """Temperature scaling, baked into the weights: the head's last linear layer is divided by the T
    that minimises the validation NLL, so every later use of the model (predict, evaluate, export, a
    run: backbone) gives the calibrated probabilities with nothing to remember. Returns T and the
    validation ECE / NLL before and after (after is fitted on that split: the test split, when there
    is one, is the honest check)."""
    from .metrics import TEMPERATURE_BOUNDS, fit_temperature

    y = np.asarray(y_val)
    if len(y) < MIN_CALIBRATION_EXAMPLES:
        return {"skipped": f"the validation split has {len(y)} examples; a temperature needs {MIN_CALIBRATION_EXAMPLES} or more"}
    t = fit_temperature(val_logp.numpy(), y)
    if not TEMPERATURE_BOUNDS[0] * 1.01 < t < TEMPERATURE_BOUNDS[1] / 1.01:
        # the NLL still fell at the bound: the validation classes are separated perfectly, which says
        # "sharper forever", not how sharp new data deserves; leave the probabilities as trained
        right = float((val_logp.argmax(1).numpy() == y).mean())
        if t < 1 and right == 1.0:
            why = "every validation example is separated"
        elif t < 1:  # said "separated" of a 45%-accurate model whose top probability was 0.12: far too unsure, not perfect
            why = (f"the model is far too unsure ({int(round(right * len(y)))} of {len(y)} right, the top probability {float(val_logp.exp().max(1).values.mean()):.2f} on average), "
                   "more than a temperature should sharpen: train longer")
        else:
            why = "the model's probabilities carry almost nothing on it (the flattest is best)"
        return {"skipped": f"the validation NLL has no interior minimum (T would be {t:.3g}): {why}"}
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.div_(t)
        if last.bias is not None:
            last.bias.div_(t)
    return {"temperature": t, "fitted_on": "validation", "val_before": calibration_stats(val_logp, y), "val_after": calibration_stats(val_logp / t, y)}


def _phase_note(pname: str, phase, res, offset: int, *, had_best: bool, cfg: RunConfig, prev_loss: float | None = None, kept: int | None = None) -> str | None:
    """What a phase that ended early, or that kept the weights it started from, should say: it
    happened silently (an lp_ft whose fine-tuning diverged reported the probe's score as lp_ft's)."""
    rows = res.history
    ran, improved = len(rows), res.best_epoch > offset
    parts = []
    if rows and rows[-1].get("diverged"):
        parts.append(f"diverged in epoch {rows[-1]['epoch']} (training loss {rows[-1]['train_loss']:.3g}, validation loss {rows[-1]['val_loss']:.3g}): "
                     f"its learning rate ({phase.lr:.2g}) "
                     "is too high, and it ended there" + (f"; the weights of epoch {res.best_epoch} are kept" if improved else ""))
    elif ran < phase.epochs:
        if had_best and not improved and phase.give_up_after and ran >= phase.give_up_after:
            parts.append(f"ended after {ran} of {phase.epochs} epochs: none of its first {phase.give_up_after} beat the probe (--ft-patience)")
        else:
            tie = "" if cfg.train.metric == "loss" or cfg.train.min_delta else f", nor an equal {cfg.train.metric} at a lower loss,"
            parts.append(f"stopped early after {ran} of {phase.epochs} epochs: no better validation {cfg.train.metric}{tie} for {cfg.train.patience} epoch(s) (--patience)")
    if had_best and not improved:
        parts.append(f"no epoch of it beat the phase before, whose weights are kept (best epoch {kept})")
        losses = [r["train_loss"] for r in rows]
        ref = prev_loss if prev_loss is not None else losses[0] if losses else None
        if losses and not rows[-1].get("diverged") and (not all(math.isfinite(v) for v in losses) or max(losses) > 3 * ref):
            parts.append(f"its training loss went to {max(losses):.3g} (from {ref:.3g}): its learning rate ({phase.lr:.2g}) is likely too high")
    label = f"phase {pname.replace(':', ' (')})" if ":" in pname else f"phase 1 ({pname})"
    return f"{label}: " + "; ".join(parts) if parts else None


def _undertrained(history: list[dict], best_epoch: int, steps: int) -> str | None:
    """A caveat when the kept weights are the last epoch's: validation had not stopped improving, so
    the run may have ended before the model was trained, and its verdict may say so rather than
    anything about transfer (a 5-step fine-tune read "NEGATIVE TRANSFER" with nothing to qualify it)."""
    if not history or best_epoch != history[-1]["epoch"]:
        return None
    flag = "--lp-epochs" if "probe" in str(history[-1].get("phase", "")) else "--epochs"  # the phase that ended on its best epoch
    return (f"its last epoch ({best_epoch}) was its best, so validation may still have been improving when training stopped "
            f"({steps} optimizer steps in all): train longer ({flag}) before concluding")


def verdict_metric(cfg: RunConfig) -> str:
    """What the verdicts compare: macro-F1 when the run selects on it (--metric macro_f1, for
    imbalanced classes, where accuracy rewards the majority class), else accuracy."""
    return "macro_f1" if cfg.train.metric == "macro_f1" else "accuracy"


def _one_class(y: np.ndarray, pred: np.ndarray, classes: list[str], who: str, *, advise: bool = False) -> str | None:
    """A note when `who` (the model, the baseline, a comparison fit) predicts one class for every
    validation example of several classes: its accuracy is then the share of that class, whatever a
    verdict built on it says (an imbalanced set, a rate too high or too low, too few epochs)."""
    if len(np.unique(y)) < 2 or len(np.unique(pred)) != 1:
        return None
    c = classes[int(pred[0])]
    return (f"{who} predicts {c!r} for every validation example, so its accuracy ({100 * float(np.mean(y == pred[0])):.1f}%) is the share of {c!r}"
            + (": train longer, try another --lr, or --class-weight balanced for imbalanced classes" if advise else
               "; verdicts against it say little (--metric macro_f1 compares macro-F1)"))


def _comparison_caveat(kind: str, c: dict, verdict_text: str) -> str | None:
    """"Transfer helped" over a comparison fit (`c`: metrics[kind]) whose kept weights are its last
    epoch's may only mean that the comparison was not trained enough: said, as _undertrained says it of the run."""
    if c.get("best_epoch") is None or c["best_epoch"] != c.get("last_epoch") or verdict_kind(verdict_text) != "helped":
        return None
    who = "training from scratch" if kind == "scratch" else "the fine-tune without the source stage"
    return f"{who} ended on its best epoch ({c['best_epoch']}), so it may still have been improving: with more epochs (--epochs) it may close part of the gap"


def transferred(model) -> bool:
    """Whether the backbone came with weights learned elsewhere (not a random initialisation)."""
    return not str(model.backbone.weights_id).startswith("random")


def calibration_stats(logits: torch.Tensor, y) -> dict:
    """ECE and NLL of softmax(logits) (logits or log-probabilities)."""
    from .metrics import calibration

    y = np.asarray(y)
    nll = float(torch.nn.functional.cross_entropy(logits.double(), torch.as_tensor(y, dtype=torch.long)))
    return {"ece": calibration(y, logits.softmax(-1).numpy())["ece"], "nll": nll}


def _base_of(model, cfg: RunConfig) -> tuple[str, str | None]:
    """For `--baseline base`: the model (name, arch) that the run:DIR given as --model started from,
    before its source stage; a UserError when there is none to compare with."""
    if not cfg.model.name.startswith("run:"):
        raise UserError(
            f"--baseline base fine-tunes the model a run:DIR started from, to show whether that run's source stage helped; "
            f"--model {cfg.model.name} is not a run (use --model run:DIR, or --baseline scratch)"
        )
    from .backbones import create_backbone

    spec = model.backbone.spec  # the architecture the run was built on, as first named (under any run: stages)
    try:
        base = create_backbone(spec["name"], arch=spec.get("arch"))  # built now: missing or unloadable, said before training
    except UserError as e:
        raise UserError(f"--baseline base: the model {cfg.model.name[len('run:'):]} started from cannot be loaded here: {e}") from None
    from .backbones.run import run_meta

    started = str(run_meta(cfg.model.name[len("run:"):]).get("weights_id", "")).removeprefix("adapted:")
    if started.startswith("sha256:") and base.weights_id != started:  # a file: path read again elsewhere, or replaced since
        raise UserError(f"--baseline base: {spec['name']} is not the file {cfg.model.name[len('run:'):]} started from (its sha256 differs; "
                        f"a relative path is read from the current folder, {Path.cwd()})")
    if str(base.weights_id).startswith("random"):
        raise UserError(
            f"--baseline base: {cfg.model.name[len('run:'):]} started from random weights ({spec.get('name')}), so fine-tuning its base model "
            "is training from scratch: use --baseline scratch"
        )
    return spec["name"], spec.get("arch")


def _comparison_fit(kind: str, cfg: RunConfig, model, inputs, splits, val_proba, console, base_model: tuple[str, str | None] | None,
                    stop=None, abort=None) -> tuple[dict, TransferModel, str]:
    """A second fit on the same split, compared with this run's on the same validation examples by a
    paired bootstrap; returns (metrics to add, its model, its label in the verdict).
    scratch: the same architecture from random weights, the same data and epochs (strategy full, the
    default rate for it). base: the same recipe (strategy, rates, epochs) from the model that the
    run:DIR given as --model started from (`base_model`, from `_base_of`), so without that run's source stage.
    `stop()` turning true stops it (StopRequested, nothing of it kept: it starts again on resume);
    `abort()`, asked while it encodes, stops it there."""
    from .backbones import scratch_name
    from .config import replace

    n = cfg.train.epochs
    if kind == "scratch":
        name = scratch_name(cfg.model.name, cfg.model.arch, model.backbone.spec)
        ccfg = replace(cfg, model=name, baseline="none")
        ccfg.optim.lr = None  # the default rate for training the whole network, not the rate chosen for transfer
        # full training with its defaults: none of the transfer recipe's strategy settings (layer
        # decay, frozen parameters or statistics), and no L2-SP, which would pull the random weights
        # toward themselves (at --l2sp-alpha 100 the scratch fit sat at chance, and "transfer helped +45")
        ccfg = dataclasses.replace(ccfg, strategy=StrategyConfig(name="full"), reg=dataclasses.replace(ccfg.reg, l2sp_alpha=0.0))
        console.print(f"baseline: training {name} from scratch (full, {n} epoch{'s' if n != 1 else ''}) on the same split")
    else:
        name, arch = base_model
        ccfg = replace(cfg, model=name, arch=arch, baseline="none")
        console.print(f"baseline: fine-tuning {name}, the model {cfg.model.name[len('run:'):]} started from, with the same recipe "
                      f"({cfg.strategy.name}) on the same split")
    if inputs.modality == "image":  # at this run's input size (a run: model's may differ from its architecture's default)
        ccfg.data.input_size = inputs.size
    rs = fit(ccfg, None, console=report.console(quiet=True), splits=splits, should_stop=stop, should_abort=abort)
    sm = rs.metrics
    boot = paired_bootstrap(splits.val.labels, val_proba.argmax(1), rs.val_proba.argmax(1), seed=cfg.train.seed, metric=verdict_metric(cfg))
    steps = f"{sm['optimizer_steps']} optimizer steps"
    label = (f"training from scratch ({name}, {n} epoch{'s' if n != 1 else ''}, {steps})" if kind == "scratch"
             else f"fine-tuning {name} without the source stage ({cfg.strategy.name}, {steps})")
    return {
        kind: {"model": name, "accuracy": sm["accuracy"], "macro_f1": sm["macro_f1"], "auroc": sm["auroc"], "wall_s": sm["wall_s"],
               "best_epoch": sm.get("best_epoch"), "last_epoch": rs.history[-1]["epoch"] if rs.history else None,
               "one_class_note": _one_class(splits.val.labels, rs.val_proba.argmax(1), splits.classes, f"the {kind} comparison fit ({name})")},
        f"transfer_vs_{kind}": boot, f"verdict_{kind}": verdict(boot, label, transferred=transferred(model)),
    }, rs.model, label


# ------------------------------------------------------------------------------------------ saving


TEXT_ASSETS = "text_model"  # sub-folder of a text run: the backbone's config.json and tokenizer files


def model_meta(model: TransferModel, classes: list[str], inputs, cfg: RunConfig, label_values: dict | None = None) -> dict:
    """model.json; `label_values`: fit(X, y)'s labels by class name, where JSON keeps their type
    (ints, floats, booleans; strings need nothing)."""
    plain = label_values and all(isinstance(v, (bool, int, float, str)) for v in label_values.values())
    return {
        "format": "transferkit-model/1",
        "transferkit_version": __version__,
        "modality": inputs.modality,
        "backbone": model.backbone.spec,
        "weights_id": model.backbone.weights_id,
        "head": {"kind": cfg.model.head, "hidden": cfg.model.head_hidden, "dropout": cfg.model.head_dropout},
        "classes": classes,
        **({"label_values": [label_values.get(c, c) for c in classes]} if plain else {}),
        **inputs.meta(),
    }


def model_bytes(model: TransferModel) -> bytes:
    """The model's weights as model.safetensors holds them."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def write_model(rundir: RunDir, model: TransferModel, meta: dict) -> None:
    import tempfile

    rundir.write_bytes("model.safetensors", model_bytes(model))
    if meta["modality"] == "text":
        with tempfile.TemporaryDirectory() as tmp:
            model.backbone.save_assets(Path(tmp))
            for f in sorted(Path(tmp).iterdir()):
                rundir.write_bytes(f"{TEXT_ASSETS}/{f.name}", f.read_bytes())
    rundir.write_json("model.json", meta)


def write_run(rundir: RunDir, r: FitResult, splits: DataSplits) -> None:
    from . import plots

    write_model(rundir, r.model, model_meta(r.model, r.classes, r.inputs, r.config, r.label_values))
    rundir.write_json("metrics.json", r.metrics)
    buf = io.StringIO()
    cols = ["epoch", "phase", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "trainable_groups", "seconds"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows({k: h[k] for k in cols} for h in r.history)
    rundir.write_text("history.csv", buf.getvalue())
    # the rate of every optimizer step, as lr.png draws it (it was in the picture only)
    lr_rows = ["step,phase,head_lr,lowest_trained_lr"] + [f"{s_},{ph},{h!r},{'' if f is None else repr(f)}" for s_, h, f, ph in r.lr_trace]
    rundir.write_text("lr.csv", "\n".join(lr_rows) + "\n")
    figures = {
        "curves.png": lambda: plots.curves_figure(r.history, r.metrics.get("best_epoch"),
                                                  None if r.metrics.get("precision") in (None, "no", "fp32") else r.metrics.get("accuracy")),
        "confusion_matrix.png": lambda: plots.confusion_figure(r.metrics["confusion_matrix"], r.classes),
        "reliability.png": lambda: plots.reliability_figure(r.metrics["calibration"]),
        "lr.png": lambda: plots.lr_figure(r.lr_trace),
    }
    mis = r.mistakes
    if mis is not None:
        from .mistakes import to_csv

        rundir.write_text("mistakes.csv", to_csv(mis.rows))
        if mis.thumbs is not None:
            figures["mistakes.jpg"] = lambda: plots.mistakes_figure(mis.thumbs, mis.cams, mis.rows, mis.cam_note)
    pngs = {}
    for name, make in figures.items():
        fig = make()
        pngs[name] = rundir.write_figure(name, fig).read_bytes()
        plots.close(fig)
    data = {"source": splits.source, "classes": r.classes, "train": splits.train.counts(), "val": splits.val.counts(),
            **({"test": splits.test.counts()} if splits.test is not None else {})}
    rundir.write_json("data.json", data)
    write_fingerprints(rundir, r.train_fingerprints, r.val_fingerprints)
    from .report import kept_line
    from .report_html import render

    title = f"transferkit: {r.config.model.name} on {splits.source}"
    kept = kept_line(r.metrics, r.history, r.config.train.metric, r.config.train.min_delta)  # as the terminal says it: why a curve's score is not the table's
    rundir.write_text("report.html", render(title=title, metrics=r.metrics, config=r.config.to_dict(), data=data, figures=pngs, kept=kept))
    rundir.finalize()
    shutil.rmtree(rundir.path / "checkpoints", ignore_errors=True)  # complete: nothing left to resume


FINGERPRINTS = "train_fingerprints.json"  # evaluate leaves out the examples the run trained on, wherever they lie


def write_fingerprints(rundir: RunDir, train, val) -> None:
    """The training and validation splits' fingerprints (data.fingerprints), as load_fingerprints reads them."""
    rundir.write_json(FINGERPRINTS, {"hash": "blake2b-64", "train": list(train), "val": list(val)})


def load_fingerprints(path: str | Path) -> tuple[set[str] | None, set[str]]:
    """The training and validation splits' fingerprints a run directory keeps; (None, empty) for a
    run made before runs kept them."""
    import json

    try:
        d = json.loads((Path(path) / FINGERPRINTS).read_text())
        return {f for f in d["train"] if f}, {f for f in d.get("val", []) if f}
    except (OSError, ValueError, KeyError, TypeError):
        return None, set()


def load_model(path: str | Path) -> tuple[TransferModel, dict]:
    """Rebuild a saved model (architecture from model.json, weights from model.safetensors)."""
    from safetensors.torch import load_file

    from .backbones import create_backbone
    from .model import create_head
    from .rundir import require_finished

    p = Path(path)
    if not p.is_dir():
        raise UserError(f"run directory not found: {p}")
    require_finished(p)
    meta = json.loads((p / "model.json").read_text())
    spec = dict(meta["backbone"])
    if meta.get("modality") == "text":
        from .backbones.text import from_saved

        backbone = from_saved(p / TEXT_ASSETS, spec)
    else:
        backbone = create_backbone(spec.pop("name"), arch=spec.pop("arch", None), pretrained=False)
    head = meta["head"]
    model = TransferModel(backbone, create_head(head["kind"], backbone.num_features, len(meta["classes"]), hidden=head["hidden"], dropout=head["dropout"]))
    model.load_state_dict(load_file(str(p / "model.safetensors")))
    backbone.weights_id = meta.get("weights_id", backbone.weights_id)
    return model.eval(), meta


__all__ = ["fit", "FitResult", "load_model", "Group"]
