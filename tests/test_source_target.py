"""`--model run:RUN_DIR`: a finished run is a pretrained model for the next task."""

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_folder, tiny_args
from transferkit.cli import main
from transferkit import report
from transferkit.config import RunConfig, StrategyConfig, replace
from transferkit.errors import UserError


def _fit(args, capsys):
    rc = main(["fit", *args])
    return rc, capsys.readouterr().err


@pytest.fixture
def source_run(tmp_path, capsys, tiny_ckpt):
    d = make_folder(tmp_path / "src", n=5)
    out = tmp_path / "source"
    rc, err = _fit(["--data", str(d), *tiny_args(tiny_ckpt), "--strategy", "full", "--epochs", "1", "--out", str(out)], capsys)
    assert rc == 0, err
    return out


def test_a_relative_run_model_is_kept_absolute_so_the_config_works_from_any_folder(source_run, tmp_path, capsys, monkeypatch):
    """config.yaml kept run:source as given: `fit --resume` and `fit --config RUN/config.yaml` from
    another folder failed with "--model run:source: no such directory"."""
    import yaml

    from transferkit.config import absolute_model_name

    monkeypatch.chdir(tmp_path)
    rc, err = _fit(["--data", str(tmp_path / "src"), "--model", "run:source", "--input-size", "16", "--batch-size", "4", "--strategy", "linear_probe",
                    "--lp-epochs", "1", "--out", "target"], capsys)
    assert rc == 0, err
    assert yaml.safe_load((tmp_path / "target" / "config.yaml").read_text())["model"]["name"] == f"run:{source_run.resolve()}"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    rc, err = _fit(["--config", str(tmp_path / "target" / "config.yaml"), "--out", "again"], capsys)
    assert rc == 0, err
    assert absolute_model_name("random:file:../src") == f"random:file:{(tmp_path / 'src').resolve()}"
    assert absolute_model_name("hf:bert-base-uncased") == "hf:bert-base-uncased" and absolute_model_name("run:no/such") == "run:no/such"


def test_run_backbone_is_the_source_runs_backbone_and_head_kept_for_same_classes(source_run, tmp_path):
    from transferkit.model import create_model

    saved = load_file(str(source_run / "model.safetensors"))
    cfg = replace(RunConfig(), model=f"run:{source_run}")
    m = create_model(cfg.model, 2, classes=["blue", "red"])
    for k, v in m.state_dict().items():
        assert torch.equal(v, saved[k]), k  # backbone and (same classes) head: exactly the source's tensors
    assert "head kept" in m.head_note
    other = create_model(cfg.model, 3, classes=["a", "b", "c"])
    assert "head rebuilt: the classes differ" in other.head_note
    for k, v in other.backbone.state_dict().items():
        assert torch.equal(v, saved[f"backbone.{k}"])
    assert other.backbone.source_head is not None  # the source classifier, for LEEP / NCE


def test_chained_run_reloads_without_its_source(source_run, tmp_path, capsys):
    from transferkit.api import ImageClassifier

    d = make_folder(tmp_path / "tgt", n=5, seed=3)
    out = tmp_path / "target"
    rc, err = _fit(["--data", str(d), "--model", f"run:{source_run}", "--batch-size", "4", "--strategy", "full", "--epochs", "1", "--out", str(out)], capsys)
    assert rc == 0, err
    shutil.rmtree(source_run)
    clf = ImageClassifier.load(out)
    assert len(clf.predict(str(d / "red"))) == 5  # the architecture came from model.json, the weights from the run


def test_run_that_is_not_finished_says_what_is_missing(source_run, tmp_path, capsys):
    (source_run / "manifest.json").unlink()
    d = make_folder(tmp_path / "tgt", n=4)
    rc, err = _fit(["--data", str(d), "--model", f"run:{source_run}", "--out", str(tmp_path / "t")], capsys)
    assert rc == 2 and "is a run that did not finish (no manifest.json" in err and "Traceback" not in err


def test_run_of_another_modality_is_refused(source_run, tmp_path):
    from transferkit.inputs import load_splits

    from conftest import make_text_csv

    csv = make_text_csv(tmp_path / "r.csv")
    with pytest.raises(UserError, match="looks like text data"):
        load_splits(replace(RunConfig(), data=str(csv), model=f"run:{source_run}"))


