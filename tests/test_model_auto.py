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
