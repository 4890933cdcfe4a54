"""`fit --model auto`: rank the candidates, say which one was picked and why, fine-tune it."""

import json

import yaml

from conftest import make_folder
from transferkit.cli import main


def test_fit_model_auto_picks_a_candidate_and_records_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path / "cache"))
    make_folder(tmp_path / "data", n=8)
    rc = main([
        "fit", "--data", str(tmp_path / "data"), "--model", "auto", "--candidates", "random:cifar_resnet20,random:cifar_resnet56",
        "--strategy", "linear_probe", "--lp-epochs", "3", "--out", str(tmp_path / "run"),
    ])
    assert rc == 0
    out = capsys.readouterr().out
    assert "--model auto:" in out and "highest" in out
    chosen = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["name"]
    assert chosen in ("random:cifar_resnet20", "random:cifar_resnet56")
    assert chosen in out.split("--model auto:")[1].split("\n")[0]
    # the run keeps why (it was said on the console only: metrics.json and report.html could not answer "why this model?")
    choice = json.loads((tmp_path / "run" / "metrics.json").read_text())["model_choice"]
    assert choice["model"] == chosen and choice["score"] == "logme" and choice["n_train"] == 12
    assert [r["model"] for r in choice["ranking"]][0] == chosen and all("logme" in r for r in choice["ranking"])
    assert choice["reason"] in " ".join(out.split())  # the line the console printed
    assert "chosen by --model auto: " in (tmp_path / "run" / "report.html").read_text()


def test_fit_model_auto_with_one_candidate_is_refused(tmp_path, capsys):
    rc = main(["fit", "--data", "digits", "--model", "auto", "--candidates", "efficientnet_lite0", "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "two or more" in capsys.readouterr().err
    assert not (tmp_path / "r" / "manifest.json").exists()


def test_model_auto_on_text_data_takes_the_text_model(tmp_path):
    """The default candidates are image models: on text data --model auto said 'efficientnet_lite0 is
    an image model', a model the user never named."""
    from conftest import make_text_csv
    from transferkit import report
    from transferkit.config import RunConfig, replace
    from transferkit.ranking import resolve_auto_model

    csv = make_text_csv(tmp_path / "t.csv")
    con = report.console(quiet=True)
    assert resolve_auto_model(replace(RunConfig(), data=str(csv), model="auto"), con).model.name == "minilm_l6"
    # a file without a header (the SMS Spam Collection: label<TAB>text, no suffix) is text data too:
    # auto ranked the image models on it, and failed with "is a file but not a .csv"
    sms = tmp_path / "SMSSpamCollection"
    sms.write_text("".join(f"{'spam' if i % 3 == 0 else 'ham'}\tmessage {i} with a few words\n" for i in range(12)))
    assert resolve_auto_model(replace(RunConfig(), data=str(sms), model="auto"), con).model.name == "minilm_l6"
    from transferkit.text_data import is_text_spec

    images = tmp_path / "list.csv"  # a list of images without a header names image files: not texts
    images.write_text("a/1.jpg,ants\nb/2.jpg,bees\n")
    assert not is_text_spec(str(images))


def test_model_auto_ranks_on_the_examples_fit_trains_on_never_the_test_split(tmp_path, monkeypatch, capsys):
    """--model auto ranked on every example outside validation: with --test-fraction the test split
    helped choose the model (selection the README says it never sees), and --shots was ignored."""
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path / "cache"))
    make_folder(tmp_path / "data", n=20)  # per class: 4 validation, 4 test, 12 left, 3 shots
    rc = main([
        "fit", "--data", str(tmp_path / "data"), "--model", "auto", "--candidates", "random:cifar_resnet20,random:cifar_resnet56",
        "--strategy", "linear_probe", "--lp-epochs", "1", "--test-fraction", "0.2", "--shots", "3", "--out", str(tmp_path / "run"),
    ])
    assert rc == 0
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "ranking 2 models on" in out and ": 6 training examples, 2 classes (blue 3, red 3)" in out, out
    rc = main(["rank", "--data", str(tmp_path / "data"), "--models", "random:cifar_resnet20,random:cifar_resnet56", "--test-fraction", "0.2", "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["n_train"] == 24  # rank takes the same flags: 40 less 8 validation, 8 test
