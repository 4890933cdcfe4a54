"""Every user mistake: a short message naming the bad file or value, exit code 2, no traceback, and
no run directory that looks complete."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_folder, tiny_args
from transferkit.backbones._weights import load_state_dict_file
from transferkit.backbones.cifar_resnet import CifarResNet
from transferkit.cli import main
from transferkit.errors import UserError


def _fit(args, capsys):
    rc = main(["fit", *args])
    return rc, capsys.readouterr().err


def _expect(args, capsys, out, *needles):
    rc, err = _fit([*args, "--out", str(out)], capsys)
    assert rc == 2, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
    assert not (out / "manifest.json").exists()
    return err


def test_missing_and_empty_data(tmp_path, capsys, tiny_ckpt):
    _expect(["--data", str(tmp_path / "nope"), *tiny_args(tiny_ckpt)], capsys, tmp_path / "r", "data not found", "nope")
    (tmp_path / "empty").mkdir()
    _expect(["--data", str(tmp_path / "empty"), *tiny_args(tiny_ckpt)], capsys, tmp_path / "r", "no class subfolders")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "b").mkdir(parents=True)
    _expect(["--data", str(tmp_path / "noimg"), *tiny_args(tiny_ckpt)], capsys, tmp_path / "r", "holds no image files")


def test_an_out_folder_that_cannot_be_made(tmp_path, capsys, tiny_ckpt):
    (tmp_path / "a_file").write_text("")
    _expect(["--data", "digits", *tiny_args(tiny_ckpt)], capsys, tmp_path / "a_file" / "run", "cannot create the folder", "a_file")
    assert main(["lr-find", "--data", "digits", *tiny_args(tiny_ckpt), "--steps", "10", "--out", str(tmp_path / "a_file" / "lr")]) == 2
    assert "cannot create the folder" in capsys.readouterr().err


def test_class_with_one_image(tmp_path, capsys, tiny_ckpt):
    d = make_folder(tmp_path / "d", n=4)
    for p in list((d / "red").iterdir())[1:]:
        p.unlink()
    _expect(["--data", str(d), *tiny_args(tiny_ckpt)], capsys, tmp_path / "r", "at least 2 images", "'red' (1)")


def test_corrupt_images_listed_and_skippable(tmp_path, capsys, tiny_ckpt):
    d = make_folder(tmp_path / "d", n=6)
    (d / "red" / "broken.jpg").write_bytes(os.urandom(2000))
    (d / "blue" / "truncated.png").write_bytes((d / "blue" / "0.png").read_bytes()[:60])
    err = _expect(["--data", str(d), *tiny_args(tiny_ckpt)], capsys, tmp_path / "r", "2 image file(s) cannot be read", "broken.jpg", "truncated.png", "--skip-bad-images")
    rc, err = _fit(["--data", str(d), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "2", "--skip-bad-images", "--out", str(tmp_path / "ok")], capsys)
    assert rc == 0, err
    assert (tmp_path / "ok" / "manifest.json").exists()
    # evaluate on the same data: the run's validation split drawn again (its unreadable images, which the
    # run kept no fingerprint of, were taken for "the data here changed": review AK)
    assert main(["evaluate", str(tmp_path / "ok"), "--data", str(d), "--skip-bad-images"]) == 0
    out = capsys.readouterr().out
    assert "the run's validation split" in out and "changed since" not in out
    # predict and evaluate (with a run fitted on clean images) fail the same way, and take the flag they suggest
    rc, err = _fit(["--data", str(make_folder(tmp_path / "clean", n=6, seed=1)), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "2",
                    "--out", str(tmp_path / "run")], capsys)
    assert rc == 0, err
    for cmd in (["predict", str(tmp_path / "run"), str(d / "red")], ["evaluate", str(tmp_path / "run"), "--data", str(d)]):
        assert main(cmd) == 2
        assert "--skip-bad-images" in capsys.readouterr().err
        assert main([*cmd, "--skip-bad-images"]) == 0
        out, err = capsys.readouterr()
        assert "unreadable image(s)" in err and "broken.jpg" in err
        if cmd[0] == "predict":
            assert len(out.splitlines()) == 1 + 6 and "broken.jpg" not in out
        else:
            assert "12 images, accuracy" in out
    # a file PIL cannot identify is said as what it is where that is plain (it was "UnidentifiedImageError: cannot identify image file")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("id,label\n1,red\n")
    for name, said in (("empty.jpg", "empty.jpg: an empty file (0 bytes), not an image"), ("notes.png", "notes.png: a text file, not an image")):
        assert main(["predict", str(tmp_path / "run"), str(tmp_path / name)]) == 2
        assert said in capsys.readouterr().err


def test_csv_problems(tmp_path, capsys, tiny_ckpt):
    make_folder(tmp_path / "d", n=3)  # the CSVs below point into it
    bad_cols = tmp_path / "cols.csv"
    bad_cols.write_text("photo,kind\nd/red/0.png,red\n")
    _expect(["--data", str(bad_cols), *tiny_args(tiny_ckpt)], capsys, tmp_path / "r", "lacks column(s) path, label; found: photo, kind",
            "a column named one of path, file, filename", "--label-column")
    _expect(["--data", str(bad_cols), "--label-column", "colour", *tiny_args(tiny_ckpt)], capsys, tmp_path / "r", "no label column 'colour'; columns found: photo, kind")
    # texts given to an image model under names the text check does not know: the message says which model reads them
    texts = tmp_path / "texts.csv"
    texts.write_text("opinion,verdict\na good film,pos\na bad film,neg\n")
    _expect(["--data", str(texts), *tiny_args(tiny_ckpt)], capsys, tmp_path / "r", "texts.csv looks like text data", "use a text model (minilm_l6")
    (tmp_path / "SMSSpamCollection").write_text("ham\tsee you soon\nspam\twin a prize now\n")  # no header, no suffix
    _expect(["--data", str(tmp_path / "SMSSpamCollection"), *tiny_args(tiny_ckpt)], capsys, tmp_path / "r", "SMSSpamCollection looks like text data",
            "use a text model (minilm_l6")
    missing = tmp_path / "missing.csv"
    missing.write_text("path,label\nd/red/0.png,red\nd/red/nothere.png,red\nd/blue/0.png,blue\nd/blue/1.png,blue\n")
    _expect(["--data", str(missing), *tiny_args(tiny_ckpt)], capsys, tmp_path / "r", "do not exist", "nothere.png", "row 3",
            f"a relative path is read from the CSV's folder, {tmp_path}/")
    # an empty label cell was a class named '' (and a `p_` column in predictions)
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("path,label\n" + "".join(f"d/{c}/{i}.png,{c}\n" for c in ("red", "blue") for i in range(3)) + "d/red/0.png,\nd/red/1.png\n")
    _expect(["--data", str(unlabelled), *tiny_args(tiny_ckpt)], capsys, tmp_path / "r",
            "unlabelled.csv: 2 row(s) with an empty label in column 'label': row 8: 'd/red/0.png'; row 9: 'd/red/1.png'")
    latin = tmp_path / "latin.csv"
    rows = "".join(f"d/{c}/{i}.png,{c}-caf\xe9\n" for c in ("red", "blue") for i in range(3))
    latin.write_bytes(("path,label\n" + rows).encode("latin-1"))
    _expect(["--data", str(latin), *tiny_args(tiny_ckpt)], capsys, tmp_path / "r", "latin.csv", "not UTF-8", "--encoding")
    rc, err = _fit(["--data", str(latin), *tiny_args(tiny_ckpt), "--encoding", "latin-1", "--strategy", "linear_probe", "--lp-epochs", "1",
                    "--out", str(tmp_path / "ok")], capsys)
    assert rc == 0, err  # valid once its encoding is named
    import json

    assert sorted(json.loads((tmp_path / "ok" / "model.json").read_text())["classes"]) == ["blue-café", "red-café"]


def test_unknown_model_suggests_close_names(tmp_path, capsys):
    _expect(["--data", "digits", "--model", "efficientnet_lit0"], capsys, tmp_path / "r", "unknown model 'efficientnet_lit0'", "efficientnet_lite0", "timm:NAME, tv:NAME, hf:NAME")
    _expect(["--data", "digits", "--model", "timm:resnt18"], capsys, tmp_path / "r", "unknown timm model", "resnet18")


def test_timm_weights_offline_say_how_to_use_a_local_file(tmp_path, capsys):
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        pytest.skip("this machine is online: the offline message cannot be shown")
    except OSError:
        pass
    _expect(["--data", "digits", "--model", "timm:resnet18"], capsys, tmp_path / "r", "could not fetch", "file:", "--arch resnet18")


def test_checkpoint_that_does_not_fit_names_keys(tmp_path, capsys):
    p = tmp_path / "r20.safetensors"
    save_file(CifarResNet(20).state_dict(), str(p))
    _expect(["--data", "digits", "--model", f"file:{p}", "--arch", "cifar_resnet56"], capsys, tmp_path / "r", "do not fit", "missing keys", "layer1.3.conv1.weight")
    sd = CifarResNet(20).state_dict()
    sd["conv1.weight"] = torch.zeros(8, 3, 3, 3)
    save_file(sd, str(p))
    _expect(["--data", "digits", "--model", f"file:{p}", "--arch", "cifar_resnet20"], capsys, tmp_path / "r", "shape mismatch", "conv1.weight", "(8, 3, 3, 3)")
    _expect(["--data", "digits", "--model", f"file:{p}"], capsys, tmp_path / "r", "needs --arch")


def test_arch_takes_a_timm_name_as_model_spells_it(tmp_path):
    """--model timm:NAME names a timm architecture; --arch timm:NAME was refused ("unknown architecture")."""
    import timm

    from transferkit.backbones import create_backbone

    p = tmp_path / "w.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=0).state_dict(), str(p))
    a, b = (create_backbone(f"file:{p}", arch=arch) for arch in ("timm:test_resnet", "test_resnet"))
    for (k, v), (k2, v2) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(a.model.state_dict()["conv1.0.weight"], load_file(str(p))["conv1.0.weight"])


def test_finished_run_not_overwritten_without_flag(tmp_path, capsys, tiny_ckpt):
    d = make_folder(tmp_path / "d", n=4)
    args = ["--data", str(d), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "2", "--out", str(tmp_path / "r")]
    assert _fit(args, capsys)[0] == 0
    rc, err = _fit(args, capsys)
    assert rc == 2 and "already holds a finished run" in err and "--overwrite" in err
    # --overwrite: the old run's files go (one the new run does not write must not stay behind); other files stay
    import json

    from transferkit.rundir import verify

    run = tmp_path / "r"
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "stale.jpg").write_bytes(b"old")
    manifest["files"]["stale.jpg"] = "0" * 64
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "notes.txt").write_text("mine")
    assert _fit([*args, "--overwrite"], capsys)[0] == 0
    assert not (run / "stale.jpg").exists() and (run / "notes.txt").read_text() == "mine" and verify(run) == []


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--strategy", "lpft"], "unknown strategy 'lpft'"),
        (["--lr", "-0.1"], "lr must be > 0"),
        (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
        (["--l2", "inf"], "l2 must be a finite number >= 0, got inf"),
        (["--weight-decay", "inf"], "--weight-decay must be a finite number >= 0, got inf"),  # said by the flag given
        (["--seed", "-1"], "seed must be in [0, 2**32), got -1"),  # a traceback from numpy
        (["--gamma", "2"], "gamma"),
        (["--clip-norm", "0"], "--clip-norm must be a finite number > 0"),
        (["--schedule", "cosin"], "did you mean: cosine"),
        (["--optimizer", "adamm"], "unknown optimizer"),
        (["--strategy", "partial", "--k", "50"], "--k 50 is larger than the number of block groups"),
        (["--freeze", "no_such_layer"], "matches no parameter"),
        (["--strategy", "full", "--layer-lr-min", "1e-2", "--lr", "1e-3"], "--layer-lr-min (0.01) must be below lr (0.001)"),
        (["--strategy", "full", "--layer-lr-min", "1e-2"], "--layer-lr-min (0.01) must be below lr (0.001)"),  # the default lr
    ],
)
def test_bad_settings(tmp_path, capsys, tiny_ckpt, flags, needle):
    d = make_folder(tmp_path / "d", n=3)
    _expect(["--data", str(d), *tiny_args(tiny_ckpt), *flags], capsys, tmp_path / "r", needle)


def test_bad_config_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: digits\nepochz: 3\n")
    _expect(["--config", str(cfg)], capsys, tmp_path / "r", "unknown setting 'epochz'", "epochs")
    cfg.write_text("train:\n  batch_size: many\n")
    _expect(["--config", str(cfg)], capsys, tmp_path / "r", "batch_size must be int")
    cfg.write_text("data: digits\nepochs: true\nlr: yes\n")  # YAML booleans were 1 epoch and a rate of 1.0
    _expect(["--config", str(cfg)], capsys, tmp_path / "r", "epochs must be int, got True")
    cfg.write_text("data: digits\nlr: yes\n")
    _expect(["--config", str(cfg)], capsys, tmp_path / "r", "lr must be float, got True")
    cfg.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    _expect(["--config", str(cfg)], capsys, tmp_path / "r", "cannot parse")
    cfg.write_text("data: digits\ntrain:\n  epochs: 3\n     lr: 0.1\n")  # over-indented: PyYAML's line and column were dropped
    _expect(["--config", str(cfg)], capsys, tmp_path / "r", f"cannot parse {cfg} as YAML (line 4, column 8): mapping values are not allowed here")
    # a config file that names no data does not train on the built-in digits unasked
    for text in ("lr: 0.0003\nbatch_size: 16\n", "data:\n  val_fraction: 0.3\n"):
        cfg.write_text(text)
        for cmd in (["fit", "--out", str(tmp_path / "r")], ["search", "--out", str(tmp_path / "s")], ["lr-find", "--out", str(tmp_path / "l")]):
            assert main([*cmd, "--config", str(cfg)]) == 2
            assert f"needs --data (a folder, a CSV, or 'digits'); {cfg} names no data" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "rsl")


def test_config_file_and_flag_precedence(tmp_path):
    from transferkit.cli import build_parser, resolve_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  name: efficientnet_lite1\noptim:\n  lr: 0.01\nepochs: 3\nbatch-size: 8\n")
    r = resolve_config(build_parser().parse_args(["fit", "--config", str(cfg), "--lr", "0.002", "--out", "x"]))
    assert (r.model.name, r.optim.lr, r.train.epochs, r.train.batch_size) == ("efficientnet_lite1", 0.002, 3, 8)
    assert r.strategy.name == "lp_ft"  # untouched default
    # fp32, as the README says it, is "no" mixed precision (it was refused)
    r = resolve_config(build_parser().parse_args(["fit", "--data", "digits", "--precision", "fp32", "--out", "x"]))
    assert r.validate().train.precision == "no"
    from transferkit.fit import resolve_precision

    # fp16 autocast does nothing on a CPU (Accelerate leaves float32): the run says fp32, not fp16
    assert resolve_precision("fp16", cpu=True) == "no" and resolve_precision("bf16", cpu=True) == "bf16"


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    code = (
        "import os, torch\n"
        "class E:\n"
        f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'w': E()}}, {str(evil)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert evil.exists() and not marker.exists()
    with pytest.raises(UserError, match=r"refusing to load .*evil.pt: it holds Python objects besides tensors \(posix.system\).*torch.save\(model.state_dict\(\)") as e:
        load_state_dict_file(evil)
    assert "weights_only=False" not in str(e.value)  # torch's advice, the unsafe path, is not repeated
    assert not marker.exists(), "the payload ran"
    rc = main(["fit", "--data", "digits", "--model", f"file:{evil}", "--arch", "cifar_resnet20", "--out", str(tmp_path / "r")])
    assert rc == 2 and not marker.exists()
    # junk and a truncated file: "cannot read", not torch's advice to unpickle; a safetensors file under another suffix is read as one
    (tmp_path / "junk.pt").write_text("garbage\n")
    with pytest.raises(UserError, match=r"cannot read .*junk.pt: it is not a PyTorch checkpoint, or it is damaged"):
        load_state_dict_file(tmp_path / "junk.pt")
    sd = CifarResNet(8).state_dict()
    save_file({f"model.{k}": v for k, v in sd.items()}, str(tmp_path / "w.ckpt"))  # safetensors bytes, Lightning's `model.` prefix
    loaded = load_state_dict_file(tmp_path / "w.ckpt")
    m = CifarResNet(8)
    from transferkit.backbones._weights import fit_state_dict

    fit_state_dict(m, loaded, source="w.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), sd.values()))


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`transferkit predict ... | head`: when the reader closes the pipe, the command stops quietly
    (exit 141, as Unix tools killed by SIGPIPE) instead of a BrokenPipeError traceback."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "transferkit.cli", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the first line is written
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_run_finishes_when_the_reader_of_its_output_leaves(tmp_path):
    """`transferkit fit ... | head`: the fit stopped at its next line with the run directory half
    written (no manifest; "not a finished transferkit run" for every later command). A command whose
    work is a run finishes it, printing to nowhere."""
    import subprocess
    import sys

    from transferkit.rundir import is_complete

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "transferkit.cli", "fit", "--data", "digits:3,8", "--model", "small_convnet", "--strategy", "linear_probe",
           "--lp-epochs", "2", "--out", str(run)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    p.stdout.readline()  # `| head -1`
    p.stdout.close()
    assert p.wait(timeout=300) == 0 and is_complete(run)


def test_help_listings_and_argument_errors_do_not_import_torch(tmp_path):
    """`transferkit --help`, `strategies`, a mistyped option and a bad setting answer at once: PyTorch
    (about 2 s to import) is loaded only by the commands that compute."""
    import subprocess
    import sys

    bad = ["fit", "--data", "x", "--out", str(tmp_path / "r"), "--lr", "-1"]
    code = ("import sys, contextlib, io\n"
            "from transferkit.cli import main\n"
            f"for argv in (['--help'], ['fit', '--help'], ['fit', '--data', 'x', '--bogus'], ['strategies'], ['schedules'], {bad!r}):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main(argv)\n"
            "print(sorted(m for m in ('torch', 'timm', 'transformers', 'transferkit.api') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
    import transferkit

    assert transferkit.ImageClassifier.__name__ == "ImageClassifier"  # still there, loaded on first use


def test_flags_the_chosen_strategy_schedule_or_optimizer_ignore_are_noted(capsys, tmp_path):
    """They were accepted in silence (--momentum with adamw, --staircase with cosine, --k with full);
    flags they do read, and settings that came from no flag, are not noted."""
    from transferkit.cli import _note_unused, build_parser, resolve_config

    args = build_parser().parse_args(["fit", "--data", "digits", "--out", "x", "--strategy", "full", "--k", "3", "--momentum", "0.8",
                                      "--no-nesterov", "--staircase", "--min-lr-ratio", "0.1", "--layer-decay", "0.8", "--candidates", "a,b"])
    said = _note_unused(resolve_config(args), args)
    err = capsys.readouterr().err
    assert said == {"k", "momentum", "nesterov", "staircase", "candidates"}
    assert "--candidates is not used: it chooses among models for --model auto, and --model is efficientnet_lite0" in err
    for line in ("--k is not used by --strategy full (only by partial)", "--momentum is not used by --optimizer adamw (only by sgd)",
                 "--no-nesterov is not used by --optimizer adamw", "--staircase is not used by --schedule cosine (only by exponential)"):
        assert line in err
    assert "--min-lr-ratio" not in err and "--layer-decay" not in err
    args = build_parser().parse_args(["fit", "--data", "digits", "--out", "x", "--model", "small_convnet", "--strategy", "full", "--l2sp-alpha", "0.1"])
    _note_unused(resolve_config(args), args)
    assert "--l2sp-alpha pulls the backbone toward its pretrained weights, and small_convnet has none" in capsys.readouterr().err
    args = build_parser().parse_args(["fit", "--data", "digits", "--out", "x", "--head-hidden", "32"])  # QA AD: a linear head has no hidden layer
    assert _note_unused(resolve_config(args), args) == {"head_hidden"}
    assert "--head-hidden is not used by --head linear (only by head mlp)" in capsys.readouterr().err
    args = build_parser().parse_args(["fit", "--data", "digits", "--out", "x", "--head", "mlp", "--head-hidden", "32"])
    assert _note_unused(resolve_config(args), args) == set()
    # a probe on cached features has no fine-tuning to average and no backbone pass to split (--ema was silent)
    args = build_parser().parse_args(["fit", "--data", "digits", "--out", "x", "--strategy", "linear_probe", "--ema", "0.99", "--accumulate", "2", "--group-by-length"])
    assert _note_unused(resolve_config(args), args) == {"ema", "accumulate", "group_by_length"}
    assert "--ema is not used by --strategy linear_probe" in capsys.readouterr().err
    # noted as unused, and then refused for a model that cannot recompute its activations: now only noted
    assert main(["fit", "--data", "digits:3,8", "--model", "small_convnet", "--strategy", "linear_probe", "--lp-epochs", "2",
                 "--grad-checkpointing", "--out", str(tmp_path / "gc"), "--quiet"]) == 0
    assert "--grad-checkpointing is not used by --strategy linear_probe" in capsys.readouterr().err


def test_settings_from_a_config_file_or_keyword_arguments_that_the_strategy_ignores_are_said(capsys, tmp_path, monkeypatch):
    """Only flags were noted: `layer_decay: 0.8` and `k: 3` in a --config file with strategy lora, or
    TextClassifier(strategy='lora', k=3), were accepted and ignored in silence. A run's own
    config.yaml (every setting at its value) notes only those it changed."""
    from transferkit import ImageClassifier
    from transferkit.cli import _note_unused, build_parser, resolve_config
    from transferkit.config import RunConfig

    (tmp_path / "c.yaml").write_text("strategy: lora\nlayer_decay: 0.8\nk: 3\n")
    args = build_parser().parse_args(["fit", "--config", str(tmp_path / "c.yaml"), "--data", "digits", "--out", "x", "--lora-r", "4"])
    assert _note_unused(resolve_config(args), args) == {"layer_decay", "k"}
    err = " ".join(capsys.readouterr().err.split())
    assert f"layer_decay (in {tmp_path / 'c.yaml'}) is not used by --strategy lora (only by full, partial, gradual, lp_ft)" in err
    assert f"k (in {tmp_path / 'c.yaml'}) is not used by --strategy lora (only by partial)" in err and "lora-r" not in err
    (tmp_path / "run.yaml").write_text(__import__("yaml").safe_dump(RunConfig().to_dict() | {"strategy": {**RunConfig().strategy.__dict__, "name": "lora"}}))
    args = build_parser().parse_args(["fit", "--config", str(tmp_path / "run.yaml"), "--data", "digits", "--out", "x"])
    assert _note_unused(resolve_config(args), args) == set()  # k: 2, layer_decay: null ... are the defaults, given by no one
    clf = ImageClassifier(model="small_convnet", strategy="linear_probe", k=3, epochs=2, lp_epochs=1, momentum=0.5)
    with pytest.warns(UserWarning) as said:
        clf.fit("digits:3,8", out=None)
    said = sorted(str(w.message) for w in said if "is not used by" in str(w.message))
    assert said == ["epochs=2 is not used by strategy 'linear_probe' (only by full, partial, gradual, lp_ft, lora)",
                    "k=3 is not used by strategy 'linear_probe' (only by partial)",
                    "momentum=0.5 is not used by optimizer 'adamw' (only by sgd)"], said
    # the warning comes before fit(X, y) writes its temporary examples: raised as an error, it left them behind
    import tempfile
    import warnings

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmpd"))
    (tmp_path / "tmpd").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(UserWarning, match="k=3 is not used"):
            ImageClassifier(model="small_convnet", strategy="linear_probe", k=3).fit([np.zeros((8, 8, 3), np.uint8)] * 4, [0, 1] * 2)
    assert list((tmp_path / "tmpd").iterdir()) == []
    # a pipeline stage's settings, as a --config file's (they were silent there)
    (tmp_path / "p.yaml").write_text("stages:\n  - name: a\n    data: digits:3,8\n    model: small_convnet\n"
                                     "    settings: {strategy: linear_probe, lp_epochs: 1, k: 3, momentum: 0.5}\n")
    assert main(["pipeline", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "po")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "note: stage a: k is not used by strategy linear_probe (only by partial)" in out
    assert "note: stage a: momentum is not used by optimizer adamw (only by sgd)" in out


def test_an_unknown_encoding_is_refused_before_any_file_is_read(tmp_path, capsys):
    """--encoding was checked only when a file needed decoding: on image folders it was accepted and
    ignored, whatever it said."""
    _expect(["--data", "digits:3,8", "--model", "small_convnet", "--encoding", "bogus"], capsys, tmp_path / "r", "encoding must be auto or a codec", "'bogus'")
    assert not (tmp_path / "r").exists()
    for cmd in (["evaluate", str(tmp_path), "--data", "digits"], ["predict", str(tmp_path), "x.png"], ["adapt", "--data", "digits", "--model", "small_convnet", "--out", str(tmp_path / "a")]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--encoding", "bogus"])
        assert e.value.code == 2 and "unknown encoding 'bogus'" in capsys.readouterr().err
    from transferkit.config import known_encoding

    assert known_encoding("auto") and known_encoding("latin-1") and known_encoding("UTF-16") and not known_encoding("bogus")


def test_a_negative_value_in_exponent_form_is_named_not_taken_for_an_option(tmp_path, capsys):
    """`--lr -1e-3`: argparse took -1e-3 for an option ("expected one argument"), so the message never
    named the bad value; -0.001 always reached the check."""
    _expect(["--data", "digits", "--lr", "-1e-3"], capsys, tmp_path / "r", "lr must be > 0, got -0.001")
    assert main(["lr-find", "--data", "digits", "--start-lr", "-1E-5"]) == 2
    assert "needs 0 < start_lr < end_lr, got -1e-05" in capsys.readouterr().err


def test_a_signal_after_training_says_the_run_finished(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the final evaluation printed "stopping at the next safe point" and then exited 0
    without a word: the run had finished, and now says so."""
    import os
    import signal

    import transferkit.fit as F

    def trained_then_signalled(cfg, out, **kw):
        os.kill(os.getpid(), signal.SIGINT)  # arrives once training is over: nothing asks should_stop any more

    monkeypatch.setattr(F, "fit", trained_then_signalled)
    assert main(["fit", "--data", "digits", "--out", str(tmp_path / "r")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "SIGINT came after training had ended: the run finished anyway and is complete in" in err


def test_a_file_named_like_an_option_gets_a_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-1.png").write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path), "-1.png"])
    assert e.value.code == 2 and "unrecognized arguments: -1.png (a file whose name starts with '-': write ./-1.png)" in capsys.readouterr().err


def test_outputs_are_never_written_over_the_files_of_a_run(tmp_path, tiny_ckpt, capsys):
    """`predict RUN x.png --out RUN/metrics.json` and `evaluate RUN --mistakes RUN/mistakes.csv` wrote
    over files the run's manifest lists, and every later command called the run unfinished. (And an
    evaluation folder of other class names lists the run's, and a quoted pattern is expanded.)"""
    from transferkit import ImageClassifier
    from transferkit.rundir import is_complete

    data = make_folder(tmp_path / "d")
    run = tmp_path / "run"
    assert main(["fit", "--data", str(data), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "2", "--out", str(run), "--quiet"]) == 0
    one = next(data.glob("*/*.png"))
    for cmd in (["predict", str(run), str(one), "--out", str(run / "metrics.json")],
                ["evaluate", str(run), "--data", str(data), "--mistakes", str(run / "mistakes.csv")],
                ["predict", str(run), str(one), "--out", str(run / "manifest.json")]):
        assert main(cmd) == 2, cmd
        assert f"is a file of the run {run} (its manifest lists it): writing over it would break the run" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(UserError, match="mistakes_csv .* is a file of the run"):
        ImageClassifier.load(run).evaluate(str(data), mistakes_csv=run / "mistakes.csv")
    assert is_complete(run)
    assert main(["predict", str(run), str(one), "--out", str(run / "preds.csv")]) == 0 and is_complete(run)  # a new file beside them is fine
    # QA AM: --out naming the image predicted, or another existing image, replaced it with CSV text
    photo, other_photo = one.read_bytes(), next(f for f in data.glob("*/*.png") if f != one)
    for out, says in ((one, "is one of the inputs"), (other_photo, "exists and is not a CSV or JSON file")):
        assert main(["predict", str(run), str(one), "--out", str(out)]) == 2
        assert says in " ".join(capsys.readouterr().err.split())
    assert one.read_bytes() == photo and other_photo.read_bytes()[:4] == b"\x89PNG"
    # an evaluation folder whose class folders differ in case: the run's classes are listed beside them
    other = make_folder(tmp_path / "e", n=2, seed=3)
    (other / "red").rename(other / "Red")
    assert main(["evaluate", str(run), "--data", str(other)]) == 2
    assert "has classes that are not in the training data: Red (training classes: blue, red)" in " ".join(capsys.readouterr().err.split())
    # a quoted pattern the shell left alone: the files it matches (it was "not found: d/red/*.png")
    assert main(["predict", str(run), str(data / "red" / "*.png"), "--out", str(tmp_path / "glob.csv")]) == 0
    assert len((tmp_path / "glob.csv").read_text().splitlines()) == 1 + 8
    assert "names no file; read as a pattern, it matches 8" in capsys.readouterr().err
    assert main(["predict", str(run), str(data / "red" / "*.gif")]) == 2
    assert f"not found: {data / 'red' / '*.gif'}" in capsys.readouterr().err
    # QA AJ: --out p.json got CSV text; now a JSON list of records, the same predictions
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "p.json")]) == 0
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "p.csv")]) == 0
    records, rows = json.loads((tmp_path / "p.json").read_text()), list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [(r["file"], r["label"]) for r in records] == [(r["file"], r["label"]) for r in rows] and len(rows) == 16
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 and set(r["probabilities"]) == {"blue", "red"} for r in records)
    # the README's helper for predict_proba's folder order takes a str too (an AttributeError)
    from transferkit.data import image_files

    assert image_files(str(data)) == image_files(data) and len(image_files(str(data))) == 16
    # a finished run whose file was removed: said as changed since, not "not a finished run"
    (run / "report.html").unlink()
    capsys.readouterr()
    assert main(["predict", str(run), str(one)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{run} finished, but its files changed since: report.html is missing" in err and "save a slim copy" in err


def test_a_text_row_without_its_text_is_said_and_a_tsv_header_shows_its_tab(tmp_path):
    from transferkit.data import load_image_data
    from transferkit.text_data import read_text_rows

    f = tmp_path / "m.csv"
    f.write_text("text,label\nfree prize now,spam\nsee you at noon,ham\n,ham\n\nlunch?,ham\n")
    empty: list[int] = []
    assert [i for i, _ in read_text_rows(str(f), empty=empty)] == [2, 3, 5] and empty == [4]  # a blank record is nothing (and not counted)
    t = tmp_path / "s.csv"
    t.write_text("sentence\tlabel\na fine film\t1\n")
    with pytest.raises(UserError, match=r"lacks column\(s\) path; found: sentence, label .*fit one with --model minilm_l6"):  # read as the TSV it is
        load_image_data(str(t))


def test_run_files_are_found_through_a_linked_folder_and_search_or_pipeline_folders_are_named(tmp_path):
    """refuse_run_file walked the path as typed: a link to a run's subfolder (a text run's text_model/)
    let a write through. A search's or a pipeline's folder was called "not a transferkit run directory"."""
    import json as _json

    from transferkit.rundir import refuse_run_file, require_finished

    run = tmp_path / "run"
    (run / "text_model").mkdir(parents=True)
    (run / "text_model" / "tokenizer.json").write_text("{}")
    (run / "manifest.json").write_text(_json.dumps({"files": {"text_model/tokenizer.json": "0"}}))
    (tmp_path / "tm").symlink_to(run / "text_model")
    with pytest.raises(UserError, match="is a file of the run"):
        refuse_run_file(tmp_path / "tm" / "tokenizer.json", "--out")
    refuse_run_file(tmp_path / "tm" / "other.csv", "--out")  # a new file beside it is fine
    (tmp_path / "s" / "final").mkdir(parents=True)
    (tmp_path / "s" / "search.json").write_text("{}")
    with pytest.raises(UserError, match=r"is a search folder whose search has not finished \(no .*s/final yet\): continue it"):
        require_finished(tmp_path / "s")
    (tmp_path / "s" / "final" / "manifest.json").write_text(_json.dumps({"files": {}}))
    with pytest.raises(UserError, match=r"is a search folder, not a run: its best configuration, refitted, is the run .*s/final"):
        require_finished(tmp_path / "s")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "pipeline_state.json").write_text("{}")
    with pytest.raises(UserError, match=r"is a pipeline folder, not a run: each stage's run is a folder in it \(none has finished yet\)"):
        require_finished(tmp_path / "p")


def test_checkpoint_layouts_of_training_scripts_load_or_are_named(tmp_path, tiny_ckpt):
    """QA AD: a Lightning checkpoint that kept its classifier was a KeyError traceback; timm train.py's
    file (its `args` an argparse.Namespace, and named .pth.tar) was refused as a pickled model; a file
    with the weights under another key named nothing it found; pickle.dump's file was "damaged"."""
    import argparse
    import pickle

    from safetensors.torch import load_file

    from transferkit.backbones import create_backbone

    sd = {**load_file(str(tiny_ckpt)), "linear.weight": torch.randn(10, 64), "linear.bias": torch.zeros(10)}  # with a 10-class classifier
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "hyper_parameters": {"lr": 0.1}, "epoch": 3}, tmp_path / "l.ckpt")
    bb = create_backbone(f"file:{tmp_path / 'l.ckpt'}", arch="cifar_resnet20")
    assert bb.source_head is not None  # the source classifier, found under its stripped name
    torch.save({"epoch": 3, "arch": "x", "state_dict": sd, "args": argparse.Namespace(lr=0.1, model="x")}, tmp_path / "model_best.pth.tar")
    assert set(load_state_dict_file(tmp_path / "model_best.pth.tar")) == set(sd)
    torch.save(sd, tmp_path / "UPPER.PT")  # QA G: suffixes in capitals were "unsupported checkpoint type '.PT'"
    (tmp_path / "MODEL_BEST.PTH.TAR").write_bytes((tmp_path / "model_best.pth.tar").read_bytes())
    assert set(load_state_dict_file(tmp_path / "UPPER.PT")) == set(load_state_dict_file(tmp_path / "MODEL_BEST.PTH.TAR")) == set(sd)
    torch.save({"net": sd, "epoch": 3}, tmp_path / "net.pth")
    with pytest.raises(UserError, match=r"does not hold a state dict of tensors \(its entries: net, epoch; the tensors look to be under 'net'"):
        load_state_dict_file(tmp_path / "net.pth")
    with open(tmp_path / "plain.pth", "wb") as f:
        pickle.dump({"w": [1.0, 2.0]}, f)
    with pytest.raises(UserError, match="plain.pth: it is a plain Python pickle, not a PyTorch checkpoint, and unpickling it can run code"):
        load_state_dict_file(tmp_path / "plain.pth")


