"""`transferkit search` and `transferkit lr-find`.

The search machinery (folds, resume, pruning, time budget, workers) is tested with a stand-in for `fit`
that scores a configuration in milliseconds; one end-to-end search and the lr-find run the real thing
on a tiny model. The worker tests run against a real PostgreSQL server (TRANSFERKIT_TEST_PG_URL, as
`scripts/ci_postgres.sh` exports it, or a throwaway cluster started here) and skip when there is none.
"""

import csv
import glob
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
import yaml
from conftest import make_folder
from transferkit import report, search as S
from transferkit.cli import main
from transferkit.config import RunConfig, load_config_file, replace
from transferkit.data import load_image_data
from transferkit.errors import UserError
from transferkit.lr_find import lr_schedule, never_fell, smooth_centred, suggest
from transferkit.rundir import is_complete

QUIET = report.console(quiet=True)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP threads that wait
    on each other make a step 100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_ckpt):
    """Two colour classes, 12 images each (20x20), and a randomly initialised CIFAR ResNet-20."""
    root = tmp_path_factory.mktemp("tiny")
    return SimpleNamespace(data=make_folder(root / "data", n=12), ck=tiny_ckpt, root=root)


def _base(tiny, **kw):
    return replace(RunConfig(), data=str(tiny.data), model=f"file:{tiny.ck}", arch="cifar_resnet20", input_size=16, lp_epochs=3, epochs=1, **kw)


def _flags(tiny):
    return ["--data", str(tiny.data), "--model", f"file:{tiny.ck}", "--arch", "cifar_resnet20", "--input-size", "16", "--quiet"]


def _space_file(tmp_path, space: dict) -> str:
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(space))
    return str(p)


SPACE = {"strategy": "linear_probe", "lr": {"low": 1e-4, "high": 1e-1, "log": True}, "batch_size": {"choices": [4, 8]}, "lp_epochs": 3}


def _score(cfg) -> float:
    """The stand-in's score: best at lr = 1e-2, falling off with the distance in decades."""
    return max(0.0, 1.0 - abs(math.log10(cfg.optim.lr) + 2) / 4)


class FakeFit:
    """Records what every call saw; scores from the config; reports one epoch to `on_epoch`."""

    def __init__(self, delay: float = 0.0):
        self.calls, self.delay = [], delay

    def __call__(self, cfg, out=None, *, console=None, splits=None, on_epoch=None, **kw):
        self.calls.append(SimpleNamespace(cfg=cfg, out=out, splits=splits))
        time.sleep(self.delay)
        s = _score(cfg)
        if on_epoch is not None:
            on_epoch({"epoch": 1, "phase": "finetune", "val_accuracy": s, "val_macro_f1": s, "val_loss": 1 - s})
        return SimpleNamespace(metrics={"accuracy": s, "macro_f1": s, "auroc": s, "n_train": 0, "n_val": 0, "wall_s": 0.0})


def _study(out: Path, name: str = "transferkit-search"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


# ------------------------------------------------------------------------------------------ folds


def test_folds_are_stratified_disjoint_and_never_hold_the_held_out_split(tiny, tmp_path, monkeypatch):
    splits = load_image_data(str(tiny.data), val_fraction=0.2, seed=0)
    folds = S.stratified_folds(splits.train.labels, splits.classes, 3, seed=0)
    held_out = set(splits.val.sources)
    seen = []
    for i, (tr, va) in enumerate(folds):
        f = S.fold_splits(splits, tr, va, i, 3)
        assert not set(tr) & set(va)
        assert not (set(f.train.sources) | set(f.val.sources)) & held_out
        counts = f.val.counts()
        assert set(counts.values()) <= {3, 4} and len(counts) == 2  # 10 per class over 3 folds: 3 or 4 each
        assert f.val_given is False and f.test is None
        seen += list(va)
    assert sorted(seen) == list(range(len(splits.train)))  # every training image held out exactly once

    # Inside a search, every trial's fit sees folds of the training split only; the final fit loads
    # the data itself (the normal split) and writes DIR/final.
    fake = FakeFit()
    monkeypatch.setattr(S, "fit", fake)
    res = S.search(_base(tiny), tmp_path / "s", space=SPACE, trials=3, folds=3, console=QUIET)
    trial_calls = [c for c in fake.calls if c.splits is not None]
    trials = _study(tmp_path / "s").trials
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)  # a pruned fold's fit has no score
    assert len(trial_calls) == sum(len(t.user_attrs["fold_scores"]) for t in trials) + pruned >= 7
    assert all(c.out is None for c in trial_calls)
    for c in trial_calls:
        assert not (set(c.splits.train.sources) | set(c.splits.val.sources)) & held_out
    final = [c for c in fake.calls if c.splits is None]
    assert len(final) == 1 and Path(final[0].out) == tmp_path / "s" / "final"
    assert res.best_value == max(t.value for t in trials if t.value is not None)


# ------------------------------------------------------------------------------ end to end (real fit)


def test_search_cli_end_to_end_writes_everything(tiny, tmp_path, capsys):
    out = tmp_path / "s"
    space = _space_file(tmp_path, {**SPACE, "strategy": {"choices": ["linear_probe", "lp_ft"]}, "batch_size": 8})
    rc = main(["search", *_flags(tiny), "--space", space, "--out", str(out), "--trials", "2", "--folds", "2", "--seed", "1"])
    assert rc == 0, capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [r["number"] for r in rows] == ["0", "1"] and all(r["state"] == "COMPLETE" for r in rows)
    for r in rows:
        folds = [float(r["fold_1"]), float(r["fold_2"])]
        assert float(r["mean"]) == pytest.approx(np.mean(folds)) and float(r["lr"]) > 0 and float(r["duration_s"]) > 0
    best = load_config_file(out / "best.yaml")  # what `transferkit fit --config` reads
    assert best.to_dict() == yaml.safe_load((out / "final" / "config.yaml").read_text())
    assert best.data.path == str(tiny.data.resolve()) and best.train.seed == 1 and best.data.input_size == 16
    assert is_complete(out / "final")
    for png in ("history.png", "lr.png", "importance.png"):
        assert (out / png).stat().st_size > 1000
    meta = json.loads((out / "search.json").read_text())
    assert meta["request"]["folds"] == 2 and meta["space"]["batch_size"] == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_trial"] in (0, 1) and summary["trials"] == {"complete": 2} and 0 <= summary["final"]["accuracy"] <= 1


