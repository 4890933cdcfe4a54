"""What a run says on the terminal: a one-screen summary before training, progress bars, results."""

from __future__ import annotations

import contextlib
import os
import re
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def console(quiet: bool = False) -> Console:
    kind = QuietConsole if quiet else Console
    return kind(stderr=False, quiet=quiet, highlight=False, width=None if sys.stdout.isatty() else 110)


class QuietConsole(Console):
    """A console that prints nothing but keeps, as plain text in `kept`, what it would have said in
    yellow (notes, warnings, caveats): the Python API's fit(quiet=True) raises them as Python warnings
    (they were lost: "the model predicts '1' for every validation example", "class_weight and sampler
    correct twice")."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kept: list[str] = []

    def print(self, *objects, **kwargs) -> None:
        if len(objects) == 1 and isinstance(objects[0], str) and objects[0].startswith("[yellow]"):
            from rich.errors import MarkupError
            from rich.text import Text

            try:
                said = Text.from_markup(objects[0]).plain
            except MarkupError:  # a note holding brackets of its own
                said = objects[0].replace("[yellow]", "").replace("[/]", "")
            said = re.sub(r"^(but|warning|note): ", "", said)  # the console's lead-ins: a Python warning is one already
            if said not in self.kept:
                self.kept.append(said)
        super().print(*objects, **kwargs)


def progress(con: Console):
    """Progress bars with ETA on a terminal; nothing on a pipe or in CI (the summaries still print)."""
    if con.quiet or not con.is_terminal or os.environ.get("CI"):
        return contextlib.nullcontext(_NoProgress())
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=con, transient=True,
    )


class _NoProgress:
    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def remove_task(self, *a, **k):
        pass


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def print_summary(con: Console, cfg, splits, model, groups, phases, input_line: str, always_frozen=frozenset(), processes: int = 1) -> None:
    from rich.text import Text

    # a line of its own: as a table title it was wrapped to the table's width, through the middle of names
    con.print(Text.assemble(("transferkit fit", "bold"), f": {cfg.model.name} on {splits.source}"), soft_wrap=True)
    t = Table(show_header=True, header_style="bold")
    t.add_column("class")
    t.add_column("train", justify="right")
    t.add_column("val", justify="right")
    test = splits.test is not None  # a given or --test-fraction test split: its column (it was in data.json only)
    if test:
        t.add_column("test", justify="right")
    tr, va, te = splits.train.counts(), splits.val.counts(), splits.test.counts() if test else {}
    for c in splits.classes[:20]:
        t.add_row(c, str(tr[c]), str(va[c]), *([str(te.get(c, 0))] if test else []))
    if len(splits.classes) > 20:
        t.add_row(f"... {len(splits.classes) - 20} more", "", "", *([""] if test else []))
    t.add_row("[bold]total", f"[bold]{len(splits.train)}", f"[bold]{len(splits.val)}", *([f"[bold]{len(splits.test)}"] if test else []))
    con.print(t)
    n_all = sum(p.numel() for p in model.parameters())
    n_head = sum(p.numel() for p in model.head.parameters())
    con.print(
        f"model: {cfg.model.name} ({model.backbone.num_features}-d features, {_count(n_all - n_head)} backbone params) + "
        f"{cfg.model.head} head ({_count(n_head)} params, {len(splits.classes)} classes)\n"
        f"{input_line}\n"
        f"validation: {'given' if splits.val_given else f'stratified {cfg.data.val_fraction:.0%} split, seed {cfg.train.seed}'}"
        + (f"; test: {len(splits.test)} examples" if splits.test is not None else "")
        + "".join(f"\n{n}" for n in splits.notes)
    )
    held = {g.name for g in groups if g.params and all(n in always_frozen for n, _ in g.params)}
    for i, ph in enumerate(phases, 1):
        if ph.kind == "probe":
            trainable = n_head
            desc = f"head only on cached features, {ph.epochs} epochs, cosine schedule without warmup"
        else:
            names = [n for n in ph.unfrozen(0) if n not in held]  # a group --freeze holds whole does not train (it was counted)
            trainable = sum(p.numel() for g in groups if g.name in names for n, p in g.params if n not in always_frozen)
            last = [n for n in ph.unfrozen(ph.epochs - 1) if n not in held]
            grow = f", {len(last)} by epoch {ph.epochs}" if len(last) != len(names) else ""
            never = [g.name for g in groups if g.name not in last and g.name not in ("head", "lora")]
            if len(last) != len(names) and never:  # gradual with fewer epochs than groups: the bottom ones never train
                grow += f" ({', '.join(never[:3])}{' ...' if len(never) > 3 else ''} never {'unfreezes' if len(never) == 1 else 'unfreeze'})"
            from .schedules import warmup_epochs

            w = warmup_epochs(cfg.schedule, ph.epochs)
            desc = (f"{len(names)}/{len(groups)} groups train at epoch 1{grow}, {ph.epochs} epoch{'s' if ph.epochs != 1 else ''}, {cfg.schedule.name} schedule, "
                    f"warmup {w:g} epoch(s)" + (" (half the run at most)" if w < cfg.schedule.warmup_epochs else ""))
            if cfg.train.patience is not None:
                desc += f", stops after {cfg.train.patience} epoch(s) without improvement"
            if ph.give_up_after and ph.give_up_after < ph.epochs:
                desc += f", ends after {ph.give_up_after} epoch(s) if none beats the probe's " + ("loss" if cfg.train.metric == "loss" else f"{cfg.train.metric} or loss")
            if cfg.train.ema:
                desc += f", validates and keeps the weights' moving average (decay {cfg.train.ema:g})"
        bs, n_train = cfg.train.batch_size, len(splits.train)
        share = -(-min(bs, n_train) // processes)  # each process splits its own share of a batch
        parts = min(cfg.train.accumulate, share)  # a micro-batch holds one example at least: --accumulate 64 of a batch of 32 is 32
        each = " per process" if processes > 1 else ""
        micro = (f" in {'up to ' if processes > 1 else ''}{parts} micro-batches{each}" + (f" (--accumulate {cfg.train.accumulate} asked; one example each at most)" if parts < cfg.train.accumulate else "")
                 if cfg.train.accumulate > 1 and ph.kind == "finetune" else "")
        whole = f" (more than the {n_train} training examples: every step takes them all)" if bs > n_train else ""
        con.print(
            f"phase {i} {ph.kind}: {desc}; {cfg.optim.name} lr {ph.lr:.2g}, wd {cfg.optim.weight_decay:g}, batch {bs}{whole}{micro}; "
            f"trainable {_count(trainable)} / frozen {_count(n_all - trainable)} params"
        )
    gt = Table(title="parameter groups (built once; lr = phase lr x lr_scale)", header_style="bold")
    for col in ("group", "params", "lr_scale", "lr (last phase)"):
        gt.add_column(col, justify="right" if col != "group" else "left")
    shown = groups if len(groups) <= 12 else groups[:5] + groups[-6:]
    last = phases[-1]
    trains = {"head"} if last.kind == "probe" else {n for e in range(last.epochs) for n in last.unfrozen(e)}
    for g in shown:
        lr = "frozen (--freeze)" if g.name in held else f"{last.lr * g.lr_scale:.2e}" if g.name in trains else "frozen"
        gt.add_row(g.name, _count(sum(p.numel() for _, p in g.params)), f"{g.lr_scale:.3g}", lr)
        if len(groups) > 12 and g is groups[4]:
            gt.add_row("...", "", "")
    con.print(gt)
    if always_frozen:
        con.print(f"kept frozen by --freeze patterns: {len(always_frozen)} parameter tensors")
    from .strategies import USED_ONLY_BY

    # (l2sp_alpha under lora was listed here just after the note that lora does not use it)
    reg = {k: v for k, v in vars(cfg.reg).items() if v and cfg.strategy.name in USED_ONLY_BY.get(k, (cfg.strategy.name,))}
    clip = {k: v for k, v in (("clip_value", cfg.optim.clip_value), ("clip_norm", cfg.optim.clip_norm)) if v}
    if reg or clip:
        con.print("regularisation / clipping: " + ", ".join(f"{k}={v:g}" for k, v in {**reg, **clip}.items()))


def _short(source: str, n: int = 70) -> str:
    s = " ".join(str(source).split())
    return repr(s if len(s) <= n else s[: n - 3] + "...")


def _cells(d: dict) -> tuple[str, str, str]:
    """accuracy, macro-F1 and AUROC of a results row, as the table shows them."""
    return f"{100 * d['accuracy']:.2f}%", f"{d['macro_f1']:.4f}", f"{d['auroc']:.4f}" if d.get("auroc") is not None else "n/a"


def kept_line(m: dict, history: list[dict], metric: str, min_delta: float = 0.0) -> str | None:
    """Which epoch's weights the run kept and on what score: the run never said (only metrics.json's
    best_epoch did); and why the table's score can differ from that epoch's (the final evaluation is
    fp32, training's validation ran under autocast)."""
    be = m.get("best_epoch")
    row = next((h for h in history if h.get("epoch") == be), None)
    if row is None or len(history) < 2:
        return None
    def show(v):
        return f"{100 * v:.2f}%" if metric == "accuracy" else f"{v:.4f}"

    then = row.get(f"val_{metric}")
    line = f"kept: the weights of epoch {be} of {len(history)}, the best by validation {metric} ({show(then)})"
    if min_delta:  # a later epoch within --min-delta of it was no improvement
        line += f", counting gains over --min-delta {min_delta:g} only"
    ties = [h["epoch"] for h in history if h.get(f"val_{metric}") == then and h["epoch"] != be] if metric != "loss" else []
    if ties and not min_delta:
        listed = ", ".join(map(str, ties[:5])) + (f", ... ({len(ties)} in all)" if len(ties) > 5 else "")  # 87 ties were said as 5
        loss = {h["epoch"]: h.get("val_loss") for h in history}
        same = [t for t in ties if loss.get(t) is not None and loss[t] == loss.get(be)]  # a probe's last epochs can end on one loss
        line += f", tied with epoch{'s' if len(ties) > 1 else ''} {listed} and of " + (
            "lower validation loss" if not same else
            f"the lowest validation loss among them, which epoch{'s' if len(same) > 1 else ''} {', '.join(map(str, same[:5]))}"
            f"{', ...' if len(same) > 5 else ''} {'equal' if len(same) > 1 else 'equals'} (the first is kept)")
    now = m.get(metric)
    precision = {"no": "fp32"}.get(m.get("precision"), m.get("precision"))
    if now is not None and then is not None and metric != "loss" and show(now) != show(then) and precision not in (None, "fp32"):
        line += f"; training validated under {precision} autocast, the table's {show(now)} is the final evaluation in fp32"
    return line


def print_results(con: Console, r) -> None:
    m = r.metrics
    t = Table(title="results (validation split" + ("; the rows 'on test split': the held-out test split" if "test" in m else "") + ")", header_style="bold")
    for col in ("", "accuracy", "macro-F1", "AUROC"):
        t.add_column(col, justify="right" if col else "left")
    t.add_row(f"transferkit ({r.config.strategy.name})", *_cells(m))
    b = m["baseline"]
    t.add_row(b["name"], *_cells(b))
    comparisons = (("scratch", "from scratch"), ("base", "without the source stage"))
    for kind, label in comparisons:
        if kind in m:
            t.add_row(f"{label} ({m[kind]['model']})", *_cells(m[kind]))
    if "test" in m:
        te = m["test"]
        t.add_row("transferkit on test split", *_cells(te))
        if "baseline" in te:
            t.add_row(f"{b['name']} on test split", *_cells(te["baseline"]))
        for kind, label in comparisons:  # the test verdicts' other side
            if kind in te:
                t.add_row(f"{label} on test split", *_cells(te[kind]))
        t.caption = f"test split: {m.get('n_test', '?')} examples"
    con.print(t)
    kept = kept_line(m, r.history, r.config.train.metric, r.config.train.min_delta)
    if kept:
        con.print(kept)
    if "groups" in m:
        from .metrics import worst_group_text

        for split, gm in (("validation", m["groups"]), ("test", m.get("test", {}).get("groups"))):
            if gm:  # the test split's too, where the verdict is: fit named a worst group that evaluate did not
                shown = ", ".join(f"{g} {100 * v['accuracy']:.1f}% (n={v['n']})" for g, v in list(gm["per_group"].items())[:8])
                more = f", and {len(gm['per_group']) - 8} more" if len(gm["per_group"]) > 8 else ""
                con.print(f"per group{f' ({split} split)' if 'test' in m else ''}: {shown}{more}; {worst_group_text(gm)}")
    ts = m.get("temperature_scaling")
    if ts and "skipped" in ts:
        con.print(f"calibration: temperature scaling skipped: {ts['skipped']}")
    elif ts:
        test = f"; on the test split ECE {100 * ts['test_before']['ece']:.1f}% -> {100 * ts['test_after']['ece']:.1f}%" if "test_after" in ts else ""
        con.print(
            f"calibration: temperature {ts['temperature']:.3f} fitted on validation: ECE {100 * ts['val_before']['ece']:.1f}% -> "
            f"{100 * ts['val_after']['ece']:.1f}%, NLL {ts['val_before']['nll']:.3f} -> {ts['val_after']['nll']:.3f}{test}"
        )
    mk = m.get("mistakes")
    if mk and mk["count"]:
        top = mk["most_confident"][0]
        where = "mistakes.csv" + (" and report.html" if r.run_dir else "")
        con.print(
            f"mistakes: {mk['count']} of {m['n_val']} validation examples; the most confident: {_short(top['source'])} "
            f"(true {top['true']}, said {top['predicted']} at {top['p_predicted']:.2f})" + (f"; all in {where}" if r.run_dir else "")
        )
    con.print(f"verdict: {m['verdict']}")
    if m.get("verdict_caveat"):  # of this verdict: before the comparison fits' verdicts, so it is not read as theirs
        con.print(f"[yellow]but: {m['verdict_caveat']}[/]")
    for kind in ("scratch", "base"):
        if f"verdict_{kind}" in m:
            con.print(f"verdict: {m[f'verdict_{kind}']}")
            if m.get(f"verdict_{kind}_caveat"):
                con.print(f"[yellow]but: {m[f'verdict_{kind}_caveat']}[/]")
    for note in m.get("one_class_notes", []):
        con.print(f"[yellow]warning: {note}[/]")
    if "in_short" in m:
        con.print(f"[bold]in short[/]: {m['in_short']}")
    from .metrics import fmt

    per = ", ".join(f"{c} P={fmt(v['precision'], '.2f')}/R={fmt(v['recall'], '.2f')}" for c, v in list(m["per_class"].items())[:10])
    con.print(f"per class{' (validation split)' if 'test' in m else ''}: {per}")
    kind = "texts" if m.get("modality") == "text" else "images"
    rate = m.get(f"train_{kind}_per_s") or m.get("train_images_per_s")  # older text runs called theirs images too
    ips = f", {rate} training {kind}/s" if rate else ""
    how = [f"{m['processes']} processes"] if m.get("processes", 1) > 1 else []
    if m.get("precision"):  # what trained, whatever was asked (fp16 asked on a CPU trains in fp32)
        how.append({"no": "fp32"}.get(m["precision"], m["precision"]))
    # the --baseline comparison fits' time is not in wall_s (the command took 76 s where the line said 16 s)
    extra = [(k, v["wall_s"]) for k, v in m.items() if isinstance(v, dict) and isinstance(v.get("wall_s"), (int, float)) and k in ("scratch", "base")]
    con.print(f"wall time {m['wall_s']:.1f} s on {m['device']}" + (f" ({', '.join(how)})" if how else "") + ips
              + "".join(f" (+{w:.1f} s for the --baseline {k} fit)" for k, w in extra)
              + (f"; run directory: {r.run_dir}" if r.run_dir else ""))
