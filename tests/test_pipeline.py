"""`transferkit pipeline` and `adapt`: stages in dependency order, reruns skip complete stages and redo
an interrupted one, bad pipeline files are refused; AdaBN changes only BatchNorm running statistics;
masked-LM adaptation produces a run that fine-tunes."""

import json

import pytest
import torch
import yaml

from conftest import make_folder, make_text_csv
from transferkit.cli import main
from transferkit.errors import UserError


def _write(path, stages):
    path.write_text(yaml.safe_dump({"stages": stages}))
    return path


def _stages(tmp_path, tiny_ckpt):
    src = make_folder(tmp_path / "src", n=4)
    tgt = make_folder(tmp_path / "tgt", n=4, seed=5)
    common = {"input_size": 16, "batch_size": 4, "epochs": 1, "lp_epochs": 2}
    return [
        {"name": "target", "kind": "fit", "data": str(tgt), "model": "stage:source", "settings": {**common, "strategy": "full"}},
        {"name": "source", "kind": "fit", "data": str(src), "model": f"file:{tiny_ckpt}", "settings": {**common, "arch": "cifar_resnet20", "strategy": "full"}},
    ]


def test_pipeline_runs_in_order_skips_complete_and_redoes_interrupted(tmp_path, tiny_ckpt, monkeypatch, capsys):
    from transferkit import fit as fit_mod

    first = _stages(tmp_path, tiny_ckpt)
    f = _write(tmp_path / "p.yaml", first)
    out = tmp_path / "out"
    assert main(["pipeline", str(f), "--out", str(out)]) == 0
    assert "again" not in capsys.readouterr().out  # a first run runs nothing again (it said the target was, its source having "another run")
    assert (out / "source" / "manifest.json").is_file() and (out / "target" / "manifest.json").is_file()
    assert "run:" in (out / "target" / "config.yaml").read_text()  # the target started from the source's run
    calls = []
    real = fit_mod.fit
    monkeypatch.setattr(fit_mod, "fit", lambda cfg, d, **kw: calls.append(str(d)) or real(cfg, d, **kw))
    assert main(["pipeline", str(f), "--out", str(out)]) == 0
    assert calls == []  # both complete: nothing ran again
    same = [dict(st) for st in first]
    del same[0]["kind"]  # the default written out or left out is the same stage (QA AR: it ran again as 'changed')
    capsys.readouterr()
    assert main(["pipeline", str(_write(tmp_path / "p0.yaml", same)), "--out", str(out), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert calls == [] and said == "", said  # and --quiet prints nothing (each stage's line was printed)
    (out / "target" / "manifest.json").unlink()  # an interrupted target stage
    assert main(["pipeline", str(f), "--out", str(out)]) == 0
    assert calls == [str(out / "target")] and (out / "target" / "manifest.json").is_file()
    # a changed stage runs again, and so does every stage built on it; the others stay skipped
    stages = _stages(tmp_path / "again", tiny_ckpt)
    stages[0]["data"], stages[1]["data"] = str(tmp_path / "tgt"), str(tmp_path / "src")
    stages[1]["settings"]["lr"] = 0.01
    capsys.readouterr()
    calls.clear()
    assert main(["pipeline", str(_write(tmp_path / "p2.yaml", stages)), "--out", str(out)]) == 0
    assert calls == [str(out / "source"), str(out / "target")]
    said = capsys.readouterr().out
    assert "stage source: its definition changed since it ran: running it again" in said and "stage target: stage source has another run than the one it was built from: running it again" in said
    calls.clear()
    stages[0]["settings"]["epochs"] = 2  # the target alone
    assert main(["pipeline", str(_write(tmp_path / "p3.yaml", stages)), "--out", str(out)]) == 0
    assert calls == [str(out / "target")]
    # the source's data gains images: it runs again, and the target after it (a rerun skipped both)
    import shutil

    shutil.copy(tmp_path / "src" / "red" / "0.png", tmp_path / "src" / "red" / "new.png")
    capsys.readouterr()
    calls.clear()
    assert main(["pipeline", str(tmp_path / "p3.yaml"), "--out", str(out)]) == 0
    assert calls == [str(out / "source"), str(out / "target")]
    assert f"stage source: its data ({tmp_path / 'src'}) changed since it ran: running it again" in " ".join(capsys.readouterr().out.split())
    calls.clear()
    assert main(["pipeline", str(tmp_path / "p3.yaml"), "--out", str(out)]) == 0 and calls == []  # unchanged since: skipped


def test_a_stage_built_from_an_old_upstream_run_or_stopped_under_another_definition_runs_again(tmp_path, tiny_ckpt, monkeypatch, capsys):
    """A target stage that failed after its source ran again kept its run from the old source and was
    skipped as complete from then on; a stage stopped, then edited, resumed its old checkpoint under
    the new settings (a run of two definitions)."""
    from transferkit import fit as fit_mod
    from transferkit.errors import UserError
    from transferkit.pipeline import run_pipeline
    from transferkit.trainer import StopRequested

    stages = _stages(tmp_path, tiny_ckpt)
    out = tmp_path / "out"
    run_pipeline(_write(tmp_path / "p.yaml", stages), out)
    stages[1]["settings"]["lr"] = 0.01  # the source changes; the target fails before touching its folder
    real = fit_mod.fit

    def failing(cfg, d, **kw):
        if str(d).endswith("target"):
            raise UserError("1 image file(s) cannot be read")
        return real(cfg, d, **kw)

    monkeypatch.setattr(fit_mod, "fit", failing)
    with pytest.raises(UserError, match="p2.yaml: stage target: 1 image file"):  # the message names the stage
        run_pipeline(_write(tmp_path / "p2.yaml", stages), out)
    assert (out / "target" / "manifest.json").is_file()  # the old target run is still there, complete
    monkeypatch.setattr(fit_mod, "fit", real)
    capsys.readouterr()
    run_pipeline(tmp_path / "p2.yaml", out)
    said = capsys.readouterr().out
    assert "stage source: complete, skipped" in said
    assert "stage target: its last attempt did not finish, and its finished run is from before that: running it again" in said
    assert run_pipeline(tmp_path / "p2.yaml", out)["target"]["status"] == "skipped (complete)"

    # stopped in the source's second epoch of 3, then edited to 2 epochs: it starts over, not resumes
    stages[1]["settings"].update(epochs=3, lr=0.02)
    calls = []
    with pytest.raises(StopRequested):
        run_pipeline(_write(tmp_path / "p3.yaml", stages), out, should_stop=lambda: calls.append(1) or len(calls) > 3)
    assert (out / "source" / "checkpoints").is_dir() and not (out / "source" / "manifest.json").exists()
    stages[1]["settings"]["epochs"] = 2
    capsys.readouterr()
    run_pipeline(_write(tmp_path / "p4.yaml", stages), out)
    said = capsys.readouterr().out
    assert "stage source: its definition changed since its last attempt: running it from the start" in said and "resuming" not in said
    assert len((out / "source" / "history.csv").read_text().splitlines()) == 1 + 2  # header and this definition's 2 epochs


def test_a_stopped_pipeline_resumes_its_stage(tmp_path, tiny_ckpt, capsys):
    """Ctrl-C / SIGTERM reach the running fit stage (`should_stop`, as `fit` takes it): it checkpoints
    and stops; the next run keeps the finished stages and resumes the stopped one."""
    from transferkit.pipeline import run_pipeline
    from transferkit.trainer import StopRequested

    stages = _stages(tmp_path, tiny_ckpt)
    stages[0]["settings"]["epochs"] = 3
    f = _write(tmp_path / "p.yaml", stages)
    out = tmp_path / "out"
    calls = []
    with pytest.raises(StopRequested):  # the source finishes within 4 calls; the target stops early
        run_pipeline(f, out, should_stop=lambda: calls.append(1) or len(calls) > 4)
    assert (out / "source" / "manifest.json").is_file() and not (out / "target" / "manifest.json").exists()
    assert (out / "target" / "checkpoints").is_dir()
    capsys.readouterr()
    summary = run_pipeline(f, out)
    said = capsys.readouterr().out
    assert "stage source: complete, skipped" in said and "stage target: interrupted before; resuming" in said
    assert summary["target"]["status"] == "ran" and (out / "target" / "manifest.json").is_file()


def test_a_stage_finished_by_fit_resume_is_kept(tmp_path, tiny_ckpt, capsys):
    """QA AM: a stopped stage finished with `transferkit fit --resume DIR/target`, as predict advises,
    was trained again from the start by the next pipeline run ("its finished run is from before that")."""
    from transferkit.pipeline import run_pipeline
    from transferkit.trainer import StopRequested

    stages = _stages(tmp_path, tiny_ckpt)
    stages[0]["settings"]["epochs"] = 3
    f = _write(tmp_path / "p.yaml", stages)
    out = tmp_path / "out"
    calls = []
    with pytest.raises(StopRequested):
        run_pipeline(f, out, should_stop=lambda: calls.append(1) or len(calls) > 4)
    assert not (out / "target" / "manifest.json").exists()
    assert main(["fit", "--resume", str(out / "target"), "--quiet"]) == 0
    model = (out / "target" / "model.safetensors").read_bytes()
    capsys.readouterr()
    summary = run_pipeline(f, out)
    said = " ".join(capsys.readouterr().out.split())
    assert "stage target: its last attempt was finished since (fit --resume)" in said and "stage target: complete, skipped" in said
    assert summary["target"]["status"] == "skipped (complete)" and (out / "target" / "model.safetensors").read_bytes() == model


@pytest.mark.parametrize(
    "stages, message",
    [
        ([{"name": "a", "kind": "train", "data": "digits", "model": "small_convnet"}], "unknown stage kind 'train'"),
        ([{"name": "a", "data": "digits", "model": "stage:b"}, {"name": "b", "data": "digits", "model": "stage:a"}], "cycle: a -> b -> a"),
        ([{"name": "a", "data": "digits", "model": "stage:src"}], "needs stage:src, which is not defined"),
        ([{"name": "a", "model": "small_convnet"}], "missing input `data`"),
        ([{"name": "a", "kind": "adapt", "data": "t.txt", "model": "minilm_l6", "head_steps": "many"}], "`head_steps` must be a whole number, got 'many'"),
        # settings of a later stage are checked before the first stage runs, and the message names the file and the stage
        ([{"name": "a", "data": "digits", "model": "small_convnet"}, {"name": "b", "data": "digits", "model": "stage:a", "settings": {"epohcs": 1}}],
         "p.yaml: stage b: unknown setting 'epohcs' (did you mean: epochs"),
        ([{"name": "a", "data": "digits", "model": "small_convnet"}, {"name": "b", "data": "digits", "model": "stage:a", "settings": {"lr": "fast"}}],
         "p.yaml: stage b: lr must be float, got 'fast'"),
        # a later stage's data and model too (they failed only after the first stage had trained)
        ([{"name": "a", "data": "digits", "model": "small_convnet"}, {"name": "b", "data": "no_such_folder", "model": "stage:a"}],
         "p.yaml: stage b: data not found: no_such_folder (a relative path is read from the current folder"),
        ([{"name": "a", "data": "digits", "model": "small_convnet"}, {"name": "b", "data": "digits", "model": "efficientnet_lit0"}],
         "p.yaml: stage b: unknown model 'efficientnet_lit0'"),
        ([{"name": "a", "data": "digits", "model": "small_convnet"}, {"name": "b", "data": "digits", "model": "run:no_such_run"}],
         "p.yaml: stage b: --model run:no_such_run: no such directory"),
        ([{"name": "a", "data": "digits", "model": "small_convnet"}, {"name": "b", "data": "digits", "model": "small_convnet", "settings": {"baseline": "base"}}],
         "p.yaml: stage b: baseline base fine-tunes the model a run started from"),
        # a chain from random weights: base would be training from scratch (said after stage a had trained)
        ([{"name": "a", "data": "digits", "model": "small_convnet"}, {"name": "b", "data": "digits", "model": "stage:a", "settings": {"baseline": "scratch,base"}}],
         "p.yaml: stage b: baseline base would fine-tune the model its stages start from, small_convnet, which has random weights"),
        ([{"name": "a", "data": "digits", "model": "small_convnet"}, {"name": "b", "kind": "adapt", "data": "digits", "model": "stage:a", "intermediate": "no_such_dir"}],
         "p.yaml: stage b: intermediate not found: no_such_dir"),
        # what a stage of that kind would silently ignore, and values of the wrong type
        ([{"name": "a", "data": "digits", "model": "small_convnet", "epochs": 1}], "`epochs` at stage level is adapt's, not fit's (put fit's in `settings: {epochs: N}`)"),
        ([{"name": "a", "data": "digits", "model": "small_convnet", "intermediate": "digits"}], "`intermediate` at stage level is adapt's"),
        ([{"name": "a", "kind": "adapt", "data": "digits", "model": "small_convnet", "settings": {"epochs": 3}}], "an adapt stage takes its `epochs` at stage level (`epochs: N`, the masked-LM epochs of a text model; AdaBN on images makes one pass"),
        ([{"name": "a", "data": "digits", "model": "small_convnet", "settings": {"model": "efficientnet_lite0"}}], "`model` goes at stage level"),
        # data of the other kind than the chain's first model: said before stage b trained (QA B)
        ([{"name": "a", "data": "sst.tsv", "model": "stage:b"}, {"name": "b", "data": "digits", "model": "small_convnet"}],
         "p.yaml: stage a: sst.tsv looks like text data, and small_convnet is an image model (through stage:b, which starts from small_convnet)"),
        ([{"name": "a", "data": "digits", "model": "minilm_l6"}], "p.yaml: stage a: digits looks like image data, and minilm_l6 is a text model"),
        # fit's settings in an adapt stage ran in silence as if honoured
        ([{"name": "a", "kind": "adapt", "data": "digits", "model": "random:cifar_resnet20", "settings": {"strategy": "full"}}],
         "stage 1 (a): an adapt stage does not read `strategy` (a fit setting; adapt reads accumulate, arch, batch_size"),
        ([{"name": "a", "kind": "adapt", "data": "digits", "model": "random:cifar_resnet20", "settings": {"seed": 1, "optim": {"name": "sgd"}}}],
         "an adapt stage does not read `optim`"),
        ([{"name": None, "data": "digits", "model": "small_convnet"}], "`name` must be a word (it becomes a folder name), got None"),
        ([{"name": "a", "data": ["digits"], "model": "small_convnet"}], "`data` must be a path or a name (text), got ['digits']"),
    ],
)
def test_bad_pipelines(tmp_path, capsys, stages, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_text_csv(tmp_path / "sst.tsv", sep="\t")
    f = _write(tmp_path / "p.yaml", stages)
    assert main(["pipeline", str(f), "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # no stage ran, and no --out folder was made (it was left empty)


def test_an_adapted_backbone_without_classes_is_refused_by_predict_evaluate_and_export(tmp_path, tiny_ckpt, capsys):
    """adapt of a pretrained model writes a backbone without a classifier: predict, evaluate and
    export crashed on it (argmax of an empty sequence), or said its classes were unknown."""
    data = make_folder(tmp_path / "d", n=4)
    out = tmp_path / "adabn"
    assert main(["adapt", "--data", str(data), "--model", f"file:{tiny_ckpt}", "--arch", "cifar_resnet20", "--input-size", "16", "--out", str(out), "--quiet"]) == 0
    image = next((data / "red").iterdir())
    for cmd in (["predict", str(out), str(image)], ["evaluate", str(out), "--data", str(data)], ["export", str(out)]):
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err
        assert "is an adapted backbone with no classes" in err and f"--model run:{out}" in err, err
    run = tmp_path / "run"  # and a labelled CSV given to an image model's predict is not "a bad image"
    assert main(["fit", "--data", str(data), "--model", f"run:{out}", "--strategy", "linear_probe", "--lp-epochs", "2", "--out", str(run), "--quiet"]) == 0
    table = tmp_path / "images.csv"
    table.write_text(f"path,label\n{image},red\n")
    assert main(["predict", str(run), str(table)]) == 2
    assert f"transferkit evaluate {run} --data {table}" in capsys.readouterr().err


def test_adabn_changes_only_batchnorm_statistics(tmp_path, tiny_ckpt):
    from transferkit.adapt import adabn
    from transferkit.backbones import create_backbone
    from transferkit.data import _read_folder, decode_images
    from transferkit.transforms import center_crop, normalize

    bb = create_backbone(f"file:{tiny_ckpt}", arch="cifar_resnet20")
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    x, _, _ = decode_images(_read_folder(make_folder(tmp_path / "d", n=4)), 20)
    n = adabn(bb, x, lambda u: normalize(center_crop(u, 16), (0.5,) * 3, (0.5,) * 3))
    assert n == sum(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules()) > 0
    after = bb.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert any(k.endswith("running_mean") for k in changed)
    # batches of nearly equal size: 8 images in batches of at most 7 are 4 + 4, as batches of 4 (a last
    # batch of 1 weighed as much as the 7 before it in the cumulative average)
    stats = {}
    for size in (7, 4):
        b = create_backbone(f"file:{tiny_ckpt}", arch="cifar_resnet20")
        adabn(b, x, lambda u: normalize(center_crop(u, 16), (0.5,) * 3, (0.5,) * 3), batch_size=size)
        stats[size] = {k: v for k, v in b.state_dict().items() if k.endswith("running_var")}
    assert all(torch.equal(stats[7][k], stats[4][k]) for k in stats[4])


def test_adabn_of_a_run_keeps_its_head_and_classes(tmp_path, tiny_ckpt, capsys):
    """AdaBN of an earlier run (the same task on shifted images) keeps that run's head and classes:
    the adapted run predicts as it is, and `fit --model run:` keeps the head for the same classes."""
    import json

    from safetensors.torch import load_file

    src, tgt = make_folder(tmp_path / "src", n=4), make_folder(tmp_path / "tgt", n=4, seed=5)
    common = ["--arch", "cifar_resnet20", "--input-size", "16", "--batch-size", "4", "--quiet"]
    assert main(["fit", "--data", str(src), "--model", f"file:{tiny_ckpt}", *common, "--strategy", "linear_probe", "--lp-epochs", "3",
                 "--out", str(tmp_path / "source")]) == 0
    assert main(["adapt", "--data", str(tgt), "--model", f"run:{tmp_path / 'source'}", "--input-size", "16", "--quiet", "--out", str(tmp_path / "bn")]) == 0
    meta = json.loads((tmp_path / "bn" / "model.json").read_text())
    assert meta["classes"] == ["blue", "red"] and "kept from run:" in json.loads((tmp_path / "bn" / "adapt.json").read_text())["head"]
    a, b = load_file(str(tmp_path / "source" / "model.safetensors")), load_file(str(tmp_path / "bn" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("head."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("running_mean"))  # the statistics moved
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "bn"), str(tgt / "red")]) == 0 and len(capsys.readouterr().out.splitlines()) == 5
    # the kept head's training examples stay known: evaluate leaves them out (it scored them, "a run from an older transferkit")
    from transferkit.fit import load_fingerprints

    assert load_fingerprints(tmp_path / "bn") == load_fingerprints(tmp_path / "source") and load_fingerprints(tmp_path / "bn")[0]
    # QA B: evaluate on the data it adapted to said that data "changed since the run was fitted" (it drew no split of it)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "bn"), "--data", str(tgt)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "changed since" not in said and f"{tgt}: 8 images" in said, said


def test_adapt_reads_what_fit_reads_and_names_the_wrong_kind(tmp_path, tiny_bert, capsys):
    """adapt takes digits and --skip-bad-images as fit does, and says which kind of model data of the
    other kind needs (a text file went to the image decoder, whose message suggested a flag adapt lacked)."""
    import json
    import os

    texts = make_text_csv(tmp_path / "t.csv")
    d = make_folder(tmp_path / "d", n=3)
    for data, model, said in ((texts, "random:cifar_resnet20", "looks like text data, and random:cifar_resnet20 is an image model"),
                              (d, f"dir:{tiny_bert}", "looks like image data"), ("digits", f"dir:{tiny_bert}", "looks like image data")):
        assert main(["adapt", "--data", str(data), "--model", model, "--out", str(tmp_path / "x"), "--quiet"]) == 2
        assert said in capsys.readouterr().err
    (d / "red" / "broken.jpg").write_bytes(os.urandom(500))
    args = ["adapt", "--data", str(d), "--model", "random:cifar_resnet20", "--input-size", "16", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2 and "--skip-bad-images" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "a"), "--skip-bad-images"]) == 0
    info = json.loads((tmp_path / "a" / "adapt.json").read_text())
    assert info["images"] == 6 and "broken.jpg" in info["skipped"][0]
    assert main(["adapt", "--data", "digits:5-9", "--model", "random:cifar_resnet20", "--input-size", "16", "--quiet", "--out", str(tmp_path / "g")]) == 0
    assert json.loads((tmp_path / "g" / "adapt.json").read_text())["images"] > 800  # every 5-9 digit, train and validation


def test_adapt_without_batchnorm_or_task_is_refused(tmp_path, capsys):
    d = make_folder(tmp_path / "d", n=3)
    assert main(["adapt", "--data", str(d), "--model", "small_convnet", "--out", str(tmp_path / "a")]) == 2
    assert "no BatchNorm layers, so AdaBN has nothing to adapt" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--head-steps", "-1"], "--head-steps must be a whole number >= 0, got -1"),
        (["--epochs", "0"], "--epochs must be a whole number >= 1, got 0"),
        (["--data-file", "empty.csv"], "empty.csv: empty file (no header, no texts)"),
        (["--image-model", "--head-steps", "5"], "--head-steps warms up a masked-LM head, so it is for text models"),
        (["--accumulate", "0"], "accumulate must be >= 1"),
        (["--image-model", "--accumulate", "2"], "--accumulate, --grad-checkpointing and --group-by-length are for masked-LM training of text models"),
        (["--image-model", "--grad-checkpointing"], "--accumulate, --grad-checkpointing and --group-by-length are for masked-LM training"),
        (["--image-model", "--group-by-length"], "AdaBN on images computes no gradients and has no texts to group"),
        (["--skip-bad-images"], "--skip-bad-images leaves out unreadable images, so it is for image models"),
    ],
)
def test_bad_adapt_arguments_are_refused_before_any_run(tmp_path, tiny_bert, capsys, args, message):
    p = make_text_csv(tmp_path / "r.csv")
    (tmp_path / "empty.csv").write_bytes(b"")
    data, model = str(p), f"dir:{tiny_bert}"
    if args[0] == "--data-file":
        data, args = str(tmp_path / args[1]), []
    elif args[0] == "--image-model":
        data, model, args = str(make_folder(tmp_path / "d", n=3)), "random:cifar_resnet20", args[1:]
    out = tmp_path / "out"
    assert main(["adapt", "--data", data, "--model", model, "--out", str(out), "--quiet", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


def test_mlm_adapt_then_fit(tmp_path, tiny_bert, capsys):
    import json

    p = make_text_csv(tmp_path / "r.csv")
    out = tmp_path / "mlm"
    assert main(["adapt", "--data", str(p), "--model", f"dir:{tiny_bert}", "--out", str(out), "--epochs", "2", "--batch-size", "8", "--quiet"]) == 0
    info = json.loads((out / "adapt.json").read_text())
    assert info["method"] == "mlm" and info["steps"] == 10 and info["texts"] == 40
    assert info["new_head"] and info["head_steps"] == 2  # tiny_bert was saved without a masked-LM head: a quarter of 10 steps for it first
    assert main(["fit", "--data", str(p), "--model", f"run:{out}", "--max-length", "32", "--lp-epochs", "2", "--epochs", "1",
                 "--baseline", "base", "--out", str(tmp_path / "fit"), "--quiet"]) == 0
    fm = json.loads((tmp_path / "fit" / "metrics.json").read_text())  # did adapting help over the model it adapted?
    assert fm["base"]["model"] == f"dir:{tiny_bert}" and f"fine-tuning dir:{tiny_bert} without the source stage (lp_ft" in fm["verdict_base"]
    from transferkit.fit import load_model

    m, _ = load_model(out)
    from safetensors.torch import load_file

    src = load_file(str(tiny_bert / "model.safetensors"))
    moved = [k for k, v in m.backbone.model.state_dict().items() if k in src and not torch.equal(v, src[k])]
    assert moved  # masked-LM training changed the encoder


def test_mlm_new_head_trains_alone_first(tiny_bert):
    """While a random masked-LM head is warmed up, the encoder must not move."""
    from transferkit.adapt import mlm
    from transferkit.backbones import create_backbone

    bb = create_backbone(f"dir:{tiny_bert}")
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    info = mlm(bb, ["the movie was good", "a bad film", "great acting"] * 4, epochs=0, head_steps=3, batch_size=4, console=None)
    assert info["new_head"] and info["head_steps"] == 3 and info["steps"] == 0
    assert info["head_first_loss"] > 0
    assert all(torch.equal(v, before[k]) for k, v in bb.model.state_dict().items())


def test_mlm_uses_the_pretrained_head(tmp_path, tiny_bert):
    """A folder saved with its masked-LM head (a BERT checkpoint) keeps that head: no warm-up needed."""
    import shutil

    from transformers import BertConfig, BertForMaskedLM

    from transferkit.adapt import _mlm_model, mlm
    from transferkit.backbones import create_backbone

    d = tmp_path / "bert-mlm"
    shutil.copytree(tiny_bert, d)
    torch.manual_seed(1)
    full = BertForMaskedLM(BertConfig.from_pretrained(str(d)))
    full.save_pretrained(str(d))
    bb = create_backbone(f"dir:{d}")
    model, new_head = _mlm_model(bb)
    assert not new_head
    assert torch.equal(model.cls.predictions.transform.dense.weight, full.cls.predictions.transform.dense.weight)
    info = mlm(bb, ["the movie was good", "a bad film"] * 4, epochs=1, batch_size=4, console=None)
    assert info["head_steps"] == 0 and info["steps"] == 2


def test_mlm_trains_on_the_accelerators_device_as_fit_does(tiny_bert, monkeypatch):
    """`adapt` hands `mlm` fit's accelerator (its device and precision): every step's backward goes
    through it, the batches are on its device. Without one, `mlm` makes fit's default accelerator
    (fp32 on an AVX2 CPU, bf16 on one with AVX512-BF16), with the same losses as that one given."""
    from transferkit import fit as fit_mod
    from transferkit.adapt import mlm
    from transferkit.backbones import create_backbone
    from transferkit.config import RunConfig

    texts = ["the movie was good", "a bad film", "great acting", "the plot was dull"] * 3
    made, make = [], fit_mod.make_accelerator
    monkeypatch.setattr(fit_mod, "make_accelerator", lambda cfg: (made.append(cfg), make(cfg))[1])
    plain = mlm(create_backbone(f"dir:{tiny_bert}"), texts, epochs=2, head_steps=2, batch_size=4, console=None)
    assert plain["first_loss"] != plain["last_loss"]  # 6 steps: the first 3 and the last 3, not the mean of all 6 twice
    assert len(made) == 1 and made[0].train.precision == "auto" and not made[0].train.cpu
    acc = make(RunConfig())  # another Accelerator object, of the same device and precision
    seen, backward = [], acc.backward
    monkeypatch.setattr(acc, "backward", lambda loss, **k: (seen.append(loss.device), backward(loss, **k))[1])
    info = mlm(create_backbone(f"dir:{tiny_bert}"), texts, epochs=2, head_steps=2, batch_size=4, console=None, accelerator=acc)
    assert len(seen) == info["steps"] + info["head_steps"] == 8 and set(seen) == {acc.device}
    assert (info["head_first_loss"], info["first_loss"], info["last_loss"]) == pytest.approx(
        (plain["head_first_loss"], plain["first_loss"], plain["last_loss"]), rel=1e-6)


def test_mlm_in_micro_batches_and_with_checkpointing_takes_the_same_steps(tiny_bert, monkeypatch):
    """`adapt --accumulate N` / `--grad-checkpointing`: the same masked-LM steps in less memory. With
    dropout off, every micro-batch count (3: uneven parts of a batch of 4; 7: empty parts too) and
    checkpointing end at the batch's own weights and losses: each part counts by its share of the
    batch's masked tokens, which differ from part to part. Checkpointing runs every layer twice. In
    fp32 (bf16 autocast, the default on a CPU with AVX512-BF16, rounds the parts differently)."""
    from transformers.models.bert.modeling_bert import BertIntermediate

    from transferkit.adapt import mlm
    from transferkit.backbones import create_backbone
    from transferkit.config import RunConfig, replace
    from transferkit.fit import make_accelerator

    fp32 = make_accelerator(replace(RunConfig(), precision="no"))
    calls = []
    forward = BertIntermediate.forward
    monkeypatch.setattr(BertIntermediate, "forward", lambda self, *a: (self.training and calls.append(1), forward(self, *a))[1])
    texts = ["the movie was good and the acting great", "a bad film", "great acting", "the plot was dull, slow and long"] * 3

    def run(**kw):
        calls.clear()
        bb = create_backbone(f"dir:{tiny_bert}")
        bb.model.config.hidden_dropout_prob = bb.model.config.attention_probs_dropout_prob = 0.0
        info = mlm(bb, texts, epochs=2, head_steps=2, batch_size=4, console=None, seed=3, accelerator=fp32, **kw)
        return info, bb.model.state_dict(), len(calls)

    ref, w_ref, plain_calls = run()
    assert any(not torch.equal(w_ref[k], v) for k, v in create_backbone(f"dir:{tiny_bert}").model.state_dict().items())  # it trained
    for kw in ({"accumulate": 3}, {"accumulate": 7}, {"grad_checkpointing": True}, {"accumulate": 2, "grad_checkpointing": True}):
        info, w, n_calls = run(**kw)
        assert (info["head_first_loss"], info["first_loss"], info["last_loss"]) == pytest.approx(
            (ref["head_first_loss"], ref["first_loss"], ref["last_loss"]), rel=1e-5), kw
        assert max((w[k] - w_ref[k]).abs().max().item() for k in w_ref) < 1e-5, kw
        if kw == {"grad_checkpointing": True}:
            assert n_calls == 2 * plain_calls > 0

    with pytest.raises(UserError, match="accumulate must be a whole number >= 1"):
        mlm(create_backbone(f"dir:{tiny_bert}"), texts, accumulate=0, console=None)


def test_mlm_grouped_by_length_pads_less_and_sees_every_text(tiny_bert, monkeypatch):
    """`adapt --group-by-length`: each epoch still shows every text once, in batches that pad much
    less than random ones; seeded."""
    from transformers import DataCollatorForLanguageModeling

    from transferkit.adapt import mlm
    from transferkit.backbones import create_backbone

    seen = []
    collate = DataCollatorForLanguageModeling.__call__
    monkeypatch.setattr(DataCollatorForLanguageModeling, "__call__", lambda self, rows, *a: (seen.append([len(r["input_ids"]) for r in rows]), collate(self, rows, *a))[1])
    texts = [" ".join(["a"] * (1 + (7 * i) % 40)) for i in range(64)]  # 3 to 42 tokens

    def run(**kw):
        seen.clear()
        mlm(create_backbone(f"dir:{tiny_bert}"), texts, epochs=2, head_steps=0, batch_size=4, max_length=48, console=None, seed=1, **kw)
        assert len(seen) == 32  # 2 epochs of 16 batches
        lengths = sorted(n for b in seen[:16] for n in b), sorted(n for b in seen[16:] for n in b)
        padded = sum(len(b) * max(b) for b in seen) / sum(sum(b) for b in seen)
        return lengths, padded, [list(b) for b in seen]

    (first, second), random_pad, random_batches = run()
    (g_first, g_second), grouped_pad, grouped_batches = run(group_by_length=True)
    assert g_first == g_second == first == second  # every text once an epoch
    assert grouped_pad < 1.2 < 1.4 < random_pad, (grouped_pad, random_pad)  # 1.16 and 1.51 when written
    assert run(group_by_length=True)[2] == grouped_batches != random_batches


def test_adapt_scores_held_out_texts_with_the_same_masks(tmp_path, tiny_bert):
    """`adapt` on 200 or more texts holds out 5% (seeded), trains on the rest and reports their
    masked-LM loss before and after the encoder trains, with the same masks: with no training step
    the two are equal, and after training the held-out loss is lower."""
    import json

    from transferkit.adapt import mlm
    from transferkit.backbones import create_backbone

    texts = [f"the movie was {a} and the plot {b}" for a in ("good", "bad", "great", "dull") for b in ("slow", "long", "fine")] * 20
    info = mlm(create_backbone(f"dir:{tiny_bert}"), texts[:40], heldout=texts[40:60], epochs=0, head_steps=0, batch_size=8, console=None)
    assert info["heldout"]["loss_before"] == info["heldout"]["loss_after"] > 0
    p = tmp_path / "t.csv"
    p.write_text("text\n" + "\n".join(texts) + "\n")
    out = tmp_path / "a"
    assert main(["adapt", "--data", str(p), "--model", f"dir:{tiny_bert}", "--out", str(out), "--epochs", "3", "--batch-size", "16",
                 "--lr", "1e-3", "--quiet"]) == 0
    info = json.loads((out / "adapt.json").read_text())
    assert info["texts"] == 228 and info["heldout"]["texts"] == 12
    assert info["heldout"]["loss_after"] < info["heldout"]["loss_before"]


def test_an_older_or_unreadable_state_file(tmp_path, tiny_ckpt, capsys):
    """A pipeline_state.json of the older format (stage name -> definition) knows no upstream runs: a
    target built on a source that reruns now runs again too (it was skipped); an unreadable file is
    said, not silently taken as up to date."""
    import json

    from transferkit.pipeline import run_pipeline

    stages = _stages(tmp_path, tiny_ckpt)
    out = tmp_path / "out"
    run_pipeline(_write(tmp_path / "p.yaml", stages), out)
    state = out / "pipeline_state.json"
    old = {k: v["definition"] for k, v in json.loads(state.read_text()).items()}
    state.write_text(json.dumps(old))
    stages[1]["settings"]["lr"] = 0.01
    summary = run_pipeline(_write(tmp_path / "p2.yaml", stages), out)
    assert summary["source"]["status"] == "ran" and summary["target"]["status"] == "ran"
    state.write_text("{not json")
    capsys.readouterr()
    assert run_pipeline(tmp_path / "p2.yaml", out)["target"]["status"] == "skipped (complete)"
    assert "pipeline_state.json cannot be read" in capsys.readouterr().out


def test_a_stop_reaches_an_adapt_stage_and_the_adapt_command(tmp_path, tiny_bert, capsys, monkeypatch):
    """Ctrl-C / SIGTERM stop a pipeline's adapt stage at its next step (it ran to the end): nothing of
    it is written, and the next run does it again. `transferkit adapt` stops the same way, exit 130 / 143."""
    import signal

    from transferkit import adapt as adapt_mod
    from transferkit.pipeline import run_pipeline
    from transferkit.trainer import StopRequested

    p = make_text_csv(tmp_path / "r.csv")
    f = _write(tmp_path / "p.yaml", [{"name": "mlm", "kind": "adapt", "data": str(p), "model": f"dir:{tiny_bert}", "epochs": 3,
                                       "settings": {"batch_size": 8}}])
    out = tmp_path / "out"
    calls = []
    with pytest.raises(StopRequested) as e:
        run_pipeline(f, out, should_stop=lambda: calls.append(1) or len(calls) > 3)
    assert not e.value.checkpointed and len(calls) == 4 and not (out / "mlm" / "manifest.json").exists()
    summary = run_pipeline(f, out)
    assert summary["mlm"]["status"] == "ran" and (out / "mlm" / "manifest.json").is_file()

    real = adapt_mod.mlm

    def mlm_then_signal(*a, **kw):  # SIGTERM arrives during the masked-LM steps
        asked = kw["should_stop"]

        def first_asks():
            if not asked():
                signal.raise_signal(signal.SIGTERM)
            return asked()
        return real(*a, **{**kw, "should_stop": first_asks})

    monkeypatch.setattr(adapt_mod, "mlm", mlm_then_signal)
    capsys.readouterr()
    rc = main(["adapt", "--data", str(p), "--model", f"dir:{tiny_bert}", "--out", str(tmp_path / "a"), "--batch-size", "8", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 143 and "stopped by SIGTERM; adapt keeps no checkpoint" in err and not (tmp_path / "a" / "manifest.json").exists()
    assert "without a checkpoint: adapt starts again" in err and "after a checkpoint" not in err  # it promised one


def test_adapt_caps_max_length_at_the_model_s_positions(tmp_path, tiny_bert):
    """--max-length above the model's position embeddings: fit caps it, adapt's masked-LM training
    passed it on (a RuntimeError: "the expanded size of the tensor ... must match")."""
    texts = tmp_path / "long.txt"
    texts.write_text("".join(" ".join(f"word{i} film plot" for i in range(200)) + "\n" for _ in range(8)))
    assert main(["adapt", "--data", str(texts), "--model", f"dir:{tiny_bert}", "--max-length", "5000", "--out", str(tmp_path / "a"), "--quiet"]) == 0


def test_adapt_on_images_notes_the_text_flags_it_does_not_read(tmp_path, tiny_ckpt, capsys):
    data = make_folder(tmp_path / "d", n=3)
    assert main(["adapt", "--data", str(data), "--model", f"file:{tiny_ckpt}", "--arch", "cifar_resnet20", "--input-size", "16",
                 "--lr", "0.1", "--epochs", "3", "--out", str(tmp_path / "a")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "note: --lr, --epochs are for masked-LM training of text models; AdaBN on images does not read them" in said


def test_adapt_refuses_a_batch_size_of_zero(tmp_path, capsys):
    """--batch-size lost its default of 32 (AdaBN's is 64): a 0 given must still be refused, not taken for 'not given'."""
    assert main(["adapt", "--data", "digits", "--model", "small_convnet", "--batch-size", "0", "--out", str(tmp_path / "a")]) == 2
    assert "--batch-size must be >= 1, got 0" in capsys.readouterr().err and not (tmp_path / "a").exists()


def test_adapt_says_when_it_raises_a_batch_size_of_one(tmp_path, tiny_ckpt, capsys):
    """BatchNorm needs two images per batch: AdaBN raised --batch-size 1 to 2 without a word."""
    data = make_folder(tmp_path / "d", n=3)
    assert main(["adapt", "--data", str(data), "--model", f"file:{tiny_ckpt}", "--arch", "cifar_resnet20", "--input-size", "16",
                 "--batch-size", "1", "--out", str(tmp_path / "a")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "note: AdaBN needs at least 2 images per batch: --batch-size 1 is raised to 2" in said


def test_an_adapt_stage_s_batch_size_reaches_adabn(tmp_path, tiny_ckpt, monkeypatch, capsys):
    """A pipeline's adapt stage read `settings: {batch_size: N}` into a config AdaBN never looked at:
    its batches stayed at 64, as `adapt --batch-size N` does not."""
    import transferkit.adapt as adapt_mod

    seen = []
    real = adapt_mod.adabn
    monkeypatch.setattr(adapt_mod, "adabn", lambda *a, **k: seen.append(k["batch_size"]) or real(*a, **k))
    data = make_folder(tmp_path / "d", n=3)
    for bs, want in ((None, 64), (4, 4)):
        st = {"name": "a", "kind": "adapt", "data": str(data), "model": f"file:{tiny_ckpt}",
              "settings": {"arch": "cifar_resnet20", "input_size": 16, **({"batch_size": bs} if bs else {})}}
        f = _write(tmp_path / f"p{bs}.yaml", [st])
        assert main(["pipeline", str(f), "--out", str(tmp_path / f"o{bs}"), "--quiet"]) == 0, capsys.readouterr().err
        assert seen[-1] == want


def test_a_stages_data_identity_sees_linked_folders_the_images_a_csv_names_and_intermediate_data(tmp_path):
    """Review AF: a class folder that is a link was not walked, and the images behind a CSV of paths
    were not looked at: their changes left a stage skipped."""
    import os
    import time

    from transferkit.pipeline import _data_identity

    real = make_folder(tmp_path / "real", n=2)
    (tmp_path / "linked").mkdir()
    os.symlink(real / "red", tmp_path / "linked" / "red")
    before = _data_identity(str(tmp_path / "linked"))
    (real / "red" / "new.png").write_bytes((real / "red" / "0.png").read_bytes())
    assert _data_identity(str(tmp_path / "linked")) != before
    (tmp_path / "list.csv").write_text("path,label\nreal/red/0.png,red\nreal/blue/0.png,blue\n")
    before = _data_identity(str(tmp_path / "list.csv"))
    time.sleep(0.01)
    (real / "blue" / "0.png").write_bytes((real / "red" / "1.png").read_bytes())  # the CSV unchanged, an image it names rewritten
    assert _data_identity(str(tmp_path / "list.csv")) != before
    assert _data_identity("digits") is None and _data_identity("digits", str(real)) == _data_identity(str(real))
    # what the data does not read changes nothing (QA AM: a .DS_Store or a NOTES.txt made every stage train again)
    before = _data_identity(str(real))
    (real / ".DS_Store").write_bytes(b"\0")
    (real / "red" / "._0.png").write_bytes(b"\0")
    (real / "NOTES.txt").write_text("collected in May")
    (real / "__MACOSX").mkdir()
    (real / "__MACOSX" / "x.png").write_bytes(b"\0")
    assert _data_identity(str(real)) == before
    (real / "blue" / "extra.png").write_bytes((real / "red" / "1.png").read_bytes())
    assert _data_identity(str(real)) != before
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "train.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    before = _data_identity(str(texts))
    (texts / ".DS_Store").write_bytes(b"\0")
    assert _data_identity(str(texts)) == before
    (texts / "val.csv").write_text("text,label\nfine,pos\n")
    assert _data_identity(str(texts)) != before


def test_a_pipeline_file_holds_stages_only(tmp_path, capsys):
    """QA AM: `settings:` beside `stages:` (meant for every stage) was dropped in silence, and `stage:`
    said only that `stages:` was missing."""
    for doc, says in (({"settings": {"epochs": 1}, "stages": [{"name": "a", "data": "digits", "model": "small_convnet"}]}, "unknown key 'settings'"),
                      ({"stage": [{"name": "a", "data": "digits", "model": "small_convnet"}]}, "unknown key 'stage' (did you mean: stages?)")):
        f = tmp_path / "p.yaml"
        f.write_text(yaml.safe_dump(doc))
        assert main(["pipeline", str(f), "--out", str(tmp_path / "o")]) == 2
        assert says in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_adapt_intermediate_neither_writes_over_a_finished_run_nor_restarts_a_stopped_one(tmp_path, tiny_ckpt, capsys):
    """QA B: `adapt --intermediate` wrote its intermediate fit over OUT-intermediate with overwrite=True:
    a finished run there was replaced in silence, and one it had stopped was started over."""
    from transferkit import report
    from transferkit.adapt import adapt
    from transferkit.config import RunConfig, replace
    from transferkit.trainer import StopRequested

    data, target = make_folder(tmp_path / "d", n=4), make_folder(tmp_path / "t", n=3, seed=1)
    args = ["--model", f"file:{tiny_ckpt}", "--arch", "cifar_resnet20", "--input-size", "16", "--quiet"]
    assert main(["fit", "--data", str(data), "--strategy", "linear_probe", "--out", str(tmp_path / "a-intermediate"), *args]) == 0
    before = (tmp_path / "a-intermediate" / "model.safetensors").read_bytes()
    assert main(["adapt", "--data", str(target), "--intermediate", str(data), "--out", str(tmp_path / "a"), *args]) == 2
    assert "a-intermediate, which holds a finished run: pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "a-intermediate" / "model.safetensors").read_bytes() == before and not (tmp_path / "a").exists()

    cfg = replace(RunConfig(), data=str(target), model=f"file:{tiny_ckpt}", arch="cifar_resnet20", input_size=16, strategy="full", epochs=3,
                  batch_size=4)
    calls = iter(range(10**6))
    with pytest.raises(StopRequested):
        adapt(cfg, tmp_path / "b", intermediate=str(data), console=report.console(quiet=True), should_stop=lambda: next(calls) > 3)
    assert any((tmp_path / "b-intermediate" / "checkpoints").glob("ckpt-*.pt"))
    from rich.console import Console

    con = Console(record=True, width=200)
    adapt(cfg, tmp_path / "b", intermediate=str(data), console=con)
    assert "b-intermediate, resumed from its checkpoint" in " ".join(con.export_text().split())
    assert json.loads((tmp_path / "b-intermediate" / "metrics.json").read_text()).get("resumed", "").startswith("from the checkpoint")
    # an interrupted run of other data there is neither resumed nor started over without --overwrite
    (tmp_path / "c-intermediate" / "checkpoints").mkdir(parents=True)
    (tmp_path / "c-intermediate" / "checkpoints" / "ckpt-0001.pt").write_bytes(b"x")
    (tmp_path / "c-intermediate" / "config.yaml").write_bytes((tmp_path / "b-intermediate" / "config.yaml").read_bytes())
    with pytest.raises(UserError, match="c-intermediate, which holds an interrupted run of other data or another model: pass --overwrite"):
        adapt(cfg, tmp_path / "c", intermediate=str(target), console=report.console(quiet=True))


def test_a_stage_whose_model_outside_the_pipeline_changed_runs_again(tmp_path, tiny_ckpt, capsys):
    """QA B: a stage on `model: run:DIR` (or file:, dir:) was skipped as complete after DIR was trained
    again: its run stayed one of the old weights."""
    import shutil

    from transferkit.pipeline import run_pipeline

    ck = tmp_path / "w.safetensors"
    shutil.copy(tiny_ckpt, ck)
    data = make_folder(tmp_path / "d", n=3)
    f = _write(tmp_path / "p.yaml", [{"name": "t", "data": str(data), "model": f"file:{ck}",
                                      "settings": {"arch": "cifar_resnet20", "input_size": 16, "strategy": "linear_probe"}}])
    out = tmp_path / "o"
    run_pipeline(f, out)
    assert run_pipeline(f, out)["t"]["status"] == "skipped (complete)"
    torch.manual_seed(1)
    from safetensors.torch import save_file

    from transferkit.backbones.cifar_resnet import CifarResNet

    save_file(CifarResNet(20).state_dict(), str(ck))  # saved again, other weights
    capsys.readouterr()
    assert run_pipeline(f, out)["t"]["status"] == "ran"
    assert f"stage t: its model (file:{ck}) changed since it ran: running it again" in " ".join(capsys.readouterr().out.split())
    assert run_pipeline(f, out)["t"]["status"] == "skipped (complete)"