def test_baseline_scratch_trains_the_same_architecture_and_gives_a_verdict(tmp_path, capsys, tiny_ckpt):
    import json

    d = make_folder(tmp_path / "d", n=5)
    out = tmp_path / "run"
    rc = main(["fit", "--data", str(d), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "3", "--epochs", "1",
               "--baseline", "scratch", "--out", str(out)])
    said, err = capsys.readouterr()
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["scratch"]["model"] == "random:cifar_resnet20"
    # the comparison fit's time beside the run's own (QA AL: "16.1 s" for a 76 s command)
    assert f"(+{m['scratch']['wall_s']:.1f} s for the --baseline scratch fit)" in " ".join(said.split())
    b = m["transfer_vs_scratch"]
    assert b["ci_low"] <= b["diff"] <= b["ci_high"]
    assert m["verdict_scratch"].split(":")[0] in ("transfer helped", "NEGATIVE TRANSFER") or m["verdict_scratch"].startswith("no significant")
    assert "training from scratch (random:cifar_resnet20, 1 epoch, 2 optimizer steps)" in m["verdict_scratch"]  # how much it trained
    assert m["in_short"] and "is not used by" not in err  # --epochs: the scratch run's
    # one epoch from scratch ends on its best epoch: "transfer helped" over it comes with a caveat
    from transferkit.fit import _comparison_caveat
    from transferkit.metrics import verdict_kind

    assert m["scratch"]["best_epoch"] == m["scratch"]["last_epoch"] == 1
    assert ("verdict_scratch_caveat" in m) == (verdict_kind(m["verdict_scratch"]) == "helped")
    helped = "transfer helped: +9.0 points over training from scratch"
    assert _comparison_caveat("scratch", {"best_epoch": 3, "last_epoch": 3}, helped).startswith("training from scratch ended on its best epoch (3)")
    assert _comparison_caveat("base", {"best_epoch": 2, "last_epoch": 3}, helped) is None  # it had stopped improving
    assert _comparison_caveat("base", {"best_epoch": 3, "last_epoch": 3}, "no significant difference from x") is None
    page = (out / "report.html").read_text()
    assert "from scratch" in page and "In short:" in page
    assert ("training from scratch ended on its best epoch" in page) == ("verdict_scratch_caveat" in m)
    # with a test split both verdicts are the test split's, so that "in short" joins verdicts of one split
    rc = main(["fit", "--data", str(make_folder(tmp_path / "d8", n=8)), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "3",
               "--epochs", "1", "--baseline", "scratch", "--test-fraction", "0.25", "--out", str(tmp_path / "tf")])
    screen, err = capsys.readouterr()
    assert rc == 0, err
    t = json.loads((tmp_path / "tf" / "metrics.json").read_text())
    # the test verdicts' numbers are shown, both sides (the scratch fit's test row was in metrics.json only)
    assert "from scratch on test split" in screen and f"test split: {t['n_test']} examples" in screen
    html = (tmp_path / "tf" / "report.html").read_text()
    assert f"transferkit on the test split ({t['n_test']} examples)" in html and "from scratch on the test split" in html
    assert "on the test split" in t["verdict"] and "on the test split" in t["verdict_scratch"] and "on the validation split" in t["validation_verdict_scratch"]
    assert t["transfer_vs_scratch"]["diff"] == pytest.approx(t["test"]["accuracy"] - t["test"]["scratch"]["accuracy"]) and "_model" not in t
    page = (tmp_path / "tf" / "report.html").read_text()  # the verdict is the test split's: what is the validation split's says so
    assert "On the validation split, transfer minus baseline" in page and "<h2>Per class (validation split)</h2>" in page

    # a model from random weights transferred nothing: its verdict says better / worse, never "transfer"
    rc, err = _fit(["--data", str(d), "--model", "random:cifar_resnet20", "--input-size", "16", "--batch-size", "4", "--strategy", "full",
                    "--epochs", "1", "--out", str(tmp_path / "rnd")], capsys)
    assert rc == 0, err
    v = json.loads((tmp_path / "rnd" / "metrics.json").read_text())["verdict"]
    assert "nothing was transferred" in v and not v.startswith(("transfer helped", "NEGATIVE")), v