# ---------------------------------------------------------------------------------- resume, pruning


def test_killed_search_resumes_with_finished_trials_intact(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "fit", FakeFit())
    out = tmp_path / "s"
    S.search(_base(tiny), out, space=SPACE, trials=3, folds=2, console=QUIET)
    before = {t.number: (t.params, t.value, t.user_attrs["fold_scores"]) for t in _study(out).trials}
    assert len(before) == 3

    # What a SIGKILL mid-trial leaves: a RUNNING trial of a process that no longer exists, and its lock.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = _study(out)
    t = study.ask()
    t.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    t.suggest_float("lr", 1e-4, 1e-1, log=True)
    (out / ".lock").write_text(str(dead.pid))

    res = S.search(_base(tiny), out, space=SPACE, trials=6, folds=2, console=QUIET)
    trials = _study(out).trials
    assert {n: (tr.params, tr.value, tr.user_attrs["fold_scores"]) for n, tr in enumerate(trials) if n < 3} == before
    assert trials[3].state == optuna.trial.TrialState.FAIL
    assert trials[4].user_attrs["continues"] == 3 and trials[4].params["lr"] == trials[3].params["lr"]  # it runs again first
    assert sum(tr.state in FINISHED for tr in trials) == 6 and len(trials) == 7
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [r["state"] for r in rows].count("STOPPED") == 1 and "FAIL" not in [r["state"] for r in rows] and len(rows) == 7
    assert res.states["stopped"] == 1 and "fail" not in res.states and not (out / ".lock").exists()  # a dead worker's trial is no failed configuration


class StopAt(FakeFit):
    """FakeFit that raises `exc` on its call number `at` (1-based)."""

    def __init__(self, at: int, exc: BaseException):
        super().__init__()
        self.at, self.exc = at, exc

    def __call__(self, cfg, *a, **kw):
        if len(self.calls) + 1 == self.at:
            self.calls.append(None)
            raise self.exc
        return super().__call__(cfg, *a, **kw)


