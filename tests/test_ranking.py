"""Transferability scores and model ranking: every score prefers informative features to noise,
LogME's evidence equals its formula evaluated the slow way, no score depends on sample order, and
the CLI turns bad requests into one-line errors with exit code 2."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from transferkit.backbones.cifar_resnet import CifarResNet
from transferkit.cli import main
from transferkit.errors import UserError
from transferkit.ranking import SCORES, LogME, ScoreInputs, hscore, leep, logme, nce, pick_model, rank_models

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ------------------------------------------------------------------------------------ synthetic data


def _synthetic(n=150, d=24, classes=3, z=6, informative=True, seed=0) -> ScoreInputs:
    """Features with class structure (informative) or pure noise, the same labels either way, and a
    source classifier that reads the features (so its labels are informative exactly when they are)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    noise = rng.normal(0, 1, (n, d))
    f = 2.0 * rng.normal(0, 1, (classes, d))[y] + noise if informative else noise
    w = np.random.default_rng(99).normal(0, 1, (d, z))
    return ScoreInputs(f, y, 2.0 * f @ w, seed=0)


@pytest.mark.parametrize("name", SCORES.names())
def test_every_score_prefers_informative_features(name):
    score = SCORES.get(name)
    good, noise = score.compute(_synthetic()), score.compute(_synthetic(informative=False))
    assert good > noise, f"{name}: informative {good} <= noise {noise}"