def test_baseline_base_fine_tunes_the_model_the_source_run_started_from(source_run, tiny_ckpt, tmp_path, capsys):
    """--model run:DIR --baseline base answers "did the source stage help?": the same recipe from the
    model the source run started from (the file checkpoint), on the same split, as its own fit would."""
    import json

    d = make_folder(tmp_path / "tgt", n=6, seed=3)
    recipe = ["--batch-size", "4", "--strategy", "full", "--epochs", "2", "--test-fraction", "0.25"]
    out = tmp_path / "target"
    rc, err = _fit(["--data", str(d), "--model", f"run:{source_run}", *recipe, "--baseline", "scratch,base", "--out", str(out)], capsys)
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["base"]["model"] == f"file:{tiny_ckpt}" and m["scratch"]["model"] == "random:cifar_resnet20"
    assert f"fine-tuning file:{tiny_ckpt} without the source stage (full, " in m["verdict_base"] and "on the test split" in m["verdict_base"]
    assert "on the validation split" in m["validation_verdict_base"]
    assert m["transfer_vs_base"]["diff"] == pytest.approx(m["test"]["accuracy"] - m["test"]["base"]["accuracy"])
    # the comparison is the fit a user would run from the base model with the same recipe (and the source's 16 px input)
    rc, err = _fit(["--data", str(d), "--model", f"file:{tiny_ckpt}", "--arch", "cifar_resnet20", "--input-size", "16", *recipe,
                    "--out", str(tmp_path / "direct")], capsys)
    assert rc == 0, err
    direct = json.loads((tmp_path / "direct" / "metrics.json").read_text())
    for k in ("accuracy", "auroc"):  # AUROC: the probabilities' ranking, not only the argmax
        assert m["base"][k] == direct[k] and m["test"]["base"][k] == direct["test"][k], k
    page = (out / "report.html").read_text()
    assert "without the source stage" in page and page.count('class="verdict ') == 3

    # nothing to compare with: a model that is not a run, a run that started from random weights
    rc, err = _fit(["--data", str(d), *tiny_args(tiny_ckpt), "--baseline", "base", "--out", str(tmp_path / "x")], capsys)
    assert rc == 2 and "is not a run (use --model run:DIR, or --baseline scratch)" in err and not (tmp_path / "x" / "metrics.json").exists()
    rc, err = _fit(["--data", str(d), "--model", "small_convnet", "--epochs", "1", "--out", str(tmp_path / "rs")], capsys)
    assert rc == 0, err
    rc, err = _fit(["--data", str(d), "--model", f"run:{tmp_path / 'rs'}", "--baseline", "base", "--out", str(tmp_path / "y")], capsys)
    assert rc == 2 and "started from random weights (small_convnet)" in err and "use --baseline scratch" in err
    from safetensors.torch import save_file

    from transferkit.backbones.cifar_resnet import CifarResNet

    original = tiny_ckpt.read_bytes()  # the file the source started from, replaced since: not its base any more
    try:
        torch.manual_seed(7)
        save_file(CifarResNet(20).state_dict(), str(tiny_ckpt))
        rc, err = _fit(["--data", str(d), "--model", f"run:{source_run}", "--baseline", "base", "--out", str(tmp_path / "w")], capsys)
        assert rc == 2 and f"file:{tiny_ckpt} is not the file {source_run} started from (its sha256 differs" in err
    finally:
        tiny_ckpt.write_bytes(original)
    rc, err = _fit(["--data", str(d), "--model", f"run:{source_run}", "--baseline", "base,base", "--out", str(tmp_path / "z")], capsys)
    assert rc == 2 and "baseline must be none, scratch, base or scratch,base" in err


