"""`transferkit` command line: a thin layer over the Python functions.

Exit codes: 0 success, 2 a mistake in the input (a one- or two-line message, no traceback),
130 interrupted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from pathlib import Path

from .config import FLAT, RunConfig, load_config_file, replace
from .errors import COMMAND_LINE, UserError, first_process

# CLI flag -> flat setting name (FLAT maps those to section.field). Help texts come from here.
FIT_FLAGS: list[tuple[str, str, type, str]] = [
    ("--data", "data", str, "images: folder of class subfolders, folder with train/ val/ [test/], CSV with path,label, or 'digits'; "
     "text: a CSV/TSV with a text and a label column, or a folder with train/ val|dev/ [test] files"),
    ("--model", "model", str, "backbone: a name from `transferkit models`, timm:NAME, tv:NAME, file:PATH (with --arch), run:DIR (an earlier run), random:NAME (no pretrained weights), auto (ranked by transferability); text: minilm_l6, hf:NAME, dir:PATH"),
    ("--arch", "arch", str, "architecture of a file:PATH checkpoint (registered or timm name)"),
    ("--candidates", "candidates", str, "--model auto: comma-separated models to rank (default efficientnet_lite0,1,2)"),
    ("--rank-score", "rank_score", str, "--model auto: transferability score that picks (default logme)"),
    ("--strategy", "strategy", str, "linear_probe | full | partial | gradual | lp_ft | lora (default lp_ft); see `transferkit strategies`"),
    ("--k", "k", int, "partial: train the last k backbone block groups"),
    ("--unfreeze-every", "unfreeze_every", int, "gradual: unfreeze one more block group every N epochs"),
    ("--layer-decay", "layer_decay", float, "discriminative rates: each group down from the head gets lr x this"),
    ("--layer-lr-min", "layer_lr_min", float, "discriminative rates: geometric from this (first group) to --lr (head); lp_ft fine-tunes both ends x --ft-lr-scale"),
    ("--bn-stats", "bn_stats", str, "BatchNorm statistics: auto (frozen for lp_ft and lora, else trainable) | frozen | trainable | all"),
    ("--freeze", "freeze", str, "comma-separated regexes of parameter names to keep frozen"),
    ("--epochs", "epochs", int, "fine-tuning epochs (default 8; linear_probe trains --lp-epochs on cached features instead)"),
    ("--batch-size", "batch_size", int, "training batch size (default 32)"),
    ("--accumulate", "accumulate", int, "forward each batch in this many micro-batches, adding up gradients: same steps, less memory (default 1)"),
    ("--lr", "lr", float, "base learning rate (default 1e-3; 1e-4 for full/partial/gradual on text; lp_ft fine-tunes at lr x ft_lr_scale)"),
    ("--seed", "seed", int, "random seed for the split, initialisation and augmentation (default 0)"),
    ("--optimizer", "optimizer", str, "adamw | adam | sgd"),
    ("--weight-decay", "weight_decay", float, "weight decay: decoupled with adamw, coupled L2 with adam and sgd (as torch does); not on biases and norm weights"),
    ("--schedule", "schedule", str, "constant | step | multistep | exponential | linear | cosine | onecycle"),
    ("--warmup-epochs", "warmup_epochs", float, "linear warmup length in epochs, in front of any schedule"),
    ("--min-lr-ratio", "min_lr_ratio", float, "cosine / linear: decay toward lr x this (the rate at the end of the run; its last step is just above)"),
    ("--step-size", "step_size", float, "step: epochs between decays"),
    ("--gamma", "gamma", float, "step / multistep: decay factor in (0, 1]"),
    ("--milestones", "milestones", str, "multistep: comma-separated epochs"),
    ("--decay-rate", "decay_rate", float, "exponential: factor per decay_steps, in (0, 1]"),
    ("--decay-steps", "decay_steps", int, "exponential: optimizer steps per decay_rate factor"),
    ("--pct-start", "pct_start", float, "onecycle: fraction of steps rising"),
    ("--momentum", "momentum", float, "SGD momentum"),
    ("--clip-value", "clip_value", float, "clip each gradient element to [-v, v]"),
    ("--clip-norm", "clip_norm", float, "clip the global gradient norm to this"),
    ("--l1", "l1", float, "L1 penalty on weights"),
    ("--l2", "l2", float, "explicit L2 penalty on weights (coupled; see --weight-decay for decoupled)"),
    ("--l2sp-alpha", "l2sp_alpha", float, "L2-SP: pull the backbone toward its pretrained weights"),
    ("--l2sp-beta", "l2sp_beta", float, "L2-SP: L2 on the head"),
    ("--patience", "patience", int, "early stopping after this many epochs without improvement"),
    ("--metric", "metric", str, "selection / early-stopping metric: accuracy | macro_f1 | loss"),
    ("--min-delta", "min_delta", float, "smallest change that counts as an improvement"),
    ("--class-weight", "class_weight", str, "none | balanced"),
    ("--sampler", "sampler", str, "shuffle | balanced"),
    ("--label-smoothing", "label_smoothing", float, "label smoothing of the cross-entropy loss"),
    ("--head", "head", str, "linear | mlp"),
    ("--head-hidden", "head_hidden", int, "hidden units of the mlp head"),
    ("--head-dropout", "head_dropout", float, "dropout in the head"),
    ("--lp-epochs", "lp_epochs", int, "linear-probe epochs on cached features"),
    ("--ft-lr-scale", "ft_lr_scale", float, "lp_ft: fine-tuning lr as a fraction of --lr"),
    ("--ft-patience", "ft_patience", int, "lp_ft: end fine-tuning when none of its first N epochs beats the probe's --metric or loss (default 3; 0: always every epoch)"),
    ("--val-fraction", "val_fraction", float, "validation fraction when the data has no val split"),
    ("--input-size", "input_size", int, "override the backbone's input size"),
    ("--test-fraction", "test_fraction", float, "data without a test split: hold out this fraction of each class as one, scored once at the end"),
    ("--shots", "shots", int, "train on N examples per class (stratified, seeded); validation stays whole"),
    ("--text-column", "text_column", str, "text: the column holding the text (detected if not given)"),
    ("--label-column", "label_column", str, "the column holding the label (detected if not given)"),
    ("--delimiter", "delimiter", str, "CSV/TSV data (texts, or image path,label rows): field delimiter (',', 'tab', ';', '|'; detected if not given)"),
    ("--encoding", "encoding", str, "CSV / TSV files: auto (UTF-8, or UTF-16 with a BOM) or a codec such as latin-1"),
    ("--group-column", "group_column", str, "CSV/TSV data: a column of groups (site, device, ...): metrics per group and the worst group"),
    ("--max-length", "max_length", int, "text: tokens per text, longer ones are cut (default 128)"),
    ("--pooling", "pooling", str, "text: mean | cls (first token, BERT's [CLS]) | last (last token, for GPT-style causal models)"),
    ("--lora-r", "lora_r", int, "lora: adapter rank (default 8)"),
    ("--lora-alpha", "lora_alpha", float, "lora: scaling alpha (default 16)"),
    ("--lora-dropout", "lora_dropout", float, "lora: dropout on the adapter input (default 0.1)"),
    ("--lora-targets", "lora_targets", str, "lora: comma-separated module names to adapt (default: the attention query and value projections, found by model family)"),
    ("--crop-scale-min", "crop_scale_min", float, "smallest area fraction of the random resized crop"),
    ("--precision", "precision", str, "auto | bf16 | fp16 | no (or fp32)"),
    ("--ema", "ema", float, "fine-tuning: validate and keep an exponential moving average of the weights with this decay (e.g. 0.99; warmup on; default 0: off)"),
    ("--calibrate", "calibrate", str, "temperature (default): divide the head by the validation-fitted temperature, so probabilities match accuracy; none: leave it"),
    ("--baseline", "baseline", str, "scratch: also train the same architecture from random weights (full, same epochs); base (with --model run:DIR): "
     "also fine-tune the model that run started from, same recipe (did its source stage help?); scratch,base: both. Verdicts compare with each"),
    ("--checkpoint-minutes", "checkpoint_minutes", float, "also checkpoint inside epochs longer than this many minutes (default 10; 0: at the end of each epoch only)"),
]
BOOL_FLAGS: list[tuple[str, str, object, str]] = [
    ("--no-augment", "augment", False, "switch off training augmentation"),
    ("--no-flip", "flip", False, "no horizontal flips"),
    ("--group-by-length", "group_by_length", True, "texts: batches of texts of similar length, which pad less (about 2x faster training on a CPU)"),
    ("--skip-bad-images", "skip_bad_images", True, "leave out unreadable images instead of failing"),
    ("--cpu", "cpu", True, "use the CPU even when a GPU is present"),
    ("--grad-checkpointing", "grad_checkpointing", True, "recompute activations in the backward pass: less memory, more compute (timm and Hugging Face models)"),
    ("--staircase", "staircase", True, "exponential: decay in discrete jumps"),
    ("--no-nesterov", "nesterov", False, "SGD without Nesterov momentum"),
]


def _opposite(flag: str) -> str:
    return "--" + flag[5:] if flag.startswith("--no-") else "--no-" + flag[2:]


def _add_fit_flags(p: argparse.ArgumentParser) -> None:
    for flag, name, typ, help_ in FIT_FLAGS:
        p.add_argument(flag, dest=name, type=typ, default=None, help=help_)
    for flag, name, const, help_ in BOOL_FLAGS:
        p.add_argument(flag, dest=name, action="store_const", const=const, default=None, help=help_)
        # its opposite, to undo a --config file's `staircase: true` or `nesterov: false` (flags override the file)
        p.add_argument(_opposite(flag), dest=name, action="store_const", const=not const, default=None, help=argparse.SUPPRESS)
    p.add_argument("--config", type=str, default=None, help="YAML file with any of these settings (flags override it; each on/off flag "
                   "has its opposite to undo the file's: --augment, --flip, --no-staircase, --nesterov, --no-cpu, ...)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _names_data(args: argparse.Namespace) -> bool:
    """Whether --data or the --config file names the data (else the built-in default, digits, would
    train unasked)."""
    if args.data is not None:
        return True
    if not args.config:
        return False
    from .config import read_yaml

    raw = read_yaml(args.config)
    return isinstance(raw, dict) and "data" in raw and (not isinstance(raw["data"], dict) or "path" in raw["data"])


def resolve_config(args: argparse.Namespace) -> RunConfig:
    base = load_config_file(args.config) if args.config else RunConfig()
    names = [n for _, n, _, _ in FIT_FLAGS] + [n for _, n, _, _ in BOOL_FLAGS]
    assert all(n in FLAT for n in names)
    return replace(base, **{n: getattr(args, n) for n in names})


def cmd_fit(args) -> int:
    if args.resume:
        run = Path(args.resume)
        if not (run / "config.yaml").is_file():
            raise UserError(f"{run} is not a transferkit run directory (no config.yaml)")
        given = (sorted(_given_settings(args) - {"cpu"}) + (["config"] if args.config else []) + (["out"] if args.out is not None else [])
                 + (["overwrite"] if args.overwrite else []))
        if given:  # they were ignored in silence: the run went on as its config.yaml says
            raise UserError(f"--resume continues {run} with the settings in its config.yaml, which {', '.join(_flag_of(n) for n in given)} "
                            f"would not change: drop {'it' if len(given) == 1 else 'them'}, or start a new run (--out NEW_DIR) with them")
        cfg, out = load_config_file(run / "config.yaml"), run
        from .data import is_builtin

        if cfg.data.path and not is_builtin(cfg.data.path) and not Path(cfg.data.path).exists():  # "data not found", then --data refused
            raise UserError(f"the data of {run}, {cfg.data.path}, is not there any more (moved or deleted): --resume reads it from where "
                            f"the run started, so put it back there (its content is checked against the checkpoint), or start over: "
                            f"transferkit fit --config {run / 'config.yaml'} --data NEW_PATH --out {run} --overwrite")
        if args.cpu:  # where it runs, not what it trains: a run from a GPU machine goes on on a CPU
            cfg = replace(cfg, cpu=True)
    else:
        if args.out is None:
            raise UserError("fit needs --out RUN_DIR (or --resume RUN_DIR)")
        cfg, out = resolve_config(args), args.out
        if not _names_data(args):
            raise UserError("fit needs --data (a folder, a CSV, or 'digits')" + (f"; {args.config} names no data" if args.config else ""))
    cfg.validate()  # a bad setting is named before PyTorch loads (about 2 s)
    if not args.resume:
        _note_unused(cfg, args)
    from . import report
    from .fit import fit
    from .trainer import StopRequested

    signals = _StopOnSignal()
    try:
        with signals:
            fit(cfg, out, overwrite=args.overwrite, console=report.console(quiet=args.quiet), resume=bool(args.resume), should_stop=signals, should_abort=signals)
    except StopRequested as e:
        code = 128 + (signals.signum or 15)  # no signal here: another process had one (torchrun sends SIGTERM)
        if not first_process():  # the others stopped with it, at the same step; the first process speaks for all
            return code
        name = signals.name or "a signal to another process"
        world = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE", "1") or 1)  # launched as it ran (per node)
        again = f"torchrun --nproc_per_node {world} -m transferkit.cli fit --resume {out}" if world > 1 else f"transferkit fit --resume {out}"
        if e.checkpointed:
            print(f"transferkit: stopped by {name}; checkpoint written. Resume with:\n  {again}", file=sys.stderr)
        elif (Path(out) / "config.yaml").is_file():
            print(f"transferkit: stopped by {name} before training began. Start again with:\n  {again}", file=sys.stderr)
        else:
            print(f"transferkit: stopped by {name} before the run began; nothing was written to {out}", file=sys.stderr)
        return code
    if signals.signum and first_process():  # after training, the rest (evaluation, writing) takes seconds: it finished
        print(f"transferkit: {signals.name} came after training had ended: the run finished anyway and is complete in {out}", file=sys.stderr)
    return 0


class _StopOnSignal:
    """First Ctrl-C / SIGTERM: finish the current step, checkpoint, exit 130 / 143. Second: stop now."""

    def __init__(self, then: str = "after a checkpoint once training has begun"):
        self.signum = 0
        self.name = ""
        self.then = then  # what stopping does, said when the signal comes

    def __call__(self) -> bool:
        return bool(self.signum)

    def _handle(self, signum, frame):
        import signal

        if self.signum:
            raise KeyboardInterrupt
        self.signum, self.name = signum, signal.Signals(signum).name
        if first_process():  # torchrun signals every process; one says so
            print(f"\ntransferkit: {self.name} received: stopping at the next safe point, {self.then} (again to stop at once)", file=sys.stderr)

    def __enter__(self):
        import signal

        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        import signal

        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def cmd_demo(args) -> int:
    from . import report
    from .fit import fit
    from .metrics import verdict_kind

    con = report.console(quiet=args.quiet)
    con.print(
        "[bold]transferkit demo[/]: EfficientNet-Lite0 (ImageNet weights, installed with transferkit) on scikit-learn's "
        "8x8 handwritten digits, linear probe on cached features, next to a logistic regression on the raw pixels."
    )
    cfg = replace(RunConfig(), data="digits", model="efficientnet_lite0", strategy="linear_probe", flip=False)
    r = fit(cfg, args.out, overwrite=True, console=con)
    m = r.metrics
    b = m["baseline"]
    helped = verdict_kind(m["verdict"]) == "helped"
    con.print(
        f"\n[bold]demo verdict[/]: EfficientNet-Lite0 features {100 * m['accuracy']:.1f}% vs raw pixels {100 * b['accuracy']:.1f}%: "
        + ("transfer helped here." if helped else "[bold]transfer did not help here[/].")
        + f" ({m['verdict']})\n"
        "Tiny grey 8x8 digits look nothing like the ImageNet photos the backbone learned from, so its features add little "
        "that a linear model on the pixels does not already have. transferkit shows this instead of hiding it: "
        "on photos (ants vs bees, for example) the same backbone beats the pixel baseline by 40 points."
    )
    return 0


def cmd_models(args) -> int:
    from .backbones import BACKBONES

    rows = [(n, BACKBONES.help(n)) for n in BACKBONES.names()]
    if args.json:
        print(json.dumps(dict(rows), indent=2))
        return 0
    w = max(len(n) for n, _ in rows)
    for n, h in rows:
        print(f"{n:<{w}}  {h}")
    print(f"{'timm:NAME':<{w}}  any timm model, pretrained through timm's hub (needs internet)")
    print(f"{'tv:NAME[.WEIGHTS]':<{w}}  a torchvision classification model (tv:resnet50, tv:resnet50.IMAGENET1K_V2), weights through torch's hub cache")
    print(f"{'file:PATH':<{w}}  a local .safetensors / .pt / .pth / .th / .bin / .ckpt / .pth.tar checkpoint, with --arch NAME")
    print(f"{'random:NAME':<{w}}  the architecture NAME with random weights (training from scratch; a ranking control)")
    print(f"{'hf:NAME':<{w}}  text: a Hugging Face encoder by hub name (needs internet, or HF_HUB_OFFLINE=1 and its cache)")
    print(f"{'dir:PATH':<{w}}  text: a local Hugging Face model folder (config, weights, tokenizer)")
    print(f"{'run:RUN_DIR':<{w}}  the backbone of an earlier transferkit run (or of `transferkit adapt`), images or text")
    print(f"{'auto':<{w}}  rank --candidates by a transferability score and fine-tune the best")
    return 0


def cmd_list(registry):
    def run(args) -> int:
        rows = [(n, registry.help(n)) for n in registry.names()]
        w = max(len(n) for n, _ in rows)
        for n, h in rows:
            print(f"{n:<{w}}  {h}")
        return 0

    return run


def _encoding(value: str) -> str:
    """--encoding of predict, evaluate and adapt: refused at once when Python knows no such codec."""
    from .config import known_encoding

    if not known_encoding(value):
        raise argparse.ArgumentTypeError(f"unknown encoding {value!r} (try utf-8, utf-16, latin-1, cp1252)")
    return value


def cmd_evaluate(args) -> int:
    from .api import ImageClassifier

    if args.mistakes is not None:
        from .rundir import refuse_run_file, refuse_unwritable_file

        refuse_unwritable_file(args.mistakes, f"--mistakes {args.mistakes}")
        refuse_run_file(args.mistakes, "--mistakes")
    clf = ImageClassifier.load(args.run_dir)  # an ImageClassifier or a TextClassifier, as the run is
    _refuse_other_modality(args, clf)
    if args.encoding is not None:  # this data's, not the encoding of the data the run was fitted on
        clf.config_ = replace(clf.config_, encoding=args.encoding)
    given = {k: getattr(args, k) for k in ("text_column", "label_column", "delimiter") if getattr(args, k) is not None}
    if given:  # this data's columns (QA AP: a test file whose columns the run's names miss could not be scored)
        clf.config_ = replace(clf.config_, **given)
    if args.onnx is not None:
        from .evaluate import evaluate_model
        from .export import load_export

        m = evaluate_model(clf, args.data, mistakes_csv=args.mistakes, onnx_session=load_export(args.run_dir, args.onnx or None),
                           skip_bad_images=args.skip_bad_images)
    else:
        m = clf.evaluate(args.data, mistakes_csv=args.mistakes, skip_bad_images=args.skip_bad_images)
    _say_skipped(m.get("skipped") or [])
    if m.get("texts_cut"):
        _say_cut(m["texts_cut"]["n"], m["n"], m["texts_cut"]["max_length"])
    if args.json:
        print(json.dumps(m, indent=2))
    else:
        auroc = f"{m['auroc']:.4f}" if m["auroc"] is not None else "n/a"
        print(f"{m['data']}: {m['n']} {clf.inputs_.unit}, accuracy {100 * m['accuracy']:.2f}%, macro-F1 {m['macro_f1']:.4f}, AUROC {auroc}{_absent_note(m)}")
        from .metrics import fmt

        for c, v in m["per_class"].items():
            print(f"  {c}: precision {fmt(v['precision'])}, recall {fmt(v['recall'])}, support {v['support']}")
        if "groups" in m:  # the run's --group-column, where this data has it
            g = m["groups"]
            from .metrics import worst_group_text

            print(f"groups ({clf.config_.data.group_column}): {worst_group_text(g)}")
            for name, v in g["per_group"].items():
                print(f"  {name}: accuracy {100 * v['accuracy']:.2f}%, macro-F1 {v['macro_f1']:.4f}, n {v['n']}")
        mk = m["mistakes"]
        if mk["count"]:
            print(f"{mk['count']} wrong; the most confident" + (f" (all {mk['count']} in {args.mistakes}):" if args.mistakes else " (--mistakes FILE.csv lists all):"))
            for r in mk["most_confident"][:5]:
                src = " ".join(r["source"].split())
                print(f"  {r['true']} -> {r['predicted']} ({r['p_predicted']:.2f}): {src if len(src) <= 100 else src[:97] + '...'}")
    return 0


def _refuse_other_modality(args, clf) -> None:
    """predict's and evaluate's flags for the other kind of model: said, not ignored."""
    if args.skip_bad_images and clf.inputs_.modality == "text":
        raise UserError(f"{args.run_dir} is a text model: --skip-bad-images is for image models")
    if args.text_column is not None and clf.inputs_.modality != "text":
        raise UserError(f"{args.run_dir} is an image model: --text-column is for text models")
    data = getattr(args, "data", None)  # evaluate's; an image CSV's delimiter is detected, or read as given
    if getattr(args, "delimiter", None) is not None and clf.inputs_.modality != "text" and not (data and str(data).lower().endswith(".csv")):
        raise UserError(f"--delimiter reads a CSV of path,label rows; {data} is not a CSV")


def _say_skipped(problems: list[str]) -> None:
    """--skip-bad-images: which images were left out (the first 10), on standard error."""
    if problems:
        print(f"left out {len(problems)} unreadable image(s):\n  " + "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else ""), file=sys.stderr)


def cmd_predict(args) -> int:
    import csv

    import numpy as np

    from .api import ImageClassifier

    if args.out is not None:  # before any work, not after it
        from .rundir import refuse_run_file, refuse_unwritable_file

        refuse_unwritable_file(args.out, f"--out {args.out}", "a CSV (or .json) file")
        refuse_run_file(args.out, "--out")
    clf = ImageClassifier.load(args.run_dir)  # an ImageClassifier or a TextClassifier, as the run is
    _refuse_other_modality(args, clf)
    if args.explain is not None:
        if args.onnx is not None and clf.inputs_.modality == "image":
            raise UserError("--explain draws Grad-CAM maps, which need the model's gradients; the ONNX export does not give them: drop --onnx")
        if Path(args.explain).is_file() or not Path(args.explain).parent.is_dir():
            raise UserError(f"--explain {args.explain}: give a folder to write into (its parent must exist)")
    proba_of = _proba
    if args.onnx is not None:
        from .export import load_export, onnx_predict_proba

        session = load_export(args.run_dir, args.onnx or None)
        proba_of = lambda c, x: onnx_predict_proba(session, c, x)  # noqa: E731
    if args.inputs.count("-") > 1:
        raise UserError("predict: - (standard input) given more than once")
    stdin = _read_stdin() if "-" in args.inputs else None
    if stdin is not None and clf.inputs_.modality == "image":  # `ls photos/*.jpg | transferkit predict RUN -`: one path a line
        at = args.inputs.index("-")
        args.inputs[at:at + 1] = [line.strip() for line in stdin.decode("utf-8", "replace").splitlines() if line.strip()]
        stdin = None
    args.inputs = _expand_patterns(args.inputs)
    if args.out is not None:  # QA AM: `--out photo.jpg` replaced the photo being predicted with CSV text
        target = Path(args.out).resolve()
        if any(Path(item).resolve() == target for item in args.inputs):
            raise UserError(f"--out {args.out} is one of the inputs: give another file to write the predictions to")
        if Path(args.out).is_file() and Path(args.out).suffix.lower() not in (".csv", ".tsv", ".json", ".txt"):
            raise UserError(f"--out {args.out} exists and is not a CSV or JSON file: it would be replaced by the predictions; give a .csv or .json name")
    if clf.inputs_.modality == "text":
        from .text_data import read_text_rows

        if args.text_column is not None and not args.inputs:  # it was ignored in silence
            raise UserError("--text-column names the column of a CSV/TSV input; --text gives the texts themselves")
        where = [("--text", i) for i in range(1, len(args.text or []) + 1)]  # (file, row) of each text, to join the output back
        texts = list(args.text or [])
        for item in args.inputs:
            if item == "-":  # texts piped in, one a line, read as a text file is; a table (CSV/TSV) with --text-column
                rows = _stdin_rows(stdin, args.encoding, args.text_column)
                where += [("-", i) for i, _ in rows]
                texts += [t for _, t in rows]
                continue
            if Path(item).is_dir():
                raise UserError(f"{item} is a folder: a text model's predict takes files of texts (one per line, or a CSV/TSV with a text column)")
            if not Path(item).is_file():
                raise UserError(f"not found: {item} (give files of texts)")
            empty: list[int] = []
            rows = read_text_rows(item, text_column=args.text_column, also=clf.config_.data.text_column, encoding=args.encoding, classes=clf.class_names_, empty=empty)
            if empty:  # a row with other cells but no text was left out in silence (its label said it was meant to be one)
                print(f"transferkit: note: {item}: {len(empty)} row(s) with an empty text left out (row {', '.join(map(str, empty[:5]))}"
                      f"{' ...' if len(empty) > 5 else ''})", file=sys.stderr)
            where += [(item, i) for i, _ in rows]
            texts += [t for _, t in rows]
        if not texts:
            raise UserError("predict needs texts: a file of texts (one per line, or a CSV/TSV with a text column) or --text")
        x, _, cut = clf._tokenized(texts)
        names, proba = [[f, i, t] for (f, i), t in zip(where, texts)], proba_of(clf, x)
        if cut:
            _say_cut(cut, len(texts), clf.inputs_.max_length)
        first = ["file", "row", "text"]
        if args.explain is not None:
            _write_text_explanations(clf, texts, proba, lambda t: proba_of(clf, clf._tokens(t)), Path(args.explain), where)
    else:
        if args.text:
            raise UserError(f"{args.run_dir} is an image model: --text does not apply; give image files or folders")
        if not args.inputs:
            raise UserError("predict needs image files or folders")
        names, probas, encoded, skipped = [], [], [], []
        for item in args.inputs:
            if not Path(item).exists():
                raise UserError(f"not found: {item}")
            if Path(item).is_file() and Path(item).suffix.lower() in (".csv", ".tsv"):  # was "cannot be read: UnidentifiedImageError"
                raise UserError(f"{item} is a table, not an image: predict takes image files or folders; "
                                f"to score labelled images listed in a CSV, run `transferkit evaluate {args.run_dir} --data {item}`")
            x, n, bad = clf._encode_kept(clf._sources(Path(item)), skip_bad=args.skip_bad_images)
            skipped += bad
            if not n:
                continue
            probas.append(proba_of(clf, x))
            names += n
            if args.explain is not None:
                encoded.append(x)
        _say_skipped(skipped)
        if not names:
            raise UserError("no readable images to predict")
        proba = np.concatenate(probas)
        if args.explain is not None:
            _write_explanations(clf, encoded, names, proba, Path(args.explain))
        names, first = [[n] for n in names], ["file"]
    buf = io.StringIO(newline="")
    if args.out and Path(args.out).suffix.lower() == ".json":  # a .json file got CSV text (QA AJ)
        records = [{**dict(zip(first, n)), "label": clf.class_names_[int(pr.argmax())], "probabilities": {c: round(float(v), 6) for c, v in zip(clf.class_names_, pr)}}
                   for n, pr in zip(names, proba)]
        buf.write(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    else:
        w = csv.writer(buf, lineterminator="\n")  # Unix line ends (the csv default is CRLF)
        w.writerow([*first, "label"] + [f"p_{c}" for c in clf.class_names_])
        for n, pr in zip(names, proba):
            w.writerow([*n, clf.class_names_[int(pr.argmax())]] + [f"{v:.6f}" for v in pr])
    if args.out:
        from .rundir import atomic_write_bytes

        atomic_write_bytes(Path(args.out), buf.getvalue().encode("utf-8"))  # whole or not at all
        print(f"wrote {len(names)} predictions to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(buf.getvalue())
    return 0


def _write_explanations(clf, encoded: list, names: list[str], proba, folder: Path) -> None:
    """One PNG per image: the image as the model saw it, under the Grad-CAM map of where it looked for
    the class it said; named by position and file name, so images of the same name do not collide."""
    import torch

    from . import plots
    from .mistakes import explain
    from .rundir import make_dir

    make_dir(folder)
    x = torch.cat(encoded)
    pred = proba.argmax(1)
    crops, maps, note = explain(clf.model_, x, pred, clf.preprocess_.input_size, clf.inputs_.eval_transform(), "cpu")
    if maps is None:
        print(f"{note}: the images are written without a map", file=sys.stderr)
    for i, name in enumerate(names):
        caption = f"{clf.class_names_[pred[i]]} ({proba[i, pred[i]]:.2f})  {Path(name).name}" + ("" if maps is None else "    [right: Grad-CAM]")
        plots.explain_image(crops[i], None if maps is None else maps[i], caption).save(folder / f"{i:04d}_{Path(name).stem}.png")
    print(f"wrote {len(names)} Grad-CAM image{'s' if len(names) != 1 else ''} to {folder}", file=sys.stderr)
    import re

    ours = {f"{i:04d}_{Path(name).stem}.png" for i, name in enumerate(names)}
    stale = [f.name for f in folder.iterdir() if re.fullmatch(r"\d{4}_.+\.png", f.name) and f.name not in ours]
    if stale:  # an earlier --explain into the same folder: its maps would read as this call's
        print(f"note: {folder} also holds {len(stale)} map(s) from an earlier --explain (e.g. {sorted(stale)[0]}); "
              "give an empty folder to keep them apart", file=sys.stderr)


def _say_cut(n: int, total: int, max_length: int) -> None:
    """Texts longer than the run's max_length are cut, as in training: said, as fit says its own."""
    print(f"note: {n} of {total} texts are longer than the run's {max_length} tokens and were cut there, as in training "
          "(the model sees their beginnings)", file=sys.stderr)


