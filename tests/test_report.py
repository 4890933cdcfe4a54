"""Calibration (ECE) against a hand computation, and report.html: self-contained, complete, and
rendered by a real browser (headless Chromium) with its figures."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import make_folder, tiny_args
from transferkit.cli import main
from transferkit.metrics import calibration


def test_ece_equals_a_hand_computation():
    # 4 examples, 2 classes. Confidences 0.9 (right), 0.8 (wrong), 0.6 (right), 0.55 (right).
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.45, 0.55]])
    # 5 bins of width 0.2: (0.4, 0.6] holds 0.6 and 0.55 (acc 1, conf 0.575); (0.6, 0.8] holds 0.8 (acc 0);
    # (0.8, 1.0] holds 0.9 (acc 1). ECE = 2/4 * |1 - 0.575| + 1/4 * |0 - 0.8| + 1/4 * |1 - 0.9| = 0.4375
    cal = calibration(y, p, n_bins=5)
    assert cal["ece"] == pytest.approx(0.4375)
    assert [b["count"] for b in cal["bins"]] == [2, 1, 1]
    assert calibration(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]))["ece"] == 0.0  # sure and right


def test_temperature_scaling_recovers_a_known_temperature():
    """Labels drawn from softmax(z / 0.5): the fitted temperature of z is 0.5, and it minimises the NLL."""
    import torch

    from transferkit.metrics import fit_temperature

    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 5, generator=g, dtype=torch.float64) * 2
    y = torch.multinomial((z / 0.5).softmax(-1), 1, generator=g).squeeze(1).numpy()
    t = fit_temperature(z.numpy(), y)
    assert t == pytest.approx(0.5, rel=0.05)
    nll = lambda s: float(torch.nn.functional.cross_entropy(z / s, torch.as_tensor(y)))  # noqa: E731
    assert nll(t) <= min(nll(t * 1.05), nll(t / 1.05), nll(1.0))
    assert fit_temperature(z.log_softmax(-1).numpy(), y) == pytest.approx(t, rel=1e-4)  # log-probabilities give the same T


def test_calibration_changes_probabilities_not_classes(tmp_path, tiny_ckpt, capsys):
    """The default divides the head by T: the saved model gives the calibrated probabilities, its
    classes are those of the uncalibrated run, and the validation NLL does not get worse."""
    import json

    from transferkit.api import ImageClassifier

    from PIL import Image

    rng = np.random.default_rng(0)
    d = tmp_path / "d"  # two close colours under heavy noise: classes overlap, as real ones do
    for c, col in [("red", (140, 100, 100)), ("blue", (100, 100, 140))]:
        (d / c).mkdir(parents=True)
        for i in range(160):  # a validation split of 64: enough to fit a temperature
            a = np.clip(np.array(col)[None, None] + rng.normal(0, 90, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(d / c / f"{i}.png")
    runs = {}
    for how in ("temperature", "none"):
        out = tmp_path / how
        assert main(["fit", "--data", str(d), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "3", "--calibrate", how, "--out", str(out), "--quiet"]) == 0
        runs[how] = (json.loads((out / "metrics.json").read_text()), ImageClassifier.load(out))
    (m_t, clf_t), (m_n, clf_n) = runs["temperature"], runs["none"]
    ts = m_t["temperature_scaling"]
    assert m_n["temperature_scaling"] == {"skipped": "--calibrate none"} and ts["temperature"] != pytest.approx(1.0, abs=1e-3)
    assert ts["val_after"]["nll"] <= ts["val_before"]["nll"] + 1e-9
    assert ts["val_before"]["ece"] == pytest.approx(m_n["calibration"]["ece"], abs=1e-6)  # before = the uncalibrated run
    assert m_t["calibration"]["ece"] == pytest.approx(ts["val_after"]["ece"], abs=1e-6)
    files = sorted(str(f) for f in d.rglob("*.png"))
    p_t, p_n = clf_t.predict_proba(files), clf_n.predict_proba(files)
    assert (p_t.argmax(1) == p_n.argmax(1)).all() and m_t["accuracy"] == m_n["accuracy"]
    z = np.log(p_n) / ts["temperature"]
    np.testing.assert_allclose(p_t, np.exp(z) / np.exp(z).sum(1, keepdims=True), atol=1e-5)
    assert main(["fit", "--data", str(d), "--calibrate", "platt", "--out", str(tmp_path / "bad")]) == 2
    assert "calibrate must be temperature or none" in capsys.readouterr().err
    small = make_folder(tmp_path / "small", n=8)  # 4 validation examples: skipped, probabilities left as trained
    assert main(["fit", "--data", str(small), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "3", "--out", str(tmp_path / "s")]) == 0
    assert "temperature scaling skipped: the validation split has 4 examples" in " ".join(capsys.readouterr().out.split())
    assert "temperature" not in json.loads((tmp_path / "s" / "metrics.json").read_text())["temperature_scaling"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_ckpt):
    tmp = tmp_path_factory.mktemp("rep")
    d = make_folder(tmp / "d", n=5)
    out = tmp / "run"
    assert main(["fit", "--data", str(d), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "3", "--out", str(out)]) == 0
    return out


def test_report_is_self_contained_and_complete(run_dir):
    page = (run_dir / "report.html").read_text()
    assert page.startswith("<!doctype html>")
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)  # nothing fetched from anywhere
    import json

    wrong = json.loads((run_dir / "metrics.json").read_text())["mistakes"]["count"]
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4  # curves, confusion, reliability, lr
    assert len(re.findall(r'src="data:image/jpeg;base64,', page)) == (wrong > 0)  # the mistakes: photographs, as JPEG
    for needle in ("Results (validation split)", "raw-pixel logistic regression", "Largest recall gaps", "ECE", "Resolved configuration", "red", "blue"):
        assert needle in page, needle
    verdict = json.loads((run_dir / "metrics.json").read_text())["verdict"]
    assert verdict.split(":")[0] in page
    assert "<td>training images through the backbone (all epochs)</td>" in page and '"train_images"' not in page  # timing as a table, not JSON


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium (Debian package chromium) is not installed")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    """The page loads with no network and a screenshot shows the figures (non-blank, with colour)."""
    from PIL import Image

    shot = tmp_path / "report.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--window-size=1100,2400", f"--screenshot={shot}", f"file://{run_dir / 'report.html'}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), r.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[0] >= 2000 and img.shape[1] >= 1000
    # the figures: plenty of saturated pixels (matplotlib's blues and reds), which text alone lacks
    sat = (img.max(2) - img.min(2)) > 80
    assert sat.mean() > 0.01, f"only {sat.mean():.4f} of the page is coloured: figures missing?"


def test_curves_mark_the_epoch_the_run_kept():
    """The accuracy panel marked the first most accurate epoch, while the run keeps the best by its
    selection metric (loss, or an accuracy tie broken by loss): the plot and metrics.json disagreed."""
    from transferkit.plots import curves_figure

    hist = [{"epoch": e, "phase": "finetune", "train_loss": 1.0, "val_loss": vl, "val_accuracy": va, "lr": 1e-3}
            for e, (vl, va) in enumerate([(0.9, 0.5), (0.4, 0.6), (0.7, 0.7)], 1)]
    labels = lambda fig: [t.get_text() for t in fig.axes[1].get_legend().get_texts()]  # noqa: E731
    assert labels(curves_figure(hist, best_epoch=2)) == ["kept: epoch 2, 60.0%"]
    assert labels(curves_figure(hist)) == ["kept: epoch 3, 70.0%"]


def test_lr_plot_draws_steps_and_a_lone_step():
    """lr.png was blank for a run of one optimizer step, and drew a step decay as a slope."""
    from transferkit.plots import lr_figure

    (line,) = lr_figure([(0, 1e-3, 1e-3, "finetune")]).axes[0].lines
    assert line.get_marker() == "o"
    (line,) = lr_figure([(0, 1e-3, 1e-3, "f"), (1, 1e-3, 1e-3, "f"), (2, 1e-4, 1e-4, "f")]).axes[0].lines
    assert line.get_drawstyle() == "steps-post"
    # the last step's rate holds for its step too (it showed only as the drop into it)
    assert line.get_xdata().tolist() == [0, 1, 2, 3] and line.get_ydata().tolist() == [1e-3, 1e-3, 1e-4, 1e-4]


def test_a_verdict_against_transfer_says_when_the_last_epoch_was_the_best(tmp_path, capsys):
    """One epoch from random weights loses to the pixel baseline; its verdict used to stand alone,
    though the kept weights were the last epoch's: the run may simply have been too short."""
    import json

    from transferkit.fit import _undertrained

    out = tmp_path / "run"
    rc = main(["fit", "--data", "digits:3,8", "--model", "small_convnet", "--strategy", "full", "--epochs", "1", "--out", str(out)])
    screen = capsys.readouterr().out
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["verdict"].startswith("worse than") and m["best_epoch"] == 1
    assert m["verdict_caveat"].startswith("its last epoch (1) was its best") and f"({m['optimizer_steps']} optimizer steps in all)" in m["verdict_caveat"]
    assert "but: its last epoch (1) was its best" in " ".join(screen.split())
    precision = {"no": "fp32"}.get(m["precision"], m["precision"])
    assert f"wall time {m['wall_s']:.1f} s on cpu ({precision})" in " ".join(screen.split())  # what trained, said
    assert "<b>But:</b> its last epoch (1) was its best" in (out / "report.html").read_text()
    # no caveat when an earlier epoch's weights were kept, or with no history
    rows = [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]
    assert _undertrained(rows, 2, 30) is None and _undertrained([], 0, 0) is None and "(--epochs)" in _undertrained(rows, 3, 30)
    assert "(--lp-epochs)" in _undertrained([{"epoch": 1, "phase": "probe"}], 1, 3)  # a probe's length is --lp-epochs