def test_in_short_joins_the_two_verdicts():
    from transferkit.metrics import in_short

    neg, helped, none = "NEGATIVE TRANSFER: -13.4 points against x", "transfer helped: +26.8 points over y", "no significant difference from z"
    assert in_short(neg, helped) == "the pretrained weights beat training from scratch, but the classical baseline is better still on this data: prefer it"
    assert in_short(helped, helped).endswith("and the model beats the classical baseline: use it")
    assert in_short(helped, none) == "the pretrained weights did not do clearly better than training from scratch, yet the model beats the classical baseline"
    # --baseline base: the source stage's verdict joins them ("use it" was said of a run the model without the source stage beat)
    assert in_short(helped, helped, neg) == ("the pretrained weights beat training from scratch, and the model beats the classical baseline; "
                                             "the source stage hurt: fine-tuning its starting model directly did better, so leave the source stage out")
    assert in_short(neg, None, helped) == "the classical baseline is better on this data: prefer it; the source stage helped: fine-tuning its starting model directly did worse"
    from transferkit.metrics import verdict

    assert verdict({"diff": -0.128, "ci_low": -0.223, "ci_high": -0.039}, "fine-tuning r20 without the source stage").endswith(
        "; fine-tuning r20 without the source stage is better on this data")  # not "the baseline", the classical one's word
    assert verdict({"diff": 0.2, "ci_low": 0.0, "ci_high": 0.5}, "x") == (  # "[+0.0, ...]" beside "no significant difference" read oddly
        "no significant difference from x: +20.0 points on the validation split (95% CI [+0.0, +50.0]; its lower end is 0, not above it)")


def test_bootstrap_interval_covers_a_known_difference():
    import numpy as np

    from transferkit.metrics import paired_bootstrap

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    a = np.where(rng.random(2000) < 0.90, y, 1 - y)  # 90% right
    b = np.where(rng.random(2000) < 0.80, y, 1 - y)  # 80% right: the true difference is +10 points
    boot = paired_bootstrap(y, a, b, seed=1)
    assert boot["ci_low"] < 0.10 < boot["ci_high"] and boot["ci_low"] > 0.05



def test_the_macro_f1_bootstrap_equals_f1_score_on_every_resample():
    """--metric macro_f1: the verdict's interval is over macro-F1 differences; the counts-by-matrix
    bootstrap gives, resample by resample, what scikit-learn's f1_score gives on the resampled examples
    over each model's classes on the whole sample (present, or predicted by it; as macro_f1 takes them);
    and a majority-class guess loses in macro-F1 what it does not lose in accuracy."""
    from sklearn.metrics import f1_score

    from transferkit.metrics import macro_f1, paired_bootstrap, verdict

    def fixed(i, y, a, b):  # each model over its classes on the whole sample
        return (f1_score(y[i], a[i], labels=np.union1d(y, a), average="macro", zero_division=0)
                - f1_score(y[i], b[i], labels=np.union1d(y, b), average="macro", zero_division=0))

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    a = np.where(rng.random(60) < 0.8, y, rng.integers(0, 3, 60))
    b = np.where(rng.random(60) < 0.5, y, rng.integers(0, 3, 60))
    boot = paired_bootstrap(y, a, b, seed=3, n_boot=40, metric="macro_f1")
    idx = np.random.default_rng(3).integers(0, 60, size=(40, 60))  # the resamples, drawn as paired_bootstrap draws them
    by_loop = [fixed(i, y, a, b) for i in idx]
    assert boot["diff"] == pytest.approx(macro_f1(y, a) - macro_f1(y, b))  # the tables' difference
    assert (boot["ci_low"], boot["ci_high"]) == pytest.approx(tuple(np.percentile(by_loop, [2.5, 97.5])))
    # 90 ham, 10 spam: the model finds spam, the baseline calls everything ham
    y = np.array([0] * 90 + [1] * 10)
    model, guess = y.copy(), np.zeros(100, int)
    model[:3] = 1  # 3 false alarms: 97% accurate, against the guess's 90%
    acc, f1 = paired_bootstrap(y, model, guess), paired_bootstrap(y, model, guess, metric="macro_f1")
    assert f1["diff"] > 2 * acc["diff"] and verdict(f1, "the guess").startswith("transfer helped") and "over the guess in macro-F1" in verdict(f1, "the guess")
    # QA AE: 2 rare examples of 10, one false alarm: resamples without the rare class scored the guess 1.0
    # and the model 0.47 (each over its own classes), an interval of [-55.6, +62.5] points
    y, a, b = np.array([0] * 8 + [1, 1]), np.array([1] + [0] * 7 + [1, 1]), np.zeros(10, int)
    f1 = paired_bootstrap(y, a, b, metric="macro_f1")
    assert f1["ci_low"] > -0.1 and f1["diff"] == pytest.approx(macro_f1(y, a) - macro_f1(y, b))
    # a class absent from the labels that one model says (review AH): the verdict's sign is the tables'
    y, a, b = np.array([0] * 80 + [1] * 20), np.array([2] + [0] * 79 + [1] * 20), np.array([0] * 90 + [1] * 10)
    f1 = paired_bootstrap(y, a, b, metric="macro_f1")
    assert f1["diff"] == pytest.approx(macro_f1(y, a) - macro_f1(y, b)) and f1["diff"] < 0 and f1["ci_low"] < 0