def _read_stdin() -> bytes:
    """What `predict RUN -` reads: texts (a text model) or image paths, one a line, piped in."""
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("- reads texts or image paths, one a line, from standard input, which is a terminal here: pipe them in "
                        "(ls photos/*.jpg | transferkit predict RUN -)")
    return sys.stdin.buffer.read()


def _stdin_rows(data: bytes, encoding: str, text_column: str | None = None) -> list[tuple[int, str]]:
    """Texts piped to predict, one a line, read as a text file of them is (its encodings, its blank
    lines left out), through a temporary file removed at once; with `text_column`, a table (CSV or
    TSV, its delimiter detected) whose column that is (it was ignored: each line, header and all, was
    a text); a mistake names standard input."""
    import tempfile

    from .text_data import read_text_rows

    fd, name = tempfile.mkstemp(prefix="transferkit-stdin-", suffix=".txt" if text_column is None else ".csv")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return read_text_rows(name, text_column=text_column, encoding=encoding)
    except UserError as e:
        raise UserError(str(e).replace(name, "standard input (-)")) from None
    finally:
        Path(name).unlink(missing_ok=True)


def _expand_patterns(items: list[str]) -> list[str]:
    """A quoted pattern ('photos/*.jpg', which the shell left alone, or a Windows shell's) that names
    no file itself: the files it matches, sorted; one that matches none stays, to be said not found."""
    import glob

    out = []
    for item in items:
        if not Path(item).exists() and glob.has_magic(item):
            found = sorted(glob.glob(item, recursive=True))
            if found:  # said: a quoted name with brackets that does not exist is read as a pattern too
                print(f"note: {item} names no file; read as a pattern, it matches {len(found)}", file=sys.stderr)
            out += found or [item]
        else:
            out.append(item)
    return out