@pytest.mark.parametrize("name", SCORES.names())
def test_scores_ignore_sample_order(name):
    s = _synthetic(n=90, seed=3)
    perm = np.random.default_rng(7).permutation(len(s.labels))
    shuffled = ScoreInputs(s.features[perm], s.labels[perm], s.source_logits[perm], seed=s.seed)
    assert SCORES.get(name).compute(shuffled) == pytest.approx(SCORES.get(name).compute(s), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", ["knn", "logreg"])
def test_cross_validated_scores_use_the_same_folds_for_every_candidate(name):
    """The folds were drawn from each candidate's own feature values, so two candidates (here the
    same features, scaled and shifted: a logistic regression on standardised features must not see
    a difference) were scored on different folds. With the examples' keys, the folds are the same."""
    s = _synthetic(n=90, informative=False, seed=5)
    keys = [f"example-{i}" for i in range(len(s.labels))]
    a = ScoreInputs(s.features, s.labels, s.source_logits, seed=0, keys=keys)
    b = ScoreInputs(s.features * 7.0 + (3.0 if name == "logreg" else 0.0), s.labels, s.source_logits, seed=0, keys=keys)  # kNN's cosine: scale only
    assert SCORES.get(name).compute(a) == SCORES.get(name).compute(b)
    perm = np.random.default_rng(1).permutation(len(keys))  # and the keys, not the order, decide them
    c = ScoreInputs(s.features[perm], s.labels[perm], s.source_logits[perm], seed=0, keys=[keys[i] for i in perm])
    assert SCORES.get(name).compute(c) == SCORES.get(name).compute(a)


@pytest.mark.parametrize("name", SCORES.names())
def test_scores_need_two_classes(name):
    s = _synthetic(n=20)
    one = ScoreInputs(s.features, np.zeros(20, dtype=int), s.source_logits)
    with pytest.raises(UserError, match="at least two classes"):
        SCORES.get(name).compute(one)


# ------------------------------------------------------------------------------------------- LogME


def _direct_evidence(f, y, alpha, beta):
    """Bishop (3.86) with dense D x D matrices and slogdet, and the Gaussian marginal
    y ~ N(0, I / beta + F F^T / alpha) with an N x N covariance: two slow routes to the same number."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    e = beta / 2 * np.sum((y - f @ m) ** 2) + alpha / 2 * m @ m
    bishop = d / 2 * math.log(alpha) + n / 2 * math.log(beta) - e - 0.5 * np.linalg.slogdet(a)[1] - n / 2 * math.log(2 * math.pi)
    cov = np.eye(n) / beta + f @ f.T / alpha
    sign, logdet = np.linalg.slogdet(cov)
    marginal = -0.5 * (n * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y))
    assert sign > 0
    return bishop / n, marginal / n


@pytest.mark.parametrize("n,d", [(60, 8), (25, 40)], ids=["N>D", "D>N"])
def test_logme_equals_its_evidence_formula_at_the_optimum(n, d):
    rng = np.random.default_rng(1)
    y = np.arange(n) % 3
    f = 3.0 * (rng.normal(0, 1, (3, d))[y] * 0.7 + rng.normal(0, 1, (n, d))) + 5.0  # an offset and scale, as real features have
    fit = LogME().fit(f, y)
    for c in range(3):
        t = (y == c).astype(float)
        bishop, marginal = _direct_evidence(f, t, fit.alpha_[c], fit.beta_[c])
        assert fit.evidence_[c] == pytest.approx(bishop, abs=1e-6)
        assert fit.evidence_[c] == pytest.approx(marginal, abs=1e-6)
        # a maximum over alpha and beta: no nearby pair has more evidence
        for fa, fb in [(0.97, 1), (1.03, 1), (1, 0.97), (1, 1.03), (1.03, 1.03)]:
            assert _direct_evidence(f, t, fit.alpha_[c] * fa, fit.beta_[c] * fb)[0] <= bishop + 1e-9
    assert fit.score_ == pytest.approx(fit.evidence_.mean()) == logme(f, y)


def test_logme_does_not_depend_on_feature_scale():
    s = _synthetic(n=80)
    assert logme(s.features * 1e3, s.labels) == pytest.approx(logme(s.features, s.labels), abs=1e-8)
    assert logme(s.features * 1e-3, s.labels) == pytest.approx(logme(s.features, s.labels), abs=1e-8)


def test_logme_of_degenerate_features_is_finite():
    y = np.arange(30) % 2
    assert math.isfinite(logme(np.zeros((30, 5)), y))
    assert math.isfinite(logme(np.ones((30, 5)), y))


# --------------------------------------------------------------------- H-score, LEEP, NCE by definition


def test_hscore_equals_dense_shrunk_formula():
    from sklearn.covariance import ledoit_wolf_shrinkage

    for n, d in [(80, 10), (30, 50)]:
        s = _synthetic(n=n, d=d)
        f, y = s.features - s.features.mean(0), s.labels
        cov = f.T @ f / n
        r = ledoit_wolf_shrinkage(f, assume_centered=True)
        shrunk = (1 - r) * cov + r * np.trace(cov) / d * np.eye(d)
        between = sum((y == c).mean() * np.outer(f[y == c].mean(0), f[y == c].mean(0)) for c in range(3))
        assert hscore(s.features, y) == pytest.approx((1 - r) * np.trace(np.linalg.solve(shrunk, between)), rel=1e-8)


def test_leep_and_nce_equal_their_definitions_by_loops():
    s = _synthetic(n=40, z=4)
    p = np.exp(s.source_logits - s.source_logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y, n = s.labels, len(s.labels)
    joint = np.zeros((3, 4))
    for i in range(n):
        joint[y[i]] += p[i] / n
    cond = joint / joint.sum(0)
    expected = np.mean([math.log(sum(cond[y[i], z] * p[i, z] for z in range(4))) for i in range(n)])
    assert leep(p, y) == pytest.approx(expected, rel=1e-12)

    zhat = p.argmax(1)
    h = 0.0
    for z in set(zhat):
        for c in range(3):
            pyz = np.mean((y == c) & (zhat == z))
            if pyz > 0:
                h -= pyz * math.log(pyz / np.mean(zhat == z))
    assert nce(zhat, y) == pytest.approx(-h, rel=1e-12)


# ------------------------------------------------------------------------- ranking and the CLI


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _images(root: Path, classes=("red", "blue"), n=10) -> Path:
    rng = np.random.default_rng(0)
    colours = {"red": (200, 40, 40), "blue": (40, 40, 200)}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            a = np.clip(np.array(colours[c])[None, None] + rng.normal(0, 40, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two classes of small images, and two CIFAR ResNet-20 checkpoints with a source classifier."""
    root = tmp_path_factory.mktemp("rank")
    data = _images(root / "data")
    cks = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        sd = CifarResNet(20).state_dict()
        sd["linear.weight"], sd["linear.bias"] = torch.randn(10, 64), torch.zeros(10)
        save_file(sd, str(root / f"r20_{seed}.safetensors"))
        cks.append(f"file:{root / f'r20_{seed}.safetensors'}")
    return data, cks


def _rank_cli(capsys, *argv):
    code = main(["rank", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_rank_cli_sorts_reports_and_reuses_cached_features(tiny, cache, capsys):
    data, cks = tiny
    argv = ["--data", str(data), "--models", ",".join(cks), "--arch", "cifar_resnet20", "--json", "--quiet", "--cpu"]
    code, out, _ = _rank_cli(capsys, *argv)
    assert code == 0
    first = json.loads(out)
    values = [r["scores"]["logme"] for r in first["rows"]]
    assert values == sorted(values, reverse=True) and first["best"] == first["rows"][0]["name"]
    assert all(r["num_features"] == 64 and r["scores"]["leep"] is not None for r in first["rows"])
    assert set(first["rows"][0]["scores"]) == set(SCORES.names()) and first["n_train"] == 16
    assert not any(r["cache_hit"] for r in first["rows"])
    code, out, _ = _rank_cli(capsys, *argv)
    second = json.loads(out)
    assert all(r["cache_hit"] for r in second["rows"])  # the backbones did not run again
    assert [r["scores"] for r in second["rows"]] == [r["scores"] for r in first["rows"]]

    code, out, err = _rank_cli(capsys, *argv[:-3], "--score", "knn")
    assert code == 0 and "kNN acc*" in out and "recommended:" in out and "2 of 2 from the cache" in out and "ranking 2 models" in err


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_the_fit_after_a_ranking_reads_its_features(tiny, cache, capsys, monkeypatch, precision):
    """`rank` computes training features in `fit`'s precision (auto: bf16 where the device computes
    it natively), so the linear probe that follows runs the backbone on its validation images only;
    bf16 forced on both covers a CPU where auto is fp32."""
    from transferkit import features

    data, cks = tiny
    flags = [] if precision == "auto" else ["--precision", precision]
    code, _, _ = _rank_cli(capsys, "--data", str(data), "--models", ",".join(cks), "--arch", "cifar_resnet20", "--quiet", "--cpu", *flags)
    assert code == 0
    computed, compute = [], features.compute_features
    monkeypatch.setattr(features, "compute_features", lambda *a, rows=None, **k: (computed.append(len(rows)), compute(*a, rows=rows, **k))[1])
    out = cache.parent / "fit"
    assert main(["fit", "--data", str(data), "--model", cks[0], "--arch", "cifar_resnet20", "--strategy", "linear_probe", "--lp-epochs", "2",
                 "--cpu", "--quiet", "--out", str(out), *flags]) == 0
    assert computed == [json.loads((out / "metrics.json").read_text())["n_val"]] == [4]


def test_pick_model_returns_the_top_row(tiny, cache):
    data, cks = tiny
    best, ranking = pick_model(str(data), cks, score="hscore", arch="cifar_resnet20", device="cpu")
    assert best == ranking.rows[0].name and ranking.score == "hscore"
    assert best in ranking.reason() and ranking.rows[1].name in ranking.reason()


@pytest.mark.parametrize(
    "models,extra,message",
    [
        ("random:cifar_resnet20,cifar_resnet_99", [], "unknown model 'cifar_resnet_99'"),
        ("random:cifar_resnet20,random:nosuch_arch_xyz", [], "unknown model 'nosuch_arch_xyz'"),
        ("random:cifar_resnet20", [], "ranking needs two or more candidate models"),
        ("random:cifar_resnet20,random:cifar_resnet20", [], "listed more than once"),
        ("random:cifar_resnet20,random:cifar_resnet56", ["--score", "leep"], "scores that apply to every candidate here: logme, hscore, knn, logreg"),
        ("random:cifar_resnet20,random:cifar_resnet56", ["--score", "nce"], "random:cifar_resnet20, random:cifar_resnet56"),
        ("random:cifar_resnet20,random:cifar_resnet56", ["--score", "logmee"], "unknown score 'logmee' (did you mean: logme"),
        ("random:cifar_resnet20,random:cifar_resnet56", ["--score", "LogME"], "unknown score 'LogME' (did you mean: logme"),  # as the table spells it
    ],
)
def test_rank_cli_bad_requests_exit_2(tiny, cache, capsys, models, extra, message):
    data, _ = tiny
    code, out, err = _rank_cli(capsys, "--data", str(data), "--models", models, *extra)
    assert code == 2 and out == ""
    assert err.startswith("transferkit: error:") and message in err and "Traceback" not in err
    assert not cache.exists()  # refused before any feature was computed


def test_rank_cli_one_class_exit_2(tmp_path, cache, capsys):
    data = _images(tmp_path / "one", classes=("red",))
    code, _, err = _rank_cli(capsys, "--data", str(data), "--models", "random:cifar_resnet20,random:cifar_resnet56")
    assert code == 2 and "only one class" in err and "at least 2" in err


def test_too_few_examples_for_folds_leave_the_cross_validated_scores_out(tmp_path, cache, capsys):
    """One training image a class: the kNN and logistic-regression scores need folds, and the whole
    ranking stopped for them, though it sorts by LogME, which needs none."""
    data = _images(tmp_path / "few", n=2)
    code, out, err = _rank_cli(capsys, "--data", str(data), "--models", "random:cifar_resnet20,random:cifar_resnet56", "--input-size", "16", "--json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert all(r["scores"]["logme"] is not None and r["scores"]["knn"] is None and r["scores"]["logreg"] is None for r in rows)
    assert any("knn, logreg left out: cross-validated scores need at least 2 training examples" in n for n in json.loads(out)["notes"])
    code, _, err = _rank_cli(capsys, "--data", str(data), "--models", "random:cifar_resnet20,random:cifar_resnet56", "--input-size", "16", "--score", "knn")
    assert code == 2 and "--score knn is cross-validated and needs at least 2 training examples in every class" in err
    from transferkit.cli import main  # fit names its own flag: the user typed --rank-score, not rank's --score

    code = main(["fit", "--data", str(data), "--model", "auto", "--candidates", "random:cifar_resnet20,random:cifar_resnet56", "--input-size", "16",
                 "--rank-score", "knn", "--out", str(tmp_path / "run")])
    assert code == 2 and "--rank-score knn is cross-validated" in capsys.readouterr().err


def test_rank_models_refuses_explicit_source_scores_for_headless_models(tiny, cache):
    data, cks = tiny
    with pytest.raises(UserError, match="LEEP needs the source task.s classifier, and these candidates have none: random:cifar_resnet20"):
        rank_models(str(data), [cks[0], "random:cifar_resnet20"], scores=["logme", "leep"], arch="cifar_resnet20")


# ------------------------------------------------------------------------------- real data (slow)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "hymenoptera").is_dir(), reason="needs ../shared/data/hymenoptera (development data)")
def test_random_control_ranks_last_on_hymenoptera(cache):
    r = rank_models(str(SHARED / "hymenoptera"), ["random:efficientnet_lite0", "efficientnet_lite0"], score="logme", scores=["logme"], device="cpu")
    assert [row.name for row in r.rows] == ["efficientnet_lite0", "random:efficientnet_lite0"]
    assert r.rows[0].scores["logme"] - r.rows[1].scores["logme"] > 0.3, r.table()


def test_a_model_of_random_weights_is_a_control_like_random_names(tiny, cache):
    """small_convnet has no pretrained weights: a ranking where it does not come last says so, as it
    did only for random:NAME candidates."""
    data, cks = tiny
    args = dict(arch="cifar_resnet20", device="cpu", log=lambda m: None)
    r = rank_models(str(data), ["small_convnet", cks[0]], score="logme", scores=["logme"], **args)
    assert r.rows[-1].name == "small_convnet" and not r.notes
    r = rank_models(str(data), ["small_convnet", cks[0]], score="knn", scores=["knn"], **args)  # a tie: the order given stays
    assert r.rows[0].name == "small_convnet"
    assert any(n.startswith("warning: the random control(s) small_convnet did not rank last") for n in r.notes), r.notes
    # the control ranked first is a yardstick, not the recommendation (it was recommended)
    assert r.best == cks[0] and "the only candidate that is not a random control, is picked" in r.reason(), r.reason()
    assert "the random control(s) small_convnet (" in r.reason() and r.reason().endswith("scored higher (see the warning)"), r.reason()
    assert r.to_dict()["best"] == cks[0]
    # two candidates that are not controls under a control: the sentence ended at "the random control(s) "
    from transferkit.ranking import ModelScores, Ranking

    row = lambda name, v: ModelScores(name, {"logme": v}, 8, False, 0.0, {}, False)  # noqa: E731
    two = Ranking("d", "logme", [row("random:m", 0.2), row("b", -0.1), row("c", -0.3)], 40, ["x", "y"], 0, 0, controls=["random:m"])
    assert two.reason() == ("b has the highest LogME (-0.1000) of the 2 candidates that are not random controls, on the 40 training "
                            "examples; the random control(s) random:m (0.2000) scored higher (see the warning)")
    # the control's warning claimed the candidates below it "carry no more usable information than random
    # weights" while the accuracy columns beside it said otherwise (MiniLM under a random control on SMS spam)
    from transferkit.ranking import _control_warning

    acc = lambda name, v, k, g: ModelScores(name, {"logme": v, "knn": k, "logreg": g}, 384, False, 0.0, {}, False)  # noqa: E731
    sms = [acc("random:m", 0.1855, 0.9713, 0.9794), acc("minilm_l6", -0.0680, 0.9758, 0.9848)]
    assert _control_warning(sms, ["random:m"], "logme", []) == (
        "warning: the random control(s) random:m did not rank last by LogME: by this score, the candidates below them look no better "
        "than random weights on this data; but the cross-validated accuracies (kNN acc, LogReg acc) rank minilm_l6 above every control: "
        "the score and the accuracies disagree here, so compare by kNN acc, LogReg acc (--score logreg) or fit both")
    assert _control_warning(sms, ["random:m"], "logme", [], "--rank-score").endswith("(--rank-score logreg) or fit both")  # fit --model auto's flag
    sms[1].scores["knn"] = 0.96  # the accuracies do not agree with each other: the warning stands alone
    assert _control_warning(sms, ["random:m"], "logme", []).endswith("look no better than random weights on this data")
    # every candidate a control: said (auto trained one without a word)
    r = rank_models(str(data), ["small_convnet", "random:cifar_resnet20"], score="logme", scores=["logme"], **args)
    assert r.reason().startswith("every candidate is a random control (no pretrained weights)") and "a control transfers nothing" in r.reason()


def test_rank_reads_texts_as_the_fit_after_it_will(tmp_path, cache, capsys, monkeypatch):
    """rank takes fit's text settings (it refused --max-length, --text-column, --pooling, ...), and the
    linear probe that follows with the same settings reads the features the ranking cached."""
    from conftest import make_text_csv, make_tiny_bert
    from transferkit import features

    bert1, bert2 = make_tiny_bert(tmp_path / "b1", seed=0), make_tiny_bert(tmp_path / "b2", seed=1)
    rows = make_text_csv(tmp_path / "t.csv", n=12).read_text().replace("text,label", "review;verdict").replace(",", ";")
    (tmp_path / "t.txt").write_text(rows)  # a delimiter and column names fit is told
    data = ["--data", str(tmp_path / "t.txt"), "--delimiter", ";", "--text-column", "review", "--label-column", "verdict", "--max-length", "16", "--pooling", "cls"]
    code, out, _ = _rank_cli(capsys, *data, "--models", f"dir:{bert1},dir:{bert2}", "--quiet", "--cpu")
    assert code == 0, out
    computed, compute = [], features.compute_features
    monkeypatch.setattr(features, "compute_features", lambda *a, rows=None, **k: (computed.append(len(rows)), compute(*a, rows=rows, **k))[1])
    run = tmp_path / "fit"
    assert main(["fit", *data, "--model", f"dir:{bert1}", "--strategy", "linear_probe", "--lp-epochs", "2", "--batch-size", "8", "--cpu", "--quiet", "--out", str(run)]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert computed == [m["n_val"]], computed  # the training texts' features came from the ranking's cache


def test_auto_model_without_its_table_still_says_the_ranking_s_notes(monkeypatch):
    """search and lr-find hide the table; the reason then said "see the warning" with none shown."""
    import io

    from rich.console import Console
    from transferkit import ranking as R
    from transferkit.config import RunConfig, replace

    fake = R.Ranking("d", "logme", [R.ModelScores("random:a", {"logme": 0.2}, 8, False, 0.0, {}, False), R.ModelScores("a", {"logme": 0.1}, 8, False, 0.0, {}, False)],
                     10, ["x", "y"], 0.0, 0.0, ["warning: the random control(s) random:a did not rank last by LogME"], ["random:a"])
    monkeypatch.setattr(R, "pick_model", lambda *a, **kw: ("a", fake))
    buf = io.StringIO()
    R.auto_model(replace(RunConfig(), model="auto", candidates="a,random:a"), Console(file=buf, width=300), show_table=False)
    said = buf.getvalue()
    assert "see the warning" in said and "warning: the random control(s) random:a did not rank last" in said


def test_a_tie_is_broken_by_the_other_scores_and_said():
    """QA AM: two candidates with kNN accuracy 0.9 each: the first given was picked and said to have
    "the highest" score, though LogME favoured the other."""
    from transferkit.ranking import ModelScores, Ranking, order_rows

    row = lambda name, k, lm: ModelScores(name, {"knn": k, "logme": lm}, 8, False, 0.0, {}, False)  # noqa: E731
    rows = order_rows([row("lite0", 0.9, -0.30), row("lite1", 0.9, -0.25), row("convnet", 0.5, 0.1)], "knn", ["logme"])
    assert [r.name for r in rows] == ["lite1", "lite0", "convnet"]
    r = Ranking("d", "knn", rows, 40, ["x", "y"], 0, 0, tie_break=["logme"])
    assert r.best == "lite1" and r.reason() == ("lite1 ties with lite0 on kNN acc (0.9000) on the 40 training examples; "
                                                "LogME puts it ahead (-0.2500 against -0.3000)")
    same = order_rows([row("a", 0.9, -0.3), row("b", 0.9, -0.3)], "knn", ["logme"])
    assert [r.name for r in same] == ["a", "b"]
    assert Ranking("d", "knn", same, 40, ["x", "y"], 0, 0, tie_break=["logme"]).reason().endswith("they tie on every score, so the first given is picked")
    assert "has the highest kNN acc (0.9000)" in Ranking("d", "knn", rows[1:], 40, ["x", "y"], 0, 0).reason()  # no tie: as before


def test_scores_that_print_alike_are_a_tie_even_past_a_random_control():
    """QA AR: LogME -0.77381 and -0.77384 printed alike, and the first was 'the highest'; with a random
    control ranked above, a tie was not looked for at all."""
    from transferkit.ranking import ModelScores, Ranking, order_rows

    row = lambda name, lm, k: ModelScores(name, {"logme": lm, "knn": k}, 8, False, 0.0, {}, False)  # noqa: E731
    rows = order_rows([row("ctrl", -0.5, 0.5), row("a", -0.773810, 0.7), row("b", -0.773840, 0.8)], "logme", ["knn"])
    assert [r.name for r in rows] == ["ctrl", "b", "a"]  # a and b tie as printed: kNN orders them
    r = Ranking("d", "logme", rows, 40, ["x", "y"], 0, 0, controls=["ctrl"], tie_break=["knn"])
    assert r.best == "b" and r.reason() == ("b ties with a on LogME (-0.7738) on the 40 training examples; kNN acc puts it ahead (0.8000 against 0.7000); "
                                            "the random control(s) ctrl (-0.5000) scored higher (see the warning)")