def test_group_column_gives_metrics_per_group_and_the_worst(tmp_path, capsys, tiny_ckpt):
    import json

    d = make_folder(tmp_path / "d", n=15)
    files = sorted(d.rglob("*.png"))
    rows = ["path,label,site"] + [f"{f},{f.parent.name},{'north' if i % 2 else 'south'}" for i, f in enumerate(files)]
    (tmp_path / "g.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    rc, err = _fit(["--data", str(tmp_path / "g.csv"), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "2",
                    "--group-column", "site", "--out", str(out)], capsys)
    assert rc == 0, err
    gm = json.loads((out / "metrics.json").read_text())["groups"]
    assert set(gm["per_group"]) == {"north", "south"} and (gm["worst_group"] in gm["per_group"] if gm["gap"] > 0 else gm["worst_group"] is None)
    # groups that tie have no worst one (it named one, "0.0 points below the best")
    from transferkit.metrics import group_metrics, worst_group_text

    tie = group_metrics(np.array([0, 1, 0, 1]), np.eye(2)[[0, 1, 0, 1]], np.array(["a", "a", "b", "b"]), ["x", "y"])
    assert tie["worst_group"] is None and worst_group_text(tie) == "every group scores alike (100.0%)"
    split = group_metrics(np.array([0, 1, 0, 1]), np.eye(2)[[0, 1, 1, 1]], np.array(["a", "a", "b", "b"]), ["x", "y"])
    assert split["worst_group"] == "b" and worst_group_text(split) == "worst group: b (50.0 points below the best)"
    assert sum(v["n"] for v in gm["per_group"].values()) == json.loads((out / "metrics.json").read_text())["n_val"]
    assert "Per group" in (out / "report.html").read_text()
    # evaluate gives the same per-group metrics: on the run's own data (its validation split), and on
    # other data that has the column (here a copy: every image); data without the column: none
    from transferkit.cli import main

    assert main(["evaluate", str(out), "--data", str(tmp_path / "g.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"] == gm
    (tmp_path / "copy.csv").write_text("\n".join(rows) + "\n")
    assert main(["evaluate", str(out), "--data", str(tmp_path / "copy.csv")]) == 0
    said = capsys.readouterr().out
    assert "groups (site): " in said and "north: accuracy" in said and "south: accuracy" in said
    (tmp_path / "plain.csv").write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")
    assert main(["evaluate", str(out), "--data", str(tmp_path / "plain.csv"), "--json"]) == 0
    assert "groups" not in json.loads(capsys.readouterr().out)
    one = ["path,label,site"] + [f"{f},{f.parent.name},north" for f in files]
    (tmp_path / "one.csv").write_text("\n".join(one) + "\n")
    rc, err = _fit(["--data", str(tmp_path / "one.csv"), *tiny_args(tiny_ckpt), "--group-column", "site", "--out", str(tmp_path / "r2")], capsys)
    assert rc == 2 and "has 1 group(s) (north)" in err
    rc, err = _fit(["--data", str(tmp_path / "g.csv"), *tiny_args(tiny_ckpt), "--group-column", "hospital", "--out", str(tmp_path / "r3")], capsys)
    assert rc == 2 and "hospital" in err


def test_groups_on_the_test_split_and_splits_that_cannot_be_are_refused(tmp_path, capsys, tiny_ckpt):
    """With --test-fraction the verdict is on the test split but the groups were on validation only
    (evaluate then named another worst group); the label column was taken as a group column (per-class
    recall again); --test-fraction 0.9 with --val-fraction 0.5 held out 48% in silence; the class
    table had no test column; --calibrate none left no trace."""
    import json

    d = make_folder(tmp_path / "d", n=20)
    files = sorted(d.rglob("*.png"))
    rows = ["path,label,site"] + [f"{f},{f.parent.name},{'north' if i % 2 else 'south'}" for i, f in enumerate(files)]
    (tmp_path / "g.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    rc = main(["fit", "--data", str(tmp_path / "g.csv"), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "1", "--group-column", "site",
               "--test-fraction", "0.25", "--calibrate", "none", "--out", str(out)])
    said = " ".join(capsys.readouterr().out.split())
    assert rc == 0 and "per group (validation split): " in said and "per group (test split): " in said
    assert "calibration: temperature scaling skipped: --calibrate none" in said
    assert "┃ class ┃ train ┃ val ┃ test ┃" in said and "│ total │ 22 │ 8 │ 10 │" in said, said
    m = json.loads((out / "metrics.json").read_text())
    tg = m["test"]["groups"]
    assert sum(v["n"] for v in tg["per_group"].values()) == m["n_test"] == 10 and set(tg["per_group"]) == {"north", "south"}
    assert main(["evaluate", str(out), "--data", str(tmp_path / "g.csv"), "--json"]) == 0  # evaluate scores the test split: the same groups
    assert json.loads(capsys.readouterr().out)["groups"] == tg
    html = (out / "report.html").read_text()
    assert "Per group (test split)" in html and "<th>test</th>" in html
    assert m["temperature_scaling"] == {"skipped": "--calibrate none"} and "temperature scaling skipped (--calibrate none)" in html
    rc, err = _fit(["--data", str(tmp_path / "g.csv"), *tiny_args(tiny_ckpt), "--group-column", "label", "--out", str(tmp_path / "r2")], capsys)
    assert rc == 2 and "--group-column label names the label column" in err
    rc, err = _fit(["--data", str(d), *tiny_args(tiny_ckpt), "--test-fraction", "0.9", "--val-fraction", "0.5", "--out", str(tmp_path / "r3")], capsys)
    assert rc == 2 and "--test-fraction 0.9 and --val-fraction 0.5 together leave no training data" in err


def test_digits_subsets_for_a_source_and_a_target_task():
    from transferkit.data import load_image_data

    src, tgt = load_image_data("digits:0-4"), load_image_data("digits:5-9")
    assert src.classes == ["0", "1", "2", "3", "4"] and tgt.classes == ["5", "6", "7", "8", "9"]
    assert len(src.train) + len(src.val) + len(tgt.train) + len(tgt.val) == 1797
    assert load_image_data("digits:3,8").classes == ["3", "8"]
    for bad in ("digits:7", "digits:a-b", "digits:5-12"):
        with pytest.raises(UserError, match="two or more digits"):
            load_image_data(bad)


def test_baseline_scratch_is_refused_for_a_model_without_pretrained_weights(tmp_path, capsys):
    d = make_folder(tmp_path / "d", n=5)
    out = tmp_path / "run"
    rc, err = _fit(["--data", str(d), "--model", "small_convnet", "--epochs", "1", "--baseline", "scratch", "--out", str(out)], capsys)
    assert rc == 2 and "small_convnet has no pretrained weights" in err and "Traceback" not in err
    assert not (out / "metrics.json").exists()


def test_rank_takes_a_run_and_torchvision_names_as_candidates(source_run, tmp_path):
    """`rank --models` used to refuse run:DIR, tv:NAME and random:dir:PATH ("unknown model"), though
    fit takes them; a bad one is still refused before anything is built."""
    from transferkit.ranking import _check_candidates

    names = [f"run:{source_run}", "tv:resnet18", "random:tv:resnet18", "random:dir:/some/folder", "small_convnet"]
    assert _check_candidates(names, None) == names
    for bad, says in ((f"run:{tmp_path / 'nope'}", "no such directory"), ("tv:resnet1800", "did you mean: resnet18"),
                      ("random:tv:resnet1800", "unknown torchvision model")):
        with pytest.raises(UserError, match=says):
            _check_candidates([bad, "small_convnet"], None)
    # a run ranked on the data it was fitted on has seen those labels: said (its kNN score was 0.95 against 0.68)
    from transferkit.ranking import _fitted_on, rank_models

    src = str(tmp_path / "src")
    assert _fitted_on(str(source_run), src) and _fitted_on(str(source_run), src + "/") and not _fitted_on(str(source_run), str(tmp_path))
    said = []
    ranking = rank_models(src, [f"run:{source_run}", "random:cifar_resnet20"], arch=None, input_size=16, log=said.append, device="cpu")
    assert any(f"run:{source_run} was fitted on {src}: its scores see examples it was trained on" in m for m in said), said
    assert any("was fitted on" in n for n in ranking.notes), ranking.notes  # QA AR: rank --json's notes lacked it


def test_macro_f1_counts_the_classes_that_occur_and_the_trainer_agrees():
    """A class that is neither a label nor a prediction has no F1; it used to count as 0, so a perfect
    prediction on one class's images scored 0.5 (evaluate on a class folder, a group of a
    --group-column). With every class present nothing changes."""
    import numpy as np
    from sklearn.metrics import f1_score

    from transferkit.metrics import classification_metrics, group_metrics
    from transferkit.trainer import val_scores

    eye = np.eye(3)
    assert classification_metrics(np.array([1, 1]), eye[[1, 1]], ["a", "b", "c"])["macro_f1"] == 1.0
    assert classification_metrics(np.array([1, 1]), eye[[1, 2]], ["a", "b", "c"])["macro_f1"] == (2 / 3 + 0) / 2  # a false class counts
    g = group_metrics(np.array([0, 0, 1, 1]), eye[[0, 0, 1, 0]], np.array(["x", "x", "y", "y"]), ["a", "b", "c"])
    assert g["per_group"]["x"]["macro_f1"] == 1.0 and g["per_group"]["y"]["macro_f1"] == (0 + 2 / 3) / 2  # y: one b said a
    rng = np.random.default_rng(0)
    for n_present in (3, 2, 1):
        y = rng.integers(0, n_present, 40)
        proba = rng.dirichlet(np.ones(3), 40)
        m = classification_metrics(y, proba, ["a", "b", "c"])
        if n_present == 3:
            assert m["macro_f1"] == f1_score(y, proba.argmax(1), average="macro")
        v = val_scores(torch.from_numpy(proba), torch.from_numpy(y))
        assert abs(v["macro_f1"] - m["macro_f1"]) < 1e-12


def test_the_scratch_comparison_trains_full_with_defaults_not_the_transfer_recipe(monkeypatch):
    """The scratch fit kept the run's L2-SP (pulling random weights toward themselves: chance at
    --l2sp-alpha 100, and "transfer helped +45"), layer decay and frozen statistics."""
    import types

    import transferkit.fit as F

    seen = {}

    class Seen(Exception):
        pass

    def fake_fit(cfg, *a, **kw):
        seen["cfg"] = cfg
        raise Seen

    monkeypatch.setattr(F, "fit", fake_fit)
    cfg = replace(RunConfig(), model="efficientnet_lite0", strategy="lp_ft", lr=3e-3, layer_decay=0.5, bn_stats="frozen", freeze=["stem"],
                  l2sp_alpha=100.0, l2=0.001, optimizer="sgd", epochs=7)
    model = types.SimpleNamespace(backbone=types.SimpleNamespace(spec={"name": "efficientnet_lite0"}))
    with pytest.raises(Seen):
        F._comparison_fit("scratch", cfg, model, types.SimpleNamespace(modality="text"), None, None, report.console(quiet=True), None)
    c = seen["cfg"]
    assert c.model.name.startswith("random:") and c.strategy == StrategyConfig(name="full")
    assert c.reg.l2sp_alpha == 0.0 and c.optim.lr is None
    assert (c.reg.l2, c.optim.name, c.train.epochs) == (0.001, "sgd", 7)  # the rest of the recipe stays