def _write_text_explanations(clf, texts: list[str], proba, proba_fn, folder: Path, where: list[tuple]) -> None:
    """DIR/explain.html: every text with its words shaded by how much leaving each out lowers the
    probability of the class said (word occlusion: one forward pass per word), with the file and row
    it came from (`where`, as the predictions' CSV gives them)."""
    from .mistakes import word_evidence
    from .report_html import explain_page
    from .rundir import atomic_write_bytes, make_dir

    pred = proba.argmax(1)
    evidence = word_evidence(proba_fn, texts, pred)
    rows = [{"file": f, "row": r, "source": t, "predicted": clf.class_names_[c], "p_predicted": float(proba[i, c]), "evidence": ev}
            for i, ((f, r), t, c, ev) in enumerate(zip(where, texts, pred, evidence))]
    make_dir(folder)
    atomic_write_bytes(folder / "explain.html", explain_page(f"transferkit predict: {clf.run_dir_}", rows).encode())
    print(f"wrote the word evidence of {len(texts)} text{'s' if len(texts) != 1 else ''} to {folder / 'explain.html'}", file=sys.stderr)


def _proba(clf, x):
    import contextlib

    from .trainer import predict_proba

    return predict_proba(clf.model_, x, clf.inputs_.eval_transform(), 64, contextlib.nullcontext).numpy()


