"""ONNX export: the file, run by onnxruntime on inputs prepared as export.json says (PIL for images,
the saved tokenizer through `tokenizers` for texts), gives what `transferkit predict` gives; a failed
check leaves nothing behind; user mistakes are refused with a message."""

import json
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_args, tiny_text_args
from transferkit.api import ImageClassifier
from transferkit.cli import main

ort = pytest.importorskip("onnxruntime")


def _images(root, seed=0):
    """Two colour classes, images of different shapes (so the centre crop matters)."""
    rng = np.random.default_rng(seed)
    for c, col in [("red", (200, 40, 40)), ("blue", (40, 40, 200))]:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i, (w, h) in enumerate([(20, 20), (28, 20), (20, 26), (33, 21), (24, 24), (20, 30)]):
            a = np.clip(np.array(col)[None, None] + rng.normal(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / c / f"{i}.png")
    return root


def _as_documented(path, pre) -> np.ndarray:
    """export.json's steps, written independently: RGB, shorter side to R, centre R x R, uint8 CHW."""
    r = pre["resize_size"]
    img = Image.open(path)
    img.draft("RGB", (r, r))  # a JPEG: decoded at reduced scale, as export.json says
    img = img.convert("RGB")
    w, h = img.size
    s = r / min(w, h)
    nw, nh = max(r, round(w * s)), max(r, round(h * s))
    img = img.resize((nw, nh), {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[pre["interpolation"]])
    left, top = (nw - r) // 2, (nh - r) // 2
    return np.asarray(img.crop((left, top, left + r, top + r)), dtype=np.uint8).transpose(2, 0, 1)


def test_image_export_matches_predict_and_fails_whole(tmp_path, capsys, tiny_ckpt, monkeypatch):
    data = _images(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["fit", "--data", str(data), *tiny_args(tiny_ckpt), "--strategy", "full", "--epochs", "1", "--lp-epochs", "2", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "3/3 same class" in out and "0 different classes" in out, out

    mask = os.umask(0)
    os.umask(mask)
    assert (run / "export").stat().st_mode & 0o777 == 0o777 & ~mask  # readable as other folders, not mkdtemp's 0700
    info = json.loads((run / "export" / "export.json").read_text())
    assert info["classes"] == ["blue", "red"] and info["inputs"]["image"]["dtype"] == "uint8" and info["opset"] >= 18
    assert info["data_check"]["accuracy_onnx"] == info["data_check"]["accuracy_pytorch"]
    files = sorted(data.rglob("*.png"))
    x = np.stack([_as_documented(f, info["preprocess"]) for f in files])
    sess = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, probs = sess.run(["logits", "probs"], {"image": x})
    expected = ImageClassifier.load(run).predict_proba([str(f) for f in files])
    assert probs.shape == (len(files), 2)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), atol=1e-6)
    # a large JPEG, decoded as the steps say (they did not name the draft decode: QA AJ's full decode of
    # 8x-upscaled photos moved a probability by 0.04)
    assert "im.draft('RGB'" in info["preprocess"]["steps"]
    big = tmp_path / "big.jpg"
    Image.fromarray(np.asarray(Image.open(files[0]).convert("RGB").resize((160, 120), Image.BICUBIC))).save(big, quality=90)
    (p_big,) = sess.run(["probs"], {"image": _as_documented(big, info["preprocess"])[None]})
    np.testing.assert_allclose(p_big, ImageClassifier.load(run).predict_proba([str(big)]), atol=1e-5)

    # `predict --onnx` gives predict's labels and probabilities; an export of other weights is refused
    import csv

    for flag, name in (([], "torch.csv"), (["--onnx"], "onnx.csv")):
        assert main(["predict", str(run), str(data), *flag, "--out", str(tmp_path / name)]) == 0
    rows = {n: list(csv.reader(open(tmp_path / n))) for n in ("torch.csv", "onnx.csv")}
    assert [r[:2] for r in rows["torch.csv"]] == [r[:2] for r in rows["onnx.csv"]] and len(rows["onnx.csv"]) == len(files) + 1
    np.testing.assert_allclose(np.array([r[2:] for r in rows["onnx.csv"][1:]], float), np.array([r[2:] for r in rows["torch.csv"][1:]], float), atol=2e-6)
    # `evaluate --onnx`: the same metrics as PyTorch's evaluate
    for flag, name in (([], "torch.json"), (["--onnx"], "onnx.json")):
        capsys.readouterr()
        assert main(["evaluate", str(run), "--data", str(data), "--json", *flag]) == 0
        rows[name] = json.loads(capsys.readouterr().out)
    assert rows["onnx.json"]["accuracy"] == rows["torch.json"]["accuracy"] and rows["onnx.json"]["confusion_matrix"] == rows["torch.json"]["confusion_matrix"]
    assert rows["onnx.json"]["data"].endswith("(ONNX export, onnxruntime)")
    info_file = run / "export" / "export.json"
    good = info_file.read_text()
    info_file.write_text(good.replace(info["model_sha256"], "0" * 64))
    capsys.readouterr()
    assert main(["predict", str(run), str(data), "--onnx"]) == 2
    assert "was not exported from the weights" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--data", str(data), "--onnx"]) == 2
    assert "was not exported from the weights" in capsys.readouterr().err
    # another run's export: its --overwrite advice would have replaced that run's export
    info_file.write_text(good.replace(info["model_sha256"], "0" * 64).replace(json.dumps(info["run"]), json.dumps(str(tmp_path / "other"))))
    assert main(["predict", str(run), str(data), "--onnx"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"is the export of another run, {tmp_path / 'other'}, not of {run}" in err and "--overwrite" not in err
    info_file.write_text(good)

    # data of other classes, and a folder that cannot be made, are refused before the export's work
    t = time.perf_counter()
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert "classes the model does not know: 0, 1" in err and not (tmp_path / "x").exists() and time.perf_counter() - t < 5, err
    (tmp_path / "a_file").write_text("")
    assert main(["export", str(run), "--out", str(tmp_path / "a_file" / "x")]) == 2
    err = capsys.readouterr().err
    assert "cannot create the folder" in err and "a_file" in err and "Traceback" not in err
    assert main(["evaluate", str(run), "--data", "digits"]) == 2
    assert "classes the model does not know" in capsys.readouterr().err

    # an existing export is kept unless --overwrite; a failed check writes nothing and keeps the old one
    before = (run / "export" / "model.onnx").read_bytes()
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err
    import transferkit.export as ex

    monkeypatch.setattr(ex, "compare", lambda a, b: {"inputs": len(a), "max_abs_diff_probs": 0.5, "same_class": 0, "ok": False})
    assert main(["export", str(run), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "does not match PyTorch" in err and "nothing was written" in err and "Traceback" not in err
    assert (run / "export" / "model.onnx").read_bytes() == before
    assert [p.name for p in run.iterdir() if p.name.startswith(".export")] == []

    # --overwrite replaces an earlier export only (QA AM: it emptied --out ., a run directory, any folder)
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    for out, says in ((mine, "holds files that are not an export (notes.txt, sub)"), (run, "holds files that are not an export"),
                      (Path("."), "is the current folder")):
        monkeypatch.chdir(tmp_path)
        assert main(["export", str(run), "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert (mine / "notes.txt").read_text() == "mine" and (run / "model.safetensors").is_file() and (tmp_path / "mine").is_dir()


def test_text_export_with_saved_tokenizer(tmp_path, capsys, tiny_bert):
    from tokenizers import Tokenizer

    rows = ["text,label"] + [f"{w} film,pos" for w in ("good", "great", "lovely", "superb", "fine good")] + [f"{w} plot,neg" for w in ("bad", "awful", "boring", "dull", "poor bad")]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert main(["fit", "--data", str(tmp_path / "t.csv"), *tiny_text_args(tiny_bert), "--strategy", "linear_probe", "--val-fraction", "0.4", "--out", str(run), "--quiet"]) == 0
    clf = ImageClassifier.load(run)
    info = clf.export(tmp_path / "onnx")
    assert info["modality"] == "text" and set(info["inputs"]) == {"input_ids", "attention_mask"} and info["check"]["ok"]
    capsys.readouterr()
    assert main(["predict", str(run), "--onnx", str(tmp_path / "onnx"), "--text", "a good film", "--text", "dull and boring plot"]) == 0
    out = capsys.readouterr().out.splitlines()
    ref = clf.predict_proba(["a good film", "dull and boring plot"])
    assert out[0].startswith("file,row,text,label,") and [r.split(",")[:3] for r in out[1:]] == [["--text", "1", "a good film"], ["--text", "2", "dull and boring plot"]]
    np.testing.assert_allclose(np.array([r.split(",")[4:] for r in out[1:]], float), ref, atol=2e-6)

    texts = ["a very good film", "dull", "the plot was not boring and it was lovely lovely lovely"]
    tok = Tokenizer.from_file(str(tmp_path / "onnx" / "tokenizer" / "tokenizer.json"))
    tok.enable_padding(pad_id=0)
    enc = tok.encode_batch(texts)
    feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64), "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    (probs,) = sess.run(["probs"], feed)
    np.testing.assert_allclose(probs, clf.predict_proba(texts), atol=1e-5)
    # padding is masked out: a text alone gives what it gives in a padded batch
    (alone,) = sess.run(["probs"], {k: v[1:2, : sum(enc[1].attention_mask)] for k, v in feed.items()})
    np.testing.assert_allclose(alone[0], probs[1], atol=1e-5)


def test_the_exported_tokenizer_truncates_at_the_runs_max_length(tmp_path, tiny_bert, capsys):
    """The saved tokenizer kept the model's own limit (512), so a text longer than the run's
    --max-length scored differently in onnxruntime than in transferkit (QA: 2 of 20 SMS labels flipped)."""
    from transformers import AutoTokenizer

    rows = ["text,label"] + [f"{w} film,pos" for w in ("good", "great", "lovely", "superb", "fine good")] + [f"{w} plot,neg" for w in ("bad", "awful", "boring", "dull", "poor bad")]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert main(["fit", "--data", str(tmp_path / "t.csv"), *tiny_text_args(tiny_bert), "--strategy", "linear_probe", "--val-fraction", "0.4",
                 "--max-length", "6", "--out", str(run), "--quiet"]) == 0
    clf = ImageClassifier.load(run)
    clf.export(tmp_path / "onnx")
    texts = ["good " * 12 + "film", "bad bad " * 9 + "awful plot", "dull"]
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "onnx" / "tokenizer"))
    feed = {k: v.astype(np.int64) for k, v in tok(texts, padding=True, truncation=True, return_tensors="np").items() if k in ("input_ids", "attention_mask")}
    assert feed["input_ids"].shape[1] == 6
    (probs,) = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]).run(["probs"], feed)
    np.testing.assert_allclose(probs, clf.predict_proba(texts), atol=1e-5)
    # predict and evaluate say that they cut texts at max_length, as fit says it (they were silent)
    capsys.readouterr()
    assert main(["predict", str(run), "--text", texts[0], "--text", texts[1], "--text", "dull"]) == 0
    assert "note: 2 of 3 texts are longer than the run's 6 tokens and were cut there" in capsys.readouterr().err
    (tmp_path / "e.csv").write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in zip(texts, ("pos", "neg", "neg"))))
    assert main(["evaluate", str(run), "--data", str(tmp_path / "e.csv")]) == 0
    assert "note: 2 of 3 texts are longer than the run's 6 tokens" in capsys.readouterr().err


def test_export_refuses_what_it_cannot_do(tmp_path, capsys, monkeypatch):
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    assert main(["export", str(tmp_path / "half")]) == 2
    assert "is not a transferkit run directory (no manifest.json)" in capsys.readouterr().err  # it said "the run did not finish" of any folder
    (tmp_path / "half" / "checkpoints").mkdir()
    (tmp_path / "half" / "checkpoints" / "ckpt-0001.pt").write_bytes(b"")
    assert main(["export", str(tmp_path / "half")]) == 2
    assert f"is an interrupted run (it has checkpoints, no manifest): finish it with `transferkit fit --resume {tmp_path / 'half'}`" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "half" / "checkpoints")
    assert main(["export", str(tmp_path / "half"), "--opset", "11"]) == 2
    assert "--opset must be 18 or more" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "half"), "--opset", "99"]) == 2  # was onnxruntime's InvalidGraph traceback
    assert "--opset 99 is newer than the installed onnx" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert main(["export", str(tmp_path / "half")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'transferkit[export]'" in err and "onnxruntime" in err


def test_check_tolerates_only_near_ties():
    from transferkit.export import compare

    tie = compare(np.array([[0.5 + 1e-9, 0.5 - 1e-9]]), np.array([[0.5 - 1e-9, 0.5 + 1e-9]]))
    assert tie["same_class"] == 0 and tie["ok"]  # rounding may flip a near-tie
    assert not compare(np.array([[0.6, 0.4]]), np.array([[0.4, 0.6]]))["ok"]
    assert not compare(np.array([[0.9, 0.1]]), np.array([[0.9 - 2e-4, 0.1 + 2e-4]]))["ok"]  # same class, too far


def test_unsaved_classifier_export_serves_its_saved_run_and_a_damaged_export_is_named(tmp_path, capsys, tiny_ckpt, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where fit(X, y) writes its examples
    (tmp_path / "tmp").mkdir()
    data = _images(tmp_path / "data")
    files = sorted(data.rglob("*.png"))
    X = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    y = [f.parent.name for f in files]
    clf = ImageClassifier(model=f"file:{tiny_ckpt}", arch="cifar_resnet20", strategy="linear_probe", input_size=16, batch_size=4, calibrate="none")
    clf.fit(X, y)
    assert list((tmp_path / "tmp").glob("transferkit-data-*")) == []  # the PNG copies of X are gone once fit returns
    with pytest.raises(Exception, match=r"fit\(X, y\): y has 1 class \(red\); classification needs at least two"):
        ImageClassifier(model=f"file:{tiny_ckpt}", arch="cifar_resnet20", input_size=16).fit(X, ["red"] * len(X))
    with pytest.raises(Exception, match="at least 2"):  # a failure inside the run, after the examples were written
        ImageClassifier(model=f"file:{tiny_ckpt}", arch="cifar_resnet20", input_size=16).fit(X[:7], ["red"] * 6 + ["blue"])
    assert list((tmp_path / "tmp").glob("transferkit-data-*")) == []  # and when it fails
    # arrays that are no image or batch of images are named by their whole shape (QA AB: a 1-D array
    # was "image 0: ... got uint8", (32, 32, 2) was classified as 32 images of 32 x 2 pixels)
    for shape in ((32,), (32, 32, 2), (1, 2, 32, 32, 3)):
        with pytest.raises(Exception, match=re.escape(f"got an array of shape {shape}")):
            clf.predict(np.zeros(shape, np.uint8))
    with pytest.raises(Exception, match=r"X, an array of shape \(20, 64\), is one HxW grayscale image"):  # rows of features
        ImageClassifier(model=f"file:{tiny_ckpt}", arch="cifar_resnet20", input_size=16).fit(np.zeros((20, 64), np.uint8), [0, 1] * 10)
    with pytest.warns(UserWarning, match="score: y has label.s. the model was not trained on, counted as wrong: wasps"):
        assert clf.score(X[:2], [y[0], "wasps"]) <= 0.5
    # labels of another type are matched by their text, as classes_ is (QA AJ: 0.0 and a warning naming
    # "0, 1" as unknown to a model whose classes were 0, 1)
    ints = [int(c == "red") for c in y]
    ci = ImageClassifier(model=f"file:{tiny_ckpt}", arch="cifar_resnet20", strategy="linear_probe", input_size=16, batch_size=4, calibrate="none").fit(X, ints)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ci.score(X, [str(v) for v in ints]) == ci.score(X, ints) == ci.score(X, np.array(ints, dtype=float)) > 0.5
        cs = ImageClassifier(model=f"file:{tiny_ckpt}", arch="cifar_resnet20", strategy="linear_probe", input_size=16, batch_size=4, calibrate="none")
        cs.fit(X, [str(v) for v in ints])  # classes "0", "1", as a CLI run's; a pandas column with a NaN is float
        assert cs.score(X, np.array(ints, dtype=float)) == cs.score(X, [str(v) for v in ints]) > 0.5

    # export before save: the export carries the weights' hash, and predict --onnx takes it for the saved run
    clf.export(tmp_path / "exp")
    clf.save(tmp_path / "run")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), str(data), "--onnx", str(tmp_path / "exp"), "--out", str(tmp_path / "p.csv")]) == 0

    # a half-copied model.onnx is named (it was onnxruntime's InvalidProtobuf traceback); the hints name --out
    onnx_file = tmp_path / "exp" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    assert main(["predict", str(tmp_path / "run"), str(data), "--onnx", str(tmp_path / "exp")]) == 2
    err = capsys.readouterr().err
    assert "model.onnx is damaged or was changed" in err and f"--out {tmp_path / 'exp'} --overwrite" in err and "Traceback" not in err, err
    info = json.loads((tmp_path / "exp" / "export.json").read_text())
    del info["onnx_sha256"]  # an export made before the hash was recorded: onnxruntime's own error, as a message
    (tmp_path / "exp" / "export.json").write_text(json.dumps(info))
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(data), "--onnx", str(tmp_path / "exp")]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime cannot load" in err and "Traceback" not in err, err
    assert main(["predict", str(tmp_path / "run"), str(data), "--onnx", str(tmp_path / "nodir")]) == 2
    assert "nodir: no such folder" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "run"), str(data), "--onnx", str(onnx_file)]) == 2  # the file, not its folder
    assert f"--onnx takes the export's folder, not a file: --onnx {tmp_path / 'exp'}" in capsys.readouterr().err
