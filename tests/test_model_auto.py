"""`fit --model auto`: rank the candidates, say which one was picked and why, fine-tune it."""

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