def _note_unused(cfg, args) -> set[str]:
    """A setting the run does not read (`--k 3 --strategy full`, or `k: 3` in the --config file) is
    said, not silently ignored. Returns the names said."""
    from .config import changed_settings, flat_value
    from .strategies import ignored_settings

    flags, given = _given_settings(args), _given_settings(args, with_config=True)
    # an on/off setting (or a file's) back at its default, as `--config f.yaml --augment` puts augment: false
    # back, is read by no one: it was said as "--no-augment is not used", a flag never typed
    bools = {n for _, n, _, _ in BOOL_FLAGS}
    changed = set(changed_settings(cfg, [n for n in given if n in FLAT]))
    given = {n for n in given if n in changed or (n in flags and n not in bools)}
    said = ignored_settings(cfg, given)
    for n, (kind, own, users) in said.items():
        what = _flag_of(n, flat_value(cfg, n)) if n in flags else f"{n} (in {args.config})"
        if kind == "model":
            print(f"transferkit: note: {what} is not used: it chooses among models for --model auto, and --model is {own}", file=sys.stderr)
        else:
            print(f"transferkit: note: {what} is not used by --{kind} {own} (only by {users})", file=sys.stderr)
    if "l2sp_alpha" in given and "l2sp_alpha" not in said and (cfg.model.name == "small_convnet" or cfg.model.name.startswith("random:")):
        print(f"transferkit: note: --l2sp-alpha pulls the backbone toward its pretrained weights, and {cfg.model.name} has none: "
              "it pulls toward its random initialisation", file=sys.stderr)
    return set(said)