def test_an_interrupted_trial_runs_again_from_its_next_fold_and_an_error_does_not(tiny, tmp_path, monkeypatch):
    out = tmp_path / "s"
    space = {**SPACE, "lr": 0.01}  # every trial scores the same: none is pruned
    # Ctrl-C in trial 1's second fold (call 5 of 3 folds a trial)
    monkeypatch.setattr(S, "fit", StopAt(5, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        S.search(_base(tiny), out, space=space, trials=3, folds=3, console=QUIET)
    t1 = _study(out).trials[1]
    assert t1.state == optuna.trial.TrialState.FAIL and "interrupted in fold 2 of 3" in t1.user_attrs["note"]
    assert len(t1.user_attrs["fold_scores"]) == 1 and "error" not in t1.user_attrs
    rows = list(csv.DictReader(open(out / "trials.csv")))  # the stopped search's trials.csv shows the interrupted trial
    assert [r["state"] for r in rows] == ["COMPLETE", "STOPPED"] and "interrupted in fold 2" in rows[1]["note"]

    again = FakeFit()
    monkeypatch.setattr(S, "fit", again)
    S.search(_base(tiny), out, space=space, trials=3, folds=3, console=QUIET)
    trials = _study(out).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    t2 = trials[2]
    assert t2.user_attrs["continues"] == 1 and t2.params == t1.params and "1 of 3 folds carried over" in t2.user_attrs["note"]
    assert t2.user_attrs["fold_scores"][0] == t1.user_attrs["fold_scores"][0] and len(t2.user_attrs["fold_scores"]) == 3
    assert t2.value == pytest.approx(np.mean(t2.user_attrs["fold_scores"]))
    assert {step for step in t2.intermediate_values} == {1, S.STEP_STRIDE + 1, 2 * S.STEP_STRIDE + 1}  # the carried fold's epoch too
    # trial 2 ran folds 2 and 3 only (their held-out parts), trial 3 all three
    assert len(again.calls) == 2 + 3 + 1 and again.calls[-1].out == out / "final"  # and the final refit
    held = [sorted(c.splits.val.sources) for c in again.calls[:5]]
    assert held[0] == held[3] and held[1] == held[4] and held[0] != held[1]  # trial 2's folds are trial 3's folds 2, 3
    assert held[2] not in held[:2]

    # an error (here out of memory) marks the trial failed for good: the search goes on and never reruns it
    out2 = tmp_path / "e"
    monkeypatch.setattr(S, "fit", StopAt(2, torch.OutOfMemoryError("CUDA out of memory")))
    S.search(_base(tiny), out2, space=SPACE, trials=2, folds=2, console=QUIET)
    monkeypatch.setattr(S, "fit", FakeFit())
    S.search(_base(tiny), out2, space=SPACE, trials=3, folds=2, console=QUIET)
    trials = _study(out2).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL and "OutOfMemoryError" in trials[0].user_attrs["error"]
    assert len(trials) == 4 and not any("continues" in t.user_attrs for t in trials)
    assert next(csv.DictReader(open(out2 / "trials.csv")))["state"] == "FAIL"  # an error is a failure; a stopped trial is not
    # a trial whose training diverged (a rate far too high) loses: pruned, not failed (three in a row ended the search)
    from transferkit.errors import Diverged

    out3 = tmp_path / "d"
    monkeypatch.setattr(S, "fit", StopAt(2, Diverged("training diverged in phase probe")))
    S.search(_base(tiny), out3, space=SPACE, trials=2, folds=2, console=QUIET)
    t0 = _study(out3).trials[0]
    assert t0.state == optuna.trial.TrialState.PRUNED and "diverged in fold 2" in t0.user_attrs["note"] and "error" not in t0.user_attrs

    def always(cfg, *a, **kw):
        raise Diverged("training diverged")

    monkeypatch.setattr(S, "fit", always)  # every trial: "run the same command again" would only diverge again
    with pytest.raises(UserError, match="every trial diverged .*: the learning rates searched are too high; lower the lr range"):
        S.search(_base(tiny), tmp_path / "all", space=SPACE, trials=2, folds=2, console=QUIET)


class TwoPhaseFit(FakeFit):
    """An lp_ft stand-in whose probe stops early after a number of epochs that varies by trial."""

    def __call__(self, cfg, out=None, *, console=None, splits=None, on_epoch=None, **kw):
        self.calls.append(SimpleNamespace(cfg=cfg, out=out, splits=splits))
        s = _score(cfg)
        probe = 3 + len(self.calls) % 4
        if on_epoch is not None:
            for e in range(1, probe + 1):
                on_epoch({"epoch": e, "phase": "1:probe", "val_accuracy": s * e / probe, "val_macro_f1": s, "val_loss": 1 - s})
            for e in range(1, 3):
                on_epoch({"epoch": probe + e, "phase": "2:finetune", "val_accuracy": s, "val_macro_f1": s, "val_loss": 1 - s})
        return SimpleNamespace(metrics={"accuracy": s, "macro_f1": s, "auroc": s, "n_train": 0, "n_val": 0, "wall_s": 0.0})


def test_pruner_steps_are_the_probe_then_fine_tuning_epochs_whatever_the_probe_length(tiny, tmp_path, monkeypatch):
    """Steps were the run's epoch numbers: a probe that stopped after 3 or 6 epochs put fine-tuning's
    first epoch at step 4 or 7, so the pruner compared one trial's first epoch with another's fourth;
    and the probe's score, reported only at epoch lp_epochs, never reached it."""
    monkeypatch.setattr(S, "fit", TwoPhaseFit())
    out = tmp_path / "s"
    S.search(_base(tiny), out, space={**SPACE, "strategy": "lp_ft", "lr": 0.01}, trials=3, folds=2, console=QUIET)
    for t in _study(out).trials:
        assert set(t.intermediate_values) == {0, 1, 2, S.STEP_STRIDE, S.STEP_STRIDE + 1, S.STEP_STRIDE + 2}
        assert t.intermediate_values[0] == pytest.approx(_score(SimpleNamespace(optim=SimpleNamespace(lr=0.01))))  # the probe's best


def test_losing_trials_are_pruned_and_the_time_budget_stops_cleanly(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "fit", FakeFit())
    out = tmp_path / "p"
    # lr far from 1e-2 scores badly: once a few trials completed, such trials stop at their first report.
    S.search(_base(tiny), out, space={**SPACE, "lr": {"low": 1e-6, "high": 1.0, "log": True}}, trials=8, folds=2, console=QUIET)
    trials = _study(out).trials
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all("pruned in fold" in t.user_attrs["note"] for t in pruned)
    assert all(len(t.user_attrs.get("fold_scores", [])) < 2 for t in pruned)

    # A budget smaller than one trial: the trial in progress stops between folds, nothing is lost.
    monkeypatch.setattr(S, "fit", FakeFit(delay=3.5))
    out2 = tmp_path / "t"
    with pytest.raises(UserError, match="time budget"):
        S.search(_base(tiny), out2, space=SPACE, trials=50, folds=3, time_budget=3.0, console=QUIET)
    (t,) = _study(out2).trials
    assert t.state == optuna.trial.TrialState.FAIL and "time budget" in t.user_attrs["note"] and "error" not in t.user_attrs
    assert len(t.user_attrs["fold_scores"]) == 1
    # ... and the same command goes on with it, its first fold carried over. It was PRUNED, counted as
    # finished, and never ran again: every rerun started another trial that the budget cut alike.
    monkeypatch.setattr(S, "fit", fake := FakeFit(delay=0.0))
    res = S.search(_base(tiny), out2, space=SPACE, trials=1, folds=3, time_budget=60.0, console=QUIET)
    first, again = _study(out2).trials[:2]
    assert again.user_attrs["continues"] == 0 and again.params == first.params and again.state == optuna.trial.TrialState.COMPLETE
    assert len([c for c in fake.calls if c.splits is not None]) == 2 and res.best_number == 1  # folds 2 and 3 only
    summary = json.loads((out2 / "summary.json").read_text())
    assert summary["trials"] == {"stopped": 1, "complete": 1} == res.states  # the budget's cut trial is not called a failure


def test_lr_find_centres_the_learning_rate_range(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "fit", FakeFit())
    out = tmp_path / "s"
    space = {"strategy": "linear_probe", "batch_size": 8, "lp_epochs": 3}
    S.search(_base(tiny), out, space=space, trials=2, folds=2, lr_find=True, console=QUIET)
    meta = json.loads((out / "search.json").read_text())
    s = meta["lr_find"]["suggestion"]
    assert meta["lr_find"]["strategy"] == "linear_probe" and (out / "lr_find.png").is_file()
    assert meta["space"]["lr"] == {"low": float(f"{s / 10:.3g}"), "high": float(f"{min(s * 10, 1.0):.3g}"), "log": True}
    assert all(s / 10.1 <= t.params["lr"] <= s * 10.1 for t in _study(out).trials)


# ------------------------------------------------------------------------------------------- space


def test_space_merges_over_the_defaults_and_flags_fix_settings(tiny):
    base = _base(tiny)
    sp = S.resolve_space({"lr": {"low": "1e-5", "high": 1e-2, "log": True}, "strategy": {"choices": ["linear_probe", "lp_ft"]}, "epochs": 5}, base, fixed={"label_smoothing"}, batch_sizes=[8, 16])
    assert (sp["lr"].low, sp["lr"].high, sp["lr"].log) == (1e-5, 1e-2, True)  # YAML reads 1e-5 as a string
    assert sp["epochs"].kind == "fixed" and "label_smoothing" not in sp and sp["batch_size"].choices == [8, 16]
    assert "weight_decay" in sp and "crop_scale_min" in sp  # defaults not named stay
    # Settings only some strategies use are sampled only for them.
    t = optuna.create_study().ask()
    params = S.sample(t, {"strategy": S.Dim("strategy", "fixed", value="linear_probe"), **{k: v for k, v in sp.items() if k != "strategy"}}, "lp_ft")
    assert "lr" in params and "crop_scale_min" not in params and "layer_decay" not in params
    # a text model's default space: no image augmentation, LoRA among the strategies, text rates
    text = S.resolve_space(None, replace(RunConfig(), data="t.csv", model="minilm_l6"))
    assert "crop_scale_min" not in text and "lora" in text["strategy"].choices and text["lr"].high <= 3e-3


# -------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "space, extra, message",
    [
        (None, ["--folds", "11"], "class 'blue' has only 10 training image(s), fewer than --folds 11"),
        ({"lr": {"low": 1e-2, "high": 1e-4}}, [], "low (0.01) is above high (0.0001)"),
        ({"strategy": {"choices": []}}, [], "choices must be a non-empty list"),
        ({"strategy": {"choices": ["linear_probe", "lp_fit"]}}, [], "unknown strategy 'lp_fit' (did you mean: lp_ft?)"),
        ({"lerning_rate": 0.1, "lr": {"low": 1e-4, "high": 1e-2}}, [], "unknown setting 'lerning_rate'"),
        ({"lrr": {"low": 1e-4, "high": 1e-2}}, [], "(did you mean: lr"),
        ({"label_smoothing": {"low": 0.0, "high": 1.5}}, [], "label_smoothing bound 1.5"),
        ({"lr": {"low": 0.0, "high": 1e-2, "log": True}}, [], "a log range needs low > 0"),
        ({"epochs": 3, "lr": 0.01}, ["--lr", "0.01"], "also given as flag(s) --lr"),
        ({"strategy": "linear_probe", "lr": 0.01, "weight_decay": 0.0, "label_smoothing": 0.0, "batch_size": 8}, [], "every setting that linear_probe uses is fixed"),
        ({"strategy": "full", "lr": 0.01, "weight_decay": 0.0, "layer_decay": 1.0, "epochs": 1, "label_smoothing": 0.0, "crop_scale_min": 0.5, "batch_size": 8}, [], "nothing to search"),
        # momentum only: adamw never reads it, so every trial was the same configuration
        ({"strategy": "full", "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0, "layer_decay": 1.0, "epochs": 1, "label_smoothing": 0.0,
          "crop_scale_min": 0.5, "batch_size": 8, "momentum": {"low": 0.8, "high": 0.99}}, [], "nothing to search"),
        ({"data": "elsewhere"}, [], "give it as --data"),
        ({"lr": {"low": 1e-4, "high": 1e-2}}, ["--lr-find"], "--lr-find centres the learning-rate range itself"),
        ({}, [], "is empty"),
        ({"strategy": {"choices": ["full", "partial"]}, "k": 11}, [], "strategy partial: k=11 is larger than the number of block groups"),
        (None, ["--storage", "postgresql://nobody@127.0.0.1:1/none", "--study", "x"], "cannot use the study database postgresql://nobody@127.0.0.1:1/none"),
        (None, ["--storage", "sqlite:///x.db"], "--storage needs --study NAME"),
        (None, ["--metric", "loss"], "must be accuracy or macro_f1"),
    ],
)
def test_bad_inputs_exit_2_with_their_message(tiny, tmp_path, capsys, space, extra, message):
    args = ["search", *_flags(tiny), "--out", str(tmp_path / "s"), "--trials", "2", "--folds", "2", *extra]
    if space is not None:
        p = tmp_path / "space.yaml"
        p.write_text(yaml.safe_dump(space) if space else "")
        args += ["--space", str(p)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "s" / "study.db").exists()  # refused before its study exists: a corrected rerun into the same DIR is not "a different search"
    if "--storage" in extra:
        assert not (tmp_path / "s").exists()  # no silent fallback to a local database


def test_a_dir_holding_another_search_is_refused(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(S, "fit", FakeFit())
    out = tmp_path / "s"
    sp = _space_file(tmp_path, SPACE)
    assert main(["search", *_flags(tiny), "--space", sp, "--out", str(out), "--trials", "1", "--folds", "2"]) == 0
    other = _space_file(tmp_path, {**SPACE, "lr": {"low": 1e-3, "high": 1e-1, "log": True}})
    assert main(["search", *_flags(tiny), "--space", other, "--out", str(out), "--trials", "2", "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{out} holds a different search (space" in err and "choose another --out" in err
    assert main(["search", *_flags(tiny), "--space", sp, "--out", str(out), "--trials", "2", "--folds", "3"]) == 2
    assert "folds 2 (now 3)" in capsys.readouterr().err
    assert len(_study(out).trials) == 1


def test_settings_a_config_file_sets_are_fixed_like_flags(tiny, tmp_path, capsys, monkeypatch):
    """`search --config c.yaml` sampled strategy and lr over c.yaml's own `strategy: linear_probe` and
    `lr: 0.003` in silence; settings it sets (changed from the defaults) are fixed, as flags are."""
    fake = FakeFit()
    monkeypatch.setattr(S, "fit", fake)
    (tmp_path / "c.yaml").write_text("strategy: linear_probe\nlr: 0.003\n")
    args = ["search", *[f for f in _flags(tiny) if f != "--quiet"], "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "s"), "--trials", "3", "--folds", "2"]
    assert main(args) == 0, capsys.readouterr().err
    assert {(c.cfg.strategy.name, c.cfg.optim.lr) for c in fake.calls} == {("linear_probe", 0.003)}
    assert "lr=0.003 (given)" in " ".join(capsys.readouterr().out.split())
    sp = _space_file(tmp_path, {"lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    assert main([*args[:-6], "--space", sp, "--out", str(tmp_path / "s2"), "--trials", "1", "--folds", "2"]) == 2
    assert "--space names lr, also given as flag(s) --lr or in the --config file" in capsys.readouterr().err
    # a run's own config.yaml records the default rate it resolved (lr: 0.001): not a choice, so still searched
    (tmp_path / "run.yaml").write_text("strategy: linear_probe\nlr: 0.001\n")
    fake.calls.clear()
    flags = [f for f in _flags(tiny) if f != "--quiet"]
    assert main(["search", *flags, "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "s3"), "--trials", "3", "--folds", "2"]) == 0
    assert len({c.cfg.optim.lr for c in fake.calls}) > 1 and {c.cfg.strategy.name for c in fake.calls} == {"linear_probe"}


# ----------------------------------------------------------------------------------------- lr-find


def test_lr_find_suggestion_rules():
    lrs = lr_schedule(1e-6, 1.0, 61)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    # A curve flat until 1e-4, falling fastest at 1e-3, lowest at 1e-2, then rising.
    x = np.log10(lrs)
    loss = 2 - np.tanh((x + 3) * 2) + np.where(x > -2, (x + 2) ** 2 * 3, 0)
    steepest, min_div10 = suggest(lrs, loss)
    assert steepest == pytest.approx(1e-3, rel=0.3) and min_div10 == pytest.approx(lrs[np.argmin(loss)] / 10)


def test_lr_find_smoothing_does_not_lag_and_a_flat_loss_suggests_nothing():
    """A short sweep (30 steps) whose loss falls between 1e-4 and 1e-2 and explodes past 0.1: the
    debiased EMA (beta 0.98) lags by about half the sweep, and its steepest descent landed far to the
    right, near the blow-up; the centred average finds the fall. A loss that never falls: no suggestion."""
    lrs = lr_schedule(1e-7, 10.0, 30)
    x = np.log10(lrs)
    loss = 1.1 - 0.9 * np.tanh((x + 3) * 1.5) + np.where(x > -1, 30 * (x + 1) ** 2, 0)  # falls fastest at 1e-3
    centred, _ = suggest(lrs, smooth_centred(loss, 3))
    ema = np.array([sum(0.02 * 0.98 ** (i - j) * v for j, v in enumerate(loss[: i + 1])) / (1 - 0.98 ** (i + 1)) for i in range(len(loss))])
    lagged, _ = suggest(lrs, ema)  # fastai's debiased EMA, beta 0.98
    assert 5e-4 <= centred <= 2e-3 and lagged > 2.5 * centred, (centred, lagged)
    assert smooth_centred([1, 2, 3, 4], 3).tolist() == [1.5, 2.0, 3.0, 3.5]
    assert smooth_centred([2.0, 2.0, 156.0, 2.0, 2.0], 3).tolist() == [2.0, 2.0, 2.0, 2.0, 2.0]  # a lone spike is not a cliff
    assert never_fell(smooth_centred(2.3 + 0.01 * np.random.default_rng(0).standard_normal(30), 3)) and not never_fell(smooth_centred(loss, 3))
    # with the raw losses (QA): a loss that rose at once (its centred start already 40) and one that
    # only wanders in noise did not fall, though their smoothed curves dip below their smoothed start
    rose = [0.717, 63.5, 40, 30, 28, 26, 25, 27, 30, 50, 100, 269]
    noisy = (0.7 + 0.04 * np.random.default_rng(1).standard_normal(100)).tolist()
    # (window 11: lr-find's for 100 steps)
    assert not never_fell(smooth_centred(rose, 3)) and not never_fell(smooth_centred(noisy, 11))  # as the old rule read them
    assert never_fell(smooth_centred(rose, 3), rose) and never_fell(smooth_centred(noisy, 11), noisy)
    # a real fall of 17% under noise of 6% (QA: refused by the first version of the raw rule)
    t = np.linspace(0, 1, 100)
    moderate = (0.69 - 0.12 * np.clip((t - 0.2) / 0.3, 0, 1) + np.where(t > 0.65, (t - 0.65) * 20, 0)
                + np.random.default_rng(3).normal(0, 0.04, 100)).tolist()
    assert not never_fell(smooth_centred(moderate, 11), moderate)
    falls = (loss + 0.03 * np.random.default_rng(2).standard_normal(len(loss))).tolist()
    assert not never_fell(smooth_centred(falls, 3), falls)


def test_lr_find_cli_writes_plot_and_prints_suggestion(tiny, tmp_path, capsys):
    # lp_ft's sweep starts from the head a probe trains for --lp-epochs: not said to be ignored (it was)
    main(["lr-find", *_flags(tiny), "--strategy", "lp_ft", "--lp-epochs", "2", "--batch-size", "8", "--steps", "10", "--out", str(tmp_path / "lp")])
    assert "ignores --lp-epochs" not in capsys.readouterr().err
    rc = main(["lr-find", *_flags(tiny), "--strategy", "full", "--batch-size", "8", "--steps", "30", "--lr", "0.05", "--out", str(tmp_path)])
    assert rc == 0
    cap = capsys.readouterr()
    printed, err = cap.out, " ".join(cap.err.split())
    # QA AM: --lr, which the sweep replaces, was ignored without a word; and a coarse sweep's rough suggestion is said
    assert "lr-find sweeps --steps steps and ignores --lr" in err and "with 30 steps the rate grows x1.9 a step: the curve is coarse" in err
    assert "suggested lr:" in printed and (tmp_path / "lr_find.png").stat().st_size > 1000
    res = json.loads((tmp_path / "lr_find.json").read_text())
    assert 1e-7 <= res["suggestion"] <= 10 and f"{res['suggestion']:.2e}" in printed
    assert 5 <= len(res["lrs"]) <= 30 and res["lrs"] == sorted(res["lrs"])
    assert res["swept_with"]["optimizer"] == "adamw" and res["swept_with"]["batch_size"] == 8 and res["swept_with"]["steps"] == 30  # reproducible
    if res["stopped_early"]:  # the stop rule: the median of the last 3 losses passed 4x the lowest such median
        raw = res["raw_losses"]
        med = [float(np.median(raw[i - 2 : i + 1])) for i in range(2, len(raw))]
        assert med[-1] > 4 * min(med[:-1])
    # lp_ft sweeps its fine-tuning from the head its probe trained, as fit runs it
    rc = main(["lr-find", *_flags(tiny), "--strategy", "lp_ft", "--lp-epochs", "3", "--batch-size", "8", "--steps", "12", "--out", str(tmp_path / "lpft")])
    trained = json.loads((tmp_path / "lpft" / "lr_find.json").read_text())["trained"]
    assert rc in (0, 1) and "finetune phase, applied lr = lr x 0.1, from the head 3 probe epochs trained" in trained, trained
    assert rc == 1 or "for lp_ft: --lr" in capsys.readouterr().out  # --lr also moves the probe: says how to move fine-tuning only


# ---------------------------------------------------------------------------- workers on PostgreSQL


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


@pytest.fixture(scope="module")
def pg_url():
    url = os.environ.get("TRANSFERKIT_TEST_PG_URL")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install psycopg2-binary): no PostgreSQL driver")
    if url:
        yield url
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql, or source scripts/ci_postgres.sh")
    root = os.geteuid() == 0
    if root and shutil.which("su") is None:
        pytest.skip("running as root without `su` to start PostgreSQL as another user")
    d = tempfile.mkdtemp(prefix="tk-pg-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(cmd: str):
        full = ["su", "postgres", "-s", "/bin/sh", "-c", cmd] if root else ["/bin/sh", "-c", cmd]
        return subprocess.run(full, capture_output=True, text=True, timeout=60)

    if root:
        shutil.chown(d, "postgres")
    r = run(f"{initdb} -D {d}/data -U postgres --auth=trust --no-sync -E UTF8 >{d}/initdb.log 2>&1")
    if r.returncode != 0:
        pytest.skip(f"initdb failed: {Path(d, 'initdb.log').read_text()[-300:] if Path(d, 'initdb.log').exists() else r.stderr}")
    r = run(f"{pg_ctl} -D {d}/data -l {d}/log -w -o '-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off' start")
    if r.returncode != 0:
        pytest.skip(f"PostgreSQL did not start: {r.stdout[-300:]} {r.stderr[-300:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(f"{pg_ctl} -D {d}/data -m immediate stop")
        shutil.rmtree(d, ignore_errors=True)


WORKER = """
import math, os, sys, time
from pathlib import Path
from types import SimpleNamespace
import transferkit.search as S


def fake_fit(cfg, out=None, *, splits=None, on_epoch=None, **kw):  # the test module's FakeFit, standalone
    time.sleep({delay} if splits is not None else 0)
    s = max(0.0, 1.0 - abs(math.log10(cfg.optim.lr) + 2) / 4)
    if on_epoch is not None:
        on_epoch({{"epoch": 1, "phase": "finetune", "val_accuracy": s, "val_macro_f1": s, "val_loss": 1 - s}})
    return SimpleNamespace(metrics={{"accuracy": s, "macro_f1": s}})


S.fit = fake_fit
from transferkit.cli import main

ready = Path({ready!r})  # start together: both workers are imported before either runs a trial
(ready / str(os.getpid())).touch()
t0 = time.monotonic()
while len(list(ready.iterdir())) < {count} and time.monotonic() - t0 < 60:
    time.sleep(0.05)
sys.exit(main(sys.argv[1:]))
"""


def _workers(tiny, tmp_path, url, study, n, delay, count=2):
    script = tmp_path / "worker.py"
    (tmp_path / "ready").mkdir()
    script.write_text(WORKER.format(delay=delay, ready=str(tmp_path / "ready"), count=count))
    space = _space_file(tmp_path, SPACE)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    procs = []
    for i in range(count):
        args = ["search", *_flags(tiny), "--space", space, "--out", str(tmp_path / f"w{i}"), "--trials", str(n), "--folds", "2", "--storage", url, "--study", study]
        log = open(tmp_path / f"w{i}.log", "w")
        procs.append(subprocess.Popen([sys.executable, str(script), *args], stdout=log, stderr=subprocess.STDOUT, env=env))
    return procs


def test_two_postgres_workers_finish_the_study_even_when_one_is_killed_mid_trial(tiny, tmp_path, pg_url):
    """Workers A and B share one study; A is SIGKILLed in the middle of a trial after finishing at least
    one. Its finished work stays, its interrupted trial is marked FAIL, and B completes the N trials:
    none lost, none run twice."""
    study_name = f"workers-{os.getpid()}-{time.time_ns()}"
    n = 6
    a, b = _workers(tiny, tmp_path, pg_url, study_name, n=n, delay=0.4)
    storage = S.open_storage(pg_url)
    victim, deadline = None, time.monotonic() + 90
    while victim is None and time.monotonic() < deadline and a.poll() is None:
        time.sleep(0.1)
        try:
            trials = optuna.load_study(study_name=study_name, storage=storage).trials
        except KeyError:
            continue
        mine = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{a.pid}")]
        running = [t.number for t in mine if t.state == optuna.trial.TrialState.RUNNING]
        if any(t.state in FINISHED for t in mine) and running:
            a.send_signal(signal.SIGKILL)
            victim = running[0]
    assert victim is not None, (tmp_path / "w0.log").read_text()
    a.wait(timeout=10)
    assert b.wait(timeout=120) == 0, (tmp_path / "w1.log").read_text()

    trials = optuna.load_study(study_name=study_name, storage=storage).trials
    assert trials[victim].state == optuna.trial.TrialState.FAIL
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == n and [t.number for t in trials] == list(range(len(trials)))
    assert {t.user_attrs["worker"].rpartition(":")[2] for t in finished} == {str(a.pid), str(b.pid)}  # both did work
    # B ran A's interrupted trial again, unless A was killed before the trial had drawn its configuration
    assert len([t for t in finished if t.user_attrs.get("continues") == victim]) == (1 if trials[victim].params else 0), trials[victim]
    others = [t for t in trials if t.state not in FINISHED and t.number != victim]
    assert all("surplus" in t.user_attrs.get("note", "") for t in others)  # only a same-instant race makes one
    rows = list(csv.DictReader(open(tmp_path / "w1" / "trials.csv")))  # B's record of the whole study
    assert sorted(int(r["number"]) for r in rows if r["state"] in ("COMPLETE", "PRUNED")) == sorted(t.number for t in finished)
    assert [r["state"] for r in rows if int(r["number"]) == victim] == ["STOPPED"]


# ------------------------------------------------------------------------- QA AI: data, budget, refit


def test_copies_stay_on_one_side_of_every_fold():
    """Split by position, a copy on both sides of a fold scored the fold on an example it trained on
    (100 texts each listed twice with random labels: cross-validated 0.77, held out 0.52)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 100).repeat(2)  # every example twice, with its label
    keys = [f"k{i}" for i in range(100) for _ in range(2)]
    for seed in range(3):
        folds = S.stratified_folds(labels, ["a", "b"], 5, seed, keys=keys)
        for tr, va in folds:
            assert not {keys[i] for i in tr} & {keys[i] for i in va}
        assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(200))
    # without copies the folds are StratifiedKFold's, as before (an old search's folds do not move)
    plain = np.arange(200) % 2
    assert all((a[1] == b[1]).all() for a, b in zip(S.stratified_folds(plain, ["a", "b"], 4, 0, keys=[str(i) for i in range(200)]),
                                                     S.stratified_folds(plain, ["a", "b"], 4, 0)))
    with pytest.raises(UserError, match="only 2 different ones .* use --folds 2 or fewer"):
        S.stratified_folds(np.array([0] * 6 + [1] * 6), ["a", "b"], 3, 0, keys=["x", "x", "x", "y", "y", "y"] + [str(i) for i in range(6)], unit="texts")


def test_a_search_into_its_dir_is_refused_once_the_data_changed(tiny, tmp_path, monkeypatch, capsys):
    """It went on in silence: trials on 400 texts joined trials on 200, and the bigger data won."""
    monkeypatch.setattr(S, "fit", FakeFit())
    data = tmp_path / "d"
    shutil.copytree(tiny.data, data)
    out = tmp_path / "s"
    args = ["search", *_flags(tiny), "--data", str(data), "--space", _space_file(tmp_path, SPACE), "--out", str(out), "--folds", "2"]
    assert main([*args, "--trials", "1"]) == 0
    assert main([*args, "--trials", "2"]) == 0  # the same data: it goes on
    shutil.copy(data / "red" / "0.png", data / "red" / "copy.png")
    capsys.readouterr()
    assert main([*args, "--trials", "3"]) == 2
    err = capsys.readouterr().err
    assert "its data changed since the search began" in err and "Traceback" not in err
    assert len(_study(out).trials) == 2


def test_a_study_database_that_cannot_be_written_is_said(tiny, tmp_path, monkeypatch):
    from optuna.exceptions import StorageInternalError

    def refuse(**kw):
        raise StorageInternalError("An exception is raised during the commit. e.g. exceeding max length.") from RuntimeError("attempt to write a readonly database")

    monkeypatch.setattr(optuna, "create_study", refuse)
    with pytest.raises(UserError, match=r"cannot use the study database .*study.db: attempt to write a readonly database .check that it and its folder are writable"):
        S.search(_base(tiny), tmp_path / "s", space=SPACE, trials=1, folds=2, console=QUIET)


def test_ctrl_c_in_the_final_refit_is_said_as_such_and_the_refit_resumes(tiny, tmp_path, monkeypatch, capsys):
    fake = StopAt(3, KeyboardInterrupt())  # 2 folds of 1 trial, then the refit
    monkeypatch.setattr(S, "fit", fake)
    out = tmp_path / "s"
    args = ["search", *_flags(tiny), "--space", _space_file(tmp_path, SPACE), "--out", str(out), "--trials", "1", "--folds", "2"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "during the final refit" in err and "runs again" not in err  # it said the interrupted trial runs again: none did
    # what the refit left: its config and a checkpoint folder. The same command resumes it (it began anew).
    best = load_config_file(out / "best.yaml")
    (out / "final" / "checkpoints").mkdir(parents=True)
    (out / "final" / "config.yaml").write_text(yaml.safe_dump(best.to_dict()))
    seen = []
    monkeypatch.setattr(S, "fit", lambda cfg, o=None, **kw: seen.append(kw) or FakeFit()(cfg, o))
    assert main(args) == 0
    assert seen == [{"overwrite": False, "resume": True, "console": seen[0]["console"]}]


def test_a_search_with_no_finished_fold_is_begun_afresh_by_a_changed_command(tiny, tmp_path, monkeypatch, capsys):
    """A mistake its first trial found (--freeze matching nothing) left a study that the corrected
    command was refused for, as "a different search", for good."""
    monkeypatch.setattr(S, "fit", StopAt(1, UserError("a mistake found by the first fit")))
    out = tmp_path / "s"
    args = ["search", *[f for f in _flags(tiny) if f != "--quiet"], "--space", _space_file(tmp_path, SPACE), "--out", str(out), "--trials", "1", "--folds", "2"]
    assert main([*args, "--label-smoothing", "0.2"]) == 2
    assert (out / "study.db").exists()
    monkeypatch.setattr(S, "fit", FakeFit())
    assert main(args) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "held a different search (fixed ['input_size', 'label_smoothing'] (now ['input_size']); settings train.label_smoothing) without a finished fold; starting this one afresh" in said
    assert [t.state.name for t in _study(out).trials] == ["COMPLETE"]
    # one with a finished trial is kept: refused
    assert main([*args, "--label-smoothing", "0.2"]) == 2
    # and --freeze is checked before the study exists
    capsys.readouterr()
    assert main([*args[:-4], "--out", str(tmp_path / "f"), "--trials", "1", "--folds", "2", "--freeze", "zzz"]) == 2
    assert "freeze pattern 'zzz' matches no parameter" in capsys.readouterr().err and not (tmp_path / "f").exists()


def test_a_setting_the_trials_optimizer_or_head_does_not_read_is_not_sampled(tiny):
    """momentum was sampled for adamw trials (and shown in best.yaml), head_hidden for a linear head."""
    sp = S.parse_space({"optimizer": {"choices": ["sgd", "adamw"]}, "momentum": {"low": 0.5, "high": 0.99}, "head_hidden": {"choices": [64, 128]},
                        "schedule": "step", "step_size": {"choices": [1, 2]}, "lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    got = [S.sample(study.ask(), sp, "full", _base(tiny)) for _ in range(20)]
    assert {p["optimizer"] for p in got} == {"sgd", "adamw"}
    assert all(("momentum" in p) == (p["optimizer"] == "sgd") for p in got)
    assert not any("head_hidden" in p for p in got) and all("step_size" in p for p in got)
    assert not any("step_size" in p for p in (S.sample(study.ask(), sp, "linear_probe", _base(tiny)) for _ in range(3)))  # the probe has its own schedule
    mlp = replace(_base(tiny), head="mlp")
    assert all("head_hidden" in S.sample(study.ask(), sp, "full", mlp) for _ in range(3))


def test_space_file_from_a_pipe_and_a_space_error_leaves_no_folder(tiny, tmp_path, capsys):
    r, w = os.pipe()
    os.write(w, yaml.safe_dump(SPACE).encode())
    os.close(w)
    assert S.load_space_file(f"/dev/fd/{r}") == json.loads(json.dumps(SPACE))
    os.close(r)
    bad = _space_file(tmp_path, {"strategy": {"choices": ["full", "partial"]}, "k": 11})
    assert main(["search", *_flags(tiny), "--space", bad, "--out", str(tmp_path / "new"), "--trials", "2", "--folds", "2"]) == 2
    assert not (tmp_path / "new").exists()


def test_yaml_no_is_precision_no_and_elsewhere_a_quoting_hint(tmp_path):
    from transferkit.config import config_from_dict

    assert config_from_dict(yaml.safe_load("precision: no")).train.precision == "no"
    with pytest.raises(UserError, match="class_weight: YAML read the value as false .* put the word in quotes"):
        config_from_dict(yaml.safe_load("class_weight: no"))


def test_review_ak_shared_study_refit_checkpoints_mixed_copies_and_old_searches(tiny, tmp_path, monkeypatch, capsys):
    """Review AK: a search of a shared study, rerun into its DIR without --storage, was taken for one
    "without a finished fold" and wiped; a refit resumed another configuration's checkpoints; copies
    with different labels could leave a fold without a class; a search begun before copies were kept
    together switched its folds midway."""
    monkeypatch.setattr(S, "fit", FakeFit())
    out = tmp_path / "s"
    S.search(_base(tiny), out, space=SPACE, trials=1, folds=2, storage=f"sqlite:///{tmp_path / 'shared.db'}", study_name="team", console=QUIET)
    with pytest.raises(UserError, match="holds a different search"):
        S.search(_base(tiny), out, space=SPACE, trials=1, folds=2, console=QUIET)
    assert (out / "search.json").is_file() and (out / "summary.json").is_file()

    # a stale refit's checkpoints (another configuration's) are cleared before a refit from scratch
    out2 = tmp_path / "r"
    (out2 / "final" / "checkpoints").mkdir(parents=True)
    (out2 / "final" / "checkpoints" / "ckpt-000003.pt").write_bytes(b"another configuration's")
    seen = []
    monkeypatch.setattr(S, "fit", lambda cfg, o=None, **kw: seen.append((o, kw.get("resume"), (out2 / "final" / "checkpoints").exists())) or FakeFit()(cfg, o))
    S.search(_base(tiny), out2, space=SPACE, trials=1, folds=2, console=QUIET)
    assert seen[-1] == (out2 / "final", False, False)

    labels = np.array([0, 1, 1, 0, 1, 0])
    with pytest.raises(UserError, match="a fold of --folds 2 has no .* on one side"):
        S.stratified_folds(labels, ["a", "b"], 2, 0, keys=["k0", "k1", "k1", "k1", "k2", "k0"])

    # a search begun before copies were kept together goes on with its folds by position
    data = tmp_path / "d"
    shutil.copytree(tiny.data, data)
    shutil.copy(data / "red" / "0.png", data / "red" / "0-copy.png")
    monkeypatch.setattr(S, "fit", FakeFit())
    old = tmp_path / "old"
    S.search(replace(_base(tiny), data=str(data)), old, space=SPACE, trials=1, folds=2, console=QUIET)
    study = _study(old)
    request = {k: v for k, v in study.user_attrs["transferkit_request"].items() if k != "examples"}
    study.set_user_attr("transferkit_request", request)
    meta = json.loads((old / "search.json").read_text())
    meta["request"].pop("examples")
    (old / "search.json").write_text(json.dumps(meta))
    con = report.console(quiet=False)
    with con.capture() as cap:
        S.search(replace(_base(tiny), data=str(data)), old, space=SPACE, trials=2, folds=2, console=con)
    assert "this search began before copies were kept on one side of every fold" in " ".join(cap.get().split())


def test_a_space_with_one_value_is_fixed_and_a_step_must_divide_its_range(tmp_path, capsys):
    """QA AR: `choices: [linear_probe]` and `low: 0.01, high: 0.01` were searched (identical trials; lr-find
    swept lp_ft for a space of linear probes); a step that does not divide the range was shown as 2 .. 5
    while Optuna lowered it to 4 with a raw warning each trial; a trial the time budget stopped printed
    'fail'; lr-find took --end-lr inf and wrote `Infinity` into its JSON; did-you-mean offered the
    refused key itself."""
    import optuna
    from rich.console import Console

    from transferkit.errors import did_you_mean
    from transferkit.search import _print_trial, parse_space

    space = parse_space({"strategy": {"choices": ["linear_probe"]}, "lr": {"low": 0.01, "high": 0.01}, "epochs": {"low": 2, "high": 6, "step": 2}})
    assert (space["strategy"].kind, space["strategy"].value, space["lr"].kind, space["lr"].value, space["epochs"].kind) == ("fixed", "linear_probe", "fixed", 0.01, "range")
    with pytest.raises(UserError, match=r"epochs: step 2 does not divide high - low \(5 - 2\): the highest value reached would be 4; give high 4 or 6"):
        parse_space({"epochs": {"low": 2, "high": 5, "step": 2}})
    with pytest.raises(UserError, match=r"lr: step 0.002 does not divide"):
        parse_space({"lr": {"low": 1e-3, "high": 4e-3, "step": 0.002}})
    parse_space({"lr": {"low": 0.1, "high": 0.3, "step": 0.1}})  # 0.3 - 0.1 is 0.19999999999999998: divides all the same

    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={}, distributions={}, user_attrs={"note": "stopped by the time budget"}))
    con = Console(record=True, width=200)
    _print_trial(con, study, study.trials[0], "accuracy")
    assert con.export_text().startswith("trial   0 stopped ")

    assert main(["lr-find", "--data", "digits", "--model", "small_convnet", "--out", str(tmp_path / "l"), "--end-lr", "inf"]) == 2
    assert "lr-find needs finite rates" in capsys.readouterr().err
    assert did_you_mean("optim", ["optim", "optimizer", "schedule"]) == " (did you mean: optimizer?)"
    assert did_you_mean("lerning_rate", ["lr", "epochs", "decay_rate"]).startswith(" (did you mean: lr")


def test_search_keeps_what_base_sets_writes_a_failed_trial_and_keeps_a_continued_trial_s_link(tiny, tmp_path, monkeypatch):
    """QA F: in Python, search(base) searched over the strategy and lr `base` set (the command line keeps
    a --config file's fixed); an error that ended the search left its trial out of trials.csv; a trial
    that continued an interrupted one lost "continues trial N" to its next note."""
    import csv

    monkeypatch.setattr(S, "fit", fake := FakeFit())
    res = S.search(replace(_base(tiny), strategy="linear_probe", lr=0.05), tmp_path / "a", trials=2, folds=2, console=QUIET)
    assert {c.cfg.strategy.name for c in fake.calls} == {"linear_probe"} and {c.cfg.optim.lr for c in fake.calls} == {0.05}
    assert res.best_config.optim.lr == 0.05
    # the space names what it searches, base or not
    S.search(replace(_base(tiny), lr=0.05), tmp_path / "b", space=SPACE, trials=2, folds=2, console=QUIET)

    def broken(cfg, out=None, **kw):
        if len(fake.calls) >= 2:
            raise RuntimeError("a bug")
        return fake(cfg, out, **kw)

    fake.calls.clear()
    monkeypatch.setattr(S, "fit", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        S.search(_base(tiny), tmp_path / "c", space=SPACE, trials=3, folds=2, console=QUIET)
    rows = list(csv.DictReader(open(tmp_path / "c" / "trials.csv")))
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL"] and "RuntimeError" in rows[1]["note"]

    monkeypatch.setattr(S, "fit", FakeFit(delay=2.0))
    out = tmp_path / "d"
    for _ in range(2):  # cut by the budget after fold 1, then continued and cut again after fold 2
        with pytest.raises(UserError, match="time budget"):
            S.search(_base(tiny), out, space=SPACE, trials=50, folds=3, time_budget=1.5, console=QUIET)
    again = _study(out).trials[1]
    assert again.user_attrs["note"].startswith("continues trial 0: 1 of 3 folds carried over; stopped by the time budget after 2 of 3 folds")