def test_a_model_that_predicts_one_class_is_said_to(tmp_path):
    """QA: a gradual run on imbalanced SMS had spam recall 0 and read "no significant difference, +0.0"
    with nothing else said."""
    import numpy as np

    from transferkit.fit import _one_class
    from transferkit.report_html import render

    note = _one_class(np.array([0, 1, 1]), np.array([1, 1, 1]), ["ham", "spam"], "the model", advise=True)
    assert note.startswith("the model predicts 'spam' for every validation example, so its accuracy (66.7%) is the share of 'spam'")
    assert _one_class(np.array([0, 1, 1]), np.array([0, 1, 1]), ["ham", "spam"], "the model") is None
    assert _one_class(np.array([1, 1]), np.array([1, 1]), ["ham", "spam"], "the model") is None  # one class to find: nothing to say
    # the baseline and the comparison fits are checked too: a verdict against a one-class guess says little (QA)
    said = _one_class(np.array([0, 0, 1]), np.array([0, 0, 0]), ["ham", "spam"], "the baseline (TF-IDF logistic regression)")
    assert said.startswith("the baseline (TF-IDF logistic regression) predicts 'ham'") and said.endswith("verdicts against it say little (--metric macro_f1 compares macro-F1)")
    import json

    import yaml

    out = tmp_path / "run"
    assert main(["fit", "--data", "digits:3,8", "--model", "small_convnet", "--strategy", "linear_probe", "--lp-epochs", "1", "--quiet", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    page = render(title="t", metrics={**m, "one_class_notes": [note]}, config=yaml.safe_load((out / "config.yaml").read_text()),
                  data=json.loads((out / "data.json").read_text()), figures={})
    assert "<b>Warning:</b> the model predicts &#x27;spam&#x27; for every validation example" in page
    page = render(title="t", metrics=m, config={}, data={}, figures={}, kept="kept: the weights of epoch 3 of 4, ... the table's 87.50% is the final evaluation in fp32")
    assert '<p class="sub">Kept: the weights of epoch 3 of 4, ... the table&#x27;s 87.50% is the final evaluation in fp32.</p>' in page  # QA AO: the terminal only


def test_per_class_scores_that_are_zero_over_zero_are_none_not_zero():
    """evaluate on one class's images printed the other class's "precision 0.000, recall 0.000,
    support 0": 0/0 read as a model that never finds it. Now None (n/a); a class predicted but absent
    has precision 0 and F1 0, as macro-F1 counts it."""
    from transferkit.metrics import classification_metrics, fmt

    proba = np.array([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    m = classification_metrics(np.array([1, 1, 1]), proba, ["ants", "bees", "wasps"])
    assert m["per_class"]["bees"] == {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    assert m["per_class"]["ants"] == {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0}  # said, not there
    assert m["per_class"]["wasps"] == {"precision": None, "recall": None, "f1": None, "support": 0}  # neither
    assert m["macro_f1"] == pytest.approx(0.4) and fmt(None) == "n/a" and fmt(0.25) == "0.250"
    m = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]]), ["a", "b"])
    assert m["per_class"]["b"] == {"precision": None, "recall": 0.0, "f1": 0.0, "support": 1}  # there, never said


def test_confusion_matrix_shortens_and_tilts_long_names_and_reliability_marks_every_confidence(recwarn):
    """Two long class names overprinted each other under a 3.6-inch matrix (with a "Tight layout not
    applied" warning on the console); an under-confident bin's gap vanished into its blue bar."""
    from transferkit import plots

    fig = plots.confusion_figure(np.array([[30, 2], [5, 40]]), ["a rather long negative sentiment label", "positive"])
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["a rather lo...ment label", "positive"] and fig.axes[0].get_xticklabels()[0].get_rotation() == 45
    fig2 = plots.confusion_figure(np.eye(2, dtype=int), ["customer complaint about billing", "customer complaint about delivery"])
    assert len({t.get_text() for t in fig2.axes[0].get_xticklabels()}) == 2  # alike at the start, told apart
    plots.close(fig2)
    both = ["complaint (late) about the delivery", "complaint (lost) about the delivery", "other"]
    fig2 = plots.confusion_figure(np.eye(3, dtype=int), both)  # alike at both ends: cut the same, so numbered
    assert [t.get_text() for t in fig2.axes[0].get_yticklabels()] == ["complaint (...e delivery [0]", "complaint (...e delivery [1]", "other"]
    plots.close(fig2)
    assert not [w for w in recwarn if "Tight layout" in str(w.message)]
    plots.close(fig)
    cal = {"ece": 0.05, "bins": [{"low": 0.5, "high": 0.6, "accuracy": 1.0, "confidence": 0.55}]}
    fig = plots.reliability_figure(cal)
    lines = [ln.get_ydata().tolist() for ln in fig.axes[0].get_lines()]
    assert [0.55, 0.55] in lines  # the confidence, below the accuracy bar, drawn on top of it
    plots.close(fig)


def test_the_run_says_which_epoch_it_kept_and_why_the_table_can_differ():
    """The kept epoch was only in metrics.json (QA: 'stopped early after 15 of 20 epochs' and nothing
    more), and a table reading 90.0% beside a kept epoch at 92.5% went unexplained (bf16 validation in
    training, fp32 final evaluation)."""
    from transferkit.report import kept_line

    hist = [{"epoch": 1, "val_accuracy": 0.8, "val_loss": 0.5}, {"epoch": 2, "val_accuracy": 0.925, "val_loss": 0.4},
            {"epoch": 3, "val_accuracy": 0.925, "val_loss": 0.3}, {"epoch": 4, "val_accuracy": 0.9, "val_loss": 0.35}]
    line = kept_line({"best_epoch": 3, "accuracy": 0.9, "precision": "bf16"}, hist, "accuracy")
    assert line == ("kept: the weights of epoch 3 of 4, the best by validation accuracy (92.50%), tied with epoch 2 and of lower validation loss; "
                    "training validated under bf16 autocast, the table's 90.00% is the final evaluation in fp32")
    assert kept_line({"best_epoch": 3, "accuracy": 0.925, "precision": "no"}, hist, "accuracy").endswith("and of lower validation loss")
    assert kept_line({"best_epoch": 1, "accuracy": 0.8}, hist[:1], "accuracy") is None  # one epoch: nothing to choose
    # history keeps float32 scores: 0.9444444179534912 against the final 17/18 is no difference to speak of
    f32 = [{"epoch": 1, "val_accuracy": float(np.float32(17 / 18)), "val_loss": 0.2}, {"epoch": 2, "val_accuracy": 0.5, "val_loss": 0.9}]
    assert "autocast" not in kept_line({"best_epoch": 1, "accuracy": 17 / 18, "precision": "bf16"}, f32, "accuracy")
    # with --min-delta a tie is no improvement: the first to reach the score is kept, not the lower loss
    assert kept_line({"best_epoch": 2, "accuracy": 0.925, "precision": "no"}, hist, "accuracy", 0.01) == (
        "kept: the weights of epoch 2 of 4, the best by validation accuracy (92.50%), counting gains over --min-delta 0.01 only")
    # QA AO: 87 tied epochs were said as five, with no sign of the rest
    flat = [{"epoch": e, "val_accuracy": 0.875, "val_loss": 1.0 / e} for e in range(1, 21)]
    assert kept_line({"best_epoch": 20, "accuracy": 0.875, "precision": "no"}, flat, "accuracy").endswith(
        "tied with epochs 1, 2, 3, 4, 5, ... (19 in all) and of lower validation loss")
    # QA D: later tied epochs of the same loss were said to be of higher loss ("and of lower validation loss")
    same = [{"epoch": e, "val_accuracy": 0.875, "val_loss": v} for e, v in enumerate((0.5, 0.4, 0.3, 0.2, 0.2), start=1)]
    assert kept_line({"best_epoch": 4, "accuracy": 0.875, "precision": "no"}, same, "accuracy").endswith(
        "tied with epochs 1, 2, 3, 5 and of the lowest validation loss among them, which epoch 5 equals (the first is kept)")
    # ... and report.html says what the terminal says, where the curves show the epoch's bf16 score
    from transferkit import plots

    hist = [{**h, "train_loss": 1.0, "lr": 1e-3} for h in hist]
    fig = plots.curves_figure(hist, 3, final_accuracy=0.9)
    assert fig.axes[1].get_legend().get_texts()[0].get_text() == "kept: epoch 3, 92.5%\n(final fp32 evaluation: 90.0%)"
    plots.close(fig)
    fig = plots.curves_figure(hist, 3, final_accuracy=0.925)  # the same: said once
    assert fig.axes[1].get_legend().get_texts()[0].get_text() == "kept: epoch 3, 92.5%"
    plots.close(fig)


def test_a_temperature_at_its_bound_is_explained_by_what_the_model_does():
    """QA AC: a 45%-accurate model whose top probability was 0.12 had its calibration skipped as "every
    validation example is separated"."""
    import torch

    from transferkit.fit import calibrate_head

    y = np.arange(60) % 3
    pred = np.where(np.arange(60) % 10 < 7, y, (y + 1) % 3)  # 70% right
    logp = torch.log_softmax(0.001 * torch.eye(3)[pred].double(), 1)  # barely above uniform: far too unsure
    why = calibrate_head(None, logp, y)["skipped"]
    assert "no interior minimum" in why and "the model is far too unsure (42 of 60 right, the top probability 0.33 on average)" in why and "separated" not in why
    logp = torch.log_softmax(0.01 * torch.eye(3)[y].double(), 1)  # every example right: separated indeed
    assert calibrate_head(None, logp, y)["skipped"].endswith("every validation example is separated")


def test_the_mistakes_figure_shortens_long_class_names_and_keeps_them_apart():
    """QA D: titles of 110-character class names ran into each other, none readable (the confusion
    matrix already cut them)."""
    import numpy as np

    from transferkit.plots import close, mistakes_figure

    a = "Category number 5 of handwritten digit samples (five)"
    b = "Category number 6 of handwritten digit samples (six)"
    rows = [{"true": a, "predicted": b, "p_predicted": 0.9, "source": "x/1.png"}, {"true": b, "predicted": a, "p_predicted": 0.8, "source": "x/2.png"}]
    fig = mistakes_figure(np.zeros((2, 8, 8, 3), np.uint8), None, rows)
    titles = [ax.get_title().splitlines()[0] for ax in fig.axes if ax.get_title()]
    close(fig)
    assert len(titles) == 2 and all(len(t) <= 15 + 4 + 15 + 7 for t in titles), titles
    assert titles[0] != titles[1] and titles[0].split(" -> ")[0] == titles[1].split(" -> ")[1].rsplit(" (", 1)[0]