def _flag_of(name: str, value=None) -> str:
    """The flag of a setting; of an on/off one, the flag that gives it `value` (--no-nesterov, --nesterov)."""
    for f, n, const, _ in BOOL_FLAGS:
        if n == name and value is not None and isinstance(value, bool):
            return f if const == value else _opposite(f)
    return next((f for f, n, _, _ in FIT_FLAGS + BOOL_FLAGS if n == name), "--" + name.replace("_", "-"))


def _given_settings(args, *, with_config: bool = False) -> set[str]:
    """Flat names of the fit flags given on the command line, and (`with_config`) of the settings the
    --config file changes from the defaults (a run's own config.yaml lists them all): a search keeps
    them fixed (it sampled over a --config file's strategy and lr in silence), a fit notes those its
    strategy ignores."""
    from .config import changed_settings

    names = [n for _, n, _, _ in FIT_FLAGS] + [n for _, n, _, _ in BOOL_FLAGS]
    flags = {n for n in names if getattr(args, n) is not None}
    if not (with_config and args.config):
        return flags
    from .config import default_lr
    from .inputs import modality_of

    file_cfg = load_config_file(args.config)
    changed = set(changed_settings(file_cfg))
    if file_cfg.optim.lr == default_lr(modality_of(file_cfg.model.name), file_cfg.strategy.name):
        changed.discard("lr")  # a run's config.yaml records the default rate it resolved: no one chose it (a search stopped searching it)
    return flags | changed


def cmd_adapt(args) -> int:
    from . import report
    from .adapt import adapt

    cfg = replace(RunConfig(), data=args.data, model=args.model, arch=args.arch, lr=args.lr, batch_size=32 if args.batch_size is None else args.batch_size,
                  max_length=args.max_length, text_column=args.text_column, input_size=args.input_size, seed=args.seed,
                  cpu=args.cpu, precision=args.precision, accumulate=args.accumulate, grad_checkpointing=args.grad_checkpointing,
                  group_by_length=args.group_by_length, skip_bad_images=args.skip_bad_images or None, encoding=args.encoding)
    from .trainer import StopRequested

    signals = _StopOnSignal("without a checkpoint: adapt starts again" if not args.intermediate else
                            "after a checkpoint if its intermediate fit has begun; adapt itself starts again")
    try:
        with signals:
            adapt(cfg, args.out, intermediate=args.intermediate, epochs=args.epochs, head_steps=args.head_steps, console=report.console(quiet=args.quiet),
                  overwrite=args.overwrite, should_stop=signals, adabn_batch_size=64 if args.batch_size is None else args.batch_size)
    except StopRequested:
        print(f"transferkit: stopped by {signals.name}; adapt keeps no checkpoint, and nothing was written to {args.out}: run the same command again",
              file=sys.stderr)
        return 128 + signals.signum
    return 0


def cmd_pipeline(args) -> int:
    from . import report
    from .pipeline import run_pipeline

    from .trainer import StopRequested

    signals = _StopOnSignal()
    try:
        with signals:
            summary = run_pipeline(args.file, args.out, console=report.console(quiet=args.quiet), should_stop=signals, should_abort=signals)
    except StopRequested:
        print(f"transferkit: stopped by {signals.name}; finished stages are kept and the interrupted one resumes from its checkpoint "
              f"(an adapt stage starts again). Continue with:\n"
              f"  transferkit pipeline {args.file} --out {args.out}", file=sys.stderr)
        return 128 + signals.signum
    for name, v in ({} if args.quiet else summary).items():  # --quiet prints nothing but errors (each stage's line was printed all the same)
        acc = f", accuracy {100 * v['accuracy']:.2f}%" if v.get("accuracy") is not None else ""
        print(f"{name}: {v['status']}{acc}; {v['run']}")
    return 0


def cmd_search(args) -> int:
    from . import report
    from .search import RefitInterrupted, load_space_file, search

    if args.out is None:
        raise UserError("search needs --out DIR (a new directory, or one holding this search to continue it)")
    if not _names_data(args):
        raise UserError("search needs --data (a folder, a CSV, or 'digits')" + (f"; {args.config} names no data" if args.config else ""))
    space = load_space_file(args.space) if args.space else None
    import signal

    got = {"code": 130}  # Ctrl-C

    def on_term(signum, frame):  # as Ctrl-C: Optuna records the running trial as failed, the study stays
        got["code"] = 128 + signum
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        search(
            resolve_config(args), args.out, space=space, trials=args.trials, folds=args.folds, time_budget=args.time_budget,
            storage=args.storage, study_name=args.study, metric=args.metric or "accuracy", lr_find=args.lr_find,
            fixed=_given_settings(args, with_config=True) - {"data", "model", "arch", "seed", "metric"}, console=report.console(quiet=args.quiet),
        )
    except RefitInterrupted:
        print(f"transferkit: search stopped during the final refit, after its trials; the same command (--out {args.out}) "
              f"refits the best configuration again, from the refit's last checkpoint", file=sys.stderr)
        return got["code"]
    except KeyboardInterrupt:
        print(f"transferkit: search stopped; its finished trials are kept, and the interrupted one runs again, with the folds it finished, "
              f"when you continue with the same "
              f"command (--out {args.out})", file=sys.stderr)
        return got["code"]
    finally:
        signal.signal(signal.SIGTERM, old)
    return 0