@pytest.mark.parametrize("flags, hint", [
    (["--device", "cpu"], "--device: the device is chosen for you (a GPU where there is one); --cpu keeps to the CPU"),
    (["--grad-accum", "2"], "--grad-accum: --accumulate N"),
    (["--learning-rate", "0.1"], "--learning-rate: did you mean --lr"),
    (["--ouT", "x"], "--ouT: did you mean --out"),
])
def test_another_tools_flag_gets_the_commands_usage_and_a_hint(capsys, flags, hint):
    """QA AC: --device, --grad-accum and --num-workers gave the top-level usage ("usage: transferkit
    [-h]") and no hint."""
    with pytest.raises(SystemExit) as e:
        main(["fit", "--data", "digits", *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("usage: transferkit fit") and hint in err, err


def test_a_model_name_typo_on_text_data_is_named_and_emulated_bf16_is_said(tmp_path, capsys, tiny_ckpt, monkeypatch):
    """QA AL: `--model minilm-l6` on texts was "an image model"; --precision bf16 on a CPU without native
    bf16 ran 7.7x slower than fp32 without a word."""
    from conftest import make_text_csv
    from transferkit import fit as F

    rc, err = _fit(["--data", str(make_text_csv(tmp_path / "t.csv")), "--model", "minilm-l6", "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "unknown" in err and "minilm_l6" in err and "is an image model" not in err, err
    real = F.resolve_precision
    monkeypatch.setattr(F, "resolve_precision", lambda p, cpu=False: "no" if p == "auto" else real(p, cpu=cpu))
    rc = main(["fit", "--data", str(make_folder(tmp_path / "d", n=6)), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "1",
               "--precision", "bf16", "--out", str(tmp_path / "b")])
    out = " ".join(capsys.readouterr().out.split())
    assert rc == 0 and "this CPU has no native bf16" in out


def test_the_api_names_its_own_examples_not_its_temporary_csv():
    """QA AL: fit(texts, y) with an image model named /tmp/transferkit-data-.../data.csv, gone by then."""
    from transferkit import TextClassifier

    with pytest.raises(UserError, match=r"^the data given to fit\(X, y\) looks like text data, and efficientnet_lite0 is an image model") as e:
        TextClassifier(model="efficientnet_lite0", strategy="linear_probe").fit(["a good film", "a bad film"] * 4, ["pos", "neg"] * 4)
    assert "transferkit-data-" not in str(e.value)


def test_the_plan_leaves_out_a_regulariser_the_strategy_does_not_use(tmp_path, capsys, tiny_ckpt):
    """QA AL: "--l2sp-alpha is not used by --strategy lora", then "regularisation / clipping: l2sp_alpha=0.1"."""
    rc = main(["fit", "--data", str(make_folder(tmp_path / "d", n=6)), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "1",
               "--l2sp-alpha", "0.1", "--l2", "0.01", "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    out = " ".join(out.split())
    assert rc == 0 and "--l2sp-alpha is not used by --strategy linear_probe" in err
    assert "regularisation / clipping: l2=0.01" in out and "l2sp_alpha=0.1" not in out


def test_the_api_says_its_settings_as_keyword_arguments_not_flags(tmp_path, capsys, tiny_ckpt):
    """A Python user was told "--test-fraction 0.9 and --val-fraction 0.5 together leave no training
    data" and "--strategy full": flags of a command line they never ran."""
    from transferkit import ImageClassifier
    from transferkit.api import python_words

    said = {
        "--lora-r 4096 is not low rank: use a rank below 384, or --strategy full to train the whole layer":
            "lora_r=4096 is not low rank: use a rank below 384, or strategy='full' to train the whole layer",
        "--model minilm_l6 is not a run (use --model run:DIR, or --baseline scratch)": "model='minilm_l6' is not a run (use model='run:DIR', or baseline='scratch')",
        "pass --skip-bad-images (skip_bad_images=True in Python) to leave them out": "pass skip_bad_images=True to leave them out",
        "give more --epochs or a smaller --unfreeze-every; --class-weight balanced.": "give more epochs or a smaller unfreeze_every; class_weight='balanced'.",
        "lower --lr (try 1e-05), or clip the gradients (--clip-norm 1)": "lower lr (try 1e-05), or clip the gradients (clip_norm=1)",
        "continue with: transferkit fit --resume runs/x": "continue with: transferkit fit --resume runs/x",  # a command to run, kept
        "(`transferkit fit --resume OUT` reads it) --resume": "(`transferkit fit --resume OUT` reads it) --resume",  # no such keyword
    }
    for flags, words in said.items():
        assert python_words(flags) == words
    cfg = dict(model=f"file:{tiny_ckpt}", arch="cifar_resnet20", input_size=16, batch_size=4, strategy="linear_probe")
    with pytest.raises(UserError, match=r"^test_fraction=0.9 and val_fraction=0.5 together leave no training data") as e:
        ImageClassifier(**cfg, test_fraction=0.9, val_fraction=0.5).fit(str(make_folder(tmp_path / "d", n=6)))
    assert "--" not in str(e.value)
    rc = main(["fit", "--data", str(tmp_path / "d"), *tiny_args(tiny_ckpt), "--test-fraction", "0.9", "--val-fraction", "0.5", "--out", str(tmp_path / "r")])
    assert rc == 2 and "--test-fraction 0.9 and --val-fraction 0.5 together" in capsys.readouterr().err  # the command line keeps its flags


def test_a_run_is_not_written_into_the_image_folder_it_reads(tmp_path, capsys, tiny_ckpt):
    """QA AR: `fit --out hym/val` wrote a run into the data folder; AdaBN of that folder then counted
    45 target images in a folder of 40 (the run's plots). fit, search and adapt refuse it."""
    d = make_folder(tmp_path / "d", n=6)
    for cmd in (["fit", "--data", str(d), *tiny_args(tiny_ckpt), "--out", str(d / "run")],
                ["fit", "--data", str(d), *tiny_args(tiny_ckpt), "--out", str(d)],
                ["search", "--data", str(d), *tiny_args(tiny_ckpt), "--out", str(d / "s"), "--trials", "2", "--folds", "2"],
                ["adapt", "--data", str(d), "--model", f"file:{tiny_ckpt}", "--arch", "cifar_resnet20", "--out", str(d / "a")]):
        assert main(cmd) == 2, cmd
        assert "is inside the image folder" in capsys.readouterr().err
    assert not (d / "run").exists() and not (d / "s").exists() and not (d / "a").exists()
    assert main(["fit", "--data", str(d), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "1", "--out", str(tmp_path / "ok")]) == 0


def test_an_image_csv_s_delimiter_is_detected_or_read_as_given_and_text_flags_are_refused(tmp_path, capsys, tiny_ckpt):
    """--delimiter was ignored for image CSVs (fit and evaluate), a '|' image CSV was taken for text
    data, and --text-column / --delimiter given to an image model with a folder went unread in silence."""
    folder = make_folder(tmp_path / "imgs", n=4)
    rows = [f"{p.relative_to(tmp_path)}|{p.parent.name}" for p in sorted(folder.rglob("*.png"))]
    (tmp_path / "pipe.csv").write_text("path|label\n" + "\n".join(rows) + "\n")
    (tmp_path / "semi.csv").write_text("path;label\n" + "\n".join(r.replace("|", ";") for r in rows) + "\n")
    base = ["fit", *tiny_args(tiny_ckpt), "--epochs", "1", "--quiet"]
    assert main([*base, "--data", str(tmp_path / "pipe.csv"), "--out", str(tmp_path / "r")]) == 0, capsys.readouterr().err
    assert main([*base, "--data", str(tmp_path / "pipe.csv"), "--delimiter", "|", "--out", str(tmp_path / "r2")]) == 0
    capsys.readouterr()
    assert main([*base, "--data", str(tmp_path / "semi.csv"), "--delimiter", ",", "--out", str(tmp_path / "r3")]) == 2
    assert "semi.csv lacks column(s) path, label; found: path;label" in capsys.readouterr().err
    for extra, said in ((["--delimiter", ";"], "--delimiter reads a CSV of path,label rows;"),
                        (["--text-column", "body"], "--text-column body is for text models;")):
        assert main([*base, "--data", str(folder), *extra, "--out", str(tmp_path / "r4")]) == 2
        assert said in capsys.readouterr().err and not (tmp_path / "r4").exists()
    assert main(["evaluate", str(tmp_path / "r"), "--data", str(tmp_path / "semi.csv"), "--delimiter", ",", "--json"]) == 2
    assert "lacks column(s) path, label" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "r"), "--data", str(tmp_path / "semi.csv"), "--delimiter", ";", "--json"]) == 0
    assert main(["evaluate", str(tmp_path / "r"), "--data", str(folder), "--delimiter", ";"]) == 2
    assert "--delimiter reads a CSV of path,label rows" in capsys.readouterr().err


def test_a_config_file_s_bad_value_is_said_as_the_file_s_and_its_booleans_can_be_undone(tmp_path, capsys):
    """`epochs: 1.5` in the file was said as `--epochs must be int` beside a valid --epochs 1 flag; and
    a file's `staircase: true` / `nesterov: false` had no flag to undo them (--no-staircase, --nesterov)."""
    import yaml

    f = tmp_path / "y.yaml"
    f.write_text("epochs: 1.5\n")
    assert main(["fit", "--config", str(f), "--data", "digits", "--model", "small_convnet", "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "y.yaml: epochs must be int, got 1.5" in err and "--epochs" not in err
    f.write_text("schedule: {name: exponential, staircase: true}\noptim: {name: sgd, nesterov: false}\naugment: false\n")
    assert main(["fit", "--config", str(f), "--no-staircase", "--nesterov", "--augment", "--data", "digits:0-1", "--model", "small_convnet",
                 "--strategy", "linear_probe", "--epochs", "1", "--quiet", "--out", str(tmp_path / "r")]) == 0
    cfg = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert (cfg["schedule"]["staircase"], cfg["optim"]["nesterov"], cfg["data"]["augment"]) == (False, True, True)
    # QA H: settings those flags had put back were still said to be unused, as flags never typed ("--no-augment is not used")
    err = capsys.readouterr().err
    assert "staircase" not in err and "nesterov" not in err and "augment" not in err, err
    assert main(["fit", "--config", str(f), "--data", "digits:0-1", "--model", "small_convnet", "--strategy", "linear_probe", "--epochs", "1",
                 "--quiet", "--out", str(tmp_path / "r2")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "y.yaml) is not used by --strategy linear_probe" in err and "note: augment (in " in err and "--no-augment" not in err, err


def test_blank_group_cells_are_refused_and_numeric_class_folders_are_ordered_by_value(tmp_path, capsys):
    """QA D: an empty --group-column cell became a group named '' (the worst group, unnamed); class
    folders 2, 9, 10, 100 were ordered as text (10, 100, 2, 9), a CSV's same labels by value."""
    import shutil

    from transferkit.data import load_image_data
    from transferkit.text_data import read_table

    folder = make_folder(tmp_path / "imgs", n=3)
    rows = [f"{p},{p.parent.name},{'' if i == 1 else 'A'}" for i, p in enumerate(sorted(folder.rglob("*.png")))]
    (tmp_path / "g.csv").write_text("path,label,site\n" + "\n".join(rows) + "\n")
    with pytest.raises(UserError, match=r"g.csv: 1 row\(s\) with an empty group in column 'site': row 3: .*name their group"):
        load_image_data(str(tmp_path / "g.csv"), group_column="site")
    (tmp_path / "t.csv").write_text("text,label,site\ngood film,pos,A\nbad film,neg,\n")
    with pytest.raises(UserError, match=r"t.csv:3: empty group in column 'site'"):
        read_table(tmp_path / "t.csv", group_column="site")
    for name in ("2", "9", "10", "100"):
        make_folder(tmp_path / "n" / "x", n=2)
        (tmp_path / "n" / "x" / "red").rename(tmp_path / "n" / name)
        shutil.rmtree(tmp_path / "n" / "x")
    assert load_image_data(str(tmp_path / "n")).classes == ["2", "9", "10", "100"]


def test_accelerate_s_mixed_precision_is_said_not_read_and_checkpoint_minutes_is_checked(tmp_path, capsys, monkeypatch):
    """QA I: `accelerate launch --mixed_precision fp16` was ignored in silence (--precision decides);
    --checkpoint-minutes -1 (a checkpoint after every step) and nan (none) were accepted."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    args = ["fit", "--data", "digits:0-1", "--model", "small_convnet", "--strategy", "linear_probe", "--lp-epochs", "1", "--precision", "no"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "accelerate launch's --mixed_precision fp16 is not read: transferkit's --precision (no) decides, and this run trains in fp32" in said
    for bad in ("-1", "nan"):
        assert main([*args, "--checkpoint-minutes", bad, "--out", str(tmp_path / "x")]) == 2
        assert "--checkpoint-minutes must be a finite number >= 0 (0: at the end of each epoch only)" in capsys.readouterr().err