def cmd_lr_find(args) -> int:
    from . import plots, report
    from .lr_find import lr_find, lr_find_figure
    from .rundir import atomic_write_bytes, check_can_make, make_dir

    if not _names_data(args):
        raise UserError("lr-find needs --data (a folder, a CSV, or 'digits')" + (f"; {args.config} names no data" if args.config else ""))
    out = Path(args.out)
    check_can_make(out)
    cfg = resolve_config(args).validate()
    noted = _note_unused(cfg, args)
    reads_epochs = {"epochs"} if cfg.strategy.name == "gradual" else set()  # how many groups gradual unfreezes
    if cfg.strategy.name == "lp_ft":  # its sweep starts from the head a probe trains first, for lp_epochs with patience
        reads_epochs |= {"lp_epochs", "patience"}
    # the sweep sets the rate: --lr is read only by lp_ft's probe and by layer_lr_min's ramp
    swept_lr = {"lr"} if cfg.strategy.name != "lp_ft" and cfg.strategy.layer_lr_min is None else set()
    ignored = sorted((_given_settings(args, with_config=True) - noted - reads_epochs) & ({"epochs", "lp_epochs", "patience", "schedule", "warmup_epochs", "min_lr_ratio", "step_size", "gamma",
                                              "milestones", "decay_rate", "decay_steps", "staircase", "ema", "test_fraction"} | swept_lr))
    if ignored:
        flags = _given_settings(args)
        print(f"transferkit: note: lr-find sweeps --steps steps and ignores {', '.join(_flag_of(n) if n in flags else f'{n} (in {args.config})' for n in ignored)}",
              file=sys.stderr)
    res = lr_find(cfg, steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr, console=report.console(quiet=args.quiet))
    make_dir(out)
    fig = lr_find_figure(res)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plots.close(fig)
    atomic_write_bytes(out / "lr_find.png", buf.getvalue())
    keys = ("suggestion", "steepest", "min_div10", "stopped_early", "strategy", "trained", "notes", "lrs", "losses", "raw_losses")
    swept = {"model": cfg.model.name, "optimizer": cfg.optim.name, "weight_decay": cfg.optim.weight_decay, "batch_size": cfg.train.batch_size,
             "steps": args.steps, "start_lr": args.start_lr, "end_lr": args.end_lr, "data": cfg.data.path, "seed": cfg.train.seed}
    atomic_write_bytes(out / "lr_find.json", (json.dumps({**{k: getattr(res, k) for k in keys}, "swept_with": swept}, indent=1) + "\n").encode())
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    if res.suggestion is None:
        print(f"no suggested lr (the loss never fell); plot: {out / 'lr_find.png'}")
        return 1
    steep = f"{res.steepest:.2e}" if res.steepest is not None else "n/a"
    print(f"suggested lr: {res.suggestion:.2e} (steepest descent {steep}; min/10 {res.min_div10:.2e}); plot: {out / 'lr_find.png'}")
    if cfg.strategy.name == "lp_ft":  # --lr also sets the probe's rate: the sweep was of fine-tuning's
        from .config import with_default_lr

        base, ft = with_default_lr(cfg).optim.lr, res.suggestion * cfg.strategy.ft_lr_scale
        how = (f"to change fine-tuning only, keep --lr {base:.2g} and give --ft-lr-scale {ft / base:.3g}" if ft <= base else
               f"fine-tuning faster than the probe's --lr {base:.2g} needs --lr {ft:.2g} --ft-lr-scale 1, which moves the probe too")
        print(f"for lp_ft: --lr {res.suggestion:.2g} fine-tunes at {ft:.2e} (lr x ft_lr_scale) and also sets the probe's rate; {how}")
    return 0


def cmd_rank(args) -> int:
    from .ranking import TEXT_SETTINGS, rank_models

    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))  # stdout stays the table / JSON
    r = rank_models(
        args.data, args.models.split(","), score=args.score, arch=args.arch, seed=args.seed, val_fraction=args.val_fraction,
        skip_bad_images=args.skip_bad_images, device="cpu" if args.cpu else None, input_size=args.input_size, log=log, precision=args.precision,
        text={k: getattr(args, k) for k in TEXT_SETTINGS}, shots=args.shots, test_fraction=args.test_fraction,
    )
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
    else:
        print(r.table())
        print(f"\nrecommended: {r.best}: {r.reason()}")
    return 0


def _absent_note(m: dict) -> str:
    """A class absent from the data but said counts in the macro-F1 at F1 0: one false "bees" halved the
    macro-F1 of a folder of ants without a word."""
    absent = [c for c, v in m.get("per_class", {}).items() if v.get("support") == 0 and v.get("precision") is not None]
    return f" (macro-F1 counts {', '.join(absent[:3])}, absent here but predicted, at F1 0)" if absent else ""


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


SHOWN_ENTRIES = 10  # `transferkit cache` lists this many entries; --json all


def cmd_cache(args) -> int:
    import time

    from . import cache

    limit = cache.max_bytes()
    left = [(f, f.stat().st_size) for f in cache.stale_temporaries() if f.exists()]  # half-written files of killed runs: not entries, but space
    if args.clear:
        removed = cache.clear(args.clear, args.older_than_days)
        freed = f" and {len(left)} temporary file{'s' * (len(left) != 1)} of runs that were killed ({_size(sum(n for _, n in left))})" if left else ""
        print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} ({_size(sum(e.bytes for e in removed))}){freed} from {cache.cache_dir()}")
        return 0
    if args.older_than_days is not None:
        raise UserError("--older-than-days goes with --clear")
    es = cache.entries()
    summary = {
        "path": str(cache.cache_dir()), "limit_bytes": limit,
        "kinds": {k: {"entries": sum(e.kind == k for e in es), "bytes": sum(e.bytes for e in es if e.kind == k)} for k in cache.KINDS},
    }
    if left:
        summary["stale_temporaries"] = {"files": len(left), "bytes": sum(n for _, n in left)}
    if args.json:
        summary["entries"] = [{"kind": e.kind, "key": e.key, "bytes": e.bytes, "last_used": e.last_used, "holds": cache.describe(e)} for e in es]
        print(json.dumps(summary, indent=2))
        return 0
    total = sum(e.bytes for e in es)
    print(f"{summary['path']}: {_size(total)} in {len(es)} entries (limit {_size(limit) if limit else 'none'}; TRANSFERKIT_CACHE_MAX_GB)")
    for k, v in summary["kinds"].items():
        print(f"  {k:<9} {v['entries']:>4} entries  {_size(v['bytes']):>9}")
    if es:
        def age(t: float) -> str:
            s = max(0.0, time.time() - t)
            return f"{s / 60:.0f} min ago" if s < 3600 else f"{s / 3600:.1f} h ago" if s < 2 * 86400 else f"{s / 86400:.1f} days ago"

        print(f"least recently used {age(es[0].last_used)}, most recently {age(es[-1].last_used)}")
        shown = es[::-1][:SHOWN_ENTRIES]
        print(f"{'the most recently used ' + str(len(shown)) if len(es) > len(shown) else 'entries'}, newest first{' (--json lists all)' if len(es) > len(shown) else ''}:")
        for e in shown:  # what each holds, so that one can tell which to clear
            print(f"  {e.kind:<9} {_size(e.bytes):>9}  used {age(e.last_used):<13} {cache.describe(e) or '(written by an older transferkit: contents not recorded)'}")
    if left:
        print(f"  and {len(left)} temporary file{'s' * (len(left) != 1)} ({_size(sum(n for _, n in left))}) left by runs that were killed: "
              "`transferkit cache --clear` removes them")
    print("everything here is rebuilt when needed: `transferkit cache --clear all` frees it")
    return 0


def cmd_export(args) -> int:
    from .export import export_onnx

    if args.opset is not None and args.opset < 18:
        raise UserError(f"--opset must be 18 or more (PyTorch's exporter writes opset 18+), got {args.opset}")
    if args.opset is not None:
        try:
            import onnx

            newest = onnx.defs.onnx_opset_version()
        except ImportError:
            newest = None  # export_onnx says how to install it
        if newest is not None and args.opset > newest:
            raise UserError(f"--opset {args.opset} is newer than the installed onnx {onnx.__version__} knows (up to {newest})")
    info = export_onnx(args.run_dir, args.out, overwrite=args.overwrite, data=args.data, opset=args.opset)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = info["check"]
    print(f"wrote {info['out']}/model.onnx ({info['modality']}, {len(info['classes'])} classes, exported in {info['export_seconds']:.1f} s)")
    print(f"checked with onnxruntime: {c['same_class']}/{c['inputs']} same class, largest probability difference {c['max_abs_diff_probs']:.1e}")
    d = info.get("data_check")
    if d:
        print(
            f"{d['data']}: {d['n']} items, accuracy PyTorch {100 * d['accuracy_pytorch']:.2f}% / ONNX {100 * d['accuracy_onnx']:.2f}%, "
            f"{d['n'] - d['same_class']} different classes, largest probability difference {d['max_abs_diff_probs']:.1e}; "
            f"{d['per_second_pytorch']:.1f} / {d['per_second_onnx']:.1f} per second (batch {d['batch_size']}, {d['threads']} threads)"
        )
    print(f"inputs and preprocessing: {info['out']}/export.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="transferkit", description="Transfer learning from a pretrained model to your small labelled dataset.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fine-tune a pretrained model on your data and write a run directory")
    _add_fit_flags(p)
    p.add_argument("--out", help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("demo", help="EfficientNet-Lite0 on scikit-learn's digits against a raw-pixel baseline (no download)")
    p.add_argument("--out", default=os.path.join("runs", "demo"), help="run directory (default runs/demo)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the registered backbones")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_models)

    from .schedules import SCHEDULES
    from .strategies import STRATEGIES

    p = sub.add_parser("strategies", help="list the fine-tuning strategies")
    p.set_defaults(func=cmd_list(STRATEGIES))
    p = sub.add_parser("schedules", help="list the learning-rate schedules")
    p.set_defaults(func=cmd_list(SCHEDULES))
    from .ranking import SCORES

    p = sub.add_parser("scores", help="list the transferability scores of `rank`")
    p.set_defaults(func=cmd_list(SCORES))

    p = sub.add_parser("evaluate", help="metrics of a finished run on labelled data")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True, help="labelled data: its test/ split, else val/, else all of it; the data the run was fitted on: "
                   "its held-out test split (--test-fraction), else its validation split")
    p.add_argument("--mistakes", metavar="FILE.csv", help="write every wrong example (most confidently wrong first) to this CSV")
    p.add_argument("--encoding", type=_encoding, help="text files and CSV/TSV: auto (UTF-8, or UTF-16 with a BOM; the default) or a codec such as latin-1")
    p.add_argument("--text-column", help="text models, CSV/TSV data: the column holding the text (default: the run's, else detected)")
    p.add_argument("--label-column", help="CSV/TSV data: the column holding the labels (default: the run's, else detected)")
    p.add_argument("--delimiter", help="CSV/TSV data: ',', 'tab', ';' or '|' (default: the run's, else detected)")
    p.add_argument("--skip-bad-images", action="store_true", help="leave out unreadable images (listed) instead of failing")
    p.add_argument("--onnx", nargs="?", const="", metavar="DIR", help="score the model's ONNX export with onnxruntime (default RUN_DIR/export)")
    p.add_argument("--json", action="store_true", help="print every metric as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict labels and class probabilities for images or texts")
    p.add_argument("run_dir")
    p.add_argument("inputs", nargs="*", help="image files or folders; for a text model, files of texts (one per line, or a CSV/TSV with a text column); - reads texts, or image paths, one a line, from standard input")
    p.add_argument("--text", action="append", help="a text to classify (text models; repeatable)")
    p.add_argument("--text-column", help="text models, CSV/TSV inputs: the column holding the text (default: the run's, else detected)")
    p.add_argument("--encoding", type=_encoding, default="auto", help="text files and CSV/TSV: auto (UTF-8, or UTF-16 with a BOM; the default) or a codec such as latin-1")
    p.add_argument("--skip-bad-images", action="store_true", help="leave out unreadable images (listed) instead of failing")
    p.add_argument("--out", help="CSV file to write (default: standard output); texts: file, row (a text file's line, a CSV's record "
                   "number with its header as 1), text, label, p_CLASS...; a name ending .json gets a JSON list of records instead")
    p.add_argument("--onnx", nargs="?", const="", metavar="DIR", help="run the model's ONNX export with onnxruntime (default RUN_DIR/export; 397 images in 19 s instead of 30 s on 2 CPU cores)")
    p.add_argument("--explain", metavar="DIR", help="also write why: images, each beside a Grad-CAM map of where the model looked for the class it said (one PNG each); texts, explain.html with each word shaded by how much it pushed toward that class")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write a finished run as an ONNX model that does its own preprocessing, checked against PyTorch with onnxruntime")
    p.add_argument("run_dir")
    p.add_argument("--out", help="folder to write (default RUN_DIR/export)")
    p.add_argument("--data", help="labelled data to compare PyTorch and ONNX on (accuracy, agreement, speed)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    p.add_argument("--json", action="store_true", help="print export.json's record (files, checks, speed) as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("adapt", help="continue a backbone on unlabelled target data (text: masked-LM; images: AdaBN), writing a run for --model run:DIR")
    p.add_argument("--data", required=True, help="unlabelled target data: texts (CSV/TSV text column or one per line) or a folder of images")
    p.add_argument("--model", required=True, help="the backbone to adapt (as for fit)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--arch", help="architecture of a file:PATH checkpoint")
    p.add_argument("--intermediate", help="images: a labelled folder to fine-tune on first (a supervised intermediate task)")
    p.add_argument("--epochs", type=int, default=1, help="text: masked-LM epochs (default 1)")
    p.add_argument("--lr", type=float, help="text: masked-LM learning rate (default 5e-5)")
    p.add_argument("--head-steps", type=int, help="text: steps that train a new (random) masked-LM head alone, the encoder frozen, "
                   "before the masked-LM epochs (default: a quarter of their steps when the head is new, else 0)")
    p.add_argument("--batch-size", type=int, help="text: masked-LM batch (default 32); images: AdaBN's batches of statistics (default 64)")
    p.add_argument("--accumulate", type=int, default=1, help="text: forward each batch in this many micro-batches, adding up gradients: same steps, less memory")
    p.add_argument("--grad-checkpointing", action="store_true", help="text: recompute activations in the backward pass: less memory, more compute")
    p.add_argument("--group-by-length", action="store_true", help="text: batches of texts of similar length, which pad less (faster)")
    p.add_argument("--skip-bad-images", action="store_true", help="images: leave out unreadable images instead of failing")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--text-column")
    p.add_argument("--encoding", type=_encoding, default="auto", help="text files and CSV/TSV: auto (UTF-8, or UTF-16 with a BOM; the default) or a codec such as latin-1")
    p.add_argument("--input-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", help="auto (bf16 where the device computes it natively) | bf16 | fp16 | no (or fp32)")
    p.add_argument("--cpu", action="store_true", help="use the CPU even when a GPU is present")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("pipeline", help="run the named stages of a PIPELINE.yaml (source fit, adapt, target fit) in order; reruns skip finished stages")
    p.add_argument("file")
    p.add_argument("--out", required=True, help="folder of the stages' run directories")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (pipeline.json says what each stage did)")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("search", help="hyperparameter search by k-fold cross-validation of the training split, then refit the best")
    _add_fit_flags(p)  # the base configuration; settings given as flags stay fixed
    p.add_argument("--out", help="search directory: study, trials.csv, best.yaml, final/ run, plots (run again to continue)")
    p.add_argument("--trials", type=int, default=20, help="finished trials to reach, counting earlier runs and other workers (default 20)")
    p.add_argument("--folds", type=int, default=5, help="stratified folds of the training split (default 5)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="stop starting trials / folds after this many seconds (the final refit comes after)")
    p.add_argument("--space", help="YAML search space: name: {low, high[, log, step]} | {choices: [...]} | value (see transferkit.search)")
    p.add_argument("--storage", help="Optuna database URL shared by several workers (e.g. postgresql://user@host/db); default DIR/study.db")
    p.add_argument("--study", help="study name in --storage (required with it)")
    p.add_argument("--lr-find", action="store_true", help="centre the learning-rate range on an lr-find of the training split")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("lr-find", help="learning-rate range test: suggest a learning rate and plot loss against it")
    _add_fit_flags(p)
    p.add_argument("--out", default=".", help="directory for lr_find.png and lr_find.json (default: current directory)")
    p.add_argument("--steps", type=int, default=100, help="training steps of the sweep (default 100)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last learning rate (default 10)")
    p.set_defaults(func=cmd_lr_find)

    from .ranking import SCORES

    p = sub.add_parser("rank", help="rank candidate models by transferability scores on their cached features (no training)")
    p.add_argument("--data", required=True, help="labelled data (as for fit); scores read its training split only")
    p.add_argument("--models", required=True, help="two or more comma-separated candidates, e.g. efficientnet_lite0,efficientnet_lite1,cifar_resnet56")
    p.add_argument("--score", default="logme", help=f"score to sort by: {', '.join(SCORES.names())} (default logme)")
    p.add_argument("--arch", help="architecture of file:PATH candidates")
    p.add_argument("--seed", type=int, default=0, help="train/validation split (as fit's --seed) and cross-validation folds")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation fraction when the data has no val split (as fit)")
    p.add_argument("--test-fraction", type=float, help="as fit's: these examples are held out, so the scores never see the test split of the fit that follows")
    p.add_argument("--shots", type=int, help="as fit's: score on the examples per class that fit trains on")
    p.add_argument("--skip-bad-images", action="store_true", help="leave out unreadable images instead of failing")
    p.add_argument("--input-size", type=int, help="score every candidate at this input size (as fit's --input-size)")
    p.add_argument("--cpu", action="store_true", help="use the CPU even when a GPU is present")
    p.add_argument("--precision", default="auto", help="auto (bf16 where the device computes it natively, as fit) | bf16 | fp16 | no (or fp32): the features' precision; fit reads those of its own from the cache")
    for flag, help_ in (("--max-length", "text: tokens per text, as fit's (default 128)"), ("--text-column", "text: the column of the texts, as fit's"),
                        ("--label-column", "the column of the labels, as fit's"), ("--delimiter", "CSV/TSV data: field delimiter, as fit's"),
                        ("--pooling", "text: mean | cls | last, as fit's")):
        p.add_argument(flag, type=int if flag == "--max-length" else str, help=help_)
    p.add_argument("--encoding", type=_encoding, default="auto", help="text files and CSV/TSV: auto (UTF-8, or UTF-16 with a BOM) or a codec such as latin-1")
    p.add_argument("--json", action="store_true", help="print the ranking as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on standard error")
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("cache", help="show the decoded-image and feature cache (size, entries, limit); --clear frees it")
    p.add_argument("--clear", choices=["images", "features", "all"], help="remove these entries (they are rebuilt when next needed)")
    p.add_argument("--older-than-days", type=float, help="with --clear: only entries unused for longer than this")
    p.add_argument("--json", action="store_true", help="print the cache's summary and every entry as JSON")
    p.set_defaults(func=cmd_cache)
    return ap


def _negative_values(argv: list[str]) -> list[str]:
    """`--lr -1e-3` as `--lr=-1e-3`: argparse reads a negative number in exponent form as an option
    ("expected one argument"), so the check that names the bad value never saw it."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and "=" not in a and i + 1 < len(argv) and re.fullmatch(r"-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|-inf", argv[i + 1], re.I):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
        else:
            out.append(a)
            i += 1
    return out


_WRITE_RUNS = {"fit", "demo", "adapt", "pipeline", "search", "lr-find"}  # commands whose work is a folder, not what they print


class _ReaderMayLeave:
    """stdout or stderr of a command that writes a run: when the reader of a pipe leaves (`fit | head`),
    what is printed after goes to /dev/null and the work goes on to its end, instead of a
    BrokenPipeError that stopped it before its run directory was complete."""

    def __init__(self, f):
        self._f = f

    def _gone(self) -> None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), self._f.fileno())  # the buffered rest flushes to nowhere

    def write(self, s: str) -> int:
        try:
            return self._f.write(s)
        except BrokenPipeError:
            self._gone()
            return len(s)

    def flush(self) -> None:
        try:
            self._f.flush()
        except BrokenPipeError:
            self._gone()

    def __getattr__(self, name):
        return getattr(self._f, name)


# other tools' flags for what transferkit does otherwise (the error showed the top-level usage and no hint)
# flag -> (the flag the hint names, which the command must have; the hint)
FLAG_NOTES = {
    "--device": ("--cpu", "the device is chosen for you (a GPU where there is one); --cpu keeps to the CPU"),
    "--gpu": ("--cpu", "a GPU is used where there is one; --cpu keeps to the CPU"),
    "--gpus": (None, "several GPUs: accelerate launch or torchrun (see the README)"),
    "--num-workers": (None, "images are decoded once, in parallel, and cached: there are no loader workers to set"),
    "--workers": (None, "images are decoded once, in parallel, and cached: there are no loader workers to set"),
    "--grad-accum": ("--accumulate", "--accumulate N"), "--gradient-accumulation-steps": ("--accumulate", "--accumulate N"),
    "--accumulation-steps": ("--accumulate", "--accumulate N"), "--fp16": ("--precision", "--precision fp16"),
    "--bf16": ("--precision", "--precision bf16"), "--amp": ("--precision", "--precision bf16 (or fp16 on a GPU)"),
}


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser | None:
    for a in parser._actions:  # argparse keeps its subcommands' parsers in the subparsers action's choices
        if isinstance(a, argparse._SubParsersAction) and command in a.choices:
            return a.choices[command]
    return None


def _flag_hints(parser: argparse.ArgumentParser, unknown: list[str]) -> list[str]:
    """For each unrecognized --flag: what to use instead (another tool's name for it), or the command's
    closest flags."""
    import difflib

    from .errors import ALIASES

    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    out = []
    for u in unknown:
        flag = u.split("=", 1)[0]
        if not flag.startswith("--"):
            continue
        if flag in FLAG_NOTES:  # (predict, evaluate and export have no --precision or --accumulate to point to)
            needs, hint = FLAG_NOTES[flag]
            out.append(f"{flag}: {hint}" if needs is None or needs in flags else f"{flag}: not a setting of `transferkit {parser.prog.split()[-1]}`")
            continue
        alias = ALIASES.get(flag[2:].replace("-", "_").lower())
        close = ([f"--{alias.replace('_', '-')}"] if alias and f"--{alias.replace('_', '-')}" in flags else [])
        names = [f[2:] for f in flags]  # without the shared "--", which made --bogus "close" to --out
        close += [f"--{c}" for c in difflib.get_close_matches(flag[2:], names, n=3, cutoff=0.6) if f"--{c}" not in close]
        if close:
            out.append(f"{flag}: did you mean {', '.join(close[:3])}?")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not first_process():  # argparse's errors: every torchrun process would print the same usage and message
        quiet = lambda message: sys.exit(2)  # noqa: E731
        parser.error = quiet  # type: ignore[method-assign]
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sp in a.choices.values():
                    sp.error = quiet  # type: ignore[method-assign]
    argv = sys.argv[1:] if argv is None else list(argv)
    args, rest = parser.parse_known_args(_negative_values(argv))
    args.given_flags = {a[2:].split("=")[0].replace("-", "_") for a in argv if str(a).startswith("--")}  # errors name these by their flags
    takes_inputs = getattr(args, "inputs", None) is not None  # predict
    options = [r for r in rest if r.startswith("-")]
    if rest and takes_inputs and not options:
        # `predict RUN --out p.csv a.jpg b.jpg`: argparse gives a '*' positional its (empty) share before
        # the first option and calls what follows unrecognized; those are more inputs
        args.inputs = list(args.inputs) + rest
    elif rest:
        # with inputs around them, name only the options (`--ouT` of `--ouT x a.jpg`)
        named = options if takes_inputs else rest
        files = [r for r in named if r.startswith("-") and Path(r).exists()]  # `predict RUN -1.png`: a file named like an option
        sub = _subparser(parser, getattr(args, "command", None))
        hints = _flag_hints(sub or parser, named)
        (sub or parser).error(f"unrecognized arguments: {' '.join(named)}" + (f" (a file whose name starts with '-': write ./{files[0]})" if files else "")
                              + "".join(f"; {h}" for h in hints))
    streams = sys.stdout, sys.stderr
    if args.command in _WRITE_RUNS:  # `fit ... | head`: the run finishes when the reader leaves (it was left without its manifest)
        sys.stdout, sys.stderr = _ReaderMayLeave(sys.stdout), _ReaderMayLeave(sys.stderr)
    said_as_flags = COMMAND_LINE.set(True)  # what the API raises is said in the command line's words
    try:
        return _run(args)
    finally:
        COMMAND_LINE.reset(said_as_flags)
        sys.stdout, sys.stderr = streams


def _in_flag_words(message: str, given: set[str]) -> str:
    """A check shared with config files and the Python API names a setting as its key (`val_fraction
    must be in (0, 1)`, `k=100 is larger ...`); said of a setting given here as a flag, the flag
    (`--val-fraction`, `--k 100`). Only flags given: a setting from --config keeps its key. A name
    without an underscore (lr, k, epochs: words of the sentence too) only where the message begins."""
    for name in sorted(given & FLAT.keys(), key=len, reverse=True):
        flag = "--" + name.replace("_", "-")
        if "_" in name:
            message = re.sub(rf"(?<![\w.-]){name}(?![\w-])(=)?", lambda m: flag + (" " if m.group(1) else ""), message)
        elif re.match(rf"{name}(=| must| cannot| is )", message):
            message = flag + (" " if message[len(name)] == "=" else "") + message[len(name) + (message[len(name)] == "="):]
    return message


def _run(args) -> int:
    try:
        return args.func(args)
    except UserError as e:
        from .errors import ProcessUserError

        # under torchrun every process finds the same mistake: said once, by the first; a process's own
        # trouble (out of memory on its device) by that process, named
        rank, world = os.environ.get("RANK", "0"), int(os.environ.get("WORLD_SIZE", "1") or 1)
        if first_process() or isinstance(e, ProcessUserError):
            said = str(e) if getattr(e, "in_file_words", False) else _in_flag_words(str(e), getattr(args, "given_flags", set()))
            print(f"transferkit: error: {'' if world == 1 else f'(process {rank}) ' if isinstance(e, ProcessUserError) else ''}{said}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("transferkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `transferkit predict ... | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 141
    except OSError as e:  # the machine refused (permissions, a read-only or full disk): not a bug to trace
        import errno

        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"transferkit: error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
